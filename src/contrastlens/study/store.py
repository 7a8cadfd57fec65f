"""The results store of a study: one folder, written so that a run killed at any moment loses nothing.

Layout of a results folder ``DIR``::

    DIR/study.json                          the store's identity: format and study name (written once)
    DIR/manifest.json                       the study's settings, every planned unit (key, digest, status,
                                            provenance, timings) and the study-level provenance
    DIR/summary.json                        the last run's summary (done, current, skipped, failed)
    DIR/run.log                             tracebacks of failed units, appended by every run
    DIR/units/<analysis>/<digest>/          one finished unit:
        <table>.parquet                     each table of its result (with case, benchmark, model, rule)
        tensors.safetensors                 its tensors (absent when it has none)
        unit.json                           its key, provenance and timings; written last

**Atomic units.** A unit is written into a fresh temporary folder beside its final place
(``.tmp-<digest>-<pid>-<random>``): every file written and fsynced, ``unit.json`` last, the folder fsynced,
then renamed to ``<digest>`` in one ``rename`` (atomic on POSIX; the target does not exist) and the parent
fsynced. So a unit folder without its ``unit.json`` never exists under its final name, and a unit is
stored at most once (its name is its digest; a second write of a stored digest is a no-op). A kill leaves
at most a temporary folder, which the next run removes (under the run lock, so never a live run's).

**Manifest.** ``manifest.json`` is derived: from the plan of the last run and the ``unit.json`` files (the
truth), rewritten atomically (temporary file, fsync, ``os.replace``) at the start of a run, every few
seconds during it and at its end. A reader takes "done" from the unit folders, not from the manifest, so a
kill between two manifest writes loses nothing.

**Current vs stale.** A unit is *current* when its digest is in the plan of the study as it is now (the last
run's manifest); any other unit folder is *stale* (its settings changed). Stale units are kept (changing a
setting back makes them current again, with no work) but :meth:`Store.tables`, :meth:`Store.tensors` and
:meth:`Store.files` only ever return current units, so stale results never mix into a report.

**Refusals.** A folder holding another study's results (``study.json`` names another study), a non-empty
folder that is not a results folder, a folder that cannot be written, or a folder another run holds (the
lock ``DIR/.lock``, released by the kernel when a run dies) is an :class:`~contrastlens.errors.InputError`.
Nothing outside the files listed above is ever written, and no file a user wrote is replaced.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contrastlens.cases.io import fsync_dir
from contrastlens.errors import InputError
from contrastlens.study.base import UnitKey, UnitResult

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

FORMAT = "contrastlens-study-results"
FORMAT_VERSION = 1
STUDY_FILE = "study.json"
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
LOG_FILE = "run.log"
UNITS = "units"
UNIT_FILE = "unit.json"
TENSORS_FILE = "tensors.safetensors"
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
#: the columns the store adds to every table of a unit (first, replacing a column of that name)
TAG_COLUMNS = ("case", "benchmark", "model", "rule")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------- durable writes
def _write_new(path: Path, data: bytes) -> None:
    """Write a new file (never an existing one) and fsync it."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically: a unique temporary file in the same folder, fsync,
    ``os.replace``, fsync of the folder. A reader sees the old file or the new one, never a part."""
    p = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = p.parent / f"{TMP_PREFIX}{p.name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        _write_new(tmp, raw)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(p.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=False) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------- tables
def tag_table(df: pd.DataFrame, *, case: str, benchmark: str, model: str, rule: str) -> pd.DataFrame:
    """The table as stored: a named or non-default index becomes columns, then ``case``, ``benchmark``,
    ``model`` and ``rule`` columns first (replacing columns of those names)."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"a table must be a pandas DataFrame, not {type(df).__name__}")
    named = any(n is not None for n in df.index.names)
    out = df.reset_index(drop=not (named or not isinstance(df.index, pd.RangeIndex)))
    out = out.drop(columns=[c for c in TAG_COLUMNS if c in out.columns])
    for i, (col, val) in enumerate((("case", case), ("benchmark", benchmark), ("model", model), ("rule", rule))):
        out.insert(i, col, pd.Series([val] * len(out), dtype=object, index=out.index))
    return out


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def _tensor_bytes(tensors: Mapping[str, Any]) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    arrays = {}
    for name, a in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty strings, not {name!r}")
        arr = np.ascontiguousarray(np.asarray(a))
        if arr.dtype == object:
            raise TypeError(f"tensor {name!r} is an object array; tensors hold numbers only")
        arrays[name] = arr
    return save(arrays)


