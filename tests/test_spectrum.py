"""infntk.spectrum: Funk-Hecke eigenvalues against closed forms, Gram matrices and known decay."""
import math

import mpmath
import numpy as np
import pytest
from scipy import linalg, special
from threadpoolctl import threadpool_limits

import infntk
from infntk.spectrum import legendre_d, multiplicity, sphere_eigenvalues
from tolerances import tolerance

# An eigenvalue that is 0 (odd k >= 3 of the relu kernels) against its reported error: allow
# the rounding of the comparison itself.
BOUND_SLACK = tolerance(1e-15, "rounding of a zero eigenvalue and of its error estimate")
# Legendre/Chebyshev values of degree <= 5 on [-1, 1] by two recurrences: a few ulp of O(1).
LEGENDRE_ATOL = tolerance(1e-14, "degree <= 5 recurrences on [-1, 1]: a few ulp of O(1)")
# np.testing.assert_allclose's default rtol, written out where a call gave only atol (kept).
NUMPY_DEFAULT_RTOL = tolerance(1e-7, "assert_allclose's default rtol, kept from the original")


def relu_two_layer(t):
    """Depth-1 relu net, w_std = 1, no bias, inputs on the sphere |x|^2 = d (textbook form)."""
    t = np.clip(t, -1.0, 1.0)
    th = np.arccos(t)
    nngp = (np.sqrt((1 - t) * (1 + t)) + (np.pi - th) * t) / (2 * np.pi)
    ntk = nngp + t * (np.pi - th) / (2 * np.pi)
    return nngp, ntk


def exp_mu(d, kmax):
    """exp(t): mu_k = Gamma(lam+1) 2^lam I_{k+lam}(1), lam = (d-2)/2 (Gegenbauer expansion).

    In mpmath, since I_{k+lam}(1) underflows and Gamma(lam+1) overflows for large d.
    """
    lam = mpmath.mpf(d - 2) / 2
    return np.array([float(mpmath.gamma(lam + 1) * 2 ** lam * mpmath.besseli(k + lam, 1))
                     for k in range(kmax + 1)])


@pytest.mark.parametrize("d", [2, 3, 10, 100, 1000])
@pytest.mark.parametrize("method", ["angle", "jacobi"])
def test_exp_kernel_closed_form(d, method):
    kmax = 120
    s = sphere_eigenvalues(np.exp, d, kmax, method=method)
    exact = exp_mu(d, kmax)
    # absolute accuracy ~ n eps max|kappa| (module notes); the reported error covers the
    # actual one, and is itself at the documented level
    err = np.abs(s.mu - exact)
    assert np.all(err <= s.error)
    assert np.all(s.error <= tolerance(2e-13, "documented: ~n eps max|kappa| for n ~ 1e3 nodes")
                  * math.e)


@pytest.mark.parametrize("d,kmax", [(2, 30), (3, 30), (10, 20)])
def test_mercer_identity_sum(d, kmax):
    """sum_k N(d,k) mu_k = kappa(1), within sum_k N(d,k) error_k plus the omitted tail.

    The exp kernel's terms N mu_k fall by a factor >= 10 per degree here, so twice the first
    omitted term bounds the tail. Rounding-level errors are multiplied by N(d,k) (~1e7 at
    d = 10, k = 20), hence the loose cap on the total.
    """
    s = sphere_eigenvalues(np.exp, d, kmax)
    tail = 2 * exp_mu(d, kmax + 1)[-1] * multiplicity(d, kmax + 1)[-1]
    total_err = np.sum(s.multiplicity * s.error)
    assert abs(np.sum(s.multiplicity * s.mu) - math.e) <= total_err + tail + BOUND_SLACK
    assert total_err + tail < tolerance(1e-5, "rounding-level errors times N(d, k) ~ 1e7 "
                                              "at d = 10")


def test_multiplicities_and_polynomials():
    np.testing.assert_array_equal(multiplicity(2, 4), [1, 2, 2, 2, 2])
    np.testing.assert_array_equal(multiplicity(3, 4), [1, 3, 5, 7, 9])
    # N(d, k) = dim of harmonic polynomials = C(k+d-1, d-1) - C(k+d-3, d-1)
    for d in (4, 7, 50):
        for k in range(2, 12):
            assert multiplicity(d, k)[k] == math.comb(k + d - 1, d - 1) - math.comb(k + d - 3, d - 1)
    assert np.isinf(multiplicity(1000, 600)[-1])
    t = np.linspace(-1, 1, 9)
    np.testing.assert_allclose(legendre_d(t, 3, 5), special.eval_legendre(np.arange(6), t[:, None]),
                               rtol=NUMPY_DEFAULT_RTOL, atol=LEGENDRE_ATOL)
    np.testing.assert_allclose(legendre_d(t, 2, 5), special.eval_chebyt(np.arange(6), t[:, None]),
                               rtol=NUMPY_DEFAULT_RTOL, atol=LEGENDRE_ATOL)
    P = legendre_d(np.linspace(-1, 1, 101), 1000, 300)
    assert np.all(np.abs(P) <= 1 + tolerance(1e-12, "|P_k| <= 1, up to the recurrence's rounding"))


