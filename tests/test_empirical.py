"""Tests of infntk.empirical: the finite network, its Jacobian and its empirical kernels.

Exact identities (factorized NTK == J J^T, backprop == finite differences) are checked to
rounding level; the statistical tests (empirical -> analytic kernels as width grows) use
tolerances derived in the test from the number of independent networks averaged.
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from infntk.activations import get_activation
from infntk.empirical import MLP

from tolerances import MC_SIGMAS, PSD_RTOL, tolerance

# Exact identities in float64: the factorized NTK and J J^T are different summation orders of
# the same products, so they agree to a few ulps of max|K| times the number of terms summed.
IDENTITY_RTOL = tolerance(1e-12, "same products in another summation order: a few ulp times "
                                "the number of terms")
# A closed form of a few operations (depth 0: one product X W and a bias).
FEW_OPS_RTOL = tolerance(1e-14, "depth-0 network vs its closed form: a few roundings per entry")

PARAMS = [("ntk", 0.0), ("ntk", 0.3), ("ntk", None), ("standard", 0.0), ("standard", 0.3),
          ("standard", None)]


def _points(n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def _relmax(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# --------------------------------------------------------------------------- contract
def test_params_layout_and_shapes():
    mlp = MLP(8, 2, "relu", seed=0, input_dim=3)
    assert [p.shape for p in mlp.params] == [(8, 3), (8,), (8, 8), (8,), (1, 8), (1,)]
    nob = MLP(8, 2, "relu", b_std=None, seed=0, input_dim=3)
    assert [p.shape for p in nob.params] == [(8, 3), (8, 8), (1, 8)]
    lin = MLP(8, 0, "relu", seed=0, input_dim=3)
    assert [p.shape for p in lin.params] == [(1, 3), (1,)]
    assert mlp.num_params == 8 * 3 + 8 + 64 + 8 + 8 + 1


def test_lazy_input_dim_gives_same_network():
    X = _points(4, 3)
    a = MLP(16, 2, "tanh", seed=5)
    b = MLP(16, 2, "tanh", seed=5, input_dim=3)
    np.testing.assert_array_equal(a.forward(X), b.forward(X))
    with pytest.raises(RuntimeError, match="input_dim"):
        MLP(4, 1, "relu").params


def test_linear_model_depth0():
    """depth=0 is f = (w_std/sqrt(d)) W x + b_std b; its NNGP and NTK are Sigma^1 exactly."""
    X = _points(5, 4)
    mlp = MLP(7, 0, "relu", w_std=1.7, b_std=0.4, seed=2, input_dim=4)
    W, b = mlp.params
    np.testing.assert_allclose(mlp.forward(X), (1.7 / 2.0) * X @ W[0] + 0.4 * b[0],
                               rtol=FEW_OPS_RTOL)
    sigma1 = 1.7 ** 2 * X @ X.T / 4 + 0.4 ** 2
    np.testing.assert_allclose(mlp.nngp(X), sigma1, rtol=FEW_OPS_RTOL)
    np.testing.assert_allclose(mlp.ntk(X), sigma1, rtol=FEW_OPS_RTOL)


def test_standard_and_ntk_same_function_at_init():
    """Same N(0,1) draws: the two parameterizations compute the same function at init."""
    X = _points(6, 3)
    a = MLP(32, 2, "erf", w_std=1.4, b_std=0.2, seed=3, parameterization="ntk")
    b = MLP(32, 2, "erf", w_std=1.4, b_std=0.2, seed=3, parameterization="standard")
    np.testing.assert_allclose(a.forward(X), b.forward(X), rtol=IDENTITY_RTOL, atol=tolerance(
        1e-14, "outputs near 0: the scale factors are applied at different places"))
    np.testing.assert_allclose(a.nngp(X), b.nngp(X), rtol=IDENTITY_RTOL)


def test_set_params_and_copy():
    X = _points(4, 3)
    a = MLP(8, 2, "tanh", seed=0, input_dim=3)
    c = a.copy()
    c.params[0][0, 0] += 1.0
    assert a.params[0][0, 0] != c.params[0][0, 0]
    b = MLP(8, 2, "tanh", seed=99)
    b.set_params(a.params)
    np.testing.assert_array_equal(a.forward(X), b.forward(X))
    with pytest.raises(ValueError, match=r"params\[2\]"):
        b.set_params([a.params[0], a.params[1], np.zeros((3, 3)), *a.params[3:]])
    with pytest.raises(ValueError, match="params must have"):
        b.set_params(a.params[:-1])


def test_float32():
    X = _points(6, 3)
    a = MLP(64, 2, "relu", seed=0, dtype=np.float32)
    K = a.ntk(X)
    assert K.dtype == np.float32 and a.forward(X).dtype == np.float32
    b = MLP(64, 2, "relu", seed=0)
    # float32 draws differ from float64 draws; compare J J^T within float32 instead
    J = a.jacobian(X).astype(np.float64)
    assert _relmax(K.astype(np.float64), J @ J.T) < tolerance(
        1e-5, "float32 rounding (6e-8) of 64-term sums, through 2 layers")
    assert b.ntk(X).dtype == np.float64


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(width=0), ValueError, "width"),
    (dict(width=2.5), TypeError, "width"),
    (dict(depth=-1), ValueError, "depth"),
    (dict(activation="nope"), ValueError, "unknown name"),
    (dict(w_std=-1.0), ValueError, "w_std"),
    (dict(b_std=float("nan")), ValueError, "b_std"),
    (dict(parameterization="mup"), ValueError, "parameterization"),
    (dict(dtype=np.int32), TypeError, "dtype"),
    (dict(input_dim=0), ValueError, "input_dim"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    args = dict(width=4, depth=1, activation="relu")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        MLP(**args)


def test_bad_inputs_name_the_argument():
    mlp = MLP(4, 1, "relu", seed=0, input_dim=3)
    with pytest.raises(ValueError, match="X1"):
        mlp.ntk(np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="X2"):
        mlp.ntk(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="X"):
        mlp.forward(np.ones(3))
    with pytest.raises(ValueError, match="X"):
        mlp.forward(np.ones((0, 3)))
    with pytest.raises(ValueError, match="columns"):
        mlp.forward(np.ones((2, 5)))
    with pytest.raises(TypeError, match="X1"):
        mlp.nngp(np.array([["a", "b", "c"]]))
    with pytest.raises(ValueError, match="dout"):
        mlp.gradient(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="block_size"):
        mlp.ntk(np.ones((2, 3)), block_size=0)
    with pytest.raises(ValueError, match="units"):
        mlp.layer_kernels(np.ones((2, 3)), units=0)


# --------------------------------------------------------------------------- exact identities
@pytest.mark.parametrize("parameterization, b_std", PARAMS)
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_factorized_ntk_equals_jacobian_gram(parameterization, b_std, depth):
    X, Y = _points(7, 4, 1), _points(5, 4, 2)
    mlp = MLP(24, depth, "gelu", w_std=1.3, b_std=b_std, seed=depth,
              parameterization=parameterization)
    J1, J2 = mlp.jacobian(X), mlp.jacobian(Y)
    assert _relmax(mlp.ntk(X), J1 @ J1.T) <= IDENTITY_RTOL
    assert _relmax(mlp.ntk(X, Y), J1 @ J2.T) <= IDENTITY_RTOL
    # blocking changes nothing but the summation order
    assert _relmax(mlp.ntk(X, block_size=2), J1 @ J1.T) <= IDENTITY_RTOL
    assert _relmax(mlp.ntk(X, Y, block_size=3), J1 @ J2.T) <= IDENTITY_RTOL
    K = mlp.ntk(X, block_size=3)
    np.testing.assert_array_equal(K, K.T)
    # per-layer contributions sum to the NTK; the top theta is the NTK
    lk = mlp.layer_kernels(X, Y)
    assert _relmax(sum(lk.contribution.values()), J1 @ J2.T) <= IDENTITY_RTOL
    assert _relmax(lk.theta[depth + 1], J1 @ J2.T) <= IDENTITY_RTOL
    assert _relmax(lk.sigma[depth + 1], mlp.nngp(X, Y)) <= IDENTITY_RTOL


@given(n=st.integers(1, 6), d=st.integers(1, 5), width=st.integers(1, 12),
       depth=st.integers(0, 3), seed=st.integers(0, 2 ** 16),
       act=st.sampled_from(["relu", "erf", "tanh", "sin", "leaky_relu", "step"]))
def test_factorized_ntk_property(n, d, width, depth, seed, act):
    X = np.random.default_rng(seed).standard_normal((n, d))
    mlp = MLP(width, depth, act, b_std=0.5, seed=seed)
    J = mlp.jacobian(X)
    K = mlp.ntk(X)
    G = J @ J.T
    assert np.max(np.abs(K - G)) <= IDENTITY_RTOL * max(np.max(np.abs(G)), 1.0)
    assert np.min(np.linalg.eigvalsh(K)) >= -PSD_RTOL * max(np.max(np.abs(K)), 1.0)


def test_per_unit_theta_is_subnetwork_ntk():
    """theta[l] with units=1 is the NTK of unit 0 of h^l, i.e. of the depth l-1 network whose
    output weights are row 0 of W_l (built here explicitly from the parameters)."""
    X = _points(5, 3)
    mlp = MLP(10, 3, "tanh", w_std=1.2, b_std=0.3, seed=4)
    lk = mlp.layer_kernels(X, units=1)
    for l in (1, 2, 3):
        sub = MLP(10, l - 1, "tanh", w_std=1.2, b_std=0.3, input_dim=3)
        p = [q.copy() for q in mlp.params[:2 * l]]
        p[-2] = p[-2][:1]
        p[-1] = p[-1][:1]
        sub.set_params(p)
        # the sub-network's output layer has fan-in n_{l-1}: same scale as layer l
        assert _relmax(lk.theta[l], sub.ntk(X)) <= IDENTITY_RTOL
    full = mlp.layer_kernels(X, units=10)
    for l in (1, 2, 3):
        avg = np.zeros((5, 5))
        for i in range(10):
            sub = MLP(10, l - 1, "tanh", w_std=1.2, b_std=0.3, input_dim=3)
            p = [q.copy() for q in mlp.params[:2 * l]]
            p[-2] = p[-2][i:i + 1]
            p[-1] = p[-1][i:i + 1]
            sub.set_params(p)
            avg += sub.ntk(X) / 10
        assert _relmax(full.theta[l], avg) <= IDENTITY_RTOL


@pytest.mark.parametrize("parameterization, b_std", [("ntk", 0.3), ("standard", 0.3),
                                                     ("ntk", None)])
@pytest.mark.parametrize("act", ["erf", "tanh", "gelu", "relu"])
def test_jacobian_matches_central_differences(parameterization, b_std, act):
    """J agrees with central differences. Step h = 1e-6: truncation O(h^2 f''') ~ 1e-12 and
    rounding O(eps |f| / h) ~ 1e-10 for these O(1) outputs, so 1e-7 relative is conservative.
    ReLU: random points, no pre-activation within h of the kink (checked)."""
    X = _points(3, 3, 7)
    mlp = MLP(6, 2, act, w_std=1.3, b_std=b_std, seed=11, parameterization=parameterization)
    J = mlp.jacobian(X)
    theta = [p.copy() for p in mlp.params]
    flat = np.concatenate([p.ravel() for p in theta])
    sizes = [p.size for p in theta]
    h = 1e-6
    fd = np.empty_like(J)

    def unflat(v):
        out, k = [], 0
        for p, s in zip(theta, sizes):
            out.append(v[k:k + s].reshape(p.shape))
            k += s
        return out

    probe = mlp.copy()
    for k in range(flat.size):
        e = np.zeros_like(flat)
        e[k] = h
        probe.set_params(unflat(flat + e))
        fp = probe.forward(X)
        probe.set_params(unflat(flat - e))
        fm = probe.forward(X)
        fd[:, k] = (fp - fm) / (2 * h)
    if act == "relu":
        _, Hs = mlp._forward_cache(X)
        assert min(np.min(np.abs(H)) for H in Hs[:-1]) > tolerance(
            1e-3, "no relu pre-activation within 1000 h of the kink")
    assert _relmax(J, fd) < tolerance(
        1e-7, "central differences at h = 1e-6: truncation ~1e-12, rounding ~1e-10")


def test_gradient_is_weighted_jacobian():
    X = _points(6, 3)
    dout = np.random.default_rng(1).standard_normal(6)
    for par in ("ntk", "standard"):
        mlp = MLP(9, 2, "silu", b_std=0.2, seed=0, parameterization=par)
        g = np.concatenate([a.ravel() for a in mlp.gradient(X, dout)])
        assert _relmax(g, dout @ mlp.jacobian(X)) <= IDENTITY_RTOL


def test_activation_comes_from_registry():
    """The network's phi and phi' are the registry's, parameters included."""
    mlp = MLP(4, 1, "leaky_relu", alpha=0.2, seed=0, input_dim=2)
    act = get_activation("leaky_relu", alpha=0.2)
    z = np.linspace(-2, 2, 9)
    np.testing.assert_array_equal(mlp._phi(z), act.fn(z))
    np.testing.assert_array_equal(mlp._dphi(z), act.deriv(z))
    assert mlp.activation.params == {"alpha": 0.2}
