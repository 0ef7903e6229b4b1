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
import scipy.linalg

from . import dynamics
from ._validation import check_finite, check_matrix, check_positive_int, check_positive_real, \
    check_real_dtype, check_targets, check_tol
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
        try:    # the network raises OverflowError once its activations overflow
            grads = model.gradient(X, (f - y) / n)
            for p, g in zip(model.params, grads):
                p -= lr * g
            with np.errstate(over="ignore", invalid="ignore"):
                f = model.forward(X)
            finite = np.isfinite(f).all()
        except (OverflowError, ValueError) as exc:
            if "finite network" not in str(exc):
                raise
            finite = False
        if not finite:
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
    y = np.asarray(check_real_dtype(y, "y", allow_bool=True), dtype=np.float64)
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


# ----------------------------------------------------------------------------- catapult phase
#: Labels of :func:`catapult_sweep`, in the order of increasing step size they usually occur.
CATAPULT_PHASES = ("lazy", "catapult", "diverged", "unconverged")

_MODEL_ATTRS = ("params", "forward", "gradient", "ntk", "copy")


def _check_model(model, name="model"):
    if not all(hasattr(type(model), a) for a in _MODEL_ATTRS):
        raise TypeError(f"{name} must be a finite network with {', '.join(_MODEL_ATTRS)} "
                        f"(e.g. infntk.empirical.MLP), got {type(model).__name__}.")
    return model


def _check_xy(X, y):
    X = check_matrix(X, "X")
    y = check_targets(y, X.shape[0], "y")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one target per row of X), got shape {y.shape}.")
    return X, y


def _analytic_from_mlp(mlp):
    """The infinite-width kernel of an :class:`~infntk.empirical.MLP`'s settings."""
    width = mlp.width if mlp.parameterization == "standard" else None
    return FCNet(mlp.activation, depth=mlp.depth, w_std=mlp.w_std, b_std=mlp.b_std,
                 parameterization=mlp.parameterization, width=width)


def _top_eig(K):
    n = K.shape[0]
    return float(scipy.linalg.eigh(K, eigvals_only=True, subset_by_index=[n - 1, n - 1])[0])


