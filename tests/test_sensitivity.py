"""Kernel-trick sensitivity vs explicit features, closed forms at infinite width, and the k law."""
import math

import numpy as np
import pytest

from infntk.sensitivity import sensitivity
from tolerances import tolerance

#: central differences (step 1e-5 relative) of an O(1) function: ~1e-10 truncation + rounding
FD_RTOL = tolerance(1e-7, "central-difference gradients, step 1e-5, O(1) functions")
H2 = (lambda x: (x * x - 1) / math.sqrt(2), lambda x: math.sqrt(2) * x,
      lambda x: math.sqrt(2) + 0 * x)


def _data(N, d, m, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, d)), rng.choice([-1.0, 1.0], N),
            rng.standard_normal((m, d)))


def _explicit(model, Z, Y, T, W, phi, dphi):
    """Explicit p-dimensional features, min-norm interpolator, gradient by central differences."""
    k = W.shape[0]
    if model == "ntk":
        feats = lambda X: (X[:, :, None] * dphi(X @ W.T)[:, None, :]).reshape(len(X), -1) / \
            math.sqrt(k)
    else:
        feats = lambda X: phi(X @ W.T) / math.sqrt(k)
    theta = np.linalg.lstsq(feats(Z), Y, rcond=None)[0]       # minimum-norm interpolator
    out = []
    for z in T:
        h = 1e-5
        P = np.vstack([z + h * np.eye(len(z)), z - h * np.eye(len(z))])
        f = feats(P) @ theta
        g = (f[:len(z)] - f[len(z):]) / (2 * h)
        out.append(np.linalg.norm(z) * np.linalg.norm(g))
    return np.array(out)


@pytest.mark.parametrize("model", ["ntk", "rf"])
@pytest.mark.parametrize("act", ["tanh", "h2"])
def test_kernel_trick_equals_explicit_features(model, act):
    d, N, k = 6, 20, 40                       # p = k d = 240 (ntk) or 40 (rf) > N
    Z, Y, T = _data(N, d, 3, 0)
    if act == "tanh":
        phi, dphi, d2 = np.tanh, lambda x: 1 / np.cosh(x) ** 2, \
            lambda x: -2 * np.tanh(x) / np.cosh(x) ** 2
    else:
        phi, dphi, d2 = H2
    rng = np.random.default_rng(9)
    W = rng.standard_normal((k, d)) / math.sqrt(d)
    got = sensitivity(Z, Y, T, phi, model=model, width=k, seed=np.random.default_rng(9),
                      deriv=dphi, deriv2=d2)
    np.testing.assert_allclose(got, _explicit(model, Z, Y, T, W, phi, dphi), rtol=FD_RTOL)


def test_default_second_derivative_by_differences():
    Z, Y, T = _data(15, 5, 2, 1)
    exact = sensitivity(Z, Y, T, "tanh", width=30, seed=3,
                        deriv2=lambda x: -2 * np.tanh(x) / np.cosh(x) ** 2)
    np.testing.assert_allclose(sensitivity(Z, Y, T, "tanh", width=30, seed=3), exact,
                               rtol=FD_RTOL)


def test_infinite_width_closed_forms():
    """phi' = 1 + x: E[phi'(u) phi'(v)] = 1 + <z,z'>/d for any norms, so the NTK kernel is
    g (1 + g/d), g = <z, z'>, and grad f = sum_i a_i z_i (1 + 2 g_i / d). RF with the identity:
    kernel <z,z'>/d, grad f = Z^T a / d."""
    d, N = 8, 30
    Z, Y, T = _data(N, d, 3, 2)
    G = Z @ Z.T
    a = np.linalg.solve(G * (1 + G / d), Y)
    want = [np.linalg.norm(z) * np.linalg.norm(((1 + 2 * (Z @ z) / d) * a) @ Z) for z in T]
    got = sensitivity(Z, Y, T, lambda x: x + x ** 2 / 2, deriv=lambda x: 1 + x)
    np.testing.assert_allclose(got, want, rtol=FD_RTOL)
    Zl, Yl, Tl = _data(5, d, 2, 3)                              # N < d: linear interpolation
    al = np.linalg.solve(Zl @ Zl.T / d, Yl)
    want = np.linalg.norm(Tl, axis=1) * np.linalg.norm(al @ Zl / d)
    np.testing.assert_allclose(sensitivity(Zl, Yl, Tl, "identity", model="rf"), want,
                               rtol=FD_RTOL)


def test_even_ntk_follows_sqrt_n_over_k_and_rf_does_not_vanish():
    """Even activation (h_2), N << k d and k < d: S sqrt(k/N) stays constant while sqrt(N/k)
    changes 4-fold (the universal law is met). Infinite random features stay of order one
    although the universal bound sqrt(Nd/p) -> 0."""
    d, N = 300, 300
    Z, Y, T = _data(N, d, 8, 4)
    phi, dphi, d2 = H2
    ks = (8, 32, 128)
    c = [sensitivity(Z, Y, T, phi, width=k, seed=5, deriv=dphi, deriv2=d2).mean()
         * math.sqrt(k / N) for k in ks]
    spread = tolerance(1.4, "log k factor of the theorem and the floor ~sqrt(N/d) at k -> d; "
                            "measured max/min 1.1-1.4 over seeds 4, 5 and (d, N) = (300, 300), "
                            "(500, 200)")
    assert max(c) / min(c) <= spread, c
    s_rf = sensitivity(Z[:150], Y[:150], T[:2], phi, model="rf", deriv=dphi).mean()
    assert s_rf > 1.0, s_rf


def test_bad_input():
    Z, Y, T = _data(10, 3, 2, 0)
    with pytest.raises(ValueError, match="model"):
        sensitivity(Z, Y, T, model="cnn")
    with pytest.raises(ValueError, match="Z_test"):
        sensitivity(Z, Y, np.ones((2, 4)))
    with pytest.raises(ValueError, match="Y"):
        sensitivity(Z, Y[:5], T)
    with pytest.raises(ValueError, match="positive definite"):
        sensitivity(Z, Y, T, "relu", model="rf", width=2)
