"""The adapters of the supported architectures and a registry to look them up by ``config.model_type``."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from contrastlens.adapters.base import ArchAdapter, BlockParts, NormSpec
from contrastlens.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from torch import nn

ADAPTERS: dict[str, ArchAdapter] = {}


def register_adapter(adapter: ArchAdapter, *, overwrite: bool = False) -> ArchAdapter:
    """Register ``adapter`` for each of its ``model_types``. A model type that already has an adapter is an
    error unless ``overwrite=True``."""
    taken = [mt for mt in adapter.model_types if mt in ADAPTERS]
    if taken and not overwrite:
        raise UnsupportedArchitectureError(
            f"model type(s) {', '.join(taken)} already registered (adapter {ADAPTERS[taken[0]].name!r}); "
            "pass overwrite=True to replace"
        )
    for mt in adapter.model_types:
        ADAPTERS[mt] = adapter
    return adapter


def supported_architectures() -> list[str]:
    return sorted(ADAPTERS)


def get_adapter(model_or_type: nn.Module | str) -> ArchAdapter:
    """The adapter for a model (or a ``model_type`` string); a clear error for anything else."""
    model_type = model_or_type if isinstance(model_or_type, str) else _model_type(model_or_type)
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported (no AttnLRP rules for it); supported: "
            f"{', '.join(supported_architectures())}"
        ) from None


def _model_type(model: object) -> str:
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no config.model_type; pass a Hugging Face causal LM "
            f"(supported: {', '.join(supported_architectures())})"
        )
    return mt


class _AttentionParts(TypedDict):
    attention: str
    q_proj: str
    k_proj: str
    v_proj: str
    o_proj: str


class _GatedMlpParts(TypedDict):
    act: str
    gate_proj: str
    up_proj: str
    down_proj: str
    gate_product_consumer: str


# Parts shared by the Llama-like families: separate q/k/v/o projections and a SwiGLU/GeGLU MLP.
_SELF_ATTN = _AttentionParts(
    attention="self_attn",
    q_proj="self_attn.q_proj",
    k_proj="self_attn.k_proj",
    v_proj="self_attn.v_proj",
    o_proj="self_attn.o_proj",
)
_GATED_MLP = _GatedMlpParts(
    act="mlp.act_fn",
    gate_proj="mlp.gate_proj",
    up_proj="mlp.up_proj",
    down_proj="mlp.down_proj",
    gate_product_consumer="mlp.down_proj",
)
_QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")


# Llama-style pre-norm blocks: Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k-norm).
def _llama_like(name: str, model_types: tuple[str, ...], qk_norm: bool = False) -> ArchAdapter:
    norms = ("input_layernorm", "post_attention_layernorm") + (_QK_NORMS if qk_norm else ())
    return ArchAdapter(
        name=name,
        model_types=model_types,
        block=BlockParts(
            **_SELF_ATTN,
            **_GATED_MLP,
            norms=norms,
            mid="post_attention_layernorm",
            attn_in_norm="input_layernorm",
            mlp_in_norm="post_attention_layernorm",
        ),
    )


LLAMA = register_adapter(_llama_like("llama", ("llama",)))
MISTRAL = register_adapter(_llama_like("mistral", ("mistral",)))
QWEN2 = register_adapter(_llama_like("qwen2", ("qwen2",)))
QWEN3 = register_adapter(_llama_like("qwen3", ("qwen3",), qk_norm=True))

# Gemma3: sandwich norms (before and after each sub-block), norms scale by 1 + w.
GEMMA3 = register_adapter(
    ArchAdapter(
        name="gemma3",
        model_types=("gemma3_text",),
        norm=NormSpec(kind="rms", weight_offset=1.0),
        block=BlockParts(
            **_SELF_ATTN,
            **_GATED_MLP,
            norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                   "post_feedforward_layernorm") + _QK_NORMS,
            mid="pre_feedforward_layernorm",
            attn_in_norm="input_layernorm",
            attn_out_norm="post_attention_layernorm",
            mlp_in_norm="pre_feedforward_layernorm",
            mlp_out_norm="post_feedforward_layernorm",
        ),
    )
)


# Olmo2/Olmo3: post-norm (norms on the sub-block outputs), q/k-norm over the full projection width.
def _olmo(name: str, model_types: tuple[str, ...]) -> ArchAdapter:
    return ArchAdapter(
        name=name,
        model_types=model_types,
        block=BlockParts(
            **_SELF_ATTN,
            **_GATED_MLP,
            norms=("post_attention_layernorm", "post_feedforward_layernorm") + _QK_NORMS,
            mid="mlp",
            post_norm=True,
            attn_out_norm="post_attention_layernorm",
            mlp_out_norm="post_feedforward_layernorm",
        ),
    )


OLMO2 = register_adapter(_olmo("olmo2", ("olmo2",)))
OLMO3 = register_adapter(_olmo("olmo3", ("olmo3",)))

# GPT-2: LayerNorm with biases, a fused Conv1D q/k/v projection, a non-gated GELU MLP.
GPT2 = register_adapter(
    ArchAdapter(
        name="gpt2",
        model_types=("gpt2",),
        base_model="transformer",
        embed_tokens="wte",
        layers="h",
        final_norm="ln_f",
        norm=NormSpec(kind="layer"),
        block=BlockParts(
            attention="attn",
            norms=("ln_1", "ln_2"),
            qkv_proj="attn.c_attn",
            o_proj="attn.c_proj",
            act="mlp.act",
            mid="ln_2",
            attn_in_norm="ln_1",
            mlp_in_norm="ln_2",
        ),
    )
)
