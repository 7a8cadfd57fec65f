"""``contrastlens collect`` options: generated from CollectSettings (same flags, same meaning), bad values
a one-line error with exit status 2 before anything runs, and the library's log lines on stderr."""

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from contrastlens.cli.main import main


def _parser():
    from contrastlens.cli.collect import add_parser

    p = argparse.ArgumentParser()
    add_parser(p)
    return p


REQ = ["-b", "tiny", "-m", "random:llama", "-o", "x.jsonl"]


def test_cli_options_are_generated_from_the_settings():
    from contrastlens.cli.collect import settings_from_args
    from contrastlens.collect import CollectSettings

    p = _parser()
    flags = {o for a in p._actions for o in a.option_strings}
    for f in dataclasses.fields(CollectSettings):
        assert (f.metadata.get("flag") or "--" + f.name.replace("_", "-")) in flags, f.name
    assert settings_from_args(p.parse_args(REQ)) == CollectSettings()  # defaults live in the dataclass only
    args = p.parse_args(REQ + [
        "--top-k", "3", "--rollout-batch", "8", "--no-chat", "--no-progress", "--filter", "a=1", "--filter", "b=2,3",
        "--rollout-slack", "-1", "--failure-index", "2", "--contrast", "#5", "--items", "x, y", "--max-new-tokens", "7",
        "--batch-size", "2", "--max-probes", "0", "--scan-probes", "4", "--offset", "1", "--limit", "5",
        "--regenerate", "--dtype", "bfloat16", "--threads", "1"])
    assert settings_from_args(args) == CollectSettings(
        top_k=3, rollout_batch=8, chat=False, progress=False, filters=("a=1", "b=2,3"), rollout_slack=None,
        failure_index=2, contrast=5, items=("x", "y"), max_new_tokens=7, batch_size=2, max_probes=0, scan_probes=4,
        offset=1, limit=5, regenerate=True, dtype="bfloat16", threads=1)
    assert settings_from_args(p.parse_args(REQ + ["--no-chat", "--chat", "--contrast", "abc", "--failure-index", "0"]
                                           )).contrast == "abc"
    for non_setting in ("--benchmark", "--model", "--data", "--out", "--sibling", "--judge-url", "--judge-model",
                        "--fresh"):
        assert non_setting in flags


def _trace(tmp_path):
    f = tmp_path / "trace.json"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "Delete event 7."},
                                          {"role": "assistant", "content": "Action: Calendar__delete_event\n"
                                                                           'Action Input: {"event_id": "evt-8"}'}],
                             "expected": {"tool": "Calendar__delete_event", "args": {"event_id": "evt-7"}}}))
    return f


@pytest.mark.parametrize("bad, msg", [
    (["--limit", "-1"], "--limit"), (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--batch-size", "0"], "--batch-size"), (["--offset", "-1"], "--offset"),
    (["--filter", "level"], "FIELD=VALUE"), (["--max-new-tokens", "-3"], "--max-new-tokens"),
])
def test_cli_bad_settings_exit_2_with_one_line(tmp_path, capsys, bad, msg):
    out = tmp_path / "o.jsonl"
    args = ["collect", "-b", "gaia2", "-m", "random:llama", "--data", str(_trace(tmp_path)), "-o", str(out),
            "--no-progress", "--top-k", "1", "--max-probes", "1"]
    assert main(args + bad) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing ran


def test_cli_offset_past_the_end_and_unknown_filter_field(tmp_path, capsys):
    args = ["collect", "-b", "gaia2", "-m", "random:llama", "--data", str(_trace(tmp_path)), "-o",
            str(tmp_path / "o.jsonl"), "--no-progress"]
    assert main(args + ["--offset", "1"]) == 2
    assert "past the last item" in capsys.readouterr().err
    assert main(args + ["--filter", "nope=1"]) == 2
    assert "no item has the field 'nope'" in capsys.readouterr().err


def test_cli_shows_the_library_log_lines_on_stderr(tmp_path):
    """A real process (no test logging handlers): the skip line reaches stderr, the table stdout."""
    out = tmp_path / "o.jsonl"
    p = subprocess.run([sys.executable, "-m", "contrastlens", "collect", "-b", "gaia2", "-m", "random:llama", "-o",
                        str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "skip synthetic-calendar-0: the prompt has" in p.stderr  # the shipped trace is past a random model's context
    assert "skipped: context" in p.stdout
    summary = json.loads((tmp_path / "o.jsonl.summary.json").read_text())
    assert summary["benchmark"] == "gaia2" and summary["settings"]["top_k"] == 4


def test_cli_non_setting_arguments_are_checked_too(tmp_path, capsys):
    args = ["collect", "-b", "gaia2", "-m", "random:llama", "--data", str(_trace(tmp_path)), "-o",
            str(tmp_path / "o.jsonl"), "--no-progress"]
    assert main(args + ["--judge-url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--judge-url needs --judge-model" in err and len(err.splitlines()) == 1
