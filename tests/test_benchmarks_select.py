"""Item selection (``--items``, ``--filter``, ``--offset``, ``--limit``), now in contrastlens.benchmarks."""

import logging

import pytest

from contrastlens.benchmarks import Item, parse_filter, select_items
from contrastlens.benchmarks.select import select_bad_rows
from contrastlens.errors import InputError

ITEMS = [Item(str(i), {"level": i % 3, "tags": ["a", "b"] if i % 2 else ["c"]}) for i in range(8)]


def ids(items):
    return [it.id for it in items]


def test_ids_filters_offset_and_limit_compose_in_data_order():
    assert ids(select_items(ITEMS)) == ids(ITEMS)
    assert ids(select_items(ITEMS, ids=["5", "1"])) == ["1", "5"]
    assert ids(select_items(ITEMS, filters=["level=1,2"])) == ["1", "2", "4", "5", "7"]
    assert ids(select_items(ITEMS, filters=["level=1,2", "tags=b"])) == ["1", "5", "7"]
    assert ids(select_items(ITEMS, filters=[" level = 0 "])) == ["0", "3", "6"]
    assert ids(select_items(ITEMS, filters=["level=1,2"], offset=1, limit=2)) == ["2", "4"]
    assert ids(select_items(ITEMS, limit=0)) == []
    assert ids(select_items(ITEMS, offset=7)) == ["7"]


@pytest.mark.parametrize("kw, msg", [
    ({"limit": -1}, "--limit must be a whole number >= 0"), ({"offset": -1}, "--offset must be"),
    ({"limit": 1.5}, "--limit"), ({"filters": ["level"]}, "FIELD=VALUE"), ({"filters": ["=1"]}, "no field name"),
    ({"filters": ["level=,"]}, "no values"), ({"filters": ["nope=1"]}, "no item has the field 'nope'"),
    ({"filters": ["level=9"]}, r"no item matches \(values of level: 0, 1, 2\)"),
    ({"ids": ["x", "y"]}, "none of the items x, y is in the data"), ({"ids": [" "]}, "names no item id"),
    ({"offset": 8}, "--offset 8 is past the last item"),
])
def test_bad_selections_are_one_line_input_errors(kw, msg):
    with pytest.raises(InputError, match=msg) as e:
        select_items(ITEMS, **kw)
    assert len(str(e.value).splitlines()) == 1


def test_some_missing_ids_are_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="contrastlens.benchmarks.select"):
        assert ids(select_items(ITEMS, ids=["1", "zz"])) == ["1"]
    assert "items not in the data: zz" in caplog.text


def test_parse_filter_and_bad_rows():
    assert parse_filter("instruction_id_list=punctuation:no_comma, x") == (
        "instruction_id_list", frozenset({"punctuation:no_comma", "x"}))
    bad = [("1", "r1"), ("line9", "not valid JSON")]
    assert select_bad_rows(bad) == bad and select_bad_rows(bad, ["1"]) == [("1", "r1")]
