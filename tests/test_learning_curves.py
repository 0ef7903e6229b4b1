"""eigenlearning against closed forms, its invariants, and kernel ridge regression on the sphere."""
import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, strategies as st

import infntk
from infntk.learning_curves import (effective_regularization, eigenlearning, empirical_modes,
                                    sphere_modes)
from infntk.spectrum import multiplicity
from tolerances import CLOSED_FORM_RTOL, mc_tolerance, tolerance

#: kappa comes from Brent's method in log kappa (a few ulp) and enters rational formulas once
ROOT_RTOL = tolerance(1e-12, "kappa to a few ulp by Brent's method, then O(M) rounded sums")


def single_mode(lam, v, n, ridge, noise):
    """Closed form for one mode at 50 digits (the direct formula cancels near n = 1):
    n kappa^2 + (n lam - lam - ridge) kappa - ridge lam = 0."""
    with mpmath.workdps(50):
        lam, v, n, ridge, noise = map(mpmath.mpf, (lam, v, n, ridge, noise))
        b = n * lam - lam - ridge
        if ridge == 0:
            kappa = max(lam * (1 / n - 1), mpmath.mpf(0))
        else:
            kappa = (-b + mpmath.sqrt(b * b + 4 * n * ridge * lam)) / (2 * n)
        if kappa == 0:
            return 0.0 if noise == 0 else (float(n / (n - 1) * noise) if n > 1 else math.inf)
        L = lam / (lam + kappa)
        return float(n / (n - L ** 2) * ((1 - L) ** 2 * v ** 2 + noise))


@pytest.mark.parametrize("lam,v,n,ridge,noise", [
    (1.0, 1.0, 0.5, 0.0, 0.0), (0.3, -2.0, 0.2, 0.0, 0.1), (1.0, 1.0, 3.0, 0.5, 0.2),
    (1e-3, 0.7, 10.0, 1e-2, 0.0), (2.0, 1.0, 2.0, 0.0, 0.3), (5.0, 1.0, 1.0, 1e-8, 0.0)])
def test_single_mode_closed_form(lam, v, n, ridge, noise):
    got = eigenlearning([lam], [v], n, ridge=ridge, noise=noise)
    want = single_mode(lam, v, n, ridge, noise)
    assert got == pytest.approx(want, rel=ROOT_RTOL, abs=0)


def test_flat_spectrum_closed_form():
    """M equal eigenvalues, ridgeless: MSE = (1 - n/M)|v|^2 + noise M/(M - n) for n < M,
    n/(n - M) noise after the peak, and exactly 0 / inf at n = M without / with noise."""
    M, lam = 50, 0.02
    v = np.random.default_rng(0).standard_normal(M)
    power = float(v @ v)
    n = np.array([1.0, 7.0, 25.0, 49.0, 49.9])
    got = eigenlearning(np.full(M, lam), v, n, noise=0.3)
    want = (1 - n / M) * power + 0.3 * M / (M - n)
    np.testing.assert_allclose(got, want, rtol=ROOT_RTOL, atol=0)
    after = np.array([51.0, 80.0, 400.0])
    np.testing.assert_allclose(eigenlearning(np.full(M, lam), v, after, noise=0.3),
                               0.3 * after / (after - M), rtol=CLOSED_FORM_RTOL)
    assert eigenlearning(np.full(M, lam), v, M) == 0.0
    assert eigenlearning(np.full(M, lam), v, M, noise=0.1) == math.inf
    # an unlearnable (zero-eigenvalue) mode stays as residual after the threshold
    lam0 = np.r_[np.full(M, lam), 0.0]
    v0 = np.r_[v, 0.5]
    assert eigenlearning(lam0, v0, 2 * M) == pytest.approx(2.0 * 0.25, rel=CLOSED_FORM_RTOL)


