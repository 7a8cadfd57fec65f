"""The adapter data model.

An adapter describes *where* things are in a Hugging Face causal LM; it contains no forward code. The
rules (``contrastlens.rules``) read an adapter to know which modules to wrap, and the attribution engine
reads it to know where the residual stream is tapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


def get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """``root.get_submodule(path)`` that returns None for a missing path ('' is root)."""
    if not path:
        return root
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


@dataclass(frozen=True)
class NormSpec:
    """How a normalisation module computes its output.

    kind: ``"rms"`` (y = w_eff * x / rms(x)) or ``"layer"`` (y = w * (x - mean) / std + b).
    weight_offset: Gemma-style norms scale by ``1 + weight``.
    """

    kind: str = "rms"
    weight_offset: float = 0.0


@dataclass(frozen=True)
class BlockParts:
    """Relative module paths inside one decoder block ('' means absent).

    norms: every norm in the block, including q/k-norms inside the attention.
    q_proj/k_proj/v_proj: separate projections, or ``qkv_proj`` for a fused one (GPT-2's ``c_attn``), whose
    output is split in three equal parts (q, k, v) along the last dimension.
    act: the element-wise activation module of the MLP; gate_product_consumer: the module whose *input*
    is the gated product ``act(gate) * up`` (the down projection), empty for non-gated MLPs.
    mid: module whose *input* is the residual stream after attention and before the MLP.
    """

    attention: str
    norms: tuple[str, ...]
    q_proj: str = ""
    k_proj: str = ""
    v_proj: str = ""
    qkv_proj: str = ""
    o_proj: str = ""
    mlp: str = "mlp"
    act: str = ""
    gate_proj: str = ""
    up_proj: str = ""
    down_proj: str = ""
    gate_product_consumer: str = ""
    mid: str = ""
    # pre-norm: h_mid = h + attn(norm(h)); post-norm (Olmo2/3): h_mid = h + norm(attn(h))
    post_norm: bool = False
    # norms applied to the sub-block *outputs* (post-norm models, Gemma3's sandwich norms)
    attn_out_norm: str = ""
    mlp_out_norm: str = ""
    attn_in_norm: str = ""
    mlp_in_norm: str = ""


@dataclass(frozen=True)
class ArchAdapter:
    """Where the parts of one architecture live (defaults: the common Hugging Face decoder layout)."""

    name: str
    model_types: tuple[str, ...]
    block: BlockParts
    norm: NormSpec = field(default_factory=NormSpec)
    base_model: str = "model"  # path of the decoder stack inside the *ForCausalLM
    embed_tokens: str = "embed_tokens"  # relative to base_model
    layers: str = "layers"  # relative to base_model: a ModuleList of blocks
    final_norm: str = "norm"  # relative to base_model
    lm_head: str = "lm_head"  # relative to the *ForCausalLM
    notes: str = ""

    def base(self, model: nn.Module) -> nn.Module:
        mod = get_submodule(model, self.base_model)
        if mod is None:
            raise AttributeError(f"{self.name}: no base model at {self.base_model!r}")
        return mod

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return get_submodule(self.base(model), self.layers)  # type: ignore[return-value]

    def embedding(self, model: nn.Module) -> nn.Module:
        return get_submodule(self.base(model), self.embed_tokens)  # type: ignore[return-value]

    def final_norm_module(self, model: nn.Module) -> nn.Module:
        return get_submodule(self.base(model), self.final_norm)  # type: ignore[return-value]

    def head(self, model: nn.Module) -> nn.Module:
        return get_submodule(model, self.lm_head)  # type: ignore[return-value]

    def part(self, block: nn.Module, name: str) -> nn.Module | None:
        path = getattr(self.block, name)
        return get_submodule(block, path) if path else None

    def num_layers(self, model: nn.Module) -> int:
        return len(self.blocks(model))
