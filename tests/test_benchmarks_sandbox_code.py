import json
import os
from pathlib import Path

import pytest

from contrastlens.benchmarks import Item, get_benchmark
from contrastlens.benchmarks.base import default_data_dir
from contrastlens.benchmarks.humaneval import build_program, extract_code
from contrastlens.benchmarks.sandbox import run_python, sandbox_status


@pytest.fixture
def sandbox():
    """Skip where bubblewrap cannot run (fail instead under CONTRASTLENS_REQUIRE_SANDBOX=1, as in .ci/run)."""
    mode, why = sandbox_status()
    if mode is None:
        if os.environ.get("CONTRASTLENS_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"the sandbox cannot run here: {why}")
        pytest.skip(f"the sandbox cannot run here: {why}")
    return mode


@pytest.mark.usefixtures("sandbox")
def test_passing_program_returns_payload():
    r = run_python("import json\nprint(json.dumps({'s': sum(range(10))}))")
    assert r.status == "ok" and r.payload == {"s": 45}


@pytest.mark.usefixtures("sandbox")
def test_failing_program():
    r = run_python("raise ValueError('boom')")
    assert r.status == "error" and "ValueError: boom" in r.stderr


@pytest.mark.usefixtures("sandbox")
def test_infinite_loop_is_killed():
    r = run_python("while True:\n    pass\n", timeout=1.5)
    assert r.status == "timeout" and r.seconds < 5


@pytest.mark.parametrize("code", [
    "import os\nos.fork()",
    "import os\nos.system('echo hi')",
    "import subprocess\nsubprocess.run(['echo', 'hi'])",
    "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    "import ctypes\nctypes.CDLL(None).fork()",
])
def test_unsafe_path_keeps_the_in_process_guard(code):
    # --unsafe-exec: no sandbox, only the old guard against accidents (see docs/security.md)
    r = run_python(code, timeout=5, unsafe=True)
    assert r.status == "error" and not r.isolated
    assert "blocked by the contrastlens sandbox" in r.stderr or "halted" in r.stderr


@pytest.mark.usefixtures("sandbox")
@pytest.mark.parametrize("code", [
    "import os\nif os.fork() == 0:\n    os._exit(0)\nos.wait()\nprint('forked')",
    "import os\nassert os.system('echo hi') == 0",
    "import subprocess\nsubprocess.run(['echo', 'hi'], check=True)",
])
def test_child_processes_run_inside_the_sandbox(code):
    # the sandbox does not need the guard: children live in its PID namespace and die with it
    r = run_python(code, timeout=5)
    assert r.status == "ok" and r.isolated, r.stderr


@pytest.mark.usefixtures("sandbox")
def test_fork_bomb_is_contained():
    r = run_python("import os\nwhile True:\n    os.fork()\n", timeout=3)
    assert r.status in ("error", "timeout") and r.seconds < 5  # the process limit stops it; the run ends
    r = run_python("import os\nwhile True:\n    os.fork()\n", timeout=5, unsafe=True)
    assert r.status == "error" and "blocked" in r.stderr


@pytest.mark.usefixtures("sandbox")
def test_network_unreachable():
    r = run_python("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 80))", timeout=5)
    assert r.status == "error" and "ConnectionRefusedError" in r.stderr  # its own empty loopback
    r = run_python("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/', timeout=2)", timeout=5)
    assert r.status == "error" and "URLError" in r.stderr
    r = run_python("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 80))", timeout=5, unsafe=True)
    assert r.status == "error" and "blocked" in r.stderr


@pytest.mark.usefixtures("sandbox")
def test_memory_limit():
    r = run_python("x = bytearray(3 * 1024 ** 3)\nprint('allocated')", memory_mb=512, timeout=10)
    assert r.status == "error" and "MemoryError" in r.stderr and "allocated" not in r.stdout


@pytest.mark.usefixtures("sandbox")
def test_runs_in_a_temporary_folder():
    r = run_python("import os, json\nprint(json.dumps({'cwd': os.getcwd(), 'files': os.listdir('.'), "
                   "'env': sorted(os.environ)}))")
    assert r.payload["cwd"] == "/tmp" and r.payload["files"] == []  # a fresh tmpfs
    assert "HOME" in r.payload["env"] and not any(k.startswith("CONTRASTLENS") for k in r.payload["env"])
    r = run_python("import os, json\nprint(json.dumps({'cwd': os.getcwd(), 'env': sorted(os.environ)}))", unsafe=True)
    assert "cl-sandbox-" in r.payload["cwd"]
    assert "HOME" in r.payload["env"] and not any(k.startswith("CONTRASTLENS") for k in r.payload["env"])


TASK = {
    "task_id": "T/0", "entry_point": "add",
    "prompt": "import math\n\ndef add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n",
    "canonical_solution": "    return a + b\n",
    "base_input": [[1, 2], [3, 4]], "plus_input": [[10**6, -3], [0.5, 0.25]], "atol": 0,
}


def test_code_extraction():
    code, off = extract_code("Here:\n```python\ndef add(a, b):\n    return a+b\n```\nDone")
    assert code == "def add(a, b):\n    return a+b\n" and off == len("Here:\n```python\n")
    prog, head, off = build_program(TASK["prompt"], "add", "```python\ndef add(a, b):\n    return a+b\n```")
    assert prog.startswith(TASK["prompt"] + "    pass\n\ndef add(a, b):") and head == TASK["prompt"].count("\n") + 2
    prog, head, _ = build_program(TASK["prompt"], "add", "    return a + b\n")
    assert prog == TASK["prompt"] + "    return a + b\n"
    # a plain completion of the body (--no-chat) ends at its first unindented line
    assert extract_code("    return a + b\n\nprint(add(1, 2))\n") == ("    return a + b\n\n", 0)


@pytest.mark.usefixtures("sandbox")
def test_humaneval_plain_completion_setting():
    from contrastlens.collect.pipeline import render_prompt

    b = get_benchmark("humaneval")
    it = Item("T_0", TASK)
    assert render_prompt(None, b.messages(it), chat=False, plain=b.plain_prompt(it)) == TASK["prompt"]
    assert not b.settled("    return a + b\n") and b.settled("    return a + b\n\nprint(")
    assert b.score(it, "    return a + b\n\nprint(add(1, 2))").passed  # the trailing script is not code
    assert not b.score(it, "    return a - b\n").passed


@pytest.mark.usefixtures("sandbox")
def test_humaneval_verdicts():
    b = get_benchmark("humaneval")
    it = Item("T_0", TASK)
    assert b.score(it, "```python\ndef add(a, b):\n    return a + b\n```").passed
    wrong_plus = b.score(it, "```python\ndef add(a, b):\n    return int(a + b) if a < 100 else 0\n```")
    assert not wrong_plus.passed and wrong_plus.details["base"] is True and wrong_plus.details["plus"] is False
    crash = "```python\ndef add(a, b):\n    x = 1\n    return undefined_name\n```"
    s = b.score(it, crash)
    assert not s.passed and "NameError" in s.details["failure"]["error"]
    assert s.broke_at == crash.index("    return undefined_name")
    # the region a token swap can matter in: the body, after the (prompt's) signature line
    assert crash[slice(*s.region)] == "    x = 1\n    return undefined_name\n"
    syn = b.score(it, "```python\ndef add(a, b)\n    return a\n```")
    assert not syn.passed and "SyntaxError" in syn.details["error"]
    empty = b.score(it, "   ")
    assert not empty.passed and empty.details["reason"] == "empty completion"


@pytest.mark.usefixtures("sandbox")
def test_humaneval_hang_is_a_failure():
    b = get_benchmark("humaneval")
    b.timeout = 2
    s = b.score(Item("T_0", TASK), "```python\ndef add(a, b):\n    while True:\n        pass\n```")
    assert not s.passed and "timed out" in s.details["reason"]


@pytest.mark.usefixtures("sandbox")
def test_humaneval_real_canonical_solutions_pass():
    # $CONTRASTLENS_DATA, else the data folder next to the checkout (there is no built-in default any more)
    d = default_data_dir() or Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (d / "HumanEvalPlus.jsonl.gz").exists():
        pytest.skip("benchmark data not found")
    b = get_benchmark("humaneval")
    items, bad = b.load(data_dir=d)
    assert len(items) == 164 and not bad
    for it in items[:3]:
        assert b.score(it, "```python\n" + it.data["prompt"] + it.data["canonical_solution"] + "```").passed
        assert not b.score(it, "```python\n" + it.data["prompt"] + "    return None\n```").passed
    # a completion that redefines only the entry point still sees the prompt's helper functions
    it = next(i for i in items if i.id == "HumanEval_10")
    only = "```python\ndef make_palindrome(string: str) -> str:\n" + it.data["canonical_solution"] + "```"
    assert "def is_palindrome" in it.data["prompt"] and b.score(it, only).passed


def test_agent_synthetic_trace_and_checker(tmp_path):
    from contrastlens.benchmarks.synthetic_trace import build
    from contrastlens.models.loading import load_model

    b = get_benchmark("agent")
    items, bad = b.load()
    assert len(items) == 1 and not bad
    it = items[0]
    shipped = build()
    assert it.data["expected"] == shipped["expected"]
    s = b.score(it, it.recorded_completion)
    assert not s.passed and s.details["reason"] == "wrong argument event_id"
    assert it.recorded_completion[s.broke_at:].startswith('"evt-')
    good = it.recorded_completion.replace(s.details["args"]["event_id"], it.data["expected"]["args"]["event_id"])
    assert b.score(it, good).passed
    wrong_tool = b.score(it, "Action: Calendar__add_event\nAction Input: {}")
    assert wrong_tool.details["reason"] == "wrong tool" and wrong_tool.broke_at == len("Action: ")
    lm = load_model("random:qwen3")
    assert len(lm.encode(lm.apply_chat_template(b.messages(it)))) >= 8000


def test_agent_are_and_plain_formats(tmp_path):
    b = get_benchmark("agent")
    are = {"world_logs": [json.dumps({"log_type": "system_prompt", "content": "You are an agent."}),
                          {"log_type": "task", "content": "Delete file a.txt"},
                          {"log_type": "llm_output", "content": "Action: Files__ls\nAction Input: {}"},
                          {"log_type": "observation", "content": "a.txt b.txt"},
                          {"log_type": "llm_output", "content": 'Action: Files__rm\nAction Input: {"path": "b.txt"}'}],
           "expected": {"tool": "Files__rm", "args": {"path": "a.txt"}}}
    (tmp_path / "t1.json").write_text(json.dumps(are))
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": '{"action": "X", "action_input": {}}'}]
    (tmp_path / "t2.json").write_text(json.dumps({"messages": plain, "expected": {"tool": "X"}}))
    (tmp_path / "t3.json").write_text(json.dumps(plain))  # no expected action: skipped with a reason
    items, bad = b.load(tmp_path)
    assert [i.id for i in items] == ["t1", "t2"]
    assert bad == [("t3", "agent trace t3.json: missing field expected.tool (the correct action)")]
    t1 = items[0]
    assert [m["role"] for m in b.messages(t1)] == ["system", "user", "assistant", "user"]
    s = b.score(t1, t1.recorded_completion)
    assert not s.passed and s.details["reason"] == "wrong argument path"
    assert b.score(items[1], items[1].recorded_completion).passed
