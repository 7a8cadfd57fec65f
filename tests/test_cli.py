"""The command line: real subprocesses for the entry points, in-process calls for the rest."""

import json
import subprocess
import sys

import pytest

from contrastlens.cli.main import main


def test_python_m_and_console_script_agree(tmp_path):
    args = ["logits", "--model", "random:qwen3", "--prompt", "The capital of France is", "--top", "3"]
    a = subprocess.run([sys.executable, "-m", "contrastlens", *args], capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stderr
    assert "rank" in a.stdout and a.stdout.count("\n") >= 5
    bad = subprocess.run([sys.executable, "-m", "contrastlens", "explain", "--model", "random:qwen3",
                          "--prompt", "x y", "--target", " Parisxyz", "--contrast", " Rome"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "not one token" in bad.stderr and "Traceback" not in bad.stderr


def test_explain_writes_outputs(tmp_path, capsys):
    rc = main(["explain", "--model", "random:gpt2", "--prompt", "The capital of France is", "--target", " Paris",
               "--contrast", " Rome", "--html", str(tmp_path / "e.html"), "--json", str(tmp_path / "e.json"),
               "--save", str(tmp_path / "e.ctl"), "--latex", str(tmp_path / "e.tex")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Δℓ" in out and "strongest tokens" in out
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["target_str"] == " Paris" and len(data["input_relevance"]) == len(data["tokens"])
    assert (tmp_path / "e.html").read_text().startswith("<!doctype html>")


@pytest.mark.parametrize("argv,msg", [
    (["explain", "--model", "random:qwen3", "--prompt", "", "--target", "#3", "--contrast", "#4"], "empty"),
    (["explain", "--model", "random:qwen3", "--prompt", "a b", "--target", "#3", "--contrast", "#3"], "same token"),
    (["explain", "--model", "random:qwen3", "--prompt", "a b", "--target", "#99999", "--contrast", "#3"], "vocabulary"),
    (["explain", "--model", "/no/such/model.gguf", "--prompt", "a", "--target", "#1"], "does not exist"),
    (["explain", "--model", "random:qwen3", "--prompt-file", "/no/such/file.txt", "--target", "#1"], "cannot read"),
    (["logits", "--model", "random:qwen3", "--prompt", "a", "--dtype", "float8"], "unknown dtype"),
])
def test_bad_input_exit_code_2(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
