"""scripts/finetune_series.py: a tiny checkpoint series of a random model on a synthetic MATH-format file.

Checked: every checkpoint loads with ``load_model(folder)``; step 0 is the base model bit for bit and the
weights change between checkpoints; the loss covers the assistant tokens only (against a hand-rendered
chat template, and against transformers' own masked loss); the study's case items are never trained on;
resuming after the last checkpoint is removed reproduces it bit for bit (from the newest training state,
or by replaying from step 0 when only the newest checkpoint kept one); a finished checkpoint and a series
made with other settings are never overwritten.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contrastlens.errors import InputError
from contrastlens.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "examples" / "cases" / "math500.jsonl"  # holds test_number_theory_410 (must be excluded)


def _script():
    name = "finetune_series_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "finetune_series.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(mod)
    return sys.modules[name]


fs = _script()


def _rows() -> list[dict]:
    rows = [{"problem": f"What is {i} plus 3?", "answer": str(i + 3), "unique_id": f"test/algebra/{100 + i}.json",
             "solution": f"The sum of {i} and 3 is {i + 3}. The answer is $\\boxed{{{i + 3}}}$."} for i in range(7)]
    rows.append({"problem": "A case item.", "solution": "Never trained on.", "answer": "1",
                 "unique_id": "test/number_theory/410.json"})
    return rows


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "math.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return p


def _argv(data_file: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "random:llama", "--data-file", str(data_file), "--exclude-cases", str(CASES),
            "--out", str(out), "--steps", "4", "--batch-size", "2", "--checkpoints", "3", "--eval-items", "1",
            "--warmup", "1", "--lr", "1e-3", "--no-progress", *extra]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def series(tmp_path_factory, data_file):
    out = tmp_path_factory.mktemp("ckpt") / "tiny-sft"
    return fs.main(_argv(data_file, out, "--keep-optimizer"))


def test_checkpoints_load_start_at_the_base_model_and_change(series):
    assert sorted(series.checkpoints) == [0, 2, 4]
    assert series.trained_steps == [1, 2, 3, 4]
    base = load_model("random:llama").model.state_dict()
    states = {}
    for step, folder in series.checkpoints.items():
        lm = load_model(folder)
        assert lm.tokenizer.chat_template == load_model("random:llama").tokenizer.chat_template
        states[step] = {k: v.clone() for k, v in lm.model.state_dict().items()}
        meta = json.loads((folder / fs.SIDECAR).read_text())
        assert meta["step"] == step and meta["seed"] == 0 and meta["versions"]["contrastlens"]
    assert states[0].keys() == base.keys()
    assert all(torch.equal(states[0][k], base[k]) for k in base)  # step 0 is the base model, bit for bit
    for a, b in [(0, 2), (2, 4)]:
        changed = [k for k in base if not torch.equal(states[a][k], states[b][k])]
        assert len(changed) == len(base), f"step {a} -> {b}: unchanged {set(base) - set(changed)}"


def test_the_loss_goes_down_and_the_case_items_are_held_out(series):
    metas = {s: json.loads((f / fs.SIDECAR).read_text()) for s, f in series.checkpoints.items()}
    assert metas[4]["eval_loss"] < metas[2]["eval_loss"] < metas[0]["eval_loss"]
    assert "test_number_theory_410" in metas[0]["excluded_ids"]
    d = metas[4]["data"]
    assert d["rows"] == 8 and d["train"] + d["eval"] == 7  # the case item is dropped
    assert "test_number_theory_410" not in d["eval_ids"]
    snippet = tomllib.loads(fs.toml_snippet(series.series, series.checkpoints))
    assert [(m["series"], m["step"], Path(m["source"])) for m in snippet["models"]] == [
        ("tiny-sft", s, series.checkpoints[s].resolve()) for s in (0, 2, 4)]


def test_the_study_file_it_writes_is_a_valid_series_study(series, tmp_path):
    import contrastlens.study.analyses.cross_checkpoint  # noqa: F401  (registers the analysis)
    from contrastlens.study.config import load_study

    f = tmp_path / "studies" / "tiny.toml"
    f.parent.mkdir()
    f.write_text(fs.study_toml(series.series, series.checkpoints, [str(CASES)], f))
    assert '"../' in f.read_text()  # paths relative to the study file
    study = load_study(f)
    refs = [m for m in study.models if m.series == "tiny-sft"]
    assert [(m.step, Path(m.source).resolve()) for m in refs] == [
        (s, series.checkpoints[s].resolve()) for s in (0, 2, 4)]
    assert [Path(c.path).resolve() for c in study.cases] == [CASES.resolve()]


def test_the_loss_covers_only_the_assistant_tokens():
    lm = load_model("random:llama")
    tok = lm.tokenizer
    msgs = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "It is 5. Done."}]
    ex = fs.encode_example(tok, "x", msgs, 384)
    # the random model's template, rendered by hand
    assert tok.decode(ex.ids[:ex.n_prompt]) == "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ex.ids[ex.n_prompt:]) == "It is 5. Done.<|im_end|>\n"
    assert ex.ids[:ex.n_prompt] == lm.encode("What is 2 plus 3?", chat=True)  # the prompt as the cases see it
    # the summed loss equals transformers' own loss with every prompt label masked
    labels = torch.tensor([[-100] * ex.n_prompt + ex.ids[ex.n_prompt:]])
    with torch.no_grad():
        ours, n = fs.sequence_loss(lm.model, ex)
        ref = lm.model(input_ids=torch.tensor([ex.ids]), labels=labels).loss
    assert n == len(ex.ids) - ex.n_prompt
    assert float(ours) / n == pytest.approx(float(ref), rel=1e-5)
    assert fs.encode_example(tok, "x", msgs, len(ex.ids) - 1) is None  # too long: dropped, not truncated


def test_resume_after_removing_the_last_checkpoint_is_bit_identical(series, data_file):
    out = series.out
    last = _weights(out / "step-4")
    shutil.rmtree(out / "step-4")
    again = fs.main(_argv(data_file, out, "--keep-optimizer"))
    assert again.trained_steps == [3, 4]  # from step 2's training state
    new = _weights(out / "step-4")
    assert new.keys() == last.keys() and all(torch.equal(new[k], last[k]) for k in last)


def test_without_kept_states_resume_replays_and_never_rewrites(tmp_path, data_file):
    out = tmp_path / "s"
    fs.main(_argv(data_file, out))
    assert not (out / "step-2" / fs.STATE).exists() and (out / "step-4" / fs.STATE).exists()
    step2 = (out / "step-2" / "model.safetensors").stat()
    last = _weights(out / "step-4")
    shutil.rmtree(out / "step-4")
    again = fs.main(_argv(data_file, out))
    assert again.trained_steps == [1, 2, 3, 4]  # replayed from step 0
    assert (out / "step-2" / "model.safetensors").stat().st_mtime_ns == step2.st_mtime_ns
    new = _weights(out / "step-4")
    assert all(torch.equal(new[k], last[k]) for k in last)
    assert fs.main(_argv(data_file, out)).trained_steps == []  # complete: nothing to do


def test_refuses_to_overwrite(series, data_file):
    out = series.out
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("step-*/model.safetensors")}
    with pytest.raises(InputError, match="seed"):
        fs.main(_argv(data_file, out, "--seed", "1"))
    with pytest.raises(InputError, match="refusing to overwrite"):
        fs.save_checkpoint(out, 2, load_model("random:llama").model, None, {}, None)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("step-*/model.safetensors")} == before
    assert not list(out.glob(".step-*"))


def test_schedule_and_data_order():
    s = fs.Settings(steps=60, checkpoints=7, lr=3e-5, warmup=6)
    assert s.resolved_save_steps() == [0, 10, 20, 30, 40, 50, 60]
    assert fs.lr_at(3, s) == pytest.approx(1.5e-5) and fs.lr_at(6, s) == pytest.approx(3e-5)
    assert fs.lr_at(60, s) == pytest.approx(3e-6)
    assert fs.Settings(steps=5, save_steps=[3, 5]).resolved_save_steps() == [0, 3, 5]
    with pytest.raises(InputError, match="--save-steps"):
        fs.Settings(steps=5, save_steps=[7]).resolved_save_steps()
    n, b = 10, 4
    order = [i for st in range(1, 6) for i in fs.batch_for_step(st, n, b, seed=3)]  # 20 = two epochs
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:]) == list(range(10))
    assert order[:10] != order[10:]
    assert fs.batch_for_step(2, n, b, seed=3) == order[4:8]
