"""What every benchmark provides: items, messages, a real checker and prompt segments."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrastlens.errors import InputError


@dataclass
class Item:
    """One benchmark item. ``data`` holds the benchmark's own fields."""

    id: str
    data: dict[str, Any]
    # a recorded completion to score and localise instead of generating one (agent traces)
    recorded_completion: str | None = None


@dataclass
class Score:
    """A checker's verdict on one completion."""

    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    # character offset into the completion where the checker saw it break (None: unknown)
    broke_at: int | None = None
    # further character offsets worth probing first (e.g. every character of a wrong final answer)
    hints: list[int] = field(default_factory=list)
    # character span of the completion where a different token can change the verdict (e.g. a function's
    # body); the uncertainty scan stays inside it. None: the whole completion
    region: tuple[int, int] | None = None


class ItemError(InputError):
    """A problem with one item (bad fields, unrunnable code, ...): the run skips the item."""


def default_data_dir() -> Path:
    """``$CONTRASTLENS_DATA``, else ``../shared/data`` relative to the working directory."""
    env = os.environ.get("CONTRASTLENS_DATA")
    return Path(env) if env else Path("..") / "shared" / "data"


def require(row: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise ItemError(f"{where}: missing field(s) {', '.join(missing)}")


def load_jsonl_items(path: Path, *, label: str, id_field: str, fields: tuple[str, ...],
                     make_item=None) -> tuple[list[Item], list[tuple[str, str]]]:
    """Items of a JSON-lines file (plain or .gz): one per line with the required ``fields``.

    Bad lines are returned as ``(id, reason)`` and skipped; ``make_item(iid, row)`` may build the item
    or raise :class:`ItemError`. A file with no valid item at all is an :class:`InputError`."""
    import gzip
    import json

    opener = gzip.open if str(path).endswith(".gz") else open
    items: list[Item] = []
    bad: list[tuple[str, str]] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad.append((f"line{n}", "not valid JSON"))
                continue
            iid = str(row.get(id_field, f"line{n}")).replace("/", "_").removesuffix(".json")
            try:
                require(row, fields, f"{label} item {iid}")
                items.append(make_item(iid, row) if make_item else Item(iid, row))
            except ItemError as e:
                bad.append((iid, str(e)))
    if not items and bad:
        raise InputError(f"{path}: no {label} items (first problem: {bad[0][1]}); is this the right benchmark?")
    return items, bad


class Benchmark:
    """Base class. Subclasses set ``name`` and ``default_file`` and implement the methods."""

    name: str = ""
    default_file: str = ""
    hub_id: str | None = None
    default_max_new_tokens: int = 256
    #: ``settled(text)`` is True once more text cannot change the verdict on a completion (a closed code
    #: block, a closed ``\\boxed{}``); generation and rollouts stop there. None: never settled early.
    settled: Callable[[str], bool] | None = None

    def resolve(self, path: str | os.PathLike | None, data_dir: str | os.PathLike | None) -> Path:
        if path is not None and Path(path).is_file():
            return Path(path)
        base = Path(path) if path is not None else (Path(data_dir) if data_dir else default_data_dir())
        f = base / self.default_file
        if not f.exists():
            hint = f" (or give --data with the folder holding {self.default_file})"
            raise InputError(f"{self.name}: data file {f} not found{hint}")
        return f

    def load(self, path: str | os.PathLike | None = None, *, data_dir: str | os.PathLike | None = None
             ) -> tuple[list[Item], list[tuple[str, str]]]:
        """Items of the benchmark, and ``(item_id, reason)`` for rows that could not be read."""
        raise NotImplementedError

    def messages(self, item: Item) -> list[dict[str, Any]]:
        raise NotImplementedError

    def plain_prompt(self, item: Item) -> str | None:
        """The prompt without a chat template (``--no-chat``), when the benchmark has a native one (HumanEval:
        the function to complete); None: the messages' contents joined."""
        return None

    def score(self, item: Item, completion: str) -> Score:
        raise NotImplementedError

    def segments(self, item: Item, prompt: str) -> dict[str, list[tuple[int, int]]]:
        """Character spans of ``instruction`` and ``query`` in the rendered ``prompt``."""
        return {}


def locate(haystack: str, needle: str, start: int = 0) -> tuple[int, int] | None:
    if not needle:
        return None
    i = haystack.find(needle, start)
    return (i, i + len(needle)) if i >= 0 else None
