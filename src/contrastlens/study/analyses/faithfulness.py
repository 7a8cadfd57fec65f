r"""Faithfulness of input relevance: does masking the tokens an explanation ranks highest flip the prediction?

The metrics have the shape of captum's: functions of a *forward function*, an attribution vector and the
positions that may be perturbed, evaluated in batches. The forward function maps a boolean mask array
``masks`` [B, n] (True: the token at that position is masked) to Δℓ [B] (float64), Δℓ = ℓ(target) −
ℓ(contrast) at the explained position. :class:`DeltaForward` is that function for a model and one
explained input; any callable of the same shape works (the tests use a synthetic additive one).

Masking (:class:`DeltaForward`, ``masking=``) replaces the *token embedding* of a masked position, the
sequence length stays the same and positional information (rotary or learned position embeddings, added
inside the model) is kept:

- ``zero`` (default): the zero vector;
- ``neutral``: the embedding of ``neutral_token_id`` (e.g. a space or a pad token);
- ``mean``: the mean of the embedding matrix's rows (times the model's embedding scale, e.g. Gemma's √d).

Special tokens (``Explanation.special_mask``) are never masked (a mask that names one is ignored there),
and positions after the explained position are irrelevant to a causal model: they are not maskable and
the forward stops at the explained position.

Orderings. From an attribution vector r [n] (e.g. ``ex.input_relevance``, positive supports the target)
the MoRF order (most relevant first) sorts the maskable positions by r descending (ties: earlier position
first); the LeRF order (least relevant first) is its exact reverse. :func:`random_scores` gives a seeded
random order. With π the order and S_k = {π_1, …, π_k}, Δℓ_k = F(mask S_k), k = 0 … K, K ≤ m (the number
of maskable positions; ``steps`` sets K, default m):

- **tokens to flip**: the smallest k with Δℓ_k < 0 under MoRF (0 if Δℓ_0 < 0); censored at ``limit``
  (default m) when no k ≤ limit flips, reported as ``limit`` with ``censored=True``.
- **MoRF / LeRF curves**: (Δℓ_0, …, Δℓ_K) under each order, computed in one batched call.
- **area between the curves** (the AttnLRP paper's protocol; larger is better), in units of Δℓ:
  ABPC = (1/K) Σ_{k=1}^{K} (Δℓ_k^LeRF − Δℓ_k^MoRF) (the k = 0 term is 0; K steps).
- **AOPC** (larger is better): (1/K) Σ_{k=1}^{K} (Δℓ_0 − Δℓ_k^MoRF).
- **deletion AUC** (smaller is better): the trapezoidal area under y_k = Δℓ_k^MoRF / Δℓ_0 over x_k = k/K,
  AUC = (1/K) Σ_{k=1}^{K} (y_{k−1} + y_k) / 2. Δℓ is a logit difference, not a probability, so the
  curve is normalised by the unmasked Δℓ_0 (it starts at 1 and crosses 0 where the prediction flips);
  ``normalize=False`` integrates Δℓ itself. NaN when Δℓ_0 = 0.
- **insertion AUC** (larger is better): start from all m maskable positions masked and unmask them in
  MoRF order: y_k = F(mask all maskable except S_k) / Δℓ_0, the same trapezoid.
- **oracle** (:func:`greedy_oracle`): greedy search for a small set whose masking flips the sign: at each
  step mask the one extra position that lowers Δℓ most (all candidates in one batched call), until Δℓ < 0
  or ``limit``. Its tokens-to-flip is a reference point for orderings; exact (equal to the exhaustive
  minimum, :func:`exhaustive_flip`) when F is additive or a monotone function of an additive score. Its
  first step is leave-one-out (taken from ``occlusion``'s values when given, checked at the chosen
  position); ``candidates`` restricts later steps to the positions whose single masking lowered Δℓ most
  (still exact for an additive F when the pool holds the flipping set).

Aggregation over cases (:func:`summarize`, :func:`summarize_tokens_to_flip`): mean and median
tokens-to-flip (censored values count as their limit, so the mean is a lower bound) with percentile
bootstrap confidence intervals (seeded), the shares of cases flipped within 2 and within 5 tokens, the share
censored and the mean area between the curves, AOPC and AUCs.

The study analysis ``faithfulness`` (:class:`FaithfulnessAnalysis`, settings :class:`FaithfulnessSettings`):
per unit, :func:`evaluate_case` explains the case with every method (``random`` once per seed), times each
explanation (``ex.meta["seconds"]``; cost = seconds / one AttnLRP explanation's seconds of the same case)
and measures all orderings in one :func:`faithfulness_and_curves` call (tables ``metrics``, ``curves``,
``skipped``); methods that need O(n) forwards are skipped above ``max_positions`` tokens. Per study,
:func:`faithfulness_section` reports :func:`summary_table` (per benchmark and overall), :func:`timing_table`,
:func:`oracle_gaps`, :func:`recommend` (criteria: the lowest mean tokens-to-flip on the cases every candidate
ran on, ties by the larger area between the curves, then the lower cost, among the methods whose median
cost is at most ``max_cost``; ``random`` is never a candidate) and :func:`claim_check` (the paper's "about 2
tokens": holds when the upper end of the mean's CI is at most claim_tokens + claim_tolerance, does not hold
when its lower end is above, else inconclusive), with the figures :func:`curves_figure` and
:func:`flip_figure`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from contrastlens.errors import InputError
from contrastlens.study.base import register_analysis

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from contrastlens.attribution.explanation import Explanation
    from contrastlens.models.loaded import LoadedModel
    from contrastlens.study.base import UnitContext, UnitResult

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
#: masks [B, n] (True: masked) -> Δℓ [B]
MaskedForward = Callable[[BoolArray], Any]

MASKINGS = ("zero", "neutral", "mean")


# ---------------------------------------------------------------------------------------- the forward
class DeltaForward:
    """Δℓ = ℓ(target) − ℓ(contrast) at ``position`` for masked variants of one input, in batched forwards.

    ``self(masks)`` takes a bool array or tensor [B, n] (True: mask that token; special tokens and positions
    after ``position`` are never masked) and returns float64 Δℓ [B]. The forward runs on the token
    embeddings (``inputs_embeds``) of ``ids[: position + 1]`` with the masked rows replaced (see
    ``masking``), in chunks of ``batch_size`` variants (default: chosen from the length and free memory,
    :func:`auto_batch_size`). Only the explained position's two logits are computed, from the unembedding
    rows of target and contrast (plus their biases, then the model's final logit soft-cap if it has one):
    the n×V logits are never built.

    A variant's positions before its first masked one are the input's own, so the forward reuses the KV cache
    of the unmasked input for them: variants run sorted by their first masked position, and a chunk computes
    only the suffix from its earliest one (models whose cache cannot be cut, e.g. with sliding-window layers,
    run every chunk in full).

    ``maskable`` (bool [n]): the positions a mask may change. ``unmasked``: Δℓ of the input as it is.
    ``n_variants`` / ``n_forwards`` / ``n_token_steps``: how many variants, batched forward calls and
    token positions (rows × suffix length) ran so far.
    """

    def __init__(self, lm: LoadedModel, ids: Sequence[int], target_id: int, contrast_id: int | None,
                 position: int = -1, *, masking: str = "zero", neutral_token_id: int | None = None,
                 special_mask: Sequence[bool] | None = None, batch_size: int | None = None) -> None:
        ids = [int(i) for i in ids]
        lm.check_prompt(ids)
        n = len(ids)
        if not -n <= position < n:
            raise InputError(f"position {position} is outside the input of {n} tokens")
        if contrast_id is None:
            raise InputError("faithfulness measures Δℓ = ℓ(target) − ℓ(contrast); this input has no contrast token")
        target_id = lm.token_id(int(target_id), what="target")
        contrast_id = lm.token_id(int(contrast_id), what="contrast")
        if target_id == contrast_id:
            raise InputError(f"target and contrast are the same token (id {target_id})")
        if masking not in MASKINGS:
            raise InputError(f"masking must be one of {', '.join(MASKINGS)}, not {masking!r}")
        if (masking == "neutral") != (neutral_token_id is not None):
            raise InputError("masking='neutral' needs neutral_token_id (and neutral_token_id needs masking='neutral')")
        if special_mask is None:
            specials = lm.special_ids()
            special_mask = [i in specials for i in ids]
        special = np.asarray(special_mask, dtype=bool)
        if special.shape != (n,):
            raise InputError(f"special_mask has {special.size} entries for {n} tokens")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")

        self.lm = lm
        self.ids = ids
        self.n = n
        self.position = position % n
        self.target_id, self.contrast_id = target_id, contrast_id
        self.masking, self.neutral_token_id = masking, neutral_token_id
        self.maskable: BoolArray = ~special & (np.arange(n) <= self.position)
        self.batch_size = batch_size if batch_size is not None else auto_batch_size(lm, self.position + 1)
        self.n_variants = 0
        self.n_forwards = 0
        self.n_token_steps = 0
        self._unmasked: float | None = None
        self._cache: Any = None  # the unmasked input's KV cache (False: not croppable)

        model, adapter = lm.model, lm.adapter
        emb_mod = adapter.embedding(model)
        head = adapter.head(model)
        with torch.no_grad():
            self._emb = emb_mod(torch.tensor([ids[: self.position + 1]], device=lm.device))  # [1, m, d]
            self._fill = fill_of(lm, masking, neutral_token_id, self._emb.dtype).to(self._emb.device)
            weight = head.weight
            assert isinstance(weight, torch.Tensor)
            rows = torch.tensor([target_id, contrast_id], device=weight.device)
            self._w = weight[rows].detach().double()  # [2, d]
            bias = getattr(head, "bias", None)
            self._b = (bias.detach()[rows].double() if bias is not None
                       else torch.zeros(2, dtype=torch.float64, device=self._w.device))
        cap = getattr(lm.text_config, "final_logit_softcapping", None)
        self._cap = float(cap) if cap else None
        self._maskable_t = torch.from_numpy(self.maskable.copy())

    @classmethod
    def from_explanation(cls, lm: LoadedModel, ex: Explanation, *, masking: str = "zero",
                         neutral_token_id: int | None = None, batch_size: int | None = None,
                         on_model_mismatch: str = "error") -> DeltaForward:
        """The forward of an explanation's input, target, contrast, position and special tokens."""
        from contrastlens.attribution.explain import check_model

        check_model(lm, ex.provenance, what="the explanation", on_mismatch=on_model_mismatch)
        return cls(lm, ex.input_ids, ex.target_id, ex.contrast_id, ex.position, masking=masking,
                   neutral_token_id=neutral_token_id, special_mask=ex.special_mask, batch_size=batch_size)

    @property
    def unmasked(self) -> float:
        """Δℓ of the input without masking (computed once)."""
        if self._unmasked is None:
            self._unmasked = float(self(np.zeros((1, self.n), dtype=bool))[0])
        return self._unmasked

    def __call__(self, masks: BoolArray | torch.Tensor) -> FloatArray:
        m = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.asarray(masks))
        if m.dim() == 1:
            m = m[None]
        if m.dim() != 2 or m.shape[1] != self.n:
            raise InputError(f"masks must be [B, {self.n}], got {list(m.shape)}")
        if m.dtype != torch.bool:
            raise InputError(f"masks must be boolean, not {str(m.dtype).replace('torch.', '')}")
        m = (m.cpu() & self._maskable_t)[:, : self.position + 1]
        out = np.empty(m.shape[0], dtype=np.float64)
        length = m.shape[1]
        # each variant's first masked position (the last position for an unmasked one: it still needs a
        # suffix of one token); variants run sorted by it, so a chunk's shared unchanged prefix is longest
        first = torch.where(m.any(1), m.int().argmax(1), torch.full((m.shape[0],), length - 1))
        first = first.clamp(max=length - 1)
        order = torch.argsort(first, stable=True)
        for s in range(0, m.shape[0], self.batch_size):
            idx = order[s : s + self.batch_size]
            chunk = m[idx].to(self._emb.device)
            out[idx.numpy()] = self._run(chunk, int(first[idx].min())).cpu().numpy()
        self.n_variants += int(m.shape[0])
        return out

    def _prefix_cache(self) -> Any:
        """The KV cache of the unmasked input (computed once), or None when it cannot be cut to a prefix
        (sliding-window layers): then every chunk runs from position 0."""
        if self._cache is None:
            from contrastlens.models.kv_cache import croppable, forward_hidden

            _, cache = forward_hidden(self.lm, self._emb, want_cache=True)
            self._cache = cache if croppable(cache) else False
        return self._cache or None

    @torch.no_grad()
    def _run(self, masks: torch.Tensor, start: int = 0) -> torch.Tensor:
        from contrastlens.models.kv_cache import cache_prefix, forward_hidden

        emb = torch.where(masks[..., None], self._fill, self._emb.expand(masks.shape[0], -1, -1))
        past = cache_prefix(self._prefix_cache(), start, masks.shape[0]) if start > 0 else None
        if past is None:
            start = 0
        hidden, _ = forward_hidden(self.lm, emb[:, start:], start=start, cache=past)
        self.n_token_steps += int(hidden.shape[0] * hidden.shape[1])
        h = hidden[:, -1].double().to(self._w.device)  # [b, d]
        logits = h @ self._w.T + self._b  # [b, 2]
        if self._cap:
            logits = torch.tanh(logits / self._cap) * self._cap
        if not torch.isfinite(logits).all():
            from contrastlens.errors import NumericalError

            raise NumericalError("the masked forward produced NaN/inf logits; load the model in float32 or bfloat16")
        self.n_forwards += 1
        return logits[:, 0] - logits[:, 1]

    def __repr__(self) -> str:
        return (f"DeltaForward(n={self.n}, position={self.position}, target=#{self.target_id}, "
                f"contrast=#{self.contrast_id}, masking={self.masking!r}, batch_size={self.batch_size})")


