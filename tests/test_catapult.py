"""Tests of the large-step regime in infntk.training: the catapult phase diagram of
Lewkowycz et al. (2020) on tiny networks, and the documented classification criteria."""
import numpy as np
import pytest

from infntk import FCNet, dynamics
from infntk.empirical import MLP
from infntk.training import CATAPULT_PHASES, CatapultSweep, catapult_sweep, train
from tolerances import tolerance

WIDTH = 256
STEPS = 300


def problem(n=16, d=8, seed=0):
    # n > d and a smooth target: the NTK Gram is well conditioned, so lazy runs converge to
    # the default conv_tol = 1e-3 within STEPS steps.
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, np.sin(X @ rng.standard_normal(d) / 2)


@pytest.fixture(scope="module", params=[("relu", 0), ("relu", 1), ("erf", 2)],
                ids=["relu-0", "relu-1", "erf-2"])
def sweep(request):
    activation, seed = request.param
    X, y = problem()
    mlp = MLP(WIDTH, 1, activation, seed=seed, input_dim=X.shape[1])
    return catapult_sweep(mlp, X, y, ratios=[0.5, 1.5, 4.0], steps=STEPS), (X, y, mlp)


def test_three_phases(sweep):
    res, _ = sweep
    assert res.phases == ("lazy", "catapult", "diverged")
    assert res.stopped[0] == res.stopped[1] == STEPS and res.stopped[2] < STEPS
    assert np.isnan(res.loss[2, res.stopped[2] + 1:]).all()


def test_catapult_ends_with_lambda_max_below_two_over_eta(sweep):
    # A minimum reached by GD at step eta is linearly stable only if lambda_max(K_T / n) <= 2 /
    # eta. At eta = 1.5 eta_crit the kernel at init violates it by 50 %, so the NTK must have
    # moved: the catapult's top eigenvalue drop.
    res, _ = sweep
    i = res.phases.index("catapult")
    assert res.lambda_max[i, 0] * res.lrs[i] / 2 == pytest.approx(res.ratios[i], rel=1e-12)
    assert res.lrs[i] * res.lambda_end[i] / 2 < 1.0
    assert res.peak[i] > res.criteria["rise"]


def test_lazy_run_is_monotone_and_its_ntk_barely_moves(sweep):
    # eta = eta_crit / 2: the descent lemma with curvature ~ lambda_max(K/n) gives a monotone
    # loss (margin factor 2); only rounding of the loss (a sum of n squares) may break ties.
    res, _ = sweep
    i = res.phases.index("lazy")
    L = res.loss[i]
    rounding = tolerance(1e-13, "float64 rounding of a 16-term sum of squares, relative")
    assert np.all(L[1:] <= L[:-1] * (1 + rounding))
    # kernel-regime NTK change is O(width^-1/2) (Jacot et al. 2018, Lee et al. 2019); measured
    # 0.007-0.03 at width 256 against 1/16 = 0.0625, while the catapult moves it by > 0.5
    lazy_bound = tolerance(1 / np.sqrt(WIDTH), "O(width^-1/2) NTK change, unit constant")
    assert res.ntk_change[i] < lazy_bound
    assert res.ntk_change[res.phases.index("catapult")] > 5 * lazy_bound
    assert abs(res.lambda_end[i] / res.lambda_max[i, 0] - 1) < lazy_bound


def test_loss_curve_is_that_of_train(sweep):
    # an independent loop (training.train) on the same network and step size
    res, (X, y, mlp) = sweep
    rec = train(mlp, X, y, lr=res.lrs[0], steps=STEPS, record=np.arange(STEPS + 1))
    np.testing.assert_allclose(res.loss[0], rec.loss, rtol=tolerance(
        1e-10, "same arithmetic in another order (loss via dot vs sum); 300 steps"))


