r"""Published theorem bounds, evaluated and put next to measured quantities.

Three theorems, each under its own name (the paper is in the name's docstring):

* :func:`ntk_convergence_bound` (with :func:`ntk_convergence_width`): Arora et al. 2019a,
  Theorem 3.1, the convergence of the empirical NTK **at initialization** to the analytic one.
  For ReLU without biases, unit-norm inputs and width
  :math:`m \ge C L^6 \log(L/\delta) / \epsilon^4`, with probability :math:`\ge 1 - \delta`,
  :math:`|\hat\Theta(x, x') - \Theta(x, x')| \le (L + 1)\epsilon`. Evaluated on a
  :func:`infntk.convergence.width_sweep` result.
* :func:`uniform_convergence_bound`: the per-layer uniform bound
  :math:`C_2 (C_3^L m^{-1/6} + \sqrt{d L \log m / m})` of Xu & Zhu (2024) for multi-layer
  networks, with the constants that make it cover a width sweep.
* :func:`generalization_bound` (with :func:`arora_gram`): Arora et al. 2019b, Theorem 5.1,
  the data-dependent generalization bound :math:`\sqrt{2 y^T (H^\infty)^{-1} y / n}` of a
  two-layer ReLU network trained by gradient descent.

Every function returns a small frozen record (:class:`NTKConvergenceBound`,
:class:`UniformConvergenceBound`, :class:`GeneralizationBound`) with a one-line repr.

Former names (deprecated, removed in the next release; each warns and names its successor
and returns what it used to return):
``infntk.convergence.arora_bound`` -> :func:`ntk_convergence_bound` (returned a dict),
``infntk.convergence.uniform_bound`` -> :func:`uniform_convergence_bound` (a dict),
``infntk.dynamics.arora_bound`` -> :func:`generalization_bound` (a float),
``infntk.dynamics.arora_gram`` -> :func:`arora_gram`.

This module sits above :mod:`infntk.fcnet`, :mod:`infntk.convergence` and
:mod:`infntk.dynamics`; none of them imports it (their deprecated aliases load it lazily).

Example
-------
>>> import numpy as np
>>> from infntk.bounds import generalization_bound
>>> generalization_bound(np.eye(2), [1.0, -1.0])      # H^inf = I/2: sqrt(2 * 4 / 2)
GeneralizationBound(bound=2, n=2, complexity=4, lambda_min=0.5)

References
----------
.. [1] S. Arora, S. S. Du, W. Hu, Z. Li, R. Salakhutdinov, R. Wang, "On exact computation with
   an infinitely wide neural net", NeurIPS 2019, arXiv:1904.11955 (Theorem 3.1).
.. [2] S. Arora, S. S. Du, W. Hu, Z. Li, R. Wang, "Fine-grained analysis of optimization and
   generalization for overparameterized two-layer neural networks", ICML 2019,
   arXiv:1901.08584 (Theorem 5.1).
.. [3] J. Xu, H. Zhu, "Overparametrized multi-layer neural networks: uniform concentration of
   neural tangent kernel and convergence of stochastic gradient descent", JMLR 25(94), 2024.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import numpy as np
import scipy.linalg

from ._validation import check_targets as _check_targets
from ._validation import check_matrix, check_positive_int, check_positive_real, check_std, \
    check_tol
from .fcnet import FCNet

__all__ = ["ntk_convergence_width", "ntk_convergence_bound", "NTKConvergenceBound",
           "uniform_convergence_bound", "UniformConvergenceBound", "arora_gram",
           "generalization_bound", "GeneralizationBound"]

# A unit-norm row may deviate from 1 by this much (rounding of a normalization upstream).
_UNIT_NORM_ATOL = 1e-8


def _fmt(x):
    return f"{x:.4g}"


def _range(a):
    a = np.asarray(a)
    if a.size == 0:
        return "[]"
    return f"[{_fmt(np.min(a))} .. {_fmt(np.max(a))}]"


class _Record:
    """Mixin: ``as_dict()`` and a short one-line repr (arrays shown as ranges)."""

    def as_dict(self):
        """The fields as a plain ``dict`` (arrays are not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __repr__(self):
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray) and v.ndim > 0:
                parts.append(f"{f.name}={_range(v)}")
            elif isinstance(v, float):
                parts.append(f"{f.name}={_fmt(v)}")
            else:
                parts.append(f"{f.name}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


# ----------------------------------------------------------------------------- Arora et al. 2019a
def ntk_convergence_width(eps, depth, delta=0.1, C=1.0):
    """The width Theorem 3.1 of Arora et al. (2019a) asks for: ``C L^6 log(L/delta) / eps^4``.

    With at least this many units per hidden layer (ReLU, no biases, unit-norm inputs), the
    empirical NTK at initialization is within ``(L + 1) eps`` of the analytic one, with
    probability ``>= 1 - delta``. ``C`` is the theorem's unspecified absolute constant.

    Parameters
    ----------
    eps : float > 0
    depth : int >= 1
        ``L``, the number of hidden layers.
    delta : float in (0, 1)
    C : float > 0

    Returns
    -------
    float
        The required width (not rounded).

    Examples
    --------
    >>> ntk_convergence_width(0.5, depth=1, delta=0.1)     # log(10) / 0.5^4
    36.841361487904734
    """
    eps = check_positive_real(eps, "eps")
    depth = check_positive_int(depth, "depth", minimum=1)
    delta = check_tol(delta, "delta")
    C = check_positive_real(C, "C")
    return C * depth ** 6 * math.log(depth / delta) / eps ** 4


@dataclass(frozen=True, eq=False, repr=False)
class NTKConvergenceBound(_Record):
    """Result of :func:`ntk_convergence_bound`; arrays have one entry per width.

    Attributes
    ----------
    width : (W,) ndarray of int
    eps_measured : (W,) ndarray
        Measured ``(1 - delta)``-quantile over seeds of ``max_pairs |Theta-hat - Theta|``,
        divided by ``L + 1``, in the normalization of Arora et al.
    eps_bound : (W,) ndarray
        ``eps(m) = (C L^6 log(L/delta) / m)^(1/4)``.
    ratio : (W,) ndarray
        ``eps_bound / eps_measured`` (how loose the bound is).
    C_tight : (W,) ndarray
        The ``C`` that makes the bound an equality at each width.
    C_cover : float
        ``max C_tight``: the smallest ``C`` for which the bound covers every width.
    seeds : int
        Number of seeds per width (the quantile's sample size).
    depth : int
        ``L``.
    delta : float
    """

    width: np.ndarray
    eps_measured: np.ndarray
    eps_bound: np.ndarray
    ratio: np.ndarray
    C_tight: np.ndarray
    C_cover: float
    seeds: int
    depth: int
    delta: float


def _pairwise_errors(result, width, kernel):
    ref = result.reference[width][kernel]
    return [np.abs(result.records[width, s]["kernels"][kernel] - ref)
            for (w, s) in sorted(result.records) if w == width]


def _check_sweep(result):
    # duck-typed (bounds sits below convergence in the layering): a width_sweep result
    if not all(hasattr(result, a) for a in ("widths", "errors", "config", "summary")):
        raise TypeError(f"result must be an infntk.convergence.SweepResult, got "
                        f"{type(result).__name__}.")
    if not result.widths:
        raise ValueError("result has no runs.")
    return result


def ntk_convergence_bound(result, delta=0.1, C=1.0):
    r"""Arora et al. (2019a), Theorem 3.1, next to the measured errors of a ReLU width sweep.

    Theorem: for ReLU, no biases, inputs with ``||x|| <= 1`` and width
    ``m >= C L^6 log(L/delta) / eps^4`` (:func:`ntk_convergence_width`), with probability
    ``>= 1 - delta`` the empirical NTK is within ``(L+1) eps`` of the analytic one, i.e.

    .. math:: |\hat\Theta(x, x') - \Theta(x, x')| \le (L + 1)\,\epsilon(m), \qquad
              \epsilon(m) = (C L^6 \log(L/\delta) / m)^{1/4}.

    ``C`` is an unspecified absolute constant. Reported per width: the measured
    ``(1 - delta)``-quantile over seeds of the largest error over all pairs of points (a
    uniform, hence conservative, version of the per-pair statement) divided by ``L + 1``
    (``eps_measured``), the bound's ``eps(m)`` for the given ``C``, and the constant
    ``C_tight = m eps_measured^4 / (L^6 log(L/delta))`` that makes the bound an equality.

    Arora et al. normalize differently (first layer ``W x`` without ``1/sqrt(d)``, hidden
    layers with ``c_sigma = 2``): errors are converted exactly to their normalization and to
    unit-norm inputs using the positive homogeneity of the ReLU network
    (``Theta-hat(c x, y) = c Theta-hat(x, y)``, and a factor ``(2 / w_std^2)^(L+1)``), so any
    ``w_std > 0`` and any nonzero inputs may be used.

    Parameters
    ----------
    result : infntk.convergence.SweepResult
        From :func:`~infntk.convergence.width_sweep` with ``activation="relu"``,
        ``parameterization="ntk"``, ``depth >= 1`` and no biases (``b_std`` None or 0).
    delta : float in (0, 1)
    C : float >= 0
        The constant of the theorem to evaluate ``eps(m)`` with.

    Returns
    -------
    NTKConvergenceBound

    Notes
    -----
    The quantile of ``S`` seeds is a noisy estimate when ``S`` is not much larger than
    ``1/delta``. Since the measured errors decay like ``m^(-1/2)`` and ``eps(m)`` like
    ``m^(-1/4)``, ``C_tight`` falls like ``1/m``: a ``C`` fitted at one width is loose by
    ``(m'/m)^(1/4)`` at width ``m'``. Cost: ``O(W S n^2)`` on the stored kernels.

    References
    ----------
    Arora, Du, Hu, Li, Salakhutdinov, Wang (2019a), "On exact computation with an infinitely
    wide neural net", NeurIPS, arXiv:1904.11955, Theorem 3.1.

    Examples
    --------
    >>> from infntk.convergence import width_sweep
    >>> res = width_sweep("relu", depth=1, b_std=None, widths=[32, 64], seeds=3,
    ...                   progress=False)
    >>> b = ntk_convergence_bound(res, delta=0.5)
    >>> b.width.tolist(), b.seeds, bool(b.C_cover == b.C_tight.max())
    ([32, 64], 3, True)
    """
    result = _check_sweep(result)
    cfg = result.config
    problems = []
    if cfg["activation"] != "relu":
        problems.append(f"activation is {cfg['activation']!r}, the theorem is for relu")
    if cfg["parameterization"] != "ntk":
        problems.append("parameterization must be 'ntk'")
    if cfg["b_std"] not in (None, 0.0):
        problems.append(f"b_std={cfg['b_std']} (the theorem has no biases)")
    if cfg["depth"] < 1:
        problems.append("depth must be >= 1 (L^6 log(L/delta) vanishes at L = 0)")
    if cfg["w_std"] <= 0:
        problems.append("w_std must be > 0")
    if problems:
        raise ValueError("result: Arora et al. 2019a, Theorem 3.1 (ntk_convergence_bound) "
                         "does not apply: " + "; ".join(problems) + ".")
    delta = check_tol(delta, "delta")
    C = check_std(C, "C")
    L = cfg["depth"]
    X = np.asarray(cfg["X"], dtype=float)
    d = X.shape[1]
    norms = np.linalg.norm(X, axis=1)
    keep = norms > 0
    # error in Arora's normalization at unit-norm inputs: their inputs are X sqrt(2/d)
    # (times w_std / sqrt 2 per layer for w_std != sqrt 2)
    scale = (2.0 / cfg["w_std"] ** 2) ** (L + 1) * d / 2.0 / np.outer(norms[keep], norms[keep])
    log_term = L ** 6 * math.log(L / delta)
    rows = {k: [] for k in ("width", "eps_measured", "eps_bound", "ratio", "C_tight")}
    n_seeds = None
    for w in result.widths:
        errs = [np.max(e[np.ix_(keep, keep)] * scale) for e in _pairwise_errors(result, w, "ntk")]
        n_seeds = len(errs)
        eps_meas = float(np.quantile(errs, 1 - delta)) / (L + 1)
        eps_bd = (C * log_term / w) ** 0.25
        rows["width"].append(w)
        rows["eps_measured"].append(eps_meas)
        rows["eps_bound"].append(eps_bd)
        rows["ratio"].append(eps_bd / eps_meas if eps_meas > 0 else float("inf"))
        rows["C_tight"].append(w * eps_meas ** 4 / log_term)
    arr = {k: np.asarray(v) for k, v in rows.items()}
    return NTKConvergenceBound(C_cover=float(np.max(arr["C_tight"])), seeds=n_seeds, depth=L,
                               delta=float(delta), **arr)


# ----------------------------------------------------------------------------- uniform bound
@dataclass(frozen=True, eq=False, repr=False)
class UniformConvergenceBound(_Record):
    """Result of :func:`uniform_convergence_bound`.

    Attributes
    ----------
    layers : (L+1,) ndarray of int
        ``1 .. L+1``.
    C3 : (c,) ndarray
        The values of ``C3`` tried.
    C2_min : (c, L+1) ndarray
        Smallest ``C2`` covering every run at every width, per ``C3`` and layer.
    looseness_at_max_width : (c, L+1) ndarray
        Covering bound over the median measured error at the largest width.
    max_width : int
    measured_slope : (L+1,) ndarray
        Fitted exponent of the max-abs error per layer (``nan`` where the error is 0).
    """

    layers: np.ndarray
    C3: np.ndarray
    C2_min: np.ndarray
    looseness_at_max_width: np.ndarray
    max_width: int
    measured_slope: np.ndarray


def uniform_convergence_bound(result, C3=(1.0, 1.5, 2.0), d=None):
    r"""The per-layer uniform bound :math:`C_2 (C_3^L m^{-1/6} + \sqrt{d L \log m / m})`.

    The bound (Xu & Zhu 2024, uniform concentration of the NTK of multi-layer networks) states
    that for ``m >= C d^2 exp(L^2)``, with probability ``>= 1 - exp(-C1 m^(1/3))``, for every layer
    ``l``, ``sup |H^(l) - Phi^(l)| <= C2 (C3^L / m^(1/6) + sqrt(d L log m / m))``. The
    constants ``C1, C2, C3`` are not given. We take ``H^(l)`` to be the empirical NTK of layer
    ``l`` (``theta[l]`` of :func:`~infntk.convergence.width_sweep`, exact per-unit NTKs;
    ``l = L+1`` is the network's) and ``Phi^(l) = Theta^l``, ``L = depth`` (at least 1), ``d``
    the input dimension, and the sup over the finite set of points of the sweep (a lower
    bound of the true sup).

    Since ``C2`` and ``C3`` are unknown, we report, for each given ``C3``, the smallest
    ``C2`` that makes the bound cover every measured run at every width
    (``max over runs of error / (C3^L m^(-1/6) + sqrt(d L log m / m))``) and, at the
    largest width, how many times the covering bound exceeds the median measured error.

    Parameters
    ----------
    result : infntk.convergence.SweepResult
    C3 : float or sequence of float, > 0
    d : int, optional
        Input dimension in the bound; default the number of columns of the sweep's ``X``.

    Returns
    -------
    UniformConvergenceBound

    References
    ----------
    Xu, Zhu (2024), "Overparametrized multi-layer neural networks: uniform concentration of
    neural tangent kernel and convergence of stochastic gradient descent", JMLR 25(94).

    Examples
    --------
    >>> from infntk.convergence import width_sweep
    >>> res = width_sweep("relu", depth=1, widths=[16, 32], seeds=3, progress=False)
    >>> u = uniform_convergence_bound(res, C3=[1.0, 2.0])
    >>> u.C2_min.shape, u.max_width
    ((2, 2), 32)
    """
    result = _check_sweep(result)
    cfg = result.config
    C3 = np.atleast_1d(np.asarray(C3, dtype=float))
    if C3.ndim != 1 or not np.all(np.isfinite(C3)) or np.any(C3 <= 0):
        raise ValueError(f"C3 must be positive finite numbers, got {C3!r}.")
    L = cfg["depth"]
    Lb = max(L, 1)
    d = len(cfg["X"][0]) if d is None else check_positive_int(d, "d")
    layers = list(range(1, L + 2))
    widths = result.widths
    mw = max(widths)
    C2 = np.zeros((C3.size, len(layers)))
    loose = np.zeros_like(C2)
    slopes = []
    for j, l in enumerate(layers):
        errs = result.errors(f"theta[{l}].maxabs")
        for i, c3 in enumerate(C3):
            shape = {w: c3 ** Lb / w ** (1 / 6) + math.sqrt(d * Lb * math.log(w) / w)
                     for w in widths}
            C2[i, j] = max(float(np.max(e)) / shape[w] for w, e in errs.items())
            med = float(np.median(errs[mw]))
            loose[i, j] = C2[i, j] * shape[mw] / med if med > 0 else float("inf")
        try:
            slopes.append(result.fit_exponent(f"theta[{l}].maxabs").slope)
        except ValueError:
            slopes.append(float("nan"))
    return UniformConvergenceBound(layers=np.asarray(layers), C3=C3, C2_min=C2,
                                   looseness_at_max_width=loose, max_width=mw,
                                   measured_slope=np.asarray(slopes))


# ----------------------------------------------------------------------------- Arora et al. 2019b
def _check_unit_rows(X, name="X", normalize=False):
    X = check_matrix(X, name)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    if normalize:
        if (norms == 0).any():
            raise ValueError(f"{name} has a zero row (row {int(np.argmin(norms))}); it cannot "
                             "be normalized to unit norm.")
        return X / norms[:, None]
    if np.max(np.abs(norms - 1.0)) > _UNIT_NORM_ATOL:
        i = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"{name} must have unit-norm rows (Arora et al. assume ||x|| = 1); row "
                         f"{i} has norm {norms[i]:.6g}. Pass normalize=True to rescale.")
    return X


