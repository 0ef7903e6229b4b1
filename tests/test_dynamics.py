"""Tests of infntk.dynamics: closed-form gradient flow, discrete GD, kernel ridge, filters,
step size and the Arora et al. bound, each against an independent reference."""
import math

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from infntk import dynamics as dyn
from tolerances import MC_SIGMAS, rel_err_vs_max, tolerance

# solve_ivp is run at rtol=1e-10, atol=1e-12 (the brief); its *global* error over the
# integration interval is a few times the local tolerance, so the closed form is compared at
# 1e-8 relative to max |f| (a loose reference, not a loose implementation: see the
# tighter algebraic checks below, which are at 1e-12).
IVP_RTOL = tolerance(1e-10, "solve_ivp's local relative tolerance (the brief)")
IVP_ATOL = tolerance(1e-12, "solve_ivp's local absolute tolerance (the brief)")
ODE_RTOL = tolerance(1e-8, "global error of solve_ivp at rtol=1e-10 over the interval: a few "
                           "times the local tolerance, relative to max |f|")
# Algebraic identities evaluated in float64 on well-conditioned Grams (cond <= ~1e3):
# rounding ~ cond * eps ~ 1e-13.
ALG_RTOL = tolerance(1e-11, "float64 identities on Grams with cond <= ~1e3: ~cond * eps = 1e-13, "
                            "with 100x margin")
# Closed forms by hand on 2x2 kernels: a few roundings of exp and of the eigen-decomposition.
BY_HAND_RTOL = tolerance(1e-14, "2x2 by-hand closed forms: ~10 roundings of exp / eigh")
# A quantity computed twice in float64 by different operation orders.
REORDER_RTOL = tolerance(1e-12, "same float64 quantity by two operation orders: ~100 ulp")
# Monotone / bounded quantities: allow the last-ulp rounding of the comparison.
ULP_SLACK = tolerance(1e-15, "a few ulp: rounding of an exactly monotone or bounded quantity")


def joint_kernel(n, m, rank=None, seed=0):
    """A consistent PSD kernel on n train + m test points from random features."""
    rng = np.random.default_rng(seed)
    r = n + m + 3 if rank is None else rank
    Phi = rng.standard_normal((n + m, r)) / math.sqrt(r)
    G = Phi @ Phi.T
    return G[:n, :n], G[n:, :n]


def ode_reference(K, Kx, y, f0, f0x, lr, times):
    """Integrate df/dt = -(lr / n) [K; Kx] (f_train - y) with scipy (an independent solver)."""
    n = K.shape[0]
    y2 = y.reshape(n, -1)
    k = y2.shape[1]
    M = np.vstack([K, Kx])
    state0 = np.concatenate([np.broadcast_to(f0, y.shape).reshape(n, k),
                             np.broadcast_to(f0x, (Kx.shape[0],) + y.shape[1:]).reshape(-1, k)])

    def rhs(_, z):
        Z = z.reshape(-1, k)
        return (-(lr / n) * M @ (Z[:n] - y2)).ravel()

    sol = solve_ivp(rhs, (0.0, float(max(times))), state0.ravel(), t_eval=times, method="DOP853",
                    rtol=IVP_RTOL, atol=IVP_ATOL)
    assert sol.success
    Z = sol.y.T.reshape(len(times), n + Kx.shape[0], k)
    return Z[:, :n].reshape((len(times),) + y.shape), Z[:, n:].reshape(
        (len(times), Kx.shape[0]) + y.shape[1:])


# ----------------------------------------------------------------------------- vs the ODE
@pytest.mark.parametrize("k", [None, 3])
def test_gradient_flow_matches_ode_solver(k):
    n, m = 7, 4
    K, Kx = joint_kernel(n, m, seed=1)
    rng = np.random.default_rng(2)
    shape = (n,) if k is None else (n, k)
    y = rng.standard_normal(shape)
    f0 = rng.standard_normal(shape)
    f0x = rng.standard_normal((m,) + shape[1:])
    times = np.array([0.0, 0.3, 2.0, 11.0, 40.0])
    lr = 0.7
    ref_tr, ref_te = ode_reference(K, Kx, y, f0, f0x, lr, times)
    p = dyn.gradient_flow(K, Kx, y, f0, f0x, t=times, lr=lr)
    assert p.train.shape == (len(times),) + shape
    assert p.test.shape == (len(times), m) + shape[1:]
    assert rel_err_vs_max(p.train, ref_tr) < ODE_RTOL
    assert rel_err_vs_max(p.test, ref_te) < ODE_RTOL
    # scalar t gives the same as the corresponding slice, without the time axis
    q = dyn.gradient_flow(K, Kx, y, f0, f0x, t=2.0, lr=lr)
    assert q.train.shape == shape and q.test.shape == (m,) + shape[1:]
    np.testing.assert_allclose(q.test, p.test[2], rtol=0, atol=tolerance(
        1e-14, "scalar t vs the same slice of a t-vector: ~50 ulp") * np.abs(p.test).max())


