"""What a collection run is told (:class:`CollectSettings`) and what it runs with (:class:`CollectResources`).

Settings are plain data: validated on construction, frozen, picklable and convertible to and from a dict
or JSON, so a run can be recorded, repeated, or shipped to a worker process. Each field carries its
command-line flag and help text in its metadata (see :func:`setting`); ``contrastlens collect`` builds its
options from them, so every default lives here only.

Resources are the live objects: the model, an optional sibling model and an optional LLM judge.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from contrastlens.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.benchmarks.base import Benchmark
    from contrastlens.models.loaded import LoadedModel


def setting(default: Any, help: str, *, flag: str | None = None, group: str = "run", metavar: str | None = None,
            from_cli: Callable[[Any], Any] | None = None, default_help: str | None = None,
            no_help: str | None = None, repeatable: bool = False) -> Any:
    """A :class:`CollectSettings` field with its command-line description.

    ``flag``: the option (default ``--`` + the name with dashes); ``group``: the help section;
    ``from_cli``: maps the parsed option value to the setting (e.g. ``-1`` to None); ``default_help``: how
    the help shows the default; ``no_help``: help of the ``--no-...`` option of a boolean that defaults to
    True; ``repeatable``: the option may be given several times (a tuple setting)."""
    meta = {"help": help, "flag": flag, "group": group, "metavar": metavar, "from_cli": from_cli,
            "default_help": default_help, "no_help": no_help, "repeatable": repeatable}
    return field(default=default, metadata=meta)


def _slack_from_cli(v: int) -> int | None:
    return None if v < 0 else v


def _contrast_from_cli(v: str) -> int | str:
    return int(v[1:]) if v.startswith("#") and v[1:].isdigit() else v


def _ids_from_cli(v: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in v.split(",") if s.strip())


@dataclass(frozen=True)
class CollectSettings:
    """Every setting of a collection run (see docs/collect.md). Invalid values raise :class:`InputError`
    on construction; lists are stored as tuples."""

    # -- generation
    max_new_tokens: int | None = setting(
        None, "generation budget in new tokens", group="generation", metavar="N",
        default_help="the benchmark's: 256, 384 for humaneval, 96 for gaia2")
    batch_size: int = setting(8, "prompts generated together", group="generation", metavar="N")
    chat: bool = setting(True, "render prompts with the chat template", group="generation",
                         no_help="plain prompts, no chat template (the messages' text, or the benchmark's own "
                                 "prompt: for humaneval the function to complete)")
    regenerate: bool = setting(False, "gaia2 traces: generate the last turn anew instead of taking the recorded one",
                               group="generation")
    # -- localisation
    top_k: int = setting(4, "alternatives rolled out per probed position", group="localisation", metavar="K")
    max_probes: int = setting(
        12, "positions probed per case by the checker-guided probes and the binary search (0: checker-guided "
            "probes and the scan only)", group="localisation", metavar="N")
    scan_probes: int | None = setting(
        None, "positions probed by the uncertainty scan when the binary search finds nothing (0: no scan)",
        group="localisation", metavar="N", default_help="--max-probes")
    rollout_slack: int | None = setting(
        64, "a rollout stops this many tokens past the failed completion's length (-1: only --max-new-tokens "
            "bounds it)", group="localisation", metavar="N", from_cli=_slack_from_cli)
    rollout_batch: int = setting(
        32, "rollouts per batch when the scan or the checker probes several positions at once (on a CPU a "
            "decoding step for 32 rows costs about twice one for 8)", group="localisation", metavar="ROWS")
    failure_index: int | None = setting(None, "manual localisation: the failure token's index in the completion",
                                        group="localisation", metavar="N")
    contrast: int | str | None = setting(None, "manual localisation: the contrast token (a string, or #ID)",
                                         group="localisation", metavar="TOKEN", from_cli=_contrast_from_cli)
    # -- items
    items: tuple[str, ...] | None = setting(None, "comma-separated item ids to run", group="items",
                                            metavar="ID,ID", from_cli=_ids_from_cli, default_help="all")
    filters: tuple[str, ...] = setting(
        (), "keep items whose data field (or one element of a list field) equals one of the values, e.g. "
            "level=1,2 or instruction_id_list=punctuation:no_comma; repeatable", flag="--filter", group="items",
        metavar="FIELD=V1,V2", repeatable=True, default_help="none")
    offset: int = setting(0, "skip the first N selected items", group="items", metavar="N")
    limit: int | None = setting(None, "run the first N selected items only", group="items", metavar="N",
                                default_help="all")
    # -- model and display
    dtype: str | None = setting(None, "model dtype: float32, bfloat16 or float16", group="model",
                                default_help="float32")
    threads: int | None = setting(None, "torch CPU threads", group="model", metavar="N",
                                  default_help="torch's choice")
    progress: bool = setting(True, "show a progress bar (items, tokens/s) on stderr", group="output",
                             no_help="no progress bar")
    # -- code execution
    unsafe_exec: bool = setting(
        False, "run generated code (humaneval) without the bubblewrap sandbox, in a plain subprocess with an "
               "in-process guard only: hostile code can escape it (see docs/security.md)", group="sandbox")

    def __post_init__(self) -> None:
        for name in ("items", "filters"):  # JSON gives lists; a bare string is one filter / a comma list
            v = getattr(self, name)
            if isinstance(v, str):
                v = _ids_from_cli(v) if name == "items" else (v,)
            if isinstance(v, list):
                v = tuple(v)
            object.__setattr__(self, name, v)
        self.validate()

    # ---------------------------------------------------------------- checks
    @staticmethod
    def label(name: str) -> str:
        """A setting as errors name it: ``max_new_tokens (--max-new-tokens)``."""
        f = _FIELDS[name]
        return f"{name} ({f.metadata.get('flag') or '--' + name.replace('_', '-')})"

    def validate(self) -> None:
        """Check every field's type and range; raises :class:`InputError` naming the setting and its flag."""
        hints = _hints()
        for f in fields(self):
            _check_type(self.label(f.name), getattr(self, f.name), hints[f.name])
        positive = ("max_new_tokens", "batch_size", "top_k", "rollout_batch", "threads")
        for name in positive:
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(f"{self.label(name)} must be at least 1, not {v}")
        for name in ("max_probes", "scan_probes", "rollout_slack", "failure_index", "offset", "limit"):
            v = getattr(self, name)
            if v is not None and v < 0:
                hint = " (None turns it off; on the command line -1)" if name == "rollout_slack" else ""
                raise InputError(f"{self.label(name)} must be 0 or more, not {v}{hint}")
        if self.contrast is not None and self.failure_index is None:
            raise InputError("--contrast needs --failure-index (contrast is only used with a manual failure_index)")
        if isinstance(self.contrast, str) and not self.contrast:
            raise InputError(f"{self.label('contrast')} is empty")
        if self.items is not None and not self.items:
            raise InputError(f"{self.label('items')} names no item id")
        from contrastlens.benchmarks.select import parse_filter

        for spec in self.filters:
            parse_filter(spec)

    # ---------------------------------------------------------------- use
    def new_tokens(self, bench: Benchmark) -> int:
        """The generation budget: ``max_new_tokens``, else the benchmark's default."""
        return self.max_new_tokens if self.max_new_tokens is not None else int(bench.default_max_new_tokens)

    def selection(self) -> dict[str, Any]:
        """The item selection as keyword arguments of :func:`contrastlens.benchmarks.select_items`."""
        return {"ids": self.items, "filters": self.filters, "offset": self.offset, "limit": self.limit}

    def replace(self, **changes: Any) -> CollectSettings:
        """A copy with some settings changed (validated)."""
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, JSON-ready (tuples as lists)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectSettings:
        """Settings from :meth:`to_dict` output (missing names take their defaults; unknown names are an
        :class:`InputError`)."""
        if not isinstance(data, dict):
            raise InputError(f"collect settings must be a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise InputError(f"unknown collect setting(s): {', '.join(unknown)} (known: {', '.join(_FIELDS)})")
        return cls(**data)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> CollectSettings:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(f"collect settings are not valid JSON ({e})") from None
        return cls.from_dict(data)


_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(CollectSettings)}
_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(CollectSettings))
    return _HINTS


