"""Verdicts are made outside the sandbox: a candidate cannot forge a pass; the outputs travel as exact data
and are compared by EvalPlus's rules; without bubblewrap, execution is refused unless --unsafe-exec.

The tests that run code need bubblewrap; where it cannot run they are skipped, unless
``CONTRASTLENS_REQUIRE_SANDBOX=1`` (set by .ci/run), which makes them fail instead.
"""

from __future__ import annotations

import json
import logging
import math
import os

import pytest

from contrastlens.benchmarks import Item, get_benchmark

TASK = {
    "task_id": "T/0", "entry_point": "add",
    "prompt": "import math\n\ndef add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n",
    "canonical_solution": "    return a + b\n",
    "base_input": [[1, 2], [3, 4]], "plus_input": [[10**6, -3], [0.5, 0.25]], "atol": 0,
}
WRONG = "def add(a, b):\n    return a - b\n"


def needs_sandbox():
    try:
        from contrastlens.benchmarks.sandbox import sandbox_status
    except ImportError:  # the code before the sandbox existed: run the attacks against it anyway
        return
    mode, why = sandbox_status()
    if mode is None:
        if os.environ.get("CONTRASTLENS_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"the sandbox cannot run here: {why}")
        pytest.skip(f"the sandbox cannot run here: {why}")


def score(completion: str, task: dict = TASK):
    return get_benchmark("humaneval").score(Item("T_0", task), "```python\n" + completion + "```")


# ------------------------------------------------------------------------------------ forged verdicts
FORGERIES = {
    # the old checker's own result line on stdout, then an exit status of 0 before the checks ran
    "result line + os._exit(0)": WRONG + "import json, os\nprint(json.dumps({'stage': 'run', 'base': True, "
                                 "'plus': True, 'base_failure': None, 'plus_failure': None}), flush=True)\n"
                                 "os._exit(0)\n",
    # the same from inside the first call
    "result line + os._exit(0) in the call": "def add(a, b):\n    import json, os\n"
                                             "    print(json.dumps({'stage': 'run', 'base': True, 'plus': True}), "
                                             "flush=True)\n    os._exit(0)\n",
    # the comparison function of the process that decided the verdict
    "replace _eq": WRONG + "import sys\nsys.modules['__main__']._eq = lambda *a: True\n"
                   "sys.modules['__main__'].__dict__['_eq'] = lambda *a: True\n",
    # claims on the data channel: an end record without outputs, then exit
    "fake end record": WRONG + "import os\nfd = int(os.environ.get('CL_SANDBOX_DATA_FD', '1'))\n"
                       "os.write(fd, b'[\"end\"]\\n')\nos._exit(0)\n",
    # the runner's own encoder replaced: every output claimed to equal the first input's sum
    "replace the encoder": WRONG + "import sys\nm = sys.modules['__main__']\n"
                           "for n in ('_encode', '_enc'):\n    setattr(m, n, lambda *a, **k: 3)\n",
    "exit status 0 from sys.exit": WRONG + "import sys\nsys.exit(0)\n",
}


@pytest.mark.parametrize("attack", list(FORGERIES))
def test_forged_verdicts_stay_failed(attack):
    needs_sandbox()
    s = score(FORGERIES[attack])
    assert not s.passed, s.details


def test_a_candidate_never_sees_the_expected_outputs():
    needs_sandbox()
    # it looks for the reference everywhere it can reach: the runner's globals and every live function
    probe = ("def add(a, b):\n    import gc, sys\n"
             "    main = vars(sys.modules['__main__'])\n"
             "    if 'want' in main:\n        return main['want']\n"
             "    for o in gc.get_objects():\n"
             "        if callable(o) and getattr(o, '__name__', '') == 'add' and o is not add:\n"
             "            return o(a, b)\n"
             "    return None\n")
    s = score(probe)
    assert not s.passed and s.details["base"] is False


def test_a_pass_needs_the_code_to_load_and_the_canonical_solution_to_run():
    needs_sandbox()
    from contrastlens.benchmarks.base import ItemError

    rejects_all = {**TASK, "canonical_solution": "    raise ValueError(a)\n"}  # every input outside the contract
    s = score("def add(a, b):\n    return a +\n", rejects_all)
    assert not s.passed and s.details["reason"] == "does not load"
    assert score("def add(a, b):\n    return 0\n", rejects_all).passed  # nothing to check, as before
    broken = {**TASK, "canonical_solution": "    return a +\n"}
    with pytest.raises(ItemError, match="canonical solution does not run"):
        score("def add(a, b):\n    return a + b\n", broken)


# ------------------------------------------------------------------------------------ exact data
def test_values_travel_exactly():
    from contrastlens.benchmarks.humaneval import _same, decode_value, encode_value

    values = [None, True, 0, -7, 2**200, -(2**70), 1.5, -0.0, float("inf"), float("-inf"), float("nan"), 1e-310,
              "naïve \udc80 text", b"\x00\xff", bytearray(b"ab"), 3 + 4j, complex(float("nan"), 1),
              (1, (2, [3])), [], (), {1, 2}, frozenset({"a"}), {(1, 2): [1.0], "k": {None: b""}},
              [[1, 2], {"a": (3.25,)}]]
    for v in values:
        back = decode_value(json.dumps(encode_value(v), allow_nan=False))
        assert type(back) is type(v) and _same(back, v), (v, back)
    class Mine(int):
        pass
    assert decode_value(json.dumps(encode_value(Mine(5)))) == 5
    opaque = decode_value(json.dumps(encode_value(iter([1]))))
    assert opaque != opaque and "list_iterator" in repr(opaque)
    for bad in ('{"x": 1}', '{"$set": [[1]]}', '{"$int": 5}', '{"$float": "1"}', '{"$dict": [[1]]}'):
        with pytest.raises((ValueError, TypeError)):
            decode_value(bad)


def test_large_outputs_are_compared_by_digest():
    from contrastlens.benchmarks.humaneval import (
        DIGEST_BYTES,
        Digest,
        decode_value,
        encode_value,
        outputs_match,
    )

    big = " ".join(map(str, range(100_000)))
    enc = decode_value(json.dumps(encode_value(big, DIGEST_BYTES)))
    assert isinstance(enc, Digest)
    assert outputs_match(enc, big, 0) and outputs_match(big, enc, 0)
    assert not outputs_match(decode_value(json.dumps(encode_value(big + " ", DIGEST_BYTES))), enc, 0)
    ints = list(range(50_000))
    mixed = [0] + [float(x) for x in ints[1:]]  # == in Python, so the digests are the same
    assert isinstance(decode_value(json.dumps(encode_value(mixed, DIGEST_BYTES))), Digest)
    assert outputs_match(decode_value(json.dumps(encode_value(mixed, DIGEST_BYTES))), ints, 0)
    floats = [float(x) for x in ints]  # floats only: EvalPlus compares them with a tolerance, so no digest
    assert isinstance(decode_value(json.dumps(encode_value(floats, DIGEST_BYTES))), list)
    assert not outputs_match(decode_value(json.dumps(encode_value(tuple(ints), DIGEST_BYTES))), ints, 0)
    fractional = [x + 0.5 for x in ints]  # no digest: compared as values (tolerance possible)
    assert isinstance(decode_value(json.dumps(encode_value(fractional, DIGEST_BYTES))), list)


def test_evalplus_comparison_rules():
    from contrastlens.benchmarks.humaneval import outputs_match

    assert outputs_match(3, 3.0, 0) and outputs_match(True, 1, 0) and not outputs_match([1], (1,), 0)
    assert not outputs_match(0.1 + 0.2, 0.3, 0)  # atol 0, as given: exact (the caller raises it, see below)
    assert outputs_match(0.1 + 0.2, 0.3, 1e-6) and not outputs_match(0.31, 0.3, 1e-6)
    assert outputs_match([1.0, 2.0000001], [1.0, 2.0], 1e-6) and not outputs_match([1.0], [1.0, 2.0], 1e-6)
    assert not outputs_match(2, 2.0000001, 1e-6)  # tolerance needs the same type (exact match failed)
    assert outputs_match(float("nan"), float("nan"), 0) and outputs_match([float("nan")], [float("nan")], 0)
    assert not outputs_match(float("nan"), 1.0, 1e-6) and outputs_match(float("inf"), float("inf"), 1e-6)
    assert not outputs_match(float("inf"), 1e308, 1e-6)
    # find_zero: EvalPlus's oracle, any root within atol passes
    xs = [-6, 11, -6, 1]  # (x-1)(x-2)(x-3)
    assert outputs_match(2.0, 1.0, 1e-4, entry_point="find_zero", args=[xs])
    assert not outputs_match(2.5, 1.0, 1e-4, entry_point="find_zero", args=[xs])
    assert not outputs_match("1", 1.0, 1e-4, entry_point="find_zero", args=[xs])
    assert math.isclose(0.1 + 0.2, 0.3)


def test_zero_atol_is_raised_for_float_outputs_and_verdicts_keep_their_shape():
    needs_sandbox()
    task = {**TASK, "entry_point": "half", "prompt": "def half(x):\n", "canonical_solution": "    return x / 3\n",
            "base_input": [[1.0], [2.0]], "plus_input": [[10.0]], "atol": 0}
    assert score("def half(x):\n    return x * (1 / 3)\n", task).passed  # off by an ulp: atol 1e-6 applies
    s = score("def half(x):\n    return x / 3 if x < 5 else 0.0\n", task)
    assert not s.passed and s.details["base"] is True and s.details["plus"] is False
    assert s.details["failure"] == {"input": "[10.0]", "got": "0.0", "expected": "3.3333333333333335"}


def test_the_per_input_limit_and_the_overall_limit():
    needs_sandbox()
    b = get_benchmark("humaneval")
    b.timeout = 2
    it = Item("T_0", TASK)
    slow = b.score(it, "```python\ndef add(a, b):\n    while True:\n        pass\n```")
    assert not slow.passed and "timed out after 1 s on one input" in slow.details["reason"]
    stubborn = ("```python\nimport signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                "def add(a, b):\n    while True:\n        pass\n```")
    s = b.score(it, stubborn)  # ignores the per-input alarm: the whole sandbox is killed at the limit
    assert not s.passed and s.details["reason"] == "timed out after 2 s"


# ------------------------------------------------------------------------------------ refusal and --unsafe-exec
@pytest.fixture
def no_bwrap(monkeypatch, tmp_path):
    from contrastlens.benchmarks import sandbox

    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    sandbox.sandbox_status.cache_clear()
    sandbox._features.cache_clear()
    yield
    monkeypatch.undo()
    sandbox.sandbox_status.cache_clear()
    sandbox._features.cache_clear()


def test_without_bubblewrap_execution_is_refused_with_one_line(no_bwrap):
    from contrastlens.benchmarks.base import ItemError
    from contrastlens.benchmarks.sandbox import SandboxUnavailable, run_python, sandbox_status

    assert sandbox_status() == (None, "bwrap not found on PATH")
    with pytest.raises(SandboxUnavailable) as e:
        run_python("print(1)")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert "bubblewrap (apt-get install bubblewrap)" in msg and "--unsafe-exec" in msg and "bwrap not found" in msg
    with pytest.raises(ItemError, match="bubblewrap"):
        score("def add(a, b):\n    return a + b\n")


def test_a_probe_that_fails_refuses_too(monkeypatch):
    from contrastlens.benchmarks import sandbox

    monkeypatch.setattr(sandbox, "sandbox_status", lambda: (None, "bwrap: No permissions to create new namespace"))
    with pytest.raises(sandbox.SandboxUnavailable, match="No permissions to create new namespace"):
        sandbox.run_python("print(1)")


def test_unsafe_exec_runs_without_the_sandbox_and_warns(no_bwrap, monkeypatch, caplog):
    from contrastlens.benchmarks import sandbox

    monkeypatch.setattr(sandbox, "_warned_unsafe", False)
    with caplog.at_level(logging.WARNING, logger="contrastlens.benchmarks.sandbox"):
        r = sandbox.run_python("import json\nprint(json.dumps({'ok': 1}))", unsafe=True)
    assert r.status == "ok" and r.payload == {"ok": 1} and not r.isolated
    assert any("--unsafe-exec" in m and "WITHOUT" in m for m in caplog.messages)
    b = get_benchmark("humaneval")
    b.unsafe_exec = True
    it = Item("T_0", TASK)
    assert b.score(it, "```python\ndef add(a, b):\n    return a + b\n```").passed
    assert not b.score(it, "```python\n" + FORGERIES["result line + os._exit(0)"] + "```").passed  # judged outside


def test_unsafe_exec_is_a_setting_and_a_flag(no_bwrap, random_lm):
    import argparse

    from contrastlens.cli.collect import add_parser, settings_from_args
    from contrastlens.collect import CollectResources, CollectSettings, collect_item
    from contrastlens.collect.pipeline import Passed, Skip

    p = argparse.ArgumentParser()
    add_parser(p)
    req = ["-b", "humaneval", "-m", "random:llama", "-o", "x.jsonl"]
    assert settings_from_args(p.parse_args(req)).unsafe_exec is False
    s = settings_from_args(p.parse_args(req + ["--unsafe-exec"]))
    assert s.unsafe_exec is True and CollectSettings.from_dict(s.to_dict()) == s
    fast = {"max_new_tokens": 4, "top_k": 1, "max_probes": 0, "scan_probes": 0, "progress": False, "chat": False}
    bench = get_benchmark("humaneval")
    item = Item("T_0", TASK)
    res = CollectResources(random_lm("llama"))
    good = "    return a + b\n"
    refused = collect_item(CollectSettings(**fast), res, bench, item, completion=good)
    assert isinstance(refused, Skip) and "bubblewrap" in refused.reason and "--unsafe-exec" in refused.reason
    assert collect_item(CollectSettings(**fast, unsafe_exec=True), res, bench, item, completion=good) == Passed("T_0")