@dataclass(frozen=True, eq=False, repr=False)
class CatapultSweep:
    """Result of :func:`catapult_sweep`: one full-batch gradient-descent run per step size.

    Every run starts from the same network ``theta_0``. ``R`` step sizes, ``T = steps``.

    Attributes
    ----------
    ratios : (R,) ndarray
        ``eta / eta_crit``.
    lrs : (R,) ndarray
        The step sizes ``eta = ratio * eta_crit``.
    eta_crit : float
        ``2 / lambda_max(K_0 / n) = 2 n / lambda_max(K_0)``, ``K_0`` the empirical NTK of the
        network at initialization on the training set (:func:`infntk.dynamics.max_learning_rate`).
    eta_crit_analytic : float or None
        The same from the infinite-width NTK (``None`` if no analytic kernel was used).
    loss : (R, T + 1) ndarray
        ``sum_i (f(x_i) - y_i)^2 / (2 n)`` after each step (``loss[:, 0]`` at initialization);
        NaN after a run was stopped for blowing up.
    ntk_steps : (S,) ndarray of int
        Steps at which the NTK was evaluated.
    lambda_max : (R, S) ndarray
        Top eigenvalue of ``K_t / n`` (so that a fixed kernel is stable iff
        ``eta < 2 / lambda_max``); NaN after a stop.
    ntk_change : (R,) ndarray
        ``||K_T - K_0||_F / ||K_0||_F`` at the end of the run (NaN if stopped).
    stopped : (R,) ndarray of int
        The last step that was run (``T`` unless the run blew up).
    phases : tuple of str
        One label of :data:`CATAPULT_PHASES` per run; criteria in :func:`catapult_sweep`.
    criteria : dict
        ``conv_tol``, ``rise`` and ``blowup`` used for the labels.
    width : int or None
        Hidden width of the network, when it has a ``width`` attribute.
    """

    ratios: np.ndarray
    lrs: np.ndarray
    eta_crit: float
    eta_crit_analytic: float | None
    loss: np.ndarray
    ntk_steps: np.ndarray
    lambda_max: np.ndarray
    ntk_change: np.ndarray
    stopped: np.ndarray
    phases: tuple
    criteria: dict
    width: int | None = None

    @property
    def lambda0(self):
        """Top eigenvalue of ``K_0 / n`` (``= 2 / eta_crit``)."""
        return 2.0 / self.eta_crit

    @property
    def peak(self):
        """``(R,)``: the largest loss of each run over its initial loss."""
        return np.nanmax(self.loss, axis=1) / self.loss[:, 0]

    @property
    def lambda_end(self):
        """``(R,)``: ``lambda_max`` at the last evaluated step of each run (NaN if stopped)."""
        return self.lambda_max[:, -1]

    def boundaries(self):
        """The phase boundaries bracketed by the swept ratios.

        Returns
        -------
        dict
            ``lazy_max`` (largest ratio labelled lazy), ``catapult_min`` and ``catapult_max``
            (smallest and largest labelled catapult), ``diverged_min`` (smallest labelled
            diverged); ``nan`` where no run has that label. The lazy/catapult boundary lies in
            ``[lazy_max, catapult_min]`` (theory: 1), the upper one in
            ``[catapult_max, diverged_min]``.
        """
        r = self.ratios
        lab = np.array(self.phases)

        def pick(label, fn):
            sel = r[lab == label]
            return float(fn(sel)) if sel.size else float("nan")

        return {"lazy_max": pick("lazy", np.max), "catapult_min": pick("catapult", np.min),
                "catapult_max": pick("catapult", np.max),
                "diverged_min": pick("diverged", np.min)}

    def table(self):
        """A plain-text table: ratio, phase, peak loss, final loss, ``eta lambda_end / 2``."""
        lines = [f"eta_crit = {self.eta_crit:.4g} (empirical K_0)"
                 + ("" if self.eta_crit_analytic is None
                    else f", {self.eta_crit_analytic:.4g} (analytic NTK)"),
                 "eta/eta_crit  phase        peak/L0     L_T/L0   eta*lam_end/2  ntk_change"]
        for i, r in enumerate(self.ratios):
            last = self.loss[i, self.stopped[i]]
            lines.append(f"{r:12.3g}  {self.phases[i]:<11s}  {self.peak[i]:9.3g}  "
                         f"{last / self.loss[i, 0]:9.3g}  "
                         f"{self.lrs[i] * self.lambda_end[i] / 2:13.3g}  "
                         f"{self.ntk_change[i]:10.3g}")
        return "\n".join(lines)

    def __repr__(self):
        runs = ", ".join(f"{r:.3g}:{p}" for r, p in zip(self.ratios, self.phases))
        w = "" if self.width is None else f"width={self.width}, "
        return (f"CatapultSweep({w}eta_crit={self.eta_crit:.4g}, steps={self.loss.shape[1] - 1}, "
                f"{{{runs}}})")


def _classify(loss, stopped, steps, conv_tol, rise):
    """The label of one run (see :func:`catapult_sweep`)."""
    if stopped < steps:
        return "diverged"
    L0 = loss[0]
    if not loss[-1] <= conv_tol * L0:
        return "unconverged"
    running_min = np.minimum.accumulate(loss)
    return "catapult" if np.max(loss / running_min) > rise else "lazy"


