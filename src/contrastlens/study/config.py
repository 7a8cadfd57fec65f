"""The study file: a TOML file read with :mod:`tomllib` and validated into a :class:`Study`.

Shape (every key is documented in ``docs/study.md``)::

    [study]                    # name (required), data, seed, description, plugins
    [attribution]              # rules = ["attnlrp"] (one unit per rule: attnlrp | cp-lrp)
    [[models]]                 # name, source (required); revision, series, step, dtype, attn
    [[cases]]                  # path (required); models, clean_only, limit, ids
    [analyses.NAME]            # the settings of analysis NAME (its ``Settings`` dataclass), and
                               # ``models`` (optional): the study models it runs on (default: every model)
    [runner]                   # num_cpus, num_gpus, actors_per_model, local_cpus, device

Validation. The tables are pydantic models with ``extra="forbid"``; an analysis table is validated against
the analysis' ``Settings`` dataclass with a pydantic ``TypeAdapter``. Both validate the TOML data as JSON in
strict mode, so a value is never coerced across kinds (``"3"`` is not an int, ``true`` is not 1; an array
fills a tuple field, an int a float field). The first problem becomes an
:class:`~contrastlens.errors.InputError` that names the file and the key path, e.g.
``study.toml: [analyses.faithfulness] unknown key 'methodz'`` or ``study.toml: models[1].source: field
required`` (list indices count from 0). Cross-table checks: model names are unique, the ``models`` of a
``[[cases]]`` table name study models, every model of a checkpoint ``series`` has a distinct ``step``
(and a ``step`` belongs to a series), each analysis name is registered (after importing ``plugins``).

Paths. ``study.data``, ``cases.path`` and a model ``source`` that is a path resolve against the study file's
folder: a source is a path when it starts with ``.``, ``/`` or ``~`` or names something that exists there;
anything else (``random:llama``, a catalog alias, a hub id) is kept as written. ``data`` defaults to
``$CONTRASTLENS_DATA``.

Nothing here loads a model or reads a case file: a missing case file is the runner's business (the run goes
on and its summary lists it).
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from contrastlens.errors import ContrastLensError, InputError
from contrastlens.study.base import ModelRef, StudyInfo, canonical_json, get_analysis

RULES = ("attnlrp", "cp-lrp")


# ---------------------------------------------------------------------------------------- the tables
class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StudyTable(_Table):
    name: str = Field(min_length=1)
    data: str | None = None
    seed: int = 0
    description: str = ""
    plugins: list[str] = Field(default_factory=list)


class AttributionTable(_Table):
    rules: list[Literal["attnlrp", "cp-lrp"]] = Field(default=["attnlrp"], min_length=1)


class ModelTable(_Table):
    name: str = Field(min_length=1)
    source: str = Field(min_length=1)
    revision: str | None = None
    series: str | None = None
    step: int | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn: Literal["eager", "sdpa"] = "eager"


class CasesTable(_Table):
    path: str = Field(min_length=1)
    models: list[str] | None = None
    clean_only: bool = True
    limit: int | None = Field(default=None, ge=1)
    ids: list[str] | None = None


class RunnerTable(_Table):
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    actors_per_model: int = Field(default=1, ge=1)
    local_cpus: int | None = Field(default=None, ge=1)
    device: Literal["cpu", "cuda", "auto"] = "cpu"


class StudyFile(_Table):
    study: StudyTable
    attribution: AttributionTable = Field(default_factory=AttributionTable)
    models: list[ModelTable] = Field(min_length=1)
    cases: list[CasesTable] = Field(min_length=1)
    analyses: dict[str, dict[str, Any]] = Field(min_length=1)
    runner: RunnerTable = Field(default_factory=RunnerTable)


# ---------------------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class CaseSource:
    """One ``[[cases]]`` table: the case file (absolute path), the models it is run under (names), the
    filters, and ``label`` (``cases[i]``) for messages."""

    path: str
    models: tuple[str, ...]
    clean_only: bool = True
    limit: int | None = None
    ids: tuple[str, ...] | None = None
    label: str = "cases[0]"


@dataclass(frozen=True)
class RunnerSettings:
    """``[runner]``: resources of one Ray actor (``num_cpus``, ``num_gpus``), actors per model, the CPUs of
    a local Ray started by the run (``local_cpus``, default all), and the device models are put on."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors_per_model: int = 1
    local_cpus: int | None = None
    device: str = "cpu"


