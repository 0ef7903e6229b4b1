"""Finite-width corrections against exact laws, closed forms and Monte Carlo of finite networks.

References the code under test does not produce:

* exact finite-width laws: ReLU at criticality, one input, ``E[G^2]/K^2 = (1 + 5/n)^L``
  (leading coefficient ``5 L``, no bias); ReLU depth 1, one input: the NTK is a sum of iid
  unit terms, ``n Var = 3 C_W^2 K^2`` exactly;
* the linear network: Wishart moments, ``V^{l+1} = C_W^2 (K_ac K_bd + K_ad K_bc) + C_W^2 V^l``;
* the infinite-width kernels of :class:`infntk.FCNet` (compiled closed forms / Hermite series);
* Monte Carlo over seeds of :class:`infntk.empirical.MLP` at two widths, extrapolated in
  ``1/width`` (Richardson), with tolerances from the sample's standard errors.
"""
import math

import numpy as np
import pytest

import infntk
from infntk.empirical import MLP
from infntk.finite_width import MAX_INPUTS, corrections
from tolerances import CLOSED_FORM_RTOL, mc_tolerance, rel_err_vs_max, tolerance

RELU_CRIT = math.sqrt(2.0)


def _X(n, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


# ----------------------------------------------------------------------------- exact laws
@pytest.mark.parametrize("depth", [1, 2, 5, 8])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_relu_critical_single_input_law(depth, parameterization):
    net = infntk.FCNet("relu", depth=depth, w_std=RELU_CRIT, b_std=None,
                       parameterization=parameterization, width=256)
    c = corrections(net, np.array([[0.3, -1.2, 0.5]]), width=256)
    K = c.nngp[0, 0]
    # n ((1 + 5/n)^L - 1) -> 5 L
    assert abs(c.nngp_var[0, 0] / K ** 2 - 5 * depth) <= CLOSED_FORM_RTOL * 5 * depth
    assert abs(c.nngp_bias[0, 0]) <= CLOSED_FORM_RTOL * K


@pytest.mark.parametrize("w_std", [1.0, RELU_CRIT, 1.7])
def test_relu_depth1_ntk_exact(w_std):
    net = infntk.FCNet("relu", depth=1, w_std=w_std, b_std=None)
    x = np.array([[1.0, 2.0]])
    c = corrections(net, x, width=100)
    K1 = w_std ** 2 * 2.5
    Cw = w_std ** 2
    assert abs(c.ntk_var[0, 0] - 3 * Cw ** 2 * K1 ** 2) <= CLOSED_FORM_RTOL * Cw ** 2 * K1 ** 2
    assert abs(c.ntk_bias[0, 0]) <= CLOSED_FORM_RTOL * c.ntk[0, 0]


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("b_std", [None, 0.4])
def test_linear_network_closed_form(depth, b_std):
    w = 1.3
    X = _X(3)
    net = infntk.FCNet("identity", depth=depth, w_std=w, b_std=b_std)
    c = corrections(net, X, width=64)
    Cw, Cb = w * w, (0.0 if b_std is None else b_std ** 2)
    K = Cw * X @ X.T / X.shape[1] + Cb
    V = np.zeros((3,) * 4)
    for _ in range(depth):
        V = Cw ** 2 * (np.einsum("ac,bd->abcd", K, K) + np.einsum("ad,bc->abcd", K, K)) + Cw ** 2 * V
        K = Cw * K + Cb
    assert rel_err_vs_max(c.nngp, K) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(c.vertex, V) <= CLOSED_FORM_RTOL if depth else np.all(c.vertex == 0)
    assert np.abs(c.nngp_bias).max() <= CLOSED_FORM_RTOL * np.abs(K).max()


def test_linear_depth1_ntk_closed_form():
    # Theta = lambda_b + Cw S + (Cw/n) sum_k W_k^2 K1: two independent iid sums
    w, b = 0.9, 0.3
    X = _X(2)
    Cw = w * w
    K1 = Cw * X @ X.T / 3 + b * b
    c = corrections(infntk.FCNet("identity", depth=1, w_std=w, b_std=b), X, width=50)
    expected = Cw ** 2 * (np.outer(np.diag(K1), np.diag(K1)) + K1 ** 2) + 2 * Cw ** 2 * K1 ** 2
    assert rel_err_vs_max(c.ntk_var, expected) <= CLOSED_FORM_RTOL
    assert np.abs(c.ntk_bias).max() <= CLOSED_FORM_RTOL * np.abs(c.ntk).max()


# ----------------------------------------------------------------------------- consistency
@pytest.mark.parametrize("act", ["relu", "erf", "tanh", "gelu"])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_leading_kernels_match_fcnet(act, parameterization):
    X = _X(4)
    net = infntk.FCNet(act, depth=3, w_std=1.4, b_std=0.2, parameterization=parameterization,
                       width=128)
    c = corrections(net, X, width=128)
    k = net.kernels(X)
    tol = CLOSED_FORM_RTOL if act == "relu" else tolerance(
        1e-10, "smooth activations: polar quadrature (48 x 4 x 40 nodes) and Hermite series")
    assert rel_err_vs_max(c.nngp, k.nngp) <= tol
    assert rel_err_vs_max(c.ntk, k.ntk) <= tol


@pytest.mark.parametrize("act", ["erf", "tanh"])
def test_smooth_rule_converged(act):
    X = _X(3)
    net = infntk.FCNet(act, depth=3, w_std=1.6, b_std=0.3)
    a, b = corrections(net, X, 64), corrections(net, X, 64, orders=(96, 80))
    for name in ("nngp_var", "nngp_bias", "ntk_var", "ntk_bias"):
        assert rel_err_vs_max(getattr(a, name), getattr(b, name)) <= tolerance(
            1e-11, "default (48, 40) polar rule against a doubled rule")


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_vertex_consistent_with_pairs(act):
    X = _X(4)
    c = corrections(infntk.FCNet(act, depth=2, w_std=1.3, b_std=0.1), X, 32)
    V = c.vertex
    i = np.arange(4)
    X = X[:3]
    assert rel_err_vs_max(V[i[:, None], i[None], i[:, None], i[None]], c.nngp_var) <= 1e3 * CLOSED_FORM_RTOL
    for perm in [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)]:
        assert np.array_equal(V, V.transpose(perm)) or rel_err_vs_max(V, V.transpose(perm)) < 1e-14
    # finer rule on three inputs (every three-point function, the costly ones)
    V = V[:3, :3, :3, :3]
    finer = corrections(infntk.FCNet(act, depth=2, w_std=1.3, b_std=0.1), X, 32,
                        vertex_order=24 if act == "relu" else 48).vertex
    assert rel_err_vs_max(V, finer) <= tolerance(
        1e-4, "nested 4-D rule at the default order vs a finer one (docs/finite_width.md, sec. 4)")