def test_multiplicities_equal_repeated_modes():
    lam = np.array([1.0, 0.1, 0.01])
    mult = np.array([1, 3, 9])
    v = np.array([0.5, 0.2, 0.1])
    n = np.array([0.5, 2.0, 6.0, 12.9, 20.0])
    rep = eigenlearning(np.repeat(lam, mult), np.repeat(v, mult), n, ridge=0.0, noise=0.05)
    grp = eigenlearning(lam, v, n, noise=0.05, multiplicities=mult)
    np.testing.assert_allclose(grp, rep, rtol=ROOT_RTOL)


spectra = st.integers(1, 25).flatmap(lambda M: st.tuples(
    st.lists(st.floats(1e-6, 1.0), min_size=M, max_size=M),
    st.lists(st.floats(-1.0, 1.0), min_size=M, max_size=M)))


@given(spectra, st.floats(0.0, 1.0), st.floats(0.05, 60.0))
def test_kappa_solves_its_equation_and_conservation(spec, ridge, n):
    lam, v = map(np.array, spec)
    res = effective_regularization(lam, v, n, ridge=ridge)
    kappa, L = res.kappa[0], res.learnability[0]
    if kappa > 0:
        lhs = float(np.sum(lam / (lam + kappa))) + ridge / kappa
        assert lhs == pytest.approx(n, rel=ROOT_RTOL)
        assert np.all((L > 0) & (L <= 1))   # L rounds to 1 when kappa << lam
    else:   # ridgeless (a ridge whose ridge / n underflows counts as none)
        assert ridge / n < np.finfo(float).tiny and n >= lam.size
    assert float(L.sum()) <= n * (1 + ROOT_RTOL)    # learnability is conserved: sum L_i <= n


@given(spectra, st.floats(0.0, 1.0), st.floats(0.05, 30.0), st.floats(1.01, 3.0))
def test_more_data_learns_every_mode_better(spec, ridge, n, factor):
    """kappa decreases and every L_i increases with n; E0 >= 1.

    (The noiseless MSE itself is *not* monotone in n: unlearned target power acts as noise,
    e.g. lam = [1, 1/8], v = [0, 1], ridgeless: MSE(1) > MSE(0.5), Canatar et al. 2021.)"""
    lam, v = map(np.array, spec)
    res = effective_regularization(lam, v, [n, factor * n], ridge=ridge)
    assert res.kappa[1] <= res.kappa[0]
    assert np.all(res.learnability[1] >= res.learnability[0] * (1 - ROOT_RTOL))
    assert np.all(res.e0 >= 1 - ROOT_RTOL)


@given(spectra, st.floats(0.0, 1.0), st.floats(0.05, 30.0), st.floats(0.0, 1.0),
       st.floats(1e-3, 1.0))
def test_noise_and_ridge_monotone(spec, ridge, n, noise, extra):
    lam, v = map(np.array, spec)
    a = eigenlearning(lam, v, n, ridge=ridge, noise=noise)
    b = eigenlearning(lam, v, n, ridge=ridge, noise=noise + extra)
    assert b >= a
    # kappa grows with the ridge
    k1 = effective_regularization(lam, v, n, ridge=ridge).kappa[0]
    k2 = effective_regularization(lam, v, n, ridge=ridge + extra).kappa[0]
    assert k2 >= k1


def test_near_the_peak_no_cancellation():
    """n -> M from below: E0 = M/(M - n) exactly for a flat spectrum, even at M - n = 1e-9."""
    M = 20
    n = M - 1e-9
    res = effective_regularization(np.ones(M), np.zeros(M), n, noise=1.0)
    assert res.e0[0] == pytest.approx(M / (M - n), rel=tolerance(
        1e-6, "M - n = 1e-9 is itself rounded to ~1e-15/1e-9 relative"))


