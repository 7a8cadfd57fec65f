"""Next-token logits at one position (only that position's logits are computed)."""

from __future__ import annotations

import torch

from contrastlens.errors import NumericalError
from contrastlens.models.loaded import LoadedModel

_NAN_MSG = "the forward pass produced NaN/inf logits (e.g. float16 overflow); load the model in float32 or bfloat16"


@torch.no_grad()
def head_logits(lm: LoadedModel, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw, final) float32 logits [V] of one final hidden state ``h`` [d]: the unembedding, then the
    model's final logit soft-cap if it has one; NaN/inf is a :class:`NumericalError`."""
    raw = lm.adapter.head(lm.model)(h.detach()[None])[0].float()
    cap = getattr(lm.text_config, "final_logit_softcapping", None)
    logits = torch.tanh(raw / cap) * cap if cap else raw
    if not torch.isfinite(logits).all():
        raise NumericalError(_NAN_MSG)
    return raw, logits


@torch.no_grad()
def position_logits(lm: LoadedModel, ids: list[int], position: int = -1) -> torch.Tensor:
    """float32 logits [V] at ``position``; the n×V logits tensor is never built."""
    model, adapter = lm.model, lm.adapter
    out = adapter.base(model)(input_ids=torch.tensor([ids], device=lm.device), use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return head_logits(lm, hidden[0, position])[1]


def top_logits(lm: LoadedModel, prompt: str | list[int], k: int = 10, *, chat: bool = False,
               position: int = -1) -> list[dict]:
    from contrastlens.attribution.explain import prepare_inputs
    from contrastlens.errors import InputError

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"the number of top tokens must be a positive integer, got {k!r}")
    prep = prepare_inputs(lm, prompt, chat=chat, position=position)
    logits = position_logits(lm, prep.ids, prep.position)
    top = torch.topk(logits, min(k, logits.numel()))
    return [
        {"rank": r + 1, "id": int(i), "token": lm.tokenizer.decode([int(i)]), "logit": float(v)}
        for r, (v, i) in enumerate(zip(top.values, top.indices, strict=True))
    ]
