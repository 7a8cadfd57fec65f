"""Where a benchmark's data comes from: --data, else $CONTRASTLENS_DATA, else the hub dataset through
`datasets` (faked here: it is not installed and the hub is unreachable), else a one-line error naming
the file to pass. The old default ``../shared/data`` is gone."""

import json
import sys
import types

import pytest

from contrastlens.benchmarks import get_benchmark
from contrastlens.benchmarks.base import default_data_dir
from contrastlens.errors import InputError

MATH_ROW = {"problem": "1+1?", "answer": "2", "unique_id": "test/a.json", "level": 1}


def _write(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / name


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("CONTRASTLENS_DATA", raising=False)


@pytest.fixture
def no_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails as when it is not installed


def fake_datasets(monkeypatch, rows=None, error=None):
    calls = []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        if error is not None:
            raise error
        return list(rows)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_offline_without_data_is_a_one_line_error_naming_the_file(no_env, no_datasets, tmp_path, monkeypatch):
    # the old default, ../shared/data relative to the working directory, means nothing any more
    _write(tmp_path / "shared" / "data", "ifeval_input_data.jsonl", [{"key": 1}])
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert default_data_dir() is None
    with pytest.raises(InputError) as e:
        get_benchmark("ifeval").load()
    msg = str(e.value)
    assert msg.startswith("ifeval: no data: pass --data path/to/ifeval_input_data.jsonl or set CONTRASTLENS_DATA "
                          "(the folder holding it)")
    assert "pip install datasets" in msg and len(msg.splitlines()) == 1


def test_an_unreachable_hub_is_a_one_line_error(no_env, monkeypatch):
    calls = fake_datasets(monkeypatch, error=ConnectionError("Couldn't reach 'HuggingFaceH4/MATH-500' on the Hub\nmore"))
    with pytest.raises(InputError) as e:
        get_benchmark("math500").load()
    msg = str(e.value)
    assert msg.startswith("math500: no data: pass --data path/to/math500_test.jsonl")
    assert "HuggingFaceH4/MATH-500 could not be loaded (ConnectionError: Couldn't reach" in msg
    assert len(msg.splitlines()) == 1 and calls == [("HuggingFaceH4/MATH-500", None, "test")]


def test_the_hub_dataset_is_used_when_nothing_local_is_configured(no_env, monkeypatch):
    calls = fake_datasets(monkeypatch, rows=[MATH_ROW, {"problem": "no answer", "unique_id": "test/b.json"}])
    items, bad = get_benchmark("math500").load()
    assert [it.id for it in items] == ["test_a"] and items[0].data == MATH_ROW
    assert bad == [("test_b", "MATH item test_b: missing field(s) answer")]
    assert calls == [("HuggingFaceH4/MATH-500", None, "test")]


def test_precedence_data_then_env_then_hub(monkeypatch, tmp_path):
    calls = fake_datasets(monkeypatch, rows=[{**MATH_ROW, "unique_id": "hub"}])
    env = tmp_path / "env"
    _write(env, "math500_test.jsonl", [{**MATH_ROW, "unique_id": "env"}])
    given = _write(tmp_path / "given", "math500_test.jsonl", [{**MATH_ROW, "unique_id": "given"}])
    monkeypatch.setenv("CONTRASTLENS_DATA", str(env))
    b = get_benchmark("math500")
    assert [it.id for it in b.load(given)[0]] == ["given"]  # --data wins (a file)
    assert [it.id for it in b.load(given.parent)[0]] == ["given"]  # or the folder holding it
    assert [it.id for it in b.load()[0]] == ["env"]  # then $CONTRASTLENS_DATA
    assert calls == []
    monkeypatch.setenv("CONTRASTLENS_DATA", str(tmp_path / "empty"))  # env without the file: the hub
    assert [it.id for it in b.load()[0]] == ["hub"] and len(calls) == 1
    # an explicit --data that does not hold the file never falls back
    with pytest.raises(InputError, match="not found"):
        b.load(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    with pytest.raises(InputError, match="has no math500_test.jsonl"):
        b.load(tmp_path / "other")
    assert len(calls) == 1


def test_env_without_the_file_and_no_hub_names_both(monkeypatch, tmp_path, no_datasets):
    monkeypatch.setenv("CONTRASTLENS_DATA", str(tmp_path))
    with pytest.raises(InputError) as e:
        get_benchmark("humaneval").load()
    assert f"$CONTRASTLENS_DATA ({tmp_path}) has no HumanEvalPlus.jsonl.gz" in str(e.value)
    assert "pass --data path/to/HumanEvalPlus.jsonl.gz" in str(e.value)


def test_cli_without_data_exits_2(no_env, no_datasets, tmp_path, capsys):
    from contrastlens.cli.main import main

    assert main(["collect", "-b", "math500", "-m", "random:llama", "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "math500: no data: pass --data path/to/math500_test.jsonl" in err and len(err.splitlines()) == 1


def test_ifeval_hub_rows_drop_the_unused_kwargs(no_env, monkeypatch):
    row = {"key": 1000, "prompt": "Write without commas.", "instruction_id_list": ["punctuation:no_comma"],
           "kwargs": [{"num_words": None, "relation": None, "forbidden_words": None}]}
    fake_datasets(monkeypatch, rows=[row])
    (item,), bad = get_benchmark("ifeval").load()
    assert bad == [] and item.id == "1000" and item.data["kwargs"] == [{}] and item.data["n_instructions"] == 1


HE_TEST = '''
import numpy as np

def assertion(out, exp, atol):
    assert out == exp

def check(candidate):
    inputs = [[1, 2], [3, -4], [0, 0]]
    results = [3, -1, 0]
    for i, (inp, exp) in enumerate(zip(inputs, results)):
        assertion(candidate(*inp), exp, 1e-06)
'''


def test_humaneval_hub_rows_carry_their_inputs_in_the_test_code(no_env, monkeypatch):
    row = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n",
           "canonical_solution": "    return a + b\n", "entry_point": "add", "test": HE_TEST}
    fake_datasets(monkeypatch, rows=[row, {**row, "task_id": "HumanEval/1", "test": "def check(c): pass"}])
    b = get_benchmark("humaneval")
    items, bad = b.load()
    (item,) = items
    assert item.id == "HumanEval_0" and item.data["base_input"] == [[1, 2], [3, -4], [0, 0]]
    assert item.data["plus_input"] == [] and item.data["atol"] == 1e-06
    assert bad and bad[0][0] == "HumanEval_1" and "test inputs" in bad[0][1]
    assert b.score(item, "```python\ndef add(a, b):\n    return a + b\n```").passed
    assert not b.score(item, "```python\ndef add(a, b):\n    return a - b\n```").passed


def test_gaia2_defaults_to_the_shipped_trace_or_env_traces(no_env, monkeypatch, tmp_path):
    from contrastlens.benchmarks.agent import synthetic_trace_path

    b = get_benchmark("gaia2")
    assert b.resolve(None, None) == synthetic_trace_path()
    monkeypatch.setenv("CONTRASTLENS_DATA", str(tmp_path))
    assert b.resolve(None, None) == synthetic_trace_path()  # no agent_traces folder there
    (tmp_path / "agent_traces").mkdir()
    assert b.resolve(None, None) == tmp_path / "agent_traces"
    with pytest.raises(InputError, match="not found"):
        b.resolve(tmp_path / "nope.json", None)
