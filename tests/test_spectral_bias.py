"""Spectral bias in time: the spectrum's prediction against the exact kernel dynamics on the
circle (circulant Gram: exact eigenvectors, eigenvalues computed independently by a DFT of the
Gram's first row) and against a trained finite network."""
import math

import numpy as np
import pytest

import infntk
from infntk import dynamics
from infntk.data import sample
from infntk.spectral_bias import fit_steps, spectral_bias, sphere_inputs, zonal_harmonics
from infntk.spectrum import sphere_eigenvalues
from tolerances import CLOSED_FORM_RTOL, tolerance

NET = infntk.FCNet("relu", depth=1, b_std=0.5)
N = 64
KS = [1, 2, 4, 6]


def grid_eigenvalues(net, n, ks):
    """Eigenvalues of K/n on the n-point circle grid for cos(k theta): the DFT of the first row
    of the circulant Gram (no spectrum, no quadrature involved)."""
    X = sphere_inputs(n, 2)
    row = net.ntk(X[:1], X)[0]
    theta = 2 * math.pi * np.arange(n) / n
    return np.array([row @ np.cos(k * theta) / n for k in ks])


def alias_bound(net, n, ks):
    """sum_{j>=1} (mu_{jn-k} + mu_{jn+k}) from the spectrum up to degree 6n, doubled: for a
    relu network mu_m ~ m^-2, so the aliases beyond 6n add less than the ones counted."""
    mu = sphere_eigenvalues(net, 2, 6 * n + max(ks)).mu
    return np.array([2 * sum(abs(mu[j * n - k]) + abs(mu[j * n + k]) for j in range(1, 6))
                     for k in ks])


def test_gradient_flow_on_the_analytic_gram_decays_like_the_spectrum():
    """Residual of gradient flow (infntk.dynamics, analytic Gram) along cos(k theta) is
    exp(-lr lam_k t) exactly (lam_k the grid eigenvalue), and lam_k = mu_k up to aliasing."""
    X = sphere_inputs(N, 2)
    H = zonal_harmonics(X, KS)
    U = H / np.linalg.norm(H, axis=0)
    y = H.sum(1)
    K = NET.ntk(X)
    lr = 1.0
    t = np.array([0.0, 3.0, 30.0, 300.0])
    f = dynamics.gradient_flow(K, None, y, t=t, lr=lr).train
    a = (f - y) @ U
    lam = grid_eigenvalues(NET, N, KS)
    np.testing.assert_allclose(a / a[0], np.exp(-lr * np.outer(t, lam)),
                               rtol=tolerance(1e-9, "n x n eigendecomposition of a Gram with "
                                              "condition ~1e4, then exp of lr t lam"), atol=1e-12)
    res = spectral_bias(NET, KS, n=N, width=None, lr=lr, record=[0, 3, 30, 300], steps=300)
    err = np.abs(res.eigenvalues - lam)
    assert np.all(err <= alias_bound(NET, N, KS) + res.eigenvalue_error), (err, lam)
    # the spectrum's flow prediction against the measured flow, with the same aliasing allowance
    bound = t[None, :] * lr * alias_bound(NET, N, KS)[:, None] + 1e-12
    assert np.all(np.abs(res.predicted_flow - (a / a[0]).T) <= bound)


def test_exact_kernel_descent_fit_times():
    """width=None: discrete kernel descent; measured fit steps match log(thr)/log(1 - lr lam)
    with the DFT eigenvalues to interpolation accuracy, and the spectrum's to aliasing."""
    res = spectral_bias(NET, KS, n=N, width=None, record=np.arange(0, 2001))
    lam = grid_eigenvalues(NET, N, KS)
    exact = fit_steps(lam, res.lr, res.threshold)
    # every step recorded: log-linear interpolation of an exact geometric sequence is exact
    np.testing.assert_allclose(res.measured_fit, exact, rtol=tolerance(1e-9, "log of ratios "
                               "of residual components after ~2000 products of (I - lr K/n)"))
    rel = alias_bound(NET, N, KS) / res.eigenvalues
    assert np.all(np.abs(res.fit_ratio - 1) <= 1.1 * rel + 1e-9), (res.fit_ratio, rel)
    assert np.all(np.diff(res.predicted_fit) > 0)          # low frequencies first
    np.testing.assert_allclose(res.predicted[:, 0], 1.0, rtol=CLOSED_FORM_RTOL)


def test_finite_network_fits_low_frequencies_as_predicted():
    """A trained relu network of width 1024 fits k = 1, 2 in the predicted number of steps.
    Its NTK at initialization deviates from the analytic one by O(width^-1/2) relative
    (and moves by as much during training); allow 4 / sqrt(width)."""
    width = 1024
    res = spectral_bias(NET, [1, 2], n=32, width=width, seed=3)
    tol = tolerance(4 / math.sqrt(width), "NTK fluctuation ~ width^-1/2 at init and in training")
    assert np.all(np.abs(res.fit_ratio - 1) <= tol), res.fit_ratio
    assert res.train_loss[-1] < res.train_loss[0]


def test_fit_steps_closed_forms():
    np.testing.assert_allclose(fit_steps([0.5], 1.0, 0.25), [2.0], rtol=CLOSED_FORM_RTOL)
    assert fit_steps([1.0], 1.0, 0.5)[0] == 0.0              # removed in one step
    assert fit_steps([0.0], 1.0, 0.5)[0] == math.inf
    assert math.isnan(fit_steps([3.0], 1.0, 0.5)[0])         # |1 - lr lam| > 1: diverges


def test_zonal_harmonics_have_unit_power_on_the_sphere():
    X = sample("sphere", 20000, 5, seed=0)
    H = zonal_harmonics(X, [0, 1, 3])
    se = np.std(H ** 2, axis=0) / math.sqrt(X.shape[0])
    assert np.all(np.abs(np.mean(H ** 2, axis=0) - 1) <= 4 * se)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(ks=[1, 40]), ValueError, "exceed 2 max"),
    (dict(ks=[1.5]), TypeError, "ks"),
    (dict(ks=[2, 2]), ValueError, "repeat"),
    (dict(ks=[-1]), ValueError, ">= 0"),
    (dict(ks=[1], threshold=1.5), ValueError, "threshold"),
    (dict(ks=[1], amplitude=-1.0), ValueError, "amplitude"),
])
def test_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        spectral_bias(NET, n=32, **kwargs)
    with pytest.raises(TypeError, match="FCNet"):
        spectral_bias(lambda t: t, [1])