@dataclass
class Study:
    """A validated study: what the runner needs, with paths resolved. ``analyses``: name -> its Settings
    instance, in file order. ``raw``: the study file's data as read (kept in the results manifest, so that
    ``study status`` and ``study report`` rebuild the study from the results folder alone)."""

    name: str
    models: tuple[ModelRef, ...]
    cases: tuple[CaseSource, ...]
    analyses: dict[str, Any]
    #: analysis -> the models it runs on (``[analyses.NAME] models = [...]``); absent: every model
    analysis_models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rules: tuple[str, ...] = ("attnlrp",)
    seed: int = 0
    data: str | None = None
    root: str = "."
    path: str | None = None
    description: str = ""
    plugins: tuple[str, ...] = ()
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def attribution(self) -> dict[str, Any]:
        """The ``[attribution]`` settings (``rules`` and whatever else the table holds)."""
        return {"rules": list(self.rules)}

    def attribution_digest(self) -> dict[str, Any]:
        """The attribution settings every unit's digest covers: all but ``rules`` (the unit's own rule is
        part of its key, so adding a rule re-runs nothing that exists)."""
        return {k: v for k, v in self.attribution.items() if k != "rules"}

    def info(self, out: str | os.PathLike | None = None) -> StudyInfo:
        return StudyInfo(name=self.name, models=self.models, attribution=self.attribution, data=self.data,
                         root=self.root, out=None if out is None else str(Path(out).resolve()))

    def model(self, name: str) -> ModelRef:
        for m in self.models:
            if m.name == name:
                return m
        raise InputError(f"no model named {name!r} in study {self.name!r}")

    def settings_dict(self) -> dict[str, Any]:
        """JSON-able resolved settings (for the manifest)."""
        return {
            "name": self.name, "seed": self.seed, "data": self.data, "root": self.root, "path": self.path,
            "rules": list(self.rules), "plugins": list(self.plugins),
            "models": [asdict(m) for m in self.models],
            "cases": [asdict(c) for c in self.cases],
            "analyses": {k: asdict(v) for k, v in self.analyses.items()},
            "runner": asdict(self.runner),
        }


# ------------------------------------------------------------------------------------ error messages
def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _table(loc: tuple[Any, ...]) -> str:
    """Where a key lives: ``[study]``, ``[analyses.faithfulness]``, ``models[1]``, ``the top level``."""
    if not loc:
        return "the top level:"
    if all(isinstance(p, str) for p in loc):
        return "[" + ".".join(loc) + "]"
    return _path(loc) + ":"


def _message(e: ValidationError, label: str, prefix: tuple[Any, ...] = ()) -> str:
    errs = e.errors()
    err = errs[0]
    loc = prefix + tuple(err.get("loc", ()))
    typ = err.get("type", "")
    more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    if typ == "extra_forbidden":
        return f"{label}: {_table(loc[:-1])} unknown key {loc[-1]!r}{more}"
    if typ == "missing":
        return f"{label}: {_path(loc)}: field required{more}"
    msg = err.get("msg", "invalid value")
    if typ == "value_error" and isinstance(err.get("ctx", {}).get("error"), Exception):
        msg = str(err["ctx"]["error"])
    where = _path(loc) or "the top level"
    shown = err.get("input")
    got = f" (got {shown!r})" if typ not in ("value_error",) and not isinstance(shown, dict | list) else ""
    return f"{label}: {where}: {msg}{got}{more}"


def _json(data: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, _dt.date | _dt.time):
            return o.isoformat()
        raise TypeError(type(o).__name__)

    return json.dumps(data, default=default)


