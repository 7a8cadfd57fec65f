"""The model cache under concurrency and damage: three processes converting the same GGUF model at once
all succeed (one converts, the others wait), leave no temporary files, and a truncated cached
``model.safetensors`` is rebuilt with a message instead of a raw ``SafetensorError``."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ALIAS = "smollm2-135m-instruct"
CODE = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stderr); "
        "import contrastlens as cl; lm = cl.load_model(sys.argv[1]); print(lm.fingerprint)")


def _needs_model():
    from contrastlens.models.catalog import CATALOG
    from contrastlens.models.loading import _package_dir

    _package_dir(CATALOG[ALIAS].package, CATALOG[ALIAS])  # a clear error when the wheel is missing


def _leftovers(cache):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if ".tmp" in p.name or p.name.endswith(".part"))


def test_three_concurrent_conversions_and_a_truncated_entry(tmp_path):
    _needs_model()
    cache = tmp_path / "cache"
    env = {**os.environ, "CONTRASTLENS_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", CODE, ALIAS], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    fingerprints = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(fingerprints) == 1 and next(iter(fingerprints)).startswith("files:")
    assert sum("once to safetensors" in err for _, err in outs) == 1  # one converted, the others waited
    assert _leftovers(cache) == []
    (entry,) = [p for p in (cache / "models").iterdir() if p.is_dir()]
    weights = entry / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # a crash (or a full disk) cut the cached weights short
        f.truncate(size // 3)
    r = subprocess.run([sys.executable, "-c", CODE, ALIAS], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "does not load" in r.stderr and "rebuilding" in r.stderr and "Traceback" not in r.stderr
    assert weights.stat().st_size == size
    assert r.stdout.strip().splitlines()[-1] in fingerprints  # the same weights again
    assert _leftovers(cache) == []
