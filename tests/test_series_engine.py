"""The Hermite-series engine (infntk._backends.series) through infntk.FCNet.

Layers of checks (STYLE 6):

* the certified bound holds against an independent 25-digit mpmath evaluation of the same
  recursion by 2-D quadrature (tanh, sigmoid, softplus, silu, elu, a callable), including
  nearly identical and antipodal rows;
* against the second, independent float64 route (2-D Gauss-Hermite, infntk.quadrature), with
  hypothesis over small random inputs;
* closed-form activations passed as *callables* agree with FCNet's closed forms within the bound;
* tol is met and changes the truncation; invariants (symmetry, PSD, diag, blocks, X2 = X);
  degenerate rows (docs/conventions.md, degenerate rows).
"""
import math
import warnings

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special

import infntk
from infntk.quadrature import dual_quadrature
from tolerances import PSD_RTOL, tolerance

# The accuracy requested from the series engine in the bound tests; its certified bound must
# meet it (relative to max|K|): the requested tol is the tolerance, no slack added.
REQUESTED_TOL = tolerance(1e-10, "the tol= passed to FCNet: the bound must meet the request")
# Two evaluations that differ only in the BLAS blocking / schedule: a few ulp of max|K|
# (measured 1e-16).
SCHEDULE_RTOL = tolerance(1e-14, "block size changes only the BLAS blocking of X X^T: ulps")

DPS = 25


# ----------------------------------------------------------------------------- mp reference
def _trapezoid(b_strip):
    """Nodes and weights for E[g(z)], z ~ N(0, 1), g analytic in the strip |Im z| < b_strip.

    Trapezoid rule of step h on [-Z, Z], Z = 10.5 (Gaussian mass outside < 1e-24); its error is
    ~ exp(-2 pi b / h + b^2 / 2), and h is chosen for exp(-62).
    """
    h = 2 * math.pi * b_strip / 62.0
    Z = mp.mpf("10.5")
    n = int(math.ceil(float(Z) / h))
    hh = Z / n
    z = [hh * k for k in range(-n, n + 1)]
    norm = hh / mp.sqrt(2 * mp.pi)
    return z, [norm * mp.exp(-x * x / 2) for x in z]


_GL_NODES = {}


def _split_rule(kinks_z, Z=mp.mpf("10.5")):
    """Gauss-Legendre (96 nodes per piece) on [-Z, Z] split at the kinks: for integrands that
    are entire on each piece (elu and its derivative), exact to far beyond DPS digits."""
    prec = mp.mp.prec
    if prec not in _GL_NODES:
        from mpmath.calculus.quadrature import GaussLegendre
        _GL_NODES[prec] = GaussLegendre(mp.mp).calc_nodes(6, prec)   # 3 * 2^5 = 96 nodes
    pts = sorted({-Z, Z, *[k for k in kinks_z if -Z < k < Z]})
    norm = 1 / mp.sqrt(2 * mp.pi)
    z, w = [], []
    for lo, hi in zip(pts[:-1], pts[1:]):
        half, mid = (hi - lo) / 2, (hi + lo) / 2
        for t, wt in _GL_NODES[prec]:
            x = mid + half * t
            z.append(x)
            w.append(half * wt * norm * mp.exp(-x * x / 2))
    return z, w


def _rule(strip_z):
    """A 1-D rule for E[g(z)]: trapezoid if g is analytic in |Im z| < strip_z, else split at 0."""
    return _trapezoid(0.85 * strip_z) if strip_z is not None else _split_rule([mp.mpf(0)])


def _strip(strip, r):
    return None if strip is None else strip / float(r)


def mp_expect1(g, strip_z):
    """E[g(z)], z ~ N(0, 1)."""
    z, w = _rule(strip_z)
    return mp.fsum(wj * g(zj) for zj, wj in zip(z, w))


