"""The after-kernel: the NTK of a trained network as a booster and as a predictor.

After ``T`` steps of gradient descent, further training in the kernel regime fits the residuals
``y - f(X; theta_T)`` by kernel regression with the *after-training* NTK
``K_T = K(., .; theta_T)`` ("gradient boosting", docs/conventions.md, eq. 7.8), and the kernel
alone (eq. 7.9, Long 2021),

.. math:: K_T(x, X)(\\tilde z I + K_T(X, X))^{-1} y,

with a re-tuned ridge ``z~``, is expected to predict about as well as the booster.
:func:`compare` measures this on held-out data for one task, several seeds: the trained
network, the booster (eq. 7.8), the after-kernel alone (eq. 7.9), and kernel ridge regression
with the empirical NTK at initialization and with the analytic (infinite-width) NTK of
:class:`infntk.FCNet`. Every
ridge is chosen by exact leave-one-out error on the training set
(:func:`infntk.dynamics.ridge_loo_error`), never on the test set.

Tasks (:func:`load_task`) use only data bundled with scikit-learn (no downloads) and a
synthetic teacher network.

References
----------
Long (2021), Properties of the After Kernel, arXiv:2105.10585. Fort et al. (2020), Deep
learning versus kernel learning: an empirical study of loss landscape geometry and the time
evolution of the Neural Tangent Kernel, NeurIPS.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import dynamics
from ._validation import check_positive_int, check_tol
from .empirical import MLP
from .fcnet import FCNet
from .network import Network
from .training import train

__all__ = ["TASKS", "Task", "load_task", "AfterKernelTable", "compare", "METHODS"]

TASKS = ("diabetes", "breast_cancer", "digits", "teacher")
METHODS = ("dnn", "booster", "after_kernel", "ntk_init", "ntk_analytic")
_METHOD_TITLES = {
    "dnn": "DNN f(x; theta_T)",
    "booster": "booster f_T + KRR(K_T) on residuals (eq. 7.8)",
    "after_kernel": "KRR with K_T alone, re-tuned ridge (eq. 7.9)",
    "ntk_init": "KRR with empirical NTK at init K_0",
    "ntk_analytic": "KRR with analytic NTK (FCNet)",
}
# Ridge grid: mean(diag K) times these factors; chosen by leave-one-out error.
_RIDGE_FACTORS = np.logspace(-6, 1, 29)


@dataclass
class Task:
    """A train/test split; features standardized with training statistics.

    ``classification`` tasks have labels ``+-1`` (fit by regression, scored by the sign);
    regression targets are standardized with the training mean and deviation.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classification: bool


def _teacher(n, seed, d=8, noise=0.1):
    rng = np.random.default_rng(10_000 + seed)
    X = rng.standard_normal((n, d))
    teacher = MLP(32, 2, "tanh", w_std=1.5, b_std=0.1, seed=12345, input_dim=d)  # fixed
    y = teacher.forward(X)
    return X, y + noise * np.std(y) * rng.standard_normal(n)


def load_task(name, n_train=200, n_test=200, seed=0):
    """A random train/test split of a bundled data set or of the synthetic teacher task.

    Parameters
    ----------
    name : {"diabetes", "breast_cancer", "digits", "teacher"}
        ``diabetes``: regression, 442 points, 10 features (sklearn). ``breast_cancer``:
        malignant vs benign, 569 points, 30 features (sklearn). ``digits``: 8x8 digit images,
        label = parity of the digit (even +1, odd -1), 1797 points, 64 features (sklearn).
        ``teacher``: ``x ~ N(0, I_8)``, ``y`` = a fixed random 2-hidden-layer tanh network of
        width 32 (seed 12345) plus 10 % Gaussian noise.
    n_train, n_test : int
        Sizes of the split (at most the data set's size in total).
    seed : int
        Seed of the split (and of the inputs and noise of ``teacher``).

    Returns
    -------
    Task

    Examples
    --------
    >>> t = load_task("diabetes", n_train=100, n_test=50, seed=0)
    >>> t.X_train.shape, t.y_test.shape, t.classification
    ((100, 10), (50,), False)
    """
    if name not in TASKS:
        raise ValueError(f"name must be one of {TASKS}, got {name!r}.")
    n_train = check_positive_int(n_train, "n_train", minimum=2)
    n_test = check_positive_int(n_test, "n_test")
    if name == "teacher":
        X, y = _teacher(n_train + n_test, seed)
        classification = False
    else:
        import sklearn.datasets as ds

        if name == "diabetes":
            X, y = ds.load_diabetes(return_X_y=True)
            classification = False
        elif name == "breast_cancer":
            X, y = ds.load_breast_cancer(return_X_y=True)
            y = np.where(y == 1, 1.0, -1.0)
            classification = True
        else:
            X, y = ds.load_digits(return_X_y=True)
            y = np.where(y % 2 == 0, 1.0, -1.0)
            classification = True
    if n_train + n_test > X.shape[0]:
        raise ValueError(f"n_train + n_test must be <= {X.shape[0]} for {name!r}, got "
                         f"{n_train + n_test}.")
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    tr, te = perm[:n_train], perm[n_train:n_train + n_test]
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mu, sd = X[tr].mean(0), X[tr].std(0)
    sd[sd == 0] = 1.0                              # constant pixels in digits
    Xtr, Xte = (X[tr] - mu) / sd, (X[te] - mu) / sd
    ytr, yte = y[tr], y[te]
    if not classification:
        m, s = ytr.mean(), ytr.std()
        ytr, yte = (ytr - m) / s, (yte - m) / s
    return Task(name, Xtr, ytr, Xte, yte, classification)


