"""Bad input at the edge: the package's own error with one line (CLI: exit status 2), never a traceback,
never silently accepted."""

import pytest
import torch

import contrastlens as cl
from contrastlens.cli.main import main
from contrastlens.errors import ContrastLensError, InputError, ModelLoadError


@pytest.fixture
def files(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"key": 1, "prompt": "caf\xe9", "instruction_id_list": [], "kwargs": []}\n')
    return tmp_path


BASE = ["--model", "random:llama"]
CASES = {
    "non-UTF-8 prompt file": (["explain", *BASE, "--prompt-file", "{d}/latin1.txt", "--target", "#3", "--contrast",
                               "#4"], "not UTF-8"),
    "non-UTF-8 data file": (["collect", "--benchmark", "ifeval", *BASE, "--data", "{d}/latin1.jsonl", "--out",
                             "{d}/out.jsonl", "--no-progress"], "UnicodeDecodeError|UTF-8|utf-8"),
    "logits --top -3": (["logits", *BASE, "--prompt", "x y", "--top", "-3"], "--top must be a positive"),
    "logits --top 0": (["logits", *BASE, "--prompt", "x y", "--top", "0"], "--top must be a positive"),
    "graph --batch-size 0": (["graph", *BASE, "--prompt", "x y z", "--target", "#3", "--contrast", "#4",
                              "--batch-size", "0", "--quiet"], "batch_size must be a positive integer"),
    "graph --node-threshold nan": (["graph", *BASE, "--prompt", "x y z", "--target", "#3", "--contrast", "#4",
                                    "--node-threshold", "nan", "--quiet"], "node_threshold must be a finite"),
    "explain topk_avg --k 10000000": (["explain", *BASE, "--prompt", "x y z", "--target", "#3", "--objective",
                                       "topk_avg", "--k", "10000000", "--quiet"], "k must be in"),
    "explain --case with --prompt": (["explain", "--case", "{d}/none.jsonl#1", "--prompt", "x", "--quiet"],
                                     "--case fixes the prompt"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cli_bad_input_is_one_line_and_exit_2(name, files, capsys):
    argv, msg = CASES[name]
    rc = main([a.format(d=files) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("contrastlens")]
    assert len(lines) == 1, err
    import re

    assert re.search(msg, lines[0]), lines[0]


@pytest.mark.parametrize("source", [None, "", "   ", 3, b"random:llama"])
def test_load_model_needs_a_source_string(source):
    with pytest.raises(ModelLoadError, match="model source must be a non-empty string"):
        cl.load_model(source)


@pytest.mark.parametrize("prompt, msg", [
    (b"The capital", "not bytes"),
    (torch.tensor([[3, 4, 5]]), "1-D tensor of integer token ids"),
    (torch.tensor([3.0, 4.0]), "1-D tensor of integer token ids"),
    ([3, 4.5], "integer token ids"),
    ([3, True], "integer token ids"),
])
def test_explain_rejects_prompts_that_are_not_text_or_ids(random_lm, prompt, msg):
    with pytest.raises(InputError, match=msg):
        cl.explain(random_lm("llama"), prompt, 3, 4)


def test_token_id_tensors_and_numpy_ids_still_work(random_lm):
    import numpy as np

    lm = random_lm("llama")
    ids = lm.encode("The capital of France is")
    a = cl.explain(lm, ids, 3, 4).logit_diff
    assert cl.explain(lm, torch.tensor(ids), 3, 4).logit_diff == pytest.approx(a)
    assert cl.explain(lm, [np.int64(i) for i in ids], 3, 4).logit_diff == pytest.approx(a)


def test_graph_api_rejects_bad_sizes(random_lm):
    lm = random_lm("llama")
    for kw in ({"batch_size": 0}, {"block_rows": -1}, {"cache_mib": float("nan")}, {"node_threshold": -1.0}):
        with pytest.raises(ContrastLensError):
            cl.attribution_graph(lm, "x y z", 3, 4, **kw)
