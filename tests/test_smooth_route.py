"""The plain route of the smooth closed forms (erf, sin, cos, gaussian, gelu) and the criterion
that sends a pair to the stable route instead.

* ``smooth_plain`` against the mpmath duals of tests/oracles/mp_reference.py (which share no
  code with infntk._duals), on random pair states from variance 1e-8 to 1e4, nearly parallel
  and nearly antipodal included: a few ulp of ``sqrt(k11 k22)`` (resp. ``sqrt(kd11 kd22)``).
* The route criterion at its boundary: networks whose per-row gains lie on both sides of the
  threshold (checked from the engine's own row statistics, so that both routes really run),
  with nearly identical and nearly antipodal rows, against the mpmath recursion to the
  closed-form contract, FC and composed engines alike.
"""
import numpy as np
import pytest
from numba import njit

import infntk
from infntk import activations
from infntk._duals import smooth_plain
from infntk.layers import Activation, Dense
from infntk.network import Network
from oracles.mp_reference import mp_dual, mp_kernels
from tolerances import CLOSED_FORM_RTOL, rel_err_vs_max, tolerance

SMOOTH = ["erf", "sin", "cos", "gaussian", "gelu"]
# plain forms: a square root, an atan2 or exp/expm1 and a few products (docstring: a few ulp)
PLAIN_ULPS = tolerance(16.0, "smooth_plain: a few roundings of sqrt(k11 k22), per output")
EPS = np.finfo(float).eps
GAIN_RTOL = tolerance(1e-12, "the gains recomputed with NumPy's arcsin: 5 layers of roundings")


@njit(cache=True)
def _plain_all(code, q1, q2, A, B):
    k = np.empty_like(q1)
    kd = np.empty_like(q1)
    for i in range(q1.shape[0]):
        k[i], kd[i] = smooth_plain(code, q1[i], q2[i], np.sqrt(q1[i]), np.sqrt(q2[i]), A[i], B[i])
    return k, kd