def test_input_validation():
    net = infntk.FCNet("relu", depth=1)
    with pytest.raises(ValueError, match="at most 64"):
        corrections(net, np.ones((MAX_INPUTS + 1, 2)), 10)
    with pytest.raises(ValueError, match="zero first-layer variance"):
        corrections(infntk.FCNet("relu", depth=1, b_std=None), np.array([[0.0, 0.0], [1.0, 0.0]]), 10)
    with pytest.raises(ValueError, match="width"):
        corrections(net, np.ones((2, 2)), 0)
    with pytest.raises(ValueError, match="X"):
        corrections(net, np.array([[np.nan, 1.0]]), 10)
    with pytest.raises(TypeError, match="net"):
        corrections(object(), np.ones((2, 2)), 10)


# ----------------------------------------------------------------------------- Monte Carlo
def _samples_of(make, X, S):
    """Empirical NNGP and NTK of the finite networks ``make(s)``, ``s < S``."""
    ks = np.empty((S,) + (X.shape[0],) * 2)
    ts = np.empty_like(ks)
    for s in range(S):
        m = make(s)
        ks[s], ts[s] = m.nngp(X), m.ntk(X)
    return ks, ts


def _samples(act, depth, w, b, par, X, n, S, seed):
    return _samples_of(lambda s: MLP(n, depth, act, w, b, par, seed=[seed, n, s]), X, S)


def _var_and_se(x):
    """Sample variance and its standard error (from the fourth central moment)."""
    S = x.shape[0]
    d = x - x.mean(0)
    var = (d ** 2).sum(0) / (S - 1)
    m4 = (d ** 4).mean(0)
    return var, np.sqrt(np.maximum(m4 - var ** 2, 0) / S)


def _mc_tol(se):
    return np.vectorize(mc_tolerance)(se)


def _richardson(n1, y1, s1, n2, y2, s2):
    """c0 of y(n) = c0 + c1/n from two widths, and its standard error."""
    c0 = (n2 * y2 - n1 * y1) / (n2 - n1)
    se = np.sqrt((n2 * s2) ** 2 + (n1 * s1) ** 2) / (n2 - n1)
    return c0, se


MC_CASES = [  # act, depth, w_std, b_std, parameterization, inputs, samples
    ("relu", 2, 1.4, 0.1, "ntk", 2, 700),
    ("erf", 3, 1.5, 0.2, "ntk", 4, 500),
    ("tanh", 4, 1.2, 0.3, "standard", 2, 500),
    ("relu", 1, 1.3, None, "standard", 4, 700),
]


@pytest.mark.parametrize("case", MC_CASES, ids=lambda c: f"{c[0]}-L{c[1]}-{c[4]}-n{c[5]}")
def test_variance_vs_monte_carlo(case):
    act, depth, w, b, par, n_in, S = case
    X = _X(n_in, seed=3)
    widths = (32, 128)
    stats = {}
    for n in widths:
        ks, ts = _samples(act, depth, w, b, par, X, n, S, seed=11)
        c = corrections(infntk.FCNet(act, depth=depth, w_std=w, b_std=b, parameterization=par,
                                     width=n), X, n)
        vk, sk = _var_and_se(ks)
        vt, st = _var_and_se(ts)
        # the standard NTK scales with the width: compare relative to Theta_aa Theta_bb
        scale = np.outer(np.diag(c.ntk), np.diag(c.ntk))
        # residuals y(n) - prediction(n) are O(1/n); their extrapolation to 1/n = 0 must vanish
        stats[n] = (n * vk - c.nngp_var, n * sk, (n * vt - c.ntk_var) / scale, n * st / scale)
    (rk1, sk1, rt1, st1), (rk2, sk2, rt2, st2) = stats[32], stats[128]
    k0, ske = _richardson(32, rk1, sk1, 128, rk2, sk2)
    t0, ste = _richardson(32, rt1, st1, 128, rt2, st2)
    assert np.all(np.abs(k0) <= _mc_tol(ske))
    assert np.all(np.abs(t0) <= _mc_tol(ste))


