"""A real ``contrastlens study run`` process SIGKILLed at random moments (seeded), several times, resumed each
time, then finished: after every kill the store holds only complete units (plus temporary folders the next
run removes) and a whole manifest; at the end its tables, tensors and digests equal those of one
uninterrupted run, with no unit stored twice and nothing left over."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import contrastlens as cl
from contrastlens.study.runner import run_study
from contrastlens.study.store import TMP_PREFIX, Store
from tests.study_toy import make_cases, study_toml, write_cases

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261201
KILLS = 4
N_CASES = 6
UNITS = N_CASES * 2 * 2  # cases x models x analyses


def _study(root: Path) -> Path:
    lm = cl.load_model("random:llama", attn_implementation="eager")
    write_cases(root / "cases.jsonl", make_cases(lm, N_CASES))
    p = root / "study.toml"
    p.write_text(study_toml(models=[{"name": "llama", "source": "random:llama"},
                                    {"name": "qwen", "source": "random:qwen2"}],
                            cases=[{"path": "cases.jsonl"}], analyses={"toy": {"sleep": 0.05}, "toy2": {}}))
    return p


def _cmd(study: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "contrastlens", "study", "run", str(study), "--out", str(out), "--no-progress"]


def _complete_units(out: Path) -> int:
    try:
        # a unit being written sits in a temporary folder (TMP_PREFIX) until its rename: not complete yet
        return sum(1 for p in (out / "units").glob("*/*/unit.json") if not p.parent.name.startswith(TMP_PREFIX))
    except OSError:
        return 0


def _check_after_kill(out: Path) -> int:
    """Every unit folder under its final name is whole (its unit.json lists files that all read back); the
    rest are temporary folders; the manifest, when there is one, is whole JSON. Returns the leftovers."""
    leftovers = 0
    if (out / "manifest.json").exists():
        json.loads((out / "manifest.json").read_text())
    for adir in (out / "units").glob("*") if (out / "units").exists() else []:
        for u in adir.iterdir():
            if u.name.startswith(TMP_PREFIX):
                leftovers += 1
                continue
            rec = json.loads((u / "unit.json").read_text())
            assert rec["key"]["digest"] == u.name and rec["status"] == "done"
            for name, t in rec["tables"].items():
                assert len(pd.read_parquet(u / f"{name}.parquet")) == t["rows"]
            if rec["tensors"]:
                from safetensors.numpy import load_file

                assert set(load_file(str(u / "tensors.safetensors"))) == set(rec["tensors"])
    return leftovers


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("case", "model", "rule", "position") if c in df.columns]
    return df.sort_values(keys).reset_index(drop=True)


def test_sigkilled_study_run_resumes_to_the_uninterrupted_result(tmp_path):
    study = _study(tmp_path / "s")
    ref_out = tmp_path / "ref"
    ref = run_study(study, ref_out, progress=False)
    assert len(ref.done) == UNITS and not ref.failed and not ref.skipped

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
           "PYTHONUNBUFFERED": "1"}
    rng = random.Random(SEED)
    killed_mid_run, leftovers = 0, 0
    for rnd in range(KILLS):
        n0 = _complete_units(out)
        p = subprocess.Popen(_cmd(study, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        if rnd == 0:  # anywhere in the first seconds: start-up, planning, the first manifest, the first units
            until = time.monotonic() + rng.uniform(1.0, 8.0)
            while p.poll() is None and time.monotonic() < until:
                time.sleep(0.01)
        else:  # after 1-4 more units, plus a random fraction of one
            target = n0 + 1 + rng.randrange(4)
            while p.poll() is None and _complete_units(out) < target:
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        rc = p.wait()
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        p.stderr.close()
        if rc == -signal.SIGKILL:
            killed_mid_run += 1
        else:
            assert rc == 0, err[-3000:]
            break
        leftovers += _check_after_kill(out)
    assert killed_mid_run >= 3, f"only {killed_mid_run} kills landed inside a run"
    assert 0 < _complete_units(out) < UNITS  # the kills left work to do
    final = subprocess.run(_cmd(study, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert " 0 failed" in final.stdout

    # nothing left over, nothing twice, the same digests as the uninterrupted run
    for a in ("toy", "toy2"):
        names = sorted(p.name for p in (out / "units" / a).iterdir())
        assert names == sorted(p.name for p in (ref_out / "units" / a).iterdir())
        assert not [n for n in names if n.startswith(TMP_PREFIX)]
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    man, ref_man = Store.open(out).read_manifest(), Store.open(ref_out).read_manifest()
    assert [(u["id"], u["digest"], u["status"]) for u in man["units"]] == [
        (u["id"], u["digest"], u["status"]) for u in ref_man["units"]]
    assert {u["status"] for u in man["units"]} == {"done"} and len(man["units"]) == UNITS
    ids = [u["id"] for u in man["units"]]
    assert len(ids) == len(set(ids))
    # identical values
    got, want = Store.open(out), Store.open(ref_out)
    for a in ("toy", "toy2"):
        gt, wt = got.tables(a), want.tables(a)
        assert set(gt) == set(wt)
        for name in wt:
            # float32 relevance from another process: equal up to the reduction order of its kernels
            pd.testing.assert_frame_equal(_sorted(gt[name]), _sorted(wt[name]), check_exact=False, rtol=1e-4,
                                          atol=1e-7)
    gtens, wtens = got.tensors("toy"), want.tensors("toy")
    assert set(gtens) == set(wtens) and len(wtens) == N_CASES * 2
    for k in wtens:
        np.testing.assert_allclose(gtens[k]["relevance"], wtens[k]["relevance"], rtol=1e-5, atol=1e-7)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["failed"] == 0 and summary["counts"]["done"] + summary["counts"]["current"] == UNITS


def test_ctrl_c_stops_a_study_run_promptly_and_it_resumes(tmp_path):
    study = _study(tmp_path / "s")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
           "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(_cmd(study, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 120
    while p.poll() is None and _complete_units(out) < 2:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    assert p.poll() is None, "the run finished before it could be interrupted"
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 15 and p.returncode == 130, err[-2000:]
    assert "interrupted" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    done = _complete_units(out)
    assert 2 <= done < UNITS and _check_after_kill(out) == 0
    final = subprocess.run(_cmd(study, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0 and " 0 failed" in final.stdout, final.stderr[-3000:]
    assert _complete_units(out) == UNITS