# ------------------------------------------------------------------------------------ analysis settings
def validate_settings(cls: type, table: Mapping[str, Any], *, where: str, label: str) -> Any:
    """The ``Settings`` dataclass ``cls`` from a study-file table: an unknown key, a value of the wrong type
    or a value its ``__post_init__`` refuses is an :class:`InputError` naming ``label`` and ``where``."""
    if not (isinstance(cls, type) and is_dataclass(cls)):
        raise InputError(f"{label}: {where}: the analysis' Settings is not a dataclass")
    known = [f.name for f in fields(cls) if f.init]
    for key in table:
        if key not in known:
            hint = f" (known: {', '.join(known)})" if known else " (this analysis has no settings)"
            raise InputError(f"{label}: {where} unknown key {key!r}{hint}")
    try:
        settings = TypeAdapter(cls).validate_json(_json(dict(table)), strict=True)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        if err.get("type") == "value_error" and isinstance(err.get("ctx", {}).get("error"), Exception):
            msg = str(err["ctx"]["error"])
        key = _path(loc)
        raise InputError(f"{label}: {where} {key + ': ' if key else ''}{msg}") from None
    except ContrastLensError as e:
        raise InputError(f"{label}: {where} {e}") from None
    except (TypeError, ValueError) as e:
        raise InputError(f"{label}: {where} {e}") from None
    try:
        canonical_json(asdict(settings))
    except (TypeError, ValueError) as e:
        raise InputError(f"{label}: {where} the settings are not JSON-able ({e}); a Settings dataclass holds "
                         "plain values only") from None
    return settings


# ------------------------------------------------------------------------------------------- loading
def _resolve_path(value: str, root: Path) -> str:
    return str((root / os.path.expanduser(value)).resolve())


def _resolve_source(source: str, root: Path) -> str:
    """A model source that is a path (starts with ``.``, ``/``, ``~``, or exists beside the study file)
    becomes absolute; an alias, ``random:...`` or a hub id stays as written."""
    if source.startswith(("./", "../", "/", "~", ".\\", "..\\")) or source in (".", ".."):
        return _resolve_path(source, root)
    if ":" not in source and (root / source).exists():
        return _resolve_path(source, root)
    return source


def import_plugins(names: list[str] | tuple[str, ...], root: str | Path, label: str) -> None:
    """Import the ``[study] plugins`` modules (they register analyses), with the study file's folder on
    ``sys.path``."""
    if not names:
        return
    r = str(Path(root).resolve())
    if r not in sys.path:
        sys.path.insert(0, r)
    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any import failure is the user's plugin
            first = (str(e).splitlines() or [""])[0]
            raise InputError(f"{label}: study.plugins[{i}]: cannot import {name!r} ({type(e).__name__}: {first})"
                             ) from None


