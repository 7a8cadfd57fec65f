"""Whether a failure case's token ids mean the same under another model's tokenizer.

A case stores token ids (the truth) and, for display, the strings its collecting model's tokenizer gave
them. Before a case is explained under another model (a larger size, a later checkpoint) the ids must map:
:func:`check_ids_map` checks the vocabulary range and that the ids decode to the case's strings under the
other tokenizer, which also catches a tokenizer of the same size with other merges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contrastlens.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.cases.schema import FailureCase
    from contrastlens.models.loaded import LoadedModel


def _clip(s: str, n: int = 60) -> str:
    return repr(s if len(s) <= n else s[:n] + "…")


def check_ids_map(lm: LoadedModel, case: FailureCase, *, what: str | None = None) -> None:
    """Raise :class:`InputError` unless ``case``'s token ids mean the same under ``lm``'s tokenizer.

    Checks, in order (a string field of the case that is None is not checked):

    1. the case is localised (it has a target and a contrast);
    2. every id of the explained input (``prompt_ids`` and the completion ids before the failure token),
       the target and the contrast id lie inside ``lm``'s vocabulary: below both the output layer's rows and
       the tokenizer's length;
    3. the target and contrast ids decode to the case's ``target_str`` / ``contrast_str`` (the strings the
       collecting model's tokenizer gave them);
    4. the completion ids before the failure token decode (special tokens skipped) to the case's
       ``completion_before_err``;
    5. the prompt ids decode (special tokens kept) to the case's ``prompt``, or tokenising ``prompt`` gives
       back exactly ``prompt_ids`` (either suffices: some tokenizers do not round-trip whitespace).

    A tokenizer with a different vocabulary fails 3–5 even when every id is in range. ``what`` names the
    model in the message (default ``lm.source``).
    """
    label = what or lm.source
    if case.status != "localised" or case.target_id is None or case.contrast_id is None or case.failure_index is None:
        raise InputError(f"case {case.id} is not localised (no target/contrast); it cannot be compared across models")
    tok = lm.tokenizer
    vocab = lm.vocab_size
    try:
        vocab = min(vocab, len(tok))  # ids past the tokenizer's own vocabulary (output-layer padding) mean nothing
    except TypeError:  # pragma: no cover - a tokenizer without a length
        pass
    ids = case.ids_before_err
    bad = sorted({i for i in [*ids, case.target_id, case.contrast_id] if not 0 <= i < vocab})
    if bad:
        raise InputError(f"case {case.id}: token ids {bad[:5]} are outside the vocabulary [0, {vocab}) of {label} "
                         "(the case was made with a different tokenizer)")
    for kind, tid, text in (("target", case.target_id, case.target_str), ("contrast", case.contrast_id,
                                                                          case.contrast_str)):
        if text is not None and (got := tok.decode([tid])) != text:
            raise InputError(f"case {case.id}: the {kind} id {tid} decodes to {got!r} under {label}, not "
                             f"{text!r} (the case was made with a different tokenizer)")
    if case.completion_before_err is not None:
        got = tok.decode(case.completion_ids[: case.failure_index], skip_special_tokens=True)
        if got != case.completion_before_err:
            raise InputError(f"case {case.id}: the completion ids before the error decode to {_clip(got)} under "
                             f"{label}, not {_clip(case.completion_before_err)} (a different tokenizer)")
    if case.prompt:
        pids = list(case.prompt_ids)
        if tok.decode(pids, skip_special_tokens=False) != case.prompt:
            try:
                again = list(tok(case.prompt, add_special_tokens=not case.chat)["input_ids"])
            except Exception:  # noqa: BLE001 - any tokenizer failure means the ids do not map
                again = None
            if again != pids:
                raise InputError(f"case {case.id}: its prompt ids do not decode to its prompt under {label}, and "
                                 "tokenising the prompt does not give them back (a different tokenizer)")


__all__ = ["check_ids_map"]
