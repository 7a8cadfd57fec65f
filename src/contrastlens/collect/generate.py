"""Batched greedy generation with a KV cache, and batched top-k rollouts that share a prefix cache.

Decoding is a plain loop of forward calls (no ``model.generate``): one prefill of the rows (or of the
tokens a given prefix cache does not hold yet), then one token per step for every row, greedy argmax of
the raw logits (no logits processors: the completion's tokens are exactly the model's top-1, which the
localisation relies on). Positions come from the attention mask, so left padding and the masked-out
tokens of :func:`rollout_rows` do not shift a row's positions. The cache is passed under the keyword the
installed transformers uses (``cache`` in recent transformers 5 releases, ``past_key_values`` in
earlier ones), never through ``generate()``, whose ``past_key_values`` argument is deprecated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from contrastlens.models.kv_cache import croppable, forward_keywords, output_cache
from contrastlens.models.loaded import LoadedModel


class Completion(NamedTuple):
    """A generated completion: its token ids (stop token excluded) and whether the model stopped by
    itself (a stop token, or the benchmark's verdict settled), False when it hit the token budget."""

    ids: list[int]
    stopped: bool


def stop_ids(lm: LoadedModel) -> list[int]:
    """Token ids that end a generation: the EOS id(s) of the config / generation config / tokenizer,
    plus a chat template's end-of-turn token when the tokenizer has one."""
    ids: set[int] = set()
    for cfg in (getattr(lm.model, "generation_config", None), lm.model.config):
        e = getattr(cfg, "eos_token_id", None) if cfg is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, list | tuple):
            ids.update(int(x) for x in e)
    tok = lm.tokenizer
    if getattr(tok, "eos_token_id", None) is not None:
        ids.add(int(tok.eos_token_id))
    vocab = tok.get_vocab()
    for name in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
        if name in vocab:
            ids.add(int(vocab[name]))
    return sorted(ids)


class SettledStop:
    """A per-row stopping criterion for :func:`_greedy`, called with the sequences so far. Row ``r``
    stops as soon as ``settled(heads[r] + text of its new tokens)`` holds (the checker's verdict can no longer change, e.g. a code block or a ``\\boxed{}``
    answer has closed; ``lengths[r]`` records how many new tokens it had then), or once it has
    ``limits[r]`` new tokens."""

    def __init__(self, lm: LoadedModel, settled: Callable[[str], bool] | None, start: int,
                 heads: Sequence[str], limits: Sequence[int] | None = None):
        self.tok, self.settled, self.start, self.heads = lm.tokenizer, settled, start, list(heads)
        self.lengths: list[int | None] = [None] * len(self.heads)
        self.limits = list(limits) if limits is not None else None

    def __call__(self, input_ids: torch.Tensor, scores=None, **kw) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        n = input_ids.shape[1] - self.start
        for r in range(input_ids.shape[0]):
            if self.lengths[r] is None and self.settled is not None:
                text = self.heads[r] + self.tok.decode(input_ids[r, self.start :].tolist(), skip_special_tokens=True)
                if self.settled(text):
                    self.lengths[r] = n
            done[r] = self.lengths[r] is not None or (self.limits is not None and n >= self.limits[r])
        return done


def forward(lm: LoadedModel, input_ids: torch.Tensor, *, cache: Any = None,
            attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
            use_cache: bool = True, logits_to_keep: int | None = None) -> Any:
    """One forward call of ``lm.model`` with the cache under the keyword the installed transformers uses."""
    cache_kw, has_keep = forward_keywords(lm.model)
    kw: dict[str, Any] = {"input_ids": input_ids, "use_cache": use_cache}
    if cache is not None:
        kw[cache_kw] = cache
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    if position_ids is not None:
        kw["position_ids"] = position_ids
    if logits_to_keep is not None and has_keep:
        kw["logits_to_keep"] = logits_to_keep
    return lm.model(**kw)


