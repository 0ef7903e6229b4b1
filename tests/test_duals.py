"""The compiled closed-form duals (infntk._duals.pair_dual) at random (q1, q2, rho).

Two references: the 50-digit closed forms of tests/oracles/mp_reference.py (many hypothesis
draws; that oracle is itself checked against quadrature in test_reference_selfcheck.py), and
direct 2-D mpmath quadrature (tests/oracles/mp_quadrature.py) of the registry's phi and phi'
(a few draws per activation: it is slow).
Errors are measured against the Cauchy-Schwarz scale sqrt(E[phi(u)^2] E[phi(v)^2]).
"""
import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infntk._duals import diag_dual, pair_dual
from infntk.activations import get_activation
from oracles.mp_quadrature import quad_expect
from oracles.mp_reference import mp_dual
from strategies import CLOSED_FORM_ACTIVATIONS, activation_id
from tolerances import QUADRATURE_RTOL, tolerance

# float64 closed forms vs their 50-digit values at one (q1, q2, rho): a handful of roundings
# in arccos/sqrt/erf, relative to the Cauchy-Schwarz scale; the small gaps (1 - rho ~ 1e-12)
# are held relative to themselves, plus a few ulp of the scale where a gap is ~0.
DUAL_RTOL = tolerance(1e-13, "one closed-form dual in float64: ~10-50 roundings of the scale")
GAP_RTOL = tolerance(1e-12, "gaps sqrt(k11 k22) -+ k relative to themselves (cancellation-free "
                            "forms; ~1e3 ulp for the series branches near rho = +-1)")
GAP_ATOL = tolerance(1e-15, "a gap that is ~0: a few ulp of the scale")

CASES = pytest.mark.parametrize("case", CLOSED_FORM_ACTIVATIONS, ids=activation_id)
q_values = st.floats(0.01, 10.0)
rhos = st.one_of(st.floats(-1.0, 1.0),
                 st.floats(1e-12, 1e-2).map(lambda e: 1.0 - e),
                 st.floats(1e-12, 1e-2).map(lambda e: e - 1.0))


def _state(q1, q2, rho):
    """The engine's pair state: the small gap is authoritative (A for rho >= 0, else B)."""
    m = math.sqrt(q1) * math.sqrt(q2)
    if rho >= 0:
        A = m * (1.0 - rho)
        return A, 2.0 * m - A
    B = m * (1.0 + rho)
    return 2.0 * m - B, B


def _compiled(act, q1, q2, rho):
    fam, p0, p1 = act.family
    A, B = _state(q1, q2, rho)
    k11 = diag_dual(fam, p0, p1, q1)[0]
    k22 = diag_dual(fam, p0, p1, q2)[0]
    k, kd, kA, kB = pair_dual(fam, p0, p1, q1, q2, A, B, math.sqrt(k11), math.sqrt(k22))
    return k, kd, kA, kB, k11, k22


def _mp_s(q1, q2, rho):
    """The covariance of that state, exactly: s = sqrt(q1 q2) - A (or B - sqrt(q1 q2))."""
    A, B = _state(q1, q2, rho)
    m = mp.sqrt(mp.mpf(q1)) * mp.sqrt(mp.mpf(q2))
    return m - mp.mpf(A) if rho >= 0 else mp.mpf(B) - m


@CASES
@settings(max_examples=60)
@given(q1=q_values, q2=q_values, rho=rhos)
def test_compiled_duals_match_50_digit_closed_forms(case, q1, q2, rho):
    name, params = case
    act = get_activation(name, **params)
    k, kd, kA, kB, k11, k22 = _compiled(act, q1, q2, rho)
    with mp.workdps(50):
        F, G = mp_dual(name, mp.mpf(q1), mp.mpf(q2), _mp_s(q1, q2, rho), **params)
        F11, G11 = mp_dual(name, mp.mpf(q1), mp.mpf(q1), mp.mpf(q1), same=True, **params)
        F22, G22 = mp_dual(name, mp.mpf(q2), mp.mpf(q2), mp.mpf(q2), same=True, **params)
        scale = float(mp.sqrt(F11 * F22)) or 1.0
        dscale = float(mp.sqrt(G11 * G22)) or 1.0
        assert abs(k - float(F)) <= DUAL_RTOL * scale
        assert abs(kd - float(G)) <= DUAL_RTOL * dscale
        # the gaps, relative to themselves where the closed form promises it
        gapA = mp.sqrt(F11 * F22) - F
        gapB = mp.sqrt(F11 * F22) + F
        assert abs(kA - float(gapA)) <= GAP_RTOL * float(gapA) + GAP_ATOL * scale
        assert abs(kB - float(gapB)) <= GAP_RTOL * float(gapB) + GAP_ATOL * scale


@CASES
@settings(max_examples=3)
@given(q1=st.floats(0.1, 3.0), q2=st.floats(0.1, 3.0), rho=st.floats(-0.99, 0.99))
def test_compiled_duals_match_quadrature(case, q1, q2, rho):
    name, params = case
    act = get_activation(name, **params)
    k, kd, _, _, k11, k22 = _compiled(act, q1, q2, rho)
    with mp.workdps(20):
        rho_mp = _mp_s(q1, q2, rho) / (mp.sqrt(q1) * mp.sqrt(q2))
        kinked = bool(act.kinks)
        qF = quad_expect(act.mp_fn, act.mp_fn, mp.mpf(q1), mp.mpf(q2), rho_mp, kinked)
        qG = quad_expect(act.mp_deriv, act.mp_deriv, mp.mpf(q1), mp.mpf(q2), rho_mp, kinked)
    scale = math.sqrt(k11 * k22) or 1.0
    kd11, kd22 = (diag_dual(*act.family, q)[1] for q in (q1, q2))
    dscale = math.sqrt(kd11 * kd22) or 1.0
    assert abs(k - float(qF)) <= QUADRATURE_RTOL * scale
    assert abs(kd - float(qG)) <= QUADRATURE_RTOL * dscale
