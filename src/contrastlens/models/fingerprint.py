"""Weight fingerprints: a short, stable identity of a model's weights, cheap to recompute.

- A model loaded from a folder (a local Hugging Face folder, the safetensors folder a GGUF file or a
  catalog entry was converted to, a hub snapshot) is fingerprinted from its files: the sha256 of
  ``config.json`` and of every ``*.safetensors`` file, in name order, hashed together. File hashes are
  cached in ``<cache>/fingerprints.json`` keyed by (real path, size, mtime), so each file is read once.
- Any other model (``random:<arch>``, a ``LoadedModel`` built from an in-memory model) is fingerprinted
  from its state dict: names, shapes and float32 values of every parameter and persistent buffer.

For a folder the dtype a model is loaded in is not part of the fingerprint (it is part of the attribution
spec); an in-memory model cast to a lower precision has rounded weights and so another fingerprint.
A fingerprint is 16 hex digits, prefixed by how it was made (``files:`` or ``state:``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import torch

_LOCK = threading.Lock()


def _cache_file() -> Path:
    from contrastlens.models.loading import cache_dir

    return cache_dir() / "fingerprints.json"


def _read_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, data: dict[str, str]) -> None:
    """Atomic: a unique temporary name, then rename (concurrent writers never see a torn file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs a recomputation next time
        pass


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, cached by (real path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}:{st.st_size}:{st.st_mtime_ns}"
    cache = _cache_file()
    with _LOCK:
        hit = _read_cache(cache).get(key)
    if hit:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _LOCK:
        data = _read_cache(cache)
        data[key] = digest
        _write_cache(cache, data)
    return digest


def folder_fingerprint(folder: str | os.PathLike) -> str | None:
    """The fingerprint of a model folder's weights, or None when it holds no safetensors file."""
    root = Path(folder)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        return None
    h = hashlib.sha256()
    cfg = root / "config.json"
    if cfg.exists():
        h.update(b"config.json\0" + file_sha256(cfg).encode())
    for f in files:
        h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
    return "files:" + h.hexdigest()[:16]


@torch.no_grad()
def state_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint of an in-memory model's parameters and persistent buffers (as float32 bytes, so the
    dtype the model was loaded in does not change it)."""
    h = hashlib.sha256()
    seen: set[int] = set()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + b"\0" + str(tuple(t.shape)).encode())
        if t.data_ptr() in seen and t.numel():  # tied weights: hashed once, named twice
            continue
        seen.add(t.data_ptr())
        x = t.detach().to("cpu")
        if x.is_floating_point():
            x = x.float()
        h.update(x.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return "state:" + h.hexdigest()[:16]


__all__ = ["file_sha256", "folder_fingerprint", "state_fingerprint"]
