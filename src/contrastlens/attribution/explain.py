"""``explain``: contrastive relevance of one prediction (AttnLRP by default; see ``attribution.methods``)."""

from __future__ import annotations

import contextlib
import numbers
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from contrastlens.attribution.explanation import Explanation
from contrastlens.attribution.logits import head_logits
from contrastlens.attribution.spec import AttributionSpec, Explainable
from contrastlens.attribution.taps import StateRecorder
from contrastlens.errors import InputError, NumericalError
from contrastlens.models.loaded import LoadedModel
from contrastlens.objectives.registry import ObjectiveSpec, get_objective, objective_params
from contrastlens.provenance import ModelMismatchWarning, Provenance
from contrastlens.rules.context import apply_rules


def explain(
    lm: LoadedModel,
    prompt: str | Sequence[int] | torch.Tensor | Explainable,
    target: int | str | None = None,
    contrast: int | str | None = None,
    *,
    objective: str = "logit_diff",
    rule: str | None = None,
    method: str | None = None,
    method_params: Mapping[str, Any] | None = None,
    chat: bool | None = None,
    position: int | None = None,
    checkpointing: bool = False,
    keep_states: bool = False,
    add_special_tokens: bool | None = None,
    k: int | None = None,
    rank: int | None = None,
    on_model_mismatch: str = "warn",
) -> Explanation:
    """Explain the prediction at ``position`` (default: the last token) of ``prompt``.

    ``prompt`` is a string, a list of token ids (used verbatim) or an :class:`Explainable` object such as a
    ``FailureCase``, which fixes its own ids, target and contrast (passing ``target``, ``contrast``,
    ``chat``, ``position`` or ``add_special_tokens`` with it is an error). ``target`` and ``contrast`` are
    token ids or strings that are exactly one token in context. The objective (see
    ``contrastlens.objectives``) defaults to Δℓ = ℓ(target) − ℓ(contrast); ``k`` (``topk_avg``) and ``rank``
    (``contrast_rank``) are objective parameters, an error with an objective that does not take them.
    A case made with a model whose weight fingerprint differs from ``lm``'s gives a
    :class:`~contrastlens.provenance.ModelMismatchWarning` (``on_model_mismatch="warn"``, the default, for
    cross-model comparisons), an :class:`InputError` (``"error"``) or nothing (``"ignore"``).

    ``method`` (see ``contrastlens.attribution.methods``): ``attnlrp`` (the default) and ``cp-lrp`` (the LRP
    rules; ``rule=`` names them too, and ``rule=`` with a conflicting ``method=`` is an error), ``ixg``,
    ``ig``, ``occlusion``, ``random`` and ``lrp-occlusion``; ``method_params`` its options (e.g.
    ``{"steps": 64}`` for ``ig``; an option the method does not take is an error). Only the LRP methods give
    hidden-state relevance (and ``keep_states``); the others leave zeros there and set
    ``ex.meta["hidden_relevance"] = False``.

    Returns an :class:`Explanation` with input, per-layer and mid-block relevance, its resolved
    :class:`AttributionSpec` (``ex.spec``) and its provenance (``ex.provenance``).
    """
    from contrastlens.attribution.methods import MethodContext, resolve_method

    if on_model_mismatch not in ("warn", "error", "ignore"):
        raise InputError(f"on_model_mismatch must be warn, error or ignore, not {on_model_mismatch!r}")
    params = objective_params(objective, {"k": k, "rank": rank})
    meth, rule_name = resolve_method(method, rule)
    options, runtime = meth.resolve_params(method_params)
    if keep_states and not meth.hidden_relevance:
        raise InputError(f"keep_states=True needs hidden-state relevance, which method {meth.name} does not give "
                         "(use method attnlrp or cp-lrp)")
    if checkpointing and not meth.backward:
        raise InputError(f"checkpointing=True applies to methods with a backward pass; method {meth.name} has none")
    segments: dict[str, list[tuple[int, int]]] = {}
    if isinstance(prompt, Explainable):
        given = [name for name, v in (("target", target), ("contrast", contrast), ("chat", chat),
                                      ("position", position), ("add_special_tokens", add_special_tokens))
                 if v is not None]
        inputs = prompt.attribution_inputs(lm)
        if given:
            raise InputError(f"{inputs.label} fixes its own prompt, target and contrast; do not pass "
                             f"{', '.join(g + '=' for g in given)}")
        check_model(lm, inputs.provenance, what=inputs.label, on_mismatch=on_model_mismatch)
        prompt, target, contrast, segments = inputs.ids, inputs.target_id, inputs.contrast_id, inputs.segments
    prep = prepare_inputs(lm, prompt, target, contrast, chat=bool(chat), position=-1 if position is None else position,
                          add_special_tokens=add_special_tokens)
    ids, pos, n, text = prep.ids, prep.position, len(prep.ids), prep.text
    model, adapter = lm.model, lm.adapter
    ctx = MethodContext(lm, prep, objective=objective, objective_params=params, rule=rule_name,
                        checkpointing=checkpointing, keep_states=keep_states)
    t0 = time.perf_counter()
    res = meth.fn(ctx, **options, **runtime)
    elapsed = time.perf_counter() - t0
    obj, u, const, logits = res.objective, res.u, res.const, res.logits
    input_rel = res.input_relevance.detach().float().reshape(-1)
    if input_rel.numel() != n:
        raise NumericalError(f"method {meth.name} returned {input_rel.numel()} relevance values for {n} tokens")
    if not torch.isfinite(input_rel).all():
        raise NumericalError(f"method {meth.name} produced NaN/inf relevance; try float32 (--dtype float32)")
    L = adapter.num_layers(model)
    layer_rel = res.layer_relevance if res.layer_relevance is not None else torch.zeros(L + 1, n)
    mid_rel = res.mid_relevance if res.mid_relevance is not None else torch.zeros(L, n)
    hidden = res.layer_relevance is not None
    fn = adapter.final_norm_module(model)
    bias = getattr(fn, "bias", None)
    bias_share = float(bias.detach().float() @ u) if bias is not None else 0.0
    top = torch.topk(logits, min(10, logits.numel()))
    tok = lm.tokenizer
    specials = lm.special_ids()
    spec = AttributionSpec(
        target_id=obj.target_id, contrast_id=obj.contrast_id, position=pos, objective=obj.name,
        objective_params=tuple(params.items()), rule=rule_name, dtype=lm.dtype_name,
        attn_implementation=lm.attn_implementation, method=meth.name, method_params=tuple(options.items()),
    )
    meta: dict[str, Any] = {"seconds": elapsed, "checkpointing": checkpointing, "n_tokens": n,
                            "hidden_relevance": hidden}
    if runtime:
        meta["method_runtime"] = runtime
    meta.update(res.meta)
    ex = Explanation(
        source=lm.source,
        spec=spec,
        objective_description=obj.description,
        target_str=tok.decode([obj.target_id]),
        contrast_str=tok.decode([obj.contrast_id]) if obj.contrast_id is not None else None,
        input_ids=ids,
        tokens=lm.decode_tokens(ids),
        special_mask=[i in specials for i in ids],
        prompt=text,
        logit_diff=res.score + const,
        final_norm_bias_share=bias_share,
        input_relevance=input_rel.cpu().numpy(),
        layer_relevance=layer_rel.detach().float().cpu().numpy(),
        mid_relevance=mid_rel.detach().float().cpu().numpy(),
        top_logits=[(int(i), tok.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices, strict=True)],
        provenance=lm.provenance(),
        segments=segments,
        meta=meta,
    )
    if keep_states:
        ex.states = res.states
    return ex