def test_singular_kernel_and_inconsistent_cross_kernel_match_ode():
    # rank 3 < n = 6: a 3-dimensional null space, whose residual component never decays in
    # sample; with an arbitrary (not kernel-consistent) K_test_train the test predictions move
    # linearly in t along that null space: filter lr t / n exactly. The ODE knows nothing of
    # eigenvalues, so it is the reference for this limit.
    n, m = 6, 3
    K, _ = joint_kernel(n, m, rank=3, seed=3)
    rng = np.random.default_rng(4)
    Kx = rng.standard_normal((m, n))
    y = rng.standard_normal(n)
    times = np.array([0.0, 1.0, 5.0, 30.0])
    ref_tr, ref_te = ode_reference(K, Kx, y, 0.0, 0.0, 1.3, times)
    p = dyn.gradient_flow(K, Kx, y, t=times, lr=1.3)
    assert rel_err_vs_max(p.train, ref_tr) < ODE_RTOL
    assert rel_err_vs_max(p.test, ref_te) < ODE_RTOL


# ----------------------------------------------------------------------------- limits
def test_t_zero_is_exactly_f0():
    K, Kx = joint_kernel(5, 2, seed=5)
    rng = np.random.default_rng(6)
    y, f0, f0x = rng.standard_normal(5), rng.standard_normal(5), rng.standard_normal(2)
    p = dyn.gradient_flow(K, Kx, y, f0, f0x, t=0.0)
    np.testing.assert_array_equal(p.train, f0)
    np.testing.assert_array_equal(p.test, f0x)
    assert p.loss == pytest.approx(0.5 * np.sum((f0 - y) ** 2) / 5, rel=ULP_SLACK)


def test_t_infinity_is_kernel_regression_eq21():
    K, Kx = joint_kernel(6, 3, seed=7)
    rng = np.random.default_rng(8)
    y, f0, f0x = rng.standard_normal((6, 2)), rng.standard_normal((6, 2)), rng.standard_normal(
        (3, 2))
    expected = f0x + Kx @ np.linalg.solve(K, y - f0)           # eq. (21), by hand
    p = dyn.gradient_flow(K, Kx, y, f0, f0x, t=np.inf)
    assert rel_err_vs_max(p.test, expected) < ALG_RTOL
    assert rel_err_vs_max(p.train, y) < ALG_RTOL                 # interpolation
    assert p.loss < tolerance(1e-20, "interpolation: residual ~1e-11 after the solve, squared")
    # and the finite-time formula converges to it: lam_min t / n >> 1
    lam_min = np.linalg.eigvalsh(K)[0]
    t_big = 60.0 * 6 / lam_min
    q = dyn.gradient_flow(K, Kx, y, f0, f0x, t=t_big)
    assert rel_err_vs_max(q.test, expected) < tolerance(
        1e-9, "finite t = 60 n / lam_min: exp(-60) is negligible; rounding of the exp-filter "
              "at large lam t times cond(K)")


