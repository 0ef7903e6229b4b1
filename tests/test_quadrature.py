"""infntk.quadrature: 2-D Gauss-Hermite duals against textbook closed forms and the series."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infntk import hermite as H
from infntk.quadrature import dual_quadrature
from tolerances import rel_err_vs_max, tolerance

# Gauss-Hermite on analytic integrands at q <= 1: the rule's error is below rounding (module
# notes: ~1e-14 at order 80), so what is left is ~order ulps of the scale.
SMOOTH_QUAD_RTOL = tolerance(1e-13, "order-80/160 Gauss-Hermite on analytic phi, q <= 1: "
                                    "~order ulps of sqrt(E[phi^2] E[phi^2])")


def _erf_dual(q1, q2, s):
    nngp = 2 / np.pi * np.arcsin(2 * s / np.sqrt((1 + 2 * q1) * (1 + 2 * q2)))
    dot = 4 / np.pi / np.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * s * s)
    return nngp, dot


def _sin_dual(q1, q2, s):
    # E[sin u sin v] = exp(-(q1+q2)/2) sinh(s); E[cos u cos v] = exp(-(q1+q2)/2) cosh(s)
    e = np.exp(-(q1 + q2) / 2)
    return e * np.sinh(s), e * np.cosh(s)


def _relu_dual(q1, q2, s):
    rho = np.clip(s / np.sqrt(q1 * q2), -1, 1)
    th = np.arccos(rho)
    return np.sqrt(q1 * q2) / (2 * np.pi) * (np.sin(th) + (np.pi - th) * rho), (np.pi - th) / (2 * np.pi)


@settings(max_examples=15)
@given(q1=st.floats(0.05, 1.0), q2=st.floats(0.05, 1.0), rho=st.floats(-1.0, 1.0))
def test_smooth_closed_forms(q1, q2, rho):
    """Smooth activations, q <= 1: order 80 is exact to ~1e-14 (module notes)."""
    s = rho * math.sqrt(q1 * q2)
    for name, ref in (("erf", _erf_dual), ("sin", _sin_dual)):
        n, d = dual_quadrature(name, q1, q2, rho=rho, order=80)
        rn, rd = ref(q1, q2, s)
        scale = math.sqrt(H.second_moment(name, q1) * H.second_moment(name, q2))
        dscale = math.sqrt(H.second_moment(name, q1, derivative=True)
                           * H.second_moment(name, q2, derivative=True))
        assert abs(n - rn) <= SMOOTH_QUAD_RTOL * scale, name
        assert abs(d - rd) <= SMOOTH_QUAD_RTOL * dscale, name


def test_vectorized_against_series_for_tanh():
    rng = np.random.default_rng(3)
    q1, q2 = rng.uniform(0.1, 1.0, (2, 4, 5))
    rho = rng.uniform(-1, 1, (4, 5))
    n, d = dual_quadrature("tanh", q1, q2, rho=rho, order=160)
    assert n.shape == (4, 5) and d.shape == (4, 5)
    ser = H.dual_series("tanh", q1, q2, rho, 150)
    assert np.all(np.abs(n - ser.nngp) <= ser.nngp_bound + SMOOTH_QUAD_RTOL)
    assert np.all(np.abs(d - ser.ntk_dot) <= ser.dot_bound + SMOOTH_QUAD_RTOL)
    # one pair at a time gives the same as the vectorized call
    n0 = dual_quadrature("tanh", q1[1, 2], q2[1, 2], rho=rho[1, 2],
                         order=160, derivative=False)
    assert abs(n0 - n[1, 2]) <= tolerance(1e-15, "one pair vs the vectorized call: a few ulp")


def test_kinked_accuracy_is_as_documented():
    """relu converges only algebraically: documented 3e-3 (nngp, / E[phi^2]) at order 80."""
    rho = np.linspace(-1, 1, 21)
    errs = []
    for order in (40, 80, 160):
        n, d = dual_quadrature("relu", 1.0, 1.0, rho=rho, order=order)
        rn, rd = _relu_dual(1.0, 1.0, rho)
        errs.append(rel_err_vs_max(n, rn))
    assert errs[0] > errs[1] > errs[2]
    # |K| max = 1/2 = E[phi^2]: rel_err_vs_max doubles the documented figure
    assert errs[1] < tolerance(4e-3, "the documented relu error at order 80, with margin") * 2
    # no false claim of spectral accuracy for kinks (algebraic: ~1e-3 at order 160)
    assert errs[2] > tolerance(1e-6, "far below the algebraic error, far above rounding")


def test_zero_variance_means_independent():
    # Degenerate rows (docs/conventions.md): q1 = 0 -> correlation 0, u = 0 exactly.
    # Tolerance: 80-point rule, a few ulps.
    n, d = dual_quadrature("cos", 0.0, 1.0, rho=0.0)
    few_ulps = tolerance(4e-15, "80-point rule on an analytic integrand: a few ulps of O(1)")
    assert abs(n - math.exp(-0.5)) < few_ulps   # cos(0) E[cos v], E[cos v] = exp(-q/2)
    n, d = dual_quadrature("sin", 0.0, 2.0, rho=0.0)
    assert abs(d - math.exp(-1.0)) < few_ulps   # sin' = cos: cos(0) E[cos v]


def test_bad_arguments():
    with pytest.raises(ValueError, match="rho must satisfy"):
        dual_quadrature("tanh", 1.0, 1.0, rho=1.5)
    with pytest.raises(ValueError, match="q1 and q2"):
        dual_quadrature("tanh", -1.0, 1.0, rho=0.0)
    with pytest.raises(ValueError, match="NaN"):
        dual_quadrature("tanh", np.nan, 1.0, rho=0.0)
    with pytest.raises(ValueError, match="order"):
        dual_quadrature("tanh", 1.0, 1.0, rho=0.0, order=1)
