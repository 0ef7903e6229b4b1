"""Tests of infntk.training.seed_interpolators: the kernel-regime interpolators indexed by the
initialization (eq. 21), their ensemble mean and variance against closed forms, the trained
networks against their own predictors, and the spectral-shrinkage inequalities (eq. 22)."""
import numpy as np
import pytest

from infntk import FCNet, dynamics
from infntk.empirical import MLP
from infntk.training import SeedInterpolators, seed_interpolators
from tolerances import PSD_RTOL, mc_tolerance, rel_err_vs_max, tolerance

# Cholesky (kernel_ridge) against an eigendecomposition (gradient_flow at t = inf) of Grams
# with condition numbers <= ~1e3 here: rounding ~ cond * eps ~ 1e-13.
SOLVE_RTOL = tolerance(1e-9, "two solvers of K a = r, cond(K) <= 1e3, plus slack")


def within_mc(diff, se):
    """Every entry of ``diff`` within ``mc_tolerance`` of its own standard error."""
    return all(abs(a) <= mc_tolerance(b) for a, b in zip(np.ravel(diff), np.ravel(se)))


def problem(n=8, m=5, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X, Xt = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    return X, np.sin(X @ rng.standard_normal(d)), Xt


@pytest.fixture(scope="module")
def many_seeds():
    X, y, Xt = problem()
    return seed_interpolators(X, y, Xt, widths=[64], seeds=range(300), steps=0), (X, y, Xt)


def test_ensemble_mean_is_the_min_norm_interpolator(many_seeds):
    # E f(.; theta_0) = 0, so with the deterministic kernel Theta the mean over seeds of
    # f0 + Theta_x Theta^-1 (y - f0) is Theta_x Theta^-1 y exactly; 300 seeds -> MC noise only.
    res, _ = many_seeds
    pa = res.predicted_analytic[0]
    se = pa.std(axis=0, ddof=1) / np.sqrt(pa.shape[0])
    assert within_mc(pa.mean(axis=0) - res.min_norm[0], se)
    # With the seed's own kernel the seed-dependent part f0 - K0_x K0^-1 f0 has mean zero at
    # any width too (flipping the readout's sign maps f0 -> -f0 and leaves K0 unchanged).
    r = res.predicted[0] - res.own_min_norm[0]
    se_r = r.std(axis=0, ddof=1) / np.sqrt(r.shape[0])
    assert within_mc(r.mean(axis=0), se_r)
    # ... and it is not small: the interpolators really differ across seeds
    assert np.all(r.std(axis=0) > 10 * se_r)


def test_seed_variance_is_the_infinite_width_formula_for_one_hidden_layer(many_seeds):
    # One hidden layer: Cov f(.; theta_0) = E[empirical NNGP] = NNGP exactly, at any width, so
    # Var[predicted_analytic] = K(x,x) + A K A^T - 2 A K(X,x). Standard error of a sample
    # variance from the sample's fourth central moment.
    res, _ = many_seeds
    pa = res.predicted_analytic[0]
    S = pa.shape[0]
    c = pa - pa.mean(axis=0)
    s2 = (c ** 2).sum(axis=0) / (S - 1)
    se_var = np.sqrt(np.maximum((c ** 4).mean(axis=0) - s2 ** 2, 0.0) / S)
    assert within_mc(s2 - res.variance_analytic[0], se_var)
    assert res.spread_analytic[0] == pytest.approx(np.sqrt(np.mean(res.variance_analytic[0])))


def test_predictors_are_gradient_flow_at_infinite_time():
    X, y, Xt = problem(seed=1)
    res = seed_interpolators(X, y, Xt, widths=[32, 128], seeds=[3, 7], depth=2,
                             activation="erf", b_std=0.2, steps=0)
    for i, w in enumerate(res.widths):
        net = FCNet("erf", depth=2, b_std=0.2)
        ref = dynamics.gradient_flow(net.ntk(X), net.ntk(Xt, X), y, t=np.inf).test
        assert rel_err_vs_max(res.min_norm[i], ref) < SOLVE_RTOL
        for j, s in enumerate(res.seeds):
            mlp = MLP(int(w), 2, "erf", b_std=0.2, seed=s, input_dim=3)
            K0, K0x = mlp.ntk(X), mlp.ntk(Xt, X)
            f0, f0x = mlp.forward(X), mlp.forward(Xt)
            ref = dynamics.gradient_flow(K0, K0x, y, f0, f0x, t=np.inf).test
            assert rel_err_vs_max(res.predicted[i, j], ref) < SOLVE_RTOL
            ref0 = dynamics.gradient_flow(K0, K0x, y, t=np.inf).test
            assert rel_err_vs_max(res.own_min_norm[i, j], ref0) < SOLVE_RTOL


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    X, Xt = rng.standard_normal((16, 8)), rng.standard_normal((8, 8))
    y = np.sin(X @ rng.standard_normal(8) / 2)
    return seed_interpolators(X, y, Xt, widths=[64, 1024], seeds=range(4), steps=300), (X, y)


def test_trained_networks_approach_their_own_interpolator(trained):
    res, _ = trained
    assert np.all(res.train_loss < 1e-4)                 # converged (initial loss ~ 0.3)
    d = res.distance.mean(axis=1)
    # the kernel moves by O(width^-1/2): 16x the width -> 4x closer; allow a factor 2 of slack
    assert d[1] < tolerance(0.5, "theory 1/4 for 16x the width, slack 2 for 4 seeds") * d[0]
    # the seed-dependence does not vanish: far closer to the own predictor than to min-norm
    assert np.all(res.distance[1] < 0.25 * res.distance_min_norm[1])
    assert res.spread[1] > 0.5 * res.spread_analytic[1]


def test_spectral_shrinkage_of_eq22_on_the_kernels(trained):
    res, (X, y) = trained
    n = X.shape[0]
    assert np.all(res.shrinkage >= -PSD_RTOL)
    # at init, against the eigenvalue filters: lam_min / (z + lam_min) for the ridge term and
    # min over lam of 1 - flow_filter(lam) n / (lr t) for the flow term (block-exponential
    # computation in the code vs expm1 on eigenvalues here)
    for i, w in enumerate(res.widths):
        for j, s in enumerate(res.seeds):
            lam = np.linalg.eigvalsh(MLP(int(w), 1, "relu", seed=s, input_dim=8).ntk(X))
            z, lr = res.ridges[i, j], res.lrs[i, j]
            ridge_slack = 1 - z * dynamics.ridge_filter(lam, z)
            flow_slack = 1 - dynamics.flow_filter(lam, res.steps, lr, n) * n / (lr * res.steps)
            np.testing.assert_allclose(res.shrinkage[i, j, 0], [ridge_slack.min(),
                                                                flow_slack.min()],
                                       rtol=SOLVE_RTOL, atol=PSD_RTOL)


def test_factory_and_no_analytic_kernel():
    X, y, Xt = problem()
    res = seed_interpolators(X, y, Xt, widths=[16], seeds=[0, 1], steps=0, analytic=None,
                             factory=lambda w, s: MLP(w, 1, "tanh", seed=s, input_dim=3))
    assert isinstance(res, SeedInterpolators)
    assert res.min_norm is None and res.mean_error is None and res.trained is None
    assert res.distance is None and res.spread.shape == (1,)
    assert "widths=[16]" in repr(res) and len(repr(res)) < 120
    ref = MLP(16, 1, "tanh", seed=1, input_dim=3)
    np.testing.assert_allclose(
        res.own_min_norm[0, 1], dynamics.kernel_ridge(ref.ntk(X), ref.ntk(Xt, X), y, 0.0).test)
    assert len(res.table().splitlines()) == 2


def test_validation():
    X, y, Xt = problem()
    kw = dict(widths=[8], seeds=[0, 1], steps=0)
    with pytest.raises(ValueError, match="X_test"):
        seed_interpolators(X, y, Xt[:, :2], **kw)
    with pytest.raises(ValueError, match="y"):
        seed_interpolators(X, y[:3], Xt, **kw)
    with pytest.raises(ValueError, match="widths"):
        seed_interpolators(X, y, Xt, widths=[0], seeds=[0, 1])
    with pytest.raises(ValueError, match="widths"):
        seed_interpolators(X, y, Xt, widths=[], seeds=[0, 1])
    with pytest.raises(ValueError, match="seeds"):
        seed_interpolators(X, y, Xt, widths=[8], seeds=[0])
    with pytest.raises(ValueError, match="steps"):
        seed_interpolators(X, y, Xt, widths=[8], seeds=[0, 1], steps=-1)
    with pytest.raises(ValueError, match="lr_fraction"):
        seed_interpolators(X, y, Xt, lr_fraction=1.5, **kw)
    with pytest.raises(ValueError, match="ridge"):
        seed_interpolators(X, y, Xt, ridge=-1.0, **kw)
    with pytest.raises(TypeError, match="factory"):
        seed_interpolators(X, y, Xt, factory=3, **kw)
    with pytest.raises(TypeError, match="factory"):
        seed_interpolators(X, y, Xt, factory=lambda w, s: None, **kw)
    with pytest.raises(ValueError, match="analytic"):
        seed_interpolators(X, y, Xt, analytic="ntk", **kw)
    with pytest.raises(TypeError, match="analytic"):
        seed_interpolators(X, y, Xt, analytic=object(), **kw)
    with pytest.raises(ValueError, match="X"):
        seed_interpolators(X[:, :0], y, Xt, **kw)