def _greedy(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
            stops: set[int], pad: int, settled: SettledStop | None = None, cache: Any = None) -> torch.Tensor:
    """Greedy decoding of a batch of rows: returns ``input_ids`` with up to ``max_new_tokens`` new columns.

    A row is finished at any of ``stops`` or when ``settled`` (a :class:`SettledStop`) says so; it then
    gets ``pad`` until every row is finished. ``cache``: a KV cache holding the first
    ``cache.get_seq_length()`` columns of every row (only the rest is prefilled)."""
    b = input_ids.shape[0]
    dev = input_ids.device
    if max_new_tokens <= 0:
        return input_ids
    # positions from the mask: a left-padded row starts at 0, a masked-out span is skipped
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    mask: torch.Tensor | None = None if bool(attention_mask.all()) else attention_mask
    past = cache.get_seq_length() if cache is not None else 0
    out = forward(lm, input_ids[:, past:], cache=cache, attention_mask=mask, position_ids=positions[:, past:],
                  logits_to_keep=1)
    cache = output_cache(out)
    stop_t = torch.tensor(sorted(stops), dtype=torch.long, device=dev)
    finished = torch.zeros(b, dtype=torch.bool, device=dev)
    nxt_pos = positions[:, -1:] + 1
    seq = input_ids
    for step in range(max_new_tokens):
        nxt = out.logits[:, -1, :].float().argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        if stop_t.numel():
            finished |= torch.isin(nxt, stop_t)
        if settled is not None:
            finished |= settled(seq)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        if mask is not None:
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=dev)], dim=1)
        out = forward(lm, nxt[:, None], cache=cache, attention_mask=mask, position_ids=nxt_pos)
        cache = output_cache(out)
        nxt_pos = nxt_pos + 1
    return seq


def pad_id(lm: LoadedModel) -> int:
    tok = lm.tokenizer
    for v in (getattr(tok, "pad_token_id", None), getattr(lm.model.config, "pad_token_id", None)):
        if v is not None:
            return int(v)
    return stop_ids(lm)[0] if stop_ids(lm) else 0


def _trim(seq: list[int], stops: set[int], settled_at: int | None = None) -> tuple[list[int], bool]:
    """Cut a generated sequence at its first stop token (excluded) or after ``settled_at`` tokens;
    return (ids, stopped)."""
    if settled_at is not None:
        seq = seq[:settled_at]
    for i, t in enumerate(seq):
        if t in stops:
            return seq[:i], True
    return seq, settled_at is not None