def test_sphere_modes_closed_forms():
    """g(s) = s has all its power 1/d in degree 1; g = P_2^{(d)} has power 1/N(d, 2)."""
    d = 7
    net = infntk.FCNet("erf", depth=2, w_std=1.3, b_std=0.2)
    m = sphere_modes(net, lambda s: s, d, kmax=6)
    np.testing.assert_allclose(m.power, [0, 1 / d, 0, 0, 0, 0, 0], atol=1e-15)
    p2 = lambda s: (d * s ** 2 - 1) / (d - 1)
    m2 = sphere_modes(net, p2, d, kmax=6)
    want = np.zeros(7)
    want[2] = 1 / multiplicity(d, 2)[2]
    np.testing.assert_allclose(m2.power, want, atol=1e-15)
    assert abs(m2.tail_power) < 1e-14
    # the kernel's diagonal: sum_k N mu_k + tail = kappa(1)
    diag = float(net.dot_product_fn(np.array([1.0])).ntk[0])
    assert float(m.multiplicities @ m.eigenvalues) + m.tail_trace == pytest.approx(
        diag, rel=CLOSED_FORM_RTOL)


def test_empirical_modes_reconstruct_gram():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3))
    K = infntk.FCNet("relu", depth=2).ntk(X)
    y = np.sin(X[:, 0])
    lam, v = empirical_modes(K, y)
    assert np.all(np.diff(lam) <= 0)
    assert float(v @ v) == pytest.approx(float(np.mean(y ** 2)), rel=CLOSED_FORM_RTOL)
    assert float(lam.sum()) == pytest.approx(float(np.trace(K)) / 40, rel=CLOSED_FORM_RTOL)


def _sphere(rng, n, d):
    X = rng.standard_normal((n, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True) * math.sqrt(d)


@pytest.mark.parametrize("ridge,noise", [(0.0, 0.0), (1.0, 0.5)])
def test_prediction_matches_kernel_ridge_on_the_sphere(ridge, noise):
    """Trial-averaged test MSE of NTK ridge regression vs the prediction (d = 10).

    The prediction includes the test labels' noise: compare with (noiseless error + noise)."""
    d, trials, n_test = 10, 24, 400
    net = infntk.FCNet("relu", depth=1, b_std=0.1)
    g = lambda s: math.sqrt(d) * s + d * s ** 2 - 1
    ns = [20, 80]
    pred = sphere_modes(net, g, d, kmax=30).learning_curve(ns, ridge=ridge, noise=noise)
    rng = np.random.default_rng(2024)
    Xt = _sphere(rng, n_test, d)
    yt = g(Xt[:, 0] / math.sqrt(d))
    for n, p in zip(ns, pred):
        errs = []
        for _ in range(trials):
            X = _sphere(rng, n, d)
            y = g(X[:, 0] / math.sqrt(d)) + math.sqrt(noise) * rng.standard_normal(n)
            k = net.ntk(np.vstack([X, Xt]), X)
            f = k[n:] @ np.linalg.solve(k[:n] + ridge * np.eye(n), y)
            errs.append(np.mean((f - yt) ** 2) + noise)
        errs = np.asarray(errs)
        se = errs.std(ddof=1) / math.sqrt(trials)
        bias = tolerance(0.06 * p, "deterministic-equivalent error of eigenlearning at n >= 20, "
                                   "d = 10 (measured 1-6% with 40+ trials)")
        assert abs(errs.mean() - p) <= mc_tolerance(se) + bias, (n, errs.mean(), se, p)


@pytest.mark.parametrize("kwargs,match", [
    (dict(eigenvalues=[-1.0], coefficients=[1.0], n=1), "eigenvalues"),
    (dict(eigenvalues=[1.0, 2.0], coefficients=[1.0], n=1), "coefficients"),
    (dict(eigenvalues=[[1.0]], coefficients=[1.0], n=1), "eigenvalues"),
    (dict(eigenvalues=[1.0], coefficients=[np.nan], n=1), "coefficients"),
    (dict(eigenvalues=[1.0], coefficients=[1.0], n=0), "n"),
    (dict(eigenvalues=[1.0], coefficients=[1.0], n=[]), "n"),
    (dict(eigenvalues=[1.0], coefficients=[1.0], n=1, ridge=-1.0), "ridge"),
    (dict(eigenvalues=[1.0], coefficients=[1.0], n=1, noise=math.inf), "noise"),
    (dict(eigenvalues=[1.0], coefficients=[1.0], n=1, multiplicities=[1, 2]), "multiplicities"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        eigenlearning(**kwargs)
