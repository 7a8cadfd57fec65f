"""``explain``: contrastive AttnLRP relevance of one prediction."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from contrastlens.attribution.explanation import Explanation
from contrastlens.attribution.logits import head_logits
from contrastlens.attribution.taps import StateRecorder, layer_names
from contrastlens.errors import InputError, NumericalError
from contrastlens.models.loaded import LoadedModel
from contrastlens.objectives.registry import ObjectiveSpec, get_objective
from contrastlens.rules.context import apply_rules


def _is_case(obj) -> bool:
    return type(obj).__name__ == "FailureCase"


def explain(
    lm: LoadedModel,
    prompt,
    target: int | str | None = None,
    contrast: int | str | None = None,
    *,
    objective: str = "logit_diff",
    rule: str = "attnlrp",
    chat: bool = False,
    position: int = -1,
    checkpointing: bool = False,
    keep_states: bool = False,
    add_special_tokens: bool | None = None,
    k: int = 10,
    rank: int = 2,
) -> Explanation:
    """Explain the prediction at ``position`` (default: the last token) of ``prompt``.

    ``prompt`` is a string, a list of token ids (used verbatim) or a ``FailureCase``. ``target`` and
    ``contrast`` are token ids or strings that are exactly one token in context. The objective (see
    ``contrastlens.objectives``) defaults to Δℓ = ℓ(target) − ℓ(contrast). Returns an
    :class:`Explanation` with input, per-layer and mid-block relevance.
    """
    if _is_case(prompt):
        from contrastlens.cases.explain import explain_case

        return explain_case(lm, prompt, objective=objective, rule=rule, position=position,
                            checkpointing=checkpointing, keep_states=keep_states, k=k, rank=rank)
    prep = prepare_inputs(lm, prompt, target, contrast, chat=chat, position=position,
                          add_special_tokens=add_special_tokens)
    ids, pos, n, text = prep.ids, prep.position, len(prep.ids), prep.text
    model, adapter = lm.model, lm.adapter
    rec = StateRecorder(keep_states=keep_states)
    t0 = time.perf_counter()
    with _objective_graph(lm, prep, rule=rule, objective=objective, checkpointing=checkpointing,
                          recorder=rec, k=k, rank=rank) as fwd:
        (g_emb,) = torch.autograd.grad(fwd.score, fwd.emb)
    spec, u, const, logits, score, emb = fwd.spec, fwd.u, fwd.const, fwd.logits, fwd.score, fwd.emb
    elapsed = time.perf_counter() - t0
    if not torch.isfinite(g_emb).all():
        raise NumericalError("the backward pass produced NaN/inf relevance; try float32 (--dtype float32)")

    L = adapter.num_layers(model)
    zeros = torch.zeros(n)
    layer_rel = torch.stack([rec.relevance.get("emb", zeros)] + [rec.relevance.get(str(i), zeros) for i in range(L)])
    mid_rel = torch.stack([rec.relevance.get(f"{i}.mid", zeros) for i in range(L)])
    input_rel = (emb.detach()[0].float() * g_emb[0].float()).sum(-1)
    fn = adapter.final_norm_module(model)
    bias = getattr(fn, "bias", None)
    bias_share = float(bias.detach().float() @ u) if bias is not None else 0.0
    top = torch.topk(logits, min(10, logits.numel()))
    tok = lm.tokenizer
    specials = lm.special_ids()
    ex = Explanation(
        source=lm.source,
        rule=rule,
        objective=spec.name,
        objective_description=spec.description,
        target_id=spec.target_id,
        contrast_id=spec.contrast_id,
        target_str=tok.decode([spec.target_id]),
        contrast_str=tok.decode([spec.contrast_id]) if spec.contrast_id is not None else None,
        position=pos,
        input_ids=ids,
        tokens=lm.decode_tokens(ids),
        special_mask=[i in specials for i in ids],
        prompt=text,
        logit_diff=float(score.detach()) + const,
        final_norm_bias_share=bias_share,
        input_relevance=input_rel.detach().cpu().numpy(),
        layer_relevance=layer_rel.detach().cpu().numpy(),
        mid_relevance=mid_rel.detach().cpu().numpy(),
        top_logits=[(int(i), tok.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices, strict=True)],
        meta={"dtype": str(lm.dtype).replace("torch.", ""), "seconds": elapsed, "checkpointing": checkpointing,
              "attn_implementation": getattr(model.config, "_attn_implementation", None), "n_tokens": n},
    )
    if keep_states:
        ex.states = {k: rec.states[k] for k in layer_names(L, mid=True) if k in rec.states}
    return ex


@dataclass
class PreparedInputs:
    ids: list[int]
    position: int
    target_id: int | None
    contrast_id: int | None
    text: str | None


def prepare_inputs(lm: LoadedModel, prompt, target=None, contrast=None, *, chat: bool = False, position: int = -1,
                   add_special_tokens: bool | None = None) -> PreparedInputs:
    """Tokenise and validate a prompt and resolve target/contrast to ids (clear errors on bad input)."""
    text: str | None
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError("the prompt is empty; give a non-empty prompt")
        text = prompt
        ids = lm.encode(prompt, chat=chat, add_special_tokens=add_special_tokens)
    elif isinstance(prompt, Sequence | torch.Tensor):
        ids = [int(i) for i in (prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt)]
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


@contextlib.contextmanager
def _objective_graph(lm: LoadedModel, prep: PreparedInputs, *, rule: str, objective: str, checkpointing: bool,
                     recorder: StateRecorder | None, k: int = 10, rank: int = 2) -> Iterator[_Forward]:
    """Run the forward pass under the rules and yield the objective S (with its graph) and the
    embedding leaf; rules and taps are removed on exit."""
    objective_fn = get_objective(objective)
    model, adapter = lm.model, lm.adapter
    with apply_rules(model, rule, checkpointing=checkpointing):
        if recorder is not None:
            recorder.attach(model, adapter)
        try:
            input_ids = torch.tensor([prep.ids], device=lm.device)
            emb = adapter.embedding(model)(input_ids).detach().requires_grad_(True)
            out = adapter.base(model)(inputs_embeds=emb, use_cache=False)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            h = hidden[0, prep.position]
            spec, u, const, logits = _objective_direction(lm, h, objective_fn, prep.target_id, prep.contrast_id,
                                                          k=k, rank=rank)
            yield _Forward(h.float() @ u, emb, spec, u, const, logits)
        finally:
            if recorder is not None:
                recorder.detach()


@contextlib.contextmanager
def build_objective(lm: LoadedModel, prompt, target=None, contrast=None, *, rule: str = "attnlrp",
                    objective: str = "logit_diff", chat: bool = False, position: int = -1,
                    checkpointing: bool = False, k: int = 10, rank: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The objective S of an explanation with its autograd graph, inside the rules: ``(score, emb)``.
    For custom analyses (e.g. the coverage check); the rules are removed when the block exits."""
    prep = prepare_inputs(lm, prompt, target, contrast, chat=chat, position=position)
    with _objective_graph(lm, prep, rule=rule, objective=objective, checkpointing=checkpointing,
                          recorder=None, k=k, rank=rank) as fwd:
        yield fwd.score, fwd.emb


def _objective_direction(lm: LoadedModel, h: torch.Tensor, objective_fn, target_id, contrast_id, *, k: int, rank: int):
    """Resolve the objective at hidden state ``h`` (last position only) and return
    (spec, u, const, logits) with S = h·u + const, u = W_Uᵀ c in float32 (identity rule on a final
    soft-cap), and the fp32 logits of this one position."""
    model, adapter = lm.model, lm.adapter
    head = adapter.head(model)
    W = head.weight
    raw, logits = head_logits(lm, h)
    cap = getattr(lm.text_config, "final_logit_softcapping", None)
    with torch.no_grad():
        spec: ObjectiveSpec = objective_fn(logits.cpu(), target_id, contrast_id, k=k, rank=rank)
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