# ---------------------------------------------------------------------------------------------- store
class Store:
    """A study results folder. Open it for a run with :meth:`for_run` (creates it, checks it, takes the run
    lock, removes what a killed run left) or for reading with :meth:`open`."""

    def __init__(self, out: str | os.PathLike, *, _lock: Any = None):
        self.out = Path(out)
        self._lock = _lock
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        self._plan: dict[str, set[str]] | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, out: str | os.PathLike) -> Store:
        """An existing results folder, for reading (``study status``, ``study report``, analyses)."""
        p = Path(out)
        if not p.is_dir():
            raise InputError(f"{p} is not a study results folder (it does not exist)")
        ident = _read_json(p / STUDY_FILE)
        if not isinstance(ident, dict) or ident.get("format") != FORMAT:
            raise InputError(f"{p} is not a study results folder (no {STUDY_FILE}); run `contrastlens study run "
                             f"STUDY.toml --out {p}` first")
        return cls(p)

    @classmethod
    def for_run(cls, out: str | os.PathLike, study_name: str) -> Store:
        """The results folder of a run of study ``study_name``: created when absent; refused when it holds
        another study's results, is a non-empty folder that is no results folder, cannot be written, or is
        used by another run. Removes the temporary files a killed run left."""
        from filelock import FileLock, Timeout

        p = Path(out)
        if p.exists() and not p.is_dir():
            raise InputError(f"{p} is a file, not a results folder; give a folder for --out")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the results folder {p}: {e.strerror or e}") from None
        if not (p / STUDY_FILE).exists():
            cls._refuse_foreign(p)  # before the lock file is made: nothing is written into a foreign folder
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(f"the results folder {p} is not writable")
        lock = FileLock(str(p / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise InputError(f"{p} is in use by another `contrastlens study run` (lock {p / LOCK}); wait for it "
                             "to finish") from None
        except OSError as e:
            raise InputError(f"the results folder {p} is not writable ({e.strerror or e})") from None
        try:
            ident = _read_json(p / STUDY_FILE)
            if (p / STUDY_FILE).exists():
                if not isinstance(ident, dict) or ident.get("format") != FORMAT:
                    raise InputError(f"{p / STUDY_FILE} is not the identity file of a study results folder; give "
                                     "another --out")
                if ident.get("study") != study_name:
                    raise InputError(f"{p} holds the results of study {ident.get('study')!r}, not of "
                                     f"{study_name!r}; give another --out (or the study its old name back)")
            else:
                cls._refuse_foreign(p)
                try:
                    atomic_write_json(p / STUDY_FILE, {"format": FORMAT, "version": FORMAT_VERSION,
                                                       "study": study_name, "created": now()})
                except OSError as e:
                    raise InputError(f"the results folder {p} is not writable ({e.strerror or e})") from None
            store = cls(p, _lock=lock)
            store.remove_leftovers()
        except BaseException:
            lock.release()
            raise
        return store

    @staticmethod
    def _refuse_foreign(p: Path) -> None:
        others = sorted(x.name for x in p.iterdir() if x.name != LOCK)
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise InputError(f"{p} is not empty ({shown}) and holds no study results (no {STUDY_FILE}); give a new "
                             "or empty folder for --out")

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def study_name(self) -> str | None:
        ident = _read_json(self.out / STUDY_FILE)
        return ident.get("study") if isinstance(ident, dict) else None

    # ------------------------------------------------------------------ paths
    @property
    def units_dir(self) -> Path:
        return self.out / UNITS

    @property
    def log_path(self) -> Path:
        return self.out / LOG_FILE

    def unit_dir(self, analysis: str, digest: str) -> Path:
        return self.units_dir / analysis / digest

    def remove_leftovers(self) -> int:
        """Remove what a killed run left: temporary unit folders and files, and a unit folder without its
        ``unit.json`` (which the rename protocol never produces, but a copy might). Only under the run
        lock. Returns how many were removed."""
        n = 0
        for f in self.out.iterdir():
            if f.name.startswith(TMP_PREFIX) and f.is_file():
                f.unlink(missing_ok=True)
                n += 1
        if self.units_dir.is_dir():
            for adir in self.units_dir.iterdir():
                if not adir.is_dir():
                    continue
                for u in adir.iterdir():
                    if u.name.startswith(TMP_PREFIX) or (u.is_dir() and not (u / UNIT_FILE).is_file()):
                        shutil.rmtree(u, ignore_errors=True) if u.is_dir() else u.unlink(missing_ok=True)
                        n += 1
        if n:
            log.info("removed %d temporary file(s) an interrupted run left in %s", n, self.out)
        return n

    # ------------------------------------------------------------------ units
    def unit_record(self, analysis: str, digest: str) -> dict[str, Any] | None:
        """The ``unit.json`` of a stored unit (None when it is not stored)."""
        k = (analysis, digest)
        if k in self._records:
            return self._records[k]
        rec = _read_json(self.unit_dir(analysis, digest) / UNIT_FILE)
        if not isinstance(rec, dict) or rec.get("status") != "done":
            return None
        self._records[k] = rec
        return rec

    def has(self, analysis: str, digest: str) -> bool:
        return self.unit_record(analysis, digest) is not None

    def stored_digests(self, analysis: str) -> list[str]:
        """Every unit of ``analysis`` on disk (current or stale)."""
        adir = self.units_dir / analysis
        if not adir.is_dir():
            return []
        return sorted(u.name for u in adir.iterdir()
                      if not u.name.startswith(TMP_PREFIX) and (u / UNIT_FILE).is_file())

    def analyses_on_disk(self) -> list[str]:
        if not self.units_dir.is_dir():
            return []
        return sorted(a.name for a in self.units_dir.iterdir() if a.is_dir())

    def write_unit(self, key: UnitKey, result: UnitResult, *, benchmark: str, record: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
        """Store a finished unit atomically (see the module docstring) and return its ``unit.json`` record.
        A unit already stored under this digest is left as it is (its record is returned)."""
        existing = self.unit_record(key.analysis, key.digest)
        if existing is not None:
            return existing
        final = self.unit_dir(key.analysis, key.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TMP_PREFIX}{key.digest}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            tables: dict[str, Any] = {}
            for name, df in result.tables.items():
                if not isinstance(name, str) or not _TABLE_NAME.match(name):
                    raise ValueError(f"table name {name!r}: use letters, digits, '_', '-' and '.'")
                tagged = tag_table(df, case=key.case, benchmark=benchmark, model=key.model, rule=key.rule)
                _write_new(tmp / f"{name}.parquet", _parquet_bytes(tagged))
                tables[name] = {"rows": int(len(tagged)), "columns": [str(c) for c in tagged.columns]}
            tensors: dict[str, Any] = {}
            if result.tensors:
                _write_new(tmp / TENSORS_FILE, _tensor_bytes(result.tensors))
                import numpy as np

                tensors = {n: {"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype)}
                           for n, a in result.tensors.items()}
            rec: dict[str, Any] = {
                "format": FORMAT_VERSION, "status": "done", "id": key.id,
                "key": {"analysis": key.analysis, "model": key.model, "case": key.case, "rule": key.rule,
                        "digest": key.digest},
                "benchmark": benchmark, "tables": tables, "tensors": tensors,
                "meta": result.meta, **dict(record or {}), "written": now(),
            }
            _write_new(tmp / UNIT_FILE, (json.dumps(rec, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
            fsync_dir(tmp)
            if final.exists():  # a folder without unit.json (not ours by the protocol): replaced
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(final.parent)
        self._records[(key.analysis, key.digest)] = rec
        return rec

    # ------------------------------------------------------------------ the plan: current units
    def set_plan(self, digests: Mapping[str, Iterable[str]]) -> None:
        """The digests of the study as it is now, per analysis (the runner sets it; else the manifest's)."""
        self._plan = {a: set(ds) for a, ds in digests.items()}

    def plan(self) -> dict[str, set[str]]:
        if self._plan is None:
            man = self.read_manifest() or {}
            plan: dict[str, set[str]] = {}
            for u in man.get("units", []):
                plan.setdefault(u["analysis"], set()).add(u["digest"])
            self._plan = plan
        return self._plan

    def current(self, analysis: str) -> list[dict[str, Any]]:
        """The ``unit.json`` records of the current, finished units of ``analysis`` (ordered by unit id)."""
        recs = [r for d in self.plan().get(analysis, ()) if (r := self.unit_record(analysis, d)) is not None]
        return sorted(recs, key=lambda r: r["id"])

    def stale(self, analysis: str) -> list[str]:
        """Digests of stored units of ``analysis`` that the current study does not have."""
        cur = self.plan().get(analysis, set())
        return [d for d in self.stored_digests(analysis) if d not in cur]

    def files(self, analysis: str, table: str) -> list[Path]:
        """The Parquet files of table ``table`` of the current units of ``analysis`` (e.g. for DuckDB's
        ``read_parquet([...])``)."""
        return [self.unit_dir(analysis, r["key"]["digest"]) / f"{table}.parquet" for r in self.current(analysis)
                if table in r.get("tables", {})]

    def tables(self, analysis: str) -> dict[str, pd.DataFrame]:
        """Every table of ``analysis``: name -> the rows of all its current units, concatenated in unit
        order (each row tagged with ``case``, ``benchmark``, ``model``, ``rule``)."""
        import pandas as pd

        parts: dict[str, list[pd.DataFrame]] = {}
        for r in self.current(analysis):
            d = self.unit_dir(analysis, r["key"]["digest"])
            for name in r.get("tables", {}):
                parts.setdefault(name, []).append(pd.read_parquet(d / f"{name}.parquet", engine="pyarrow"))
        out = {}
        for name, frames in parts.items():
            nonempty = [f for f in frames if len(f)] or frames[:1]
            out[name] = pd.concat(nonempty, ignore_index=True) if len(nonempty) > 1 else nonempty[0]
        return out

    def tensors(self, analysis: str, name: str | None = None) -> dict[tuple[str, str, str], dict[str, np.ndarray]]:
        """The tensors of the current units of ``analysis``: (case, model, rule) -> {tensor name: array}
        (only tensor ``name`` when given)."""
        from safetensors.numpy import load_file

        out: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
        for r in self.current(analysis):
            if not r.get("tensors") or (name is not None and name not in r["tensors"]):
                continue
            arrays = load_file(str(self.unit_dir(analysis, r["key"]["digest"]) / TENSORS_FILE))
            if name is not None:
                arrays = {name: arrays[name]}
            k = r["key"]
            out[(k["case"], k["model"], k["rule"])] = arrays
        return out

    # ------------------------------------------------------------------ manifest, summary
    def read_manifest(self) -> dict[str, Any] | None:
        m = _read_json(self.out / MANIFEST)
        return m if isinstance(m, dict) else None

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        atomic_write_json(self.out / MANIFEST, dict(manifest))

    def read_summary(self) -> dict[str, Any] | None:
        s = _read_json(self.out / SUMMARY)
        return s if isinstance(s, dict) else None

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.out / SUMMARY, dict(summary))


__all__ = ["FORMAT", "MANIFEST", "SUMMARY", "TAG_COLUMNS", "UNIT_FILE", "Store", "atomic_write", "atomic_write_json",
           "tag_table"]