def _gd_with_ntk(model, X, y, lr, steps, ntk_steps, blowup):
    """Full-batch GD recording the loss at every step and ``lambda_max(K_t / n)`` at some."""
    n = X.shape[0]
    loss = np.full(steps + 1, np.nan)
    lam = np.full(ntk_steps.size, np.nan)
    want = {int(s): j for j, s in enumerate(ntk_steps)}
    K0 = K = None
    f = model.forward(X)
    stopped = steps
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(steps + 1):
            loss[k] = 0.5 * np.dot(f - y, f - y) / n
            if not np.isfinite(loss[k]) or loss[k] > blowup * loss[0]:
                loss[k] = loss[k] if np.isfinite(loss[k]) else np.inf
                stopped = k
                break
            if k in want:
                K = model.ntk(X)
                if K0 is None:
                    K0 = K
                lam[want[k]] = _top_eig(K) / n
            if k == steps:
                break
            grads = model.gradient(X, (f - y) / n)
            for p, g in zip(model.params, grads):
                p -= lr * g
            f = model.forward(X)
    if stopped < steps:
        change = np.nan
    else:
        K = K if steps in want else model.ntk(X)
        change = float(np.linalg.norm(K - K0) / np.linalg.norm(K0))
    return loss, lam, change, stopped


