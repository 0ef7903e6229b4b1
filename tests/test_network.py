"""Composed networks (infntk.Network): homogeneous shape vs FCNet bitwise, composed engine vs
the fully-connected engine bitwise, and composed layers (mixed activations, residual blocks,
LayerNorm) against an independent 50-digit recursion (tests/oracles/mp_network.py)."""
import numpy as np
import pytest

import infntk
from infntk import _gram
from infntk._backends.composed import ComposedEngine
from infntk.layers import Activation, Dense, LayerNorm, Residual
from infntk.network import Network, _compile
from oracles.mp_network import mp_network_kernels
from tolerances import CLOSED_FORM_RTOL, rel_err_vs_max, tolerance

RNG = np.random.default_rng(7)
X = RNG.standard_normal((6, 3))
X[2] = X[1] * (1 + 1e-9)          # nearly identical rows
X[3] = -X[0] * (1 - 1e-8)         # nearly antipodal
Y = RNG.standard_normal((4, 3))


def _mp(layers, X1, X2):
    k, t = mp_network_kernels(layers, X1.tolist(), X2.tolist())
    return (np.array([[float(v) for v in r] for r in k]),
            np.array([[float(v) for v in r] for r in t]))


@pytest.mark.parametrize("name,params", [("relu", {}), ("erf", {}), ("sign", {}),
                                         ("gelu", {}), ("leaky_relu", {"alpha": 0.2})])
@pytest.mark.parametrize("par,b", [("ntk", 0.1), ("standard", None), ("ntk", 0.0)])
def test_homogeneous_network_is_fcnet_bitwise(name, params, par, b):
    fc = infntk.FCNet(name, depth=3, w_std=1.3, b_std=b, parameterization=par, width=40,
                      **params)
    layers = [Dense(1.3, b, par), Activation(name, **params)] * 3 + [Dense(1.3, b, par)]
    net = Network(layers, width=40)
    for args in ((X,), (X, Y)):
        k1, k2 = fc.kernels(*args), net.kernels(*args)
        assert np.array_equal(k1.nngp, k2.nngp) and np.array_equal(k1.ntk, k2.ntk)
        # the composed engine, forced on the same layers, reproduces the FC engine's floats
        eng = ComposedEngine(_compile(layers, X.shape[1], 40), X.shape[1])
        B = args[1] if len(args) == 2 else X
        k3 = _gram.gram(eng, X, B, len(args) == 1)
        assert np.array_equal(k1.nngp, k3.nngp) and np.array_equal(k1.ntk, k3.ntk)
    d1, d2 = fc.diag(X), net.diag(X)
    assert np.array_equal(d1.ntk, d2.ntk) and np.array_equal(d1.nngp, d2.nngp)


COMPOSED = {
    "mixed": ([Dense(1.5, 0.1), Activation("relu"), Dense(1.2, 0.2), Activation("erf"),
               Dense(0.9, None), Activation("gelu"), Dense(1.1, 0.1)],
              [("dense", 1.5, 0.1), ("act", "relu", {}), ("dense", 1.2, 0.2),
               ("act", "erf", {}), ("dense", 0.9, None), ("act", "gelu", {}),
               ("dense", 1.1, 0.1)]),
    "residual": ([Dense(1.0, 0.1), Residual([Activation("relu"), Dense(1.4, 0.1)], alpha=0.5),
                  Residual([Activation("erf"), Dense(1.0, 0.0)], alpha=1.0),
                  Activation("relu"), Dense(1.0, 0.2)],
                 [("dense", 1.0, 0.1), ("res", 0.5, [("act", "relu", {}), ("dense", 1.4, 0.1)]),
                  ("res", 1.0, [("act", "erf", {}), ("dense", 1.0, 0.0)]),
                  ("act", "relu", {}), ("dense", 1.0, 0.2)]),
    "layernorm": ([Dense(2.0, 0.3), LayerNorm(), Activation("sin"), Dense(1.0, 0.0),
                   Activation("abs"), LayerNorm(), Dense(1.0, 0.5)],
                  [("dense", 2.0, 0.3), ("norm",), ("act", "sin", {}), ("dense", 1.0, 0.0),
                   ("act", "abs", {}), ("norm",), ("dense", 1.0, 0.5)]),
    "nested": ([Dense(1.2, 0.1),
                Residual([Activation("relu"), Dense(1.0, 0.1),
                          Residual([Activation("gaussian"), Dense(1.3, 0.0)], 0.7),
                          LayerNorm(), Dense(1.0, 0.0)], 0.8),
                Activation("step"), Dense(1.0, 0.1)],
               [("dense", 1.2, 0.1),
                ("res", 0.8, [("act", "relu", {}), ("dense", 1.0, 0.1),
                              ("res", 0.7, [("act", "gaussian", {}), ("dense", 1.3, 0.0)]),
                              ("norm",), ("dense", 1.0, 0.0)]),
                ("act", "step", {}), ("dense", 1.0, 0.1)]),
}


