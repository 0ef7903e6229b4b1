"""Finite-width training: full-batch gradient descent on the MSE, and the kernel regime measured.

:func:`train` runs full-batch gradient descent with step ``lr`` on

.. math:: \\mathcal L(\\theta) = \\frac{1}{2n}\\sum_{i=1}^n (f(x_i;\\theta) - y_i)^2

for an :class:`infntk.empirical.MLP` or its linearization :class:`LinearizedMLP`
(``f_0 + J_0 (theta - theta_0)``), recording train and test predictions at chosen steps. It is
the discrete counterpart of :mod:`infntk.dynamics` with the same ``lr`` and normalization:
for the linearized network, ``k`` steps are exactly
``infntk.dynamics.gradient_descent(K_0, ..., steps=k, lr=lr)`` with the empirical NTK at
initialization ``K_0``, and gradient flow at time ``t = k`` up to ``O(lr)``.

:func:`kernel_regime` measures how close a finite network's training is to those kernel
predictions as the width grows (Jacot et al. 2018; Lee et al. 2019): the test discrepancy to
(a) its own NTK at initialization and (b) the analytic NTK of :class:`infntk.FCNet`, and the
relative change of its empirical NTK during training, with fitted power laws in the width.

References
----------
Jacot, Gabriel, Hongler (2018), Neural Tangent Kernel. Lee, Xiao, Schoenholz, Bahri, Novak,
Sohl-Dickstein, Pennington (2019), Wide Neural Networks of Any Depth Evolve as Linear Models
Under Gradient Descent, NeurIPS.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import dynamics
from ._validation import check_finite, check_matrix, check_positive_int, check_positive_real, \
    check_tol
from .empirical import MLP
from .fcnet import FCNet
from .network import Network

__all__ = ["LinearizedMLP", "TrainingRecord", "train", "KernelRegime", "kernel_regime",
           "fit_power_law"]

# Jacobian row blocks are limited to this many entries (64 MB in float64).
_JAC_BLOCK_ENTRIES = 2 ** 23


def _flatten(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _unflatten(vec, like):
    out, i = [], 0
    for a in like:
        out.append(vec[i:i + a.size].reshape(a.shape))
        i += a.size
    return out


class LinearizedMLP:
    """The first-order Taylor expansion of a network around its parameters ``theta_0``.

    ``f_lin(x; theta) = f(x; theta_0) + J_0(x) (theta - theta_0)``, with ``J_0`` the Jacobian
    at ``theta_0``. Its NTK is constant (the empirical NTK at ``theta_0``), so gradient descent
    on it is exactly the fixed-kernel dynamics of :mod:`infntk.dynamics`.

    Parameters
    ----------
    mlp : infntk.empirical.MLP
        The network at ``theta_0`` (copied; later changes to ``mlp`` do not affect this).

    Attributes
    ----------
    params : list of ndarray
        ``theta`` (live references, same layout as ``mlp.params``), initially ``theta_0``.

    Notes
    -----
    ``forward`` computes ``J_0(X) (theta - theta_0)`` from Jacobian row blocks of at most
    ``2^23`` entries (cached for up to 8 input arrays, so repeated evaluations on the training
    set cost one matrix-vector product); ``gradient`` is ``J_0(X)^T dout``, the network's own
    backward pass at ``theta_0``.

    Examples
    --------
    >>> import numpy as np
    >>> from infntk.empirical import MLP
    >>> X = np.random.default_rng(0).standard_normal((4, 3))
    >>> lin = LinearizedMLP(MLP(64, 1, "relu", seed=0, input_dim=3))
    >>> bool(np.allclose(lin.forward(X), lin.base.forward(X)))   # theta = theta_0
    True
    """

    def __init__(self, mlp):
        if not all(hasattr(type(mlp), a)
                   for a in ("params", "forward", "gradient", "jacobian", "copy")):
            raise TypeError(f"mlp must be an infntk.empirical.MLP, got {type(mlp).__name__}.")
        self.base = mlp.copy()
        self._theta0 = [np.array(p, copy=True) for p in self.base.params]
        self._params = [np.array(p, copy=True) for p in self.base.params]
        self._cache = {}

    @property
    def params(self):
        return self._params

    def set_params(self, params):
        if len(params) != len(self._theta0):
            raise ValueError(f"params must have {len(self._theta0)} arrays, got {len(params)}.")
        new = []
        for i, (p, ref) in enumerate(zip(params, self._theta0)):
            arr = np.array(p, dtype=ref.dtype, copy=True)
            if arr.shape != ref.shape:
                raise ValueError(f"params[{i}] must have shape {ref.shape}, got {arr.shape}.")
            new.append(arr)
        self._params = new

    def copy(self):
        other = LinearizedMLP.__new__(LinearizedMLP)
        other.base = self.base
        other._theta0 = self._theta0
        other._params = [p.copy() for p in self._params]
        other._cache = self._cache
        return other

    def _jacobian_blocks(self, X):
        key = (X.shape, X.tobytes())
        if key in self._cache:
            return self._cache[key]
        P = sum(p.size for p in self._theta0)
        rows = max(1, _JAC_BLOCK_ENTRIES // P)
        blocks = [self.base.jacobian(X[i:i + rows]) for i in range(0, X.shape[0], rows)]
        if X.shape[0] * P <= 4 * _JAC_BLOCK_ENTRIES:
            if len(self._cache) >= 8:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = blocks
        return blocks

    def forward(self, X):
        """``f(X; theta_0) + J_0(X) (theta - theta_0)``, shape ``(n,)``."""
        X = check_matrix(X, "X")
        delta = _flatten([p - p0 for p, p0 in zip(self._params, self._theta0)])
        key = ("f0", X.shape, X.tobytes())
        f0 = self._cache.get(key)
        if f0 is None:
            f0 = self.base.forward(X)
            self._cache[key] = f0
        lin = np.concatenate([J @ delta for J in self._jacobian_blocks(X)])
        return f0 + lin

    __call__ = forward

    def gradient(self, X, dout):
        """``J_0(X)^T dout`` in the layout of :attr:`params` (independent of ``theta``)."""
        return self.base.gradient(X, dout)

    def ntk(self, X1, X2=None):
        """The (constant) NTK: the base network's empirical NTK at ``theta_0``."""
        return self.base.ntk(X1, X2)


