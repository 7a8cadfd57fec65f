"""Choosing the items of a run: item ids, field filters, an offset and a limit (``--items``,
``--filter``, ``--offset``, ``--limit`` of ``contrastlens collect``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from contrastlens.benchmarks.base import Item
from contrastlens.errors import InputError

log = logging.getLogger(__name__)


def parse_filter(spec: str) -> tuple[str, frozenset[str]]:
    """``"FIELD=V1,V2"`` -> ``("FIELD", {"V1", "V2"})`` (spaces around names and values dropped). Anything
    else (no ``=``, no field name, no value) is an :class:`InputError`."""
    if not isinstance(spec, str) or "=" not in spec:
        raise InputError(f"--filter {spec!r} must be FIELD=VALUE[,VALUE...] (e.g. level=1,2)")
    key, vals = spec.split("=", 1)
    key = key.strip()
    values = frozenset(v.strip() for v in vals.split(",") if v.strip())
    if not key:
        raise InputError(f"--filter {spec!r} has no field name (FIELD=VALUE[,VALUE...])")
    if not values:
        raise InputError(f"--filter {spec!r} has no values (FIELD=VALUE[,VALUE...])")
    return key, values


def matches(value: object, allowed: Iterable[str]) -> bool:
    """A data field matches when it (or, for a list field, one of its elements) is an allowed value
    (compared as strings: ``level=1`` matches the number 1)."""
    allowed = set(allowed)
    if isinstance(value, list | tuple):
        return any(str(v) in allowed for v in value)
    return str(value) in allowed


def _check_count(name: str, value: object, *, none_ok: bool) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"--{name} must be a whole number >= 0, not {value!r}")


def split_ids(text: str) -> tuple[str, ...]:
    """Comma-separated item ids (``--items a,b``) as a tuple, blanks dropped."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


def select_items(items: Iterable[Item], *, ids: Sequence[str] | None = None, filters: Iterable[str] = (),
                 offset: int = 0, limit: int | None = None) -> list[Item]:
    """The items of a run, in data order: those with one of ``ids`` (None: all), then those passing every
    ``FIELD=V1,V2`` filter (:func:`parse_filter`, :func:`matches`), then ``[offset : offset + limit]``.

    Raises :class:`InputError` for a negative ``offset``/``limit``, bad filter syntax, ids none of which is in
    the data (some missing: a warning), a filter on a field no item has or that matches no item, and an
    ``offset`` past the last selected item."""
    _check_count("offset", offset, none_ok=False)
    _check_count("limit", limit, none_ok=True)
    parsed = [(spec, *parse_filter(spec)) for spec in filters]
    out = list(items)
    if ids is not None:
        want = list(dict.fromkeys(str(i).strip() for i in ids if str(i).strip()))
        if not want:
            raise InputError("--items names no item id (give ID,ID,...)")
        have = {it.id for it in out}
        missing = [w for w in want if w not in have]
        if len(missing) == len(want):
            sample = ", ".join(it.id for it in out[:5])
            raise InputError(f"none of the items {', '.join(want[:5])} is in the data (its ids look like: {sample})")
        if missing:
            log.warning("items not in the data: %s", ", ".join(missing))
        keep = set(want)
        out = [it for it in out if it.id in keep]
    for spec, key, allowed in parsed:
        if out and not any(key in it.data for it in out):
            fields = ", ".join(sorted(out[0].data)[:12])
            raise InputError(f"--filter {spec}: no item has the field {key!r} (fields: {fields})")
        kept = [it for it in out if matches(it.data.get(key), allowed)]
        if out and not kept:
            seen = sorted({str(v) for it in out for v in _values(it.data.get(key))})
            raise InputError(f"--filter {spec}: no item matches (values of {key}: {', '.join(seen[:12])})")
        out = kept
    if offset and offset >= len(out):
        raise InputError(f"--offset {offset} is past the last item ({len(out)} selected)")
    out = out[offset:]
    return out if limit is None else out[:limit]


def _values(v: object) -> list[object]:
    return list(v) if isinstance(v, list | tuple) else [v]


def select_bad_rows(bad: Iterable[tuple[str, str]], ids: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The unreadable data rows ``(id, reason)`` that belong to a run: all of them, or with ``ids`` only
    those ids (a filter, offset or limit cannot apply to a row that could not be read)."""
    if ids is None:
        return list(bad)
    keep = {str(i).strip() for i in ids}
    return [b for b in bad if b[0] in keep]
