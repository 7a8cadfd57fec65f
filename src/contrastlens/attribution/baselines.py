"""The embedding that stands in for a removed token: one home for the baselines of the perturbation methods
(``ig``, ``occlusion``, ``lrp-occlusion``) and the maskings of the faithfulness suite and prompt debugging.

:func:`fill_vector` gives one vector [d], in the embedding module's output space (so scaled embeddings,
e.g. Gemma's √d, are scaled alike):

- ``zero``: the zero vector;
- ``mean``: the mean of the embedding module's outputs over the whole vocabulary (accumulated in float64,
  8192 rows at a time, never the whole table at once);
- ``pad``: the embedding of the tokenizer's pad token (an error when it has none);
- ``token``: the embedding of ``token_id`` (e.g. a neutral token such as a space).
"""

from __future__ import annotations

import torch

from contrastlens.errors import InputError
from contrastlens.models.loaded import LoadedModel

FILLS = ("zero", "mean", "pad", "token")


@torch.no_grad()
def fill_vector(lm: LoadedModel, kind: str, *, token_id: int | None = None, dtype: torch.dtype | None = None
                ) -> torch.Tensor:
    """The fill embedding [d] of ``kind`` (see the module docstring) on the model's device, in ``dtype``
    (default: the embedding weights' dtype)."""
    layer = lm.adapter.embedding(lm.model)
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    vocab, d = int(weight.shape[0]), int(weight.shape[1])
    device = weight.device
    out_dtype = dtype or weight.dtype
    if kind == "zero":
        return torch.zeros(d, dtype=out_dtype, device=device)
    if kind == "mean":
        total = torch.zeros(d, dtype=torch.float64, device=device)
        for s in range(0, vocab, 8192):
            ids = torch.arange(s, min(s + 8192, vocab), device=device)[None]
            total += layer(ids)[0].double().sum(0)
        return (total / vocab).to(out_dtype)
    if kind == "pad":
        pad = getattr(lm.tokenizer, "pad_token_id", None)
        if pad is None:
            raise InputError("the tokenizer has no pad token; use the zero or mean baseline")
        token_id = int(pad)
    elif kind != "token":
        raise InputError(f"unknown fill {kind!r}; choose one of: {', '.join(FILLS)}")
    if token_id is None:
        raise InputError("a token fill needs token_id")
    if not 0 <= int(token_id) < vocab:
        raise InputError(f"token id {token_id} is outside the vocabulary [0, {vocab})")
    return layer(torch.tensor([[int(token_id)]], device=device))[0, 0].to(out_dtype)


__all__ = ["FILLS", "fill_vector"]