def mp_expect2(f, q1, q2, s, strip=None):
    """E[f(u) f(v)], (u, v) ~ N(0, [[q1, s], [s, q2]]), by nested 1-D rules (2-D quadrature).

    ``strip``: distance of f's singularities from the real axis (analytic f: trapezoid), or
    None for f entire on each side of a kink at 0 (split Gauss-Legendre, inner rule split at
    the kink's image ``z2 = -rho z1 / c``).
    """
    zero = mp.mpf(0)
    if q1 == 0 and q2 == 0:                      # degenerate rows: correlation 0
        return f(zero) ** 2
    if q1 == 0 or q2 == 0:
        r = mp.sqrt(q1 + q2)
        return f(zero) * mp_expect1(lambda z: f(r * z), _strip(strip, r))
    r1, r2 = mp.sqrt(q1), mp.sqrt(q2)
    rho = max(min(s / (r1 * r2), mp.mpf(1)), mp.mpf(-1))
    c = mp.sqrt((1 - rho) * (1 + rho))
    if c == 0:
        return mp_expect1(lambda z: f(r1 * z) * f(r2 * rho * z), _strip(strip, max(r1, r2)))
    sz = _strip(strip, max(r1, r2))
    zo, wo = _rule(sz)
    z, w = zo, wo
    total = mp.mpf(0)
    for z1, w1 in zip(zo, wo):
        if strip is None:
            z, w = _split_rule([-rho * z1 / c])
        inner = mp.fsum(wj * f(r2 * (rho * z1 + c * zj)) for zj, wj in zip(z, w))
        total += w1 * f(r1 * z1) * inner
    return total


def mp_second_moment(f, q, strip):
    if q == 0:
        return f(mp.mpf(0)) ** 2
    r = mp.sqrt(q)
    return mp_expect1(lambda z: f(r * z) ** 2, _strip(strip, r))


def mp_kernels(mp_fn, mp_deriv, X, depth, w_std, b_std, strip):
    """NNGP and NTK (ntk parameterization) of the rows of X, by 2-D quadrature at DPS digits."""
    with mp.workdps(DPS):
        n, d = X.shape
        Xm = [[mp.mpf(float(v)) for v in row] for row in X]
        w2, b2 = mp.mpf(w_std) ** 2, mp.mpf(b_std) ** 2
        K = [[mp.fsum(a * b for a, b in zip(Xm[i], Xm[j])) / d for j in range(n)] for i in range(n)]
        S = [[w2 * K[i][j] + b2 for j in range(n)] for i in range(n)]
        T = [[S[i][j] for j in range(n)] for i in range(n)]
        for _ in range(depth):
            Kn = [[None] * n for _ in range(n)]
            Dn = [[None] * n for _ in range(n)]
            for i in range(n):
                for j in range(i, n):
                    if i == j:
                        Kn[i][i] = mp_second_moment(mp_fn, S[i][i], strip)
                        Dn[i][i] = mp_second_moment(mp_deriv, S[i][i], strip)
                    else:
                        Kn[i][j] = Kn[j][i] = mp_expect2(mp_fn, S[i][i], S[j][j], S[i][j], strip)
                        Dn[i][j] = Dn[j][i] = mp_expect2(mp_deriv, S[i][i], S[j][j], S[i][j],
                                                         strip)
            T = [[w2 * Kn[i][j] + b2 + w2 * Dn[i][j] * T[i][j] for j in range(n)]
                 for i in range(n)]
            S = [[w2 * Kn[i][j] + b2 for j in range(n)] for i in range(n)]
        return (np.array([[float(v) for v in r] for r in S]),
                np.array([[float(v) for v in r] for r in T]))


def _assert_within_bound(k, ref_nngp, ref_ntk):
    err = max(np.abs(k.nngp - ref_nngp).max(), np.abs(k.ntk - ref_ntk).max())
    assert err <= k.error_bound, (err, k.error_bound)
    return err


def _mp_sigmoid(x):
    return 1 / (1 + mp.exp(-x))