def _states(rng, n):
    q1 = 10.0 ** rng.uniform(-8, 4, n)
    q2 = q1 * 10.0 ** rng.uniform(-1, 1, n)
    m = np.sqrt(q1) * np.sqrt(q2)
    # correlations spread over (-1, 1), with many within 1e-12..1e-2 of +-1
    t = np.concatenate([rng.uniform(-1, 1, n // 2), 1 - 10.0 ** rng.uniform(-12, -2, n // 4),
                        -1 + 10.0 ** rng.uniform(-12, -2, n - n // 2 - n // 4)])
    A = m * (1 - t)
    B = m * (1 + t)
    return q1, q2, A, B, m * t


@pytest.mark.parametrize("name", SMOOTH)
def test_plain_duals_against_mpmath(name):
    code = activations.get_activation(name).family.code
    q1, q2, A, B, s = _states(np.random.default_rng(5), 120)
    k, kd = _plain_all(code, q1, q2, A, B)
    for i in range(len(q1)):
        rk, rkd = mp_dual(name, q1[i], q2[i], s[i], dps=40)
        k11, kd11 = mp_dual(name, q1[i], q1[i], q1[i], same=True, dps=40)
        k22, kd22 = mp_dual(name, q2[i], q2[i], q2[i], same=True, dps=40)
        sk = float((k11 * k22) ** 0.5)
        skd = float((kd11 * kd22) ** 0.5)
        # the state's own rounding (s from the rounded A, B) moves k by kd * eps * m at most
        m = np.sqrt(q1[i] * q2[i])
        assert abs(k[i] - float(rk)) <= PLAIN_ULPS * EPS * (sk + skd * m), (q1[i], q2[i], s[i])
        assert abs(kd[i] - float(rkd)) <= PLAIN_ULPS * EPS * (skd + sk + skd * m), (
            q1[i], q2[i], s[i])


def _rows(rng):
    X = rng.normal(size=(6, 4))
    X[1] = X[0] * (1 + 1e-9)                   # nearly identical by norm
    X[2] = X[0] + 1e-8 * rng.normal(size=4)     # nearly identical by angle
    X[3] = -X[0] * (1 - 1e-9)                   # nearly antipodal
    return X


def _gains(name, X, depth, w_std, b_std):
    net = infntk.FCNet(name, depth=depth, w_std=w_std, b_std=b_std)
    rec, _ = net._engine(X.shape[1]).rows(X)
    return rec.g


# w_std per activation straddling the threshold: the rows' gains are below 1 at some layers
# and above it at others (asserted below)
BOUNDARY = [("erf", 1.1), ("erf", 1.6), ("sin", 1.0), ("sin", 1.4), ("cos", 1.3), ("cos", 2.0),
            ("gaussian", 2.0), ("gaussian", 3.2), ("gelu", 1.4), ("gelu", 2.0)]


@pytest.mark.parametrize("name,w_std", BOUNDARY)
def test_route_criterion_at_its_boundary(name, w_std):
    X = _rows(np.random.default_rng(11))
    depth, b_std = 8, 0.2
    ref_nngp, ref_ntk = mp_kernels(name, X, depth=depth, w_std=w_std, b_std=b_std)
    fc = infntk.FCNet(name, depth=depth, w_std=w_std, b_std=b_std).kernels(X)
    assert rel_err_vs_max(fc.nngp, ref_nngp) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(fc.ntk, ref_ntk) <= CLOSED_FORM_RTOL


def test_boundary_cases_straddle_the_threshold():
    """Across BOUNDARY, per-row gains occur on both sides of 1 (so both routes are tested)."""
    X = _rows(np.random.default_rng(11))
    lo = hi = 0
    for name, w in BOUNDARY:
        g = _gains(name, X, 8, w, 0.2)
        lo += int((g < 1.0).sum())
        hi += int((g > 1.0).sum())
    assert lo > 50 and hi > 50


@pytest.mark.parametrize("name,w_std", [("erf", 1.6), ("gelu", 2.0), ("sin", 1.4)])
def test_composed_engine_takes_the_same_routes(name, w_std):
    """A composed network with a smooth activation then a kinked one: the kink needs the gaps
    before it accurate relative to themselves (the gain is infinite there)."""
    X = _rows(np.random.default_rng(12))
    layers = [Dense(w_std, 0.2), Activation(name), Dense(w_std, 0.2), Activation(name),
              Dense(1.2, 0.1), Activation("relu"), Dense(1.0, 0.1)]
    from oracles.mp_network import mp_network_kernels
    spec = [("dense", w_std, 0.2), ("act", name, {}), ("dense", w_std, 0.2), ("act", name, {}),
            ("dense", 1.2, 0.1), ("act", "relu", {}), ("dense", 1.0, 0.1)]
    k_ref, t_ref = mp_network_kernels(spec, X.tolist(), X.tolist())
    k_ref = np.array([[float(v) for v in r] for r in k_ref])
    t_ref = np.array([[float(v) for v in r] for r in t_ref])
    k = Network(layers).kernels(X)
    assert rel_err_vs_max(k.nngp, k_ref) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(k.ntk, t_ref) <= CLOSED_FORM_RTOL


def test_row_gains_match_their_definition():
    """g = k11_l * w2 * prod_{l' > l} (w2 E[phi'^2]_{l'}) / q_out, recomputed in NumPy."""
    X = np.random.default_rng(3).normal(size=(4, 5))
    name, depth, w, b = "erf", 5, 1.3, 0.1
    g = _gains(name, X, depth, w, b)
    w2, b2 = w * w, b * b
    for i, x in enumerate(X):
        q = w2 * (x @ x) / len(x) + b2
        k11s, kd11s = [], []
        for _ in range(depth):
            k11 = 2 / np.pi * np.arcsin(2 * q / (1 + 2 * q))
            kd11 = 4 / np.pi / np.sqrt(1 + 4 * q)
            k11s.append(k11)
            kd11s.append(kd11)
            q = w2 * k11 + b2
        for l in range(depth):
            expect = k11s[l] * w2 * np.prod([w2 * kd for kd in kd11s[l + 1:]]) / q
            assert abs(g[i, l] - expect) <= GAIN_RTOL * expect


# Pairs that the first layer makes nearly parallel through a dominant bias (inputs of norm
# 1e-2 .. 1e-6, cosines 0.3-0.93: no carried D), followed by a chaotic recursion that
# amplifies any absolute error of their small gaps: these need the stable route (with the
# plain route for every pair, four of the six 1e-6 cases reach errors up to 4e-7).
BIAS_THEN_CHAOS = [("sin", 4.0, 0.5, 0.3), ("cos", 4.0, 0.1, 0.93), ("sin", 2.0, 0.5, 0.3),
                   ("erf", 3.0, 0.5, 0.9), ("gelu", 2.5, 0.1, 0.93), ("gaussian", 4.0, 0.3, 0.5)]


@pytest.mark.parametrize("scale", [1e-2, 1e-6])
@pytest.mark.parametrize("name,w_std,b_std,c0", BIAS_THEN_CHAOS)
def test_bias_made_parallel_pairs_in_the_chaotic_regime(name, w_std, b_std, c0, scale):
    rng = np.random.default_rng(21)
    d = 8
    x = rng.normal(size=d)
    x /= np.linalg.norm(x)
    y = rng.normal(size=d)
    y -= (y @ x) * x
    y /= np.linalg.norm(y)
    X = np.stack([x, c0 * x + np.sqrt(1 - c0 ** 2) * y, 0.7 * x]) * scale * np.sqrt(d)
    depth = 12
    g = _gains(name, X, depth, w_std, b_std)
    assert np.sqrt(g[0] * g[1]).max() > 1.0          # a case the criterion must catch
    ref_nngp, ref_ntk = mp_kernels(name, X, depth=depth, w_std=w_std, b_std=b_std, dps=80)
    fc = infntk.FCNet(name, depth=depth, w_std=w_std, b_std=b_std).kernels(X)
    assert rel_err_vs_max(fc.nngp, ref_nngp) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(fc.ntk, ref_ntk) <= CLOSED_FORM_RTOL
    layers = [Dense(w_std, b_std), Activation(name)] * depth + [Dense(w_std, b_std)]
    from infntk import _gram
    from infntk._backends.composed import ComposedEngine
    from infntk.network import _compile
    eng = ComposedEngine(_compile(layers, d, None), d)
    k3 = _gram.gram(eng, X, X, True)
    assert rel_err_vs_max(k3.nngp, ref_nngp) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(k3.ntk, ref_ntk) <= CLOSED_FORM_RTOL
