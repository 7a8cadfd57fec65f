"""What every benchmark provides: items, messages, a real checker and prompt segments."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrastlens.errors import InputError

log = logging.getLogger(__name__)


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


#: the environment variable naming the folder that holds the benchmark data files
DATA_ENV = "CONTRASTLENS_DATA"


def default_data_dir() -> Path | None:
    """The folder named by ``$CONTRASTLENS_DATA``, or None when the variable is unset or empty."""
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser() if env else None


def require(row: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise ItemError(f"{where}: missing field(s) {', '.join(missing)}")


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


#: a row that did not parse, for :func:`items_from_rows` (reported as "not valid JSON" in its place)
NOT_JSON = object()


def items_from_rows(rows: Iterable[tuple[str, Any]], *, label: str, id_field: str, fields: tuple[str, ...],
                    make_item: Callable[[str, dict[str, Any]], Item] | None = None,
                    convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                    ) -> tuple[list[Item], list[tuple[str, str]]]:
    """Items of ``(where, row)`` pairs (``where``: the row's place, its id when it has none).

    A row is first passed through ``convert`` (a hub row to the file format), then must hold the
    required ``fields``; ``make_item(iid, row)`` may build the item or raise :class:`ItemError`. Bad rows
    are returned as ``(id, reason)``, never raised."""
    items: list[Item] = []
    bad: list[tuple[str, str]] = []
    for where, raw in rows:
        if raw is NOT_JSON:
            bad.append((where, "not valid JSON"))
            continue
        if not isinstance(raw, dict):
            bad.append((where, "not a JSON object"))
            continue
        iid = str(raw.get(id_field, where)).replace("/", "_").removesuffix(".json")
        try:
            row = convert(raw) if convert is not None else raw
            require(row, fields, f"{label} item {iid}")
            items.append(make_item(iid, row) if make_item else Item(iid, row))
        except ItemError as e:
            bad.append((iid, str(e)))
    return items, bad


def load_jsonl_items(path: Path, *, label: str, id_field: str, fields: tuple[str, ...],
                     make_item=None) -> tuple[list[Item], list[tuple[str, str]]]:
    """Items of a JSON-lines file (plain or .gz): one per line with the required ``fields``.

    Bad lines are returned as ``(id, reason)`` and skipped; ``make_item(iid, row)`` may build the item
    or raise :class:`ItemError`. A file with no valid item at all is an :class:`InputError`."""
    import gzip
    import json

    opener = gzip.open if str(path).endswith(".gz") else open
    rows: list[tuple[str, Any]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"line{n}", json.loads(line)))
                except ValueError:
                    rows.append((f"line{n}", NOT_JSON))
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise InputError(f"{path}: cannot read the {label} data ({_one_line(e)})") from None
    items, bad = items_from_rows(rows, label=label, id_field=id_field, fields=fields, make_item=make_item)
    if not items and bad:
        raise InputError(f"{path}: no {label} items (first problem: {bad[0][1]}); is this the right benchmark?")
    return items, bad


class Benchmark:
    """Base class. Subclasses set ``name`` and ``default_file`` and implement the methods.

    Data: :meth:`load` reads ``--data`` (a file, or the folder holding ``default_file``), else
    ``$CONTRASTLENS_DATA/default_file``, else the ``hub_id`` dataset through the ``datasets`` package
    (when installed and the hub answers; rows converted by :meth:`hub_row`), else fails with a one-line
    :class:`InputError` that names the file to pass."""

    name: str = ""
    default_file: str = ""
    #: the Hugging Face dataset with the same items (None: none), its split and configuration
    hub_id: str | None = None
    hub_split: str = "test"
    hub_config: str | None = None
    default_max_new_tokens: int = 256
    #: ``settled(text)`` is True once more text cannot change the verdict on a completion (a closed code
    #: block, a closed ``\\boxed{}``); generation and rollouts stop there. None: never settled early.
    settled: Callable[[str], bool] | None = None
    #: run generated code without the bubblewrap sandbox (``--unsafe-exec``; a collection run sets it from
    #: its settings); only benchmarks that execute code read it
    unsafe_exec: bool = False

    # ---------------------------------------------------------------- data
    def local_file(self, path: str | os.PathLike | None, data_dir: str | os.PathLike | None) -> Path | None:
        """The local data file: ``path`` (a file, or a folder holding ``default_file``), else
        ``data_dir/default_file``, else ``$CONTRASTLENS_DATA/default_file`` when that file exists; None
        when no local file is configured. An explicit ``path`` or ``data_dir`` that does not hold the file
        is an :class:`InputError` (never a silent fall-back)."""
        if path is not None:
            p = Path(path).expanduser()
            if p.is_file():
                return p
            if not p.exists():
                raise InputError(f"{self.name}: data {p} not found (pass --data path/to/{self.default_file} "
                                 "or the folder holding it)")
            f = p / self.default_file
            if not f.exists():
                raise InputError(f"{self.name}: data file {f} not found (the folder {p} has no {self.default_file})")
            return f
        if data_dir is not None:
            f = Path(data_dir).expanduser() / self.default_file
            if not f.exists():
                raise InputError(f"{self.name}: data file {f} not found")
            return f
        env = default_data_dir()
        if env is not None and (env / self.default_file).exists():
            return env / self.default_file
        return None

    def no_data_message(self, why: str = "") -> str:
        """The one-line error for a benchmark without data (``why``: what the hub attempt said), e.g.
        ``ifeval: no data: pass --data path/to/ifeval_input_data.jsonl or set CONTRASTLENS_DATA (the folder
        holding it)``."""
        env = default_data_dir()
        where = f"${DATA_ENV} ({env}) has no {self.default_file}; " if env is not None else ""
        msg = (f"{self.name}: no data: {where}pass --data path/to/{self.default_file} or set {DATA_ENV} "
               "(the folder holding it)")
        return msg + (f"; {why}" if why else "")

    def resolve(self, path: str | os.PathLike | None, data_dir: str | os.PathLike | None) -> Path:
        """The local data file (see :meth:`local_file`); an :class:`InputError` when there is none."""
        f = self.local_file(path, data_dir)
        if f is None:
            raise InputError(self.no_data_message())
        return f

    def hub_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A hub dataset row in the format of ``default_file`` (identity unless the formats differ);
        raises :class:`ItemError` for a row that cannot be converted."""
        return row

    def hub_rows(self) -> tuple[list[dict[str, Any]] | None, str]:
        """The rows of ``hub_id`` through ``datasets.load_dataset`` (imported lazily), or ``(None, why)``
        when there is no hub dataset, ``datasets`` is not installed or the hub cannot be reached."""
        if not self.hub_id:
            return None, ""
        try:
            datasets = importlib.import_module("datasets")
        except ImportError:
            return None, f"fetching {self.hub_id} from the hub needs the datasets package (pip install datasets)"
        try:
            kw = {"name": self.hub_config} if self.hub_config else {}
            ds = datasets.load_dataset(self.hub_id, split=self.hub_split, **kw)
            return [dict(r) for r in ds], ""
        except Exception as e:  # any failure of the hub or the cache: offline, no such dataset, ...
            return None, f"the hub dataset {self.hub_id} could not be loaded ({_one_line(e)})"

    def load_rows(self, path: str | os.PathLike | None, data_dir: str | os.PathLike | None, *, label: str,
                  id_field: str, fields: tuple[str, ...], make_item=None
                  ) -> tuple[list[Item], list[tuple[str, str]]]:
        """Items of the local JSON-lines file, else of the hub dataset (see the class docstring)."""
        f = self.local_file(path, data_dir)
        if f is not None:
            return load_jsonl_items(f, label=label, id_field=id_field, fields=fields, make_item=make_item)
        rows, why = self.hub_rows()
        if rows is None:
            raise InputError(self.no_data_message(why))
        log.info("%s: %d rows from the hub dataset %s", self.name, len(rows), self.hub_id)
        items, bad = items_from_rows(((f"row{i}", r) for i, r in enumerate(rows)), label=label, id_field=id_field,
                                     fields=fields, make_item=make_item, convert=self.hub_row)
        if not items:
            first = bad[0][1] if bad else "no rows"
            raise InputError(f"{self.name}: the hub dataset {self.hub_id} gave no usable items ({first})")
        return items, bad

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