def arora_gram(X, normalize=False):
    r"""``H^inf`` of Arora et al. (2019b): the first-layer NTK Gram of a two-layer ReLU network.

    .. math:: H^\infty_{ij} = E_{w \sim N(0, I)}[x_i^T x_j 1\{w^T x_i \ge 0, w^T x_j \ge 0\}]
              = \frac{x_i^T x_j (\pi - \arccos(x_i^T x_j))}{2 \pi}

    for unit-norm rows. ``E[1{u >= 0} 1{v >= 0}]`` is the NNGP of a one-hidden-layer step
    network, so this reuses the closed form of :class:`infntk.FCNet` (``"step"``, depth 1).

    Parameters
    ----------
    X : (n, d) array
        Unit-norm rows (checked to 1e-8), or any nonzero rows with ``normalize=True``.
    normalize : bool
        Rescale rows to unit norm first.

    Returns
    -------
    (n, n) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> np.round(arora_gram(np.array([[1.0, 0.0], [0.0, 1.0]])), 6)  # diagonal 1/2, <x,y>=0
    array([[0.5, 0. ],
           [0. , 0.5]])
    """
    X = _check_unit_rows(X, "X", normalize)
    # step net, depth 1, w_std = 1, no bias: Sigma^2 = E[step(u) step(v)] = (pi - theta)/(2 pi),
    # the angle theta being that of the rows (Sigma^1 = <x, y>/d only scales them).
    orthant = FCNet("step", depth=1, w_std=1.0, b_std=None).nngp(X)
    return (X @ X.T) * orthant


