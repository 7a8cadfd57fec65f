"""Decoding never uses the deprecated ``past_key_values`` argument of ``generate()`` (removed in
transformers 6); the cache goes to forward calls under the keyword the installed transformers uses."""

import inspect
import warnings

import pytest
import torch

from contrastlens.collect.generate import PrefixCache, generate_greedy, rollout_rows
from contrastlens.models.loading import load_model


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return load_model("random:qwen3")


def greedy(lm, prompt="Write a list of fruits."):
    ids = lm.encode(lm.apply_chat_template(prompt), add_special_tokens=False)
    comp, _ = generate_greedy(lm, [ids], max_new_tokens=12, batch_size=1)[0]
    return ids, comp


def test_no_deprecated_past_key_values_reaches_the_model(lm, monkeypatch):
    """``generate(past_key_values=...)`` is deprecated (removed in transformers 6): decoding must not pass it
    to ``generate`` (nor to ``forward`` where the model takes ``cache``), and emit no such warning."""
    real = lm.model.generate

    def generate(*a, **kw):
        assert "past_key_values" not in kw, "past_key_values passed to generate()"
        return real(*a, **kw)

    monkeypatch.setattr(lm.model, "generate", generate)
    takes_cache = "cache" in inspect.signature(lm.model.forward).parameters
    real_forward = lm.model.forward

    def forward(*a, **kw):
        assert not (takes_cache and "past_key_values" in kw), "past_key_values passed to forward()"
        return real_forward(*a, **kw)

    monkeypatch.setattr(lm.model, "forward", forward)
    ids, comp = greedy(lm)
    full = ids + comp
    pc = PrefixCache(lm, full)
    assert pc.prefix(len(ids) + 3, 2) is not None  # the cached path really runs
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rollout_rows(lm, full, [len(ids) + 1, len(ids) + 3], [comp[1], comp[3]], budgets=[4, 4], cache=pc)
        generate_greedy(lm, [ids, ids[1:]], max_new_tokens=4, batch_size=2)
    assert not [w for w in seen if "past_key_values" in str(w.message)]
