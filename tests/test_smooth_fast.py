"""The one-division plain pass of sin, cos and gaussian and the stable-route prefilter.

* ``trig_plain_factored`` (sin, cos from the per-row ``exp(-q/2)`` and one ``expm1``) and
  ``gaussian_plain_recip`` against the mpmath duals of tests/oracles/mp_reference.py (no code
  shared with infntk._duals), on their whole range, and the reciprocal of the caller's
  denominator they return, at both ends of its range;
* the route criteria at their boundaries: rows on both sides of ``TRIG_FACTORED_MAX`` (sin,
  cos), bias variances on both sides of ``recip_den_ok``'s bound, whole networks against the
  mpmath recursion to the closed-form contract;
* ``stable_candidates`` + ``stable_pairs`` select exactly the pairs of ``stable_pairs_all``
  with the same values (bitwise), NaN gaps and variances outside the plain range included.
"""
import math

import numpy as np
import pytest
from numba import njit

import infntk
from infntk import activations
from infntk._backends._common import stable_candidates, stable_pairs, stable_pairs_all
from infntk._duals import (TRIG_FACTORED_MAX, gaussian_plain_recip, recip_den_ok,
                           trig_factored_ok, trig_plain_factored)
from oracles.mp_reference import mp_dual, mp_kernels
from tolerances import CLOSED_FORM_RTOL, rel_err_vs_max, tolerance

EPS = np.finfo(float).eps
# as tests/test_smooth_route.py's plain duals: a few roundings of sqrt(k11 k22) per output
PLAIN_ULPS = tolerance(16.0, "plain duals: a few roundings of sqrt(k11 k22), per output")
RECIP_ULPS = tolerance(4.0, "1/den from one division and two products: three roundings")


@njit(cache=True)
def _trig_all(is_sin, q1, q2, A, B, den):
    n = q1.shape[0]
    k = np.empty(n)
    kd = np.empty(n)
    iden = np.empty(n)
    for i in range(n):
        e12 = math.exp(-0.5 * q1[i]) * math.exp(-0.5 * q2[i])
        k[i], kd[i], iden[i] = trig_plain_factored(is_sin, e12, A[i], B[i], den[i])
    return k, kd, iden


@njit(cache=True)
def _gauss_all(q1, q2, A, B, den):
    n = q1.shape[0]
    k = np.empty(n)
    kd = np.empty(n)
    iden = np.empty(n)
    for i in range(n):
        k[i], kd[i], iden[i] = gaussian_plain_recip(q1[i], q2[i], A[i], B[i], den[i])
    return k, kd, iden