def catapult_sweep(model, X, y, ratios=(0.5, 1.5, 3.0), steps=300, ntk_steps=None,
                   analytic="auto", conv_tol=1e-3, rise=1.1, blowup=1e8):
    """Full-batch gradient descent at ``eta = ratio * eta_crit``: the catapult phase diagram.

    For a finite network and the loss ``sum_i (f(x_i) - y_i)^2 / (2 n)``, the linearized
    (fixed-kernel) dynamics are stable iff ``eta < eta_crit = 2 / lambda_max(K_0 / n)``.
    Lewkowycz et al. (2020) found three regimes for wide networks:

    * ``eta < eta_crit`` (lazy): the loss falls monotonically, the NTK barely moves;
    * ``eta_crit < eta < eta_max`` (catapult): the loss first grows, the NTK's top eigenvalue
      falls until it is below ``2 / eta``, then the loss falls and training converges in a
      flatter region; ``eta_max = 2 eta_crit`` for their two-layer linear model (for ReLU
      they report up to about ``6 eta_crit`` on their data);
    * ``eta > eta_max``: training diverges.

    Each run starts from a copy of ``model``.

    Parameters
    ----------
    model : infntk.empirical.MLP
        The network at initialization, or any finite network with ``params`` (live arrays),
        ``forward``, ``gradient``, ``ntk`` and ``copy`` (the interface of
        :class:`~infntk.empirical.MLP`); not modified.
    X : (n, d) array
        Training inputs.
    y : (n,) array
        Training targets.
    ratios : sequence of float
        ``eta / eta_crit`` values, each ``> 0``.
    steps : int
        Gradient-descent steps per run, ``>= 1``.
    ntk_steps : sequence of int, optional
        Steps at which ``lambda_max(K_t / n)`` is computed (exact symmetric eigensolver, one
        NTK Gram each). Default: every step up to 30, then 30 evenly spaced, and ``steps``.
    analytic : "auto", None or kernel object
        Gives ``eta_crit_analytic`` from an infinite-width NTK: an object with ``.ntk(X)``
        (e.g. :class:`infntk.FCNet`), ``"auto"`` (the :class:`infntk.FCNet` of an ``MLP``'s
        settings; skipped for other models) or ``None``.
    conv_tol : float in (0, 1)
        A run has converged when its final loss is ``<= conv_tol`` times its initial loss.
    rise : float > 1
        A converged run is a catapult when its loss exceeded its running minimum by more than
        this factor at some step.
    blowup : float > 1
        A run is stopped, and labelled diverged, when its loss exceeds ``blowup`` times its
        initial loss or is not finite. (The peak of a catapult grows with the width, about
        linearly for the two-layer model, so keep this large.)

    Returns
    -------
    CatapultSweep

    Notes
    -----
    Labels, checked in this order:

    * ``"diverged"``: the run was stopped (loss ``> blowup * L_0`` or not finite);
    * ``"unconverged"``: the final loss is above ``conv_tol * L_0`` (too few steps near a
      phase boundary, or a collapsed network, e.g. all ReLUs dead);
    * ``"catapult"``: converged, and ``max_t L_t / min_{s <= t} L_s > rise``;
    * ``"lazy"``: converged with no such rise. Below ``eta_crit`` the descent lemma with the
      local curvature ``~ lambda_max(K / n)`` makes the loss monotone for wide networks.

    A converged run at ``eta > eta_crit`` must have ``lambda_max(K_T / n) <= 2 / eta``
    (otherwise the minimum it reached would be linearly unstable); ``lambda_end`` shows it.
    Cost per run: ``steps`` forward and backward passes plus ``S`` NTK Grams and ``n x n``
    eigenvalue problems.

    References
    ----------
    Lewkowycz, Bahri, Dyer, Sohl-Dickstein, Gur-Ari (2020), The large learning rate phase of
    deep learning: the catapult mechanism, arXiv:2003.02218.

    Examples
    --------
    >>> import numpy as np
    >>> from infntk.empirical import MLP
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((16, 8))
    >>> y = np.sin(X @ rng.standard_normal(8) / 2)
    >>> res = catapult_sweep(MLP(256, 1, "relu", seed=0, input_dim=8), X, y,
    ...                      ratios=[0.5, 1.5, 4.0], steps=300, analytic=None)
    >>> res.phases
    ('lazy', 'catapult', 'diverged')
    >>> bool(res.lrs[1] * res.lambda_end[1] < 2)   # the catapult lowered lambda_max below 2/eta
    True
    """
    _check_model(model)
    X, y = _check_xy(X, y)
    n = X.shape[0]
    ratios = np.atleast_1d(np.asarray(ratios, dtype=np.float64))
    if (ratios.ndim != 1 or ratios.size == 0 or not np.isfinite(ratios).all()
            or (ratios <= 0).any()):
        raise ValueError(f"ratios must be a non-empty 1-D sequence of finite numbers > 0, "
                         f"got {ratios!r}.")
    steps = check_positive_int(steps, "steps")
    if ntk_steps is None:
        ntk_steps = np.unique(np.concatenate([np.arange(min(steps, 30) + 1),
                                              np.linspace(0, steps, 31).round().astype(int)]))
    else:
        try:
            ntk_steps = _check_record(ntk_steps, steps)
        except (TypeError, ValueError) as exc:
            raise type(exc)(str(exc).replace("record", "ntk_steps", 1)) from None
    conv_tol = check_tol(conv_tol, "conv_tol")
    rise = check_positive_real(rise, "rise")
    blowup = check_positive_real(blowup, "blowup")
    if rise <= 1 or blowup <= 1:
        raise ValueError(f"rise and blowup must be > 1, got rise={rise!r}, blowup={blowup!r}.")
    if isinstance(analytic, str):
        if analytic != "auto":
            raise ValueError(f"analytic must be 'auto', None or a kernel object, got {analytic!r}.")
        analytic = _analytic_from_mlp(model) if hasattr(model, "parameterization") else None
    elif analytic is not None and not hasattr(analytic, "ntk"):
        raise TypeError(f"analytic must have an ntk(X) method, got {type(analytic).__name__}.")
    model.forward(X)                                   # fixes the input dimension if needed
    eta_crit = dynamics.max_learning_rate(model.ntk(X))
    eta_a = None if analytic is None else dynamics.max_learning_rate(analytic.ntk(X))
    R = ratios.size
    loss = np.empty((R, steps + 1))
    lam = np.empty((R, ntk_steps.size))
    change = np.empty(R)
    stopped = np.empty(R, dtype=int)
    phases = []
    for i, r in enumerate(ratios):
        loss[i], lam[i], change[i], stopped[i] = _gd_with_ntk(
            model.copy(), X, y, r * eta_crit, steps, ntk_steps, blowup)
        phases.append(_classify(loss[i], stopped[i], steps, conv_tol, rise))
    width = getattr(model, "width", None)
    return CatapultSweep(ratios, ratios * eta_crit, float(eta_crit),
                         None if eta_a is None else float(eta_a), loss, ntk_steps, lam, change,
                         stopped, tuple(phases),
                         {"conv_tol": conv_tol, "rise": rise, "blowup": blowup},
                         None if width is None else int(width))


