"""infntk.hermite: coefficients against exact values, mpmath, closed-form duals and quadrature."""
import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infntk import hermite as H
from infntk.activations import activation_names
from infntk.quadrature import dual_quadrature
from tolerances import rel_err_vs_max, tolerance

# The double-precision quadrature paths are accurate to a few ulps of sqrt(E[phi^2]) (module
# notes); 2e-15 leaves room for the accumulation over up to ~1000 nodes.
COEF_ATOL = tolerance(2e-15, "a few ulp of sqrt(E[phi^2]) accumulated over up to ~1000 nodes")
# A bound compared with the error it bounds: allow the rounding of the two sides (a few ulp
# of O(1) values).
BOUND_SLACK = tolerance(1e-15, "rounding of an O(1) error and of its bound: a few ulp")
# np.testing.assert_allclose's default rtol, written out where a call gave only atol (kept as
# it was; these values are exact to a few ulp, so it is far looser than needed).
NUMPY_DEFAULT_RTOL = tolerance(1e-7, "assert_allclose's default rtol, kept from the original")

SMOOTH = ["tanh", "sigmoid", "softplus", "silu", "gelu", "erf", "sin", "cos", "gaussian"]


def _dfact(n):
    return 1 if n <= 0 else math.prod(range(n, 0, -2))


