"""Tests of infntk.after_kernel: the eq. (23)-(25) comparison table runs on bundled and
synthetic data, and its invariants hold."""
import numpy as np
import pytest

from infntk import dynamics
from infntk.after_kernel import METHODS, TASKS, compare, load_task
from tolerances import tolerance

# Standardized columns: a mean or std of <= 500 values of size O(1) is exact up to ~n eps.
STANDARDIZE_TOL = tolerance(1e-12, "mean/std of <= 500 standardized O(1) values: ~n eps rounding")


@pytest.mark.parametrize("task", ["teacher", "breast_cancer"])
def test_compare_runs_and_booster_never_worse_on_training_residuals(task):
    t = compare(task, n_train=40, n_test=30, width=32, depth=1, steps=60, seeds=(0, 1))
    for m in METHODS:
        assert t.test_mse[m].shape == (2,) and np.isfinite(t.test_mse[m]).all()
    # eq. (24) on the training set: the booster's residual is z (z I + K_T)^{-1} r, a
    # contraction of the DNN residual r because K_T is PSD; rounding allowance only.
    assert np.all(t.train_mse["booster"] <= t.train_mse["dnn"] * (1 + tolerance(
        1e-12, "rounding of the (z I + K_T) solve and the 40-term MSE; the contraction is exact")))
    assert (t.test_acc is not None) == (task == "breast_cancer")
    if t.test_acc is not None:
        assert all(np.all((0 <= a) & (a <= 1)) for a in t.test_acc.values())
    assert np.all(t.ntk_change > 0)
    text = t.table()
    assert "eq. 7.8" in text and "eq. 7.9" in text and task in text


def test_booster_is_eq24_by_hand():
    # Rebuild the booster of one seed from its definition and compare with the table's number.
    from infntk.empirical import MLP
    from infntk.training import train

    t = compare("teacher", n_train=30, n_test=20, width=16, depth=1, steps=20, seeds=(3,))
    task = load_task("teacher", 30, 20, seed=3)
    mlp = MLP(16, 1, "relu", seed=3, input_dim=task.X_train.shape[1])
    lr = 0.5 * dynamics.max_learning_rate(mlp.ntk(task.X_train))
    rec = train(mlp, task.X_train, task.y_train, lr, 20, X_test=task.X_test, record=[20])
    KT = rec.model.ntk(task.X_train)
    KTx = rec.model.ntk(task.X_test, task.X_train)
    z = t.ridges["booster"][0]
    r = task.y_train - rec.train[-1]
    pred = rec.test[-1] + KTx @ np.linalg.solve(z * np.eye(30) + KT, r)
    route = tolerance(1e-9, "same eq. (24) by another route (np.linalg.solve here, the "
                            "library's Cholesky/eigh there): rounding times cond(z I + K_T)")
    assert np.mean((pred - task.y_test) ** 2) == pytest.approx(t.test_mse["booster"][0],
                                                               rel=route)


@pytest.mark.parametrize("name", TASKS)
def test_load_task_shapes_and_standardization(name):
    t = load_task(name, n_train=50, n_test=20, seed=1)
    assert t.X_train.shape[0] == 50 and t.X_test.shape[0] == 20
    assert np.allclose(t.X_train.mean(0), 0, atol=STANDARDIZE_TOL)
    if t.classification:
        assert set(np.unique(t.y_train)) <= {-1.0, 1.0}
    else:
        assert t.y_train.mean() == pytest.approx(0, abs=STANDARDIZE_TOL)
        assert t.y_train.std() == pytest.approx(1, rel=STANDARDIZE_TOL)


def test_argument_errors():
    with pytest.raises(ValueError, match="name must be one of"):
        load_task("mnist")
    with pytest.raises(ValueError, match="n_train \\+ n_test must be <= 442"):
        load_task("diabetes", n_train=400, n_test=100)
    with pytest.raises(ValueError, match="lr_fraction must be in"):
        compare("teacher", lr_fraction=1.5)
