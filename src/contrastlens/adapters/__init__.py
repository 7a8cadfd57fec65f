"""Declarative architecture adapters: which module is the norm, the attention, the MLP, ..."""

from contrastlens.adapters.base import ArchAdapter, BlockParts, NormSpec
from contrastlens.adapters.registry import ADAPTERS, get_adapter, register_adapter, supported_architectures

__all__ = [
    "ADAPTERS",
    "ArchAdapter",
    "BlockParts",
    "NormSpec",
    "get_adapter",
    "register_adapter",
    "supported_architectures",
]
