"""The pieces a study is made of: models, units of work, analyses and report sections.

A study runs every **unit** ``(case, model, analysis, rule)``: one failure case, explained or probed under
one model, by one analysis. A unit returns a :class:`UnitResult` (named pandas tables, named numpy tensors
and JSON-able metadata); the runner stores it atomically and never runs it again unless its
:attr:`UnitKey.digest` changes (the digest covers the case record, the model reference, the analysis
settings and the attribution settings, so changing one setting re-runs only the units that depend on it).

An **analysis** is a class registered with :func:`register_analysis`:

- ``name``: the key in the study file's ``[analyses.NAME]`` table;
- ``Settings``: a dataclass of its settings, every field with a default (validated from the study file);
- ``report_settings`` (optional): names of settings only its report reads; they are left out of the unit
  digest, so changing one re-runs no unit;
- ``per_rule`` (optional, default True): False when a unit does not depend on the rule (e.g. it compares
  attribution methods it names itself); its units then run once, under the study's first rule;
- ``skip(case, model, study, settings)``: why the unit does not apply (``None`` when it does), e.g.
  cross-checkpoint skips models outside its series;
- ``run(ctx)``: the unit's work, from a :class:`UnitContext` (the case, the loaded model, the settings and a
  memoised ``explain``), returning a :class:`UnitResult`;
- ``report(tables, study, settings)``: one :class:`Section` of the report from the concatenated tables of
  all finished units (each row tagged with ``case``, ``model`` and ``rule`` by the store).

Analyses are plain functions of their inputs underneath (``study/analyses/*.py``); the classes here only
adapt them to the runner.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from contrastlens.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from contrastlens.attribution.explanation import Explanation
    from contrastlens.cases.schema import FailureCase
    from contrastlens.models.loaded import LoadedModel


def canonical_json(obj: Any) -> str:
    """Sorted, compact JSON of plain data (dataclasses become dicts): the input of every digest."""
    def default(o: Any) -> Any:
        if is_dataclass(o) and not isinstance(o, type):
            return asdict(o)
        if isinstance(o, set | frozenset):
            return sorted(o)
        raise TypeError(f"not JSON-able: {type(o).__name__}")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default)


def digest(obj: Any, n: int = 16) -> str:
    """The first ``n`` hex digits of the SHA-256 of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class ModelRef:
    """One model of a study (settings only; the loaded model is a resource the runner holds).

    ``name``: the study's label (unique); ``source``: a catalog alias, a folder, a ``.gguf`` file or a hub
    id; ``revision``: the hub revision. ``series`` and ``step`` place the model in an ordered checkpoint
    series (models of one series sorted by ``step``). ``dtype`` and ``attn`` as in ``load_model``.
    """

    name: str
    source: str
    revision: str | None = None
    series: str | None = None
    step: int | None = None
    dtype: str = "float32"
    attn: str = "eager"

    def load_key(self) -> tuple[str, str | None, str, str]:
        """Models with the same key are the same loaded weights (the runner loads each once)."""
        return (self.source, self.revision, self.dtype, self.attn)


@dataclass(frozen=True)
class UnitKey:
    """The identity of a unit of work and the digest that decides whether its stored result is current."""

    analysis: str
    model: str
    case: str
    rule: str
    digest: str

    @property
    def id(self) -> str:
        """``analysis/model/rule/case``: the unit's readable identity (stable across setting changes)."""
        return f"{self.analysis}/{self.model}/{self.rule}/{self.case}"