def test_against_gram_matrix_of_uniform_points():
    """Eigenvalues of K(X, X)/m for m uniform points converge to the mu_k (each N(d,k) times).

    Tolerance: the top eigenvalues of the empirical operator fluctuate by O(kappa(1)/sqrt(m));
    we allow kappa(1)/sqrt(m) = 0.032 (observed 0.013 at m = 1000, seed 1), well below the
    gaps between the degree groups compared (> 0.04) and far above the quadrature error.
    """
    rng = np.random.default_rng(1)
    d, m = 3, 1000
    X = rng.standard_normal((m, d))
    X *= math.sqrt(d) / np.linalg.norm(X, axis=1, keepdims=True)
    T = np.clip(X @ X.T / d, -1, 1)
    with threadpool_limits(1):      # a threaded BLAS crawls when the CI cores are shared
        lam = linalg.eigh(relu_two_layer(T)[1] / m, eigvals_only=True,
                          subset_by_index=[m - 18, m - 1])[::-1]
    s = sphere_eigenvalues(lambda t: relu_two_layer(t)[1], d, 4)
    expected = np.repeat(s.mu[[0, 1, 2, 4]], [1, 3, 5, 9])   # odd k >= 3 vanish
    tol = relu_two_layer(np.array(1.0))[1] / math.sqrt(m)
    assert np.max(np.abs(lam - expected)) < tol
    assert abs(s.mu[3]) < tolerance(1e-14, "an odd eigenvalue that is exactly 0: rounding")


def test_fcnet_object_and_callable_agree():
    net = infntk.FCNet("relu", depth=1, w_std=1.0, b_std=0.0)
    for kernel, idx in (("ntk", 1), ("nngp", 0)):
        a = sphere_eigenvalues(net, 5, 40, kernel=kernel)
        b = sphere_eigenvalues(lambda t: relu_two_layer(t)[idx], 5, 40)
        np.testing.assert_allclose(a.mu, b.mu, rtol=0, atol=tolerance(
            1e-13, "FCNet's kernel vs the same closed form here: quadrature of two roundings"))


@pytest.mark.parametrize("d", [2, 3, 4])
def test_bietti_mairal_decay(d):
    """2-layer relu NTK (no bias): mu_k ~ k^-d for even k, 0 for odd k >= 3; NNGP ~ k^-(d+2)."""
    kmax = 200
    ntk = sphere_eigenvalues(lambda t: relu_two_layer(t)[1], d, kmax)
    nngp = sphere_eigenvalues(lambda t: relu_two_layer(t)[0], d, kmax)
    odd = np.arange(3, kmax + 1, 2)
    assert np.all(np.abs(ntk.mu[odd]) <= ntk.error[odd] + BOUND_SLACK)
    assert np.all(np.abs(nngp.mu[odd]) <= nngp.error[odd] + BOUND_SLACK)
    k = np.arange(100, kmax + 1, 2)
    slope_ntk = np.polyfit(np.log(k), np.log(ntk.mu[k]), 1)[0]
    slope_nngp = np.polyfit(np.log(k), np.log(nngp.mu[k]), 1)[0]
    # asymptotic rates; corrections are O(1/k) in the exponent at k ~ 100..200
    assert abs(slope_ntk + d) < tolerance(0.05, "O(1/k) corrections to the exponent, k >= 100")
    assert abs(slope_nngp + d + 2) < tolerance(0.1, "O(1/k) corrections, larger for k^-(d+2)")
    assert np.all(ntk.error[k] < tolerance(1e-3, "the fitted eigenvalues are accurate to 0.1%")
                  * ntk.mu[k])


def test_bad_arguments():
    with pytest.raises(ValueError, match="d"):
        sphere_eigenvalues(np.exp, 1, 5)
    with pytest.raises(ValueError, match="kernel"):
        sphere_eigenvalues(np.exp, 3, 5, kernel="foo")
    with pytest.raises(TypeError, match="kernel_fn_or_net"):
        sphere_eigenvalues(3.0, 3, 5)
    with pytest.raises(ValueError, match="method"):
        sphere_eigenvalues(np.exp, 3, 5, method="x")
    with pytest.raises(ValueError, match="NaN or inf"):
        sphere_eigenvalues(lambda t: np.full_like(t, np.nan), 3, 5)
    with pytest.raises(ValueError, match="elementwise"):
        sphere_eigenvalues(lambda t: 1.0, 3, 5)
