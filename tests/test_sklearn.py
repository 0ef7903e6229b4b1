"""infntk.sklearn: the kernel API, exact gradients, and real scikit-learn estimators.

References: the Gram matrices of FCNet (the kernels only wrap them), exact derivatives
(homogeneity for bias-free ReLU, a complex-step derivative of the linear network's recursion),
direct linear algebra for the estimators, published-level accuracies on bundled data sets.
"""
import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import WhiteKernel
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import infntk
from infntk.sklearn import NNGP, NTK
from tolerances import CLOSED_FORM_RTOL, rel_err_vs_max, tolerance

# The gradients are fourth-order central differences (step 1e-3 in log space): truncation
# ~1e-13 and rounding ~1e-13 relative to max|K| for these kernels; 1e-10 leaves margin for
# the larger fifth derivatives of deep kernels, and still fails for any second-order or
# wrongly scaled difference (errors ~1e-6 or O(1)).
FD_GRAD_RTOL = tolerance(1e-10, "4th-order differences at step 1e-3: truncation and rounding "
                               "~1e-13, margin for deep kernels' 5th derivatives")
# Two routes through the same linear algebra (sklearn's solver vs np.linalg.solve).
SOLVER_RTOL = tolerance(1e-9, "sklearn's Cholesky/solver vs np.linalg.solve: rounding times "
                              "cond(K + alpha I)")