@dataclass(frozen=True, eq=False, repr=False)
class GeneralizationBound(_Record):
    """Result of :func:`generalization_bound`; ``float(result)`` is the bound.

    Attributes
    ----------
    bound : float
        ``sqrt(2 y^T (H^inf)^{-1} y / n)``.
    n : int
        Number of samples.
    complexity : float
        ``y^T (H^inf)^{-1} y``.
    lambda_min : float
        ``lambda_0``, the smallest eigenvalue of ``H^inf`` (enters the theorem's
        ``O(sqrt(log(n / (lambda_0 delta)) / n))`` term).
    """

    bound: float
    n: int
    complexity: float
    lambda_min: float

    def __float__(self):
        return self.bound


def generalization_bound(X, y, normalize=False):
    r"""Arora et al. (2019b), Theorem 5.1: the bound :math:`\sqrt{2 y^T (H^\infty)^{-1} y / n}`.

    A two-layer ReLU network trained by gradient descent from a small random initialization
    has population loss (1-Lipschitz loss bounded by 1) at most this quantity plus
    ``O(sqrt(log(n / (lambda_0 delta)) / n))``, ``lambda_0`` the smallest eigenvalue of
    ``H^inf`` (:func:`arora_gram`). The complexity ``y^T (H^inf)^{-1} y`` is small for labels
    aligned with the top eigenvectors of ``H^inf`` (learnable structure) and large for random
    labels: the bound separates the two (see the example).

    Parameters
    ----------
    X : (n, d) array
        Inputs with unit-norm rows (or ``normalize=True``).
    y : (n,) array
        Labels (e.g. ``+-1``).
    normalize : bool
        Rescale the rows of ``X`` to unit norm first.

    Returns
    -------
    GeneralizationBound
        ``.bound`` (also ``float(result)``), ``.complexity``, ``.lambda_min``, ``.n``.

    Notes
    -----
    One eigendecomposition of ``H^inf``: ``O(n^3)``.

    References
    ----------
    Arora, Du, Hu, Li, Wang (2019b), "Fine-grained analysis of optimization and generalization
    for overparameterized two-layer neural networks", ICML, arXiv:1901.08584, Theorem 5.1.

    Examples
    --------
    True labels (digit 0 versus 1) against the same labels randomly permuted:

    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> X, t = load_digits(n_class=2, return_X_y=True)
    >>> X, y = X[:150], 2.0 * t[:150] - 1
    >>> true = generalization_bound(X, y, normalize=True)
    >>> rand = generalization_bound(X, np.random.default_rng(0).permutation(y), normalize=True)
    >>> bool(true.bound < 0.5 * rand.bound)
    True
    """
    X = _check_unit_rows(X, "X", normalize)
    n = X.shape[0]
    y = _check_targets(y, n, "y")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per row of X), got shape {y.shape}.")
    lam, U = scipy.linalg.eigh(arora_gram(X))
    if lam[0] <= 10.0 * n * np.finfo(float).eps * lam[-1]:
        raise ValueError(f"H^inf is singular to working precision (lambda_0 = {lam[0]:.3g}; "
                         "duplicate or parallel rows in X?); the bound needs lambda_0 > 0.")
    c = U.T @ y
    complexity = float(np.dot(c, c / lam))
    return GeneralizationBound(bound=float(np.sqrt(2.0 * complexity / n)), n=n,
                               complexity=complexity, lambda_min=float(lam[0]))