def test_mp_reference_reproduces_erf_closed_form():
    """The test's own 2-D quadrature against the textbook erf dual (sanity of the reference)."""
    with mp.workdps(DPS):
        q1, q2, s = mp.mpf("0.7"), mp.mpf("1.3"), mp.mpf("0.6")
        F = mp_expect2(mp.erf, q1, q2, s, strip=2.0)   # entire: any strip works
        ref = 2 / mp.pi * mp.asin(2 * s / mp.sqrt((1 + 2 * q1) * (1 + 2 * q2)))
        assert abs(F - ref) < mp.mpf(10) ** -20
        # elu path (split Legendre) on a kinked integrand with a closed form: relu
        relu = lambda x: x if x > 0 else mp.mpf(0)          # noqa: E731
        F = mp_expect2(relu, q1, q2, s, strip=None)
        th = mp.acos(s / mp.sqrt(q1 * q2))
        ref = mp.sqrt(q1 * q2) * (mp.sin(th) + (mp.pi - th) * mp.cos(th)) / (2 * mp.pi)
        assert abs(F - ref) < mp.mpf(10) ** -20


# singularity distance of phi from the real axis (for the trapezoid step), None = kinked
_MP_CASES = [
    # id, activation, params, mp fn, mp deriv, strip, X, depth, w, b
    ("tanh-near-identical-d3", "tanh", {}, mp.tanh, lambda x: mp.sech(x) ** 2, math.pi / 2,
     np.array([[0.8, -0.5, 0.3], [0.8 * (1 + 1e-7), -0.5, 0.3 * (1 - 2e-7)]]), 3, 1.2, 0.2),
    ("tanh-antipodal-d2", "tanh", {}, mp.tanh, lambda x: mp.sech(x) ** 2, math.pi / 2,
     np.array([[0.6, -0.9], [-0.6 * 1.5, 0.9 * 1.5]]), 2, 1.0, 0.0),
    ("sigmoid-d2", "sigmoid", {}, _mp_sigmoid, lambda x: _mp_sigmoid(x) * _mp_sigmoid(-x),
     math.pi, np.array([[1.0, 0.2], [-0.3, 0.7]]), 2, 1.5, 0.3),
    ("softplus-d1", "softplus", {}, lambda x: mp.log1p(mp.exp(x)), _mp_sigmoid, math.pi,
     np.array([[1.1, -0.4], [0.2, 0.9]]), 1, 1.0, 0.5),
    ("silu-near-identical-d2", "silu", {}, lambda x: x * _mp_sigmoid(x),
     lambda x: _mp_sigmoid(x) * (1 + x * _mp_sigmoid(-x)), math.pi,
     np.array([[0.9, 0.4], [0.9 * (1 + 1e-3), 0.4]]), 2, 1.3, 0.1),
    ("atan-callable-d2", np.arctan, {"deriv": lambda x: 1 / (1 + x * x)}, mp.atan,
     lambda x: 1 / (1 + x * x), 1.0, np.array([[0.5, -0.2], [0.1, 0.6]]), 2, 1.0, 0.2),
]


@pytest.mark.parametrize("case", _MP_CASES, ids=[c[0] for c in _MP_CASES])
def test_bound_holds_against_mp_quadrature(case):
    _, act, params, f, df, strip, X, depth, w, b = case
    net = infntk.FCNet(act, depth=depth, w_std=w, b_std=b, tol=REQUESTED_TOL, **params)
    k = net.kernels(X)
    ref_nngp, ref_ntk = mp_kernels(f, df, X, depth, w, b, strip)
    _assert_within_bound(k, ref_nngp, ref_ntk)
    scale = max(np.abs(ref_nngp).max(), np.abs(ref_ntk).max())
    assert k.error_bound <= REQUESTED_TOL * scale


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_elu_bound_holds_against_mp_quadrature(alpha):
    """elu converges algebraically: on nearly identical rows (where the Mehler tail is not
    damped by |rho|^K) the series cannot reach tol. With alpha = 1 (phi' continuous) that pair
    goes to the direct quadrature and tol is met; with alpha = 0.5 (phi' jumps) it stays on the
    series, the warning names the kink. The bound holds in both."""
    X = np.array([[0.7, -0.4], [0.7, -0.4 + 1e-9], [0.3, 0.8]])
    net = infntk.FCNet("elu", depth=1, w_std=1.2, b_std=0.3, alpha=alpha)
    if alpha == 1.0:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            k = net.kernels(X)
    else:
        with pytest.warns(RuntimeWarning, match="not reached.*kinks"):
            k = net.kernels(X)
    a = mp.mpf(alpha)
    f = lambda x: x if x > 0 else a * mp.expm1(x)                 # noqa: E731
    df = lambda x: mp.mpf(1) if x > 0 else a * mp.exp(x)          # noqa: E731
    ref_nngp, ref_ntk = mp_kernels(f, df, X, 1, 1.2, 0.3, None)
    err = _assert_within_bound(k, ref_nngp, ref_ntk)
    # algebraic convergence: the bound at the largest order is still informative
    assert k.error_bound < tolerance(1e-2, "elu's algebraic tail at the order cap") and err > 0


