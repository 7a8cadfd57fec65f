"""The result of one explanation, with saving, loading and rendering."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrastlens.attribution.spec import AttributionSpec
from contrastlens.provenance import Provenance

FORMAT_VERSION = 2  # 2: the resolved spec, provenance and segments; version 1 files still load
_ARRAYS = ("input_relevance", "layer_relevance", "mid_relevance")
_V1_SPEC_FIELDS = ("rule", "objective", "target_id", "contrast_id", "position")


@dataclass
class Explanation:
    """Relevance of every input token and residual-stream state for one contrastive prediction.

    ``input_relevance`` [n]: token embeddings ⊙ modified gradient, summed over the hidden dimension.
    ``layer_relevance`` [L+1, n]: row 0 the input of block 0 (embeddings), row l+1 the output of block l.
    ``mid_relevance`` [L, n]: residual stream after block l's attention, before its MLP.
    Positive relevance supports the target, negative the contrast. ``layer_relevance[-1, position]``
    equals ``logit_diff`` (minus ``final_norm_bias_share``, non-zero only for LayerNorm models with a
    bias in the final norm).

    ``spec``: the resolved :class:`AttributionSpec` (target, contrast, objective and its parameters, method
    and its options, rule, position, dtype, attention kernel); ``method``, ``rule``, ``objective``,
    ``target_id``, ``contrast_id`` and ``position`` read from it. Only the LRP methods (``attnlrp``,
    ``cp-lrp``) fill ``layer_relevance`` and ``mid_relevance``; for the others they are zeros and
    ``meta["hidden_relevance"]`` (``hidden_relevance``) is False. ``provenance``: package versions, model
    source, revision and weight fingerprint. ``segments``: token spans ``[start, end)`` of the prompt segments (``instruction``,
    ``query``, ``answer``) when the explained input came with them (a failure case).
    """

    source: str
    spec: AttributionSpec
    objective_description: str
    target_str: str
    contrast_str: str | None
    input_ids: list[int]
    tokens: list[str]
    special_mask: list[bool]
    prompt: str | None
    logit_diff: float
    input_relevance: np.ndarray
    layer_relevance: np.ndarray
    mid_relevance: np.ndarray
    final_norm_bias_share: float = 0.0
    top_logits: list[tuple[int, str, float]] = field(default_factory=list)
    provenance: Provenance | None = None
    segments: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    states: dict | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ spec
    @property
    def rule(self) -> str | None:
        """The LRP rule (None for a method without rules, e.g. ``ixg``)."""
        return self.spec.rule

    @property
    def method(self) -> str:
        """The attribution method (``attnlrp``, ``cp-lrp``, ``ixg``, ``ig``, ``occlusion``, ...)."""
        return str(self.spec.method)

    @property
    def hidden_relevance(self) -> bool:
        """Whether ``layer_relevance``, ``mid_relevance`` (and ``states``) hold relevance: only the LRP
        methods give it; the others leave zeros there."""
        return bool(self.meta.get("hidden_relevance", self.spec.rule_based))

    @property
    def objective(self) -> str:
        return self.spec.objective

    @property
    def target_id(self) -> int:
        return self.spec.target_id

    @property
    def contrast_id(self) -> int | None:
        return self.spec.contrast_id

    @property
    def position(self) -> int:
        return self.spec.position

    # ------------------------------------------------------------------ info
    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_layers(self) -> int:
        return int(self.layer_relevance.shape[0] - 1)

    def top_tokens(self, k: int = 5, sign: int = 1) -> list[tuple[int, str, float]]:
        """The k strongest non-special tokens supporting the target (sign=1) or the contrast (sign=-1)."""
        r = np.asarray(self.input_relevance, dtype=np.float64) * sign
        order = [i for i in np.argsort(-r) if not self.special_mask[i] and r[i] > 0]
        return [(int(i), self.tokens[i], float(self.input_relevance[i])) for i in order[:k]]

    def normalized(self, mode: str = "max_abs") -> np.ndarray:
        from contrastlens.viz.normalize import normalize

        return normalize(self.input_relevance, self.special_mask, mode)

    def segment_masks(self) -> dict[str, np.ndarray]:
        """Boolean token masks of the three prompt segments, as the paper defines them: ``instruction``
        (tokens overlapping the instruction), ``answer`` (tokens of the completion before the error, minus
        instruction tokens) and ``query`` (every other non-special token)."""
        from contrastlens.errors import InputError

        if not self.segments:
            raise InputError("this explanation has no prompt segments (explain a FailureCase to get them)")
        n = self.n_tokens
        special = np.asarray(self.special_mask, dtype=bool)

        def mask(name: str) -> np.ndarray:
            m = np.zeros(n, dtype=bool)
            for a, b in self.segments.get(name, []):
                m[max(0, a) : min(n, b)] = True
            return m & ~special

        inst = mask("instruction")
        ans = mask("answer") & ~inst
        query = ~inst & ~ans & ~special
        return {"instruction": inst, "query": query, "answer": ans}

    def segment_sums(self, norm: str = "max_abs") -> dict[str, float]:
        """Per-segment sums of the normalised input relevance (special tokens excluded), as in the paper's
        Fig. 5: ``instruction``, ``query``, ``answer`` and their ``total``. ``norm`` is a heatmap
        normalisation (``max_abs``, ``sum_abs``, ``abs_sum``)."""
        r = self.normalized(norm)
        out = {name: float(r[m].sum()) for name, m in self.segment_masks().items()}
        out["total"] = out["instruction"] + out["query"] + out["answer"]
        return out

    # ----------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        skip = set(_ARRAYS) | {"states", "spec", "provenance", "segments"}
        d: dict[str, Any] = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip}
        d["spec"] = self.spec.to_dict()
        d["spec_hash"] = self.spec.hash()
        d["provenance"] = self.provenance.to_dict() if self.provenance is not None else None
        d["segments"] = {k: [list(span) for span in v] for k, v in self.segments.items()}
        for k in _ARRAYS:
            d[k] = np.asarray(getattr(self, k)).tolist()
        d["format_version"] = FORMAT_VERSION
        return d

    def to_json(self, path: str | Path | None = None) -> str:
        s = json.dumps(self.to_dict(), ensure_ascii=False)
        if path is not None:
            Path(path).write_text(s, encoding="utf-8")
        return s

    def save(self, path: str | Path) -> Path:
        """Save to a ``.ctl`` file (a zip of JSON metadata and float32 arrays)."""
        path = Path(path)
        meta = {k: v for k, v in self.to_dict().items() if k not in _ARRAYS}
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("meta.json", json.dumps(meta, ensure_ascii=False))
            for k in _ARRAYS:
                buf = io.BytesIO()
                np.save(buf, np.asarray(getattr(self, k), dtype=np.float32))
                z.writestr(f"{k}.npy", buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Explanation:
        """Read a ``.ctl`` file written by :meth:`save` (format 2, or format 1 of earlier versions)."""
        from contrastlens.errors import ContrastLensError

        try:
            with zipfile.ZipFile(path) as z:
                meta = json.loads(z.read("meta.json"))
                arrays = {k: np.load(io.BytesIO(z.read(f"{k}.npy"))) for k in _ARRAYS}
        except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
            raise ContrastLensError(f"{path} is not a readable explanation file: {e}") from None
        version = meta.pop("format_version", None)
        if version == 1:  # the spec's fields were top-level; dtype and attention kernel were in meta
            old = meta.get("meta", {})
            meta["spec"] = {
                **{k: meta.pop(k) for k in _V1_SPEC_FIELDS},
                "dtype": old.pop("dtype", "float32"), "attn_implementation": old.pop("attn_implementation", None),
            }
        elif version != FORMAT_VERSION:
            raise ContrastLensError(f"{path} has an unsupported explanation format version {version!r}")
        meta.pop("spec_hash", None)
        meta["spec"] = AttributionSpec.from_dict(meta["spec"])
        meta["provenance"] = Provenance.from_dict(meta.get("provenance"))
        meta["segments"] = {k: [tuple(span) for span in v] for k, v in (meta.get("segments") or {}).items()}
        meta["top_logits"] = [tuple(t) for t in meta.get("top_logits", [])]
        return cls(**meta, **arrays)

    # -------------------------------------------------------------- rendering
    def to_html(self, path: str | Path | None = None, *, norm: str = "max_abs") -> str:
        from contrastlens.viz.html import explanation_html

        html = explanation_html(self, norm=norm)
        if path is not None:
            Path(path).write_text(html, encoding="utf-8")
        return html

    def _repr_html_(self) -> str:
        from contrastlens.viz.html import explanation_html

        return explanation_html(self, norm="max_abs", full_page=False)

    def to_latex(self, path: str | Path | None = None, *, norm: str = "max_abs") -> str:
        from contrastlens.viz.latex import explanation_latex

        tex = explanation_latex(self, norm=norm)
        if path is not None:
            Path(path).write_text(tex, encoding="utf-8")
        return tex

    def to_png(self, path: str | Path, *, norm: str = "max_abs") -> Path:
        from contrastlens.viz.png import explanation_png

        return explanation_png(self, path, norm=norm)

    def print(self, *, norm: str = "max_abs", top: int = 5, console=None) -> None:
        from contrastlens.viz.terminal import print_explanation

        print_explanation(self, norm=norm, top=top, console=console)

    def __repr__(self) -> str:
        return (
            f"Explanation({self.source!r}, target={self.target_str!r}, contrast={self.contrast_str!r}, "
            f"objective={self.objective}, logit_diff={self.logit_diff:.4f}, n={self.n_tokens}, "
            f"layers={self.num_layers})"
        )
