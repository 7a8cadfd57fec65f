import json

import pytest

from contrastlens.cli.main import main

pytest.importorskip("lm_eval")

IFEVAL_ROWS = [
    {"key": 1, "prompt": "Write one sentence about cats. Do not use any commas.",
     "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    {"key": 2, "prompt": "Say hi in all lowercase letters.", "instruction_id_list": ["change_case:english_lowercase"],
     "kwargs": [{}]},
    {"key": 3, "prompt": "A row without its instruction list."},
]


def test_collect_cli_end_to_end_and_resume(tmp_path, capsys):
    data = tmp_path / "ifeval.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in IFEVAL_ROWS) + "\n")
    out = tmp_path / "cases.jsonl"
    args = ["collect", "--benchmark", "ifeval", "--model", "random:qwen3", "--data", str(data), "--out", str(out),
            "--max-new-tokens", "6", "--top-k", "2", "--max-probes", "2", "--no-progress"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "items" in table and "skipped: missing field" in table
    summary = json.loads((tmp_path / "cases.jsonl.summary.json").read_text())
    assert summary["items"] == 3 and summary["skipped"] == {"missing field": 1}
    assert summary["passed"] + summary["failed"] == 2
    n = len(out.read_text().splitlines())
    assert main(args) == 0  # resume: nothing new
    again = json.loads((tmp_path / "cases.jsonl.summary.json").read_text())
    assert again["resumed"] == 2 and again["failed"] == summary["failed"]
    assert len(out.read_text().splitlines()) == n


def test_collect_cli_bad_input_exits_2(tmp_path, capsys):
    wrong = tmp_path / "math.jsonl"
    wrong.write_text('{"problem": "1+1", "answer": "2", "unique_id": "a"}\n')
    base = ["collect", "--model", "random:qwen3", "--out", str(tmp_path / "o.jsonl")]
    assert main(base + ["--benchmark", "ifeval", "--data", str(wrong)]) == 2
    err = capsys.readouterr().err.strip()
    assert "right benchmark" in err and len(err.splitlines()) == 1
    assert main(base + ["--benchmark", "nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert main(base + ["--benchmark", "ifeval", "--data", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(base + ["--benchmark", "math500", "--data", str(wrong), "--contrast", "x"]) == 2
    assert "--contrast needs --failure-index" in capsys.readouterr().err


def test_filter_matches_scalars_and_lists():
    from contrastlens.benchmarks.select import matches

    assert matches(1, {"1", "2"}) and not matches(3, {"1", "2"})
    assert matches(["a:x", "b:y"], {"b:y"}) and not matches(["a:x"], {"b:y"})


def test_http_judge_speaks_openai_chat_completions():
    import http.server
    import threading

    from contrastlens.collect.localise import JUDGE_SYSTEM, http_judge, parse_judge

    seen = {}

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen["path"] = self.path
            seen["auth"] = self.headers.get("Authorization")
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            out = json.dumps({"choices": [{"message": {"content": '{"error_token": "a", "token_index": 7}'}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(out.encode())

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        ask = http_judge(f"http://127.0.0.1:{srv.server_port}/v1", "judge-model", api_key="k")
        assert parse_judge(ask('{"completion": "x"}')) == 7
    finally:
        srv.shutdown()
    assert seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer k"
    assert seen["body"]["model"] == "judge-model" and seen["body"]["messages"][0]["content"] == JUDGE_SYSTEM
    assert parse_judge("no json") is None and parse_judge('{"token_index": "x"}') is None