def check_model(lm: LoadedModel, provenance: Provenance | None, *, what: str, on_mismatch: str = "error") -> None:
    """Whether ``lm`` has the weights a saved result was made with (by fingerprint): on a mismatch, warn
    (:class:`ModelMismatchWarning`), raise an :class:`InputError` or do nothing (``on_mismatch``)."""
    if provenance is None or on_mismatch == "ignore":
        return
    if provenance.same_model(lm.provenance()) is False:
        msg = (f"{what} was made with model {provenance.model_source!r} (fingerprint {provenance.model_fingerprint}), "
               f"not with {lm.source!r} (fingerprint {lm.fingerprint})")
        if on_mismatch == "error":
            raise InputError(msg)
        warnings.warn(msg, ModelMismatchWarning, stacklevel=3)


@dataclass
class PreparedInputs:
    ids: list[int]
    position: int
    target_id: int | None
    contrast_id: int | None
    text: str | None


def prepare_inputs(lm: LoadedModel, prompt: str | Sequence[int] | torch.Tensor, target: int | str | None = None,
                   contrast: int | str | None = None, *, chat: bool = False, position: int = -1,
                   add_special_tokens: bool | None = None) -> PreparedInputs:
    """Tokenise and validate a prompt and resolve target/contrast to ids (clear errors on bad input)."""
    text: str | None
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError("the prompt is empty; give a non-empty prompt")
        text = prompt
        ids = lm.encode(prompt, chat=chat, add_special_tokens=add_special_tokens)
    elif isinstance(prompt, Sequence | torch.Tensor) and not isinstance(prompt, bytes | bytearray):
        if isinstance(prompt, torch.Tensor):
            if prompt.dim() != 1 or prompt.is_floating_point() or prompt.is_complex():
                raise InputError(f"a tensor prompt must be a 1-D tensor of integer token ids, not {prompt.dim()}-D "
                                 f"{str(prompt.dtype).replace('torch.', '')}")
            seq: Sequence[Any] = prompt.tolist()
        else:
            seq = prompt
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in seq):
            raise InputError("a list prompt must hold integer token ids (give a string for text)")
        ids = [int(i) for i in seq]
        text = None
    else:
        raise InputError(f"prompt must be a string, a list of token ids or a FailureCase, not {type(prompt).__name__}")
    lm.check_prompt(ids)
    n = len(ids)
    if not -n <= position < n:
        raise InputError(f"position {position} is outside the prompt of {n} tokens")
    pos = position % n
    context = ids[: pos + 1]
    target_id = lm.token_id(target, context, what="target") if target is not None else None
    contrast_id = lm.token_id(contrast, context, what="contrast") if contrast is not None else None
    if target_id is not None and target_id == contrast_id:
        raise InputError(f"target and contrast are the same token (id {target_id}); choose a different contrast")
    return PreparedInputs(ids, pos, target_id, contrast_id, text)