@dataclass
class AfterKernelTable:
    """Result of :func:`compare`.

    Attributes
    ----------
    task : str
    seeds : list
    test_mse : dict of (S,) arrays
        Test mean squared error ``mean (f(x) - y)^2`` per method (keys :data:`METHODS`).
    test_acc : dict of (S,) arrays or None
        Test accuracy of ``sign(f)`` per method for classification tasks.
    train_mse : dict of (S,) arrays
        Training MSE per method; ``train_mse["booster"] <= train_mse["dnn"]`` always (the
        booster's training residual is ``z (z I + K_T)^{-1} r``, a contraction of ``r``).
    ridges : dict of (S,) arrays
        The leave-one-out-selected ridge of each kernel method.
    ntk_change : (S,) array
        ``||K_T - K_0||_F / ||K_0||_F`` on the training set.
    config : dict
        Everything else needed to reproduce the table.
    """

    task: str
    seeds: list
    test_mse: dict
    test_acc: dict | None
    train_mse: dict
    ridges: dict
    ntk_change: np.ndarray
    config: dict = field(default_factory=dict)

    def summary(self):
        """``{method: (mean test MSE, standard error, mean accuracy or None, its s.e.)}``."""
        out = {}
        S = len(self.seeds)
        se = (lambda a: float(np.std(a, ddof=1) / np.sqrt(S)) if S > 1 else 0.0)  # noqa: E731
        for m in METHODS:
            mse = self.test_mse[m]
            acc = None if self.test_acc is None else self.test_acc[m]
            out[m] = (float(mse.mean()), se(mse), None if acc is None else float(acc.mean()),
                      None if acc is None else se(acc))
        return out

    def table(self):
        """A plain-text table: test MSE (and accuracy) mean +- standard error over seeds."""
        c = self.config
        head = (f"task={self.task} n_train={c['n_train']} n_test={c['n_test']} "
                f"width={c['width']} depth={c['depth']} {c['activation']} "
                f"{c['parameterization']} steps={c['steps']} lr={c['lr_fraction']}*max "
                f"seeds={self.seeds}; NTK change {self.ntk_change.mean():.3f}")
        lines = [head, f"{'method':46s} {'test MSE':>20s}" + (
            f" {'test accuracy':>20s}" if self.test_acc is not None else "")]
        for m, (mse, mse_se, acc, acc_se) in self.summary().items():
            row = f"{_METHOD_TITLES[m]:46s} {mse:10.4f} +- {mse_se:6.4f}"
            if acc is not None:
                row += f" {acc:10.4f} +- {acc_se:6.4f}"
            lines.append(row)
        return "\n".join(lines)


def _krr_tuned(K, Kx, y, f0=0.0, f0x=0.0):
    """Kernel ridge with the ridge of least leave-one-out error; returns (Prediction, z)."""
    ridges = float(np.mean(np.diag(K))) * _RIDGE_FACTORS
    loo = dynamics.ridge_loo_error(K, y, ridges, f0)
    z = float(ridges[int(np.argmin(loo))])
    return dynamics.kernel_ridge(K, Kx, y, z, f0, f0x), z


