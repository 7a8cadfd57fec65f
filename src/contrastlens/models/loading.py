"""``load_model``: one entry point for every kind of model source."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import torch

from contrastlens.errors import ContrastLensError, ModelLoadError
from contrastlens.models.catalog import CATALOG, CatalogEntry
from contrastlens.models.loaded import LoadedModel

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def cache_dir() -> Path:
    root = os.environ.get("CONTRASTLENS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "contrastlens"
    )
    return Path(root)


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ContrastLensError(f"unknown dtype {dtype!r}; choose one of: {', '.join(_DTYPES)}") from None


def load_model(
    source: str,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``source`` is one of: a catalog alias (``smollm2-135m-instruct``), ``random:<arch>`` (a tiny seeded
    random model: llama, mistral, qwen2, qwen3, gemma3, olmo2, olmo3, gpt2), a ``.gguf`` file, a local
    Hugging Face folder, or a hub id (needs network access or a populated HF cache).
    """
    dt = _dtype(dtype)
    if source.startswith("random:"):
        from contrastlens.models.random import build_random_model

        model, tok = build_random_model(source.split(":", 1)[1], seed=seed, dtype=dt,
                                        attn_implementation=attn_implementation)
        lm = LoadedModel(model, tok, source)
    elif source.lower() in CATALOG:
        folder = _catalog_folder(CATALOG[source.lower()])
        lm = _load_hf(folder, dt, attn_implementation, None, source=source.lower())
    elif source.endswith(".gguf"):
        folder = _gguf_folder(Path(source), expected_sha=None, name=Path(source).stem)
        lm = _load_hf(folder, dt, attn_implementation, None, source=source)
    elif os.path.isdir(source):
        if not os.path.exists(os.path.join(source, "config.json")):
            raise ModelLoadError(f"{source} is a folder without config.json; point at a Hugging Face model folder")
        lm = _load_hf(source, dt, attn_implementation, revision, source=source)
    elif os.path.exists(source):
        raise ModelLoadError(f"{source} is a file but not a .gguf; give a .gguf file or a model folder")
    else:
        if source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise ModelLoadError(f"model path {source} does not exist")
        lm = _load_hub(source, dt, attn_implementation, revision)
    if device is not None:
        lm.model.to(device)
    return lm


def _quiet_loading():
    """transformers' per-weight loading bar is noise for a CLI; errors still surface."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _load_hf(folder: str | Path, dtype: torch.dtype, attn: str, revision: str | None, *, source: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_loading()

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), revision=revision, dtype=dtype, attn_implementation=attn
        )
    except (OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load model {source!r}: {msg}") from e
    model.eval()
    return LoadedModel(model, tok, source, revision, folder=_weights_folder(folder, revision))


def _weights_folder(folder: str | Path, revision: str | None) -> str | None:
    """The local folder holding the weights: the folder itself, or a hub id's cached snapshot."""
    if os.path.isdir(folder):
        return str(folder)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(str(folder), revision=revision, local_files_only=True)
    except Exception:  # not in the local cache in a usable form: the state dict is fingerprinted instead
        return None


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(repo_id: str, dtype: torch.dtype, attn: str, revision: str | None) -> LoadedModel:
    """A hub id: the local HF cache first, then the hub (a quick reachability check avoids minutes of retries)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(repo_id, revision=revision, local_files_only=True)
        cached = True
    except (OSError, ValueError):
        cached = False
    if not cached and not _hub_reachable():
        raise ModelLoadError(
            f"{repo_id!r} is not a local path, not a catalog alias ({', '.join(CATALOG)}), not in the Hugging Face "
            "cache, and the hub is unreachable; give a local folder, a .gguf file or random:<arch>"
        )
    return _load_hf(repo_id, dtype, attn, revision, source=repo_id)


# ------------------------------------------------------------------------------------------ GGUF
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _package_dir(package: str, entry: CatalogEntry) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model {entry.alias!r} needs the package {package!r}: run `{entry.pip}`")
    return Path(list(spec.submodule_search_locations)[0])


def _catalog_folder(entry: CatalogEntry) -> Path:
    done = cache_dir() / "models" / f"{entry.alias}-{entry.sha256[:12]}"
    if (done / "contrastlens.json").exists():
        return done
    if entry.parts or entry.assemble:
        path = cache_dir() / "gguf" / entry.filename
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            if entry.assemble:
                import importlib

                mod_name, fn = entry.assemble.split(":")
                _package_dir(mod_name, entry)
                getattr(importlib.import_module(mod_name), fn)(tmp, overwrite=True)
            else:
                with open(tmp, "wb") as out:
                    for package, rel in entry.parts:
                        src = _package_dir(package, entry) / rel
                        if not src.exists():
                            raise ModelLoadError(f"{src} is missing; reinstall with `{entry.pip} --force-reinstall`")
                        with open(src, "rb") as f:
                            while chunk := f.read(1 << 24):
                                out.write(chunk)
            tmp.rename(path)
    else:
        path = _package_dir(entry.package, entry) / entry.filename
        if not path.exists():
            raise ModelLoadError(f"{path} is missing; reinstall with `{entry.pip} --force-reinstall`")
    folder = _gguf_folder(path, expected_sha=entry.sha256, name=entry.alias, folder=done)
    if entry.parts or entry.assemble:
        path.unlink(missing_ok=True)  # the safetensors folder is what later loads read
    return folder


def _gguf_folder(path: Path, *, expected_sha: str | None, name: str, folder: Path | None = None) -> Path:
    """Convert a GGUF file once to a safetensors folder in the cache; return that folder."""
    if not path.exists():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    if folder is None:
        st = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
        folder = cache_dir() / "models" / f"{name}-{key}"
    marker = folder / "contrastlens.json"
    if marker.exists():
        return folder
    sha = _sha256(path)
    if expected_sha is not None and sha != expected_sha:
        if path.is_relative_to(cache_dir()):
            path.unlink(missing_ok=True)
        raise ModelLoadError(
            f"{path} is corrupt: sha256 {sha[:16]}... differs from the expected {expected_sha[:16]}...; reinstall it"
        )
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError("loading a .gguf file needs the packages gguf and accelerate: pip install gguf accelerate") from None
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    log.info("converting %s once to safetensors in %s ...", path.name, folder)
    _quiet_loading()
    src_dir, fname = str(path.parent), path.name
    try:
        tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
        loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=fname, dtype=torch.float32)
        cfg = AutoConfig.from_pretrained(src_dir, gguf_file=fname)
    except Exception as e:  # gguf raises many kinds of errors on corrupt files
        raise ModelLoadError(f"could not read GGUF file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight") or not cfg.tie_word_embeddings]
    if missing:
        raise ModelLoadError(f"GGUF conversion of {path} left weights unset: {missing[:3]}")
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "contrastlens.json").write_text(json.dumps({"gguf": str(path), "sha256": sha, "seconds": time.time() - t0}))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
