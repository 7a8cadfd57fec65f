"""Tiny, seeded, randomly initialised models of every supported architecture (tests and demos).

``random:<arch>`` builds the model from a config and a small byte-level BPE tokenizer trained on a
built-in text, so prompts tokenise into realistic multi-character tokens. Norm weights and all biases
are randomised too, so that every rule (and every bias path) is exercised.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from contrastlens.errors import ModelLoadError

_CORPUS = """
The quick brown fox jumps over the lazy dog. The capital of France is Paris, and the capital of Italy
is Rome. Write a short answer, and do not use any commas in your reply. Answer with exactly three
bullet points. def add(a, b): return a + b. The answer is 42. Let x be a number such that 2x + 3 = 11,
then x = 4. Please respond in English only, in lowercase letters, and end your reply with the word
done. The model predicted the wrong token instead of the right one. Numbers: 0 1 2 3 4 5 6 7 8 9 10.
User: What is the sum of 3 and 5? Assistant: The sum of 3 and 5 is 8. In the beginning there was a
long context with many tokens, tools, calls, results and answers. {"name": "search", "arguments": {}}
""" * 4

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tok.to_str()


def random_tokenizer(vocab_size: int = 512) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _config(arch: str, vocab: int, **over: Any) -> Any:
    import transformers as tf

    common: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    if arch in ("qwen3", "gemma3"):
        common["head_dim"] = 16
    common.update(over)
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "mistral":
        return tf.MistralConfig(sliding_window=None, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)  # q/k/v biases
    if arch == "qwen3":
        return tf.Qwen3Config(**common)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(
            sliding_window=8, query_pre_attn_scalar=16, final_logit_softcapping=None,
            attn_logit_softcapping=None, **common,
        )
    if arch == "olmo2":
        return tf.Olmo2Config(**common)
    if arch == "olmo3":
        return tf.Olmo3Config(sliding_window=8, **common)
    if arch == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab, n_embd=common["hidden_size"], n_layer=common["num_hidden_layers"],
            n_head=common["num_attention_heads"], n_positions=common["max_position_embeddings"],
            initializer_range=common["initializer_range"], bos_token_id=0, eos_token_id=1,
            tie_word_embeddings=False, **{k: v for k, v in over.items() if k.startswith("n_")},
        )
    raise ModelLoadError(f"no random config for {arch!r}; choose one of: {', '.join(RANDOM_ARCHS)}")


RANDOM_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "olmo2", "olmo3", "gpt2")


def build_random_model(
    arch: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    vocab_size: int = 512,
    **config_overrides: Any,
) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised causal LM of ``arch`` and its tokenizer (deterministic given ``seed``)."""
    from transformers import AutoModelForCausalLM

    arch = arch.lower()
    cfg = _config(arch, vocab_size, **config_overrides)
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias" or "norm" in name or ".ln_" in name or name.startswith("transformer.ln_f"):
                if leaf == "weight":
                    base = 0.0 if arch == "gemma3" else 1.0
                    prm.copy_(base + 0.2 * torch.randn(prm.shape, generator=g))
                else:
                    prm.copy_(0.05 * torch.randn(prm.shape, generator=g))
    model = model.to(dtype).eval()
    return model, random_tokenizer(vocab_size)
