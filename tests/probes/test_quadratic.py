"""Closed-form tests of the quadratic-fit helpers."""

import math

import numpy as np
import pytest

from trajlab.probes import fit_quadratic, parabola_from_slope, parabola_through, parabola_vertex


def test_fit_quadratic_recovers_exact_parabola_at_any_scale():
    for scale in (1e-4, 1.0, 1e3):
        x = np.linspace(0, 2, 9) * scale
        f = 3.0 * (x / scale) ** 2 - 2.0 * (x / scale) + 0.5
        a, b, c, r2 = fit_quadratic(x, f)
        assert a * scale**2 == pytest.approx(3.0, rel=1e-10)
        assert b * scale == pytest.approx(-2.0, rel=1e-10)
        assert c == pytest.approx(0.5, rel=1e-10)
        assert r2 == pytest.approx(1.0, abs=1e-12)


def test_fit_quadratic_r2_below_one_for_non_parabola_and_errors():
    x = np.linspace(0, 3, 20)
    assert fit_quadratic(x, np.exp(x))[3] < 1.0
    with pytest.raises(ValueError, match="3 distinct"):
        fit_quadratic([0, 1, 1], [0, 1, 1])


def test_vertex_and_three_point_and_slope_parabolas_agree():
    a, b, c = 2.0, -4.0, 5.0
    f = lambda x: a * x * x + b * x + c  # noqa: E731
    assert parabola_vertex(a, b, c) == pytest.approx((1.0, 3.0))
    assert parabola_through([0.3, 1.1, 2.5], [f(0.3), f(1.1), f(2.5)]) == pytest.approx((a, b, c))
    assert parabola_from_slope(c, b, 0.7, f(0.7)) == pytest.approx((a, b, c))
    assert all(math.isnan(v) for v in parabola_vertex(-1.0, 1.0, 0.0))
