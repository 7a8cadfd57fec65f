"""What the explorer may load: the models of ``/api/models`` and the case files under ``--cases``.

**Models.** A model id is one of the ids :meth:`ModelRegistry.models` lists, and nothing else:

- a catalog alias (``smollm2-135m-instruct``; ``available`` when its conversion is in the cache or its
  package is installed);
- ``random:<arch>``, a tiny seeded random model (only with ``allow_random``);
- ``folder:<name>``, a Hugging Face model folder (with ``config.json``) or a ``.gguf`` file directly
  inside ``--models``.

:meth:`ModelRegistry.resolve` maps an id to the source :func:`~contrastlens.models.loading.load_model`
takes. Anything path-like (a ``/`` or ``\\``, ``..``, ``~``, an absolute path, a hub id) is refused with
403 ``forbidden_path``, an id that names nothing listed with 404 ``not_found``; a ``folder:`` entry whose
real path (symlinks resolved) leaves ``--models`` is refused too. :meth:`ModelRegistry.stamp` is a cheap
identity of what an id loads (the catalog file's sha256, a folder's file sizes and modification times),
so that a request key changes when a folder's weights are replaced.

**Cases.** :class:`CaseLibrary` lists every ``*.jsonl`` file under ``--cases`` (recursively) by its
relative POSIX path. A file reference must stay inside the folder: absolute paths, ``..`` and symlinks
whose target lies outside are refused (403), a missing file is 404. A file that is not a valid case file
is listed under ``errors`` with its one-line message, never a 500. Parsed files are kept while their size
and modification time do not change.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path, PurePosixPath
from typing import Any

from contrastlens.errors import ContrastLensError
from contrastlens.server.settings import ServerSettings

log = logging.getLogger("contrastlens.server.resources")


class ApiError(ContrastLensError):
    """A request the server refuses with a given HTTP status and error code (see the wire contract)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden_path", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def _path_like(s: str) -> bool:
    return ("/" in s or "\\" in s or ".." in s or s.startswith(("~", ".")) or os.path.isabs(s) or "\0" in s
            or (len(s) > 1 and s[1] == ":"))


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


