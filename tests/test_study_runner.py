"""The in-process study runner on tiny random models: results equal direct explanations, digests re-run
only what a change affects, bad input (a missing case file, a model that cannot load, ids outside a
vocabulary, a checkpoint series with two tokenizers, a failing unit) is listed while the run goes on, the
store stays consistent, and the CLI (run / status / report / label)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import contrastlens as cl
from contrastlens.cli.main import main
from contrastlens.study.runner import run_study, study_status
from contrastlens.study.store import TMP_PREFIX, Store
from tests.study_toy import make_cases, study_toml, write_cases


@pytest.fixture(scope="module")
def lms():
    return {"llama": cl.load_model("random:llama", attn_implementation="eager"),
            "qwen": cl.load_model("random:qwen2", attn_implementation="eager")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, lms):
    """Model folders: ``small`` (random:llama's weights and tokenizer), ``big`` (a llama with a 1024-row
    vocabulary and another tokenizer), and a case of ``big`` holding ids past 512."""
    from contrastlens.models.loaded import LoadedModel
    from contrastlens.models.random import build_random_model

    root = tmp_path_factory.mktemp("models")
    small = root / "small"
    lms["llama"].model.save_pretrained(small)
    lms["llama"].tokenizer.save_pretrained(small)
    model, tok = build_random_model("llama", seed=3, vocab_size=1024, attn_implementation="eager")
    big = root / "big"
    model.save_pretrained(big)
    tok.save_pretrained(big)
    big_lm = LoadedModel(model, tok, str(big))
    extra = [i for i in range(512, len(tok)) if i not in big_lm.special_ids()][:2]
    assert extra, "the big tokenizer has no token past 512"
    (big_case,) = make_cases(big_lm, 1, prefix="big", extra_prompt_ids=tuple(extra))
    return {"small": small, "big": big, "big_case": big_case, "extra": extra}


def _study(root: Path, **kw) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = root / "study.toml"
    p.write_text(study_toml(**kw), encoding="utf-8")
    return p


def _unit_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in (out / "units").rglob("unit.json")}


def _counts(s):
    return len(s.done), len(s.current), len(s.skipped), len(s.failed)


def test_results_equal_direct_explanations_and_digests_rerun_only_what_changed(tmp_path, lms):
    root, out = tmp_path / "s", tmp_path / "out"
    cases = make_cases(lms["llama"], 4)
    more = make_cases(lms["llama"], 2, offset=4)
    assert all(c.clean for c in cases + more)
    write_cases(root / "a.jsonl", cases)
    models = [{"name": "llama", "source": "random:llama"}, {"name": "qwen", "source": "random:qwen2"}]
    kw = dict(models=models, cases=[{"path": "a.jsonl"}], analyses={"toy": {}, "toy2": {"skip_models": ["qwen"]}})
    s = run_study(_study(root, **kw), out, progress=False)
    assert _counts(s) == (8 + 4, 0, 4, 0)
    assert {r for _, r in s.skipped} == {"toy2 does not run on qwen"}
    store = Store.open(out)
    summ = store.tables("toy")["summary"]
    assert len(summ) == 8 and set(summ["case"]) == {c.id for c in cases}  # 'case' overwritten by the store
    by = {(r.case, r.model): r for r in summ.itertuples()}
    tokens = store.tables("toy")["tokens"]
    for c in cases:
        # Δℓ under the case's own model is the case's Δℓ (computed independently by a plain forward pass)
        assert by[(c.id, "llama")].delta == pytest.approx(c.delta_logit, abs=1e-4)
        for name in ("llama", "qwen"):
            ex = cl.explain(lms[name], c, on_model_mismatch="ignore")
            assert by[(c.id, name)].delta == pytest.approx(ex.logit_diff, abs=1e-5)
            rows = tokens[(tokens["case"] == c.id) & (tokens["model"] == name)].sort_values("position")
            np.testing.assert_allclose(rows["relevance"].to_numpy(), ex.input_relevance, rtol=1e-5, atol=1e-6)
            assert list(rows["token_id"]) == c.ids_before_err
    t = store.tensors("toy")
    np.testing.assert_allclose(t[(cases[0].id, "qwen", "attnlrp")]["relevance"],
                               tokens[(tokens["case"] == cases[0].id) & (tokens["model"] == "qwen")]["relevance"],
                               rtol=1e-6)
    # toy2 shares toy's (memoised) explanation: its top position is the argmax of toy's relevance
    top = store.tables("toy2")["top"]
    for r in top.itertuples():
        rel = tokens[(tokens["case"] == r.case) & (tokens["model"] == "llama")]["relevance"].to_numpy()
        assert r.top_position == int(np.argmax(rel))
    man = store.read_manifest()
    u = next(x for x in man["units"] if x["id"] == f"toy/qwen/attnlrp/{cases[0].id}")
    assert u["status"] == "done" and u["provenance"]["model"]["model_fingerprint"] == lms["qwen"].fingerprint
    assert u["provenance"]["spec_hash"] == cl.explain(lms["qwen"], cases[0], on_model_mismatch="ignore").spec.hash()
    assert "transformers" in u["provenance"]["versions"] and u["timings"]["seconds"] > 0

    # nothing changed: nothing runs
    s = run_study(_study(root, **kw), out, progress=False)
    assert _counts(s) == (0, 12, 4, 0)

    # one analysis' setting: only its units
    toy2_before = {k: v for k, v in _unit_files(out).items() if k.startswith("units/toy2/")}
    kw["analyses"] = {"toy": {"scale": 2.0}, "toy2": {"skip_models": ["qwen"]}}
    s = run_study(_study(root, **kw), out, progress=False)
    assert _counts(s) == (8, 4, 4, 0) and all(u.startswith("toy/") for u in s.done)
    assert {k: v for k, v in _unit_files(out).items() if k.startswith("units/toy2/")} == toy2_before
    summ = Store.open(out).tables("toy")["summary"]
    np.testing.assert_allclose(summ["scaled"], 2 * summ["delta"])
    st = study_status(out)["analyses"]
    assert (st["toy"]["done"], st["toy"]["stale"], st["toy2"]["done"], st["toy2"]["skipped"]) == (8, 8, 4, 4)

    # a new case file: only the new cases' units
    write_cases(root / "b.jsonl", more)
    kw["cases"] = [{"path": "a.jsonl"}, {"path": "b.jsonl"}]
    s = run_study(_study(root, **kw), out, progress=False)
    assert _counts(s) == (2 * 2 + 2, 12, 6, 0)
    assert {u.rsplit("/", 1)[1] for u in s.done} == {c.id for c in more}

    # a second rule: only its units
    kw["rules"] = ["attnlrp", "cp-lrp"]
    s = run_study(_study(root, **kw), out, progress=False)
    assert _counts(s) == (6 * 2 + 6, 18, 12, 0) and all("/cp-lrp/" in u for u in s.done)
    cp = Store.open(out).tables("toy")["summary"]
    cp = cp[cp["rule"] == "cp-lrp"]
    ex = cl.explain(lms["qwen"], cases[1], method="cp-lrp", on_model_mismatch="ignore")
    assert cp[(cp["case"] == cases[1].id) & (cp["model"] == "qwen")]["rel_sum"].item() == pytest.approx(
        float(ex.input_relevance.sum()), rel=1e-5)

    # one model changed: only its units
    kw["models"] = [models[0], {"name": "qwen", "source": "random:mistral"}]
    s = run_study(_study(root, **kw), out, progress=False)
    assert _counts(s) == (6 * 2, 24, 12, 0) and all(u.startswith("toy/qwen/") for u in s.done)

    # a setting changed back: the units stored with it are current again (stale units are kept)
    kw["analyses"] = {"toy": {}, "toy2": {"skip_models": ["qwen"]}}
    s = run_study(_study(root, **kw), out, progress=False)
    assert len(s.current) == 4 + 12 and len(s.done) == 24 - 4
    assert {u for u in s.current if u.startswith("toy/")} == {f"toy/llama/attnlrp/{c.id}" for c in cases}

    # the store holds each unit once, with nothing left over
    for a in ("toy", "toy2"):
        adir = out / "units" / a
        names = [p.name for p in adir.iterdir()]
        assert not [n for n in names if n.startswith(TMP_PREFIX)]
        ids = [json.loads((adir / n / "unit.json").read_text())["id"] for n in names]
        current = {x["digest"] for x in Store.open(out).read_manifest()["units"] if x["analysis"] == a}
        cur_ids = [i for n, i in zip(names, ids, strict=True) if n in current]
        assert len(cur_ids) == len(set(cur_ids))  # never two current folders of one unit


def test_bad_input_is_listed_and_the_run_goes_on(tmp_path, lms, folders):
    root, out = tmp_path / "s", tmp_path / "out"
    cases = make_cases(lms["llama"], 3)
    write_cases(root / "a.jsonl", cases)
    write_cases(root / "big.jsonl", [folders["big_case"]])
    models = [{"name": "llama", "source": "random:llama"},
              {"name": "broken", "source": "./no-such-model"},
              {"name": "big", "source": str(folders["big"])},
              {"name": "sft-0", "source": str(folders["small"]), "series": "sft", "step": 0},
              {"name": "sft-10", "source": str(folders["big"]), "series": "sft", "step": 10}]
    p = _study(root, models=models, cases=[{"path": "a.jsonl"}, {"path": "big.jsonl"}, {"path": "missing.jsonl"},
                                           {"path": "a.jsonl", "ids": ["toy-0", "nope"], "models": ["llama"]}],
               analyses={"toy": {"fail_on": ["toy-1"]}})
    s = run_study(p, out, progress=False)
    fails, skips = dict(s.failed), dict(s.skipped)
    problems = dict(s.problems)
    # the missing case file and the unknown id: listed, the rest runs
    assert any("missing.jsonl" in w and "does not exist" in r for w, r in problems.items())
    assert any(w.startswith("cases[3]") and r == "no clean cases with id nope in the file" for w, r in problems.items())
    # the model that cannot load: all its units failed with that one reason
    broken = {u: r for u, r in fails.items() if "/broken/" in u}
    assert len(broken) == 4 and len(set(broken.values())) == 1
    assert next(iter(broken.values())).startswith("model broken cannot be loaded: model path ")
    # ids outside a model's vocabulary
    bc = folders["big_case"]
    big_id, top = bc.id, max(bc.prompt_ids + bc.completion_ids + [bc.target_id, bc.contrast_id])
    assert top >= 512
    for m in ("llama", "sft-0"):
        assert skips[f"toy/{m}/attnlrp/{big_id}"] == f"case {big_id}: token id {top} outside {m}'s vocabulary (512)"
    # the checkpoint whose tokenizer differs from the series' first: its units skipped, with the reason
    sft10 = {u: r for u, r in skips.items() if "/sft-10/" in u}
    assert len(sft10) == 4
    assert all("has another tokenizer than sft-0 (step 0), the series' first checkpoint" in r for r in sft10.values())
    # a failing unit: one line, the traceback in run.log
    assert fails["toy/llama/attnlrp/toy-1"] == "RuntimeError: toy failure on toy-1"
    logtext = (out / "run.log").read_text()
    assert "Traceback" in logtext and "second line" in logtext and "toy/llama/attnlrp/toy-1" in logtext
    # big-0 under big: its ids lie inside big's output layer but past its tokenizer (padding rows), so they
    # mean nothing there: skipped with that reason
    r = skips[f"toy/big/attnlrp/{big_id}"]
    assert r.startswith(f"case {big_id}: token ids [{top}] are outside the vocabulary") and "of big" in r, r
    # the rest ran: llama and sft-0 (2 of 3 cases), big (2 of 4: its tokenizer holds the small ids too)
    ok = [c.id for c in cases if c.id != "toy-1"]
    assert sorted(s.done) == sorted([f"toy/llama/attnlrp/{c}" for c in ok] + [f"toy/sft-0/attnlrp/{c}" for c in ok]
                                    + [f"toy/big/attnlrp/{c}" for c in ok])
    assert set(fails) == set(broken) | {f"toy/{m}/attnlrp/toy-1" for m in ("llama", "big", "sft-0")}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": len(s.done), "current": 0, "skipped": len(s.skipped),
                                 "failed": len(s.failed), "pending": 0}
    st = study_status(out)["analyses"]["toy"]
    assert (st["done"], st["failed"], st["skipped"], st["pending"]) == (len(s.done), len(s.failed), len(s.skipped), 0)
    # a second run retries the failures (and only them: the skips are decided again, cheaply)
    s2 = run_study(p, out, progress=False)
    assert s2.done == [] and len(s2.current) == len(s.done) and dict(s2.failed) == fails


def test_only_runs_the_named_analyses(tmp_path, lms):
    root, out = tmp_path / "s", tmp_path / "out"
    write_cases(root / "a.jsonl", make_cases(lms["llama"], 2))
    p = _study(root, models=[{"name": "llama", "source": "random:llama"}], cases=[{"path": "a.jsonl"}],
               analyses={"toy": {}, "toy2": {}})
    s = run_study(p, out, progress=False, only=["toy2"])
    assert sorted(s.done) == ["toy2/llama/attnlrp/toy-0", "toy2/llama/attnlrp/toy-1"] and len(s.pending) == 2
    st = study_status(out)["analyses"]
    assert (st["toy"]["pending"], st["toy2"]["done"]) == (2, 2)
    from contrastlens.errors import InputError

    with pytest.raises(InputError, match="--only toy3: not an analysis of study"):
        run_study(p, out, progress=False, only=["toy3"])


def test_a_results_folder_travels_to_another_place_and_runs_only_the_missing_units(tmp_path, lms):
    # the study and its cases in one place, run there ...
    root, out = tmp_path / "here" / "s", tmp_path / "here" / "out"
    write_cases(root / "a.jsonl", make_cases(lms["llama"], 3))
    kw = dict(models=[{"name": "llama", "source": "random:llama"}], cases=[{"path": "a.jsonl"}],
              analyses={"toy": {}})
    p = _study(root, **kw)
    first = run_study(p, out, progress=False)
    assert _counts(first) == (3, 0, 0, 0)
    # ... and copied elsewhere (another folder, as a clone would be): study.json and two of the three unit
    # folders, no manifest, summary or log
    root2, out2 = tmp_path / "there" / "study", tmp_path / "there" / "results"
    shutil.copytree(root, root2)
    units = sorted((out / "units" / "toy").iterdir())
    (out2 / "units" / "toy").mkdir(parents=True)
    shutil.copy(out / "study.json", out2 / "study.json")
    for u in units[:2]:
        shutil.copytree(u, out2 / "units" / "toy" / u.name)
    second = run_study(root2 / "study.toml", out2, progress=False)
    assert _counts(second) == (1, 2, 0, 0)
    assert sorted(d.name for d in (out2 / "units" / "toy").iterdir()) == [u.name for u in units]
    a = Store.open(out).tables("toy")
    b = Store.open(out2).tables("toy")
    assert a.keys() == b.keys()
    for name in a:
        cols = [c for c in a[name].columns if c not in ("seconds", "wall_seconds")]
        x = a[name][cols].sort_values(["case"]).reset_index(drop=True)
        y = b[name][cols].sort_values(["case"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(x, y)


def test_cli_run_status_report_and_bad_input(tmp_path, lms, capsys):
    root, out = tmp_path / "s", tmp_path / "out"
    write_cases(root / "a.jsonl", make_cases(lms["llama"], 2))
    p = _study(root, models=[{"name": "llama", "source": "random:llama"}], cases=[{"path": "a.jsonl"}],
               analyses={"toy": {}})
    assert main(["study", "run", str(p), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "2 done, 0 already current" in text and "toy" in text
    assert main(["study", "status", str(out)]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.strip().startswith("toy"))
    assert row.split() == ["toy", "2", "0", "0", "0", "0"]
    # bad input: one line on stderr, exit 2
    bad = root / "bad.toml"
    bad.write_text(p.read_text().replace("[analyses.toy]", "[analyses.toy]\nscal = 1"))
    assert main(["study", "run", str(bad), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"contrastlens study: error: {bad}: [analyses.toy] unknown key 'scal' (known: scale, method, " \
                  "options, sleep, fail_on)"
    other = p.read_text().replace('name = "toy-study"', 'name = "other"')
    (root / "other.toml").write_text(other)
    assert main(["study", "run", str(root / "other.toml"), "--out", str(out), "--no-progress"]) == 2
    assert "holds the results of study 'toy-study', not of 'other'" in capsys.readouterr().err
    assert main(["study", "status", str(tmp_path)]) == 2
    assert "not a study results folder" in capsys.readouterr().err


def test_cli_report_never_overwrites_a_user_file(tmp_path, lms, capsys):
    pytest.importorskip("contrastlens.study.report")
    pytest.importorskip("markdown_it")
    root, out = tmp_path / "s", tmp_path / "out"
    write_cases(root / "a.jsonl", make_cases(lms["llama"], 2))
    p = _study(root, models=[{"name": "llama", "source": "random:llama"}], cases=[{"path": "a.jsonl"}],
               analyses={"toy": {}})
    run_study(p, out, progress=False)
    assert main(["study", "report", str(out), "--format", "md"]) == 0
    md = (out / "report.md").read_text()
    assert "Toy analysis" in md and "toy-0" in md and "toy-1" in md
    assert main(["study", "report", str(out), "--format", "md"]) == 0  # our own report: replaced
    assert main(["study", "report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "Toy analysis" in html and "<html" in html.lower()
    user = tmp_path / "notes.md"
    user.write_text("my notes")
    capsys.readouterr()
    assert main(["study", "report", str(out), "--format", "md", "--out", str(user)]) == 2
    assert "not a contrastlens study report" in capsys.readouterr().err and user.read_text() == "my notes"


def test_cli_label(tmp_path, lms, capsys):
    taxonomy = pytest.importorskip("contrastlens.study.analyses.taxonomy")
    if not hasattr(taxonomy, "write_label"):
        pytest.skip("taxonomy.write_label is not there yet")
    root, out = tmp_path / "s", tmp_path / "out"
    write_cases(root / "a.jsonl", make_cases(lms["llama"], 1))
    p = _study(root, models=[{"name": "llama", "source": "random:llama"}], cases=[{"path": "a.jsonl"}],
               analyses={"toy": {}})
    run_study(p, out, progress=False)
    assert main(["study", "label", str(out), "--case", "toy-0", "--model", "llama", "--outcome", "M-IA",
                 "--pattern", "URT", "--note", "checked by hand"]) == 0
    labels = taxonomy.read_labels(out)
    row = labels[(labels["case"] == "toy-0") & (labels["model"] == "llama")]
    assert len(row) == 1 and row["outcome"].item() == "M-IA" and row["pattern"].item() == "URT"
    assert main(["study", "label", str(tmp_path / "nowhere"), "--case", "x", "--model", "y", "--outcome", "M-IA",
                 "--pattern", "URT"]) == 2


def test_explain_options_are_method_options_except_explains_own_keywords(tmp_path, lms):
    from contrastlens.study.runner import explain_options

    assert explain_options({"steps": 4}) == {"method_params": {"steps": 4}, "on_model_mismatch": "ignore"}
    assert explain_options({"k": 8, "method_params": {"x": 1}, "keep_states": True, "on_model_mismatch": "warn"}) == {
        "method_params": {"x": 1, "k": 8}, "keep_states": True, "on_model_mismatch": "warn"}
    assert explain_options({"objective": "topk_avg", "k": 3}) == {"objective": "topk_avg", "k": 3,
                                                                  "on_model_mismatch": "ignore"}
    root, out = tmp_path / "s", tmp_path / "out"
    (case,) = make_cases(lms["llama"], 1)
    write_cases(root / "a.jsonl", [case])
    p = _study(root, models=[{"name": "qwen", "source": "random:qwen2"}], cases=[{"path": "a.jsonl"}],
               analyses={"toy": {"method": "ig", "options": {"steps": 4}}})
    s = run_study(p, out, progress=False)
    assert len(s.done) == 1, s.failed
    rel = Store.open(out).tables("toy")["tokens"].sort_values("position")["relevance"].to_numpy()
    ex = cl.explain(lms["qwen"], case, method="ig", method_params={"steps": 4}, on_model_mismatch="ignore")
    np.testing.assert_allclose(rel, ex.input_relevance, rtol=1e-5, atol=1e-7)
    other = cl.explain(lms["qwen"], case, method="ig", method_params={"steps": 16}, on_model_mismatch="ignore")
    assert not np.allclose(rel, other.input_relevance, rtol=1e-3)  # the option reached the method
    rec = Store.open(out).current("toy")[0]
    assert rec["provenance"]["spec_hash"] == ex.spec.hash()


def test_an_analysis_runs_only_on_the_models_its_table_names(tmp_path, lms):
    root, out = tmp_path / "s", tmp_path / "out"
    write_cases(root / "a.jsonl", make_cases(lms["llama"], 2))
    models = [{"name": "llama", "source": "random:llama"}, {"name": "again", "source": "random:llama"}]
    p = _study(root, models=models, cases=[{"path": "a.jsonl"}],
               analyses={"toy": {"models": ["again"]}, "toy2": {}})
    s = run_study(p, out, progress=False)
    assert sorted(s.done) == sorted([f"toy/again/attnlrp/toy-{i}" for i in range(2)]
                                    + [f"toy2/{m}/attnlrp/toy-{i}" for m in ("llama", "again") for i in range(2)])
    from contrastlens.errors import InputError

    bad = _study(tmp_path / "t", models=models, cases=[{"path": "a.jsonl"}], analyses={"toy": {"models": ["nope"]}})
    with pytest.raises(InputError, match=r"\[analyses.toy\] models: no model named 'nope'"):
        run_study(bad, tmp_path / "out2", progress=False)


def test_reports_name_paths_relative_to_the_study_file():
    import os

    from contrastlens.study.runner import portable_paths

    home = os.path.expanduser("~")
    got = portable_paths({"a": "/p/proj/out/x", "b": ["/p/proj/studies/c.jsonl", f"{home}/.cache/m", "/etc/x", 3],
                          "c": "random:llama", "d": {"e": "/p/proj"}}, "/p/proj/studies/deep")
    assert got == {"a": "../../out/x", "b": ["../c.jsonl", "~/.cache/m", "/etc/x", 3], "c": "random:llama",
                   "d": {"e": "../.."}}


def test_rule_independent_analyses_plan_one_unit_per_case_and_model(tmp_path, lms):
    from contrastlens.study.analyses.faithfulness import FaithfulnessAnalysis
    from contrastlens.study.analyses.prompt_debug import PromptDebugAnalysis
    from contrastlens.study.config import load_study
    from contrastlens.study.runner import plan_study

    assert FaithfulnessAnalysis.per_rule is False and PromptDebugAnalysis.per_rule is False
    root = tmp_path / "s"
    cases = make_cases(lms["llama"], 3)
    write_cases(root / "a.jsonl", cases)
    kw = dict(models=[{"name": "llama", "source": "random:llama"}], cases=[{"path": "a.jsonl"}],
              analyses={"toy": {}, "faithfulness": {"methods": ["attnlrp", "ixg"]}})
    one = plan_study(load_study(_study(root, rules=["attnlrp"], **kw)), Store.for_run(tmp_path / "o1", "toy-study"))
    two = plan_study(load_study(_study(root, rules=["attnlrp", "cp-lrp"], **kw)),
                     Store.for_run(tmp_path / "o2", "toy-study"))

    def units(plan, analysis):
        return sorted((e.key.rule, e.key.case, e.key.digest) for e in plan.entries.values()
                      if e.key.analysis == analysis)

    assert len(units(two, "toy")) == 2 * len(units(one, "toy")) == 6  # per rule
    # faithfulness: once per case and model, under the first rule, with the same digest as a one-rule study
    assert units(two, "faithfulness") == units(one, "faithfulness") and len(units(one, "faithfulness")) == 3
    assert {r for r, _, _ in units(two, "faithfulness")} == {"attnlrp"}