def _allowed(hint: Any) -> list[Any]:
    """The concrete types a field annotation allows (``int | None`` -> [int, NoneType])."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for arg in args for a in _allowed(arg)]
    return [hint]


def _type_name(t: Any) -> str:
    if t is type(None):
        return "None"
    if typing.get_origin(t) is tuple:
        return "a list of strings"
    return {int: "an integer", str: "a string", bool: "true or false"}.get(t, getattr(t, "__name__", str(t)))


def _check_type(label: str, value: Any, hint: Any) -> None:
    for t in _allowed(hint):
        if t is type(None) and value is None:
            return
        if t is bool and isinstance(value, bool):
            return
        if t in (int, str) and isinstance(value, t) and not isinstance(value, bool):
            return
        if typing.get_origin(t) is tuple and isinstance(value, tuple) and all(isinstance(x, str) for x in value):
            return
    want = " or ".join(_type_name(t) for t in _allowed(hint))
    raise InputError(f"{label} must be {want}, not {value!r}")


@dataclass
class CollectResources:
    """The live objects a run uses: the model ``lm``, an optional ``sibling`` model with the same
    tokenizer (its top-10 are tried when the model's own alternatives rescue nothing) and an optional
    ``judge`` (LLM judge: payload text -> answer text, see :func:`contrastlens.collect.localise.http_judge`)."""

    lm: LoadedModel
    sibling: LoadedModel | None = None
    judge: Callable[[str], str] | None = None

    def __post_init__(self) -> None:
        if self.sibling is not None and self.sibling.tokenizer.get_vocab() != self.lm.tokenizer.get_vocab():
            raise InputError(f"the sibling model {self.sibling.source} does not share the tokenizer of {self.lm.source}")

    @classmethod
    def load(cls, settings: CollectSettings, model: str, *, sibling: str | None = None,
             judge_url: str | None = None, judge_model: str | None = None,
             judge_api_key: str | None = None) -> CollectResources:
        """Load ``model`` (and ``sibling``) with ``settings.dtype`` after setting ``settings.threads``, and
        connect the judge at ``judge_url`` (an OpenAI-compatible endpoint; needs ``judge_model``)."""
        from contrastlens.collect.localise import http_judge
        from contrastlens.models.loading import load_model

        if judge_url and not judge_model:
            raise InputError("--judge-url needs --judge-model")
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        lm = load_model(model, dtype=settings.dtype)
        sib = load_model(sibling, dtype=settings.dtype) if sibling else None
        judge = http_judge(judge_url, judge_model, judge_api_key) if judge_url and judge_model else None
        return cls(lm, sib, judge)


@dataclass
class CollectConfig:
    """Deprecated: the settings and resources of a run in one object. Use :class:`CollectSettings` and
    :class:`CollectResources` (``k`` is ``top_k``, ``batch_rows`` is ``rollout_batch``)."""

    max_new_tokens: int = 256
    batch_size: int = 8
    k: int = 4
    max_probes: int = 12
    scan_probes: int | None = None
    rollout_slack: int | None = 64
    batch_rows: int = 32
    chat: bool = True
    regenerate: bool = False
    sibling: LoadedModel | None = None
    judge: Callable[[str], str] | None = None
    failure_index: int | None = None
    contrast: int | str | None = None
    progress: bool = True
    on_item: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        warnings.warn("CollectConfig is deprecated; use CollectSettings and CollectResources "
                      "(contrastlens.collect)", DeprecationWarning, stacklevel=3)

    def settings(self) -> CollectSettings:
        """The :class:`CollectSettings` of this config."""
        return CollectSettings(
            max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, top_k=self.k, max_probes=self.max_probes,
            scan_probes=self.scan_probes, rollout_slack=self.rollout_slack, rollout_batch=self.batch_rows,
            chat=self.chat, regenerate=self.regenerate, failure_index=self.failure_index, contrast=self.contrast,
            progress=self.progress)

    def resources(self, lm: LoadedModel) -> CollectResources:
        """The :class:`CollectResources` of this config with the model ``lm``."""
        return CollectResources(lm, self.sibling, self.judge)
