"""The benchmark registry: gaia2 is a first-class name (agent an alias), and registering never silently
replaces a benchmark."""

import json

import pytest

from contrastlens.benchmarks import Benchmark, Score, benchmark_names, get_benchmark, register_benchmark
from contrastlens.errors import InputError


class Mine(Benchmark):
    name = "mine"

    def score(self, item, completion):
        return Score(True)


@pytest.fixture
def cleanup():
    names = []
    yield names
    from contrastlens.benchmarks import registry

    for n in names:
        registry._EXTRA.pop(n, None)


def test_gaia2_is_listed_and_agent_is_its_alias():
    assert "gaia2" in benchmark_names() and "agent" not in benchmark_names()
    assert get_benchmark("gaia2").name == "gaia2"
    assert get_benchmark("agent").name == "gaia2" and get_benchmark("GAIA2").name == "gaia2"


def test_gaia2_through_the_cli_writes_gaia2_cases(tmp_path, capsys):
    from contrastlens.cli.main import build_parser, main

    help_text = build_parser("collect")._subparsers._group_actions[0].choices["collect"].format_help()
    assert "gaia2" in help_text and "agent = gaia2" in help_text
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({
        "messages": [{"role": "user", "content": "Delete event 7."},
                     {"role": "assistant", "content": 'Action: Calendar__delete_event\nAction Input: {"event_id": "8"}'}],
        "expected": {"tool": "Calendar__delete_event", "args": {"event_id": "7"}}}))
    for name in ("gaia2", "agent"):
        out = tmp_path / f"{name}.jsonl"
        args = ["collect", "--benchmark", name, "--model", "random:llama", "--data", str(trace), "--out", str(out),
                "--top-k", "1", "--max-probes", "1", "--scan-probes", "0", "--no-progress"]
        assert main(args) == 0, capsys.readouterr().err
        (line,) = out.read_text().splitlines()
        case = json.loads(line)
        assert case["benchmark"] == "gaia2" and case["id"] == "gaia2-trace"
        assert json.loads((tmp_path / f"{name}.jsonl.summary.json").read_text())["benchmark"] == "gaia2"
    capsys.readouterr()


def test_register_refuses_to_overwrite(cleanup):
    from contrastlens.benchmarks import unregister_benchmark

    for taken in ("ifeval", "IFEval", "gaia2", "agent", "math"):
        with pytest.raises(InputError, match="overwrite=True"):
            register_benchmark(taken, Mine)
    cleanup.append("mine")
    register_benchmark("mine", Mine)
    assert "mine" in benchmark_names() and isinstance(get_benchmark("mine"), Mine)
    with pytest.raises(InputError, match="already registered.*overwrite=True"):
        register_benchmark("Mine", Mine())
    inst = Mine()
    register_benchmark("mine", inst, overwrite=True)
    assert get_benchmark("mine") is inst
    unregister_benchmark("mine")
    assert "mine" not in benchmark_names()
    with pytest.raises(InputError, match="no registered benchmark"):
        unregister_benchmark("ifeval")  # built-ins stay


def test_register_overwrite_of_a_builtin_and_an_alias_shadows_them(cleanup):
    cleanup += ["ifeval", "agent"]
    register_benchmark("ifeval", Mine, overwrite=True)
    assert isinstance(get_benchmark("ifeval"), Mine)
    register_benchmark("agent", Mine, overwrite=True)
    assert isinstance(get_benchmark("agent"), Mine) and get_benchmark("gaia2").name == "gaia2"


def test_register_checks_its_arguments():
    with pytest.raises(TypeError, match="Benchmark subclass or instance"):
        register_benchmark("x", object)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="non-empty"):
        register_benchmark(" ", Mine)
    with pytest.raises(InputError, match="unknown benchmark 'nope'; choose one of: gaia2"):
        get_benchmark("nope")