def test_t_infinity_singular_kernel_is_pseudo_inverse_limit():
    # duplicated training point: K = [[1, 1], [1, 1]], y = (1, 0). Eigen-pairs: lam = 2 on
    # (1, 1)/sqrt2, lam = 0 on (1, -1)/sqrt2. The residual y - f0 = (1, 0) has components
    # s = 1/2 on (1, 1) and d = 1/2 on (1, -1). The lam = 2 part decays, the other stays:
    # f_t(X) = (1/2)(1 - exp(-lr t 2 / 2)) (1, 1) -> (1/2, 1/2), the least-squares fit.
    # A consistent test point K(x, X) = (1, 1) gets 2 * (1/2) (1 - e^{-t}) / 2 * 2 / 2 ... =
    # (1 - e^{-t}) / 2 -> 1/2.
    K = np.ones((2, 2))
    Kx = np.ones((1, 2))
    y = np.array([1.0, 0.0])
    t = 0.8
    p = dyn.gradient_flow(K, Kx, y, t=t)
    np.testing.assert_allclose(p.train, 0.5 * (1 - math.exp(-t)) * np.ones(2), rtol=BY_HAND_RTOL)
    np.testing.assert_allclose(p.test, [0.5 * (1 - math.exp(-t))], rtol=BY_HAND_RTOL)
    q = dyn.gradient_flow(K, Kx, y, t=np.inf)
    # t = inf on the singular K = 1 1^T: least-squares solve, a few more roundings
    SINGULAR_RTOL = tolerance(1e-13, "t = inf on a rank-1 K: least-squares solve, ~100 ulp")
    np.testing.assert_allclose(q.train, [0.5, 0.5], rtol=SINGULAR_RTOL)
    np.testing.assert_allclose(q.test, [0.5], rtol=SINGULAR_RTOL)


def test_two_point_example_by_hand():
    # K = [[a, b], [b, a]] with a = 3, b = 1: eigenvectors (1, 1)/sqrt2 (lam1 = a + b = 4) and
    # (1, -1)/sqrt2 (lam2 = a - b = 2). y = (1, 0), f0 = 0, n = 2, lr = 1, t = 1.
    # Residual y = s (1, 1) + d (1, -1) with s = d = 1/2. Eq. (18): each part decays by
    # exp(-lr t lam / n): e1 = exp(-2), e2 = exp(-1), so
    #   f_t(x1) = s (1 - e1) + d (1 - e2),   f_t(x2) = s (1 - e1) - d (1 - e2).
    # Test point with K(x, X) = (p, q) = (2, 1): eq. (20) in the eigenbasis gives
    #   f_t(x) = (p + q) s (1 - e1) / lam1 + (p - q) d (1 - e2) / lam2
    #          = 3 * 0.5 (1 - e^-2) / 4 + 1 * 0.5 (1 - e^-1) / 2.
    K = np.array([[3.0, 1.0], [1.0, 3.0]])
    Kx = np.array([[2.0, 1.0]])
    p = dyn.gradient_flow(K, Kx, [1.0, 0.0], t=1.0, lr=1.0)
    e1, e2 = math.exp(-2.0), math.exp(-1.0)
    np.testing.assert_allclose(p.train, [0.5 * (1 - e1) + 0.5 * (1 - e2),
                                         0.5 * (1 - e1) - 0.5 * (1 - e2)], rtol=BY_HAND_RTOL)
    np.testing.assert_allclose(p.test, [1.5 * (1 - e1) / 4 + 0.5 * (1 - e2) / 2],
                               rtol=BY_HAND_RTOL)
    # the training loss: ||r_t||^2 / (2 n) = (2 s^2 e1^2 + 2 d^2 e2^2) / 4
    assert p.loss == pytest.approx((0.5 * e1 ** 2 + 0.5 * e2 ** 2) / 4, rel=BY_HAND_RTOL)


def test_small_time_uses_expm1():
    # lr t lam / n ~ 1e-13: f_t - f0 = (lr t / n) K (y - f0) (1 + O(1e-13)). A naive
    # 1 - exp(-a) would lose ~3 of the 16 digits here (relative error ~1e-3 of the increment).
    K, Kx = joint_kernel(5, 2, seed=9)
    y = np.random.default_rng(10).standard_normal(5)
    t = 1e-13
    p = dyn.gradient_flow(K, Kx, y, t=t)
    first_order_tr = t / 5 * K @ y
    first_order_te = t / 5 * Kx @ y
    # expm1 keeps the increment to ~1e-13 (the O(t) second-order term); naive 1 - exp: ~1e-3
    EXPM1_RTOL = tolerance(1e-11, "second-order term O(lr t lam / n) ~ 1e-13 plus rounding")
    assert rel_err_vs_max(p.train, first_order_tr) < EXPM1_RTOL
    assert rel_err_vs_max(p.test, first_order_te) < EXPM1_RTOL