__all__ += ["CATAPULT_PHASES", "CatapultSweep", "catapult_sweep"]


# ----------------------------------------------------------------------------- seed interpolators
def _shrinkage_slack(K, ridge, s):
    """Smallest eigenvalues of ``I - z (zI + K)^{-1}`` and ``I - A^{-1}(I - e^{-sK}) / s``.

    Eq. (22) (docs/conventions.md) says both matrices are PSD (the filters are at most ``1/z`` and
    ``s = eta t / n``). Computed without an eigendecomposition of ``K``: a Cholesky solve for
    the ridge term, and Van Loan's block exponential
    ``expm([[-K, I], [0, 0]] s)[:n, n:] = int_0^s e^{-uK} du = K^{-1}(I - e^{-sK})``
    (valid for singular ``K``) for the flow term.
    """
    n = K.shape[0]
    eye = np.eye(n)
    R = scipy.linalg.solve(K + ridge * eye, eye, assume_a="pos")
    block = np.zeros((2 * n, 2 * n))
    block[:n, :n] = -K
    block[:n, n:] = eye
    F = scipy.linalg.expm(s * block)[:n, n:]
    out = []
    for M in (eye - ridge * R, eye - F / s):
        out.append(float(np.linalg.eigvalsh(0.5 * (M + M.T))[0]))
    return out