def parse_study(data: Mapping[str, Any], *, root: str | os.PathLike, label: str = "study.toml",
                path: str | None = None) -> Study:
    """Validate the data of a study file (as :func:`tomllib.loads` returns it). ``root``: the folder
    relative paths resolve against; ``label``: how messages name the file."""
    rootp = Path(root).resolve()
    try:
        sf = StudyFile.model_validate_json(_json(dict(data)), strict=True)
    except ValidationError as e:
        raise InputError(_message(e, label)) from None
    except TypeError as e:
        raise InputError(f"{label}: a value is not plain data ({e})") from None
    st = sf.study
    models: list[ModelRef] = []
    seen: dict[str, int] = {}
    steps: dict[str, dict[int, int]] = {}
    for i, m in enumerate(sf.models):
        if m.name in seen:
            raise InputError(f"{label}: models[{i}].name: {m.name!r} is already the name of models[{seen[m.name]}]")
        seen[m.name] = i
        if m.series is not None:
            if m.step is None:
                raise InputError(f"{label}: models[{i}].step: model {m.name!r} of series {m.series!r} needs a step "
                                 "(its place in the checkpoint order)")
            other = steps.setdefault(m.series, {}).get(m.step)
            if other is not None:
                raise InputError(f"{label}: models[{i}].step: step {m.step} of series {m.series!r} is already the "
                                 f"step of models[{other}]")
            steps[m.series][m.step] = i
        elif m.step is not None:
            raise InputError(f"{label}: models[{i}].step: a step places a model in a checkpoint series; give "
                             "series = \"...\" too")
        models.append(ModelRef(name=m.name, source=_resolve_source(m.source, rootp), revision=m.revision,
                               series=m.series, step=m.step, dtype=m.dtype, attn=m.attn))
    names = tuple(m.name for m in models)
    cases: list[CaseSource] = []
    for i, c in enumerate(sf.cases):
        if c.models is not None:
            for j, n in enumerate(c.models):
                if n not in seen:
                    raise InputError(f"{label}: cases[{i}].models[{j}]: no model named {n!r} "
                                     f"(models: {', '.join(names)})")
            if not c.models:
                raise InputError(f"{label}: cases[{i}].models: an empty list runs these cases under no model; "
                                 "leave the key out to use every model")
        cases.append(CaseSource(path=_resolve_path(c.path, rootp),
                                models=tuple(dict.fromkeys(c.models)) if c.models is not None else names,
                                clean_only=c.clean_only, limit=c.limit,
                                ids=tuple(c.ids) if c.ids is not None else None, label=f"cases[{i}]"))
    rules = tuple(dict.fromkeys(sf.attribution.rules))
    import_plugins(st.plugins, rootp, label)
    analyses: dict[str, Any] = {}
    analysis_models: dict[str, tuple[str, ...]] = {}
    for name, table in sf.analyses.items():
        try:
            cls = type(get_analysis(name))
        except InputError as e:
            raise InputError(f"{label}: [analyses.{name}] {e}") from None
        table = dict(table)
        if "models" in table and "models" not in {f.name for f in fields(cls.Settings)}:
            # a key of every analysis table, not of its settings: the models the analysis runs on
            chosen = table.pop("models")
            if not isinstance(chosen, list) or not chosen or not all(isinstance(n, str) for n in chosen):
                raise InputError(f"{label}: [analyses.{name}] models: a non-empty list of model names, "
                                 f"not {chosen!r}")
            for n in chosen:
                if n not in seen:
                    raise InputError(f"{label}: [analyses.{name}] models: no model named {n!r} "
                                     f"(models: {', '.join(names)})")
            analysis_models[name] = tuple(dict.fromkeys(chosen))
        analyses[name] = validate_settings(cls.Settings, table, where=f"[analyses.{name}]", label=label)
    env_data = os.environ.get("CONTRASTLENS_DATA") or None
    # the study's own ``data`` is relative to its file; the variable, like any path a user types, to the
    # working directory
    data_dir = (_resolve_path(st.data, rootp) if st.data is not None
                else _resolve_path(env_data, Path.cwd()) if env_data is not None else None)
    r = sf.runner
    runner = RunnerSettings(num_cpus=r.num_cpus, num_gpus=r.num_gpus, actors_per_model=r.actors_per_model,
                            local_cpus=r.local_cpus, device=r.device)
    return Study(name=st.name, models=tuple(models), cases=tuple(cases), analyses=analyses,
                 analysis_models=analysis_models, rules=rules,
                 seed=st.seed, data=data_dir, root=str(rootp), path=path, description=st.description,
                 plugins=tuple(st.plugins), runner=runner, raw=json.loads(_json(dict(data))))


def load_study(path: str | os.PathLike) -> Study:
    """Read and validate a study file (relative paths resolve against its folder)."""
    p = Path(path)
    label = str(path)
    if p.is_dir():
        raise InputError(f"{label} is a folder; give the study file (TOML)")
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"study file {label} does not exist") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{label}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise InputError(f"cannot read study file {label}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{label}: invalid TOML: {e}") from None
    return parse_study(data, root=p.resolve().parent, label=label, path=str(p.resolve()))


def as_study(study: Study | str | os.PathLike) -> Study:
    return study if isinstance(study, Study) else load_study(study)


__all__ = ["RULES", "CaseSource", "RunnerSettings", "Study", "StudyFile", "as_study", "import_plugins",
           "load_study", "parse_study", "validate_settings"]