# ----------------------------------------------------------------------------- second route
def _quadrature_kernels(name, X, depth, w, b, order=200):
    """NTK-parameterization recursion with infntk.quadrature's 2-D Gauss-Hermite duals."""
    d = X.shape[1]
    w2, b2 = w * w, b * b
    S = w2 * (X @ X.T) / d + b2
    T = S.copy()
    for _ in range(depth):
        q = np.diag(S).copy()
        qq = np.outer(q, q)
        with np.errstate(invalid="ignore", divide="ignore"):
            R = np.where(qq > 0, S / np.sqrt(qq), 0.0)
        F, G = dual_quadrature(name, q[:, None], q[None, :], rho=R, order=order)
        T = w2 * F + b2 + w2 * G * T
        S = w2 * F + b2
    return S, T


@settings(max_examples=12)
@given(X=hnp.arrays(np.float64, st.tuples(st.integers(2, 4), st.integers(1, 3)),
                    elements=st.floats(-1.0, 1.0, width=64)),
       depth=st.integers(1, 2), w=st.floats(0.5, 1.0), b=st.floats(0.0, 0.5),
       name=st.sampled_from(["tanh", "sigmoid", "silu"]))
def test_agrees_with_gauss_hermite_route(X, depth, w, b, name):
    net = infntk.FCNet(name, depth=depth, w_std=w, b_std=b, tol=1e-9)
    k = net.kernels(X)
    S, T = _quadrature_kernels(name, X, depth, w, b)
    # q <= w^2 + b^2 <= 1.25 here; the 200-point rule's documented error is ~1e-15 (nngp) and
    # 2e-13 (derivative) relative to E[phi^2] at q <= 1 (infntk.quadrature notes): allow 1e-12
    # times the kernel scale on top of the certified series bound.
    scale = max(np.abs(S).max(), np.abs(T).max(), 1e-300)
    quad = tolerance(1e-12, "the 200-point rule's documented error (2e-13 derivative) + margin")
    assert np.abs(k.nngp - S).max() <= k.error_bound + quad * scale
    assert np.abs(k.ntk - T).max() <= k.error_bound + quad * scale


# ----------------------------------------------------------------------------- closed forms
_CALLABLES = [
    ("sin", np.sin, np.cos),
    ("erf", special.erf, lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x)),
    ("gelu", lambda x: x * special.ndtr(x),
     lambda x: special.ndtr(x) + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)),
]


@pytest.mark.parametrize("name,f,df", _CALLABLES, ids=[c[0] for c in _CALLABLES])
@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_callable_matches_closed_form(name, f, df, param):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((6, 4))
    X[1] = X[0] * (1 + 1e-9)          # nearly identical
    X[2] = -1.7 * X[0]                # antipodal
    X[3] = 0.0                        # zero row (b_std > 0: not degenerate)
    width = 64 if param == "standard" else None
    for depth in (1, 3):
        kw = dict(depth=depth, w_std=1.2, b_std=0.3, parameterization=param, width=width)
        ref = infntk.FCNet(name, **kw).kernels(X)
        k = infntk.FCNet(f, deriv=df, tol=REQUESTED_TOL, **kw).kernels(X)
        _assert_within_bound(k, ref.nngp, ref.ntk)
        assert k.error_bound <= REQUESTED_TOL * max(np.abs(ref.nngp).max(),
                                                    np.abs(ref.ntk).max())


