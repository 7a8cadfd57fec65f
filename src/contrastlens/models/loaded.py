"""A loaded model: the HF causal LM, its tokenizer, where it came from and its adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from contrastlens.adapters import ArchAdapter, get_adapter
from contrastlens.errors import InputError, TokenizationError
from contrastlens.provenance import Provenance


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer. ``folder``: where its weights were read from (None: built in memory),
    used for the weight fingerprint."""

    model: torch.nn.Module
    tokenizer: Any
    source: str
    revision: str | None = None
    folder: str | None = None
    adapter: ArchAdapter = field(init=False)
    _fingerprint: str | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.adapter = get_adapter(self.model)

    # ------------------------------------------------------------ provenance
    @property
    def fingerprint(self) -> str:
        """A short identity of the weights (see :mod:`contrastlens.models.fingerprint`), computed once."""
        if self._fingerprint is None:
            from contrastlens.models.fingerprint import folder_fingerprint, state_fingerprint

            fp = folder_fingerprint(self.folder) if self.folder else None
            self._fingerprint = fp or state_fingerprint(self.model)
        return self._fingerprint

    def provenance(self) -> Provenance:
        """Source, revision, weight fingerprint and package versions of this model."""
        return Provenance(model_source=self.source, model_revision=self.revision, model_fingerprint=self.fingerprint)

    @property
    def attn_implementation(self) -> str | None:
        return getattr(self.model.config, "_attn_implementation", None)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    # ------------------------------------------------------------------ info
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers(self.model)

    @property
    def vocab_size(self) -> int:
        return int(self.adapter.head(self.model).weight.shape[0])

    @property
    def text_config(self):
        """The language model's config (the text part of a multimodal config)."""
        cfg = self.model.config
        return getattr(cfg, "get_text_config", lambda: cfg)()

    @property
    def max_context(self) -> int | None:
        cfg = self.text_config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            v = getattr(cfg, name, None)
            if v:
                return int(v)
        return None

    # ------------------------------------------------------------- tokenizing
    def apply_chat_template(self, messages: list[dict] | str, add_generation_prompt: bool = True) -> str:
        """Render messages (or one user message) with the tokenizer's chat template."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError(
                f"the tokenizer of {self.source} has no chat template; drop --chat (chat=False) or "
                "pass an already rendered prompt"
            )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, text: str, *, chat: bool = False, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of a prompt. With ``chat=True`` the text is wrapped as one user message and rendered
        with the chat template (which then carries its own special tokens)."""
        if chat:
            text = self.apply_chat_template(text)
            add_special_tokens = False
        if add_special_tokens is None:
            add_special_tokens = True
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode_tokens(self, ids: list[int]) -> list[str]:
        """One display string per id (what each token contributes to the text)."""
        return [self.tokenizer.decode([i]) for i in ids]

    def special_ids(self) -> set[int]:
        return set(getattr(self.tokenizer, "all_special_ids", []) or [])

    def token_id(self, token: int | str, context_ids: list[int] | None = None, *, what: str = "token") -> int:
        """Resolve a target/contrast: an id, or a string that is exactly one token in context."""
        v = self.vocab_size
        if isinstance(token, bool):
            raise TokenizationError(f"{what} must be a token id or a string, not {token!r}")
        if isinstance(token, int):
            if not 0 <= token < v:
                raise TokenizationError(f"{what} id {token} is outside the vocabulary [0, {v})")
            return token
        if isinstance(token, str) and token.startswith("#") and token[1:].isdigit():
            return self.token_id(int(token[1:]), context_ids, what=what)
        if not isinstance(token, str) or token == "":
            raise TokenizationError(f"{what} must be a token id or a non-empty string, got {token!r}")
        alone = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if context_ids is not None:
            prefix = self.tokenizer.decode(context_ids)
            both = self.tokenizer(prefix + token, add_special_tokens=False)["input_ids"]
            base = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            if len(both) == len(base) + 1 and both[: len(base)] == base:
                return int(both[-1])
        if len(alone) == 1:
            return int(alone[0])
        pieces = [self.tokenizer.decode([i]) for i in alone]
        raise TokenizationError(
            f"{what} {token!r} is not one token: it tokenises as {len(alone)} tokens {pieces} "
            f"(ids {alone}); pass one of those ids or a single-token string"
        )

    def check_prompt(self, ids: list[int]) -> None:
        if len(ids) == 0:
            raise InputError("the prompt is empty; give a non-empty prompt")
        mc = self.max_context
        if mc is not None and len(ids) > mc:
            raise InputError(
                f"the prompt has {len(ids)} tokens, longer than the model's context of {mc}; shorten it"
            )
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizationError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