def _states(rng, n, lo, hi):
    """Pair states with variances 10^lo .. 10^hi, correlations over (-1, 1) and within
    1e-12 .. 1e-2 of +-1; the caller's denominators over [1e-100, 1e101]."""
    q1 = 10.0 ** rng.uniform(lo, hi, n)
    q2 = np.minimum(q1 * 10.0 ** rng.uniform(-1, 1, n), 10.0 ** hi)
    m = np.sqrt(q1) * np.sqrt(q2)
    t = np.concatenate([rng.uniform(-1, 1, n // 2), 1 - 10.0 ** rng.uniform(-12, -2, n // 4),
                        -1 + 10.0 ** rng.uniform(-12, -2, n - n // 2 - n // 4)])
    den = 10.0 ** rng.uniform(-100, 101, n)
    return q1, q2, m * (1 - t), m * (1 + t), m * t, den


def _check_against_mp(name, q1, q2, A, B, s, den, k, kd, iden):
    for i in range(len(q1)):
        rk, rkd = mp_dual(name, q1[i], q2[i], s[i], dps=40)
        k11, kd11 = mp_dual(name, q1[i], q1[i], q1[i], same=True, dps=40)
        k22, kd22 = mp_dual(name, q2[i], q2[i], q2[i], same=True, dps=40)
        sk = float((k11 * k22) ** 0.5)
        skd = float((kd11 * kd22) ** 0.5)
        m = np.sqrt(q1[i] * q2[i])   # the state's own rounding moves k by kd * eps * m
        assert abs(k[i] - float(rk)) <= PLAIN_ULPS * EPS * (sk + skd * m), (q1[i], q2[i], s[i])
        assert abs(kd[i] - float(rkd)) <= PLAIN_ULPS * EPS * (skd + sk + skd * m), (
            q1[i], q2[i], s[i])
        assert abs(iden[i] * den[i] - 1.0) <= RECIP_ULPS * EPS, den[i]


@pytest.mark.parametrize("name", ["sin", "cos"])
def test_trig_factored_against_mpmath(name):
    rng = np.random.default_rng(21)
    # the whole range up to TRIG_FACTORED_MAX, and a band just below it
    parts = [_states(rng, 80, -8, math.log10(TRIG_FACTORED_MAX)),
             _states(rng, 40, math.log10(0.8 * TRIG_FACTORED_MAX), math.log10(TRIG_FACTORED_MAX))]
    q1, q2, A, B, s, den = (np.concatenate(c) for c in zip(*parts))
    assert q1.max() <= TRIG_FACTORED_MAX and q2.max() <= TRIG_FACTORED_MAX
    k, kd, iden = _trig_all(name == "sin", q1, q2, A, B, den)
    _check_against_mp(name, q1, q2, A, B, s, den, k, kd, iden)


def test_gaussian_recip_against_mpmath():
    q1, q2, A, B, s, den = _states(np.random.default_rng(22), 120, -8, 4)
    k, kd, iden = _gauss_all(q1, q2, A, B, den)
    _check_against_mp("gaussian", q1, q2, A, B, s, den, k, kd, iden)


@njit(cache=True)
def _route_flags(q1, q2, w2, b2):
    return trig_factored_ok(q1, q2), recip_den_ok(w2, b2)


def test_route_predicates_at_their_bounds():
    top = TRIG_FACTORED_MAX
    assert _route_flags(top, top, 1.0, 0.0) == (True, True)
    assert not _route_flags(np.nextafter(top, 10 * top), 1.0, 1.0, 0.0)[0]
    assert not _route_flags(1.0, np.nextafter(top, 10 * top), 1.0, 0.0)[0]
    assert not _route_flags(math.nan, 1.0, 1.0, 0.0)[0]
    assert _route_flags(1.0, 1.0, 1.0, 1e-100)[1]
    assert not _route_flags(1.0, 1.0, 1.0, 0.99e-100)[1]
    assert _route_flags(1.0, 1.0, 2.5e99, 1.0)[1]
    assert not _route_flags(1.0, 1.0, 2.6e99, 1.0)[1]


def _rows_spread(rng, d=4):
    """Rows whose norms spread the first layer's variance over ~0.5 .. 100, with nearly
    identical and nearly antipodal pairs."""
    X = rng.normal(size=(6, d)) * np.array([0.5, 1.0, 2.0, 3.0, 5.0, 7.0])[:, None]
    X[1] = X[0] * (1 + 1e-9)
    X[2] = X[4] + 1e-8 * rng.normal(size=d)
    X[3] = -X[5] * (1 - 1e-9)
    return X


@pytest.mark.parametrize("name,w_std,b_std", [("sin", 1.5, 0.3), ("cos", 1.5, 0.3),
                                              ("cos", 3.2, 0.2), ("sin", 3.2, 0.0)])
def test_trig_route_boundary_networks(name, w_std, b_std):
    """Rows on both sides of TRIG_FACTORED_MAX (asserted from the engine's own variances),
    symmetric and cross Gram, against the mpmath recursion."""
    X = _rows_spread(np.random.default_rng(23))
    Y = X[::-1][:4] * 0.9
    depth = 4
    net = infntk.FCNet(name, depth=depth, w_std=w_std, b_std=b_std)
    q = net._engine(X.shape[1]).rows(X)[0].q[:, :depth]
    assert (q <= TRIG_FACTORED_MAX).any() and (q > TRIG_FACTORED_MAX).any()
    for args in ((X,), (X, Y)):
        ref_nngp, ref_ntk = mp_kernels(name, *args, depth=depth, w_std=w_std, b_std=b_std)
        k = net.kernels(*args)
        assert rel_err_vs_max(k.nngp, ref_nngp) <= CLOSED_FORM_RTOL
        assert rel_err_vs_max(k.ntk, ref_ntk) <= CLOSED_FORM_RTOL


@pytest.mark.parametrize("name", ["sin", "gaussian"])
@pytest.mark.parametrize("b_std", [1.01e-50, 0.99e-50])
def test_bias_bound_networks(name, b_std):
    """b2 just above and just below recip_den_ok's 1e-100 (one-division pass, resp. the
    two-division one), against the mpmath recursion."""
    X = _rows_spread(np.random.default_rng(24))
    depth = 3
    ref_nngp, ref_ntk = mp_kernels(name, X, depth=depth, w_std=1.4, b_std=b_std)
    k = infntk.FCNet(name, depth=depth, w_std=1.4, b_std=b_std).kernels(X)
    assert rel_err_vs_max(k.nngp, ref_nngp) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(k.ntk, ref_ntk) <= CLOSED_FORM_RTOL


@njit(cache=True)
def _both_selections(family, qa, ra, s1, ga, q2, r2, s2, g2, A, B, D):
    n = A.shape[0]
    flag = np.empty(n, dtype=np.uint8)
    fj1 = np.empty(n, dtype=np.int64)
    fv1 = np.empty((n, 6))
    n1 = stable_pairs_all(family, qa, ra, s1, ga, q2, r2, s2, g2, A, B, D, n, flag, fj1, fv1)
    cand = np.empty(n, dtype=np.int64)
    fj2 = np.empty(n, dtype=np.int64)
    fv2 = np.empty((n, 6))
    nc = stable_candidates(family, qa, q2.max(), ra * math.sqrt(q2.max()), A, B, D, n, flag,
                           cand)
    n2 = -1
    if nc >= 0:
        n2 = stable_pairs(family, qa, ra, s1, ga, q2, r2, s2, g2, A, B, D, cand, nc, fj2, fv2)
    return n1, fj1[:n1].copy(), fv1[:n1, :5].copy(), nc, n2, fj2[:max(n2, 0)].copy(), \
        fv2[:max(n2, 0), :5].copy()


@pytest.mark.parametrize("name", ["erf", "sin", "cos", "gaussian", "gelu"])
def test_prefilter_selects_the_same_pairs(name):
    code = activations.get_activation(name).family.code
    rng = np.random.default_rng(25)
    n = 400
    qa = 1.3
    q2 = 10.0 ** rng.uniform(-2, 1, n)
    r2 = np.sqrt(q2)
    m = math.sqrt(qa) * r2
    # gaps from O(m) down to 1e-14 m on both sides, around the 0.01 and GELU's 0.02 thresholds
    t = np.concatenate([rng.uniform(-1, 1, n // 4), 1 - 10.0 ** rng.uniform(-14, 0, n // 4),
                        -1 + 10.0 ** rng.uniform(-14, 0, n // 4),
                        1 - rng.uniform(0.005, 0.05, n - 3 * (n // 4))])
    A = m * (1 - t)
    B = m * (1 + t)
    A[:5] = np.nan                    # NaN gaps count as small
    D = np.full(n, np.nan)
    D[rng.choice(n, 20, replace=False)] = rng.normal(size=20) * 1e-9   # carried pairs
    s2 = np.sqrt(np.abs(rng.normal(size=n))) + 0.1
    g2 = 10.0 ** rng.uniform(-2, 2, n)        # gains on both sides of the threshold
    for ga in (0.5, 3.0):
        n1, fj1, fv1, nc, n2, fj2, fv2 = _both_selections(code, qa, math.sqrt(qa), 0.7, ga, q2,
                                                          r2, s2, g2, A, B, D)
        assert nc >= n2 == n1 > 20
        assert np.array_equal(fj1, fj2)
        assert np.array_equal(fv1, fv2, equal_nan=True)
    # a variance outside the plain range: the prefilter declines (-1), every pair is tested
    q2[7] = 1e80
    _, _, _, nc, _, _, _ = _both_selections(code, qa, math.sqrt(qa), 0.7, 3.0, q2, np.sqrt(q2),
                                            s2, g2, A, B, D)
    assert nc == -1