# ----------------------------------------------------------------------------- known values
def test_relu_coefficients_textbook():
    K = 60
    a = H.coefficients("relu", K)
    expected = np.zeros(K + 1)
    expected[0] = 1 / (2 * math.pi)
    expected[1] = 0.25
    for m in range(1, K // 2 + 1):
        expected[2 * m] = _dfact(2 * m - 3) / (2 * math.pi * (2 * m) * (2 * m - 1) * _dfact(2 * m - 2))
    np.testing.assert_allclose(a ** 2, expected, rtol=tolerance(
        1e-13, "double factorial ratios up to K = 60: ~K roundings"), atol=0)
    assert np.all(a[3::2] == 0)


def test_closed_forms_match_mp_and_homogeneity():
    for name, params in [("relu", {}), ("leaky_relu", {"alpha": 0.2}), ("abs", {}),
                         ("identity", {}), ("step", {}), ("sign", {}), ("arccos", {"n": 2}),
                         ("arccos", {"n": 3})]:
        for q in (3.0,):
            a = H.coefficients(name, 8, q, **params)
            ref = np.array([float(x) for x in H.coefficients(name, 8, q, precision="mp",
                                                             dps=20, **params)])
            scale = math.sqrt(H.second_moment(name, q, **params))
            tol = tolerance(4e-15, "closed-form coefficients: 4 ulp of sqrt(E[phi^2])")
            assert np.max(np.abs(a - ref)) <= tol * scale, (name, params, q)


def test_vectorized_over_q_and_zero_variance():
    q = np.array([0.0, 0.5, 2.0])
    for name in ("relu", "tanh", "elu", "step"):
        A = H.coefficients(name, 8, q)
        assert A.shape == (3, 9)
        for i, qi in enumerate(q):
            # the Gauss-Hermite order follows max(q): equal up to rounding, not bitwise
            np.testing.assert_allclose(A[i], H.coefficients(name, 8, qi), rtol=0, atol=COEF_ATOL)
    # q = 0: [phi(0), 0, ...] exactly
    assert np.all(H.coefficients("cos", 5, 0.0) == [1, 0, 0, 0, 0, 0])
    assert np.all(H.coefficients("relu", 5, 0.0) == 0)


def test_derivative_coefficients_relation_and_conventions():
    # Stein relation (docs/conventions.md, Hermite conventions) vs direct projection of the
    # registry's derivative
    for name in ("tanh", "elu", "softplus", "gelu"):
        q = np.array([0.3, 1.0, 4.0])
        b_rel = H.derivative_coefficients(name, 20, q)
        b_dir, _, _ = H._tails(H.get_activation(name), 20, q, derivative=True)
        assert np.max(np.abs(b_rel - b_dir)) <= tolerance(
            1e-13, "Stein relation vs direct projection: sqrt(k) factors up to k = 20 amplify "
                   "the quadrature's ulps"), name
    # relu: phi' = step, b_k independent of q, and the q -> 0 limit keeps b_0 = 1/2
    # (docs/conventions.md, degenerate rows)
    np.testing.assert_allclose(H.derivative_coefficients("relu", 6, [0.0, 1.0, 7.0]),
                               np.tile(H.coefficients("step", 6), (3, 1)), rtol=0,
                               atol=tolerance(1e-16, "the same closed form: ulps of 1/2"))
    # step and sign: phi' = 0 a.e. (docs/conventions.md)
    assert np.all(H.derivative_coefficients("sign", 5, 2.0) == 0)
    # smooth phi at q = 0: [phi'(0), 0, ...]
    np.testing.assert_allclose(H.derivative_coefficients("sin", 3, 0.0), [1, 0, 0, 0],
                               rtol=NUMPY_DEFAULT_RTOL, atol=0)


# ----------------------------------------------------------------------------- double vs mp
@pytest.mark.parametrize("name", activation_names())
def test_double_agrees_with_mp_for_every_activation(name):
    params = {"arccos": {"n": 2}, "leaky_relu": {"alpha": 0.1}, "elu": {"alpha": 0.7}}.get(name, {})
    K = 10
    for q in (0.3, 2.5):          # 0.3: Gauss-Hermite path; 2.5: composite path (smooth ones)
        a = H.coefficients(name, K, q, **params)
        ref = np.array([float(x) for x in H.coefficients(name, K, q, precision="mp", dps=20,
                                                         **params)])
        scale = math.sqrt(H.second_moment(name, q, **params))
        assert np.max(np.abs(a - ref)) <= COEF_ATOL * scale, (name, q, np.max(np.abs(a - ref)))


@pytest.mark.parametrize("name,q", [("tanh", 0.01), ("tanh", 40.0), ("sigmoid", 100.0),
                                    ("elu", 30.0)])
def test_gauss_hermite_order_rule_and_large_q(name, q):
    """The order rule (GH for small q) and the composite rule (large q) at K = 40."""
    K = 40
    a = H.coefficients(name, K, q)
    ref = np.array([float(x) for x in H.coefficients(name, K, q, precision="mp", dps=20)])
    scale = math.sqrt(H.second_moment(name, q))
    assert np.max(np.abs(a - ref)) <= COEF_ATOL * scale


def test_callable_with_mp_arithmetic():
    f = lambda x: x * x * 0.5 - x  # noqa: E731   polynomial: a_k exact, a_k = 0 for k > 2
    a = H.coefficients(f, 5, 2.0)
    # phi(sqrt2 z) = z^2 - sqrt2 z: a_0 = 1, a_1 = -sqrt2, a_2 = sqrt2 (z^2 = h_0 + sqrt2 h_2)
    np.testing.assert_allclose(a, [1, -math.sqrt(2), math.sqrt(2), 0, 0, 0],
                               rtol=NUMPY_DEFAULT_RTOL,
                               atol=tolerance(1e-15, "exact polynomial projection: a few ulp"))
    ref = H.coefficients(f, 3, 2.0, precision="mp", dps=30)
    with mpmath.workdps(30):
        assert abs(ref[2] - mpmath.sqrt(2)) < mpmath.mpf(10) ** -28


# ----------------------------------------------------------------------------- Parseval, tails
@settings(max_examples=15)
@given(name=st.sampled_from(SMOOTH + ["elu"]), q=st.floats(0.05, 4.0))
def test_parseval_smooth(name, q):
    K = 150
    a = H.coefficients(name, K, q)
    E = H.second_moment(name, q)
    T = H.tail(name, K, q)
    # analytic activations: tanh's tail decays slowest (poles at +-i pi/2: T_150 / E is 6e-12
    # at q = 2 but 7.3e-9 at q = 4, the top of the drawn range); the others are < 4e-11 on
    # [0.05, 4]. elu has a jump in phi'' at 0, so its coefficients decay only algebraically
    # (T_150 ~ 1e-7).
    bound = {"elu": tolerance(1e-6, "elu: algebraic decay, T_150 ~ 1e-7"),
             "tanh": tolerance(1e-8, "tanh: T_150 / E measured 7.3e-9 at q = 4")}.get(
        name, tolerance(1e-9, "analytic: T_150 / E < 4e-11 on [0.05, 4] (erf at q = 4)"))
    assert T <= bound * E
    assert abs(np.sum(a ** 2) - E) <= T + tolerance(1e-14, "sum of 150 squares: ~n ulp") * E


@settings(max_examples=10)
@given(name=st.sampled_from(["relu", "abs", "step", "sign", "leaky_relu"]), q=st.floats(0.05, 4.0))
def test_parseval_closed_forms(name, q):
    """Closed-form tails decay to 0 (exact E[phi^2] vs the exact partial sums)."""
    K = 4000
    a = H.coefficients(name, K, q)
    E = H.second_moment(name, q)
    assert np.sum(a ** 2) <= E * (1 + tolerance(1e-13, "sum of 4000 squares: ~n ulp / 10"))
    # relu-type tails decay like K^{-3/2}, step-type like K^{-1/2}
    tail_tol = tolerance(0.02, "step-type tails ~ K^(-1/2) = 0.016 at K = 4000")
    assert H.tail(name, K, q) <= tail_tol * E
    assert H.tail(name, K, q) <= H.tail(name, K // 4, q)


def test_tail_nonnegative_and_monotone():
    for name in ("tanh", "relu", "identity", "elu"):
        T = np.array([H.tail(name, K, 1.3) for K in range(0, 40, 3)])
        assert np.all(T >= 0)
        assert np.all(np.diff(T) <= tolerance(1e-17, "a tail ~0 may wobble by ulps of 1e-2"))
    assert H.tail("identity", 1, 1.0) == 0.0


# ----------------------------------------------------------------------------- Mehler
def _relu_dual(q1, q2, rho):
    th = np.arccos(rho)
    return np.sqrt(q1 * q2) / (2 * np.pi) * (np.sin(th) + (np.pi - th) * rho), (np.pi - th) / (2 * np.pi)


def _erf_dual(q1, q2, rho):
    s = rho * np.sqrt(q1 * q2)
    nngp = 2 / np.pi * np.arcsin(2 * s / np.sqrt((1 + 2 * q1) * (1 + 2 * q2)))
    dot = 4 / np.pi / np.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * s * s)
    return nngp, dot


@settings(max_examples=20)
@given(q1=st.floats(0.05, 3.0), q2=st.floats(0.05, 3.0), rho=st.floats(-1.0, 1.0),
       K=st.integers(0, 40))
def test_truncation_bound_bounds_the_error(q1, q2, rho, K):
    for name, ref in (("relu", _relu_dual), ("erf", _erf_dual)):
        s = H.dual_series(name, q1, q2, rho, K)
        nngp, dot = ref(q1, q2, rho)
        assert abs(s.nngp - nngp) <= s.nngp_bound + BOUND_SLACK, (name, K)
        assert abs(s.ntk_dot - dot) <= s.dot_bound + BOUND_SLACK, (name, K)


def test_series_vs_closed_form_vs_quadrature():
    rng = np.random.default_rng(0)
    q1 = rng.uniform(0.1, 1.5, 50)
    q2 = rng.uniform(0.1, 1.5, 50)
    rho = rng.uniform(-1, 1, 50)
    # erf: series (certified) vs textbook closed form vs 2-D quadrature
    s = H.dual_series("erf", q1, q2, rho, 80)
    nngp, dot = _erf_dual(q1, q2, rho)
    assert np.all(np.abs(s.nngp - nngp) <= s.nngp_bound + BOUND_SLACK)
    assert np.all(s.nngp_bound < tolerance(1e-12, "erf at order 80, q <= 1.5: the bound is tiny"))
    qn, qd = dual_quadrature("erf", q1, q2, rho=rho, order=120)
    quad = tolerance(1e-13, "order-120 Gauss-Hermite on the analytic erf: ~ulps of E[phi^2]")
    assert rel_err_vs_max(qn, nngp) < quad and rel_err_vs_max(qd, dot) < quad
    # tanh: no closed form; series and quadrature agree within bound + quadrature error
    s = H.dual_series("tanh", q1, q2, rho, H.truncation_order("tanh", np.r_[q1, q2], 1e-13))
    qn, qd = dual_quadrature("tanh", q1, q2, rho=rho, order=200)
    assert np.all(np.abs(s.nngp - qn) <= s.nngp_bound + tolerance(
        1e-13, "order-200 quadrature of tanh (q <= 1.5): its own error"))
    assert np.all(np.abs(s.ntk_dot - qd) <= s.dot_bound + tolerance(
        1e-12, "order-200 quadrature of tanh': the derivative path loses ~1 digit more"))


def test_truncation_order_meets_tol():
    q = [0.5, 1.0, 2.0]
    for name, tol in (("tanh", 1e-10), ("erf", 1e-14), ("gelu", 1e-12)):
        K = H.truncation_order(name, q, tol)
        for der in (False, True):
            assert max(H.mehler_bound(name, K, qi, qi, derivative=der) for qi in q) <= tol
        assert max(max(H.mehler_bound(name, K - 1, qi, qi, derivative=der) for qi in q)
                   for der in (False, True)) > tol
    with pytest.raises(ValueError, match="not reachable"):
        H.truncation_order("relu", 1.0, 1e-12)


# ----------------------------------------------------------------------------- gamma_NTK
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_gamma_ntk_closed_forms(alpha):
    # relu: phi' = step, sum_l mu'_l^2 rho^l = 1/4 + arcsin(rho)/(2 pi), so sum_{l>=1} = arcsin/2pi
    # and the denominator is 1/4: gamma = 2 alpha arcsin(alpha) / pi
    g, err = H.gamma_ntk("relu", alpha)
    assert abs(g - 2 * alpha * math.asin(alpha) / math.pi) <= err + BOUND_SLACK
    assert err < tolerance(1e-12, "relu's gamma series converges geometrically here")
    # erf at q = 1: sum_l mu'_l^2 rho^l = (4/pi) / sqrt(9 - 4 rho^2)
    g, err = H.gamma_ntk("erf", alpha)
    exact = alpha * (1 / math.sqrt(9 - 4 * alpha ** 2) - 1 / 3) / (1 / math.sqrt(5) - 1 / 3)
    assert abs(g - exact) <= err + BOUND_SLACK
    assert 0 < g < 1


def test_gamma_ntk_affine_is_undefined():
    with pytest.raises(ValueError, match="affine"):
        H.gamma_ntk("identity", 0.5)


# ----------------------------------------------------------------------------- errors
def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown name"):
        H.coefficients("nope", 3)
    with pytest.raises(ValueError, match="q"):
        H.coefficients("tanh", 3, -1.0)
    with pytest.raises(ValueError, match="K"):
        H.coefficients("tanh", -1)
    with pytest.raises(TypeError, match="K"):
        H.coefficients("tanh", 2.5)
    with pytest.raises(ValueError, match="precision"):
        H.coefficients("tanh", 3, precision="quad")
    with pytest.raises(ValueError, match="rho"):
        H.dual_series("tanh", 1.0, 1.0, 1.5, 3)
    with pytest.raises(ValueError, match="alpha"):
        H.gamma_ntk("tanh", 1.5)
    with pytest.raises(ValueError, match="tol"):
        H.truncation_order("tanh", 1.0, -1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        H.coefficients(lambda x: np.exp(x * x), 3, 1.0)


def test_row_expansions_consistent_with_dual_series():
    q = np.array([0.5, 1.0, 0.5, 2.0])
    r = H.row_expansions("tanh", 25, q)
    s = H.dual_series("tanh", q[:, None], q[None, :], 0.4, 25)
    pw = 0.4 ** np.arange(26)
    row_atol = tolerance(1e-15, "the same 26-term sum in another order: a few ulp")
    np.testing.assert_allclose((r.a * pw) @ r.a.T, s.nngp, rtol=0, atol=row_atol)
    np.testing.assert_allclose((r.b * pw) @ r.b.T, s.ntk_dot, rtol=0, atol=row_atol)
    assert np.all(np.sqrt(np.outer(r.tail_a, r.tail_a)) <= s.nngp_bound)
    np.testing.assert_allclose(r.b, H.derivative_coefficients("tanh", 25, q), rtol=0,
                               atol=tolerance(1e-13, "Stein-relation derivative coefficients vs "
                                                     "the rows' path (sqrt(k) factors)"))


_MP_ACTS = {
    "tanh": (mpmath.tanh, lambda x: mpmath.sech(x) ** 2),
    "sigmoid": (lambda x: 1 / (1 + mpmath.exp(-x)), lambda x: 1 / (4 * mpmath.cosh(x / 2) ** 2)),
    "softplus": (lambda x: mpmath.log1p(mpmath.exp(x)), lambda x: 1 / (1 + mpmath.exp(-x))),
}


@pytest.mark.parametrize("name", sorted(_MP_ACTS))
@pytest.mark.parametrize("derivative", [False, True])
def test_second_moments_vs_mpmath(name, derivative):
    # E[phi(sqrt(q) z)^2] and E[phi'(sqrt(q) z)^2] to a few ulps, including q ~ 1 where the
    # Gauss-Hermite order tuned on phi was too low for phi'^2 (tanh: sech^4, 4e-14 at q = 1.1);
    # the series engine's diagonal allows 64 eps for them (_DIAG_ERR)
    tol = tolerance(8 * np.finfo(float).eps, "a positive sum over ~550 composite nodes: a few "
                    "roundings; well inside the series engine's 64 eps diagonal allowance")
    f = _MP_ACTS[name][1 if derivative else 0]
    qs = [0.05, 0.5, 0.9, 1.0, 1.1, 1.2, 3.0, 50.0]
    # one variance per call: a chunk's rule must not depend on its other variances being large
    got = [H.second_moment(name, q, derivative=derivative) for q in qs]
    with mpmath.workdps(30):
        for q, v in zip(qs, got):
            r = mpmath.sqrt(q)
            pts = [-mpmath.inf, -12, -4, -1, -1 / r, 0, 1 / r, 1, 4, 12, mpmath.inf]
            ref = mpmath.quad(lambda z: f(r * z) ** 2 * mpmath.exp(-z * z / 2),
                              sorted(set(pts))) / mpmath.sqrt(2 * mpmath.pi)
            assert abs(v - float(ref)) <= tol * float(ref), (q, v, ref)