@torch.no_grad()
def generate_greedy(
    lm: LoadedModel,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    settled: Callable[[str], bool] | None = None,
) -> list[Completion]:
    """Greedy completions of token-id prompts, batched with left padding (prompts of similar length
    are batched together). Returns, per prompt, the completion ids (stop token excluded) and whether
    the model stopped by itself (False: it hit ``max_new_tokens``). With ``settled``, a row also stops
    once ``settled(completion text)`` holds. ``progress(items, tokens)`` is called after each batch."""
    stops = set(stop_ids(lm))
    pid = pad_id(lm)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Completion | None] = [None] * len(prompts)
    dev = lm.device
    batch_size = max(1, batch_size)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        seqs = [list(prompts[i]) for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pid, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
        crit = SettledStop(lm, settled, width, [""] * len(seqs)) if settled is not None else None
        gen = _greedy(lm, ids.to(dev), mask.to(dev), max_new_tokens, stops, pid, settled=crit)
        new = gen[:, width:].tolist()
        n_tok = 0
        for r, i in enumerate(idx):
            seq, stopped = _trim(new[r], stops, crit.lengths[r] if crit is not None else None)
            out[i] = Completion(seq, stopped)
            n_tok += len(seq) + (1 if stopped else 0)
        if progress is not None:
            progress(len(idx), n_tok)
    return [o for o in out if o is not None]


@torch.no_grad()
def position_logits(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    """Next-token logits at every position of ``ids`` (shape [len(ids), vocab]), float32."""
    x = torch.tensor([ids], dtype=torch.long, device=lm.device)
    return forward(lm, x, use_cache=False).logits[0].float()


class PrefixCache:
    """The KV cache of one full sequence (prompt + completion), computed once and cropped to any prefix,
    so each rollout batch only runs its k new tokens through the prefix."""

    def __init__(self, lm: LoadedModel, ids: list[int], keep: int | None = None):
        """``keep``: compute logits only for the last ``keep`` positions (long prompts); ``logits[i]`` is
        then position ``offset + i``."""
        self.lm = lm
        self.ids = list(ids)
        self.cache = None
        self.logits: torch.Tensor | None = None
        keep = min(keep, len(ids)) if keep else len(ids)
        self.offset = len(ids) - keep
        with torch.no_grad():
            x = torch.tensor([ids], dtype=torch.long, device=lm.device)
            k = keep if keep < len(ids) else None
            try:
                out = forward(lm, x, use_cache=True, logits_to_keep=k)
                self.cache = output_cache(out)
            except Exception:  # pragma: no cover - models without a croppable cache
                out = forward(lm, x, use_cache=False, logits_to_keep=k)
            self.logits = out.logits[0].float()
        self.offset = len(ids) - self.logits.shape[0]  # all positions when the model ignored logits_to_keep

    def at(self, pos: int) -> torch.Tensor:
        """Next-token logits after sequence position ``pos``."""
        assert self.logits is not None
        return self.logits[pos - self.offset]

    def prefix(self, length: int, k: int):
        """A fresh cache holding the first ``length`` tokens, repeated for a batch of ``k``; None when the
        cache cannot be cut that way (sliding-window layers keep only their window), and callers then
        recompute the prefix."""
        if self.cache is None or not hasattr(self.cache, "crop") or not croppable(self.cache):
            return None
        c = copy.deepcopy(self.cache)
        c.crop(length - c.get_seq_length())  # a negative count: the number of tokens to drop
        if k > 1:
            c.batch_repeat_interleave(k)
        return c


@torch.no_grad()
def rollout_batch(
    lm: LoadedModel,
    prefix_ids: list[int],
    alternatives: Sequence[int],
    *,
    max_new_tokens: int,
    cache: PrefixCache | None = None,
    settled: Callable[[str], bool] | None = None,
    head: str = "",
) -> list[Completion]:
    """Continue ``prefix_ids + [a]`` greedily for each alternative ``a``, as one batch of k sequences
    sharing the prefix (its KV cache is reused when ``cache`` is given). Returns per alternative the
    generated ids *after* ``a`` and whether the model stopped by itself. With ``settled``, a row stops
    once ``settled(head + text of a and its continuation)`` holds (``head``: the completion so far)."""
    k = len(alternatives)
    return rollout_rows(lm, list(prefix_ids), [len(prefix_ids)] * k, alternatives, budgets=[max_new_tokens] * k,
                        cache=cache, settled=settled, heads=[head] * k)


@torch.no_grad()
def rollout_rows(
    lm: LoadedModel,
    ids: list[int],
    starts: Sequence[int],
    alternatives: Sequence[int],
    *,
    budgets: Sequence[int],
    cache: PrefixCache | None = None,
    settled: Callable[[str], bool] | None = None,
    heads: Sequence[str] | None = None,
) -> list[Completion]:
    """Rollouts at several positions of one sequence in one batch: row ``r`` continues
    ``ids[:starts[r]] + [alternatives[r]]`` greedily for at most ``budgets[r]`` tokens.

    Every row holds ``ids[:max(starts)]`` (one cropped copy of ``cache``, no new prefill) and masks out
    its tokens from ``starts[r]`` on, so its alternative sits right after its own prefix (positions come
    from the mask). Batching rows pays on a CPU: with SmolLM2-135M one decoding step for 32 rows took
    about twice as long as one for 8. Returns per row the ids generated after the alternative and whether the model stopped by
    itself (a stop token or ``settled(heads[r] + text)``)."""
    m = len(alternatives)
    if m == 0:
        return []
    if cache is not None and list(ids[: max(starts)]) != cache.ids[: max(starts)]:
        raise ValueError("rollout_rows: ids do not match the prefix cache")
    stops = set(stop_ids(lm))
    pid = pad_id(lm)
    top = max(starts)
    rows = torch.tensor([list(ids[:top]) + [int(a)] for a in alternatives], dtype=torch.long, device=lm.device)
    mask = torch.ones_like(rows)
    for r, s in enumerate(starts):
        mask[r, s:top] = 0
    limit = max(budgets)
    if limit <= 0:
        return [Completion([], False) for _ in alternatives]
    kv = cache.prefix(top, m) if cache is not None else None
    heads = list(heads) if heads is not None else [""] * m
    # the alternative itself counts toward the settled text and the row's length (+1)
    crit = SettledStop(lm, settled, top, heads, [b + 1 for b in budgets])
    if settled is not None:  # an alternative that settles the verdict by itself needs no continuation
        crit.lengths = [1 if settled(h + lm.tokenizer.decode([int(a)], skip_special_tokens=True)) else None
                        for h, a in zip(heads, alternatives, strict=True)]
    gen = _greedy(lm, rows, mask, limit, stops, pid, settled=crit, cache=kv)
    results: list[Completion] = []
    for r in range(m):
        n = crit.lengths[r]
        seq = gen[r, top + 1 :].tolist()[: max(budgets[r], 0)]
        seq, stopped = _trim(seq, stops, None if n is None else n - 1)
        results.append(Completion(seq, stopped))
    return results