def test_tol_sets_truncation_and_bound():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 3))
    ref = infntk.FCNet("erf", depth=2, w_std=1.1, b_std=0.2).kernels(X)
    scale = max(np.abs(ref.nngp).max(), np.abs(ref.ntk).max())
    res = {}
    for tol in (1e-6, 1e-10):
        net = infntk.FCNet(special.erf, deriv=lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x),
                           depth=2, w_std=1.1, b_std=0.2, tol=tol)
        k = net.kernels(X)
        assert k.error_bound <= tol * scale
        _assert_within_bound(k, ref.nngp, ref.ntk)
        res[tol] = k
    assert all(a < b for a, b in zip(res[1e-6].orders, res[1e-10].orders))
    assert res[1e-6].error_bound > 100 * res[1e-10].error_bound


# ----------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("act,params,tol", [("tanh", {}, 1e-8), ("softplus", {}, 1e-8),
                                            ("elu", {"alpha": 0.7}, 1e-2)])
def test_invariants(act, params, tol):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((9, 4))
    Y = rng.standard_normal((4, 4))
    net = infntk.FCNet(act, depth=2, w_std=1.3, b_std=0.1, tol=tol, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # elu: tol not reachable
        k = net.kernels(X)
        kxx = net.kernels(X, X.copy())
        kb = net.kernels(X, block_rows=2)
        kxy = net.kernels(X, Y)
        kall = net.kernels(np.vstack([X, Y]))
    eb = k.error_bound
    for M in (k.nngp, k.ntk):
        assert np.array_equal(M, M.T)
        ev = np.linalg.eigvalsh(M)
        assert ev.min() >= -PSD_RTOL * ev.max()
    # block size changes only the schedule and the BLAS blocking of X X^T (rounding: a few
    # ulps of the Gram entries, measured 1e-16; the closed-form engine behaves the same)
    for M, Mb in ((k.nngp, kb.nngp), (k.ntk, kb.ntk)):
        assert np.abs(M - Mb).max() <= SCHEDULE_RTOL * np.abs(M).max()
    # X2 = X explicitly: the diagonal from the series instead of the exact second moments
    assert np.abs(kxx.nngp - k.nngp).max() <= eb + kxx.error_bound
    assert np.abs(kxx.ntk - k.ntk).max() <= eb + kxx.error_bound
    # (the truncation orders depend on the pairs: with X2 = X every row meets itself at
    # rho = 1, so the off-diagonal entries agree within the two bounds, not to rounding)
    # cross blocks agree with the joint Gram within both bounds
    n = len(X)
    assert np.abs(kxy.ntk - kall.ntk[:n, n:]).max() <= kxy.error_bound + kall.error_bound
    # diag equals the Gram diagonal exactly
    dg = net.diag(X)
    assert np.array_equal(np.asarray(dg), np.diag(k.ntk))
    assert np.array_equal(dg.nngp, np.diag(k.nngp))


def test_degenerate_rows():
    """Zero input, no bias (degenerate rows, docs/conventions.md): correlation 0, so u is 0 and
    v is independent of it."""
    X = np.array([[0.0, 0.0], [0.7, -1.1]])
    w = 1.3
    net = infntk.FCNet("sigmoid", depth=1, w_std=w, b_std=0.0)
    k = net.kernels(X)
    # E[sigmoid(0) sigmoid(v)] = 1/2 * 1/2 (sigmoid(v) - 1/2 is odd); Theta^1(0, y) = 0
    assert abs(k.nngp[0, 1] - w * w / 4) <= k.error_bound
    assert abs(k.ntk[0, 1] - w * w / 4) <= k.error_bound
    assert k.nngp[0, 0] == w * w / 4
    # standard parameterization with zero-initialized biases: Theta^1(0, 0) = 1 while
    # Sigma^1(0, 0) = 0, so the derivative's convention shows: b_0(0)^2 = ((1 + alpha)/2)^2
    alpha = 0.5
    net = infntk.FCNet("elu", depth=1, w_std=w, b_std=0.0, parameterization="standard",
                       width=10, alpha=alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        k = net.kernels(X)
        kxx = net.kernels(X, X.copy())
    expected = w * w * ((1 + alpha) / 2) ** 2 + 1.0
    few = tolerance(1e-15, "w^2 b_0^2 + 1 in float64: a few roundings")
    assert math.isclose(k.ntk[0, 0], expected, rel_tol=few)
    assert math.isclose(kxx.ntk[0, 0], expected, rel_tol=few)
    assert math.isclose(net.diag(X)[0], expected, rel_tol=few)


def test_depth_zero_is_linear():
    X = np.array([[1.0, 2.0], [-0.5, 0.25], [3.0, 0.0]])
    k = infntk.FCNet("tanh", depth=0, w_std=1.5, b_std=0.5).kernels(X)
    ref = 2.25 * (X @ X.T) / 2 + 0.25
    assert np.abs(k.nngp - ref).max() <= k.error_bound
    assert np.abs(k.ntk - ref).max() <= k.error_bound
    assert k.error_bound <= tolerance(1e-14, "depth 0: the bound is (d + 8) eps, rounding only") \
        * np.abs(ref).max()


# ----------------------------------------------------------------------------- certificates
def _relu(x):
    return np.maximum(x, 0.0)


def _heav(x):
    return (x > 0).astype(float)


# callables whose kernels the 50-digit closed-form oracle knows exactly (independent of the
# series engine): kinked ones with their a.e. derivative (np.sign(0) = 0, (0 > 0) = 0: the
# values at the kink must never be used), and smooth ones
CERT_CALLABLES = [
    ("abs", {}, np.abs, np.sign),
    ("relu", {}, _relu, _heav),
    ("leaky_relu", {"alpha": 0.1}, lambda x: np.where(x > 0, x, 0.1 * x),
     lambda x: np.where(x > 0, 1.0, 0.1)),
    ("erf", {}, special.erf, lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x)),
    ("sin", {}, np.sin, np.cos),
    ("gaussian", {}, lambda x: np.exp(-x * x / 2), lambda x: -x * np.exp(-x * x / 2)),
    ("gelu", {}, lambda x: x * special.ndtr(x),
     lambda x: special.ndtr(x) + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)),
]
_SMOOTH = {"erf", "sin", "gaussian", "gelu"}


