"""The Ray runner on a local Ray with 2 CPUs against the in-process runner: the same digests, the same
summary (done, skipped and failed units with their reasons: a model that cannot load, a checkpoint whose
tokenizer differs from its series'), identical tables and tensors; each model loaded once, by one actor
process, which ran all its units."""

import pandas as pd
import pytest

import contrastlens as cl
from contrastlens.study.runner import run_study
from contrastlens.study.store import Store
from tests.study_toy import make_cases, study_toml, write_cases

ray = pytest.importorskip("ray")


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("case", "model", "rule", "position") if c in df.columns]
    return df.sort_values(keys).reset_index(drop=True)


@pytest.mark.slow
def test_ray_runner_equals_the_in_process_runner(tmp_path):
    import os

    from contrastlens.models.loaded import LoadedModel
    from contrastlens.models.random import build_random_model

    lm = cl.load_model("random:llama", attn_implementation="eager")
    root = tmp_path / "s"
    write_cases(root / "a.jsonl", make_cases(lm, 3))
    small, other = tmp_path / "small", tmp_path / "other"
    lm.model.save_pretrained(small)
    lm.tokenizer.save_pretrained(small)
    model, tok = build_random_model("llama", seed=5, vocab_size=1024, attn_implementation="eager")
    LoadedModel(model, tok, "x").model.save_pretrained(other)
    tok.save_pretrained(other)
    study = root / "study.toml"
    study.write_text(study_toml(
        models=[{"name": "llama", "source": "random:llama"}, {"name": "qwen", "source": "random:qwen2"},
                {"name": "broken", "source": "./missing-model"},
                {"name": "ck-1", "source": str(small), "series": "ck", "step": 1},
                {"name": "ck-2", "source": str(other), "series": "ck", "step": 2}],
        cases=[{"path": "a.jsonl"}], analyses={"toy": {"fail_on": ["toy-2"]}, "toy2": {"skip_models": ["qwen"]}},
        rules=["attnlrp", "cp-lrp"], runner={"num_cpus": 1, "local_cpus": 2}))
    local = run_study(study, tmp_path / "local", progress=False)
    dist = run_study(study, tmp_path / "ray", progress=False, ray=True)
    assert dist.runner == "ray" and not ray.is_initialized()  # the Ray it started is shut down
    # toy: (llama, qwen, ck-1) x 2 cases x 2 rules (toy-2 fails); toy2: (llama, ck-1) x 3 cases x 2 rules
    assert len(local.done) == 12 + 12
    for what in ("done", "current", "skipped", "failed"):
        assert sorted(getattr(dist, what)) == sorted(getattr(local, what)), what
    assert any("cannot be loaded" in r for _, r in dist.failed)
    assert any("has another tokenizer than ck-1" in r for _, r in dist.skipped)
    a, b = Store.open(tmp_path / "local"), Store.open(tmp_path / "ray")
    am, bm = a.read_manifest(), b.read_manifest()
    assert [(u["id"], u["digest"], u["status"]) for u in am["units"]] == [
        (u["id"], u["digest"], u["status"]) for u in bm["units"]]
    for name in ("toy", "toy2"):
        ta, tb = a.tables(name), b.tables(name)
        assert set(ta) == set(tb) and ta
        for t in ta:
            pd.testing.assert_frame_equal(_sorted(ta[t]), _sorted(tb[t]))
    xa, xb = a.tensors("toy"), b.tensors("toy")
    assert set(xa) == set(xb) and len(xa) == 2 * 3 * 2  # (llama, qwen, ck-1) x 2 cases that run x 2 rules
    for k in xa:
        pd.testing.assert_series_equal(pd.Series(xa[k]["relevance"]), pd.Series(xb[k]["relevance"]))
    # one load per model, in one actor process (not the driver), which ran all of that model's units
    workers: dict[str, set] = {}
    for u in bm["units"]:
        if u["status"] == "done":
            rec = b.unit_record(u["analysis"], u["digest"])
            workers.setdefault(u["model"], set()).add((rec["worker"]["pid"], rec["worker"]["loads"]))
    assert set(workers) == {"llama", "qwen", "ck-1"}
    for model, w in workers.items():
        assert len(w) == 1, (model, w)
        pid, loads = next(iter(w))
        assert loads == 1 and pid != os.getpid()
    assert len({next(iter(w))[0] for w in workers.values()}) >= 2