def _data(n=12, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


@pytest.mark.parametrize("cls,which", [(NTK, "ntk"), (NNGP, "nngp")])
def test_gram_is_fcnet(cls, which):
    X, Y = _data(), _data(7, seed=1)
    k = cls(activation="leaky_relu", depth=3, w_std=1.3, b_std=0.2,
            activation_params={"alpha": 0.1})
    net = infntk.FCNet("leaky_relu", depth=3, w_std=1.3, b_std=0.2, alpha=0.1)
    np.testing.assert_array_equal(k(X), getattr(net.kernels(X), which))
    np.testing.assert_array_equal(k(X, Y), getattr(net.kernels(X, Y), which))
    assert rel_err_vs_max(k.diag(X), np.diag(k(X))) <= CLOSED_FORM_RTOL
    assert not k.is_stationary()


def test_api_clone_params_theta():
    k = NTK(depth=2, w_std=1.5, b_std=0.3)
    assert clone(k) == k and clone(k) is not k
    assert k.get_params()["depth"] == 2
    k2 = clone(k).set_params(depth=4)
    assert k2.depth == 4 and k2 != k
    log_round_trip = tolerance(1e-15, "exp(log(x)): a few ulp")
    np.testing.assert_allclose(np.exp(k.theta), [0.3, 1.5], rtol=log_round_trip)  # b_std, w_std
    k3 = k.clone_with_theta(np.log([0.5, 2.0]))
    assert (k3.b_std, k3.w_std) == pytest.approx((0.5, 2.0), rel=log_round_trip)
    assert k.bounds.shape == (2, 2)
    # b_std = 0 or None cannot be optimized in log space: fixed, not in theta
    for b in (0.0, None):
        kb = NTK(depth=2, b_std=b)
        assert [h.name for h in kb.hyperparameters if not h.fixed] == ["w_std"]
        assert kb.theta.shape == (1,)
    assert "NTK(activation='relu', depth=2" in repr(k)
    with pytest.raises(ValueError, match="Y is None"):
        k(_data(), _data(), eval_gradient=True)


@pytest.mark.parametrize("cls", [NTK, NNGP])
@pytest.mark.parametrize("depth", [0, 1, 4])
def test_gradient_homogeneous_relu(cls, depth):
    # bias-free ReLU, NTK parameterization: K is w_std^(2(L+1)) times a function of X,
    # so dK/dlog(w_std) = 2 (L + 1) K exactly.
    X = _data()
    k = cls(depth=depth, w_std=1.7, b_std=None)
    K, G = k(X, eval_gradient=True)
    assert G.shape == (12, 12, 1)
    assert rel_err_vs_max(G[:, :, 0], 2 * (depth + 1) * K) <= FD_GRAD_RTOL


def _linear_net_kernels(X, depth, w, b):
    """Identity activation, written out (complex-safe): Sigma^{l+1} = w^2 Sigma^l + b^2,
    Sdot = w^2, Theta^{l+1} = Sigma^{l+1} + w^2 Theta^l (docs/conventions.md, degenerate rows)."""
    S = w * w * (X @ X.T) / X.shape[1] + b * b
    T = S
    for _ in range(depth):
        S = w * w * S + b * b
        T = S + w * w * T
    return S, T


@pytest.mark.parametrize("cls,idx", [(NNGP, 0), (NTK, 1)])
def test_gradient_complex_step_linear_net(cls, idx):
    X, depth, w, b = _data(), 3, 1.2, 0.4
    k = cls(activation="identity", depth=depth, w_std=w, b_std=b)
    K, G = k(X, eval_gradient=True)
    assert rel_err_vs_max(K, _linear_net_kernels(X, depth, w, b)[idx]) <= CLOSED_FORM_RTOL
    h = 1e-30  # complex step: d/dlog(p) = p Im f(p + i h) / h, exact to rounding
    dlogb = b * _linear_net_kernels(X, depth, w, b + 1j * h)[idx].imag / h
    dlogw = w * _linear_net_kernels(X, depth, w + 1j * h, b)[idx].imag / h
    assert rel_err_vs_max(G[:, :, 0], dlogb) <= FD_GRAD_RTOL   # theta order: b_std, w_std
    assert rel_err_vs_max(G[:, :, 1], dlogw) <= FD_GRAD_RTOL


def test_gaussian_process_regression_diabetes():
    X, y = load_diabetes(return_X_y=True)
    X, y = X[:80] / np.linalg.norm(X[:80], axis=1, keepdims=True), y[:80] / 100.0
    # no ConstantKernel: w_std already scales the bias-light ReLU NTK like an amplitude
    kernel = NTK(depth=2, b_std=0.1) + WhiteKernel(0.5)
    gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
    gp.fit(X, y)
    # the optimizer improved the marginal likelihood from the initial hyperparameters
    lml_slack = tolerance(1e-9, "the optimizer may stop within rounding of the start (LML ~ 1e2)")
    start = gp.log_marginal_likelihood(kernel.theta)
    assert gp.log_marginal_likelihood_value_ >= start - lml_slack
    # the analytic LML gradient (through our dK/dtheta) matches a difference of the LML
    theta = gp.kernel_.theta.copy()
    _, grad = gp.log_marginal_likelihood(theta, eval_gradient=True)
    eps = 1e-5  # central difference of a smooth scalar: error ~ eps^2 * |LML'''|
    fd_tol = tolerance(1e-5, "central difference at 1e-5: truncation ~1e-10 |LML'''|, rounding "
                             "~eps |LML| / 1e-5 ~ 1e-9")
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = eps
        num = (gp.log_marginal_likelihood(theta + e) - gp.log_marginal_likelihood(theta - e))
        assert grad[i] == pytest.approx(num / (2 * eps), rel=fd_tol, abs=fd_tol)
    # predictions are the closed-form posterior mean with the fitted NTK
    kf = gp.kernel_
    ystd = (y - y.mean()) / y.std()
    mean = kf(X[:10], X) @ np.linalg.solve(kf(X) + gp.alpha * np.eye(len(X)), ystd)
    np.testing.assert_allclose(gp.predict(X[:10]), mean * y.std() + y.mean(), rtol=tolerance(
        1e-8, "sklearn's Cholesky posterior vs np.linalg.solve, with the white-noise jitter"))


def test_kernel_ridge_callable_equals_precomputed():
    X, y = load_diabetes(return_X_y=True)
    Xtr, ytr, Xte = X[:200], y[:200], X[200:260]
    k = NTK(depth=3, b_std=0.05)
    pred_obj = KernelRidge(alpha=0.1, kernel=k).fit(Xtr, ytr).predict(Xte)
    pred_pre = KernelRidge(alpha=0.1, kernel="precomputed").fit(k(Xtr), ytr).predict(k(Xte, Xtr))
    net = infntk.FCNet("relu", depth=3, b_std=0.05)
    direct = net.ntk(Xte, Xtr) @ np.linalg.solve(net.ntk(Xtr) + 0.1 * np.eye(200), ytr)
    np.testing.assert_allclose(pred_obj, direct, rtol=SOLVER_RTOL,
                               atol=SOLVER_RTOL * np.abs(direct).max())
    np.testing.assert_allclose(pred_pre, direct, rtol=SOLVER_RTOL,
                               atol=SOLVER_RTOL * np.abs(direct).max())


def test_svc_ntk_breast_cancer_and_iris():
    # NTK-SVM (Arora et al. 2020) on standardized data: a callable kernel, and the same
    # Gram precomputed, give the same decisions; accuracies at the level of an RBF SVM
    # (breast cancer ~0.97, iris ~0.96 by 5-fold CV).
    X, y = load_breast_cancer(return_X_y=True)
    Xs = StandardScaler().fit_transform(X)
    k = NTK(depth=2, b_std=0.1)
    acc = cross_val_score(make_pipeline(StandardScaler(), SVC(C=1.0, kernel=k)), X, y, cv=5)
    assert acc.mean() >= tolerance(0.95, "accuracy floor: RBF-SVM level is ~0.97 on breast cancer")
    a = SVC(kernel=k).fit(Xs[:400], y[:400]).decision_function(Xs[400:])
    b = SVC(kernel="precomputed").fit(k(Xs[:400]), y[:400]).decision_function(
        k(Xs[400:], Xs[:400]))
    svm = tolerance(1e-8, "libsvm's SMO stops at its own tolerance; same Gram both ways")
    np.testing.assert_allclose(a, b, rtol=svm, atol=svm)
    Xi, yi = load_iris(return_X_y=True)
    acc = cross_val_score(make_pipeline(StandardScaler(), SVC(C=10.0, kernel=NNGP(depth=2))),
                          Xi, yi, cv=5)
    assert acc.mean() >= tolerance(0.9, "accuracy floor: RBF-SVM level is ~0.96 on iris")


def test_missing_sklearn_message(monkeypatch):
    import importlib
    import sys
    monkeypatch.delitem(sys.modules, "infntk.sklearn")
    monkeypatch.setitem(sys.modules, "sklearn.gaussian_process.kernels", None)
    with pytest.raises(ImportError, match=r"pip install 'infntk\[sklearn\]'"):
        importlib.import_module("infntk.sklearn")