@dataclass
class TrainingRecord:
    """Predictions recorded during :func:`train`.

    Attributes
    ----------
    model : MLP or LinearizedMLP
        The trained model (a copy unless ``copy=False`` was passed).
    steps : (S,) ndarray of int
        The recorded step counts (``0`` = initialization).
    train : (S, n) ndarray
        Training-set predictions at each recorded step.
    test : (S, m) ndarray or None
        Test-set predictions, if ``X_test`` was given.
    loss : (S,) ndarray
        ``sum_i (f(x_i) - y_i)^2 / (2 n)`` at each recorded step.
    """

    model: object
    steps: np.ndarray
    train: np.ndarray
    test: np.ndarray | None
    loss: np.ndarray


def _check_record(record, steps):
    if record is None:
        return np.array([0, steps])
    rec = np.atleast_1d(np.asarray(record))
    if rec.ndim != 1 or not np.issubdtype(rec.dtype, np.integer):
        raise TypeError(f"record must be a 1-D sequence of integers (steps), got {record!r}.")
    if rec.size == 0 or rec.min() < 0 or rec.max() > steps:
        raise ValueError(f"record must contain steps in [0, steps={steps}], got {record!r}.")
    return np.unique(rec)


def _descend(model, X, y, f, lr, steps, want, X_test, trains, tests):
    """The gradient-descent loop of :func:`train` (arguments already checked)."""
    n = X.shape[0]
    for k in range(steps + 1):
        if k in want:
            trains.append(f.copy())
            if X_test is not None:
                tests.append(model.forward(X_test))
        if k == steps:
            break
        grads = model.gradient(X, (f - y) / n)
        for p, g in zip(model.params, grads):
            p -= lr * g
        f = model.forward(X)
        if not np.isfinite(f).all():
            raise FloatingPointError(f"training diverged at step {k + 1} (lr={lr} too large? "
                                     "see infntk.dynamics.max_learning_rate).")