# ---------------------------------------------------------------------------------------------- models
class ModelRegistry:
    """The model ids of ``/api/models`` and what they load."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.root = Path(settings.models_dir) if settings.models_dir else None

    def _folder_entries(self) -> list[tuple[str, Path]]:
        if self.root is None or not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if p.name.startswith(".") or _path_like(p.name) or not _inside(p, self.root):
                continue
            if (p.is_dir() and (p / "config.json").is_file()) or (p.is_file() and p.suffix == ".gguf"):
                out.append((p.name, p))
        return out

    def models(self) -> list[dict[str, Any]]:
        """``[{"id", "kind", "label", "available"}]``: catalog, random (with ``allow_random``), folders."""
        from contrastlens.models.catalog import CATALOG
        from contrastlens.models.loading import catalog_available
        from contrastlens.models.random import RANDOM_ARCHS

        out: list[dict[str, Any]] = []
        for alias, entry in CATALOG.items():
            out.append({"id": alias, "kind": "catalog", "label": entry.description,
                        "available": bool(catalog_available(entry))})
        if self.settings.allow_random:
            for arch in RANDOM_ARCHS:
                out.append({"id": f"random:{arch}", "kind": "random", "label": f"tiny random {arch} (tests, demos)",
                            "available": True})
        for name, p in self._folder_entries():
            label = f"{name} ({'GGUF file' if p.is_file() else 'model folder'} under --models)"
            out.append({"id": f"folder:{name}", "kind": "folder", "label": label, "available": True})
        return out

    def resolve(self, model_id: Any) -> str:
        """The ``load_model`` source of a listed id; 403 for anything path-like, 404 for an unknown id."""
        from contrastlens.models.catalog import CATALOG
        from contrastlens.models.random import RANDOM_ARCHS

        if not isinstance(model_id, str) or not model_id:
            raise ApiError(422, "invalid", "model: give a model id from /api/models")
        if model_id.startswith("folder:"):
            name = model_id[len("folder:"):]
            if not name or _path_like(name):
                raise forbidden(f"model {model_id!r} names a path; only folders directly inside --models are served")
            if self.root is None:
                raise not_found(f"unknown model {model_id!r}: the server has no --models folder")
            p = self.root / name
            if p.exists() and not _inside(p, self.root):
                raise forbidden(f"model {model_id!r} points outside the --models folder")
            if name not in dict(self._folder_entries()):
                raise not_found(f"unknown model {model_id!r}; see /api/models for the models of --models")
            return str(p.resolve())
        if _path_like(model_id):
            raise forbidden(f"model {model_id!r} is a path or hub id; choose a model id from /api/models")
        if model_id.startswith("random:"):
            if self.settings.allow_random and model_id[len("random:"):] in RANDOM_ARCHS:
                return model_id
            raise not_found(f"unknown model {model_id!r}; see /api/models")
        if model_id.lower() in CATALOG:
            return model_id.lower()
        raise not_found(f"unknown model {model_id!r}; see /api/models")

    def stamp(self, model_id: str) -> str:
        """A cheap identity of the weights an id loads (no model is loaded): a catalog entry's sha256, a random
        model's name, a folder's file names, sizes and modification times."""
        from contrastlens.models.catalog import CATALOG

        source = self.resolve(model_id)
        if source in CATALOG:
            return f"catalog:{CATALOG[source].sha256}"
        if source.startswith("random:"):
            return source
        p = Path(source)
        files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())
        parts = []
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        return "files:" + "|".join(parts)

    def id_of_source(self, source: str | None) -> str | None:
        """The listed id that loads ``source`` (a case's ``model_source``), or None."""
        if not source:
            return None
        ids = {m["id"] for m in self.models()}
        if source in ids and not source.startswith("folder:"):
            return source
        if self.root is not None:
            for name, p in self._folder_entries():
                try:
                    if Path(source).resolve() == p.resolve():
                        return f"folder:{name}"
                except OSError:
                    continue
        return None


# ----------------------------------------------------------------------------------------------- cases
def case_summary(case: Any) -> dict[str, Any]:
    return {"id": case.id, "benchmark": case.benchmark, "item_id": case.item_id, "status": case.status,
            "clean": case.clean, "passed": case.passed, "model_source": case.model_source,
            "target_str": case.target_str, "contrast_str": case.contrast_str, "delta_logit": case.delta_logit}


def case_json(case: Any, model_id: str | None) -> dict[str, Any]:
    """The case as ``GET /api/case`` returns it (the wire contract)."""
    d = case_summary(case)
    d.update(
        model_id=model_id, prompt=case.prompt, messages=case.messages, completion=case.completion,
        completion_before_err=case.completion_before_err, details=case.details, failure_index=case.failure_index,
        target_id=case.target_id, contrast_id=case.contrast_id, method=case.method,
        rollouts=[{"rank": r.rank, "token_id": r.token_id, "token_str": r.token_str, "logit": r.logit,
                   "continuation": r.continuation, "passed": r.passed, "source": r.source} for r in case.rollouts],
        segments={k: [list(s) for s in v] for k, v in case.segments.items()},
    )
    return d


class CaseLibrary:
    """The case files under ``cases_dir``, by relative POSIX path."""

    def __init__(self, settings: ServerSettings) -> None:
        self.root = Path(settings.cases_dir).resolve() if settings.cases_dir else None
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[tuple[int, int], list[Any]]] = {}

    def _files(self) -> list[Path]:
        if self.root is None:
            return []
        return sorted(p for p in self.root.rglob("*.jsonl") if p.is_file())

    def path(self, file: Any) -> Path:
        """The real path of a case file reference; 403 when it leaves ``cases_dir``, 404 when it is missing."""
        if self.root is None:
            raise not_found("the server has no --cases folder")
        if not isinstance(file, str) or not file:
            raise ApiError(422, "invalid", "file: give a case file path relative to --cases")
        rel = PurePosixPath(file.replace("\\", "/"))
        if rel.is_absolute() or os.path.isabs(file) or ".." in rel.parts or "\0" in file or ":" in rel.parts[0]:
            raise forbidden(f"case file {file!r} is outside the --cases folder; give a path relative to it")
        p = self.root.joinpath(*rel.parts)
        if not _inside(p, self.root):
            raise forbidden(f"case file {file!r} points outside the --cases folder")
        if not p.is_file() or p.suffix != ".jsonl":
            raise not_found(f"no case file {file!r} under --cases (see /api/cases)")
        return p.resolve()

    def _load(self, p: Path) -> list[Any]:
        from contrastlens.cases.io import load_cases

        st = p.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._parsed.get(str(p))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        cases = load_cases(p)
        with self._lock:
            self._parsed[str(p)] = (stamp, cases)
        return cases

    def listing(self) -> dict[str, Any]:
        """``{"files": [{"file", "cases": [...]}], "errors": [{"file", "message"}]}``."""
        files, errors = [], []
        root = self.root
        for p in self._files():
            assert root is not None
            rel = p.relative_to(root).as_posix()
            if not _inside(p, root):
                errors.append({"file": rel, "message": "points outside the --cases folder; not served"})
                continue
            try:
                cases = self._load(p.resolve())
            except (ContrastLensError, OSError, ValueError) as e:
                errors.append({"file": rel, "message": _one_line(e)})
                continue
            files.append({"file": rel, "cases": [case_summary(c) for c in cases]})
        return {"files": files, "errors": errors}

    def case(self, file: Any, case_id: Any) -> Any:
        """The case ``case_id`` of ``file``; 404 when there is none, 400 when the file is not a case file."""
        p = self.path(file)
        try:
            cases = self._load(p)
        except OSError as e:
            raise not_found(f"cannot read case file {file!r}: {e.strerror or e}") from None
        for c in cases:
            if c.id == case_id:
                return c
        raise not_found(f"no case {case_id!r} in {file} ({len(cases)} cases)")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


__all__ = ["ApiError", "CaseLibrary", "ModelRegistry", "case_json", "case_summary", "forbidden", "not_found"]
