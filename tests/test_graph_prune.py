"""Pruning functions on hand-made matrices with known answers, and the streaming cum-mass pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastlens.errors import InputError
from contrastlens.graph.prune import (
    PruneSpec,
    StreamingCumMass,
    cum_mass_threshold,
    prune_coo,
    prune_cum_mass,
    prune_threshold,
)


def test_cum_mass_known_answer():
    # |A| sorted: 5, 3, 1, 1, 0 -> total 10; p = 0.8 needs 8 = 5 + 3 -> tau = 3
    A = np.array([[5.0, 0.0], [-3.0, 1.0], [0.0, -1.0]])
    assert cum_mass_threshold(np.abs(A), 0.8) == 3.0
    np.testing.assert_array_equal(prune_cum_mass(A, 0.8), np.abs(A) >= 3)
    # p = 0.85 needs 8.5 -> the third value (1) is needed; both 1s are kept (ties)
    keep = prune_cum_mass(A, 0.85)
    assert keep.sum() == 4 and not keep[0, 1]
    # p = 0.5 -> 5 alone
    assert prune_cum_mass(A, 0.5).sum() == 1


def test_cum_mass_floor_and_empty():
    assert cum_mass_threshold(np.zeros(4), 0.85) == float("inf")
    assert cum_mass_threshold(np.array([1e-12, 1e-13]), 0.5) == 1e-9


def test_threshold_known_answer():
    A = np.array([[0.02, -0.01, 0.0], [0.005, -0.5, 0.01]])
    np.testing.assert_array_equal(prune_threshold(A, 0.01),
                                  np.array([[True, True, False], [False, True, True]]))
    r, c, v, tau = prune_coo(np.array([0, 1, 1]), np.array([0, 0, 1]), np.array([0.02, 0.005, -0.5]),
                             PruneSpec("threshold", 0.01))
    assert tau == 0.01 and r.tolist() == [0, 1] and c.tolist() == [0, 1] and v.tolist() == pytest.approx([0.02, -0.5])


def test_spec_parsing():
    assert PruneSpec.parse("cum_mass:0.85") == PruneSpec("cum_mass", 0.85)
    assert PruneSpec.parse("cum_mass") == PruneSpec("cum_mass", 0.85)
    assert PruneSpec.parse("threshold:0.01") == PruneSpec("threshold", 0.01)
    assert PruneSpec.parse({"mode": "threshold", "tau": 0.1}) == PruneSpec("threshold", 0.1)
    assert PruneSpec.parse(None) is None
    for bad in ("cum_mass:1.5", "threshold", "foo:1"):
        with pytest.raises(InputError):
            PruneSpec.parse(bad)


@pytest.mark.parametrize("seed", range(5))
def test_streaming_equals_dense(seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(60, 60, generator=g) ** 3 * (torch.rand(60, 60, generator=g) < 0.7)
    A[3, :5] = 0.125  # ties
    p = 0.85
    dense_tau = cum_mass_threshold(A.abs().numpy(), p)
    st = StreamingCumMass(p)
    blocks = [A[i : i + 7] for i in range(0, 60, 7)]
    for b in blocks:
        st.observe(b.abs())
    st.end_pass1()
    cand = torch.cat([b.abs()[st.candidates(b.abs())] for b in blocks])
    tau = st.threshold(cand.numpy())
    assert tau == pytest.approx(dense_tau, rel=0, abs=0)
    kept = (A.abs() >= tau).sum()
    assert int(kept) == int(prune_cum_mass(A.numpy(), p).sum())