@st.composite
def _cert_inputs(draw):
    n = draw(st.integers(2, 4))
    d = draw(st.integers(1, 4))
    X = draw(hnp.arrays(np.float64, (n, d), elements=st.floats(-2.0, 2.0, width=64)))
    X = X * draw(st.sampled_from([1e-2, 0.1, 0.5, 1.0, 2.0]))
    if draw(st.booleans()):
        X[-1] = 0.0
    return X


@settings(max_examples=40)
@given(X=_cert_inputs(), case=st.sampled_from(CERT_CALLABLES), depth=st.integers(0, 3),
       w=st.floats(0.2, 2.0), b=st.one_of(st.none(), st.floats(0.0, 1.0)),
       tol=st.sampled_from([1e-3, 1e-6, 1e-8, 1e-10]))
def test_certificate_holds_against_50_digit_reference(X, case, depth, w, b, tol):
    """max |K - reference| <= error_bound, for kinked and smooth callables (the certificate)."""
    from certificates import certificate_check
    name = case[0]
    k, err, scale = certificate_check(case, X, depth, w, b, tol)
    assert err <= k.error_bound, (err, k.error_bound)
    if name in _SMOOTH and scale > 0:
        assert k.error_bound <= tol * scale * (1 + tolerance(1e-12, "scale from the reference"))


@pytest.mark.parametrize("f", [_heav, np.sign, lambda x: np.floor(x), lambda x: _heav(x - 0.37)],
                         ids=["step", "sign", "floor", "shifted-step"])
def test_discontinuous_callable_is_refused(f):
    with pytest.raises(ValueError, match="'step'.*'sign'|FCNet\\('step'\\)"):
        infntk.FCNet(f, depth=2, deriv=lambda x: 0 * x).kernels(np.eye(3))