def test_training_loss_monotone_and_consistent():
    K, _ = joint_kernel(8, 1, seed=11)
    rng = np.random.default_rng(12)
    y, f0 = rng.standard_normal((8, 2)), rng.standard_normal((8, 2))
    times = np.concatenate([[0.0], np.logspace(-3, 3, 60), [np.inf]])
    loss = dyn.training_loss(K, y, f0, t=times, lr=0.5)
    assert loss.shape == times.shape
    assert np.all(np.diff(loss) <= ULP_SLACK * loss[0])
    p = dyn.gradient_flow(K, None, y, f0, t=times, lr=0.5)
    assert p.test is None
    direct = 0.5 * np.sum((p.train - y) ** 2, axis=(1, 2)) / 8
    np.testing.assert_allclose(loss, direct, rtol=tolerance(
        1e-10, "training_loss (eigenbasis) vs ||f_t - y||^2 from predictions: the squared "
              "residual cancels at large t"), atol=tolerance(1e-14, "a loss near 0: ~50 ulp of "
                                                        "the initial loss") * loss[0])
    np.testing.assert_allclose(p.loss, direct, rtol=tolerance(
        1e-13, "same squared residual, summed in another order"), atol=tolerance(
        1e-30, "a loss that underflows to ~0 at t = inf"))


# ----------------------------------------------------------------------------- discrete GD
def test_gradient_descent_matches_explicit_iteration():
    n, m = 6, 3
    K, Kx = joint_kernel(n, m, seed=13)
    rng = np.random.default_rng(14)
    y, f0, f0x = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(m)
    lr = 0.9 * dyn.max_learning_rate(K)
    steps = [0, 1, 7, 50]
    f, fx, rec = f0.copy(), f0x.copy(), {}
    for k in range(max(steps) + 1):
        if k in steps:
            rec[k] = (f.copy(), fx.copy())
        r = f - y
        f, fx = f - lr / n * K @ r, fx - lr / n * Kx @ r
    p = dyn.gradient_descent(K, Kx, y, f0, f0x, steps=steps, lr=lr)
    for i, k in enumerate(steps):
        assert rel_err_vs_max(p.train[i], rec[k][0]) < ALG_RTOL
        assert rel_err_vs_max(p.test[i], rec[k][1]) < ALG_RTOL


def test_gradient_descent_tends_to_flow_at_t_equals_steps():
    # k steps of size lr vs gradient flow with the same lr at t = k: the error is O(lr) at
    # fixed lr * k, so halving lr (and doubling k) halves it.
    K, Kx = joint_kernel(5, 2, seed=15)
    y = np.random.default_rng(16).standard_normal(5)
    errs = []
    for lr, k in [(0.2, 10), (0.1, 20), (0.05, 40)]:
        flow = dyn.GradientFlow(K, Kx, y, lr=lr)
        errs.append(np.abs(flow.predict_steps(k).test - flow.predict(float(k)).test).max())
    # halving lr halves an O(lr) error: ratio 2, within the O(lr^2) correction
    RATE_BAND = tolerance(0.2, "an O(lr) error halves with lr: ratio 2 +- 10% (the O(lr^2) term)")
    assert abs(errs[0] / errs[1] - 2) < RATE_BAND and abs(errs[1] / errs[2] - 2) < RATE_BAND


def test_max_learning_rate_is_the_stability_threshold():
    K, _ = joint_kernel(6, 1, seed=17)
    lam = np.linalg.eigvalsh(K)
    lr_max = dyn.max_learning_rate(K)
    assert lr_max == pytest.approx(2 * 6 / lam[-1], rel=REORDER_RTOL)
    y = np.random.default_rng(18).standard_normal(6)
    # explicit iteration: just below the threshold the loss decays, just above it explodes
    for factor, grows in [(0.98, False), (1.02, True)]:
        f = np.zeros(6)
        for _ in range(2000):
            f = f - factor * lr_max / 6 * K @ (f - y)
        assert (np.linalg.norm(f - y) > 10 * np.linalg.norm(y)) == grows
    assert dyn.max_learning_rate(np.zeros((3, 3))) == math.inf