def fill_of(lm: LoadedModel, masking: str, neutral_token_id: int | None, dtype: torch.dtype) -> torch.Tensor:
    """The embedding [d] that replaces a masked token under ``masking`` (``zero``, ``neutral``: the embedding
    of ``neutral_token_id``, ``mean``: the mean embedding), from
    :func:`contrastlens.attribution.baselines.fill_vector`."""
    from contrastlens.attribution.baselines import fill_vector

    if masking == "neutral":
        return fill_vector(lm, "token", token_id=neutral_token_id, dtype=dtype)
    return fill_vector(lm, masking, dtype=dtype)


def auto_batch_size(lm: LoadedModel, length: int, *, max_batch: int | None = None) -> int:
    """How many variants of ``length`` tokens to run at once: a quarter (CPU) or half (GPU) of the free
    memory over a per-variant estimate of the activations of one block (hidden, MLP and attention scores),
    at most 512 on a GPU and at most 32 variants of about 4096 tokens in all on the CPU."""
    cfg = lm.text_config
    d = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 1024)
    inter = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "n_inner", 0) or 4 * d)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0) or 1)
    per_variant = length * (8 * d + 4 * inter) * lm.dtype.itemsize + 8 * heads * length * length
    dev = lm.device
    if dev.type == "cuda":
        free, fraction, cap = torch.cuda.mem_get_info(dev)[0], 0.5, 512
    else:
        # on CPU large batches stop paying off (cache): at most 32 variants and about 4096 tokens a call
        free, fraction, cap = _available_ram(), 0.25, max(1, min(32, 4096 // max(length, 1)))
    return int(max(1, min(max_batch or cap, fraction * free // max(per_variant, 1))))


def _available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 << 30


# ---------------------------------------------------------------------------------------- orderings
def _scores(scores: Any, n: int | None = None) -> FloatArray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if n is not None and s.size != n:
        raise InputError(f"the attribution vector has {s.size} entries for {n} tokens")
    if not np.isfinite(s).all():
        raise InputError("the attribution vector has NaN/inf entries")
    return s


def _maskable(forward: Any, maskable: Any, n: int) -> BoolArray:
    if maskable is None:
        maskable = getattr(forward, "maskable", None)
    if maskable is None:
        return np.ones(n, dtype=bool)
    mk = np.asarray(maskable, dtype=bool).reshape(-1)
    if mk.size != n:
        raise InputError(f"maskable has {mk.size} entries for {n} tokens")
    return mk


def morf_order(scores: Any, maskable: Any = None) -> IndexArray:
    """The maskable positions, most relevant (largest score) first; ties: earlier position first."""
    s = _scores(scores)
    idx = np.flatnonzero(_maskable(None, maskable, s.size))
    return idx[np.argsort(-s[idx], kind="stable")]


def lerf_order(scores: Any, maskable: Any = None) -> IndexArray:
    """The exact reverse of :func:`morf_order`: least relevant first."""
    return morf_order(scores, maskable)[::-1].copy()


def random_scores(n: int, seed: int = 0) -> FloatArray:
    """Scores of a seeded random order of ``n`` positions (a baseline 'method')."""
    return np.random.default_rng(seed).permutation(n).astype(np.float64)


def _prefix_masks(order: IndexArray, n: int, ks: Iterable[int]) -> BoolArray:
    """Row i masks the first ks[i] positions of ``order``."""
    rank = np.full(n, n + 1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[None, :] < np.asarray(list(ks), dtype=np.int64)[:, None]


def evaluate_masks(forward: MaskedForward, masks: BoolArray) -> FloatArray:
    """``forward`` on the distinct rows of ``masks`` [B, n] in one call, as float64 [B] (duplicates are
    evaluated once)."""
    masks = np.ascontiguousarray(masks, dtype=bool)
    if masks.ndim != 2:
        raise InputError(f"masks must be [B, n], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return np.empty(0, dtype=np.float64)
    uniq, inverse = np.unique(masks, axis=0, return_inverse=True)
    vals = np.asarray(forward(uniq), dtype=np.float64).reshape(-1)
    if vals.size != uniq.shape[0]:
        raise InputError(f"the forward function returned {vals.size} values for {uniq.shape[0]} masks")
    return vals[np.asarray(inverse).reshape(-1)]


def _steps(steps: int | None, m: int, what: str = "steps") -> int:
    if steps is None:
        return m
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise InputError(f"{what} must be a non-negative integer, got {steps!r}")
    return min(int(steps), m)


# ---------------------------------------------------------------------------------------- curves
def morf_lerf_curves(forward: MaskedForward, scores: Any, *, maskable: Any = None,
                     steps: int | None = None) -> tuple[FloatArray, FloatArray]:
    """(MoRF, LeRF) curves of Δℓ, k = 0 … K (K = ``steps``, default every maskable position), in one call."""
    s = _scores(scores)
    n = s.size
    order = morf_order(s, _maskable(forward, maskable, n))
    k = _steps(steps, len(order))
    ks = range(k + 1)
    vals = evaluate_masks(forward, np.vstack([_prefix_masks(order, n, ks), _prefix_masks(order[::-1], n, ks)]))
    return vals[: k + 1], vals[k + 1 :]


def deletion_curve(forward: MaskedForward, scores: Any, *, maskable: Any = None,
                   steps: int | None = None) -> FloatArray:
    """Δℓ_k after masking the top-k positions (MoRF), k = 0 … K."""
    s = _scores(scores)
    order = morf_order(s, _maskable(forward, maskable, s.size))
    return evaluate_masks(forward, _prefix_masks(order, s.size, range(_steps(steps, len(order)) + 1)))


def _insertion_masks(order: IndexArray, mk: BoolArray, k: int) -> BoolArray:
    return mk[None, :] & ~_prefix_masks(order, mk.size, range(k + 1))


def insertion_curve(forward: MaskedForward, scores: Any, *, maskable: Any = None,
                    steps: int | None = None) -> FloatArray:
    """Δℓ with every maskable position masked except the top-k (MoRF), k = 0 … K."""
    s = _scores(scores)
    mk = _maskable(forward, maskable, s.size)
    order = morf_order(s, mk)
    return evaluate_masks(forward, _insertion_masks(order, mk, _steps(steps, len(order))))


# ------------------------------------------------------------------------------- numbers from curves
def flip_point(curve: Any) -> int | None:
    """The first k with curve[k] < 0, or None."""
    neg = np.flatnonzero(np.asarray(curve, dtype=np.float64) < 0)
    return int(neg[0]) if neg.size else None


def area_between(morf: Any, lerf: Any) -> float:
    """(1/K) Σ_{k=1}^{K} (lerf_k − morf_k) for two curves of K + 1 points (NaN for K = 0)."""
    a, b = np.asarray(morf, dtype=np.float64), np.asarray(lerf, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"the curves must have the same length, got {a.shape} and {b.shape}")
    return float(np.mean(b[1:] - a[1:])) if a.size > 1 else math.nan


def aopc_score(curve: Any) -> float:
    """(1/K) Σ_{k=1}^{K} (curve_0 − curve_k) (NaN for K = 0)."""
    c = np.asarray(curve, dtype=np.float64)
    return float(np.mean(c[0] - c[1:])) if c.size > 1 else math.nan


def auc(curve: Any, scale: float = 1.0) -> float:
    """Trapezoidal area under y = curve / scale over x = k / K ∈ [0, 1]: (1/K) Σ_{k=1}^{K} (y_{k−1} + y_k) / 2
    (NaN for K = 0 or scale = 0)."""
    c = np.asarray(curve, dtype=np.float64)
    if c.size < 2 or scale == 0:
        return math.nan
    y = c / scale
    return float(np.mean((y[:-1] + y[1:]) / 2))


# ------------------------------------------------------------------------------- metrics of one case
class Flip(NamedTuple):
    """Tokens to flip: ``tokens`` is the smallest k that flips, or the limit when ``censored``."""

    tokens: int
    censored: bool


class OracleResult(NamedTuple):
    """A set of positions whose masking flips the sign (``positions``, in the order chosen), its size
    ``tokens`` (the limit when ``censored``: no flip found) and Δℓ after each step (``curve``, from k = 0)."""

    tokens: int
    censored: bool
    positions: tuple[int, ...]
    curve: tuple[float, ...]


def tokens_to_flip(forward: MaskedForward, scores: Any, *, maskable: Any = None, limit: int | None = None) -> Flip:
    """The smallest k such that masking the top-k positions (MoRF) makes Δℓ < 0, censored at ``limit``
    (default: every maskable position). Evaluated in growing batches (8, 16, 32, … variants per call),
    stopping at the first flip."""
    s = _scores(scores)
    n = s.size
    order = morf_order(s, _maskable(forward, maskable, n))
    return _flip_search(forward, order, n, _steps(limit, len(order), "limit"))


def _flip_search(forward: MaskedForward, order: IndexArray, n: int, lim: int, start: int = 0) -> Flip:
    """The smallest k in [start, lim] whose top-k mask (of ``order``) gives Δℓ < 0, in growing batches."""
    k, block = start, 8
    while k <= lim:
        ks = np.arange(k, min(lim, k + block - 1) + 1)
        first = flip_point(evaluate_masks(forward, _prefix_masks(order, n, ks)))
        if first is not None:
            return Flip(int(ks[first]), False)
        k, block = int(ks[-1]) + 1, block * 2
    return Flip(lim, True)


def area_between_curves(forward: MaskedForward, scores: Any, *, maskable: Any = None,
                        steps: int | None = None) -> float:
    """ABPC = (1/K) Σ_{k=1}^{K} (Δℓ_k^LeRF − Δℓ_k^MoRF), in units of Δℓ."""
    return area_between(*morf_lerf_curves(forward, scores, maskable=maskable, steps=steps))


def aopc(forward: MaskedForward, scores: Any, *, maskable: Any = None, steps: int | None = None) -> float:
    """AOPC = (1/K) Σ_{k=1}^{K} (Δℓ_0 − Δℓ_k^MoRF)."""
    return aopc_score(deletion_curve(forward, scores, maskable=maskable, steps=steps))


def deletion_auc(forward: MaskedForward, scores: Any, *, maskable: Any = None, steps: int | None = None,
                 normalize: bool = True) -> float:
    """Area under the MoRF curve of Δℓ_k / Δℓ_0 (or of Δℓ_k with ``normalize=False``) over k / K."""
    curve = deletion_curve(forward, scores, maskable=maskable, steps=steps)
    return auc(curve, float(curve[0]) if normalize else 1.0)


def insertion_auc(forward: MaskedForward, scores: Any, *, maskable: Any = None, steps: int | None = None,
                  normalize: bool = True) -> float:
    """Area under the insertion curve of Δℓ / Δℓ_0 (all maskable masked, then unmasked in MoRF order)."""
    s = _scores(scores)
    mk = _maskable(forward, maskable, s.size)
    order = morf_order(s, mk)
    masks = np.vstack([_insertion_masks(order, mk, _steps(steps, len(order))), np.zeros((1, s.size), dtype=bool)])
    vals = evaluate_masks(forward, masks)
    return auc(vals[:-1], float(vals[-1]) if normalize else 1.0)


def _oracle_setup(forward: Any, maskable: Any, n: int | None) -> BoolArray:
    if maskable is None:
        maskable = getattr(forward, "maskable", None)
    if maskable is None:
        if n is None:
            raise InputError("give maskable or n (the forward function has no .maskable)")
        return np.ones(n, dtype=bool)
    return np.asarray(maskable, dtype=bool).reshape(-1)


#: how far given single-mask values may be from the forward's own (relative, at least 1 in units of Δℓ)
SINGLES_RTOL = 1e-3


def greedy_oracle(forward: MaskedForward, maskable: Any = None, *, n: int | None = None,
                  limit: int | None = None, candidates: int | None = None, singles: Any = None) -> OracleResult:
    """Greedy search for a small flipping set: each step masks the one extra position that lowers Δℓ most
    (every candidate in one batched call; ties: earlier position), until Δℓ < 0 or ``limit`` positions
    (default: every maskable one).

    Step 1 tries every maskable position (m variants: leave-one-out). ``singles`` (float [n], optional):
    Δℓ with each single position masked, already known (e.g. from leave-one-out occlusion with the same
    fill); step 1 then runs no variants. ``candidates``: from step 2 on, only the ``candidates`` positions
    whose single masking lowered Δℓ most are tried (None: every maskable position, at most limit · m
    variants; with a pool, at most m + (limit − 1) · candidates). Δℓ of every chosen set on ``curve`` is
    the forward's own value: given ``singles`` are checked at their best position and, when they differ from
    the forward's value there by more than :data:`SINGLES_RTOL` (relative), computed anew."""
    mk = _oracle_setup(forward, maskable, n)
    cand = [int(i) for i in np.flatnonzero(mk)]
    lim = _steps(limit, len(cand), "limit")
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int | np.integer)
                                   or candidates < 1):
        raise InputError(f"candidates must be a positive integer or None, got {candidates!r}")
    current = np.zeros(mk.size, dtype=bool)
    d = float(evaluate_masks(forward, current[None])[0])
    curve: list[float] = [d]
    chosen: list[int] = []
    if d < 0 or lim == 0 or not cand:
        return OracleResult(0, bool(d >= 0), (), tuple(curve))

    def with_each_candidate() -> FloatArray:  # Δℓ of the current set plus each candidate, in one call
        rows = np.repeat(current[None], len(cand), axis=0)
        rows[np.arange(len(cand)), cand] = True
        return evaluate_masks(forward, rows)

    vals: FloatArray
    if singles is not None:
        vals = np.asarray(singles, dtype=np.float64).reshape(-1)
        if vals.size != mk.size:
            raise InputError(f"singles has {vals.size} values for {mk.size} positions")
        vals = vals[cand]
        # the given values must be this forward's: check the best one, else compute them here
        j = int(np.argmin(vals))
        probe = current.copy()
        probe[cand[j]] = True
        got = float(evaluate_masks(forward, probe[None])[0])
        if not abs(got - float(vals[j])) <= SINGLES_RTOL * max(1.0, abs(got)):
            vals = with_each_candidate()
        else:
            vals[j] = got
    else:
        vals = with_each_candidate()
    if candidates is not None and candidates < len(cand):
        keep = np.sort(np.argsort(vals, kind="stable")[: int(candidates)])  # the pool, in position order
        cand, vals = [cand[i] for i in keep], vals[keep]
    while True:
        j = int(np.argmin(vals))
        chosen.append(cand.pop(j))
        current[chosen[-1]] = True
        d = float(vals[j])
        curve.append(d)
        if d < 0 or len(chosen) >= lim or not cand:
            break
        vals = with_each_candidate()
    return OracleResult(len(chosen), bool(d >= 0), tuple(chosen), tuple(curve))


def exhaustive_flip(forward: MaskedForward, maskable: Any = None, *, n: int | None = None,
                    limit: int | None = None, max_variants: int = 200_000) -> OracleResult:
    """The smallest flipping set by exhaustive search over subsets of growing size (for tiny inputs: the
    exact minimum the greedy oracle approximates). Of the flipping sets of the smallest size, the one with
    the lowest Δℓ; ``curve`` is (Δℓ_0, that Δℓ). An :class:`InputError` past ``max_variants`` subsets."""
    mk = _oracle_setup(forward, maskable, n)
    cand = [int(i) for i in np.flatnonzero(mk)]
    lim = _steps(limit, len(cand), "limit")
    total = sum(math.comb(len(cand), s) for s in range(1, lim + 1))
    if total > max_variants:
        raise InputError(f"an exhaustive search over {len(cand)} positions up to size {lim} needs {total} "
                         f"variants (more than max_variants={max_variants}); use greedy_oracle")
    d0 = float(evaluate_masks(forward, np.zeros((1, mk.size), dtype=bool))[0])
    if d0 < 0:
        return OracleResult(0, False, (), (d0,))
    for size in range(1, lim + 1):
        subsets = list(itertools.combinations(cand, size))
        rows = np.zeros((len(subsets), mk.size), dtype=bool)
        for r, sub in enumerate(subsets):
            rows[r, list(sub)] = True
        vals = evaluate_masks(forward, rows)
        j = int(np.argmin(vals))
        if vals[j] < 0:
            return OracleResult(size, False, subsets[j], (d0, float(vals[j])))
    return OracleResult(lim, True, (), (d0,))


# ------------------------------------------------------------------------------- the convenience table
def _case_label(ex: Explanation) -> str:
    for key in ("case_id", "case"):
        if ex.meta.get(key):
            return str(ex.meta[key])
    digest = hashlib.sha256(json.dumps([ex.input_ids, ex.spec.canonical_json()]).encode()).hexdigest()[:12]
    return f"{ex.source}#{digest}"


def faithfulness(ex: Explanation, lm: LoadedModel | None, *, methods: Mapping[str, Any] | None = None,
                 masking: str = "zero", neutral_token_id: int | None = None, steps: int | None = None,
                 limit: int | None = None, oracle: bool = True, normalize: bool = True,
                 batch_size: int | None = None, forward: MaskedForward | None = None,
                 case: str | None = None, oracle_limit: int | None = None,
                 oracle_candidates: int | None = None) -> pd.DataFrame:
    """Every metric of one explained case for several attribution methods: one row per method.

    ``methods``: {name: attribution vector [n]} (default: the explanation's own relevance, named by its
    method). The forward is
    a :class:`DeltaForward` of ``ex`` on ``lm`` with ``masking`` (or ``forward``, any masks -> Δℓ callable;
    then ``lm`` may be None). All curves of all methods run in one batched call (shared variants, e.g. the
    unmasked and the all-masked input, once). ``steps``: K of the curves (default every maskable position);
    ``limit``: the censoring limit of tokens-to-flip and of the oracle (default every maskable position);
    ``oracle_limit``: the oracle's own limit (default ``limit``; the greedy oracle costs up to
    limit × m variants).

    Columns: ``case``, ``method``, ``n_tokens``, ``n_maskable``, ``masking``, ``logit_diff`` (Δℓ_0 as the
    forward computes it), ``tokens_to_flip``, ``censored``, ``limit``, ``steps``, ``area_between``,
    ``aopc``, ``deletion_auc``, ``insertion_auc`` and, with ``oracle``, ``oracle_tokens_to_flip``,
    ``oracle_censored`` (the same for every method of the case). :func:`faithfulness_and_curves` also
    returns the curves.
    """
    return faithfulness_and_curves(ex, lm, methods=methods, masking=masking, neutral_token_id=neutral_token_id,
                                   steps=steps, limit=limit, oracle=oracle, normalize=normalize,
                                   batch_size=batch_size, forward=forward, case=case, oracle_limit=oracle_limit,
                                   oracle_candidates=oracle_candidates)[0]


CURVE_KINDS = ("morf", "lerf", "insertion")


def faithfulness_and_curves(ex: Explanation, lm: LoadedModel | None, *, methods: Mapping[str, Any] | None = None,
                            masking: str = "zero", neutral_token_id: int | None = None, steps: int | None = None,
                            limit: int | None = None, oracle: bool = True, normalize: bool = True,
                            batch_size: int | None = None, forward: MaskedForward | None = None,
                            case: str | None = None, oracle_limit: int | None = None,
                            oracle_candidates: int | None = None, oracle_singles: Any = None
                            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`faithfulness` and the curves it computed, from the same batched call: ``(metrics, curves)``.

    ``curves`` is in long format, one row per point: ``case``, ``method``, ``kind`` (``morf``: Δℓ_k after
    masking the top-k; ``lerf``: after masking the bottom-k; ``insertion``: with every maskable position
    masked except the top-k), ``k`` (0 … K) and ``logit_diff`` (Δℓ_k). With ``oracle``, the greedy
    oracle's curve (Δℓ after each of its steps) follows as method ``oracle``, kind ``morf``;
    ``oracle_candidates`` and ``oracle_singles`` are :func:`greedy_oracle`'s ``candidates`` and ``singles``.
    """
    import pandas as pd

    if forward is None:
        if lm is None:
            raise InputError("give the model (lm) or a forward function")
        forward = DeltaForward.from_explanation(lm, ex, masking=masking, neutral_token_id=neutral_token_id,
                                                batch_size=batch_size)
    n = ex.n_tokens
    mk = _maskable(forward, None, n) & ~np.asarray(ex.special_mask, dtype=bool) & (np.arange(n) <= ex.position)
    if methods is None:
        default = getattr(ex.spec, "method", None) or ex.spec.rule or "input_relevance"
        methods = {str(default): ex.input_relevance}
    methods = dict(methods)
    if not methods:
        raise InputError("methods is empty: give at least one {name: attribution vector}")
    m = int(mk.sum())
    k = _steps(steps, m)
    lim = _steps(limit, m, "limit")
    orc_lim = lim if oracle_limit is None else _steps(oracle_limit, m, "oracle_limit")
    orders = {name: morf_order(_scores(s, n), mk) for name, s in methods.items()}
    blocks = []
    for order in orders.values():
        blocks += [_prefix_masks(order, n, range(k + 1)), _prefix_masks(order[::-1], n, range(k + 1)),
                   _insertion_masks(order, mk, k)]
    vals = evaluate_masks(forward, np.vstack(blocks + [np.zeros((1, n), dtype=bool)]))
    d0 = float(vals[-1])
    orc = (greedy_oracle(forward, mk, limit=orc_lim, candidates=oracle_candidates, singles=oracle_singles)
           if oracle else None)
    label = case or _case_label(ex)
    rows = []
    for i, name in enumerate(orders):
        morf, lerf, ins = (vals[(3 * i + j) * (k + 1) : (3 * i + j + 1) * (k + 1)] for j in range(3))
        first = flip_point(morf[: min(lim, k) + 1])
        if first is not None:
            flip = Flip(first, False)
        elif lim <= k:
            flip = Flip(lim, True)
        else:  # not flipped within the curve: search on from K + 1 (the curve's prefixes are not run again)
            flip = _flip_search(forward, orders[name], n, lim, start=k + 1)
        row: dict[str, Any] = {
            "case": label, "method": name, "n_tokens": n, "n_maskable": m,
            "masking": getattr(forward, "masking", "custom"), "logit_diff": d0,
            "tokens_to_flip": flip.tokens, "censored": flip.censored, "limit": lim, "steps": k,
            "area_between": area_between(morf, lerf), "aopc": aopc_score(morf),
            "deletion_auc": auc(morf, d0 if normalize else 1.0), "insertion_auc": auc(ins, d0 if normalize else 1.0),
        }
        if orc is not None:
            row["oracle_tokens_to_flip"], row["oracle_censored"] = orc.tokens, orc.censored
        rows.append(row)
    names = list(orders)
    n_pts = k + 1
    cv = pd.DataFrame({
        "case": label,
        "method": np.repeat(np.asarray(names, dtype=object), len(CURVE_KINDS) * n_pts),
        "kind": np.tile(np.repeat(np.asarray(CURVE_KINDS, dtype=object), n_pts), len(names)),
        "k": np.tile(np.arange(n_pts, dtype=np.int64), len(names) * len(CURVE_KINDS)),
        "logit_diff": vals[: len(names) * len(CURVE_KINDS) * n_pts],
    })
    if orc is not None:
        oc = pd.DataFrame({"case": label, "method": "oracle", "kind": "morf",
                           "k": np.arange(len(orc.curve), dtype=np.int64),
                           "logit_diff": np.asarray(orc.curve, dtype=np.float64)})
        cv = pd.concat([cv, oc], ignore_index=True)
    return pd.DataFrame(rows), cv


# ------------------------------------------------------------------------------- aggregation over cases
def bootstrap_ci(values: Any, statistic: str | Callable[[FloatArray], float] = "mean", *, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` (``"mean"``, ``"median"`` or a function of
    a 1-D array): resample the values with replacement ``n_boot`` times (``numpy.random.default_rng(seed)``),
    take the (1 − level)/2 and (1 + level)/2 quantiles of the statistic. (NaN, NaN) for no values."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise InputError(f"n_boot must be a positive integer, got {n_boot!r}")
    if x.size == 0:
        return math.nan, math.nan
    samples = x[np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))]
    if statistic == "mean":
        stats = samples.mean(axis=1)
    elif statistic == "median":
        stats = np.median(samples, axis=1)
    elif callable(statistic):
        stats = np.array([float(statistic(row)) for row in samples])
    else:
        raise InputError(f"statistic must be 'mean', 'median' or a function, not {statistic!r}")
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def summarize_tokens_to_flip(tokens: Any, censored: Any = None, *, n_boot: int = 2000, level: float = 0.95,
                             seed: int = 0) -> dict[str, float]:
    """Mean and median tokens-to-flip over cases with bootstrap CIs, the shares flipped within 2 and 5
    tokens (censored cases never count as flipped) and the share censored."""
    t = np.asarray(tokens, dtype=np.float64).reshape(-1)
    c = np.zeros(t.size, dtype=bool) if censored is None else np.asarray(censored, dtype=bool).reshape(-1)
    if c.size != t.size:
        raise InputError(f"{c.size} censored flags for {t.size} values")
    nan = math.nan
    mean_ci = bootstrap_ci(t, "mean", n_boot=n_boot, level=level, seed=seed)
    median_ci = bootstrap_ci(t, "median", n_boot=n_boot, level=level, seed=seed)
    return {
        "cases": float(t.size),
        "tokens_to_flip_mean": float(t.mean()) if t.size else nan,
        "tokens_to_flip_mean_low": mean_ci[0], "tokens_to_flip_mean_high": mean_ci[1],
        "tokens_to_flip_median": float(np.median(t)) if t.size else nan,
        "tokens_to_flip_median_low": median_ci[0], "tokens_to_flip_median_high": median_ci[1],
        "flipped_within_2": float(np.mean(~c & (t <= 2))) if t.size else nan,
        "flipped_within_5": float(np.mean(~c & (t <= 5))) if t.size else nan,
        "censored_share": float(np.mean(c)) if t.size else nan,
    }


_MEANS = ("area_between", "aopc", "deletion_auc", "insertion_auc")


def summarize(table: pd.DataFrame, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per method of a :func:`faithfulness` table over many cases (``pd.concat`` of the per-case
    tables): :func:`summarize_tokens_to_flip` plus ``mean_area_between``, ``mean_aopc``,
    ``mean_deletion_auc``, ``mean_insertion_auc``. With oracle columns, a row ``oracle`` (one value per
    case) follows; its curve metrics are NaN."""
    import pandas as pd

    rows = []
    for method, g in table.groupby("method", sort=False):
        row: dict[str, Any] = {"method": method}
        row.update(summarize_tokens_to_flip(g["tokens_to_flip"], g["censored"], n_boot=n_boot, level=level,
                                            seed=seed))
        row.update({f"mean_{c}": float(g[c].mean()) for c in _MEANS if c in g})
        rows.append(row)
    if "oracle_tokens_to_flip" in table:
        per_case = table.drop_duplicates("case")
        row = {"method": "oracle"}
        row.update(summarize_tokens_to_flip(per_case["oracle_tokens_to_flip"], per_case["oracle_censored"],
                                            n_boot=n_boot, level=level, seed=seed))
        row.update({f"mean_{c}": math.nan for c in _MEANS if c in table})
        rows.append(row)
        best = best_found(table)
        row = {"method": BEST_FOUND}
        row.update(summarize_tokens_to_flip(best["tokens_to_flip"], best["censored"], n_boot=n_boot, level=level,
                                            seed=seed))
        row.update({f"mean_{c}": math.nan for c in _MEANS if c in table})
        rows.append(row)
    return pd.DataFrame(rows)


#: the summary row of the smallest flipping set found per case (the greedy oracle or any method's prefix)
BEST_FOUND = "best found"


def best_found(table: pd.DataFrame) -> pd.DataFrame:
    """Per case, the smallest flipping set any search found: the greedy oracle's size or, when smaller, the
    size of a method's flipping MoRF prefix (``tokens_to_flip``, ``censored``, ``by``: the oracle or the
    method). The greedy oracle is a heuristic on a real model, so a method can beat it; this is the tightest
    known upper bound of the true minimum. Needs the oracle columns."""
    import pandas as pd

    rows = []
    for case, g in table.groupby("case", sort=False):
        best, censored, by = float(g["oracle_tokens_to_flip"].iloc[0]), bool(g["oracle_censored"].iloc[0]), "oracle"
        for _, r in g[~g["censored"].astype(bool)].iterrows():
            if censored or float(r["tokens_to_flip"]) < best:
                best, censored, by = float(r["tokens_to_flip"]), False, str(r["method"])
        rows.append({"case": case, "tokens_to_flip": best, "censored": censored, "by": by})
    return pd.DataFrame(rows, columns=["case", "tokens_to_flip", "censored", "by"])


# ------------------------------------------------------------------------------- the study analysis
#: the methods compared by default (``random`` runs once per seed of ``random_seeds``)
DEFAULT_METHODS = ("attnlrp", "cp-lrp", "ixg", "ig", "occlusion", "lrp-occlusion", "random")
#: baselines: reported, never recommended
BASELINE_METHODS = ("random",)
CURVE_XS = ("k", "fraction")


@dataclass
class FaithfulnessSettings:
    """Settings of the ``faithfulness`` study analysis (``[analyses.faithfulness]``).

    Per case: ``methods`` (attribution methods of ``explain(method=...)``; ``random`` once per seed of
    ``random_seeds``, reported as one method), ``method_options`` ({method: {option: value}}, e.g.
    ``{"ig": {"steps": 32}}``), ``masking`` (``zero``, ``neutral`` with ``neutral_token``, ``mean``),
    ``steps`` / ``limit`` (K of the curves and the censoring limit of tokens-to-flip; None: every maskable
    position), ``oracle`` with ``oracle_limit`` (its censoring limit), ``oracle_candidates`` (from its second
    step on, only this many positions, those whose single masking lowered Δℓ most, are tried: m +
    (limit − 1) × candidates variants; None: every maskable position, limit × m) and
    ``oracle_max_positions`` (no oracle above this many maskable positions). The oracle's first step
    (leave-one-out) is taken from ``occlusion`` when that method runs with the masking's fill (zero). Inputs longer than
    ``max_positions`` tokens skip the ``expensive`` methods (O(n) forwards each) and cap ``steps`` at
    ``long_steps`` and ``limit`` at ``long_limit``. ``batch_size``: variants per forward (None: automatic).

    Report only: ``max_cost`` (the most a recommended method may cost, as a multiple of one AttnLRP
    explanation, median over cases), ``claim_tokens`` / ``claim_tolerance`` (the paper's claim "about 2
    tokens flip the prediction" holds where the upper bound of the mean's CI is at most claim_tokens +
    claim_tolerance), ``curve_x`` (``k`` or ``fraction`` on the curves' x axis), ``n_boot``, ``level`` and
    ``seed`` of the bootstrap CIs.
    """

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    random_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    masking: str = "zero"
    neutral_token: str | None = None
    steps: int | None = None
    limit: int | None = None
    oracle: bool = True
    oracle_limit: int | None = 10
    oracle_candidates: int | None = 64
    oracle_max_positions: int = 2048
    max_positions: int = 4096
    expensive: list[str] = field(default_factory=lambda: ["occlusion", "ig"])
    long_steps: int = 16
    long_limit: int = 64
    batch_size: int | None = None
    max_cost: float = 2.0
    claim_tokens: float = 2.0
    claim_tolerance: float = 1.0
    curve_x: str = "k"
    n_boot: int = 2000
    level: float = 0.95
    seed: int = 0


def _canonical_method(name: Any, key: str) -> str:
    from contrastlens.attribution.methods import get_method
    from contrastlens.errors import ContrastLensError

    if not isinstance(name, str) or not name:
        raise InputError(f"{key}: a method name must be a non-empty string, not {name!r}")
    try:
        return get_method(name).name
    except ContrastLensError as e:
        raise InputError(f"{key}: {e}") from None


def _optional_count(value: Any, key: str, *, zero: bool = True) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < (0 if zero else 1):
        raise InputError(f"{key} must be a {'non-negative' if zero else 'positive'} integer or unset, got {value!r}")


def check_settings(s: FaithfulnessSettings) -> list[str]:
    """Validate ``s`` (an :class:`InputError` naming the key); returns the canonical method names, in order
    and without repeats."""
    if isinstance(s.methods, str) or not isinstance(s.methods, Sequence) or not s.methods:
        raise InputError(f"methods must be a non-empty list of method names, got {s.methods!r}")
    names = list(dict.fromkeys(_canonical_method(m, "methods") for m in s.methods))
    if not isinstance(s.method_options, Mapping):
        raise InputError(f"method_options must be a table {{method: {{option: value}}}}, got {s.method_options!r}")
    for m, o in s.method_options.items():
        c = _canonical_method(m, "method_options")
        if c not in names and c != "attnlrp":
            raise InputError(f"method_options.{m}: {c} is not one of the methods ({', '.join(names)})")
        if not isinstance(o, Mapping):
            raise InputError(f"method_options.{m} must be a table of options, got {o!r}")
        if c == "random" and "seed" in o:
            raise InputError("method_options.random.seed: give the seeds as random_seeds")
    if "random" in names:
        seeds = s.random_seeds
        if (isinstance(seeds, str) or not isinstance(seeds, Sequence) or not seeds
                or any(isinstance(x, bool) or not isinstance(x, int | np.integer) for x in seeds)):
            raise InputError(f"random_seeds must be a non-empty list of integers, got {seeds!r}")
    if s.masking not in MASKINGS:
        raise InputError(f"masking must be one of {', '.join(MASKINGS)}, not {s.masking!r}")
    if (s.masking == "neutral") != (s.neutral_token is not None):
        raise InputError("masking = 'neutral' needs neutral_token (and neutral_token needs masking = 'neutral')")
    for key in ("steps", "limit", "oracle_limit"):
        _optional_count(getattr(s, key), key)
    _optional_count(s.oracle_candidates, "oracle_candidates", zero=False)
    for key in ("oracle_max_positions", "max_positions", "long_steps", "long_limit"):
        _optional_count(getattr(s, key), key, zero=False)
        if getattr(s, key) is None:
            raise InputError(f"{key} must be a positive integer")
    _optional_count(s.batch_size, "batch_size", zero=False)
    if isinstance(s.expensive, str) or not isinstance(s.expensive, Sequence):
        raise InputError(f"expensive must be a list of method names, got {s.expensive!r}")
    for m in s.expensive:
        _canonical_method(m, "expensive")
    if s.curve_x not in CURVE_XS:
        raise InputError(f"curve_x must be one of {', '.join(CURVE_XS)}, not {s.curve_x!r}")
    if not (isinstance(s.max_cost, int | float) and s.max_cost > 0):
        raise InputError(f"max_cost must be a positive number, got {s.max_cost!r}")
    return names


def _seconds(ex: Explanation, wall: float) -> float:
    """The method's own time (``ex.meta["seconds"]``, stable when ``explain`` is memoised), else ``wall``."""
    v = ex.meta.get("seconds")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else float(wall)


class CaseEvaluation(NamedTuple):
    """What :func:`evaluate_case` returns: the ``metrics`` table (one row per method and random seed), the
    ``curves`` (long format, see :func:`faithfulness_and_curves`), ``skipped`` (method, reason) rows and
    ``meta`` (JSON-able: timings, variants, the attribution spec hashes)."""

    metrics: pd.DataFrame
    curves: pd.DataFrame
    skipped: pd.DataFrame
    meta: dict[str, Any]


def evaluate_case(lm: LoadedModel, explain: Callable[..., Explanation], settings: FaithfulnessSettings | None = None,
                  *, case: str | None = None) -> CaseEvaluation:
    """Explain one case with every method of ``settings`` and measure all of them in one batched call.

    ``explain(method=NAME, **options)`` explains the case (a :class:`~contrastlens.study.base.UnitContext`'s
    ``explain``, or e.g. ``lambda method, **o: cl.explain(lm, case, method=method, method_params=o)``).
    One AttnLRP explanation is always made: it fixes the input, target, contrast and position of the masked
    forward and is the unit of cost (``cost_vs_attnlrp`` = a method's seconds / AttnLRP's seconds, where a
    method's seconds are ``ex.meta["seconds"]``, the time of the method itself, measured by ``explain``).

    Metrics columns: those of :func:`faithfulness` (``method`` the method's name, ``seed`` the random seed or
    None) plus ``seconds``, ``wall_seconds`` (``time.perf_counter`` around the call: about 0 when
    ``explain`` returned a memoised explanation), ``attnlrp_seconds``, ``cost_vs_attnlrp``, ``long_input``.
    """
    s = settings or FaithfulnessSettings()
    names = check_settings(s)
    opts = {_canonical_method(k, "method_options"): dict(v) for k, v in s.method_options.items()}
    expensive = {_canonical_method(m, "expensive") for m in s.expensive}

    def timed(method: str, **o: Any) -> tuple[Explanation, float]:
        t0 = time.perf_counter()
        ex = explain(method=method, **o)
        return ex, time.perf_counter() - t0

    ref, ref_wall = timed("attnlrp", **opts.get("attnlrp", {}))
    ref_s = _seconds(ref, ref_wall)
    n = ref.n_tokens
    long_input = n > s.max_positions
    scores: dict[str, Any] = {}
    info: dict[str, tuple[str, int | None, float, float]] = {}  # key -> (method, seed, seconds, wall)
    skipped: list[dict[str, Any]] = []
    hashes: dict[str, str] = {"attnlrp": ref.spec.hash()}
    for name in names:
        if name in expensive and long_input:
            skipped.append({"method": name, "n_tokens": n,
                            "reason": f"{n} tokens > max_positions={s.max_positions} ({name} needs O(n) forwards)"})
            continue
        runs: list[tuple[str, int | None, dict[str, Any]]]
        if name == "random":
            runs = [(f"random#{int(sd)}", int(sd), {**opts.get("random", {}), "seed": int(sd)})
                    for sd in s.random_seeds]
        else:
            runs = [(name, None, opts.get(name, {}))]
        for key, seed, o in runs:
            if name == "attnlrp":
                ex, wall = ref, ref_wall
            else:
                ex, wall = timed(name, **o)
            if list(ex.input_ids) != list(ref.input_ids) or ex.position != ref.position:
                raise InputError(f"method {name} explained a different input than attnlrp (ids or position differ)")
            scores[key] = ex.input_relevance
            info[key] = (name, seed, _seconds(ex, wall), wall)
            hashes[key] = ex.spec.hash()
    neutral = lm.token_id(s.neutral_token, what="neutral_token") if s.neutral_token is not None else None
    forward = DeltaForward.from_explanation(lm, ref, masking=s.masking, neutral_token_id=neutral,
                                            batch_size=s.batch_size)
    m = int(forward.maskable.sum())
    steps, limit = s.steps, s.limit
    if long_input:
        steps = s.long_steps if steps is None else min(steps, s.long_steps)
        limit = s.long_limit if limit is None else min(limit, s.long_limit)
    oracle = bool(s.oracle)
    if oracle and m > s.oracle_max_positions:
        oracle = False
        skipped.append({"method": "oracle", "n_tokens": n,
                        "reason": f"{m} maskable positions > oracle_max_positions={s.oracle_max_positions}"})
    import pandas as pd

    singles = None
    occ_fill = opts.get("occlusion", {}).get("baseline", "zero")
    if oracle and "occlusion" in scores and s.masking == "zero" and occ_fill == "zero":
        # occlusion's R_i = S(x) − S(x with i zeroed): the oracle's first step, Δℓ with i masked, for free
        singles = forward.unmasked - _scores(scores["occlusion"], n)
    if scores:
        metrics, curves = faithfulness_and_curves(ref, lm, methods=scores, forward=forward, steps=steps, limit=limit,
                                                  oracle=oracle, oracle_limit=s.oracle_limit, case=case,
                                                  oracle_candidates=s.oracle_candidates, oracle_singles=singles)
    else:
        metrics, curves = pd.DataFrame(), pd.DataFrame()
    if len(metrics):
        keys = metrics["method"].tolist()
        metrics["method"] = [info[k][0] for k in keys]
        metrics["seed"] = pd.array([info[k][1] for k in keys], dtype="Int64")
        metrics["seconds"] = [info[k][2] for k in keys]
        metrics["wall_seconds"] = [info[k][3] for k in keys]
        metrics["attnlrp_seconds"] = ref_s
        metrics["cost_vs_attnlrp"] = metrics["seconds"] / ref_s if ref_s > 0 else math.nan
        metrics["long_input"] = long_input
        ckeys = curves["method"].tolist()
        curves["method"] = [info[k][0] if k in info else k for k in ckeys]
        curves["seed"] = pd.array([info[k][1] if k in info else None for k in ckeys], dtype="Int64")
    meta = {"n_tokens": n, "n_maskable": m, "steps": steps, "limit": limit, "oracle": oracle,
            "attnlrp_seconds": ref_s, "variants": forward.n_variants, "forwards": forward.n_forwards,
            "oracle_singles_from": "occlusion" if singles is not None else None,
            "spec_hashes": hashes, "skipped": {r["method"]: r["reason"] for r in skipped}}
    return CaseEvaluation(metrics, curves, pd.DataFrame(skipped, columns=["method", "n_tokens", "reason"]), meta)


# ------------------------------------------------------------------------------- the report's numbers
def _unit_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics of every finished unit once: a case evaluated under several rules (units of the same
    case and model) gives the same rows, so (model, case, method, seed) keeps its first row; ``case``
    becomes ``model/case`` so that cases of different models stay apart."""
    df = metrics.copy()
    if "seed" not in df:
        df["seed"] = _na()
    if "model" not in df:
        df["model"] = "model"
    if "benchmark" not in df:
        df["benchmark"] = "all"
    df["case_key"] = df["model"].astype(str) + "/" + df["case"].astype(str)
    df = df.drop_duplicates(["case_key", "method", "seed"], keep="first")
    return df.reset_index(drop=True)


def _na() -> Any:
    import pandas as pd

    return pd.NA


def _scopes(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(model, benchmark, rows) of every scope: all, each benchmark, and per model when there are several."""
    out = [("all", "all", df)]
    out += [("all", str(b), g) for b, g in df.groupby("benchmark", sort=True)] if df["benchmark"].nunique() > 1 else []
    if df["model"].nunique() > 1:
        for mdl, gm in df.groupby("model", sort=False):
            out.append((str(mdl), "all", gm))
            if gm["benchmark"].nunique() > 1:
                out += [(str(mdl), str(b), g) for b, g in gm.groupby("benchmark", sort=True)]
    return out


def summary_table(metrics: pd.DataFrame, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """:func:`summarize` per scope (``model``, ``benchmark``; ``all`` for every case) of a study's metrics
    table: one row per method, one for the oracle and one for the best found set. ``random``'s seeds are pooled (every seed's row of a
    case counts; ``cases`` is the number of distinct cases, ``rows`` the rows pooled)."""
    import pandas as pd

    df = _unit_rows(metrics)
    parts = []
    for mdl, bench, g in _scopes(df):
        t = g.assign(case=g["case_key"])
        out = summarize(t, n_boot=n_boot, level=level, seed=seed)
        counts = t.groupby("method", sort=False)["case"].nunique()
        rows = t.groupby("method", sort=False).size()
        per_case = ("oracle", BEST_FOUND)  # one value per case, not a method's rows
        out["rows"] = [int(rows.get(m, counts.get(m, 0))) if m not in per_case else int(t["case"].nunique())
                       for m in out["method"]]
        out["cases"] = [int(counts.get(m, t["case"].nunique())) for m in out["method"]]
        out.insert(0, "benchmark", bench)
        out.insert(0, "model", mdl)
        parts.append(out)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def timing_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Time per method over the study's cases: ``cases``, ``median_seconds``, ``mean_seconds``,
    ``median_cost`` and ``max_cost`` (cost: seconds / one AttnLRP explanation's seconds, per case) and
    ``median_tokens`` (input length)."""
    import pandas as pd

    df = _unit_rows(metrics)
    rows = []
    for method, g in df.groupby("method", sort=False):
        rows.append({"method": method, "cases": int(g["case_key"].nunique()),
                     "median_seconds": float(g["seconds"].median()), "mean_seconds": float(g["seconds"].mean()),
                     "median_cost": float(g["cost_vs_attnlrp"].median()),
                     "max_cost": float(g["cost_vs_attnlrp"].max()), "median_tokens": float(g["n_tokens"].median())})
    return pd.DataFrame(rows)


def oracle_gaps(metrics: pd.DataFrame) -> pd.DataFrame:
    """Each method's tokens-to-flip against the greedy oracle's, on the cases where the oracle flipped the
    sign: ``cases``, ``mean_gap`` and ``median_gap`` (method − oracle; negative where the greedy oracle,
    a heuristic on a real model, was beaten), ``share_at_oracle`` (method ≤ oracle)."""
    import pandas as pd

    df = _unit_rows(metrics)
    if "oracle_tokens_to_flip" not in df:
        return pd.DataFrame(columns=["method", "cases", "mean_gap", "median_gap", "share_at_oracle"])
    df = df[df["oracle_tokens_to_flip"].notna() & ~df["oracle_censored"].fillna(True).astype(bool)]
    rows = []
    for method, g in df.groupby("method", sort=False):
        gap = g["tokens_to_flip"].astype(float) - g["oracle_tokens_to_flip"].astype(float)
        rows.append({"method": method, "cases": int(g["case_key"].nunique()), "mean_gap": float(gap.mean()),
                     "median_gap": float(gap.median()), "share_at_oracle": float((gap <= 0).mean())})
    return pd.DataFrame(rows, columns=["method", "cases", "mean_gap", "median_gap", "share_at_oracle"])


class Recommendation(NamedTuple):
    """The method the numbers recommend (None: no candidate), the best one at any cost, the comparison
    ``table`` and the number of shared ``cases`` it is based on."""

    method: str | None
    best_any_cost: str | None
    table: pd.DataFrame
    cases: int


def recommend(metrics: pd.DataFrame, *, max_cost: float = 2.0, exclude: Sequence[str] = BASELINE_METHODS
              ) -> Recommendation:
    """The recommended method, derived from the numbers.

    Candidates: every method except the baselines (``exclude``). They are compared on the cases every
    candidate ran on (paired): the mean tokens-to-flip (smaller is better), ties broken by the larger mean
    area between MoRF and LeRF, then by the lower median cost. The recommendation is the best candidate
    whose median cost is at most ``max_cost`` AttnLRP explanations; ``best_any_cost`` ignores the cost.
    ``table``: ``method``, ``cases``, ``tokens_to_flip_mean``, ``area_between_mean``, ``median_cost``,
    ``affordable``, ``rank`` (1 = best at any cost)."""
    import pandas as pd

    df = _unit_rows(metrics)
    df = df[~df["method"].isin(list(exclude))]
    cols = ["method", "cases", "tokens_to_flip_mean", "area_between_mean", "median_cost", "affordable", "rank"]
    if df.empty:
        return Recommendation(None, None, pd.DataFrame(columns=cols), 0)
    methods = list(dict.fromkeys(df["method"]))
    per = {m: set(df.loc[df["method"] == m, "case_key"]) for m in methods}
    common = set.intersection(*per.values())
    use = df[df["case_key"].isin(common)] if common else df
    rows = []
    for m in methods:
        g = use[use["method"] == m]
        cost = float(df.loc[df["method"] == m, "cost_vs_attnlrp"].median())
        rows.append({"method": m, "cases": int(g["case_key"].nunique()),
                     "tokens_to_flip_mean": float(g["tokens_to_flip"].mean()),
                     "area_between_mean": float(g["area_between"].mean()), "median_cost": cost,
                     "affordable": bool(cost <= max_cost)})
    t = pd.DataFrame(rows)
    t["_abpc"] = t["area_between_mean"].fillna(-math.inf)
    t["_cost"] = t["median_cost"].fillna(math.inf)
    t = t.sort_values(["tokens_to_flip_mean", "_abpc", "_cost"], ascending=[True, False, True], kind="stable")
    t = t.drop(columns=["_abpc", "_cost"]).reset_index(drop=True)
    t["rank"] = np.arange(1, len(t) + 1)
    ok = t[t["affordable"]]
    return Recommendation(str(ok["method"].iloc[0]) if len(ok) else None, str(t["method"].iloc[0]), t[cols],
                          len(common))


def claim_check(summary: pd.DataFrame, *, method: str = "attnlrp", tokens: float = 2.0,
                tolerance: float = 1.0) -> pd.DataFrame:
    """Whether "masking about ``tokens`` top-attributed tokens flips the prediction" holds for ``method``, per
    scope of a :func:`summary_table`: ``holds`` when the upper end of the mean tokens-to-flip's CI is at most
    tokens + tolerance, ``does not hold`` when its lower end is above that, else ``inconclusive``. Censored
    cases count as their limit (the mean is then a lower bound: see ``censored_share``)."""
    import pandas as pd

    bound = tokens + tolerance
    s = summary[summary["method"] == method]
    rows = []
    for r in s.itertuples(index=False):
        lo, hi = float(r.tokens_to_flip_mean_low), float(r.tokens_to_flip_mean_high)
        verdict = "holds" if hi <= bound else "does not hold" if lo > bound else "inconclusive"
        rows.append({"model": r.model, "benchmark": r.benchmark, "cases": int(r.cases),
                     "mean": float(r.tokens_to_flip_mean), "mean_low": lo, "mean_high": hi,
                     "median": float(r.tokens_to_flip_median), "flipped_within_2": float(r.flipped_within_2),
                     "censored_share": float(r.censored_share), "verdict": verdict})
    return pd.DataFrame(rows, columns=["model", "benchmark", "cases", "mean", "mean_low", "mean_high", "median",
                                       "flipped_within_2", "censored_share", "verdict"])


# ------------------------------------------------------------------------------- the report's figures
def curves_figure(curves: pd.DataFrame, *, x: str = "k", max_k: int = 50, methods: Sequence[str] | None = None
                  ) -> Any:
    """The mean MoRF (solid) and LeRF (dashed) curves of Δℓ_k / Δℓ_0 per method (a matplotlib
    :class:`~matplotlib.figure.Figure`, no pyplot). Each curve is normalised by its case's unmasked Δℓ_0
    (cases with Δℓ_0 = 0 are left out); ``x="k"``: against the number of masked tokens, k ≤ the smallest K
    of the cases (at most ``max_k``); ``x="fraction"``: against k / K, each curve interpolated on 51
    points."""
    from matplotlib.figure import Figure

    if x not in CURVE_XS:
        raise InputError(f"x must be one of {', '.join(CURVE_XS)}, not {x!r}")
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    df = curves[curves["kind"].isin(["morf", "lerf"]) & (curves["method"] != "oracle")].copy()
    if "model" not in df:
        df["model"] = "model"
    if "seed" not in df:
        df["seed"] = -1
    df["seed"] = df["seed"].astype("Float64").fillna(-1)
    df = df.drop_duplicates(["model", "case", "method", "seed", "kind", "k"])
    names = list(methods) if methods is not None else list(dict.fromkeys(df["method"]))
    grid = np.linspace(0, 1, 51)
    colours = [f"C{i % 10}" for i in range(len(names))]
    for name, colour in zip(names, colours, strict=True):
        g = df[df["method"] == name]
        for kind, style in (("morf", "-"), ("lerf", "--")):
            ys = []
            for _, c in g[g["kind"] == kind].groupby(["model", "case", "seed"], sort=False):
                c = c.sort_values("k")
                v = c["logit_diff"].to_numpy(dtype=np.float64)
                if v.size < 2 or v[0] == 0 or not np.isfinite(v[0]):
                    continue
                ys.append(v / v[0])
            if not ys:
                continue
            xs: np.ndarray
            if x == "k":
                kk = min(max_k, min(len(y) for y in ys) - 1)
                xs, mean = np.arange(kk + 1, dtype=np.float64), np.mean([y[: kk + 1] for y in ys], axis=0)
            else:
                xs = grid
                mean = np.mean([np.interp(grid, np.linspace(0, 1, len(y)), y) for y in ys], axis=0)
            ax.plot(xs, mean, style, color=colour, label=f"{name} {kind.upper()}" if kind == "morf" else None)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("tokens masked (k)" if x == "k" else "fraction of the curve's steps masked (k / K)")
    ax.set_ylabel("Δℓ_k / Δℓ_0 (mean over cases)")
    ax.set_title("MoRF (solid) and LeRF (dashed): mean normalised Δℓ")
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def flip_figure(metrics: pd.DataFrame, *, max_k: int = 20) -> Any:
    """The share of cases flipped within k tokens against k (0 … max_k) per method and for the oracle
    (censored cases never count as flipped), a matplotlib Figure."""
    from matplotlib.figure import Figure

    df = _unit_rows(metrics)
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ks = np.arange(max_k + 1)
    series: list[tuple[str, np.ndarray, np.ndarray]] = []
    for method, g in df.groupby("method", sort=False):
        series.append((str(method), g["tokens_to_flip"].to_numpy(float), g["censored"].to_numpy(bool)))
    if "oracle_tokens_to_flip" in df:
        o = df.drop_duplicates("case_key")
        o = o[o["oracle_tokens_to_flip"].notna()]
        if len(o):
            series.append(("oracle", o["oracle_tokens_to_flip"].to_numpy(float),
                           o["oracle_censored"].fillna(True).to_numpy(bool)))
    for i, (name, t, c) in enumerate(series):
        share = [(~c & (t <= k)).mean() for k in ks]
        ax.step(ks, share, where="post", color="black" if name == "oracle" else f"C{i % 10}",
                ls=":" if name == "oracle" else "-", label=name)
    for k in (2, 5):
        ax.axvline(k, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("k (top-attributed tokens masked)")
    ax.set_ylabel("share of cases flipped within k")
    ax.set_ylim(0, 1.02)
    ax.set_title("Tokens to flip: cumulative distribution")
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------- the report section
def _fmt(x: float, d: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _verdict_phrase(verdict: str) -> str:
    return "is **inconclusive**" if verdict == "inconclusive" else f"**{verdict}**"


def faithfulness_section(tables: Mapping[str, pd.DataFrame], settings: FaithfulnessSettings | None = None) -> Any:
    """The report :class:`~contrastlens.study.base.Section` from the concatenated ``metrics``, ``curves``
    and ``skipped`` tables of a study: the summary per scope, time per method, the gaps to the oracle, the
    recommendation and the "about 2 tokens" verdicts (text computed from the numbers), two figures."""
    from contrastlens.study.base import Figure as ReportFigure
    from contrastlens.study.base import Section, Table

    s = settings or FaithfulnessSettings()
    title = "Faithfulness of input relevance"
    metrics = tables.get("metrics")
    if metrics is None or len(metrics) == 0:
        return Section(title, text="No faithfulness unit has finished yet.")
    summary = summary_table(metrics, n_boot=s.n_boot, level=s.level, seed=s.seed)
    timing = timing_table(metrics)
    gaps = oracle_gaps(metrics)
    rec = recommend(metrics, max_cost=s.max_cost)
    present = set(metrics["method"])
    claim_method = "attnlrp" if "attnlrp" in present else "cp-lrp" if "cp-lrp" in present else None
    claim = (claim_check(summary, method=claim_method, tokens=s.claim_tokens, tolerance=s.claim_tolerance)
             if claim_method else None)
    masking = ", ".join(sorted(set(metrics["masking"].astype(str)))) if "masking" in metrics else s.masking
    lines = [
        f"Every case's input positions are masked (embedding: {masking}; special tokens never) in the order "
        "each method ranks them toward the target; tokens-to-flip is the smallest k with Δℓ < 0 (censored "
        "at the limit, counted as the limit, so means are lower bounds), MoRF/LeRF curves and the area "
        f"between them follow the AttnLRP paper. Confidence intervals: {int(s.level * 100)}% percentile "
        f"bootstrap over cases ({s.n_boot} resamples). The oracle is a greedy search for the smallest "
        "flipping set (an upper bound on what an ordering achieves when Δℓ is additive; a heuristic "
        "otherwise, which a method can beat); the row \"best found\" is the smallest flipping set any search "
        "found per case, the tightest known bound on the true minimum.",
        "",
    ]
    if claim is not None and len(claim):
        allrow = claim[(claim["model"] == "all") & (claim["benchmark"] == "all")].iloc[0]
        bound = s.claim_tokens + s.claim_tolerance
        lines.append(
            f"**\"About {s.claim_tokens:g} tokens\" for {claim_method}:** over {allrow['cases']} cases the mean "
            f"tokens-to-flip is {_fmt(allrow['mean'])} [{_fmt(allrow['mean_low'])}, {_fmt(allrow['mean_high'])}], "
            f"the median {_fmt(allrow['median'], 1)}, and {_pct(allrow['flipped_within_2'])} of the cases flip "
            f"within 2 tokens ({_pct(allrow['censored_share'])} censored): the claim "
            f"{_verdict_phrase(allrow['verdict'])} here (criterion: the CI's upper end ≤ {bound:g}; it does not "
            f"hold when the CI's lower end is above {bound:g}).")
        others = claim[(claim["model"] != "all") | (claim["benchmark"] != "all")]
        if len(others):
            parts = [f"{r.benchmark if r.model == 'all' else f'{r.model}/{r.benchmark}'}: mean {_fmt(r.mean)} "
                     f"[{_fmt(r.mean_low)}, {_fmt(r.mean_high)}], median {_fmt(r.median, 1)}, {r.verdict}"
                     for r in others.itertuples(index=False)]
            lines.append("Per scope — " + "; ".join(parts) + ".")
            failing = [r.benchmark if r.model == "all" else f"{r.model}/{r.benchmark}"
                       for r in others.itertuples(index=False) if r.verdict == "does not hold"]
            if failing:
                lines.append(f"It does not hold on: {', '.join(failing)}.")
        lines.append("")
    if rec.method is not None or rec.best_any_cost is not None:
        t = rec.table.set_index("method")
        if rec.method is not None:
            r = t.loc[rec.method]
            lines.append(
                f"**Recommended method: {rec.method}** — the lowest mean tokens-to-flip "
                f"({_fmt(r['tokens_to_flip_mean'])}; area between MoRF and LeRF {_fmt(r['area_between_mean'])}) "
                f"on the {rec.cases} cases every candidate ran on, among the methods whose median cost is at "
                f"most {s.max_cost:g}× one AttnLRP explanation (its cost: {_fmt(r['median_cost'])}×).")
        else:
            lines.append(f"No candidate method costs at most {s.max_cost:g}× one AttnLRP explanation.")
        if rec.best_any_cost is not None and rec.best_any_cost != rec.method:
            b = t.loc[rec.best_any_cost]
            lines.append(f"At any cost, {rec.best_any_cost} is best (mean tokens-to-flip "
                         f"{_fmt(b['tokens_to_flip_mean'])}) but costs {_fmt(b['median_cost'])}× one AttnLRP "
                         "explanation.")
        lines.append("")
    if len(gaps):
        parts = [f"{r.method} +{_fmt(r.mean_gap)} (at the oracle in {_pct(r.share_at_oracle)})"
                 if r.mean_gap >= 0 else f"{r.method} {_fmt(r.mean_gap)} (at the oracle in {_pct(r.share_at_oracle)})"
                 for r in gaps.itertuples(index=False)]
        lines.append(f"**Gap to the oracle** (mean extra tokens to flip, on the {int(gaps['cases'].max())} cases "
                     "the oracle flipped): " + "; ".join(parts) + ".")
        lines.append("")
    skipped = tables.get("skipped")
    if skipped is not None and len(skipped):
        cnt = skipped.groupby("method").size()
        lines.append("Skipped: " + "; ".join(f"{m} on {n} case(s)" for m, n in cnt.items())
                     + " (long inputs: see the skipped table).")
    tabs = [Table("Tokens to flip and curve metrics per method (scope: model, benchmark; `all` = every case)",
                  summary, "{:.3g}"),
            Table("Time per method (cost: seconds relative to one AttnLRP explanation of the same case)",
                  timing, "{:.3g}"),
            Table(f"Recommendation: candidates compared on the {rec.cases} shared cases", rec.table, "{:.3g}")]
    if claim is not None and len(claim):
        tabs.append(Table(f"\"About {s.claim_tokens:g} tokens\" for {claim_method}, per scope", claim, "{:.3g}"))
    if len(gaps):
        tabs.append(Table("Gap to the greedy oracle (cases where it flipped)", gaps, "{:.3g}"))
    if skipped is not None and len(skipped):
        tabs.append(Table("Skipped methods", skipped, "{:.3g}"))
    figs = [ReportFigure("Share of cases flipped within k tokens (the oracle dotted).", flip_figure(metrics))]
    curves = tables.get("curves")
    if curves is not None and len(curves):
        figs.insert(0, ReportFigure("Mean MoRF (solid) and LeRF (dashed) curves of Δℓ_k / Δℓ_0 per method.",
                                    curves_figure(curves, x=s.curve_x)))
    return Section(title, text="\n".join(lines).strip(), tables=tabs, figures=figs)


class FaithfulnessAnalysis:
    """The ``faithfulness`` study analysis: per unit :func:`evaluate_case` (tables ``metrics``, ``curves``
    and, when a method was skipped, ``skipped``), per study :func:`faithfulness_section`."""

    name: ClassVar[str] = "faithfulness"
    Settings: ClassVar[type] = FaithfulnessSettings
    # 2: lrp-occlusion shortlists the tokens supporting the target and adds the LRP prefix (its results differ);
    # 3: lrp-occlusion adds the recent positions and ranks by the verified effects
    version: ClassVar[int] = 3
    # the methods are named in the settings: a unit does not depend on the study's rule
    per_rule: ClassVar[bool] = False
    # read by the report only: changing one re-renders the report and re-runs no unit
    report_settings: ClassVar[tuple[str, ...]] = ("max_cost", "claim_tokens", "claim_tolerance", "curve_x", "n_boot",
                                                  "level", "seed")

    def skip(self, case: Any, model: Any, study: Any, settings: Any) -> str | None:
        return None  # every localised case applies (the runner skips unlocalised ones before asking)

    def run(self, ctx: UnitContext) -> UnitResult:
        from contrastlens.study.base import UnitResult

        res = evaluate_case(ctx.lm, ctx.explain, ctx.settings, case=ctx.case.id)
        tables = {"metrics": res.metrics.assign(benchmark=ctx.case.benchmark),
                  "curves": res.curves.assign(benchmark=ctx.case.benchmark)}
        if len(res.skipped):
            tables["skipped"] = res.skipped.assign(case=ctx.case.id, benchmark=ctx.case.benchmark)
        return UnitResult(tables=tables, meta=res.meta)

    def report(self, tables: Mapping[str, pd.DataFrame], study: Any, settings: Any) -> Any:
        return faithfulness_section(tables, settings)


register_analysis(FaithfulnessAnalysis)


__all__ = [
    "BASELINE_METHODS", "CURVE_KINDS", "DEFAULT_METHODS", "MASKINGS", "CaseEvaluation", "DeltaForward",
    "FaithfulnessAnalysis", "FaithfulnessSettings", "Flip", "MaskedForward", "OracleResult", "Recommendation",
    "aopc", "aopc_score", "area_between", "area_between_curves", "auc", "auto_batch_size", "bootstrap_ci",
    "check_settings", "claim_check", "curves_figure", "deletion_auc", "deletion_curve", "evaluate_case",
    "evaluate_masks", "exhaustive_flip", "faithfulness", "faithfulness_and_curves", "faithfulness_section", "fill_of",
    "flip_figure", "flip_point", "greedy_oracle", "insertion_auc", "insertion_curve", "lerf_order",
    "morf_lerf_curves", "morf_order", "oracle_gaps", "random_scores", "recommend", "summarize",
    "summarize_tokens_to_flip", "summary_table", "timing_table", "tokens_to_flip",
]