def train(model, X, y, lr, steps, X_test=None, record=None, copy=True):
    """Full-batch gradient descent on ``sum_i (f(x_i) - y_i)^2 / (2 n)``.

    ``theta <- theta - lr * (1/n) sum_i (f(x_i) - y_i) grad f(x_i)``, the discrete version of
    the gradient flow of docs/conventions.md, eq. (7.1)-(7.2), with the same ``lr`` as
    :func:`infntk.dynamics.gradient_flow`.

    Parameters
    ----------
    model : infntk.empirical.MLP, infntk.finite.FiniteNetwork or LinearizedMLP
        Anything with ``params`` (live arrays), ``forward(X) -> (n,)`` and
        ``gradient(X, dout) -> list like params``; for a composed network pass its finite
        version ``Network(layers).finite(width, seed)``.
    X : (n, d) array
        Training inputs.
    y : (n,) array
        Training targets.
    lr : float
        Step size ``> 0``. Stable for the linearized model iff
        ``lr < infntk.dynamics.max_learning_rate(K_0)``.
    steps : int
        Number of steps ``>= 0``.
    X_test : (m, d) array, optional
        Test inputs whose predictions are recorded too.
    record : sequence of int, optional
        Steps at which to record predictions (default ``[0, steps]``).
    copy : bool
        Train a copy (default) rather than ``model`` itself.

    Returns
    -------
    TrainingRecord

    Examples
    --------
    >>> import numpy as np
    >>> from infntk.empirical import MLP
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((8, 3)), rng.standard_normal(8)
    >>> rec = train(MLP(128, 1, "relu", seed=0), X, y, lr=1.0, steps=200, record=[0, 100, 200])
    >>> bool(rec.loss[-1] < 0.2 * rec.loss[0])
    True
    """
    X = check_matrix(X, "X")
    n = X.shape[0]
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) (one target per row of X), got {y.shape}.")
    check_finite(y, "y")
    lr = check_positive_real(lr, "lr")
    steps = check_positive_int(steps, "steps", minimum=0)
    if X_test is not None:
        X_test = check_matrix(X_test, "X_test")
        if X_test.shape[1] != X.shape[1]:
            raise ValueError(f"X_test must have {X.shape[1]} columns like X, got {X_test.shape}.")
    rec_steps = _check_record(record, steps)
    if isinstance(model, Network):
        raise TypeError("model is an infinite-width infntk.Network; train a finite version of "
                        "it: train(net.finite(width, seed), ...).")
    if not all(hasattr(type(model), a) for a in ("params", "forward", "gradient", "copy")):
        raise TypeError(f"model must be an MLP or LinearizedMLP, got {type(model).__name__}.")
    if copy:
        model = model.copy()
    trains, tests = [], []
    f = model.forward(X)
    want = set(rec_steps.tolist())
    with np.errstate(over="ignore", invalid="ignore"):     # divergence is reported below
        _descend(model, X, y, f, lr, steps, want, X_test, trains, tests)
    train_arr = np.array(trains)
    loss = 0.5 * np.sum((train_arr - y) ** 2, axis=1) / n
    return TrainingRecord(model, rec_steps, train_arr,
                          None if X_test is None else np.array(tests), loss)