@dataclass(frozen=True, eq=False, repr=False)
class SeedInterpolators:
    """Result of :func:`seed_interpolators`. ``W`` widths, ``S`` seeds, ``m`` test points.

    Attributes
    ----------
    widths : (W,) ndarray
    seeds : tuple
    predicted : (W, S, m) ndarray
        Eq. (21) with the seed's own empirical NTK ``K_0`` at initialization:
        ``f(x; theta_0) + K_0(x, X) K_0^{-1} (y - f(X; theta_0))``.
    own_min_norm : (W, S, m) ndarray
        ``K_0(x, X) K_0^{-1} y``: the minimum-norm interpolator of the seed's own kernel.
    min_norm : (W, m) ndarray or None
        ``Theta(x, X) Theta^{-1} y`` with the infinite-width NTK (the same for every width in
        the NTK parameterization).
    predicted_analytic : (W, S, m) ndarray or None
        Eq. (21) with ``Theta`` and the seed's own ``f(.; theta_0)``: at any width its mean
        over seeds is ``min_norm`` (``E f(.; theta_0) = 0``).
    variance_analytic : (W, m) ndarray or None
        Its variance over seeds for ``f(.; theta_0) ~ GP(0, K)``, ``K`` the NNGP kernel
        (Lee et al. 2019, eq. 16 at ``t = inf``), with ``A = Theta(x, X) Theta^{-1}``:
        ``K(x, x) + A K(X, X) A^T - 2 A K(X, x)``; exact for one hidden layer at any width.
    trained : (W, S, m) ndarray or None
        Test predictions of each network after ``steps`` steps of gradient descent.
    train_loss : (W, S) ndarray or None
        Final training loss of each trained network.
    lrs : (W, S) ndarray or None
        Step sizes ``lr_fraction * 2 n / lambda_max(K_0)``.
    steps : int
    ridges : (W, S) ndarray or None
        ``z`` of each network's eq. (22) check (default: the ridge equivalent to its training
        time, ``n / (lr steps)``).
    shrinkage : (W, S, 2, 2) ndarray or None
        Smallest eigenvalue of ``I - z (zI + K)^{-1}`` (``[..., 0]``) and of
        ``I - K^{-1}(I - e^{-eta t K / n}) n / (eta t)`` (``[..., 1]``) for ``K = K_0``
        (``[:, :, 0]``) and for the trained network's NTK ``K_T`` (``[:, :, 1]``); eq. (22)
        says they are ``>= 0``.
    """

    widths: np.ndarray
    seeds: tuple
    predicted: np.ndarray
    own_min_norm: np.ndarray
    min_norm: np.ndarray | None
    predicted_analytic: np.ndarray | None
    variance_analytic: np.ndarray | None
    trained: np.ndarray | None
    train_loss: np.ndarray | None
    lrs: np.ndarray | None
    steps: int
    ridges: np.ndarray | None
    shrinkage: np.ndarray | None

    @staticmethod
    def _rms(a, axis=-1):
        return np.sqrt(np.mean(a ** 2, axis=axis))

    @property
    def spread(self):
        """``(W,)``: RMS over test points of the standard deviation over seeds of ``predicted``."""
        return self._rms(self.predicted.std(axis=1, ddof=1))

    @property
    def spread_analytic(self):
        """``(W,)``: RMS over test points of ``sqrt(variance_analytic)`` (or None)."""
        return None if self.variance_analytic is None else self._rms(
            np.sqrt(self.variance_analytic))

    @property
    def mean_error(self):
        """``(W,)``: RMS over test points of ``mean_seeds(predicted) - min_norm`` (or None)."""
        if self.min_norm is None:
            return None
        return self._rms(self.predicted.mean(axis=1) - self.min_norm)

    @property
    def mean_se(self):
        """``(W,)``: RMS over test points of the standard error of ``mean_seeds(predicted)``."""
        return self._rms(self.predicted.std(axis=1, ddof=1) / np.sqrt(self.predicted.shape[1]))

    @property
    def distance(self):
        """``(W, S)``: RMS over test points of ``trained - predicted`` (or None)."""
        return None if self.trained is None else self._rms(self.trained - self.predicted)

    @property
    def distance_min_norm(self):
        """``(W, S)``: RMS over test points of ``trained - min_norm`` (or None)."""
        if self.trained is None or self.min_norm is None:
            return None
        return self._rms(self.trained - self.min_norm[:, None, :])

    def table(self):
        """Per width: seed spread (measured, analytic), mean error +- s.e., distances."""
        none = np.full(len(self.widths), np.nan)
        sa = none if self.spread_analytic is None else self.spread_analytic
        me = none if self.mean_error is None else self.mean_error
        d = none if self.distance is None else self.distance.mean(axis=1)
        dm = none if self.distance_min_norm is None else self.distance_min_norm.mean(axis=1)
        lines = ["width   spread  spread_inf   mean-min_norm (s.e.)   |trained-pred|  "
                 "|trained-min_norm|"]
        for i, w in enumerate(self.widths):
            lines.append(f"{int(w):5d}  {self.spread[i]:7.4f}  {sa[i]:10.4f}   "
                         f"{me[i]:11.4f} ({self.mean_se[i]:.4f})   {d[i]:13.4g}  {dm[i]:17.4g}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"SeedInterpolators(widths={[int(w) for w in self.widths]}, "
                f"seeds={len(self.seeds)}, test_points={self.predicted.shape[2]}, "
                f"trained={self.trained is not None})")


def seed_interpolators(X, y, X_test, widths=(64, 256, 1024), seeds=range(8), depth=1,
                       activation="relu", w_std=1.0, b_std=0.0, parameterization="ntk",
                       factory=None, analytic="auto", steps=300, lr_fraction=0.5, ridge=None):
    """The family of kernel-regime interpolators indexed by the initialization (eq. 21).

    Gradient flow with a fixed kernel converges to
    ``f(x; theta_0) + K(x, X) K^{-1} (y - f(X; theta_0))``: an interpolator of the data that
    depends on the random initialization, not the minimum-norm interpolator
    ``K(x, X) K^{-1} y`` (its ensemble mean, since ``E f(.; theta_0) = 0``). For each width and
    seed this draws a finite network, computes the predictor with its own NTK and initial
    outputs, trains the network by full-batch gradient descent with a small step, and checks
    the spectral-shrinkage inequalities of eq. (22) on its kernels before and after training.

    Parameters
    ----------
    X : (n, d) array
        Training inputs (distinct rows: the NTK Gram must be invertible).
    y : (n,) array
        Training targets.
    X_test : (m, d) array
        Points at which the interpolators are compared.
    widths : sequence of int
    seeds : sequence of int
        Initialization seeds (``factory(width, seed)``).
    depth, activation, w_std, b_std, parameterization
        Settings of the default :class:`~infntk.empirical.MLP` and of the analytic kernel.
    factory : callable, optional
        ``factory(width, seed) -> model`` with the interface of :class:`~infntk.empirical.MLP`
        (``params``, ``forward``, ``gradient``, ``ntk``, ``copy``); replaces the default MLP.
    analytic : "auto", None or kernel object
        Infinite-width kernels with ``.ntk(X1, X2)`` and ``.nngp(X1, X2)`` (e.g.
        :class:`infntk.FCNet`); ``"auto"`` builds the :class:`infntk.FCNet` of the settings
        above (with ``width`` in the standard parameterization), ``None`` skips the analytic
        quantities.
    steps : int
        Gradient-descent steps per network (``0``: no training, no shrinkage check).
    lr_fraction : float in (0, 1)
        Step ``lr = lr_fraction * 2 n / lambda_max(K_0)`` (stable for the linearized network).
    ridge : float, optional
        ``z > 0`` of the eq. (22) check; default ``n / (lr steps)``
        (:func:`infntk.dynamics.equivalent_ridge`).

    Returns
    -------
    SeedInterpolators

    Notes
    -----
    Expected behaviour in the NTK parameterization: ``spread`` tends to ``spread_analytic > 0``
    as the width grows (the seed dependence does not vanish), ``mean_error`` is Monte Carlo
    noise of size ``mean_se`` plus an ``O(1/width)`` kernel bias, and ``distance`` (trained
    network vs its own predictor) shrinks like ``width^(-1/2)`` while ``distance_min_norm``
    stays of the order of the spread. Cost: per network two NTK Grams, a Cholesky solve and
    ``steps`` forward/backward passes; the analytic kernels once per width.

    References
    ----------
    Jacot, Gabriel, Hongler (2018); Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein,
    Pennington (2019), Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient
    Descent, NeurIPS, eq. (16).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X, Xt = rng.standard_normal((8, 3)), rng.standard_normal((4, 3))
    >>> res = seed_interpolators(X, np.sin(X[:, 0]), Xt, widths=[128], seeds=range(3),
    ...                          steps=0)
    >>> res.predicted.shape, res.min_norm.shape
    ((1, 3, 4), (1, 4))
    >>> bool(np.allclose(res.predicted[0, 0], res.predicted_analytic[0, 0], atol=0.3))
    True
    """
    X, y = _check_xy(X, y)
    n, d = X.shape
    X_test = check_matrix(X_test, "X_test")
    if X_test.shape[1] != d:
        raise ValueError(f"X_test must have {d} columns like X, got shape {X_test.shape}.")
    widths = np.atleast_1d(np.asarray(widths))
    if widths.ndim != 1 or widths.size == 0:
        raise ValueError(f"widths must be a non-empty 1-D sequence of integers, got {widths!r}.")
    widths = np.array([check_positive_int(w.item() if hasattr(w, "item") else w, "widths")
                       for w in widths])
    seeds = tuple(seeds)
    if len(seeds) < 2:
        raise ValueError(f"seeds must hold at least 2 seeds (a spread is computed), "
                         f"got {seeds!r}.")
    steps = check_positive_int(steps, "steps", minimum=0)
    lr_fraction = check_tol(lr_fraction, "lr_fraction")
    if ridge is not None:
        ridge = check_positive_real(ridge, "ridge")
    if factory is None:
        def factory(width, seed):
            return MLP(width, depth, activation, w_std=w_std, b_std=b_std,
                       parameterization=parameterization, seed=seed, input_dim=d)
    elif not callable(factory):
        raise TypeError(f"factory must be a callable (width, seed) -> model, got {factory!r}.")
    if isinstance(analytic, str):
        if analytic != "auto":
            raise ValueError(f"analytic must be 'auto', None or a kernel object, got {analytic!r}.")

        def kernel_at(w):
            return FCNet(activation, depth=depth, w_std=w_std, b_std=b_std,
                         parameterization=parameterization,
                         width=int(w) if parameterization == "standard" else None)
    elif analytic is None:
        kernel_at = None
    elif not (hasattr(analytic, "ntk") and hasattr(analytic, "nngp")):
        raise TypeError(f"analytic must have ntk and nngp methods, got {type(analytic).__name__}.")
    else:
        def kernel_at(w):
            return analytic

    W, S, m = widths.size, len(seeds), X_test.shape[0]
    pred, own = np.empty((W, S, m)), np.empty((W, S, m))
    has_a, trains = kernel_at is not None, steps > 0
    mn = np.empty((W, m)) if has_a else None
    pred_a = np.empty((W, S, m)) if has_a else None
    var_a = np.empty((W, m)) if has_a else None
    trained = np.empty((W, S, m)) if trains else None
    tloss = np.empty((W, S)) if trains else None
    lrs = np.empty((W, S)) if trains else None
    shrink = np.empty((W, S, 2, 2)) if trains else None
    ridges = np.empty((W, S)) if trains else None
    for i, w in enumerate(widths):
        if has_a:
            net = kernel_at(w)
            Th, Thx = net.ntk(X), net.ntk(X_test, X)
            Kn, Knx = net.nngp(X), net.nngp(X_test, X)
            mn[i] = dynamics.kernel_ridge(Th, Thx, y, 0.0).test
            A = scipy.linalg.solve(Th, Thx.T, assume_a="pos").T          # Theta(x,X) Theta^-1
            kxx = np.asarray(net.diag(X_test).nngp)
            var_a[i] = kxx + np.einsum("ij,jk,ik->i", A, Kn, A) - 2 * np.einsum("ij,ij->i", A,
                                                                                 Knx)
        for j, s in enumerate(seeds):
            model = _check_model(factory(int(w), s), "factory(width, seed)")
            f0, f0x = model.forward(X), model.forward(X_test)
            K0, K0x = model.ntk(X), model.ntk(X_test, X)
            pred[i, j] = dynamics.kernel_ridge(K0, K0x, y, 0.0, f0, f0x).test
            own[i, j] = dynamics.kernel_ridge(K0, K0x, y, 0.0).test
            if has_a:
                pred_a[i, j] = dynamics.kernel_ridge(Th, Thx, y, 0.0, f0, f0x).test
            if trains:
                lr = lr_fraction * dynamics.max_learning_rate(K0)
                rec = train(model, X, y, lr, steps, X_test=X_test)
                trained[i, j], tloss[i, j], lrs[i, j] = rec.test[-1], rec.loss[-1], lr
                z = dynamics.equivalent_ridge(steps, n, lr) if ridge is None else ridge
                ridges[i, j] = z
                for k, K in enumerate((K0, rec.model.ntk(X))):
                    shrink[i, j, k] = _shrinkage_slack(K, z, lr * steps / n)
    return SeedInterpolators(widths, seeds, pred, own, mn, pred_a, var_a, trained, tloss, lrs,
                             steps, ridges, shrink)


__all__ += ["SeedInterpolators", "seed_interpolators"]
