import numpy as np
import pytest

from contrastlens.errors import ContrastLensError
from contrastlens.viz.normalize import colour, normalize


def test_normalisations_exclude_special_tokens():
    r = np.array([10.0, 2.0, -4.0, 1.0])
    special = [True, False, False, False]
    np.testing.assert_allclose(normalize(r, special, "max_abs"), r / 4.0)
    np.testing.assert_allclose(normalize(r, special, "sum_abs"), r / 7.0)
    np.testing.assert_allclose(normalize(r, special, "abs_sum"), r / 1.0)
    np.testing.assert_allclose(normalize(np.zeros(3), None), np.zeros(3))
    with pytest.raises(ContrastLensError, match="unknown normalisation"):
        normalize(r, special, "bogus")


def test_colours_red_for_target_blue_for_contrast():
    r, g, b, a = colour(0.5)
    assert r > b and a == pytest.approx(0.425)
    r, g, b, a = colour(-1.0)
    assert b > r and a == pytest.approx(0.85)