# ----------------------------------------------------------------------------- kernel regime
def fit_power_law(x, y):
    """Least-squares fit of ``log y = log c + p log x``; returns ``(p, c)``.

    Parameters
    ----------
    x, y : (k,) arrays of positive numbers, ``k >= 2``

    Returns
    -------
    (float, float)

    Examples
    --------
    >>> p, c = fit_power_law([1, 2, 4], [3.0, 1.5, 0.75])
    >>> round(p, 12), round(c, 12)
    (-1.0, 3.0)
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"x and y must be 1-D of equal length >= 2, got {x.shape}, {y.shape}.")
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("x and y must be positive for a log-log fit.")
    p, logc = np.polyfit(np.log(x), np.log(y), 1)
    return float(p), float(np.exp(logc))


@dataclass
class KernelRegime:
    """Result of :func:`kernel_regime`; arrays are ``(len(widths), len(seeds))``.

    Attributes
    ----------
    widths : (W,) ndarray
    seeds : list
    disc_empirical : ndarray
        RMS over test points of ``f_net(x; theta_T) - f_lin(x)``, with ``f_lin`` the exact
        ``T``-step gradient descent with the network's own NTK at initialization (eq. 7.4 of
        docs/conventions.md in discrete time, :func:`infntk.dynamics.gradient_descent`), same
        ``f_0``.
    disc_analytic : ndarray
        The same against the analytic NTK (``infntk.FCNet(...).ntk``), same ``f_0``.
    disc_flow : ndarray
        The same against gradient *flow* with the analytic NTK at ``t = T`` (adds the
        ``O(lr)`` discretization error, which does not shrink with width).
    ntk_change : ndarray
        ``||K_T - K_0||_F / ||K_0||_F`` of the empirical NTK on the training set.
    init_vs_analytic : ndarray
        ``||K_0 - Theta||_F / ||Theta||_F``: the NTK fluctuation at initialization.
    scale : float
        RMS of the test targets (a yardstick for the discrepancies).
    exponents : dict
        Fitted ``p`` of ``mean over seeds ~ c width^p`` for each quantity above.
    """

    widths: np.ndarray
    seeds: list
    disc_empirical: np.ndarray
    disc_analytic: np.ndarray
    disc_flow: np.ndarray
    ntk_change: np.ndarray
    init_vs_analytic: np.ndarray
    scale: float
    exponents: dict = field(default_factory=dict)

    def table(self):
        """A plain-text table of the seed means (and standard errors) per width."""
        names = ["disc_empirical", "disc_analytic", "disc_flow", "ntk_change",
                 "init_vs_analytic"]
        lines = ["width  " + "  ".join(f"{n:>22s}" for n in names)]
        for i, w in enumerate(self.widths):
            cells = []
            for n in names:
                a = getattr(self, n)[i]
                se = a.std(ddof=1) / np.sqrt(a.size) if a.size > 1 else 0.0
                cells.append(f"{a.mean():13.4e} +- {se:7.1e}")
            lines.append(f"{int(w):5d}  " + "  ".join(cells))
        lines.append("slope  " + "  ".join(f"{self.exponents[n]:22.3f}" for n in names))
        return "\n".join(lines)


def kernel_regime(X, y, X_test, y_test=None, activation="relu", depth=1, w_std=1.0, b_std=0.0, *,
                  widths=(128, 256, 512, 1024, 2048, 4096), steps=200, lr_fraction=0.5,
                  seeds=(0, 1, 2)):
    """Measure the kernel regime: finite network versus fixed-kernel predictions, by width.

    For each width and seed: draw an :class:`~infntk.empirical.MLP` (NTK parameterization),
    train it with :func:`train` for ``steps`` steps of size
    ``lr = lr_fraction * max_learning_rate(Theta)`` (``Theta`` the analytic NTK on ``X``, so
    the same ``lr`` for all widths), and compare its test predictions with the exact
    discrete-time kernel predictions started from the network's own ``f_0``.

    Parameters
    ----------
    X : (n, d) array
    y : (n,) array
    X_test : (m, d) array
    y_test : (m,) array, optional
        Only used for the yardstick ``scale`` (RMS of ``y_test``, else of ``y``).
    activation, depth, w_std, b_std
        The network, as in :class:`infntk.FCNet` / :class:`~infntk.empirical.MLP` (same names
        and order; closed-form activations). ``activation`` may be an :class:`infntk.Network`
        instead (NTK parameterization; ``depth``, ``w_std``, ``b_std`` unused), trained as
        ``net.finite(width, seed)``. The arguments below are keyword-only.
    widths : sequence of int
    steps : int
    lr_fraction : float
        Fraction of the largest stable step ``2 n / lam_max`` (``< 1``).
    seeds : sequence of int

    Returns
    -------
    KernelRegime
        With fitted exponents: in the NTK parameterization, ``disc_analytic`` and
        ``ntk_change`` are expected to scale like ``width^(-1/2)`` (Jacot et al. 2018,
        Lee et al. 2019).
    """
    X = check_matrix(X, "X")
    X_test = check_matrix(X_test, "X_test")
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}.")
    widths = np.array([check_positive_int(int(w), "widths") for w in widths])
    lr_fraction = check_tol(lr_fraction, "lr_fraction")
    seeds = list(seeds)
    net = activation if isinstance(activation, Network) else \
        FCNet(activation, depth=depth, w_std=w_std, b_std=b_std)
    Theta = net.ntk(X)
    Theta_x = net.ntk(X_test, X)
    lr = lr_fraction * dynamics.max_learning_rate(Theta)
    shape = (len(widths), len(seeds))
    dE, dA, dF, ch, iv = (np.empty(shape) for _ in range(5))
    rms = lambda a: float(np.sqrt(np.mean(a ** 2)))  # noqa: E731
    for i, w in enumerate(widths):
        for j, s in enumerate(seeds):
            mlp = net.finite(int(w), seed=s, input_dim=X.shape[1]) if net is activation else \
                MLP(int(w), depth, activation, w_std=w_std, b_std=b_std, seed=s,
                    input_dim=X.shape[1])
            K0 = mlp.ntk(X)
            K0x = mlp.ntk(X_test, X)
            rec = train(mlp, X, y, lr, steps, X_test=X_test, record=[0, steps])
            f0, f0x = rec.train[0], rec.test[0]
            emp = dynamics.gradient_descent(K0, K0x, y, f0, f0x, steps=steps, lr=lr)
            ana = dynamics.GradientFlow(Theta, Theta_x, y, f0, f0x, lr=lr)
            dE[i, j] = rms(rec.test[-1] - emp.test)
            dA[i, j] = rms(rec.test[-1] - ana.predict_steps(steps).test)
            dF[i, j] = rms(rec.test[-1] - ana.predict(float(steps)).test)
            KT = rec.model.ntk(X)
            ch[i, j] = np.linalg.norm(KT - K0) / np.linalg.norm(K0)
            iv[i, j] = np.linalg.norm(K0 - Theta) / np.linalg.norm(Theta)
    scale = rms(np.asarray(y_test if y_test is not None else y, dtype=np.float64))
    out = KernelRegime(widths, seeds, dE, dA, dF, ch, iv, scale)
    if len(widths) >= 2:
        for name in ("disc_empirical", "disc_analytic", "disc_flow", "ntk_change",
                     "init_vs_analytic"):
            out.exponents[name] = fit_power_law(widths, getattr(out, name).mean(axis=1))[0]
    return out