def test_bias_vs_monte_carlo():
    # the bias is a 1/n shift under O(n^{-1/2}) noise: small widths, many samples
    act, depth, w, b = "erf", 2, 1.5, 0.2
    X = _X(2, seed=1)
    S = 4000
    res = {}
    for n in (16, 32):
        ks, ts = _samples(act, depth, w, b, "ntk", X, n, S, seed=5)
        c = corrections(infntk.FCNet(act, depth=depth, w_std=w, b_std=b), X, n)
        res[n] = (n * (ks.mean(0) - c.nngp) - c.nngp_bias, n * ks.std(0) / math.sqrt(S),
                  n * (ts.mean(0) - c.ntk) - c.ntk_bias, n * ts.std(0) / math.sqrt(S))
    k0, ske = _richardson(16, res[16][0], res[16][1], 32, res[32][0], res[32][1])
    t0, ste = _richardson(16, res[16][2], res[16][3], 32, res[32][2], res[32][3])
    assert np.all(np.abs(k0) <= _mc_tol(ske))
    assert np.all(np.abs(t0) <= _mc_tol(ste))


# ----------------------------------------------------------------------------- Network input
def _mixed_network(par="ntk"):
    return infntk.Network([infntk.Dense(1.4, 0.1, par), infntk.Activation("relu"),
                           infntk.Dense(1.2, 0.3, par), infntk.Activation("erf"),
                           infntk.Dense(1.5, 0.2, par)], width=64)


def test_network_of_fcnet_layers_equals_fcnet():
    X = _X(3)
    fc = infntk.FCNet("gelu", depth=2, w_std=1.3, b_std=0.1)
    net = infntk.Network([infntk.Dense(1.3, 0.1), infntk.Activation("gelu")] * 2
                         + [infntk.Dense(1.3, 0.1)])
    a, b = corrections(net, X, 64), corrections(fc, X, 64)
    for name in ("nngp", "ntk", "nngp_bias", "nngp_var", "ntk_bias", "ntk_var"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_network_leading_kernels_match_its_engine(parameterization):
    # per-layer w_std, b_std and activations: the leading order is the composed engine's kernel
    X = _X(4, seed=2)
    net = _mixed_network(parameterization)
    c = corrections(net, X, width=64)
    k = net.kernels(X)
    tol = tolerance(1e-10, "erf layer: polar quadrature (48 x 4 x 40 nodes)")
    assert rel_err_vs_max(c.nngp, k.nngp) <= tol
    assert rel_err_vs_max(c.ntk, k.ntk) <= tol


def test_network_variance_vs_monte_carlo():
    # the finite network of the same layers (net.finite), two widths, extrapolated in 1/width
    X = _X(2, seed=4)
    net = _mixed_network()
    S = 500
    stats = {}
    for n in (32, 128):
        ks, ts = _samples_of(lambda s: net.finite(n, seed=[7, n, s], input_dim=X.shape[1]),
                             X, S)
        c = corrections(net, X, n)
        vk, sk = _var_and_se(ks)
        vt, st = _var_and_se(ts)
        stats[n] = (n * vk - c.nngp_var, n * sk, n * vt - c.ntk_var, n * st)
    (rk1, sk1, rt1, st1), (rk2, sk2, rt2, st2) = stats[32], stats[128]
    k0, ske = _richardson(32, rk1, sk1, 128, rk2, sk2)
    t0, ste = _richardson(32, rt1, st1, 128, rt2, st2)
    assert np.all(np.abs(k0) <= _mc_tol(ske))
    assert np.all(np.abs(t0) <= _mc_tol(ste))


def test_network_layers_refused():
    X = _X(2)
    Dn, A = infntk.Dense, infntk.Activation
    with pytest.raises(TypeError, match=r"layers\[2\] is LayerNorm"):
        corrections(infntk.Network([Dn(), A("relu"), infntk.LayerNorm(), Dn()]), X, 8)
    with pytest.raises(TypeError, match=r"layers\[1\] is Residual"):
        corrections(infntk.Network([Dn(), infntk.Residual([A("relu"), Dn()]), Dn()]), X, 8)
    with pytest.raises(TypeError, match="convolutional"):
        corrections(infntk.Network([infntk.Conv(3), infntk.Flatten(), Dn()]), X, 8)
    with pytest.raises(ValueError, match="same parameterization"):
        corrections(infntk.Network([Dn(), A("relu"), Dn(1.0, 0.0, "standard")], width=8), X, 8)
