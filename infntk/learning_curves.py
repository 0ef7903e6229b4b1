r"""Learning curves of kernel ridge regression predicted from the kernel's spectrum.

The eigenlearning (omniscient risk) estimate of Bordelon, Canatar and Pehlevan (2020),
Canatar, Bordelon and Pehlevan (2021) and Simon et al. (2023): for a kernel with Mercer
eigenvalues :math:`\lambda_i` (with respect to the data distribution) and a target
:math:`f = \sum_i v_i \phi_i + \text{noise}`, kernel ridge regression

.. math:: \hat f(x) = K(x, X)\,(K(X, X) + \delta I)^{-1} y

on ``n`` iid samples has test MSE close to

.. math:: \sum_i \frac{\lambda_i}{\lambda_i + \kappa} + \frac{\delta}{\kappa} = n, \qquad
          \mathcal L_i = \frac{\lambda_i}{\lambda_i + \kappa}, \qquad
          \mathcal E_0 = \frac{n}{n - \sum_i \mathcal L_i^2}, \qquad
          \text{MSE} = \mathcal E_0\Big(\sum_i (1 - \mathcal L_i)^2 v_i^2 + \sigma^2\Big).

``delta`` (``ridge``) is added to the *unnormalized* Gram matrix; ``sigma^2`` (``noise``) is the
variance of iid label noise, present on the training labels **and on the test labels**: this
MSE includes the test labels' own noise, so the error against the noiseless target is
``MSE - sigma^2 = E0 sum (1 - L_i)^2 v_i^2 + (E0 - 1) sigma^2`` (Canatar et al. 2021, eq. 4).

Where the spectrum comes from: :func:`sphere_modes` (Funk-Hecke, uniform inputs on the sphere of
radius ``sqrt(d)``, via :mod:`infntk.spectrum`) or :func:`empirical_modes` (kernel PCA of a
large sample).

References
----------
.. [1] Bordelon, Canatar, Pehlevan, "Spectrum dependent learning curves in kernel regression
   and wide neural networks", ICML 2020.
.. [2] Canatar, Bordelon, Pehlevan, "Spectral bias and task-model alignment explain
   generalization in kernel regression and infinitely wide neural networks", Nature
   Communications 12, 2914 (2021).
.. [3] Simon, Dickens, Karkada, DeWeese, "The eigenlearning framework: a conservation law
   perspective on kernel ridge regression and wide neural networks", TMLR 2023.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from ._validation import (check_finite, check_matrix, check_positive_int, check_positive_real,
                          check_real_dtype)
from .spectrum import _kernel_callable, sphere_eigenvalues

__all__ = ["eigenlearning", "effective_regularization", "EigenlearningResult", "sphere_modes",
           "SphereModes", "empirical_modes"]


def _check_vector(v, name):
    arr = check_real_dtype(v, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty.")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    return check_finite(arr, name)


def _check_spectrum(eigenvalues, coefficients, multiplicities):
    lam = _check_vector(eigenvalues, "eigenvalues")
    if (lam < 0).any():
        raise ValueError(f"eigenvalues must be >= 0, got a minimum of {lam.min()!r}.")
    v = _check_vector(coefficients, "coefficients")
    if v.shape != lam.shape:
        raise ValueError(f"coefficients must have the shape of eigenvalues, got "
                         f"{v.shape} and {lam.shape}.")
    if multiplicities is None:
        m = np.ones_like(lam)
    else:
        m = _check_vector(multiplicities, "multiplicities")
        if m.shape != lam.shape:
            raise ValueError(f"multiplicities must have the shape of eigenvalues, got "
                             f"{m.shape} and {lam.shape}.")
        if (m < 0).any():
            raise ValueError("multiplicities must be >= 0.")
    return lam, v, m


def _check_n(n):
    arr = check_real_dtype(n, "n")
    scalar = arr.ndim == 0
    arr = np.atleast_1d(arr).astype(np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"n must be a number or a non-empty 1-D array, got shape {arr.shape}.")
    check_finite(arr, "n")
    if (arr <= 0).any():
        raise ValueError(f"n must be > 0 (a number of samples), got a minimum of {arr.min()!r}.")
    return arr, scalar


def _solve_kappa(lam, m, n, ridge):
    r"""The root ``kappa > 0`` of ``sum m_i lam_i/(lam_i+kappa) + ridge/kappa = n``, or 0.

    The left side decreases strictly from ``M + ridge/0`` (``M = sum of m_i over lam_i > 0``)
    to 0, so the root exists and is unique whenever ``ridge > 0`` or ``n < M``; otherwise
    (ridgeless, ``n >= M``) the limit ``kappa = 0`` is returned. Brackets are explicit:
    ``g(kappa) <= (trace + ridge)/kappa`` gives the upper end, ``g >= ridge/kappa`` (ridge > 0)
    or ``g >= M/(1 + kappa/lam_min)`` (ridge = 0) the lower end. Brent's method in
    ``log kappa`` to full double precision.
    """
    pos = lam > 0
    lam_p, m_p = lam[pos], m[pos]
    M = float(m_p.sum())
    trace = float(np.dot(m_p, lam_p))
    if ridge / n < np.finfo(float).tiny:
        # a ridge so small that ridge / n underflows acts as none (kappa would be subnormal)
        ridge = 0.0
    if ridge == 0 and n >= M:
        return 0.0
    hi = (trace + ridge) / n

    def h(s):
        kappa = math.exp(s)
        g = float(np.dot(m_p, lam_p / (lam_p + kappa))) + ridge / kappa
        return math.log(g) - math.log(n)

    if ridge > 0:
        lo = ridge / n
    else:
        lo = 0.5 * float(lam_p.min()) * (M / n - 1.0)
    lo = min(lo, hi)
    slo, shi = math.log(lo), math.log(hi)
    # the bounds hold analytically; widen by a few ulps against rounding of the sums
    while h(slo) < 0:
        slo -= 1.0
    while h(shi) > 0:
        shi += 1.0
    if slo == shi:
        return math.exp(slo)
    s = optimize.brentq(h, slo, shi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    return math.exp(s)


@dataclass
class EigenlearningResult:
    """Everything :func:`effective_regularization` computes, one entry per ``n``.

    Attributes
    ----------
    n, kappa, e0, mse : ndarray (len(n),)
        Sample sizes, effective regularization, overfitting coefficient ``E0`` and predicted
        test MSE.
    learnability : ndarray (len(n), n_modes)
        :math:`\\mathcal L_i = \\lambda_i/(\\lambda_i + \\kappa)` of each mode.
    """

    n: np.ndarray
    kappa: np.ndarray
    e0: np.ndarray
    mse: np.ndarray
    learnability: np.ndarray


def effective_regularization(eigenvalues, coefficients, n, ridge=0.0, noise=0.0,
                             multiplicities=None):
    r"""Eigenlearning quantities ``kappa``, ``L_i``, ``E0`` and the MSE for each ``n``.

    Same arguments as :func:`eigenlearning`, which returns only ``.mse`` of this.

    Returns
    -------
    EigenlearningResult
    """
    lam, v, m = _check_spectrum(eigenvalues, coefficients, multiplicities)
    ns, _ = _check_n(n)
    ridge = check_positive_real(ridge, "ridge", allow_zero=True)
    noise = check_positive_real(noise, "noise", allow_zero=True)
    pos = lam > 0
    M = float(m[pos].sum())
    power = m * v ** 2            # with multiplicities: v_i^2 per eigenfunction, m_i of them
    kappa = np.empty(ns.size)
    e0 = np.empty(ns.size)
    mse = np.empty(ns.size)
    learn = np.empty((ns.size, lam.size))
    for j, nj in enumerate(ns):
        k = _solve_kappa(lam, m, nj, ridge)
        kappa[j] = k
        if k > 0:
            L = lam / (lam + k)
            one_minus = k / (lam + k)            # no cancellation for lam << kappa
            # n - sum m L^2 = sum m L (1 - L) + ridge/kappa: no cancellation near the peak
            denom = float(np.dot(m, L * one_minus)) + ridge / k
            e0[j] = nj / denom
        else:                                    # ridgeless, n >= M: every mode fitted
            L = pos.astype(np.float64)
            one_minus = 1.0 - L
            e0[j] = nj / (nj - M) if nj > M else np.inf
        learn[j] = L
        resid = float(np.dot(power, one_minus ** 2)) + noise
        if resid == 0.0:
            mse[j] = 0.0                         # exact recovery, even at the peak n = M
        else:
            mse[j] = e0[j] * resid
    return EigenlearningResult(n=ns, kappa=kappa, e0=e0, mse=mse, learnability=learn)


def eigenlearning(eigenvalues, coefficients, n, ridge=0.0, noise=0.0, multiplicities=None):
    r"""Predicted test MSE of kernel ridge regression with ``n`` samples (eigenlearning).

    .. math:: \sum_i \frac{\lambda_i}{\lambda_i + \kappa} + \frac{\delta}{\kappa} = n,\quad
              \mathcal L_i = \frac{\lambda_i}{\lambda_i + \kappa},\quad
              \text{MSE} = \frac{n}{n - \sum_i \mathcal L_i^2}
              \Big(\sum_i (1 - \mathcal L_i)^2 v_i^2 + \sigma^2\Big)

    Parameters
    ----------
    eigenvalues : array_like (M,)
        Mercer eigenvalues :math:`\lambda_i \ge 0` of the kernel with respect to the data
        distribution (e.g. ``eig(K)/m`` of a Gram matrix on ``m`` samples).
    coefficients : array_like (M,)
        Target coefficients :math:`v_i = E[f \phi_i]` in the orthonormal eigenbasis. With
        ``multiplicities``, ``v_i^2`` is the target's power *per eigenfunction* of group ``i``
        (the group's total power divided by ``m_i``); only ``v_i^2`` matters.
    n : float or array_like (k,)
        Number(s) of training samples, > 0 (non-integers allowed: the formula is smooth).
    ridge : float >= 0
        :math:`\delta`, added to the unnormalized Gram matrix: ``(K + ridge I)^{-1}``.
    noise : float >= 0
        :math:`\sigma^2`, variance of iid label noise, on training and test labels alike:
        subtract ``noise`` from the result for the error against the noiseless target.
    multiplicities : array_like (M,), optional
        :math:`m_i`: eigenvalue ``i`` counted ``m_i`` times (degenerate eigenspaces, e.g. the
        ``N(d, k)`` spherical harmonics of degree ``k``); sums become ``sum_i m_i (...)``.

    Returns
    -------
    float or ndarray (k,)
        The predicted MSE, one per entry of ``n`` (a float for a scalar ``n``).

    Notes
    -----
    *Ridgeless case.* With ``ridge = 0`` the equation for ``kappa`` has a positive root only
    for ``n < M``, ``M`` the number of nonzero eigenvalues (with multiplicity). For
    ``n >= M`` the kernel interpolates a finite-dimensional space that the samples span:
    ``kappa = 0``, every mode with :math:`\lambda_i > 0` is learned exactly
    (:math:`\mathcal L_i = 1`), modes with :math:`\lambda_i = 0` are never learned, and
    ``MSE = n/(n - M) (sum_{lambda_i = 0} v_i^2 + noise)``: infinite at the interpolation
    threshold ``n = M`` unless that residual is zero (then 0: exact recovery), decaying as
    ``1/(n - M)`` after it (the double-descent peak).

    *Numerics.* ``kappa`` by Brent's method in ``log kappa`` inside analytic brackets (see
    ``_solve_kappa``), to ~1 ulp; ``n - sum L_i^2`` is evaluated as
    ``sum L_i (1 - L_i) + ridge/kappa`` (equal by the equation for ``kappa``), which keeps full
    relative accuracy next to the peak where the direct difference cancels.

    *Accuracy as a prediction.* The estimate is exact in the limit of many samples and modes
    (deterministic equivalent); for a few tens of samples it is typically within a few
    percent of the trial-averaged MSE [3]_ (``tests/test_learning_curves.py`` measures it
    against kernel regression on the sphere).

    Cost: ``O(M)`` per evaluation of the equation, ``~50`` evaluations per ``n``.

    References
    ----------
    .. [1] Bordelon, Canatar, Pehlevan, ICML 2020.
    .. [2] Canatar, Bordelon, Pehlevan, Nat. Commun. 2021.
    .. [3] Simon, Dickens, Karkada, DeWeese, TMLR 2023.

    Examples
    --------
    Flat spectrum of ``M`` modes, ridgeless: ``MSE = (1 - n/M) |v|^2 + noise M/(M - n)``.

    >>> import numpy as np
    >>> lam, v = np.full(10, 0.1), np.full(10, 1 / np.sqrt(10))
    >>> mse = eigenlearning(lam, v, [2, 5], noise=0.1)
    >>> bool(np.allclose(mse, [0.8 + 0.1 * 10 / 8, 0.5 + 0.1 * 2]))
    True
    >>> float(eigenlearning(lam, v, 12))      # n > M: interpolates the 10 modes exactly
    0.0
    """
    res = effective_regularization(eigenvalues, coefficients, n, ridge=ridge, noise=noise,
                                   multiplicities=multiplicities)
    if np.ndim(n) == 0:
        return float(res.mse[0])
    return res.mse


# ---------------------------------------------------------------------------- spectra
@dataclass
class SphereModes:
    r"""Spectrum of a network kernel and a zonal target on the sphere (:func:`sphere_modes`).

    Attributes
    ----------
    eigenvalues, multiplicities, power : ndarray (kmax+1,)
        Per degree ``k``: Mercer eigenvalue :math:`\mu_k`, multiplicity :math:`N(d, k)`, and
        the target's total power :math:`\|P_k f\|^2` in degree ``k``.
    coefficients : ndarray (kmax+1,)
        ``sqrt(power / multiplicities)``: the per-eigenfunction coefficient for
        :func:`eigenlearning` with ``multiplicities``.
    tail_trace : float
        :math:`\sum_{k > kmax} N(d,k)\mu_k = \kappa(1) - \sum_{k \le kmax} N(d,k)\mu_k`.
    tail_power : float
        :math:`E[f^2] - \sum_{k \le kmax}\|P_k f\|^2`.
    """

    eigenvalues: np.ndarray
    multiplicities: np.ndarray
    power: np.ndarray
    coefficients: np.ndarray
    tail_trace: float
    tail_power: float
    d: int

    def learning_curve(self, n, ridge=0.0, noise=0.0):
        r"""Eigenlearning MSE with the degrees above ``kmax`` folded in.

        Modes with :math:`\mu_k \ll \kappa` contribute :math:`\approx \mu_k/\kappa` each to
        the equation for ``kappa``, i.e. an extra ridge ``tail_trace``, and are not learned,
        i.e. their power ``tail_power`` adds to the noise. Accurate while
        :math:`\mu_{kmax+1} \ll \kappa(n)`; raise ``kmax`` otherwise.
        """
        ridge = check_positive_real(ridge, "ridge", allow_zero=True)
        noise = check_positive_real(noise, "noise", allow_zero=True)
        return eigenlearning(self.eigenvalues, self.coefficients, n,
                             ridge=ridge + max(self.tail_trace, 0.0),
                             noise=noise + max(self.tail_power, 0.0),
                             multiplicities=self.multiplicities)


def sphere_modes(net, target, d, kmax, kernel="ntk"):
    r"""Eigenvalues and target power per degree for inputs uniform on the sphere.

    Inputs uniform on :math:`S^{d-1}` of radius :math:`\sqrt d`; ``net`` a dot-product kernel
    there (an :class:`infntk.FCNet` in the NTK parameterization, or a callable of
    ``t = <x, y>/d``, as accepted by :func:`infntk.spectrum.sphere_eigenvalues`). The target
    is zonal: :math:`f(x) = g(s)`, :math:`s = \langle x, e\rangle/\sqrt d \in [-1, 1]` for a
    fixed unit vector ``e``. By Funk-Hecke its degree-``k`` power is

    .. math:: \|P_k f\|^2 = N(d, k)\, c_k^2, \qquad c_k = E[g(s) P^{(d)}_k(s)],

    computed by the same quadrature as the kernel's eigenvalues.

    Parameters
    ----------
    net : FCNet or callable
    target : callable
        ``g``, acting elementwise on an array of ``s`` in [-1, 1].
    d : int >= 2
    kmax : int >= 0
        Highest degree kept; the rest is summarized by ``tail_trace`` and ``tail_power``.
    kernel : {"ntk", "nngp"}

    Returns
    -------
    SphereModes

    Notes
    -----
    Cost: two 1-D quadratures of ``~2 kmax + 4 sqrt(d) + 200`` nodes each (kernel and target)
    plus one kernel evaluation at ``t = 1`` and ``E[g^2]`` on the same rule.

    Examples
    --------
    >>> import infntk
    >>> m = sphere_modes(infntk.FCNet("relu", depth=1), lambda s: s, d=3, kmax=4)
    >>> [round(float(p), 12) for p in m.power]          # g(s) = s: degree 1 only, E[s^2] = 1/d
    [0.0, 0.333333333333, 0.0, 0.0, 0.0]
    """
    d = check_positive_int(d, "d", minimum=2)
    kmax = check_positive_int(kmax, "kmax", minimum=0)
    if not callable(target):
        raise TypeError(f"target must be a callable g(s), s in [-1, 1], got "
                        f"{type(target).__name__}.")
    spec = sphere_eigenvalues(net, d, kmax, kernel=kernel)
    tgt = sphere_eigenvalues(target, d, kmax)
    second = sphere_eigenvalues(lambda s: np.asarray(target(s), dtype=np.float64) ** 2, d, 0)
    kappa1 = float(np.asarray(_kernel_callable(net, kernel)(np.array([1.0])))[0])
    N = spec.multiplicity
    if not np.isfinite(N).all():
        raise ValueError(f"multiplicity N(d, k) overflows float64 for d={d} and some k <= "
                         f"{kmax}; lower kmax.")
    power = N * tgt.mu ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        coef = np.where(N > 0, np.sqrt(power / N), 0.0)
    return SphereModes(eigenvalues=np.maximum(spec.mu, 0.0), multiplicities=N, power=power,
                       coefficients=coef,
                       tail_trace=kappa1 - float(np.dot(N, spec.mu)),
                       tail_power=float(second.mu[0]) - float(power.sum()), d=d)


def empirical_modes(gram, y):
    r"""Eigenvalues and target coefficients from kernel PCA of a large sample.

    For ``m`` samples with Gram matrix ``K`` and target values ``y``,
    ``K/m = U diag(lambda) U^T`` estimates the Mercer eigenvalues and
    ``v = sqrt(m)^{-1} U^T y`` the target's coefficients (the empirical measure plays the
    data distribution; :math:`\sum v_i^2 = \text{mean}(y^2)`).

    Parameters
    ----------
    gram : array_like (m, m)
        Symmetric PSD Gram matrix of the kernel on the sample.
    y : array_like (m,)
        Target values on the same sample (noiseless).

    Returns
    -------
    (eigenvalues, coefficients) : ndarrays (m,), eigenvalues descending, clipped at 0.

    Notes
    -----
    Cost: one dense symmetric eigendecomposition, ``O(m^3)``.

    Examples
    --------
    >>> import numpy as np
    >>> lam, v = empirical_modes(np.eye(4), np.ones(4))
    >>> lam.tolist(), round(float(np.sum(v ** 2)), 12)
    ([0.25, 0.25, 0.25, 0.25], 1.0)
    """
    K = check_matrix(gram, "gram")
    if K.shape[0] != K.shape[1]:
        raise ValueError(f"gram must be square, got shape {K.shape}.")
    y = _check_vector(y, "y")
    if y.size != K.shape[0]:
        raise ValueError(f"y must have one value per row of gram, got {y.size} and "
                         f"{K.shape[0]}.")
    m = K.shape[0]
    w, U = np.linalg.eigh(0.5 * (K + K.T))
    order = np.argsort(w)[::-1]
    lam = np.maximum(w[order], 0.0) / m
    v = U[:, order].T @ y / math.sqrt(m)
    return lam, v
