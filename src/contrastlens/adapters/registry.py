"""The adapters of the supported architectures and a registry to look them up by ``config.model_type``."""

from __future__ import annotations

from contrastlens.adapters.base import ArchAdapter, BlockParts, NormSpec
from contrastlens.errors import UnsupportedArchitectureError

ADAPTERS: dict[str, ArchAdapter] = {}


def register_adapter(adapter: ArchAdapter) -> ArchAdapter:
    for mt in adapter.model_types:
        ADAPTERS[mt] = adapter
    return adapter


def supported_architectures() -> list[str]:
    return sorted(ADAPTERS)


def get_adapter(model_or_type) -> ArchAdapter:
    """The adapter for a model (or a ``model_type`` string); a clear error for anything else."""
    model_type = model_or_type if isinstance(model_or_type, str) else _model_type(model_or_type)
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported (no AttnLRP rules for it); supported: "
            f"{', '.join(supported_architectures())}"
        ) from None


def _model_type(model) -> str:
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no config.model_type; pass a Hugging Face causal LM "
            f"(supported: {', '.join(supported_architectures())})"
        )
    return mt


# Llama-style pre-norm blocks with a SwiGLU MLP: Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k-norm).
def _llama_like(name: str, model_types: tuple[str, ...], qk_norm: bool = False) -> ArchAdapter:
    norms = ("input_layernorm", "post_attention_layernorm")
    if qk_norm:
        norms = norms + ("self_attn.q_norm", "self_attn.k_norm")
    return ArchAdapter(
        name=name,
        model_types=model_types,
        base_model="model",
        embed_tokens="embed_tokens",
        layers="layers",
        final_norm="norm",
        lm_head="lm_head",
        block=BlockParts(
            attention="self_attn",
            norms=norms,
            q_proj="self_attn.q_proj",
            k_proj="self_attn.k_proj",
            v_proj="self_attn.v_proj",
            o_proj="self_attn.o_proj",
            act="mlp.act_fn",
            gate_proj="mlp.gate_proj",
            up_proj="mlp.up_proj",
            down_proj="mlp.down_proj",
            gate_product_consumer="mlp.down_proj",
            mid="post_attention_layernorm",
            attn_in_norm="input_layernorm",
            mlp_in_norm="post_attention_layernorm",
        ),
    )


LLAMA = register_adapter(_llama_like("llama", ("llama",)))
MISTRAL = register_adapter(_llama_like("mistral", ("mistral",)))
QWEN2 = register_adapter(_llama_like("qwen2", ("qwen2",)))
QWEN3 = register_adapter(_llama_like("qwen3", ("qwen3",), qk_norm=True))

GEMMA3 = register_adapter(
    ArchAdapter(
        name="gemma3",
        model_types=("gemma3_text",),
        base_model="model",
        embed_tokens="embed_tokens",
        layers="layers",
        final_norm="norm",
        lm_head="lm_head",
        norm=NormSpec(kind="rms", weight_offset=1.0),
        block=BlockParts(
            attention="self_attn",
            norms=(
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
                "self_attn.q_norm",
                "self_attn.k_norm",
            ),
            q_proj="self_attn.q_proj",
            k_proj="self_attn.k_proj",
            v_proj="self_attn.v_proj",
            o_proj="self_attn.o_proj",
            act="mlp.act_fn",
            gate_proj="mlp.gate_proj",
            up_proj="mlp.up_proj",
            down_proj="mlp.down_proj",
            gate_product_consumer="mlp.down_proj",
            mid="pre_feedforward_layernorm",
            attn_in_norm="input_layernorm",
            attn_out_norm="post_attention_layernorm",
            mlp_in_norm="pre_feedforward_layernorm",
            mlp_out_norm="post_feedforward_layernorm",
        ),
    )
)


def _olmo(name: str, model_types: tuple[str, ...]) -> ArchAdapter:
    return ArchAdapter(
        name=name,
        model_types=model_types,
        base_model="model",
        embed_tokens="embed_tokens",
        layers="layers",
        final_norm="norm",
        lm_head="lm_head",
        block=BlockParts(
            attention="self_attn",
            norms=(
                "post_attention_layernorm",
                "post_feedforward_layernorm",
                "self_attn.q_norm",
                "self_attn.k_norm",
            ),
            q_proj="self_attn.q_proj",
            k_proj="self_attn.k_proj",
            v_proj="self_attn.v_proj",
            o_proj="self_attn.o_proj",
            act="mlp.act_fn",
            gate_proj="mlp.gate_proj",
            up_proj="mlp.up_proj",
            down_proj="mlp.down_proj",
            gate_product_consumer="mlp.down_proj",
            mid="mlp",
            post_norm=True,
            attn_out_norm="post_attention_layernorm",
            mlp_out_norm="post_feedforward_layernorm",
        ),
    )


OLMO2 = register_adapter(_olmo("olmo2", ("olmo2",)))
OLMO3 = register_adapter(_olmo("olmo3", ("olmo3",)))

GPT2 = register_adapter(
    ArchAdapter(
        name="gpt2",
        model_types=("gpt2",),
        base_model="transformer",
        embed_tokens="wte",
        layers="h",
        final_norm="ln_f",
        lm_head="lm_head",
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
