"""Closed-form training dynamics in the kernel regime (NumPy/SciPy only).

With a fixed kernel ``K`` (the NTK at initialization, or the infinite-width NTK), gradient flow
on the 1/n-normalized squared loss

.. math:: \\mathcal L(\\theta) = \\frac{1}{n}\\sum_{i=1}^n \\tfrac12 (f(x_i;\\theta) - y_i)^2

moves the predictions by the linear ODE (docs/conventions.md, eq. 7.1-7.2; Jacot et al. 2018)

.. math:: \\frac{d}{dt} f_t(x) = -\\frac{\\eta}{n} K(x, X)\\,(f_t(X) - y),

whose solution is eq. (7.3) in sample and eq. (7.4) out of sample (Lee et al. 2019),

.. math::
    f_t(X) - y = e^{-\\eta t K/n}(f_0(X) - y), \\qquad
    f_t(x) = f_0(x) + K(x, X) K^{-1}(I - e^{-\\eta t K / n})(y - f_0(X)),

and kernel regression (eq. 7.5) in the limit ``t -> inf``. This module evaluates these formulas
stably (one cached eigendecomposition, ``expm1``, eigenvalues clamped at 0, the null space of
``K`` handled as the exact limit), the exact discrete-time gradient-descent counterpart, kernel
ridge regression (eq. 7.6), the spectral filters of eq. (7.7) and the largest stable step
size.

Public names: :func:`gradient_flow`, :class:`GradientFlow`, :class:`Prediction`,
:func:`gradient_descent`, :func:`training_loss`, :func:`kernel_ridge`, :func:`ridge_loo_error`,
:func:`flow_filter`,
:func:`gd_filter`, :func:`ridge_filter`, :func:`equivalent_ridge`, :func:`max_learning_rate`.
The generalization bound of Arora et al. (2019b) and its Gram ``H^inf`` are in
:mod:`infntk.bounds` (:func:`~infntk.bounds.generalization_bound`,
:func:`~infntk.bounds.arora_gram`); ``arora_bound`` and ``arora_gram`` here are deprecated
aliases.

Conventions
-----------
* ``n`` is the number of training targets (rows of ``y``); ``lr`` is the learning rate ``eta``.
* ``y`` of shape ``(n,)`` or ``(n, k)`` (``k`` independent outputs sharing the kernel).
* The per-example loss is ``(f - y)^2 / 2`` as in eq. (7.1); the reported loss is
  ``sum_i ||f(x_i) - y_i||^2 / (2 n)`` (summed over outputs).
* ``ridge`` is added to the unnormalized Gram, as in eq. (7.6): ``(ridge I + K)^{-1}``, the
  convention of :class:`sklearn.kernel_ridge.KernelRidge` (``alpha = ridge``).

References
----------
Jacot, Gabriel, Hongler (2018), Neural Tangent Kernel: Convergence and Generalization in
Neural Networks. Lee et al. (2019), Wide Neural Networks of Any Depth Evolve as Linear Models
Under Gradient Descent. Arora, Du, Hu, Li, Wang (2019), Fine-Grained Analysis of Optimization
and Generalization for Overparameterized Two-Layer Neural Networks, ICML.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

import warnings

from ._validation import check_targets as _check_targets
from ._validation import (check_finite, check_matrix, check_positive_int, check_positive_real,
                          check_real_dtype)

__all__ = ["Prediction", "GradientFlow", "gradient_flow", "gradient_descent", "training_loss",
           "kernel_ridge", "ridge_loo_error", "flow_filter", "gd_filter", "ridge_filter",
           "equivalent_ridge", "max_learning_rate"]

# |K - K^T| above this fraction of max|K| is not rounding: the Gram is rejected.
_SYMMETRY_RTOL = 1e-8
# An eigenvalue below -_PSD_RTOL * max|lam| is not rounding: the Gram is not a kernel matrix
# (gradient flow then diverges and t = inf disagrees with large finite t).
_PSD_RTOL = 1e-8


# ----------------------------------------------------------------------------- validation
def _check_gram(K, name="K_train"):
    K = check_matrix(K, name)
    if K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be square (n, n), got shape {K.shape}.")
    scale = np.max(np.abs(K))
    asym = np.max(np.abs(K - K.T))
    if asym > _SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} must be symmetric; max |K - K^T| = {asym:.3g} "
                         f"(max |K| = {scale:.3g}).")
    return 0.5 * (K + K.T)


def _check_psd(lam, name="K_train"):
    """Eigenvalues ``lam`` of a symmetric Gram, clipped at 0; ``ValueError`` if one is negative
    beyond rounding (``< -1e-8 max |lam|``)."""
    scale = float(np.max(np.abs(lam))) if lam.size else 0.0
    lo = float(np.min(lam)) if lam.size else 0.0
    if lo < -_PSD_RTOL * scale:
        raise ValueError(f"{name} must be positive semi-definite (a kernel Gram matrix); its "
                         f"smallest eigenvalue is {lo:.3g} (largest |eigenvalue| {scale:.3g}).")
    return np.clip(lam, 0.0, None)


def _check_eigenvalues(eigenvalues, name="eigenvalues"):
    arr = check_real_dtype(eigenvalues, name)
    return check_finite(arr.astype(np.float64), name)


def _pinv_cutoff(lam):
    """Eigenvalues at or below this are treated as 0 by the ridge-0 pseudo-inverse."""
    return lam.size * np.finfo(np.float64).eps * (float(lam.max()) if lam.size else 0.0)


def _check_cross(K_test_train, n, name="K_test_train"):
    if K_test_train is None:
        return None
    K = check_matrix(K_test_train, name)
    if K.shape[1] != n:
        raise ValueError(f"{name} must have shape (n_test, {n}) (one column per training "
                         f"point), got {K.shape}.")
    return K


def _check_f0(f0, shape, name):
    """An initial prediction: a scalar, an array of ``shape``, or ``(n,)`` for ``(n, k)``."""
    arr = check_real_dtype(0.0 if f0 is None else f0, name).astype(np.float64)
    if arr.ndim == 1 and len(shape) == 2 and arr.shape[0] == shape[0]:
        arr = arr[:, None]                          # one initial function for all k outputs
    elif arr.ndim != 0 and arr.shape != shape:
        raise ValueError(f"{name} must be a scalar or have shape {shape}, got {arr.shape}.")
    check_finite(arr, name)
    return np.array(np.broadcast_to(arr, shape), dtype=np.float64)


def _check_times(t, name="t", integer=False):
    """Return ``(times as a 1-D float array, is_scalar)``; non-negative, inf allowed for t."""
    arr = check_real_dtype(t, name)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array, got shape {arr.shape}.")
    scalar = arr.ndim == 0
    arr = np.atleast_1d(arr).astype(np.float64)
    if np.isnan(arr).any() or (arr < 0).any():
        raise ValueError(f"{name} must be >= 0 (NaN not allowed), got {t!r}.")
    if integer:
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ValueError(f"{name} must be a non-negative integer (number of steps), "
                             f"got {t!r}.")
    return arr, scalar


# ----------------------------------------------------------------------------- filters
def flow_filter(eigenvalues, t, lr=1.0, n=1):
    """Gradient-flow spectral filter of eq. (7.7): ``(1 - exp(-lr t lam / n)) / lam``.

    Parameters
    ----------
    eigenvalues : array_like
        Eigenvalues ``lam >= 0`` of the (unnormalized) training Gram ``K``.
    t : float
        Training time ``>= 0`` (finite).
    lr : float
        Learning rate ``eta > 0``.
    n : int
        Number of training points (the 1/n of the loss).

    Returns
    -------
    ndarray, same shape as ``eigenvalues``
        The filter; its value at ``lam = 0`` is the limit ``lr t / n``, and for every ``lam``
        it is ``<= min(lr t / n, 1 / lam)``. Computed as ``-expm1(-a) / lam``, ``a = lr t
        lam / n``, accurate to a few ulp for all ``a``.

    Notes
    -----
    Gradient flow at time ``t`` predicts ``f_0(x) + K(x, X) U diag(filter) U^T (y - f_0(X))``
    with ``K = U diag(lam) U^T``; kernel ridge regression uses :func:`ridge_filter` instead.

    Examples
    --------
    >>> import numpy as np
    >>> flow_filter(np.array([0.0, 1.0, 1e6]), t=2.0, lr=1.0, n=1)
    array([2.00000000e+00, 8.64664717e-01, 1.00000000e-06])
    """
    lam = np.clip(_check_eigenvalues(eigenvalues), 0.0, None)
    t = check_positive_real(t, "t", allow_zero=True, allow_inf=True)
    lr = check_positive_real(lr, "lr")
    n = check_positive_int(n, "n")
    c = lr * float(t) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        a = c * lam                                   # t = inf: 1 / lam, and inf at lam = 0
        out = np.where(a > 0, -np.expm1(-a) / np.where(lam > 0, lam, 1.0), c)
    return out


def gd_filter(eigenvalues, steps, lr=1.0, n=1):
    """Discrete gradient-descent filter: ``(1 - (1 - lr lam / n)^steps) / lam``.

    ``steps`` full-batch steps of size ``lr`` on the loss of this module give
    ``f_k(X) - y = (I - lr K / n)^k (f_0(X) - y)`` exactly for a fixed kernel, and out of sample
    ``f_k(x) = f_0(x) + K(x, X) U diag(gd_filter) U^T (y - f_0(X))``. At ``lam = 0`` the filter
    is ``lr steps / n``. It tends to :func:`flow_filter` with ``t = steps`` as ``lr -> 0``.

    Parameters
    ----------
    eigenvalues : array_like
    steps : int
    lr : float
    n : int

    Returns
    -------
    ndarray, same shape as ``eigenvalues``

    Examples
    --------
    >>> gd_filter([0.0, 1.0], steps=2, lr=0.5, n=1)    # (1 - 0.25) / 1 = 0.75
    array([1.  , 0.75])
    """
    lam = np.clip(_check_eigenvalues(eigenvalues), 0.0, None)
    k = float(check_positive_int(steps, "steps", minimum=0))
    lr = check_positive_real(lr, "lr")
    n = check_positive_int(n, "n")
    s = lr * lam / n
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # 1 - (1 - s)^k without cancellation for small s: -expm1(k log1p(-s)).
        small = -np.expm1(k * np.log1p(-np.minimum(s, 0.5)))
        large = 1.0 - np.power(1.0 - s, k)
        gain = np.where(s <= 0.5, small, large)
        out = np.where(s > 0, gain / np.where(lam > 0, lam, 1.0), lr * k / n)
    return out


def ridge_filter(eigenvalues, ridge):
    """Kernel-ridge spectral filter of eq. (7.7): ``1 / (lam + ridge) <= 1 / ridge``.

    Parameters
    ----------
    eigenvalues : array_like
        Eigenvalues ``lam >= 0`` of the training Gram.
    ridge : float
        ``z >= 0`` (``0`` gives ``1 / lam``, infinite at ``lam = 0``).

    Returns
    -------
    ndarray, same shape as ``eigenvalues``

    Examples
    --------
    >>> ridge_filter([0.0, 1.0], ridge=1.0)
    array([1. , 0.5])
    """
    lam = np.clip(_check_eigenvalues(eigenvalues), 0.0, None)
    ridge = check_positive_real(ridge, "ridge", allow_zero=True)
    with np.errstate(divide="ignore"):
        return 1.0 / (lam + ridge)


def equivalent_ridge(t, n, lr=1.0):
    """The ridge ``z = n / (lr t)`` whose filter matches gradient flow's at both ends.

    Both filters of eq. (7.7) behave as ``1 / lam`` for large ``lam``; at ``lam -> 0`` the flow
    filter tends to ``lr t / n`` and the ridge filter to ``1 / z``. Equating the two gives this
    ``z``. In between, with ``u = lam / z``, the ratio flow / ridge is
    ``(1 + u)(1 - e^{-u}) / u``, which lies in ``[1, 1.2985)`` (maximum at ``u ~ 1.793``):
    early stopping at time ``t`` shrinks every eigendirection like ridge regression with this
    ``z``, to within 30 %.

    Parameters
    ----------
    t : float
        Training time ``> 0``.
    n : int
        Number of training points.
    lr : float

    Returns
    -------
    float

    Examples
    --------
    >>> equivalent_ridge(t=100.0, n=50, lr=0.5)
    1.0
    """
    t = check_positive_real(t, "t")
    lr = check_positive_real(lr, "lr")
    n = check_positive_int(n, "n")
    return float(n) / (lr * t)


# ----------------------------------------------------------------------------- results
@dataclass
class Prediction:
    """Predictions of a kernel-regime model.

    Attributes
    ----------
    train : ndarray
        In-sample predictions: ``(n,)`` or ``(n, k)`` for one time (the shape of ``y``), or
        ``(T, n)`` / ``(T, n, k)`` for ``T`` times (first axis = time).
    test : ndarray or None
        Out-of-sample predictions, ``(m,)`` / ``(m, k)`` or ``(T, m)`` / ``(T, m, k)``;
        ``None`` if no ``K_test_train`` was given.
    t : float or ndarray or None
        The time(s) (or numbers of steps) of the predictions; ``None`` for kernel ridge.
    loss : float or ndarray
        Training loss ``sum ||f(x_i) - y_i||^2 / (2 n)`` at each time (scalar or ``(T,)``).
    """

    train: np.ndarray
    test: np.ndarray | None
    t: float | np.ndarray | None
    loss: float | np.ndarray


def _loss(train, y):
    axes = tuple(range(train.ndim - y.ndim, train.ndim))
    return 0.5 * np.sum((train - y) ** 2, axis=axes) / y.shape[0]


class GradientFlow:
    """Gradient flow / descent with a fixed kernel, from one cached eigendecomposition.

    Parameters
    ----------
    K_train : (n, n) array
        Symmetric PSD training Gram ``K(X, X)``; eigenvalues below 0 (rounding) are clamped to 0.
    K_test_train : (m, n) array, optional
        Cross Gram ``K(X_test, X)``; ``None`` for in-sample predictions only.
    y : (n,) or (n, k) array
        Training targets.
    f0_train : float or array broadcastable to ``y.shape``
        Initial in-sample predictions ``f(X; theta_0)``.
    f0_test : float or array broadcastable to ``(m,)`` / ``(m, k)``
        Initial out-of-sample predictions ``f(X_test; theta_0)``.
    lr : float
        Learning rate ``eta > 0``.

    Notes
    -----
    With ``K = U diag(lam) U^T``, ``c = U^T (y - f_0(X))`` and a spectral filter ``g``
    (:func:`flow_filter` or :func:`gd_filter`), the predictions are
    ``f(X) = f_0(X) + U (lam g c)`` and ``f(x) = f_0(x) + (K(x, X) U) (g c)``. For ``lam = 0``
    the filter is its limit ``lr t / n``: the exact solution of the ODE, which leaves the
    null-space component of the residual untouched in sample, and moves test predictions along
    ``K(x, X) U_0`` (zero whenever ``K_test_train`` comes from the same PSD kernel as
    ``K_train``). Cost: ``O(n^3)`` once, then ``O((n + m) n k)`` per time.
    ``t = inf`` is eq. (7.5), computed by a Cholesky solve (a least-squares solve if ``K`` is
    singular).

    Examples
    --------
    >>> import numpy as np
    >>> K = np.array([[2.0, 1.0], [1.0, 2.0]]); y = np.array([1.0, -1.0])
    >>> flow = GradientFlow(K, y=y, K_test_train=np.array([[1.0, 0.0]]))
    >>> p = flow.predict([0.0, np.inf])
    >>> np.round(p.test, 6)     # f0 = 0, then K(x, X) K^{-1} y = [1, 0] @ [1, -1]
    array([[0.],
           [1.]])
    """

    def __init__(self, K_train, K_test_train=None, y=None, f0_train=0.0, f0_test=0.0, lr=1.0):
        self.K_train = _check_gram(K_train, "K_train")
        n = self.K_train.shape[0]
        self.n = n
        self.K_test_train = _check_cross(K_test_train, n, "K_test_train")
        self.y = _check_targets(y, n, "y")
        self.f0_train = _check_f0(f0_train, self.y.shape, "f0_train")
        if self.K_test_train is not None:
            m = self.K_test_train.shape[0]
            self.f0_test = _check_f0(f0_test, (m,) + self.y.shape[1:], "f0_test")
        else:
            self.f0_test = None
        self.lr = check_positive_real(lr, "lr")
        lam, U = scipy.linalg.eigh(self.K_train)
        self.eigenvalues = _check_psd(lam, "K_train")
        self.eigenvectors = U
        self._r0 = self.y - self.f0_train                      # (n,) or (n, k)
        self._c = U.T @ self._r0                               # spectral residual
        self._B = None if self.K_test_train is None else self.K_test_train @ U
        self._inf = None

    # -------------------------------------------------------------- internals
    def _apply(self, g):
        """Predictions for one filter vector ``g`` (n,)."""
        gc = g[:, None] * self._c if self._c.ndim == 2 else g * self._c
        lgc = self.eigenvalues[:, None] * gc if gc.ndim == 2 else self.eigenvalues * gc
        train = self.f0_train + self.eigenvectors @ lgc
        test = None if self._B is None else self.f0_test + self._B @ gc
        return train, test

    def _limit(self):
        """Eq. (21): ``t = inf`` by a solve."""
        if self._inf is None:
            try:
                cf = scipy.linalg.cho_factor(self.K_train, lower=True)
                alpha = scipy.linalg.cho_solve(cf, self._r0)
            except np.linalg.LinAlgError:
                alpha = scipy.linalg.lstsq(self.K_train, self._r0)[0]
            train = self.f0_train + self.K_train @ alpha
            test = None if self.K_test_train is None else self.f0_test + self.K_test_train @ alpha
            self._inf = (train, test)
        return self._inf

    def _collect(self, times, scalar, filt):
        trains, tests = [], []
        for t in times:
            if np.isinf(t):
                tr, te = self._limit()
            else:
                tr, te = self._apply(filt(t))
            trains.append(tr)
            tests.append(te)
        train = np.stack(trains)
        test = None if self._B is None else np.stack(tests)
        loss = _loss(train, self.y)
        if scalar:
            return Prediction(train[0], None if test is None else test[0], float(times[0]),
                              float(loss[0]))
        return Prediction(train, test, times, loss)

    # -------------------------------------------------------------- public
    def predict(self, t):
        """Gradient-flow predictions at time(s) ``t`` (eq. 7.3, 7.4; eq. 7.5 at ``t = inf``).

        Parameters
        ----------
        t : float or (T,) array
            Times ``>= 0``; ``np.inf`` allowed.

        Returns
        -------
        Prediction
            ``train`` ``(n[, k])`` and ``test`` ``(m[, k])`` for scalar ``t``; a leading time
            axis ``(T, ...)`` for an array ``t``.
        """
        times, scalar = _check_times(t, "t")
        return self._collect(times, scalar, lambda s: flow_filter(self.eigenvalues, s, self.lr,
                                                                  self.n))

    def predict_steps(self, steps):
        """Exact predictions after ``steps`` full-batch gradient-descent steps of size ``lr``.

        ``f_k(X) - y = (I - lr K / n)^k (f_0(X) - y)``; compare :meth:`predict` at ``t = k``,
        which differs by ``O(lr)`` (and diverges from it if ``lr > max_learning_rate(K)``).

        Parameters
        ----------
        steps : int or (T,) array of int

        Returns
        -------
        Prediction
            Shapes as in :meth:`predict`.
        """
        times, scalar = _check_times(steps, "steps", integer=True)
        lam_max = float(self.eigenvalues.max())
        lr_max = np.inf if lam_max <= 0 else 2.0 * self.n / lam_max
        unstable = self.lr > lr_max
        if unstable:
            warnings.warn(f"lr={self.lr!r} exceeds max_learning_rate(K_train) = {lr_max:.6g}: "
                          "gradient descent diverges along the top eigendirection.",
                          RuntimeWarning, stacklevel=2)
        with np.errstate(over="ignore", invalid="ignore"):
            out = self._collect(times, scalar, lambda s: gd_filter(self.eigenvalues, int(s),
                                                                   self.lr, self.n))
        if unstable and not all(np.isfinite(a).all() for a in (out.train, out.test)
                                if a is not None):
            raise OverflowError(f"gradient descent overflowed: lr={self.lr!r} exceeds "
                                f"max_learning_rate(K_train) = {lr_max:.6g}; use a smaller lr "
                                "or fewer steps.")
        return out

    def train_loss(self, t):
        """Training loss ``||f_t(X) - y||^2 / (2 n)`` at time(s) ``t`` (non-increasing in t).

        ``= sum_i exp(-2 lr t lam_i / n) ||c_i||^2 / (2 n)`` with ``c = U^T (y - f_0(X))``.

        Parameters
        ----------
        t : float or (T,) array

        Returns
        -------
        float or (T,) ndarray
        """
        times, scalar = _check_times(t, "t")
        c2 = self._c ** 2 if self._c.ndim == 1 else np.sum(self._c ** 2, axis=1)
        out = np.empty(times.shape)
        for i, s in enumerate(times):
            if np.isinf(s):
                out[i] = _loss(self._limit()[0], self.y)
            else:
                decay = np.exp(-2.0 * self.lr * s * self.eigenvalues / self.n)
                out[i] = 0.5 * np.dot(decay, c2) / self.n
        return float(out[0]) if scalar else out


def gradient_flow(K_train, K_test_train, y, f0_train=0.0, f0_test=0.0, t=np.inf, lr=1.0):
    """Predictions of gradient flow on the MSE with a fixed kernel (docs/conventions.md, eq. 7.4).

    .. math::
        f_t(x) = f_0(x) + K(x, X) K^{-1} (I - e^{-\\eta t K / n}) (y - f_0(X))

    (eq. 7.3 in sample, eq. 7.5 at ``t = inf``), the solution of
    ``df/dt = -(lr / n) K (f - y)``, i.e. gradient flow on ``sum_i (f(x_i) - y_i)^2 / (2 n)``.

    Parameters
    ----------
    K_train : (n, n) array
        Symmetric PSD training Gram ``K(X, X)``.
    K_test_train : (m, n) array or None
        ``K(X_test, X)``; ``None`` for in-sample predictions only.
    y : (n,) or (n, k) array
        Targets; ``n`` is the 1/n of the loss.
    f0_train, f0_test : float or array
        Predictions at initialization, broadcastable to ``y.shape`` and ``(m,) + y.shape[1:]``.
    t : float or (T,) array
        Time(s) ``>= 0``; ``np.inf`` for kernel regression (eq. 7.5).
    lr : float
        Learning rate ``eta``.

    Returns
    -------
    Prediction
        ``.train`` ``(n[, k])``, ``.test`` ``(m[, k])`` (or ``None``), ``.loss``; with a leading
        time axis ``T`` if ``t`` is an array. All times share one eigendecomposition.

    See Also
    --------
    GradientFlow : the cached object, also for exact discrete gradient descent.

    References
    ----------
    docs/conventions.md, eq. (7.1)-(7.5); Jacot, Gabriel, Hongler (2018); Lee et al. (2019),
    eq. (9).

    Examples
    --------
    >>> import numpy as np
    >>> K = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> p = gradient_flow(K, K[:1], y=[1.0, 2.0], t=[0.0, 2.0], lr=1.0)
    >>> np.allclose(p.train[1], (1 - np.exp(-1.0)) * np.array([1.0, 2.0]))  # t lam / n = 1
    True
    """
    return GradientFlow(K_train, K_test_train, y, f0_train, f0_test, lr).predict(t)


def gradient_descent(K_train, K_test_train, y, f0_train=0.0, f0_test=0.0, steps=1, lr=1.0):
    """Exact predictions of ``steps`` discrete gradient-descent steps with a fixed kernel.

    ``f_{k+1}(x) = f_k(x) - (lr / n) K(x, X) (f_k(X) - y)``, i.e.
    ``f_k(X) - y = (I - lr K / n)^k (f_0(X) - y)``: the linearized network trained by
    full-batch gradient descent with step ``lr`` on ``sum_i (f(x_i) - y_i)^2 / (2 n)``.
    Arguments and return value as in :func:`gradient_flow` with ``steps`` for ``t``.

    Examples
    --------
    >>> import numpy as np
    >>> p = gradient_descent(np.eye(2), None, y=[1.0, 1.0], steps=3, lr=1.0)  # 1 - (1/2)^3
    >>> p.train
    array([0.875, 0.875])
    """
    return GradientFlow(K_train, K_test_train, y, f0_train, f0_test, lr).predict_steps(steps)


def training_loss(K_train, y, f0_train=0.0, t=np.inf, lr=1.0):
    """Training loss ``||f_t(X) - y||^2 / (2 n)`` along gradient flow, for time(s) ``t``.

    Parameters
    ----------
    K_train : (n, n) array
    y : (n,) or (n, k) array
    f0_train : float or array
    t : float or (T,) array
    lr : float

    Returns
    -------
    float or (T,) ndarray
        Non-increasing in ``t``.

    Examples
    --------
    >>> training_loss([[2.0]], [1.0], t=[0.0, 0.5])   # exp(-2 * 0.5 * 2) / 2
    array([0.5       , 0.06766764])
    """
    return GradientFlow(K_train, None, y, f0_train, 0.0, lr).train_loss(t)


# ----------------------------------------------------------------------------- ridge
def kernel_ridge(K_train, K_test_train, y, ridge, f0_train=0.0, f0_test=0.0):
    """Kernel ridge regression on the residual (docs/conventions.md, eq. 7.6).

    .. math:: \\hat f(x) = f_0(x) + K(x, X)(z I + K(X, X))^{-1}(y - f_0(X))

    With ``f0 = 0`` this is :class:`sklearn.kernel_ridge.KernelRidge` with ``alpha = ridge``
    and ``kernel="precomputed"``. ``ridge = 0`` is eq. (7.5).

    Parameters
    ----------
    K_train : (n, n) array
        Symmetric PSD training Gram.
    K_test_train : (m, n) array or None
    y : (n,) or (n, k) array
    ridge : float or (R,) array
        ``z >= 0``; an array gives one prediction per ridge (leading axis), from one
        eigendecomposition (useful for tuning).
    f0_train, f0_test : float or array
        Base predictions (e.g. a trained network, eq. 7.8); the kernel fits the residual.

    Returns
    -------
    Prediction
        ``.train`` ``(n[, k])``, ``.test`` ``(m[, k])`` or ``None`` (leading axis ``R`` for an
        array ``ridge``), ``.loss`` the training loss ``||f(X) - y||^2 / (2 n)``; ``.t`` is None.

    Notes
    -----
    A scalar ridge ``z > 0`` is solved by Cholesky; ``z = 0`` and arrays of ridges through
    ``K = U diag(lam) U^T`` and :func:`ridge_filter`. ``ridge = 0`` on a singular ``K`` gives the
    minimum-norm interpolant ``K^+ y`` (the pseudo-inverse: eigenvalues ``<= n eps max(lam)``
    count as 0), the ``t -> inf`` limit of gradient flow from ``f0``, never NaN. ``K_train``
    with an eigenvalue below ``-1e-8 max |lam|`` is not a kernel matrix: ``ValueError``.

    Examples
    --------
    >>> import numpy as np
    >>> p = kernel_ridge(np.eye(2), np.eye(2), y=[1.0, 2.0], ridge=1.0)
    >>> p.test
    array([0.5, 1. ])
    """
    K = _check_gram(K_train, "K_train")
    n = K.shape[0]
    Kx = _check_cross(K_test_train, n, "K_test_train")
    y = _check_targets(y, n, "y")
    f0_train = _check_f0(f0_train, y.shape, "f0_train")
    f0_test = None if Kx is None else _check_f0(f0_test, (Kx.shape[0],) + y.shape[1:],
                                                "f0_test")
    ridges, scalar = _check_times(ridge, "ridge")
    if not np.isfinite(ridges).all():
        raise ValueError(f"ridge must be finite, got {ridge!r}.")
    r0 = y - f0_train
    if scalar and ridges[0] > 0:
        A = K + ridges[0] * np.eye(n)
        try:
            alpha = scipy.linalg.cho_solve(scipy.linalg.cho_factor(A, lower=True), r0)
        except np.linalg.LinAlgError:
            alpha = None    # not positive definite: the eigendecomposition below checks why
        if alpha is not None:
            train = f0_train + K @ alpha
            test = None if Kx is None else f0_test + Kx @ alpha
            return Prediction(train, test, None, float(_loss(train, y)))
    lam, U = scipy.linalg.eigh(K)
    lam = _check_psd(lam, "K_train")
    cutoff = _pinv_cutoff(lam)
    c = U.T @ r0
    B = None if Kx is None else Kx @ U
    trains, tests = [], []
    for z in ridges:
        if z > 0:
            g = ridge_filter(lam, z)
        else:   # the minimum-norm interpolant: K^+ (pseudo-inverse), never 1/0
            g = np.where(lam > cutoff, 1.0 / np.where(lam > cutoff, lam, 1.0), 0.0)
        gc = g[:, None] * c if c.ndim == 2 else g * c
        lgc = lam[:, None] * gc if gc.ndim == 2 else lam * gc
        trains.append(f0_train + U @ lgc)
        tests.append(None if B is None else f0_test + B @ gc)
    train = np.stack(trains)
    test = None if B is None else np.stack(tests)
    if scalar:
        return Prediction(train[0], None if test is None else test[0], None,
                          float(_loss(train, y)[0]))
    return Prediction(train, test, None, _loss(train, y))


def ridge_loo_error(K_train, y, ridges, f0_train=0.0):
    """Leave-one-out mean squared error of kernel ridge regression (eq. 7.6), for each ridge.

    For the hat matrix ``H = K (K + z I)^{-1}`` the leave-one-out residual of point ``i`` is
    exactly ``(r_i - (H r)_i) / (1 - H_ii)`` with ``r = y - f_0(X)`` (no refits). With
    ``K = U diag(lam) U^T``: ``r - H r = U diag(z / (lam + z)) U^T r`` and
    ``1 - H_ii = sum_j U_ij^2 z / (lam_j + z)``, both from one eigendecomposition.

    Parameters
    ----------
    K_train : (n, n) array
        Symmetric PSD Gram.
    y : (n,) or (n, k) array
    ridges : float or (R,) array
        Ridges ``z > 0``.
    f0_train : float or array
        Base predictions; the kernel fits the residual ``y - f0_train`` (eq. 7.8).

    Returns
    -------
    (R,) ndarray
        ``mean_i ||e_i||^2`` (summed over outputs) for each ridge; use ``ridges[argmin]``.

    Examples
    --------
    >>> import numpy as np
    >>> K = np.eye(3); y = np.array([1.0, 2.0, 3.0])
    >>> ridge_loo_error(K, y, [1.0])      # K = I: H = I/2, e_i = (y_i / 2) / (1/2) = y_i
    array([4.66666667])
    """
    K = _check_gram(K_train, "K_train")
    n = K.shape[0]
    y = _check_targets(y, n, "y")
    r = y - _check_f0(f0_train, y.shape, "f0_train")
    z, _ = _check_times(ridges, "ridges")
    if not np.isfinite(z).all() or (z <= 0).any():
        raise ValueError(f"ridges must be finite and > 0, got {ridges!r}.")
    lam, U = scipy.linalg.eigh(K)
    lam = _check_psd(lam, "K_train")
    c = U.T @ r
    U2 = U ** 2
    out = np.empty(z.shape)
    for i, zi in enumerate(z):
        s = zi / (lam + zi)                                    # (n,) shrinkage kept
        resid = U @ (s[:, None] * c if c.ndim == 2 else s * c)
        denom = U2 @ s                                         # 1 - H_ii
        e = resid / (denom[:, None] if resid.ndim == 2 else denom)
        out[i] = np.mean(e ** 2) * (e.shape[1] if e.ndim == 2 else 1)
    return out


# ----------------------------------------------------------------------------- step size
def max_learning_rate(K_train):
    """Largest stable step of full-batch gradient descent with kernel ``K``: ``2 n / lam_max``.

    Derivation: for the 1/n-normalized loss ``sum_i (f(x_i) - y_i)^2 / (2 n)`` with a fixed
    kernel (the linearized network), one step maps the residual ``r = f(X) - y`` to
    ``(I - lr K / n) r``. In the eigenbasis of ``K`` each component is multiplied by
    ``1 - lr lam / n``; the iteration converges iff ``|1 - lr lam / n| < 1`` for every
    ``lam > 0``, i.e. ``0 < lr < 2 n / lam_max``. At ``lr = n / lam_max`` the top component
    is removed in one step; above ``2 n / lam_max`` it grows geometrically. (With the loss
    ``sum_i (f - y)^2 / n``, without the 1/2, the bound is ``n / lam_max``.) For a finite
    network the kernel moves, and large steps may still converge after a "catapult".

    Parameters
    ----------
    K_train : (n, n) array
        Symmetric PSD Gram.

    Returns
    -------
    float
        ``2 n / lam_max`` (``inf`` if ``K = 0``).

    Examples
    --------
    >>> max_learning_rate([[2.0, 0.0], [0.0, 1.0]])
    2.0
    """
    K = _check_gram(K_train, "K_train")
    n = K.shape[0]
    lam_max = float(scipy.linalg.eigh(K, eigvals_only=True, subset_by_index=[n - 1, n - 1])[0])
    if lam_max <= 0:
        return float("inf")
    return 2.0 * n / lam_max


# ----------------------------------------------------------------------------- deprecated names
# The bounds of Arora et al. moved to infntk.bounds (which sits above FCNet; this module stays
# NumPy/SciPy only). The former names load it lazily, warn, and return what they used to.
_MOVED = {"arora_bound": "_legacy_dynamics_arora_bound",
          "arora_gram": "_legacy_dynamics_arora_gram"}


def __getattr__(name):
    if name in _MOVED:
        import importlib
        return getattr(importlib.import_module(".bounds", __package__), _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