@dataclass
class _Forward:
    score: torch.Tensor
    emb: torch.Tensor
    spec: ObjectiveSpec
    u: torch.Tensor
    const: float
    logits: torch.Tensor
    cache: Any = None  # the forward's KV cache, with use_cache=True


@contextlib.contextmanager
def _objective_graph(lm: LoadedModel, prep: PreparedInputs, *, rule: str, objective: str, checkpointing: bool,
                     recorder: StateRecorder | None, params: dict[str, Any], use_cache: bool = False
                     ) -> Iterator[_Forward]:
    """Run the forward pass under the rules and yield the objective S (with its graph) and the
    embedding leaf; rules and taps are removed on exit. ``use_cache``: also keep the forward's KV cache (the
    rules change gradients only, so it equals the plain model's)."""
    objective_fn = get_objective(objective)
    model, adapter = lm.model, lm.adapter
    with apply_rules(model, rule, checkpointing=checkpointing):
        if recorder is not None:
            recorder.attach(model, adapter)
        try:
            input_ids = torch.tensor([prep.ids], device=lm.device)
            emb = adapter.embedding(model)(input_ids).detach().requires_grad_(True)
            out = adapter.base(model)(inputs_embeds=emb, use_cache=use_cache)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            h = hidden[0, prep.position]
            spec, u, const, logits = _objective_direction(lm, h, objective_fn, prep.target_id, prep.contrast_id,
                                                          params)
            cache = None
            if use_cache:
                keys = out.keys() if hasattr(out, "keys") else ()
                cache = next((out[k] for k in ("cache", "past_key_values") if k in keys), None)
            yield _Forward(h.float() @ u, emb, spec, u, const, logits, cache)
        finally:
            if recorder is not None:
                recorder.detach()


@contextlib.contextmanager
def build_objective(lm: LoadedModel, prompt: str | Sequence[int], target: int | str | None = None,
                    contrast: int | str | None = None, *, rule: str = "attnlrp",
                    objective: str = "logit_diff", chat: bool = False, position: int = -1,
                    checkpointing: bool = False, k: int | None = None, rank: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The objective S of an explanation with its autograd graph, inside the rules: ``(score, emb)``.
    For custom analyses (e.g. the coverage check); the rules are removed when the block exits."""
    params = objective_params(objective, {"k": k, "rank": rank})
    prep = prepare_inputs(lm, prompt, target, contrast, chat=chat, position=position)
    with _objective_graph(lm, prep, rule=rule, objective=objective, checkpointing=checkpointing,
                          recorder=None, params=params) as fwd:
        yield fwd.score, fwd.emb


def _objective_direction(lm: LoadedModel, h: torch.Tensor, objective_fn: Any, target_id: int | None,
                         contrast_id: int | None, params: dict[str, Any]
                         ) -> tuple[ObjectiveSpec, torch.Tensor, float, torch.Tensor]:
    """Resolve the objective at hidden state ``h`` (last position only) and return
    (spec, u, const, logits) with S = h·u + const, u = W_Uᵀ c in float32 (identity rule on a final
    soft-cap), and the fp32 logits of this one position."""
    model, adapter = lm.model, lm.adapter
    head = adapter.head(model)
    W = head.weight
    raw, logits = head_logits(lm, h)
    cap = getattr(lm.text_config, "final_logit_softcapping", None)
    with torch.no_grad():
        spec: ObjectiveSpec = objective_fn(logits.cpu(), target_id, contrast_id, **params)
        c = spec.coeffs.to(W.device)
        if cap:
            safe = torch.where(raw == 0, torch.ones_like(raw), raw)
            c = c * torch.where(raw == 0, torch.ones_like(raw), logits / safe)
        nz = torch.nonzero(c).flatten()
        if nz.numel() <= 64:
            u = c[nz] @ W[nz].float()
        else:
            u = torch.zeros(W.shape[1], dtype=torch.float32, device=W.device)
            for s in range(0, W.shape[0], 8192):
                u += c[s : s + 8192] @ W[s : s + 8192].float()
        b = getattr(head, "bias", None)
        const = float(c @ b.float()) if b is not None else 0.0
    return spec, u, const, logits
