"""The results store: atomic, idempotent unit writes, tagged Parquet tables, safetensors tensors, current vs
stale units, leftovers of a killed run removed, refusals (another study, a foreign folder, a held lock),
and DuckDB over the Parquet files."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from contrastlens.errors import InputError
from contrastlens.study.base import UnitKey, UnitResult
from contrastlens.study.store import TMP_PREFIX, Store, atomic_write, tag_table


def _key(case="c1", model="m", analysis="a", rule="attnlrp", digest="d" * 16):
    return UnitKey(analysis=analysis, model=model, case=case, rule=rule, digest=digest)


def _result(x: float, n: int = 3) -> UnitResult:
    return UnitResult(tables={"rows": pd.DataFrame({"i": np.arange(n), "x": x + np.arange(n) / 10,
                                                    "case": "wrong"})},
                      tensors={"t": np.full((2, n), x, dtype=np.float32)}, meta={"x": x})


def test_write_unit_is_atomic_tagged_and_idempotent(tmp_path):
    with Store.for_run(tmp_path / "out", "s") as st:
        rec = st.write_unit(_key(), _result(1.0), benchmark="bench", record={"timings": {"seconds": 1}})
        d = st.unit_dir("a", "d" * 16)
        assert sorted(p.name for p in d.iterdir()) == ["rows.parquet", "tensors.safetensors", "unit.json"]
        assert json.loads((d / "unit.json").read_text()) == rec
        assert rec["tables"]["rows"] == {"rows": 3, "columns": ["case", "benchmark", "model", "rule", "i", "x"]}
        assert rec["tensors"]["t"] == {"shape": [2, 3], "dtype": "float32"} and rec["timings"] == {"seconds": 1}
        df = pd.read_parquet(d / "rows.parquet")
        assert list(df["case"]) == ["c1"] * 3 and list(df["model"]) == ["m"] * 3  # the unit's 'case' replaced
        assert list(df["benchmark"]) == ["bench"] * 3 and list(df["rule"]) == ["attnlrp"] * 3
        np.testing.assert_allclose(df["x"], [1.0, 1.1, 1.2])
        before = (d / "rows.parquet").stat().st_mtime_ns
        again = st.write_unit(_key(), _result(9.0), benchmark="bench")  # same digest: nothing rewritten
        assert again == rec and (d / "rows.parquet").stat().st_mtime_ns == before
        assert not [p for p in (tmp_path / "out" / "units" / "a").iterdir() if p.name.startswith(TMP_PREFIX)]


def test_a_write_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    import contrastlens.study.store as store_mod

    calls = []
    real = store_mod._write_new

    def flaky(path, data):
        calls.append(path.name)
        if path.name == "tensors.safetensors":
            real(path, data[: len(data) // 2])  # half a file, then the "crash"
            raise OSError(28, "No space left on device")
        real(path, data)

    with Store.for_run(tmp_path / "out", "s") as st:
        monkeypatch.setattr(store_mod, "_write_new", flaky)
        with pytest.raises(OSError, match="No space"):
            st.write_unit(_key(), _result(1.0), benchmark="b")
        assert calls == ["rows.parquet", "tensors.safetensors"]
        adir = tmp_path / "out" / "units" / "a"
        assert list(adir.iterdir()) == []  # neither the unit nor its temporary folder
        assert not st.has("a", "d" * 16)


def test_leftovers_of_a_kill_are_removed_on_the_next_run(tmp_path):
    out = tmp_path / "out"
    with Store.for_run(out, "s") as st:
        st.write_unit(_key(), _result(1.0), benchmark="b")
    adir = out / "units" / "a"
    (adir / f"{TMP_PREFIX}e-123-abcd").mkdir()
    (adir / f"{TMP_PREFIX}e-123-abcd" / "rows.parquet").write_bytes(b"PAR1 half")
    (adir / ("f" * 16)).mkdir()  # a unit folder without unit.json: incomplete, never current
    (adir / ("f" * 16) / "rows.parquet").write_bytes(b"x")
    (out / f"{TMP_PREFIX}manifest.json-1-ab").write_text("{")
    assert Store.open(out).stored_digests("a") == ["d" * 16]  # readers ignore them
    with Store.for_run(out, "s") as st:
        assert sorted(p.name for p in adir.iterdir()) == ["d" * 16]
        assert not (out / f"{TMP_PREFIX}manifest.json-1-ab").exists()
        assert st.has("a", "d" * 16)


def test_tables_and_tensors_hold_only_current_units(tmp_path):
    out = tmp_path / "out"
    with Store.for_run(out, "s") as st:
        st.write_unit(_key("c1", digest="1" * 16), _result(1.0), benchmark="b")
        st.write_unit(_key("c2", digest="2" * 16), _result(2.0, n=2), benchmark="b")
        st.write_unit(_key("c1", digest="3" * 16), _result(100.0), benchmark="b")  # c1 with other settings
        st.set_plan({"a": ["1" * 16, "2" * 16, "9" * 16]})  # "9": planned, not stored
        t = st.tables("a")["rows"]
        assert sorted(t["case"]) == ["c1", "c1", "c1", "c2", "c2"]
        assert 100.0 not in set(t["x"])  # the stale unit never mixes in
        assert st.stale("a") == ["3" * 16]
        tens = st.tensors("a")
        assert set(tens) == {("c1", "m", "attnlrp"), ("c2", "m", "attnlrp")}
        np.testing.assert_array_equal(tens[("c2", "m", "attnlrp")]["t"], np.full((2, 2), 2.0, np.float32))
        assert [p.parent.name for p in st.files("a", "rows")] == ["1" * 16, "2" * 16]
        assert st.tables("other") == {}


def test_duckdb_queries_the_parquet_files(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "out"
    with Store.for_run(out, "s") as st:
        for i in range(4):
            st.write_unit(_key(f"c{i}", model="m" + str(i % 2), digest=f"{i:016d}"), _result(float(i)), benchmark="b")
        st.set_plan({"a": [f"{i:016d}" for i in range(4)]})
        expected = st.tables("a")["rows"].groupby("model")["x"].sum()
    glob = str(out / "units" / "a" / "*" / "rows.parquet")
    got = duckdb.sql(f"SELECT model, sum(x) AS x FROM read_parquet('{glob}') GROUP BY model ORDER BY model").df()
    assert list(got["model"]) == ["m0", "m1"]
    np.testing.assert_allclose(got["x"], expected.loc[["m0", "m1"]].to_numpy())
    np.testing.assert_allclose(got["x"], [0 + 0.3 + 3 * 2 + 0.3, 3 + 0.3 + 3 * 3 + 0.3])  # by hand


def test_refusals(tmp_path):
    out = tmp_path / "out"
    Store.for_run(out, "first").close()
    with pytest.raises(InputError, match="holds the results of study 'first', not of 'second'"):
        Store.for_run(out, "second")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not empty .*notes.txt.* holds no study results"):
        Store.for_run(foreign, "s")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # nothing written into it
    assert (foreign / "notes.txt").read_text() == "mine"
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        Store.for_run(f, "s")
    with pytest.raises(InputError, match="cannot create the results folder"):
        Store.for_run(f / "sub", "s")
    with pytest.raises(InputError, match="not a study results folder"):
        Store.open(foreign)
    held = Store.for_run(out, "first")
    try:
        with pytest.raises(InputError, match="in use by another"):
            Store.for_run(out, "first")
    finally:
        held.close()
    Store.for_run(out, "first").close()  # released: usable again


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            Store.for_run(ro, "s")
    finally:
        ro.chmod(0o700)


def test_tag_table_keeps_a_named_index_and_atomic_write_replaces_whole(tmp_path):
    df = pd.DataFrame({"v": [1, 2]}, index=pd.Index([5, 7], name="position"))
    t = tag_table(df, case="c", benchmark="b", model="m", rule="r")
    assert list(t.columns) == ["case", "benchmark", "model", "rule", "position", "v"]
    assert list(t["position"]) == [5, 7]
    p = tmp_path / "f.json"
    atomic_write(p, "one")
    atomic_write(p, "two")
    assert p.read_text() == "two" and sorted(x.name for x in tmp_path.iterdir()) == ["f.json"]