# ----------------------------------------------------------------------------- kernel ridge
@pytest.mark.parametrize("k", [None, 2])
def test_kernel_ridge_matches_sklearn(k):
    from sklearn.kernel_ridge import KernelRidge

    n, m = 12, 5
    K, Kx = joint_kernel(n, m, seed=19)
    rng = np.random.default_rng(20)
    y = rng.standard_normal((n,) if k is None else (n, k))
    for ridge in [1e-3, 0.1, 3.0]:
        ref = KernelRidge(alpha=ridge, kernel="precomputed").fit(K, y)
        p = dyn.kernel_ridge(K, Kx, y, ridge)
        assert rel_err_vs_max(p.test, ref.predict(Kx)) < ALG_RTOL
        assert rel_err_vs_max(p.train, ref.predict(K)) < ALG_RTOL


def test_kernel_ridge_residual_form_and_ridge_array():
    n, m = 8, 3
    K, Kx = joint_kernel(n, m, seed=21)
    rng = np.random.default_rng(22)
    y, f0, f0x = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(m)
    ridges = np.array([0.0, 0.01, 1.0])
    many = dyn.kernel_ridge(K, Kx, y, ridges, f0, f0x)
    assert many.test.shape == (3, m) and many.loss.shape == (3,)
    for i, z in enumerate(ridges):
        one = dyn.kernel_ridge(K, Kx, y, z, f0, f0x)
        # eq. (5) by hand
        expected = f0x + Kx @ np.linalg.solve(z * np.eye(n) + K, y - f0)
        assert rel_err_vs_max(one.test, expected) < ALG_RTOL
        assert rel_err_vs_max(many.test[i], expected) < ALG_RTOL
    # ridge 0 is the t = inf limit of gradient flow
    assert rel_err_vs_max(many.test[0], dyn.gradient_flow(K, Kx, y, f0, f0x).test) < ALG_RTOL


# ----------------------------------------------------------------------------- filters
def test_filters_closed_forms_and_bounds():
    lam = np.concatenate([[0.0], np.logspace(-8, 6, 57)])
    t, lr, n = 3.0, 0.5, 4
    g = dyn.flow_filter(lam, t, lr, n)
    assert g[0] == lr * t / n
    pos = lam > 0
    np.testing.assert_allclose(g[pos], (1 - np.exp(-lr * t * lam[pos] / n)) / lam[pos],
                               rtol=tolerance(1e-7, "the naive reference 1 - exp(-a) loses "
                                                    "~9 digits at lam = 1e-8"))
    assert np.all(g <= np.minimum(lr * t / n, np.where(pos, 1 / np.where(pos, lam, 1), np.inf))
                  * (1 + ULP_SLACK))
    z = dyn.equivalent_ridge(t, n, lr)
    r = dyn.ridge_filter(lam, z)
    assert np.all(r <= 1 / z) and r[0] == 1 / z
    ratio = g / r
    assert np.all(ratio >= 1 - REORDER_RTOL) and np.all(ratio < 1.2985)
    # gd filter: k steps of lr versus flow at t = k when lr -> 0
    gd = dyn.gd_filter(lam[:20], steps=1000, lr=1e-4, n=1)
    np.testing.assert_allclose(gd, dyn.flow_filter(lam[:20], 1000, 1e-4, 1), rtol=tolerance(
        1e-3, "gd vs flow differ by O(lr lam) relative; lr = 1e-4, lam <= ~1e-3 ... 1e2 here"))
    assert dyn.gd_filter([0.0], 7, 0.5, 2)[0] == 0.5 * 7 / 2


