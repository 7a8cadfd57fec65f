"""``FailureCase``: one benchmark failure of one model, localised to the token where it went wrong.

Token ids are the truth; every string field is for display. The schema is versioned
(``schema_version``) and validated on construction and on load. Version 2 added ``provenance`` (package
versions, model source, revision and weight fingerprint); version 1 files still load (with no
provenance) and are written back as version 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contrastlens.attribution.spec import AttributionInputs, AttributionSpec
from contrastlens.errors import InputError
from contrastlens.provenance import Provenance

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.models.loaded import LoadedModel

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

Method = Literal["rollout", "sibling", "judge", "manual"]
SEGMENT_NAMES = ("instruction", "query", "answer")


class Rollout(BaseModel):
    """One top-k alternative at the failure position, continued greedily and scored."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(ge=0)
    token_id: int = Field(ge=0)
    token_str: str
    logit: float
    continuation: str
    passed: bool | None = None
    source: str = "model"  # "model" (the case's model top-k) or "sibling"


class FailureCase(BaseModel):
    """A localised (or not yet localised) failure case. See ``docs/collect.md`` for every field."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    id: str = Field(min_length=1)
    benchmark: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    model_source: str
    model_revision: str | None = None

    messages: list[dict[str, Any]] = Field(default_factory=list)
    prompt: str  # rendered prompt (chat template applied when chat=True)
    prompt_ids: list[int]
    chat: bool = True

    completion: str
    completion_ids: list[int]
    stopped: bool = True  # the model ended the completion itself (False: max_new_tokens reached)
    passed: bool = False  # the checker's verdict on the greedy completion
    details: dict[str, Any] = Field(default_factory=dict)

    status: Literal["localised", "unlocalised"] = "unlocalised"
    failure_index: int | None = None  # token index into completion_ids
    target_id: int | None = None
    target_str: str | None = None
    contrast_id: int | None = None
    contrast_str: str | None = None
    completion_before_err: str | None = None
    delta_logit: float | None = None  # logit(target) - logit(contrast) at the failure position
    clean: bool = False  # delta_logit > 1
    method: Method | None = None
    rollouts: list[Rollout] = Field(default_factory=list)
    n_rollouts: int = 0  # continuations generated to localise this case
    n_positions: int = 0  # completion positions probed
    segments: dict[str, list[tuple[int, int]]] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    # package versions, model source, revision and weight fingerprint (None: written before version 2)
    provenance: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> FailureCase:
        if self.schema_version not in READABLE_VERSIONS:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported (this version reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        self.schema_version = SCHEMA_VERSION
        for name, spans in self.segments.items():
            if name not in SEGMENT_NAMES:
                raise ValueError(f"unknown segment {name!r}; segments are {', '.join(SEGMENT_NAMES)}")
            for a, b in spans:
                if not 0 <= a <= b:
                    raise ValueError(f"segment {name} span ({a}, {b}) is not a valid character span")
        if self.status == "localised":
            missing = [f for f in ("failure_index", "target_id", "contrast_id", "method", "delta_logit")
                       if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a localised case needs {', '.join(missing)}")
            fi = self.failure_index
            assert fi is not None
            if not 0 <= fi < len(self.completion_ids):
                raise ValueError(
                    f"failure_index {fi} is outside the completion ({len(self.completion_ids)} tokens)"
                )
            if self.completion_ids[fi] != self.target_id:
                raise ValueError(
                    f"target_id {self.target_id} is not the completion token {self.completion_ids[fi]} "
                    f"at failure_index {fi}"
                )
            if self.contrast_id == self.target_id:
                raise ValueError("contrast_id equals target_id")
            clean = bool(self.delta_logit is not None and self.delta_logit > 1.0)
            if self.clean != clean:
                raise ValueError(f"clean={self.clean} but delta_logit={self.delta_logit} (clean means > 1)")
        elif self.clean:
            raise ValueError("an unlocalised case cannot be clean")
        return self

    # ------------------------------------------------------------------ helpers
    @property
    def ids_before_err(self) -> list[int]:
        """Prompt ids followed by the completion ids before the failure token: the input to explain."""
        if self.failure_index is None:
            raise ValueError(f"case {self.id} is not localised")
        return list(self.prompt_ids) + list(self.completion_ids[: self.failure_index])

    @property
    def model_provenance(self) -> Provenance | None:
        """The provenance of the model the case was collected with (None for version-1 cases)."""
        return Provenance.from_dict(self.provenance)

    def spec(self, *, rule: str = "attnlrp", dtype: str = "float32", attn_implementation: str | None = None
             ) -> AttributionSpec:
        """The attribution spec of explaining this case: Δℓ of its target vs its contrast at the position
        before the failure token (the rule, dtype and kernel are the explainer's choice)."""
        ids, target, contrast = self.explained_inputs()
        return AttributionSpec(target_id=target, contrast_id=contrast, position=len(ids) - 1, objective="logit_diff",
                               rule=rule, dtype=dtype, attn_implementation=attn_implementation)

    def explained_inputs(self) -> tuple[list[int], int, int]:
        if self.status != "localised" or self.target_id is None or self.contrast_id is None:
            raise InputError(f"case {self.id} is not localised (no failure token / contrast); nothing to explain")
        return self.ids_before_err, int(self.target_id), int(self.contrast_id)

    def attribution_inputs(self, lm: LoadedModel) -> AttributionInputs:
        """What ``explain(lm, case)`` explains (the :class:`~contrastlens.attribution.spec.Explainable`
        protocol): the ids before the failure token verbatim, the target and contrast ids, the segments as
        token ranges and the case's model provenance."""
        from contrastlens.cases.segments import case_token_segments

        ids, target, contrast = self.explained_inputs()
        if lm.vocab_size and max(self.prompt_ids + self.completion_ids, default=0) >= lm.vocab_size:
            raise InputError(f"case {self.id} was made with a different tokenizer than {lm.source}")
        return AttributionInputs(ids=ids, target_id=target, contrast_id=contrast, label=f"case {self.id}",
                                 segments=case_token_segments(lm, self), provenance=self.model_provenance)

    def summary(self) -> str:
        if self.status != "localised":
            return f"{self.id}: unlocalised ({self.benchmark} item {self.item_id})"
        return (
            f"{self.id}: token {self.failure_index} {self.target_str!r} (#{self.target_id}) vs "
            f"{self.contrast_str!r} (#{self.contrast_id}), dl={self.delta_logit:.2f}, "
            f"{'clean' if self.clean else 'not clean'}, by {self.method}, {self.n_rollouts} rollouts"
        )


def case_id(benchmark: str, item_id: str) -> str:
    """The id of the case of ``item_id`` (one case per benchmark item and model run)."""
    return f"{benchmark}-{item_id}".replace("#", "_").replace("/", "_").replace(" ", "_")
