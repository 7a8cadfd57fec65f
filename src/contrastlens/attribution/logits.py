"""Next-token logits at one position (only that position's logits are computed)."""

from __future__ import annotations

import torch

from contrastlens.errors import NumericalError
from contrastlens.models.loaded import LoadedModel


@torch.no_grad()
def position_logits(lm: LoadedModel, ids: list[int], position: int = -1) -> torch.Tensor:
    """float32 logits [V] at ``position``; the n×V logits tensor is never built."""
    model, adapter = lm.model, lm.adapter
    out = adapter.base(model)(input_ids=torch.tensor([ids], device=lm.device), use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    logits = adapter.head(model)(hidden[:, position])[0].float()
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    if not torch.isfinite(logits).all():
        raise NumericalError("the forward pass produced NaN/inf logits (e.g. float16 overflow); use float32 or bfloat16")
    return logits


def top_logits(lm: LoadedModel, prompt: str | list[int], k: int = 10, *, chat: bool = False,
               position: int = -1) -> list[dict]:
    from contrastlens.attribution.explain import prepare_inputs

    prep = prepare_inputs(lm, prompt, chat=chat, position=position)
    logits = position_logits(lm, prep.ids, prep.position)
    top = torch.topk(logits, min(k, logits.numel()))
    return [
        {"rank": r + 1, "id": int(i), "token": lm.tokenizer.decode([int(i)]), "logit": float(v)}
        for r, (v, i) in enumerate(zip(top.values, top.indices, strict=True))
    ]
