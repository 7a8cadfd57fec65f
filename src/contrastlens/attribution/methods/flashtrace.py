"""``flashtrace``: FlashTrace (PyPI ``flashtrace``, Pan et al. 2026, arXiv 2602.01914) on our inputs.

**What it attributes — not Δℓ.** FlashTrace is multi-hop Information Flow Routes (IFR, Ferrando & Voita
2024). For a sink position i and each layer l it splits the attention update of the residual stream into
one part per (source token j, head h), z_jh = α_h[i,j] · (norm-linearised x_j) W_V^h W_O^h, scores each by
its proximity to the mid-layer residual x_mid = x + attn(x), p_jh = max(0, ‖x_mid‖₁ − ‖z_jh − x_mid‖₁)
(the residual x itself is one more part), and normalises per layer: e_j^l = Σ_h p_jh / (Σ_jh p_jh +
p_resid). A token's score is Σ_l e_j^l. The scores are **non-negative and independent of the target and
the contrast token** (and of the objective): they say how much each token flows into the sink's hidden
state, not whether it pushes the target above the contrast. No FlashTrace mode attributes a logit, a
log-probability or a difference of two; a difference of two FlashTrace runs would be zero. So
``flashtrace`` explains the closest thing it can, the hidden state at the explained position (the one whose
logits give S), and the explanation's objective value (``ex.logit_diff``) is still S, from a plain forward.

**How it is run.** FlashTrace's own method (``LLMIFRAttributionBoth.calculate_ifr_multi_hop_both``,
``FlashTrace.trace(method="flashtrace")``) on our exact token ids: its text interface (re-tokenising a
prompt and appending EOS to a target) is bypassed by handing it the ids. The generation FlashTrace traces
is ``ids[start : pos + 1]``: with ``reasoning_start`` None only the explained position (start = pos; its
hops then only rescale the scores by 1 + r + … + r^hops, r the sink's self share), otherwise positions
``reasoning_start .. pos − 1`` are its reasoning span and the explained position its output span (its base
hop then aggregates over the whole span and each hop re-routes the span's own share back to the prompt).
Tokens before ``start`` are its prompt; they are the only ones it scores: the explained position, the
reasoning span and the tokens after the position get 0. FlashTrace soft-deletes stop tokens (',', '.',
whitespace): they get exactly 0 and do not weight the span; a stop token *at the explained position* would
leave nothing to trace (FlashTrace returns NaN), so that one sink is always kept (``meta
["sink_is_stop_token"]``) — the only departure from the package. Token strings for that test are
``tokenizer.decode([id])`` per id (FlashTrace slices the text by offsets; the two differ only for tokens
holding part of a multi-byte character).

**Attention.** IFR needs each layer's attention weights. ``attention="auto"`` uses FlashTrace's
recomputation (one layer at a time, memory O(heads · n²)) where it is exact — Llama, Mistral and Qwen2
without sliding-window layers; it applies plain RoPE and no q/k norm — and the model's own weights (eager
attention for the duration of the call, output_attentions; memory O(layers · heads · n²)) otherwise (Qwen3,
sliding windows). ``"recompute"`` where it is not exact is an error.

Architectures: ``llama``, ``mistral``, ``qwen2``, ``qwen3`` (pre-norm blocks with ``input_layernorm``,
``post_attention_layernorm`` on the mid residual, q/k/v/o projections); FlashTrace's hooks read the wrong
tensors on sandwich/post-norm blocks (Gemma 3 gives all-zero scores, OLMo 2/3 fail) and GPT-2 has none of
these modules, so other models are an :class:`InputError`. The attention value bias (Qwen2) is left out of
z_jh by FlashTrace (it is no token's contribution). Tested with flashtrace 0.1.1; importing it takes
several seconds (spaCy, seaborn, matplotlib); the matplotlib settings its import changes are restored.

Options: ``hops`` (1), ``reasoning_start`` (None); runtime: ``attention`` (``auto``), ``chunk_tokens`` (128).
``meta``: ``flashtrace_version``, ``attention`` (``recomputed`` / ``stored``), ``flashtrace_span``
([start, pos]), ``thinking_ratios``, ``sink_is_stop_token``, ``seconds_flashtrace``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import numbers
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from contrastlens.attribution.methods._common import (
    Objective,
    embed,
    forward_hidden,
    pad_to,
    plain_model,
    positive_int,
)
from contrastlens.attribution.methods.registry import MethodContext, MethodResult, register_method
from contrastlens.errors import ContrastLensError, InputError
from contrastlens.models.loaded import LoadedModel

log = logging.getLogger(__name__)

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
RECOMPUTE_EXACT = ("llama", "mistral", "qwen2")  # FlashTrace's attention recomputation: RoPE, no q/k norm
ATTENTION = ("auto", "recompute", "stored")
TESTED_VERSION = "0.1.1"
INSTALL = f"pip install flashtrace=={TESTED_VERSION}"
_WARNED: set[str | None] = set()


@contextlib.contextmanager
def _matplotlib_settings_kept() -> Iterator[None]:
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - flashtrace needs it; its import error is reported
        yield
        return
    with matplotlib.rc_context():
        yield


def load_flashtrace() -> Any:
    """FlashTrace's ``improved`` module (its own method lives there); an :class:`InputError` naming the
    package when it is not installed or lacks what the adapter calls."""
    try:
        with _matplotlib_settings_kept():  # its import sets text.usetex and mathtext.default process-wide
            mod = importlib.import_module("flashtrace.improved")
    except ImportError as e:
        raise InputError(f"method flashtrace needs the flashtrace package ({INSTALL}): {e}") from None
    engine = getattr(mod, "LLMIFRAttributionBoth", None)
    if engine is None or not all(hasattr(engine, a) for a in ("calculate_ifr_multi_hop_both", "_ensure_generation")):
        raise InputError(f"this flashtrace release lacks LLMIFRAttributionBoth.calculate_ifr_multi_hop_both; "
                         f"{INSTALL}")
    found = flashtrace_version()
    if found != TESTED_VERSION and found not in _WARNED:
        _WARNED.add(found)
        log.warning("flashtrace %s is installed; the adapter was tested with %s", found, TESTED_VERSION)
    return mod


def flashtrace_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flashtrace")
    except PackageNotFoundError:  # pragma: no cover - imported from a source tree
        return None


def model_type(lm: LoadedModel) -> str:
    return str(getattr(lm.text_config, "model_type", "") or type(lm.model).__name__)


def check_architecture(lm: LoadedModel) -> str:
    """The model type, or an :class:`InputError` when FlashTrace cannot trace it."""
    kind = model_type(lm)
    if kind not in SUPPORTED:
        raise InputError(f"flashtrace supports {', '.join(SUPPORTED)} (pre-norm decoder blocks); "
                         f"this model is {kind}")
    layers = getattr(getattr(lm.model, "model", None), "layers", None)
    if not layers or not all(hasattr(layers[0], a) for a in ("input_layernorm", "post_attention_layernorm", "mlp")):
        raise InputError(f"flashtrace needs model.model.layers with input_layernorm, post_attention_layernorm and "
                         f"mlp; this {kind} model has not")
    return kind


def sliding_window_layers(lm: LoadedModel) -> bool:
    cfg = lm.text_config
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ())):
        return True
    return bool(getattr(cfg, "sliding_window", None)) and bool(getattr(cfg, "use_sliding_window", True))


def attention_mode(lm: LoadedModel, kind: str, attention: Any) -> bool:
    """Whether FlashTrace recomputes the attention weights (True) or reads the model's own (False)."""
    if attention not in ATTENTION:
        raise InputError(f"method flashtrace: attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
    exact = kind in RECOMPUTE_EXACT and not sliding_window_layers(lm)
    if attention == "recompute" and not exact:
        why = "sliding-window layers" if kind in RECOMPUTE_EXACT else "q/k norms"
        raise InputError(f"method flashtrace: attention='recompute' is not exact on this {kind} model ({why}: "
                         "FlashTrace recomputes plain RoPE attention); use 'auto' or 'stored'")
    return attention == "recompute" or (attention == "auto" and exact)


@contextlib.contextmanager
def hooks_restored(model: Any) -> Iterator[None]:
    """The model's forward hooks as they were, on exit: transformers installs its output-capturing hooks
    (for ``output_attentions``) on first use and keeps them, marking the model with
    ``_output_capturing_hooks_installed``; the hooks and the marks added during the call are removed."""
    mods = list(model.modules())
    before = [(set(m._forward_hooks), set(m._forward_pre_hooks), m.__dict__.get("_output_capturing_hooks_installed",
                                                                                 _UNSET)) for m in mods]
    try:
        yield
    finally:
        for m, (hooks, pre, mark) in zip(mods, before, strict=True):
            for k in set(m._forward_hooks) - hooks:
                del m._forward_hooks[k]
                m._forward_hooks_with_kwargs.pop(k, None)
                m._forward_hooks_always_called.pop(k, None)
            for k in set(m._forward_pre_hooks) - pre:
                del m._forward_pre_hooks[k]
                m._forward_pre_hooks_with_kwargs.pop(k, None)
            if mark is _UNSET:
                m.__dict__.pop("_output_capturing_hooks_installed", None)
            else:
                m.__dict__["_output_capturing_hooks_installed"] = mark


_UNSET = object()


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """The model with eager attention (which returns its weights) for the duration; restored on exit."""
    old = getattr(model.config, "_attn_implementation", None)
    if old == "eager":
        yield
        return
    try:
        model.set_attn_implementation("eager")
    except Exception as e:  # pragma: no cover - a model without switchable attention
        raise InputError(f"method flashtrace needs the attention weights; load the model with "
                         f"attn_implementation='eager' ({e})") from None
    try:
        yield
    finally:
        model.set_attn_implementation(old)


def _engine(ft: Any, lm: LoadedModel, ids: Sequence[int], start: int, *, chunk_tokens: int, recompute: bool
            ) -> tuple[Any, bool]:
    """A FlashTrace engine whose prompt is ``ids[:start]`` and whose generation is ``ids[start:]``, given as
    ids (FlashTrace's ``_ensure_generation`` tokenises text); and whether the sink's token was a stop token."""
    tokens = lm.decode_tokens(list(ids))
    sink_stop = bool(ft.is_stop_token(tokens[-1]))
    gen_tokens = tokens[start:]
    if sink_stop:  # keep the one sink FlashTrace would soft-delete (it would return NaN)
        gen_tokens[-1] = repr(gen_tokens[-1])

    class Engine(ft.LLMIFRAttributionBoth):
        def _ensure_generation(self, prompt: str, target: str | None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
            dev = self.device
            self.prompt_ids = self.user_prompt_ids = torch.tensor([list(ids[:start])], device=dev)
            self.generation_ids = torch.tensor([list(ids[start:])], device=dev)
            self.prompt = self.user_prompt = None
            self.user_prompt_indices = list(range(start))
            self.chat_prompt_indices: list[int] = []
            self.prompt_tokens = self.user_prompt_tokens = tokens[:start]
            self.generation_tokens = gen_tokens
            self.generation = None
            all_ids = torch.tensor([list(ids)], device=dev)
            return all_ids, torch.ones_like(all_ids), start, len(ids) - start

    eng = Engine(lm.model, lm.tokenizer, chunk_tokens=chunk_tokens, show_progress=False,
                 recompute_attention=recompute)
    return eng, sink_stop


def run_flashtrace(lm: LoadedModel, ids: Sequence[int], start: int, *, hops: int, attention: str = "auto",
                   chunk_tokens: int = 128) -> tuple[torch.Tensor, dict[str, Any]]:
    """FlashTrace's scores [len(ids)] of the generation ``ids[start:]`` (the last id the output span, the rest
    the reasoning span), prompt ``ids[:start]``; and the meta. The model must be plain (no rules)."""
    kind = check_architecture(lm)  # before the (slow) import
    recompute = attention_mode(lm, kind, attention)
    ft = load_flashtrace()
    n = len(ids)
    if not 1 <= start < n:
        raise InputError(f"method flashtrace: the traced span must start after position 0 and include the explained "
                         f"position {n - 1}; got start {start}")
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    if eos is not None and int(ids[-1]) in (eos if isinstance(eos, list | tuple | set) else [eos]):
        raise InputError(f"method flashtrace cannot explain position {n - 1}: it holds the EOS token, which FlashTrace "
                         "never traces")
    eng, sink_stop = _engine(ft, lm, ids, start, chunk_tokens=chunk_tokens, recompute=recompute)
    k = n - 1 - start
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(hooks_restored(lm.model))
        if not recompute:
            stack.enter_context(eager_attention(lm.model))
        raw = eng.calculate_ifr_multi_hop_both("", None, sink_span=(k, k), thinking_span=(0, k - 1) if k > 0 else None,
                                              n_hops=hops, renorm_threshold=0.0)
    seconds = time.perf_counter() - t0
    ifr = (raw.metadata or {}).get("ifr", {})
    obs = ifr.get("observation_projected") if isinstance(ifr, dict) else None
    if not isinstance(obs, dict) or "sum" not in obs:
        raise ContrastLensError(f"flashtrace returned no scores ({ifr.get('note', 'no note')})")
    scores = torch.as_tensor(obs["sum"], dtype=torch.float32).reshape(-1)
    if scores.numel() != n:
        raise ContrastLensError(f"flashtrace returned {scores.numel()} scores for {n} tokens")
    meta = {"flashtrace_version": flashtrace_version(), "attention": "recomputed" if recompute else "stored",
            "flashtrace_span": [start, n - 1], "thinking_ratios": [float(r) for r in ifr.get("thinking_ratios", [])],
            "sink_is_stop_token": sink_stop, "seconds_flashtrace": seconds}
    return scores, meta


@register_method("flashtrace", params={"hops": 1, "reasoning_start": None},
                 runtime={"attention": "auto", "chunk_tokens": 128}, backward=False,
                 description="FlashTrace (multi-hop IFR) of the explained position's hidden state: non-negative, "
                             "the same for any target and contrast (not Δℓ); needs the flashtrace package")
def flashtrace(ctx: MethodContext, *, hops: int, reasoning_start: int | None, attention: str,
               chunk_tokens: int) -> MethodResult:
    if isinstance(hops, bool) or not isinstance(hops, numbers.Integral) or hops < 0:
        raise InputError(f"method flashtrace: hops must be a non-negative integer, got {hops!r}")
    chunk_tokens = positive_int("flashtrace", "chunk_tokens", chunk_tokens)
    lm, pos = ctx.lm, ctx.position
    if pos < 1:
        raise InputError("method flashtrace needs at least one token before the explained position")
    if reasoning_start is None:
        start = pos
    elif isinstance(reasoning_start, bool) or not isinstance(reasoning_start, numbers.Integral):
        raise InputError(f"method flashtrace: reasoning_start must be a position (an integer), got {reasoning_start!r}")
    elif not 1 <= reasoning_start <= pos:
        raise InputError(f"method flashtrace: reasoning_start {reasoning_start} must lie in 1..{pos} (the explained "
                         "position)")
    else:
        start = int(reasoning_start)
    ids = ctx.ids[: pos + 1]
    with plain_model(lm, "flashtrace"), torch.no_grad():
        hidden, _ = forward_hidden(lm, embed(lm, ids))
        obj = Objective.at(ctx, hidden[0, -1])
        score = float(obj.score(hidden[0, -1]))
        rel, meta = run_flashtrace(lm, ids, start, hops=int(hops), attention=attention, chunk_tokens=chunk_tokens)
    return MethodResult(pad_to(rel, ctx.n), obj.spec, obj.u, obj.const, score, obj.logits, meta=meta)


__all__ = ["SUPPORTED", "check_architecture", "flashtrace", "load_flashtrace", "run_flashtrace"]