@pytest.mark.parametrize("case", sorted(COMPOSED))
def test_composed_layers_match_50_digit_recursion(case):
    layers, spec = COMPOSED[case]
    net = Network(layers)
    k = net.kernels(X)
    ref_k, ref_t = _mp(spec, X, X)
    assert rel_err_vs_max(k.nngp, ref_k) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(k.ntk, ref_t) <= CLOSED_FORM_RTOL
    c = net.kernels(X, Y)
    ref_k, ref_t = _mp(spec, X, Y)
    assert rel_err_vs_max(c.nngp, ref_k) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(c.ntk, ref_t) <= CLOSED_FORM_RTOL
    dg = net.diag(X)
    assert rel_err_vs_max(dg.ntk, np.diag(k.ntk)) <= CLOSED_FORM_RTOL
    assert np.array_equal(k.ntk, k.ntk.T)


def test_layernorm_kernel_is_a_correlation():
    net = Network([Dense(1.7, 0.4), Activation("relu"), Dense(1.0, 0.0), LayerNorm(),
                   Dense(1.0, 0.0)])
    k = net.kernels(X)
    # after LayerNorm the representation has unit variance: the readout's NNGP diagonal is 1
    np.testing.assert_allclose(np.diag(k.nngp), 1.0, rtol=CLOSED_FORM_RTOL)


def test_structure_errors_name_the_problem():
    with pytest.raises(ValueError, match="layers\\[0\\] must be a Dense"):
        Network([Activation("relu"), Dense()])
    with pytest.raises(ValueError, match="last layer must be a Dense"):
        Network([Dense(), Activation("relu")])
    with pytest.raises(ValueError, match="non-empty"):
        Network([])
    with pytest.raises(TypeError, match="layers\\[1\\] must be a layer"):
        Network([Dense(), "relu", Dense()])
    with pytest.raises(ValueError, match="must end with a Dense"):
        Residual([Dense(), Activation("relu")])
    with pytest.raises(ValueError, match="w_std"):
        Dense(-1.0)
    with pytest.raises(ValueError, match="parameterization"):
        Dense(1.0, 0.0, "weird")
    with pytest.raises(ValueError, match="width is required"):
        Network([Dense(1.0, 0.0, "standard"), Activation("relu"),
                 Dense(1.0, 0.0, "standard")])
    # a residual sum of a post-activation skip is not Gaussian: no activation may follow it
    with pytest.raises(ValueError, match="Gaussian input"):
        Network([Dense(), Activation("relu"), Residual([Dense()]), Activation("relu"), Dense()])


# ----------------------------------------------------------------------------- series layers
def _reference_relu_tanh(X, w1, b1, w2, b2, w3, b3):
    """Float64 reference of Dense-relu-Dense-tanh-Dense on well-separated rows: relu by its
    arc-cosine closed form (no cancellation away from rho = +-1), tanh by the independent
    2-D Gauss-Hermite route (order 200, error ~1e-14 relative for q <= 1.5; at q = 3 it
    errs by 1e-9)."""
    from infntk.quadrature import dual_quadrature
    n, d = X.shape
    S = w1 ** 2 * (X @ X.T) / d + b1 ** 2
    T = S.copy()
    q = np.diag(S).copy()
    rho = np.clip(S / np.sqrt(np.outer(q, q)), -1, 1)
    th = np.arccos(rho)
    K = np.sqrt(np.outer(q, q)) * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
    Kd = (np.pi - th) / (2 * np.pi)
    S, T = w2 ** 2 * K + b2 ** 2, w2 ** 2 * K + b2 ** 2 + w2 ** 2 * Kd * T
    q = np.diag(S).copy()
    Kt = np.empty_like(S)
    Kdt = np.empty_like(S)
    for i in range(n):
        for j in range(n):
            r = 1.0 if i == j else S[i, j] / np.sqrt(q[i] * q[j])
            res = dual_quadrature("tanh", q[i], q[j], rho=r, order=200)
            Kt[i, j], Kdt[i, j] = res[0], res[1]
    return w3 ** 2 * Kt + b3 ** 2, w3 ** 2 * Kt + b3 ** 2 + w3 ** 2 * Kdt * T


