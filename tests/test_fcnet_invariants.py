"""Invariants of FCNet over the whole closed-form registry (hypothesis-driven)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import infntk
from strategies import CLOSED_FORM_ACTIVATIONS, activation_id, b_stds, data_matrices, depths, w_stds
from tolerances import PSD_RTOL, tolerance

# Two evaluations that differ only in rounding (the symmetric shortcut, a copied argument).
SAME_KERNEL_RTOL = tolerance(1e-13, "same kernel, another evaluation path: a few ulp of max|K|")
# The depth-0 linear model: one product X Y^T and a bias.
LINEAR_RTOL = tolerance(1e-14, "depth 0 is X Y^T w^2/d + b^2: a few roundings per entry")

CASES = pytest.mark.parametrize("case", CLOSED_FORM_ACTIVATIONS, ids=activation_id)


def _net(case, depth, w_std, b_std, parameterization="ntk", width=None):
    name, params = case
    return infntk.FCNet(name, depth=depth, w_std=w_std, b_std=b_std,
                        parameterization=parameterization, width=width, **params)


def _close(a, b, rtol=SAME_KERNEL_RTOL):
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300)
    return np.max(np.abs(a - b)) <= rtol * scale


@CASES
@settings(max_examples=12)
@given(X=data_matrices(), depth=depths, w_std=w_stds, b_std=b_stds,
       param=st.sampled_from(["ntk", "standard"]))
def test_symmetric_psd_and_consistent(case, X, depth, w_std, b_std, param):
    net = _net(case, depth, w_std, b_std, param, width=64 if param == "standard" else None)
    k = net.kernels(X)
    for K in (k.nngp, k.ntk):
        assert np.all(np.isfinite(K))
        np.testing.assert_array_equal(K, K.T)
        ev = np.linalg.eigvalsh(K)
        assert ev[0] >= -PSD_RTOL * max(ev[-1], 0.0) - 1e-300
    # kernels(X) == kernels(X, X): the symmetric shortcut changes nothing but rounding
    k2 = net.kernels(X, X.copy())
    assert _close(k.nngp, k2.nngp) and _close(k.ntk, k2.ntk)
    # diag equals the Gram diagonal (exact diagonal formulas)
    dg = net.diag(X)
    assert _close(np.asarray(dg), np.diag(k.ntk)) and _close(dg.nngp, np.diag(k.nngp))


@CASES
@settings(max_examples=8)
@given(X=data_matrices(min_rows=3), depth=depths, data=st.data())
def test_permutation_equivariance(case, X, depth, data):
    net = _net(case, depth, 1.2, 0.3)
    perm = data.draw(st.permutations(range(X.shape[0])))
    k = net.kernels(X)
    kp = net.kernels(X[perm])
    assert _close(kp.ntk, k.ntk[np.ix_(perm, perm)]) and _close(kp.nngp, k.nngp[np.ix_(perm, perm)])


@settings(max_examples=20)
@given(X=data_matrices(), depth=depths, c=st.floats(0.01, 100.0))
def test_relu_positive_homogeneity_without_bias(X, depth, c):
    # relu without bias is 1-homogeneous in each layer: K(cX, cX) = c^2 K(X, X)
    net = infntk.FCNet("relu", depth=depth, w_std=1.4, b_std=None)
    k = net.kernels(X)
    kc = net.kernels(c * X)
    # c X rounds differently from X before the first product: ~ulps per layer
    hom = tolerance(1e-12, "c X is rounded before X X^T; the error grows ~1 ulp per layer")
    assert _close(kc.nngp, c * c * k.nngp, hom) and _close(kc.ntk, c * c * k.ntk, hom)


@pytest.mark.parametrize("depth", [0, 1, 2, 5, 20, 100])
def test_relu_known_diagonals(depth):
    # relu, w_std^2 = 2, no bias: the NNGP diagonal is q = Sigma^1(x, x) = 2 |x|^2/d at every
    # depth (E[relu(u)^2] = q/2) and the NTK diagonal is (L + 1) q = 2 (L + 1) |x|^2/d (every
    # layer adds q and the derivative dual is w^2 / 2 = 1).
    rng = np.random.default_rng(depth)
    X = rng.standard_normal((5, 7)) * rng.uniform(0.1, 10, size=(5, 1))
    w_std = np.sqrt(2.0)
    q = w_std ** 2 * (X ** 2).sum(1) / X.shape[1]
    f = w_std ** 2 / 2   # 1 up to the rounding of sqrt(2)^2, which compounds over 100 layers
    net = infntk.FCNet("relu", depth=depth, w_std=w_std, b_std=None)
    k = net.kernels(X)
    np.testing.assert_allclose(np.diag(k.nngp), q * f ** depth, rtol=tolerance(
        1e-14, "the relu diagonal recursion multiplies exactly by w^2/2 each layer: 1 rounding "
               "per layer against the reference's power"))
    # the NTK is a sum of L + 1 rounded terms: allow a few ulp per layer
    rtol = tolerance(4 * (depth + 2) * np.finfo(float).eps,
                     "a sum of L + 1 rounded terms: 4 ulp per layer")
    np.testing.assert_allclose(np.diag(k.ntk), (depth + 1) * q * f ** depth, rtol=rtol)
    dg = net.diag(X)
    np.testing.assert_allclose(dg.ntk, (depth + 1) * q * f ** depth, rtol=rtol)


def test_depth_zero_is_linear_model():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    net = infntk.FCNet("tanh" if False else "erf", depth=0, w_std=1.5, b_std=0.5)
    k = net.kernels(X, Y)
    lin = 1.5 ** 2 * X @ Y.T / 3 + 0.25
    np.testing.assert_allclose(k.nngp, lin, rtol=LINEAR_RTOL)
    np.testing.assert_allclose(k.ntk, lin, rtol=LINEAR_RTOL)


def test_standard_parameterization_bias_none_vs_zero():
    # b_std=None (no bias parameters) and 0.0 differ only in the standard NTK, by one per
    # Dense layer: Theta <- n_in K + w^2 Theta + 1.
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 3))
    a = infntk.FCNet("relu", depth=2, b_std=None, parameterization="standard", width=10).kernels(X)
    b = infntk.FCNet("relu", depth=2, b_std=0.0, parameterization="standard", width=10).kernels(X)
    np.testing.assert_array_equal(a.nngp, b.nngp)
    # contributions of the +1 of layer l are multiplied by the derivative duals above it
    n = infntk.FCNet("relu", depth=2, b_std=0.0).kernels(X)
    assert np.all(b.ntk > a.ntk)
    a2 = infntk.FCNet("relu", depth=2, b_std=None).kernels(X)
    np.testing.assert_array_equal(a2.ntk, n.ntk)


def test_standard_relu_depth1_by_hand():
    # One hidden layer, standard parameterization, width m, relu, w=1, no bias:
    # Theta = m * E[relu relu] + 1 * E[relu' relu'] * (d * <x,y>/d)   (docs/conventions.md)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((3, 4))
    m = 37
    k = infntk.FCNet("relu", depth=1, w_std=1.0, b_std=None, parameterization="standard",
                     width=m).kernels(X)
    G = X @ X.T
    nrm = np.sqrt(np.diag(G))
    cos = np.clip(G / np.outer(nrm, nrm), -1, 1)
    th = np.arccos(cos)
    np.fill_diagonal(th, 0.0)   # arccos(1 - eps) = 2e-8 would spoil this naive reference
    S1 = G / 4
    krelu = np.sqrt(np.outer(np.diag(S1), np.diag(S1))) * (np.sin(th) + (np.pi - th) * cos) / (2 * np.pi)
    kdot = (np.pi - th) / (2 * np.pi)
    # the naive reference's arccos loses digits near the diagonal (~sqrt(eps) in theta for
    # nearly parallel pairs); none of these random pairs is close, so 1e-12 relative suffices
    naive_rtol = tolerance(1e-12, "naive float64 arc-cosine formula on generic pairs")
    naive_atol = tolerance(1e-14, "entries near 0: ~100 ulp of O(1)")
    np.testing.assert_allclose(k.nngp, krelu, rtol=naive_rtol, atol=naive_atol)
    np.testing.assert_allclose(k.ntk, m * krelu + kdot * G, rtol=naive_rtol, atol=naive_atol)


@CASES
def test_zero_rows_follow_the_independence_convention(case):
    # Degenerate rows (docs/conventions.md): a zero input without bias has correlation 0 with
    # everything.
    name, params = case
    X = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.3, 0.1, 2.0]])
    net = infntk.FCNet(name, depth=3, w_std=1.3, b_std=None, **params)
    k = net.kernels(X)
    assert np.all(np.isfinite(k.nngp)) and np.all(np.isfinite(k.ntk))
    if name == "relu":
        # layer 1: Sigma = 0 on the zero row -> NNGP term 0 and Sdot = w^2/4 against others
        net1 = infntk.FCNet("relu", depth=1, w_std=1.3, b_std=None)
        k1 = net1.kernels(X)
        assert k1.nngp[0, 1] == 0.0
        assert k1.ntk[0, 1] == 0.0     # Theta^1 = 0 on the zero row times Sdot
