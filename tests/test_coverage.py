"""The coverage check walks the autograd graph and finds non-linear operations without a rule."""

import pytest
import torch

import contrastlens as cl
from contrastlens.errors import CoverageError
from tests.conftest import ARCHS, PROMPT


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rule", ["attnlrp", "cp-lrp"])
def test_every_supported_architecture_is_covered(random_lm, arch, rule):
    rep = cl.check_coverage(random_lm(arch), PROMPT, 11, 17, rule=rule)
    assert rep.ok and rep.nodes > 50
    assert rep.counts.get("NormRuleBackward", 0) >= 2 * random_lm(arch).num_layers + 1


def test_eager_attention_is_covered(random_lm):
    rep = cl.check_coverage(random_lm("qwen3", "eager"), PROMPT, 11, 17)
    assert rep.ok
    assert rep.counts.get("SoftmaxBackward0", 0) == random_lm("qwen3").num_layers


@pytest.mark.parametrize("planted", ["sigmoid", "product", "raw_norm"])
def test_planted_unruled_op_is_caught(random_lm, planted):
    lm = random_lm("llama")
    blk = lm.model.model.layers[1]
    if planted == "sigmoid":
        h = blk.mlp.register_forward_hook(lambda m, a, y: y * torch.sigmoid(y))
    elif planted == "product":
        h = blk.mlp.register_forward_hook(lambda m, a, y: y * a[0])
    else:  # a norm computed from primitives behind the rules' back
        def raw(m, a, y):
            x = a[0]
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        h = blk.mlp.register_forward_hook(raw)
    try:
        with pytest.raises(CoverageError, match="without an LRP rule"):
            cl.check_coverage(lm, PROMPT, 11, 17)
        rep = cl.check_coverage(lm, PROMPT, 11, 17, raise_on_error=False)
        assert not rep.ok
        expected = {"sigmoid": "SigmoidBackward0", "product": "MulBackward0", "raw_norm": "RsqrtBackward0"}[planted]
        assert expected in rep.uncovered
    finally:
        h.remove()
    assert cl.check_coverage(lm, PROMPT, 11, 17).ok
