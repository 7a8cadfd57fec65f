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
  minimum, :func:`exhaustive_flip`) when F is additive or a monotone function of an additive score.

Aggregation over cases (:func:`summarize`, :func:`summarize_tokens_to_flip`): mean and median
tokens-to-flip (censored values count as their limit, so the mean is a lower bound) with percentile
bootstrap confidence intervals (seeded), the shares of cases flipped within 2 and within 5 tokens, the share
censored and the mean area between the curves, AOPC and AUCs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from contrastlens.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from contrastlens.attribution.explanation import Explanation
    from contrastlens.models.loaded import LoadedModel

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

    ``maskable`` (bool [n]): the positions a mask may change. ``unmasked``: Δℓ of the input as it is.
    ``n_variants`` / ``n_forwards``: how many variants and batched forward calls ran so far.
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
        self._unmasked: float | None = None

        model, adapter = lm.model, lm.adapter
        self._base = adapter.base(model)
        emb_mod = adapter.embedding(model)
        head = adapter.head(model)
        with torch.no_grad():
            self._emb = emb_mod(torch.tensor([ids[: self.position + 1]], device=lm.device))  # [1, m, d]
            self._fill = _fill_vector(emb_mod, masking, neutral_token_id, lm.device).to(self._emb.dtype)
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
        for s in range(0, m.shape[0], self.batch_size):
            chunk = m[s : s + self.batch_size].to(self._emb.device)
            out[s : s + chunk.shape[0]] = self._run(chunk).cpu().numpy()
        self.n_variants += int(m.shape[0])
        return out

    @torch.no_grad()
    def _run(self, masks: torch.Tensor) -> torch.Tensor:
        emb = torch.where(masks[..., None], self._fill, self._emb.expand(masks.shape[0], -1, -1))
        out = self._base(inputs_embeds=emb, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
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


def _fill_vector(emb_mod: torch.nn.Module, masking: str, neutral_token_id: int | None,
                 device: torch.device) -> torch.Tensor:
    """The embedding that replaces a masked token: zero, a neutral token's, or the mean row (scaled)."""
    weight = emb_mod.weight
    assert isinstance(weight, torch.Tensor)
    if masking == "zero":
        return torch.zeros(weight.shape[1], dtype=weight.dtype, device=device)
    if masking == "neutral":
        assert neutral_token_id is not None
        if not 0 <= neutral_token_id < weight.shape[0]:
            raise InputError(f"neutral_token_id {neutral_token_id} is outside the vocabulary [0, {weight.shape[0]})")
        return emb_mod(torch.tensor([neutral_token_id], device=device))[0]
    total = torch.zeros(weight.shape[1], dtype=torch.float64, device=weight.device)
    for s in range(0, weight.shape[0], 8192):
        total += weight[s : s + 8192].double().sum(0)
    scale = getattr(emb_mod, "embed_scale", None)
    mean = total / weight.shape[0]
    if scale is not None:
        mean = mean * torch.as_tensor(scale, dtype=torch.float64, device=mean.device)
    return mean.to(device)


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
    lim = _steps(limit, len(order), "limit")
    k, block = 0, 8
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


def greedy_oracle(forward: MaskedForward, maskable: Any = None, *, n: int | None = None,
                  limit: int | None = None) -> OracleResult:
    """Greedy search for a small flipping set: each step masks the one extra maskable position that lowers
    Δℓ most (every candidate in one batched call; ties: earlier position), until Δℓ < 0 or ``limit``
    positions (default: every maskable one). At most limit · m variants."""
    mk = _oracle_setup(forward, maskable, n)
    cand = [int(i) for i in np.flatnonzero(mk)]
    lim = _steps(limit, len(cand), "limit")
    current = np.zeros(mk.size, dtype=bool)
    d = float(evaluate_masks(forward, current[None])[0])
    curve: list[float] = [d]
    chosen: list[int] = []
    while d >= 0 and len(chosen) < lim:
        rows = np.repeat(current[None], len(cand), axis=0)
        rows[np.arange(len(cand)), cand] = True
        vals = evaluate_masks(forward, rows)
        j = int(np.argmin(vals))
        chosen.append(cand.pop(j))
        current[chosen[-1]] = True
        d = float(vals[j])
        curve.append(d)
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
                 case: str | None = None) -> pd.DataFrame:
    """Every metric of one explained case for several attribution methods: one row per method.

    ``methods``: {name: attribution vector [n]} (default: the explanation's own relevance, named by its
    method). The forward is
    a :class:`DeltaForward` of ``ex`` on ``lm`` with ``masking`` (or ``forward``, any masks -> Δℓ callable;
    then ``lm`` may be None). All curves of all methods run in one batched call (shared variants, e.g. the
    unmasked and the all-masked input, once). ``steps``: K of the curves (default every maskable position);
    ``limit``: the censoring limit of tokens-to-flip and of the oracle (default every maskable position).

    Columns: ``case``, ``method``, ``n_tokens``, ``n_maskable``, ``masking``, ``logit_diff`` (Δℓ_0 as the
    forward computes it), ``tokens_to_flip``, ``censored``, ``limit``, ``steps``, ``area_between``,
    ``aopc``, ``deletion_auc``, ``insertion_auc`` and, with ``oracle``, ``oracle_tokens_to_flip``,
    ``oracle_censored`` (the same for every method of the case).
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
    orders = {name: morf_order(_scores(s, n), mk) for name, s in methods.items()}
    blocks = []
    for order in orders.values():
        blocks += [_prefix_masks(order, n, range(k + 1)), _prefix_masks(order[::-1], n, range(k + 1)),
                   _insertion_masks(order, mk, k)]
    vals = evaluate_masks(forward, np.vstack(blocks + [np.zeros((1, n), dtype=bool)]))
    d0 = float(vals[-1])
    orc = greedy_oracle(forward, mk, limit=lim) if oracle else None
    label = case or _case_label(ex)
    rows = []
    for i, name in enumerate(orders):
        morf, lerf, ins = (vals[(3 * i + j) * (k + 1) : (3 * i + j + 1) * (k + 1)] for j in range(3))
        if lim <= k:
            first = flip_point(morf[: lim + 1])
            flip = Flip(lim, True) if first is None else Flip(first, False)
        else:
            flip = tokens_to_flip(forward, methods[name], maskable=mk, limit=lim)
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
    return pd.DataFrame(rows)


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
    return pd.DataFrame(rows)


__all__ = [
    "MASKINGS", "DeltaForward", "Flip", "MaskedForward", "OracleResult", "aopc", "aopc_score", "area_between",
    "area_between_curves", "auc", "auto_batch_size", "bootstrap_ci", "deletion_auc", "deletion_curve",
    "evaluate_masks", "exhaustive_flip", "faithfulness", "flip_point", "greedy_oracle", "insertion_auc",
    "insertion_curve", "lerf_order", "morf_lerf_curves", "morf_order", "random_scores", "summarize",
    "summarize_tokens_to_flip", "tokens_to_flip",
]