def compare(task="diabetes", n_train=200, n_test=200, activation="relu", depth=2, w_std=1.0,
            b_std=0.0, parameterization="ntk", width=256, *, steps=1000, lr_fraction=0.5,
            seeds=(0, 1, 2, 3, 4)):
    """The after-kernel comparison table (docs/conventions.md, eq. 7.8-7.9) on one task.

    For each seed: split the data (:func:`load_task`), draw an
    :class:`~infntk.empirical.MLP`, train it for ``steps`` full-batch gradient-descent steps
    (:func:`infntk.training.train`, ``lr = lr_fraction * max_learning_rate(K_0)``), compute
    its empirical NTK ``K_T`` at ``theta_T``, and evaluate on the test split:

    * ``dnn``: ``f(x; theta_T)``;
    * ``booster`` (eq. 7.8): ``f(x; theta_T) + K_T(x, X)(z I + K_T)^{-1}(y - f(X; theta_T))``;
    * ``after_kernel`` (eq. 7.9): ``K_T(x, X)(z~ I + K_T)^{-1} y``;
    * ``ntk_init``: the same with the empirical NTK at initialization ``K_0``;
    * ``ntk_analytic``: the same with the infinite-width NTK of :class:`infntk.FCNet` (for
      ``parameterization="standard"`` the analytic NTK at this ``width``).

    Each ridge is selected separately by exact leave-one-out error on the training split.

    Parameters
    ----------
    task : str
        One of :data:`TASKS`.
    n_train, n_test : int
    activation, depth, w_std, b_std, parameterization, width
        The network, in the names and order of :class:`infntk.FCNet` (the same
        :class:`~infntk.empirical.MLP` of hidden width ``width``). ``activation`` may be an
        :class:`infntk.Network` instead (``depth`` to ``parameterization`` unused): trained
        as ``net.finite(width, seed)``, analytic NTK ``Network(net.layers, width=width)``.
        The arguments below are keyword-only.
    steps : int
        ``T``.
    lr_fraction : float
        Step size as a fraction of ``2 n / lam_max(K_0)``, in ``(0, 1)``.
    seeds : sequence of int
        Seeds of the split and of the initialization.

    Returns
    -------
    AfterKernelTable
        ``.table()`` formats it.

    Examples
    --------
    >>> t = compare("teacher", n_train=40, n_test=40, width=32, depth=1, steps=50,
    ...             seeds=(0, 1))
    >>> bool(np.all(t.train_mse["booster"] <= t.train_mse["dnn"]))
    True
    """
    lr_fraction = check_tol(lr_fraction, "lr_fraction")
    steps = check_positive_int(steps, "steps", minimum=0)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must contain at least one seed.")
    composed = isinstance(activation, Network)
    net = Network(activation.layers, width=width, tol=activation.tol) if composed else \
        FCNet(activation, depth=depth, w_std=w_std, b_std=b_std,
              parameterization=parameterization, width=width)
    S = len(seeds)
    test_mse = {m: np.empty(S) for m in METHODS}
    train_mse = {m: np.empty(S) for m in METHODS}
    ridges = {m: np.full(S, np.nan) for m in METHODS}
    test_acc = None
    change = np.empty(S)
    for j, seed in enumerate(seeds):
        t = load_task(task, n_train, n_test, seed)
        if j == 0 and t.classification:
            test_acc = {m: np.empty(S) for m in METHODS}
        X, y, Xt, yt = t.X_train, t.y_train, t.X_test, t.y_test
        mlp = activation.finite(width, seed=seed, input_dim=X.shape[1]) if composed else \
            MLP(width, depth, activation, w_std=w_std, b_std=b_std,
                parameterization=parameterization, seed=seed, input_dim=X.shape[1])
        K0, K0x = mlp.ntk(X), mlp.ntk(Xt, X)
        lr = lr_fraction * dynamics.max_learning_rate(K0)
        rec = train(mlp, X, y, lr, steps, X_test=Xt, record=[steps])
        fT, fTx = rec.train[-1], rec.test[-1]
        KT, KTx = rec.model.ntk(X), rec.model.ntk(Xt, X)
        change[j] = np.linalg.norm(KT - K0) / np.linalg.norm(K0)
        preds = {"dnn": (fT, fTx)}
        p, ridges["booster"][j] = _krr_tuned(KT, KTx, y, fT, fTx)
        preds["booster"] = (p.train, p.test)
        p, ridges["after_kernel"][j] = _krr_tuned(KT, KTx, y)
        preds["after_kernel"] = (p.train, p.test)
        p, ridges["ntk_init"][j] = _krr_tuned(K0, K0x, y)
        preds["ntk_init"] = (p.train, p.test)
        p, ridges["ntk_analytic"][j] = _krr_tuned(net.ntk(X), net.ntk(Xt, X), y)
        preds["ntk_analytic"] = (p.train, p.test)
        for m, (ptr, pte) in preds.items():
            train_mse[m][j] = np.mean((ptr - y) ** 2)
            test_mse[m][j] = np.mean((pte - yt) ** 2)
            if test_acc is not None:
                test_acc[m][j] = np.mean(np.sign(pte) == yt)
    config = dict(n_train=n_train, n_test=n_test, width=width, depth=depth,
                  activation=repr(activation) if composed else activation, w_std=w_std, b_std=b_std,
                  parameterization=parameterization, steps=steps, lr_fraction=lr_fraction)
    if composed:                        # the layers carry depth and parameterization
        config.update(depth=None, parameterization=None, w_std=None, b_std=None)
    return AfterKernelTable(task, seeds, test_mse, test_acc, train_mse, ridges, change, config)
