"""The KV cache of a Hugging Face model, across transformers releases: which forward keyword takes it
(``cache`` in recent transformers 5 releases, ``past_key_values`` in earlier ones), where a forward call
returns it, and whether it can be cut to any prefix. Shared by the attribution methods that reuse an
unchanged prefix and by greedy decoding."""

from __future__ import annotations

import inspect
from typing import Any

import torch

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


__all__ = ["croppable", "forward_keywords", "output_cache"]