def test_series_layer_in_a_composed_network_meets_its_certificate():
    # scaled so that the variances stay <= 1.5, where the order-200 reference is accurate
    Xs = 0.5 * np.random.default_rng(3).standard_normal((5, 4))
    net = Network([Dense(1.5, 0.1), Activation("relu"), Dense(1.0, 0.2), Activation("tanh"),
                   Dense(1.0, 0.1)])
    k = net.kernels(Xs)
    ref_k, ref_t = _reference_relu_tanh(Xs, 1.5, 0.1, 1.0, 0.2, 1.0, 0.1)
    quad = tolerance(1e-13, "order-200 Gauss-Hermite reference of tanh: its own error")
    scale = max(np.abs(ref_k).max(), np.abs(ref_t).max())
    assert k.error_bound is not None and k.error_bound <= 1e-10 * scale * 1.0001
    assert np.abs(k.nngp - ref_k).max() <= k.error_bound + quad * scale
    assert np.abs(k.ntk - ref_t).max() <= k.error_bound + quad * scale


def test_series_path_of_composed_engine_agrees_with_fc_series_engine():
    layers = [Dense(1.2, 0.1), Activation("softplus")] * 2 + [Dense(1.2, 0.1)]
    fc = infntk.FCNet("softplus", depth=2, w_std=1.2, b_std=0.1).kernels(X)
    eng = ComposedEngine(_compile(layers, X.shape[1], None), X.shape[1], 1e-10)
    k = _gram.gram(eng, X, X, True)
    # two certified evaluations of the same kernels: they differ by at most both bounds
    slack = fc.error_bound + k.error_bound
    assert np.abs(fc.nngp - k.nngp).max() <= slack and np.abs(fc.ntk - k.ntk).max() <= slack


def test_two_activations_in_a_row_compose():
    net = Network([Dense(1.3, 0.1), Activation("tanh"), Activation("sin"), Dense(1.0, 0.0)])
    k = net.kernels(X)
    ref = Network([Dense(1.3, 0.1), Activation(lambda x: np.sin(np.tanh(x)),
                                               deriv=lambda x: np.cos(np.tanh(x)) / np.cosh(x) ** 2),
                   Dense(1.0, 0.0)]).kernels(X)
    slack = k.error_bound + ref.error_bound
    assert np.abs(k.nngp - ref.nngp).max() <= slack and np.abs(k.ntk - ref.ntk).max() <= slack


def test_unreachable_tol_keeps_the_smallest_bound():
    """A tol below what the series can certify gives the smallest bound the order search
    meets, not the bound of the highest orders (whose rounding allowance is larger).

    The tail levels are half decades of ``tol``: for tol = 1e-18 the levels scanned include
    those that 1e-10, 1e-12 and 1e-13 (reachable or not) stop at, so its bound can be no
    larger than theirs."""
    import warnings
    X = np.random.default_rng(1).standard_normal((5, 4))
    layers = [Dense(1.5, 0.1), Activation("tanh"),
              Residual([Dense(1.5, 0.1), Activation("softplus"), Dense(1.0, 0.0)], alpha=0.7),
              LayerNorm(), Dense(1.0, 0.0)]
    got = {}
    for tol in (1e-10, 1e-12, 1e-13, 1e-18):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got[tol] = Network(layers, tol=tol).kernels(X)
    scale = float(np.abs(got[1e-18].ntk).max())
    assert got[1e-18].error_bound > 1e-18 * scale          # out of reach: the case tested
    with pytest.warns(RuntimeWarning, match="not reachable"):
        Network(layers, tol=1e-18).kernels(X)
    slack = tolerance(1e-12, reason="bounds of the same orders from order tables of another cap")
    for tol in (1e-10, 1e-12, 1e-13):
        assert got[1e-18].error_bound <= got[tol].error_bound * (1 + slack)
    # and the highest orders' bound is larger here: the rule has a choice to make
    assert max(got[1e-18].orders) < 400
