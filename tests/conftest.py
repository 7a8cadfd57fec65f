import functools
import os
from pathlib import Path

import pytest
import torch

# the benchmark files (not shipped with the package) lie beside the repository
os.environ.setdefault("CONTRASTLENS_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "olmo2", "olmo3", "gpt2")
PROMPT = "The capital of France is Paris, and the capital of Italy is"


@functools.cache
def _random_lm(arch: str, attn: str = "sdpa", dtype: str = "float32", seed: int = 0):
    from contrastlens.models.loading import load_model

    return load_model(f"random:{arch}", attn_implementation=attn, dtype=dtype, seed=seed)


@pytest.fixture
def random_lm():
    """random_lm(arch, attn="sdpa", dtype="float32") -> a cached tiny random LoadedModel."""
    return _random_lm


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


# the headless Chromium of the browser tests (a module-scoped fixture; see tests/browser.py)
from tests.browser import browser as browser  # noqa: E402
