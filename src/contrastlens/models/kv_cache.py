"""The KV cache of a Hugging Face model, across transformers releases: which forward keyword takes it
(``cache`` in recent transformers 5 releases, ``past_key_values`` in earlier ones), where a forward call
returns it, and whether it can be cut to any prefix. Shared by the attribution methods that reuse an
unchanged prefix (:func:`forward_hidden` from a cut :func:`cache_prefix`), by the faithfulness suite's
masked forwards and by greedy decoding."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.models.loaded import LoadedModel

_FORWARD_KW: dict[type, tuple[str, bool]] = {}


def forward_keywords(model: torch.nn.Module) -> tuple[str, bool]:
    """The forward keyword of the KV cache (``cache``, or ``past_key_values`` in older transformers) and
    whether forward takes ``logits_to_keep``; looked up once per model class."""
    key = type(model)
    if key not in _FORWARD_KW:
        try:  # the class's forward: an instance's forward may be wrapped (hooks) under another signature
            params = inspect.signature(key.forward).parameters
        except (TypeError, ValueError):  # pragma: no cover - an unintrospectable forward
            params = {}  # type: ignore[assignment]
        _FORWARD_KW[key] = ("cache" if "cache" in params else "past_key_values", "logits_to_keep" in params)
    return _FORWARD_KW[key]


def output_cache(out: Any) -> Any:
    """The KV cache a forward call returned (``cache`` or ``past_key_values``), or None."""
    keys = out.keys() if hasattr(out, "keys") else ()
    for name in ("cache", "past_key_values"):
        if name in keys:
            return out[name]
    return None


def croppable(cache: Any) -> bool:
    """Whether ``cache`` can be cut to any prefix (every layer a plain dynamic layer; sliding-window layers
    keep only their window)."""
    layers = getattr(cache, "layers", None)
    if cache is None or not layers:
        return False
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer and getattr(layer, "keys", None) is not None for layer in layers)


def cache_prefix(cache: Any, length: int, batch: int) -> Any:
    """A fresh KV cache holding the first ``length`` positions of ``cache`` (batch 1) for a batch of
    ``batch`` rows; None when there is no prefix or the cache cannot be cut (callers then recompute it)."""
    if length <= 0 or not croppable(cache):
        return None
    from transformers.cache_utils import DynamicCache

    data = [(layer.keys[:, :, :length].detach().expand(batch, -1, -1, -1),
             layer.values[:, :, :length].detach().expand(batch, -1, -1, -1)) for layer in cache.layers]
    try:
        return DynamicCache(ddp_cache_data=data)
    except TypeError:  # pragma: no cover - a transformers release without this constructor: recompute
        return None


def forward_hidden(lm: LoadedModel, emb: torch.Tensor, *, start: int = 0, cache: Any = None,
                   want_cache: bool = False) -> tuple[torch.Tensor, Any]:
    """The last hidden states [B, s, d] of the embeddings ``emb`` [B, s, d] placed at positions
    ``start .. start+s-1``, after the prefix held by ``cache`` (None: no prefix, ``start`` must be 0); and the
    KV cache with ``want_cache``. Never computes logits."""
    base = lm.adapter.base(lm.model)
    b, s = emb.shape[0], emb.shape[1]
    kw: dict[str, Any] = {"inputs_embeds": emb, "use_cache": want_cache or cache is not None,
                          "position_ids": torch.arange(start, start + s, device=emb.device)[None].expand(b, -1)}
    if cache is not None:
        kw[forward_keywords(base)[0]] = cache
    out = base(**kw)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden, output_cache(out) if want_cache else None


__all__ = ["cache_prefix", "croppable", "forward_hidden", "forward_keywords", "output_cache"]