@dataclass
class UnitResult:
    """What a unit produced: ``tables`` (name -> DataFrame; the store adds ``case``, ``model``, ``rule``
    columns), ``tensors`` (name -> numpy array, stored as safetensors) and ``meta`` (JSON-able: the spec,
    timings, notes)."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Figure:
    """A report figure: a matplotlib figure and its caption."""

    caption: str
    figure: Any  # matplotlib.figure.Figure


@dataclass
class Table:
    """A report table: a DataFrame and its caption (``float_format`` for display)."""

    caption: str
    frame: pd.DataFrame
    float_format: str = "{:.3g}"


@dataclass
class Section:
    """One section of the study report: a title, Markdown text (method, criteria, findings), tables and
    figures. ``html``: extra self-contained HTML (e.g. the edited prompts of the prompt-debugging loop)."""

    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    html: str = ""


@dataclass(frozen=True)
class StudyInfo:
    """What an analysis may know about the whole study: its name, the models in order, the attribution
    settings (``rule`` of the unit is passed separately), the data folder of the benchmark checkers, the
    folder of the study file (``root``: relative paths in settings resolve against it) and the results
    folder (``out``: e.g. manual labels stored beside the results)."""

    name: str
    models: tuple[ModelRef, ...]
    attribution: Mapping[str, Any]
    data: str | None = None
    root: str | None = None
    out: str | None = None

    def model(self, name: str) -> ModelRef:
        for m in self.models:
            if m.name == name:
                return m
        raise InputError(f"no model named {name!r} in the study (models: {', '.join(m.name for m in self.models)})")

    def series(self, name: str) -> list[ModelRef]:
        """The models of checkpoint series ``name``, sorted by step."""
        return sorted((m for m in self.models if m.series == name), key=lambda m: (m.step is None, m.step or 0))


@dataclass
class UnitContext:
    """Everything a unit's ``run`` gets. ``explain(method="attnlrp", **options)`` explains the case under
    the unit's model with the unit's rule and the study's attribution settings, memoised per worker (so
    several analyses of one (case, model) share an explanation). ``method=None`` means the unit's rule
    (``attnlrp`` or ``cp-lrp``); ``options`` are the method's options (they go into ``method_params``) and
    ``explain``'s own keywords (``objective``, ``keep_states``, ``checkpointing``, ``method_params``,
    ``on_model_mismatch``)."""

    case: FailureCase
    lm: LoadedModel
    model: ModelRef
    rule: str
    settings: Any
    study: StudyInfo
    explain: Callable[..., Explanation]


class Analysis(Protocol):
    """The interface the runner drives (see the module docstring)."""

    name: ClassVar[str]
    Settings: ClassVar[type]

    def skip(self, case: FailureCase, model: ModelRef, study: StudyInfo, settings: Any) -> str | None: ...

    def run(self, ctx: UnitContext) -> UnitResult: ...

    def report(self, tables: Mapping[str, pd.DataFrame], study: StudyInfo, settings: Any) -> Section: ...


_ANALYSES: dict[str, type] = {}


def register_analysis(cls: type, *, overwrite: bool = False) -> type:
    """Register an analysis class under ``cls.name`` (usable as a decorator). Refuses to replace a name
    unless ``overwrite``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls!r} has no string attribute 'name'")
    settings = getattr(cls, "Settings", None)
    if not (isinstance(settings, type) and is_dataclass(settings)):
        raise TypeError(f"analysis {name!r}: Settings must be a dataclass")
    if name in _ANALYSES and not overwrite and _ANALYSES[name] is not cls:
        raise InputError(f"an analysis named {name!r} is already registered (pass overwrite=True to replace it)")
    _ANALYSES[name] = cls
    return cls


def unregister_analysis(name: str) -> None:
    _ANALYSES.pop(name, None)


def analysis_names() -> list[str]:
    _load_builtin()
    return sorted(_ANALYSES)


def get_analysis(name: str) -> Analysis:
    """A fresh instance of the analysis registered as ``name``."""
    _load_builtin()
    try:
        return _ANALYSES[name]()
    except KeyError:
        raise InputError(f"unknown analysis {name!r}; known: {', '.join(sorted(_ANALYSES))}") from None


def settings_fields(cls: type) -> dict[str, Any]:
    """Field name -> default of a Settings dataclass."""
    out = {}
    for f in fields(cls):
        out[f.name] = f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
    return out


def _load_builtin() -> None:
    import contrastlens.study.analyses  # noqa: F401  (registers the built-in analyses)


__all__ = [
    "Analysis", "Figure", "ModelRef", "Section", "StudyInfo", "Table", "UnitContext", "UnitKey", "UnitResult",
    "analysis_names", "canonical_json", "digest", "get_analysis", "register_analysis", "settings_fields",
    "unregister_analysis",
]