# ----------------------------------------------------------------------------- Arora et al.
def unit_rows(n, d, seed):
    X = np.random.default_rng(seed).standard_normal((n, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_arora_gram_closed_form_and_monte_carlo():
    X = unit_rows(6, 4, 23)
    G = X @ X.T
    # 30-digit reference: float64 arccos(<x, x>) near 1 would err by ~1e-8 on the diagonal.
    with mpmath.workdps(30):
        Xm = [[mpmath.mpf(float(v)) for v in row] for row in X]
        expected = np.empty((6, 6))
        for i in range(6):
            for j in range(6):
                ni = mpmath.sqrt(mpmath.fsum(v * v for v in Xm[i]))
                nj = mpmath.sqrt(mpmath.fsum(v * v for v in Xm[j]))
                g = mpmath.fsum(a * b for a, b in zip(Xm[i], Xm[j]))
                rho = max(min(g / (ni * nj), 1), -1)
                expected[i, j] = float(g * (mpmath.pi - mpmath.acos(rho)) / (2 * mpmath.pi))
    H = dyn.arora_gram(X)
    assert rel_err_vs_max(H, expected) < REORDER_RTOL
    # Monte Carlo over the first-layer weights w ~ N(0, I): E[<x,y> 1{w.x>=0} 1{w.y>=0}]
    S = 200_000
    W = np.random.default_rng(24).standard_normal((S, 4))
    A = (X @ W.T >= 0).astype(float)                   # (n, S)
    mc = G * (A @ A.T) / S
    p = (A @ A.T) / S
    se = np.abs(G) * np.sqrt(p * (1 - p) / S)
    assert np.all(np.abs(H - mc) <= MC_SIGMAS * se + ULP_SLACK)   # se is an array


def test_arora_bound_separates_true_from_random_labels():
    # synthetic: labels of a fixed linear teacher on the sphere versus random signs
    X = unit_rows(120, 5, 25)
    w = np.random.default_rng(26).standard_normal(5)
    y_true = np.sign(X @ w)
    b_true = dyn.arora_bound(X, y_true)
    rng = np.random.default_rng(27)
    b_rand = [dyn.arora_bound(X, rng.choice([-1.0, 1.0], size=120)) for _ in range(5)]
    margin = tolerance(0.6, "separation: the true labels' bound well below the random ones'")
    assert b_true < margin * min(b_rand)
    # by hand for one orthonormal pair: H = I / 2, so sqrt(2 * (y^T 2 y) / 2) = sqrt(2 |y|^2)
    assert dyn.arora_bound(np.eye(2), [1.0, -1.0]) == pytest.approx(2.0, rel=BY_HAND_RTOL)


def test_arora_bound_input_checks():
    with pytest.raises(ValueError, match="X must have unit-norm rows"):
        dyn.arora_bound(np.array([[2.0, 0.0], [0.0, 1.0]]), [1.0, 1.0])
    assert dyn.arora_bound(np.array([[2.0, 0.0], [0.0, 3.0]]), [1.0, -1.0],
                           normalize=True) == pytest.approx(2.0, rel=BY_HAND_RTOL)
    with pytest.raises(ValueError, match="singular"):
        dyn.arora_bound(np.array([[1.0, 0.0], [1.0, 0.0]]), [1.0, -1.0])


# ----------------------------------------------------------------------------- validation
def test_argument_errors_name_the_argument():
    K, Kx = joint_kernel(3, 2, seed=28)
    y = np.zeros(3)
    with pytest.raises(ValueError, match="K_train must be square"):
        dyn.gradient_flow(K[:2], Kx, y)
    with pytest.raises(ValueError, match="K_train must be symmetric"):
        dyn.gradient_flow(K + np.triu(np.ones((3, 3)), 1), Kx, y)
    with pytest.raises(ValueError, match="K_test_train must have shape"):
        dyn.gradient_flow(K, Kx[:, :2], y)
    with pytest.raises(ValueError, match="y must have shape"):
        dyn.gradient_flow(K, Kx, np.zeros(4))
    with pytest.raises(ValueError, match="f0_train must be a scalar or have shape"):
        dyn.gradient_flow(K, Kx, y, f0_train=np.zeros(2))
    with pytest.raises(ValueError, match="f0_test must be a scalar or have shape"):
        dyn.gradient_flow(K, Kx, y, f0_test=np.zeros(3))
    with pytest.raises(ValueError, match="t must be >= 0"):
        dyn.gradient_flow(K, Kx, y, t=-1.0)
    with pytest.raises(ValueError, match="t must be a scalar or a 1-D"):
        dyn.gradient_flow(K, Kx, y, t=np.ones((2, 2)))
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
        dyn.gradient_flow(K, Kx, y, lr=0.0)
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        dyn.gradient_descent(K, Kx, y, steps=1.5)
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        dyn.kernel_ridge(K, Kx, y, ridge=-1.0)
    with pytest.raises(ValueError, match="y contains NaN"):
        dyn.kernel_ridge(K, Kx, np.array([0.0, np.nan, 1.0]), ridge=1.0)
    with pytest.raises(TypeError, match="y must be"):
        dyn.gradient_flow(K, Kx, None)


# ----------------------------------------------------------------------------- properties
@st.composite
def psd_problems(draw):
    n = draw(st.integers(1, 6))
    r = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    Phi = rng.standard_normal((n + 2, r)) * draw(st.floats(0.1, 3.0))
    G = Phi @ Phi.T
    y = rng.standard_normal(n)
    f0 = rng.standard_normal(n)
    lr = draw(st.floats(0.05, 5.0))
    return G[:n, :n], G[n:, :n], y, f0, lr


@given(psd_problems(), st.lists(st.floats(0.0, 50.0), min_size=2, max_size=5))
def test_property_loss_monotone_and_semigroup(problem, times):
    K, Kx, y, f0, lr = problem
    times = np.sort(np.array(times))
    flow = dyn.GradientFlow(K, Kx, y, f0_train=f0, lr=lr)
    loss = flow.train_loss(times)
    assert np.all(np.diff(loss) <= REORDER_RTOL * (loss[0] + 1e-300))
    # semigroup: flowing t1 then t2 from the new start equals flowing t1 + t2 (the ODE is
    # autonomous). Test predictions need the same start for the test points.
    t1, t2 = times[0], times[-1] - times[0]
    a = flow.predict(t1)
    b = dyn.gradient_flow(K, Kx, y, a.train, a.test, t=t2, lr=lr)
    c = flow.predict(times[-1])
    scale = max(np.abs(c.test).max(), np.abs(c.train).max(), np.abs(y).max(), 1.0)
    # two flows vs one: rounding of two eigen-filters on hypothesis-drawn Grams (cond up to
    # ~1e6), amplified on the test side by the kernel's growth lr t |K|
    SEMIGROUP_TOL = tolerance(1e-10, "two eigen-filtered flows vs one on Grams with cond <= ~1e6")
    assert np.abs(b.train - c.train).max() <= SEMIGROUP_TOL * scale
    assert np.abs(b.test - c.test).max() <= SEMIGROUP_TOL * scale * (
        1 + lr * times[-1] * np.abs(K).max())


@given(psd_problems(), st.floats(1e-3, 10.0))
def test_property_filter_ordering(problem, t):
    # eq. (22): 0 <= flow filter <= lr t / n, and ridge with z = n/(lr t) stays within 1.3x.
    K, _, _, _, lr = problem
    n = K.shape[0]
    lam = np.linalg.eigvalsh(K)
    g = dyn.flow_filter(lam, t, lr, n)
    assert np.all(g >= 0) and np.all(g <= lr * t / n * (1 + BY_HAND_RTOL))
    r = dyn.ridge_filter(lam, dyn.equivalent_ridge(t, n, lr))
    assert np.all(r <= g * (1 + REORDER_RTOL)) and np.all(g <= 1.2985 * r)


@pytest.mark.parametrize("k", [None, 2])
def test_ridge_loo_error_matches_explicit_refits(k):
    n = 9
    K, _ = joint_kernel(n, 1, seed=29)
    rng = np.random.default_rng(30)
    y = rng.standard_normal((n,) if k is None else (n, k))
    f0 = rng.standard_normal(y.shape)
    ridges = np.array([1e-3, 0.1, 2.0])
    loo = dyn.ridge_loo_error(K, y, ridges, f0)
    for j, z in enumerate(ridges):
        errs = []
        for i in range(n):
            keep = np.arange(n) != i
            p = dyn.kernel_ridge(K[np.ix_(keep, keep)], K[i:i + 1, keep], y[keep], z,
                                 f0[keep], f0[i:i + 1])
            errs.append(np.sum((p.test[0] - y[i]) ** 2))
        # closed-form LOO vs n refits: equal up to rounding of the (well-conditioned) solves
        assert loo[j] == pytest.approx(np.mean(errs), rel=tolerance(
            1e-9, "closed-form LOO vs 9 refits: rounding times cond(K + z I) at z = 1e-3"))
    with pytest.raises(ValueError, match="ridges must be finite and > 0"):
        dyn.ridge_loo_error(K, y, [0.0])