def test_eta_crit_from_empirical_and_analytic_ntk(sweep):
    res, (X, y, mlp) = sweep
    assert res.eta_crit == dynamics.max_learning_rate(mlp.ntk(X))
    ana = FCNet(mlp.activation, depth=1).ntk(X)
    assert res.eta_crit_analytic == pytest.approx(dynamics.max_learning_rate(ana), rel=1e-14)
    # the empirical top eigenvalue fluctuates by O(width^-1/2) around the analytic one
    assert abs(res.eta_crit / res.eta_crit_analytic - 1) < tolerance(
        2 / np.sqrt(WIDTH), "O(width^-1/2) fluctuation of lambda_max, constant 2")


def test_boundaries_repr_and_table(sweep):
    res, _ = sweep
    b = res.boundaries()
    assert b == {"lazy_max": 0.5, "catapult_min": 1.5, "catapult_max": 1.5, "diverged_min": 4.0}
    r = repr(res)
    assert r.startswith("CatapultSweep(width=256") and "1.5:catapult" in r and len(r) < 200
    assert len(res.table().splitlines()) == 2 + 3
    with pytest.raises(AttributeError):
        res.eta_crit = 1.0                     # frozen


def _sweep_of(curves, steps):
    """Run the labelling on synthetic loss curves through a tiny real sweep's classifier."""
    from infntk.training import _classify
    return [_classify(np.asarray(c, float), s, steps, 1e-3, 1.1) for c, s in curves]


def test_classification_criteria_on_synthetic_curves():
    T = 4
    curves = [([1.0, 0.5, 0.1, 1e-3, 1e-4], T),          # monotone, converged
              ([1.0, 0.5, 0.56, 1e-3, 1e-4], T),         # rise 0.56 / 0.5 = 1.12 > 1.1
              ([1.0, 0.5, 0.54, 1e-3, 1e-4], T),         # rise 1.08 <= 1.1: still lazy
              ([1.0, 0.9, 0.8, 0.7, 0.6], T),            # not below conv_tol
              ([1.0, 10.0, np.inf, np.nan, np.nan], 2)]  # stopped
    assert _sweep_of(curves, T) == ["lazy", "catapult", "lazy", "unconverged", "diverged"]
    assert set(CATAPULT_PHASES) == {"lazy", "catapult", "diverged", "unconverged"}


def test_validation():
    X, y = problem(n=6, d=3)
    mlp = MLP(8, 1, "relu", seed=0, input_dim=3)
    with pytest.raises(TypeError, match="model"):
        catapult_sweep(np.eye(3), X, y)
    with pytest.raises(ValueError, match="ratios"):
        catapult_sweep(mlp, X, y, ratios=[0.5, -1.0])
    with pytest.raises(ValueError, match="ratios"):
        catapult_sweep(mlp, X, y, ratios=[])
    with pytest.raises(ValueError, match="steps"):
        catapult_sweep(mlp, X, y, steps=0)
    with pytest.raises(ValueError, match="y"):
        catapult_sweep(mlp, X, y[:-1])
    with pytest.raises(ValueError, match="X"):
        catapult_sweep(mlp, X[:, :2], y)
    with pytest.raises(ValueError, match="conv_tol"):
        catapult_sweep(mlp, X, y, conv_tol=2.0)
    with pytest.raises(ValueError, match="rise"):
        catapult_sweep(mlp, X, y, rise=1.0)
    with pytest.raises(ValueError, match="analytic"):
        catapult_sweep(mlp, X, y, analytic="fcnet")
    with pytest.raises(TypeError, match="analytic"):
        catapult_sweep(mlp, X, y, analytic=3)
    with pytest.raises(ValueError, match="ntk_steps"):
        catapult_sweep(mlp, X, y, steps=5, ntk_steps=[0, 9])
    res = catapult_sweep(mlp, X, y, ratios=1.0, steps=3, ntk_steps=[0, 3], analytic=None)
    assert isinstance(res, CatapultSweep) and res.eta_crit_analytic is None
    assert res.loss.shape == (1, 4) and res.lambda_max.shape == (1, 2)