# ----------------------------------------------------------------------------- deprecated names
def _deprecated(old, new):
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use "
                  f"infntk.bounds.{new} (it returns a typed record).", DeprecationWarning,
                  stacklevel=3)


def _legacy_convergence_arora_bound(result, delta=0.1, C=1.0):
    """Deprecated: :func:`ntk_convergence_bound` as the former ``dict``."""
    _deprecated("infntk.convergence.arora_bound", "ntk_convergence_bound")
    out = ntk_convergence_bound(result, delta=delta, C=C).as_dict()
    out["n_seeds"] = out.pop("seeds")
    out["L"] = out.pop("depth")
    return out


def _legacy_convergence_uniform_bound(result, C3=(1.0, 1.5, 2.0), d=None):
    """Deprecated: :func:`uniform_convergence_bound` as the former ``dict``."""
    _deprecated("infntk.convergence.uniform_bound", "uniform_convergence_bound")
    return uniform_convergence_bound(result, C3=C3, d=d).as_dict()


def _legacy_dynamics_arora_bound(X, y, normalize=False):
    """Deprecated: :func:`generalization_bound` as the former ``float``."""
    _deprecated("infntk.dynamics.arora_bound", "generalization_bound")
    return generalization_bound(X, y, normalize=normalize).bound


def _legacy_dynamics_arora_gram(X, normalize=False):
    """Deprecated: :func:`arora_gram` (moved from :mod:`infntk.dynamics`)."""
    _deprecated("infntk.dynamics.arora_gram", "arora_gram")
    return arora_gram(X, normalize=normalize)
