"""Prompt segments as token spans of the explained sequence.

A case stores its segments (``instruction``, ``query``, ``answer``) as character spans: ``instruction`` and
``query`` in the rendered prompt, ``answer`` in the text ``prompt + completion_before_err``. The explained
sequence is ``prompt_ids + completion_ids[:failure_index]``. Each token gets the character span it covers:

- prompt tokens from the tokenizer's offset mapping of the prompt (a fast tokenizer; the ids it gives must
  equal the case's ``prompt_ids``), else from decoding prefixes (special tokens kept: the rendered prompt
  shows them);
- completion tokens from decoding prefixes of the completion (special tokens skipped, as in
  ``completion_before_err``): token i covers
  ``[len(decode(c[:i])), len(decode(c[:i+1])))``, where a prefix that ends inside a multi-byte character
  (byte-level BPE) counts that character as covered, so every token carrying one of its bytes overlaps it.

A token belongs to a segment when its character span overlaps one of the segment's spans; the result is
merged into ``[start, end)`` token ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.cases.schema import FailureCase
    from contrastlens.models.loaded import LoadedModel

_REPLACEMENT = "\ufffd"


def decoded_offsets(tokenizer: Any, ids: Sequence[int], base: int = 0, *, skip_special_tokens: bool = True
                    ) -> list[tuple[int, int]]:
    """Character spans of ``ids`` in ``tokenizer.decode(ids, skip_special_tokens=...)`` (shifted by ``base``),
    by decoding prefixes (quadratic in len(ids): for completions and as a fallback)."""
    spans: list[tuple[int, int]] = []
    prev_complete = 0
    for i in range(len(ids)):
        text = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=skip_special_tokens)
        complete = len(text.rstrip(_REPLACEMENT))
        end = complete + (1 if len(text) > complete else 0)  # a trailing partial character is covered
        spans.append((base + prev_complete, base + max(end, prev_complete)))
        prev_complete = complete
    return spans


def prompt_offsets(tokenizer: Any, prompt: str, prompt_ids: Sequence[int], add_special_tokens: bool
                   ) -> list[tuple[int, int]]:
    """Character spans of the prompt's tokens in ``prompt``: the offset mapping when the tokenizer gives
    one that reproduces ``prompt_ids``, else prefix decoding."""
    try:
        enc = tokenizer(prompt, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(prompt_ids):
            return [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass
    return decoded_offsets(tokenizer, prompt_ids, skip_special_tokens=False)  # the prompt shows its specials


def spans_to_ranges(token_spans: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]
                    ) -> list[tuple[int, int]]:
    """Merged token ranges ``[start, end)`` of the tokens whose character span overlaps one of ``char_spans``
    (an empty token span at a position inside a character span counts as overlapping)."""
    hit = []
    for i, (a, b) in enumerate(token_spans):
        for s, e in char_spans:
            if (a < e and b > s) or (a == b and s <= a < e):
                hit.append(i)
                break
    ranges: list[tuple[int, int]] = []
    for i in hit:
        if ranges and ranges[-1][1] == i:
            ranges[-1] = (ranges[-1][0], i + 1)
        else:
            ranges.append((i, i + 1))
    return ranges


def case_token_segments(lm: LoadedModel, case: FailureCase) -> dict[str, list[tuple[int, int]]]:
    """The case's segments as token ranges of ``case.ids_before_err``."""
    if not case.segments:
        return {}
    tok = lm.tokenizer
    spans = prompt_offsets(tok, case.prompt, case.prompt_ids, add_special_tokens=not case.chat)
    if case.failure_index:
        spans += decoded_offsets(tok, case.completion_ids[: case.failure_index], base=len(case.prompt))
    return {name: spans_to_ranges(spans, [(int(a), int(b)) for a, b in char_spans])
            for name, char_spans in case.segments.items()}


__all__ = ["case_token_segments", "decoded_offsets", "prompt_offsets", "spans_to_ranges"]
