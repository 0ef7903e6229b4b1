r"""Mercer spectra of dot-product kernels on the sphere (Funk-Hecke).

For inputs uniform on the sphere :math:`S^{d-1}` of radius :math:`\sqrt d`, a kernel that
depends only on :math:`t = \langle x, y\rangle / d` has the spherical harmonics of degree ``k``
as eigenfunctions (multiplicity :math:`N(d,k)`), with eigenvalue (w.r.t. the uniform
*probability* measure)

.. math:: \mu_k = \frac{\Gamma(d/2)}{\sqrt\pi\,\Gamma((d-1)/2)}
          \int_{-1}^1 \kappa(t)\, P_k^{(d)}(t)\, (1-t^2)^{(d-3)/2}\, dt,

:math:`P_k^{(d)} = C_k^{(d-2)/2}/C_k^{(d-2)/2}(1)` the Gegenbauer polynomial normalized to
:math:`P_k(1) = 1` (Legendre polynomial of dimension ``d``), evaluated by the bounded
recursion :math:`(k+d-2)P_{k+1} = (2k+d-2)tP_k - kP_{k-1}` (``|P_k| <= 1``: no overflow for any
``d``, ``k``). Multiplicities :math:`N(d,k) = \frac{2k+d-2}{k}\binom{k+d-3}{k-1}` are computed
in log scale (``log_multiplicity``); ``multiplicity`` is ``inf`` where it overflows float64.

Quadrature (``method``)
----------------------
* ``"angle"`` (default): :math:`t = \cos\theta`, Gauss-Legendre in :math:`\theta \in [0,\pi]`
  with the weight :math:`\sin^{d-2}\theta` formed in log scale. The arc-cosine kernels of relu
  networks are analytic in :math:`\theta` but have :math:`\sqrt{1 \mp t}` terms in ``t``, so
  this converges exponentially where the next one converges only algebraically.
* ``"jacobi"``: Gauss-Jacobi in ``t`` with weight :math:`(1-t^2)^{(d-3)/2}`
  (``scipy.special.roots_jacobi``): exact for polynomial kernels, exponential for kernels
  analytic on [-1, 1] (e.g. exp, erf and tanh networks), algebraic (``~n^{-d}``) for relu-type
  kernels.

Both use ``n = 2 kmax + 4 ceil(sqrt(d)) + 200`` nodes by default, return the values of the
``3n/2``-node rule and report ``error = |mu(n) - mu(3n/2)| + (3n/2) eps E[|kappa(t)|]`` (the
second term: the rounding of ``n`` weights, measured ``~0.3-0.7 n eps`` for Gauss-Legendre
rules of ``n = 400..1000`` nodes). Accuracy is absolute, ``~1e-14 .. 1e-13 max|kappa|`` for
``kmax`` up to a few hundred: eigenvalues below that (e.g. high degrees when ``d`` is large, where :math:`\mu_k` falls like
:math:`d^{-k}`) are at rounding level and flagged by ``error >= mu``.

References
----------
.. [1] Bietti, Mairal, "On the inductive bias of neural tangent kernels", NeurIPS 2019.
.. [2] Atkinson, Han, *Spherical Harmonics and Approximations on the Unit Sphere*, Springer
   LNM 2044 (2012), ch. 2 (Funk-Hecke formula, Legendre polynomials of dimension d).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg, special

from ._validation import check_finite, check_positive_int, check_real_dtype

__all__ = ["sphere_eigenvalues", "SphereSpectrum", "multiplicity", "log_multiplicity",
           "legendre_d"]

_EPS = np.finfo(float).eps


@dataclass
class SphereSpectrum:
    """Result of :func:`sphere_eigenvalues`; arrays of length ``kmax + 1`` indexed by degree."""

    mu: np.ndarray
    multiplicity: np.ndarray
    log_multiplicity: np.ndarray
    error: np.ndarray
    d: int
    kernel: str


def _multiplicity_int(d, k):
    """N(d, k) as an exact Python integer."""
    if k == 0:
        return 1
    return (2 * k + d - 2) * math.comb(k + d - 3, k - 1) // k


def log_multiplicity(d, kmax):
    """``log N(d, k)`` for ``k = 0..kmax``: the dimension of degree-k harmonics on S^{d-1}."""
    d = check_positive_int(d, "d", minimum=2)
    kmax = check_positive_int(kmax, "kmax", minimum=0)
    return np.array([math.log(_multiplicity_int(d, k)) for k in range(kmax + 1)])


def multiplicity(d, kmax):
    """``N(d, k) = (2k+d-2)/k binom(k+d-3, k-1)`` (``N(d, 0) = 1``): exact integers as float64
    (correctly rounded), ``inf`` where they overflow."""
    d = check_positive_int(d, "d", minimum=2)
    kmax = check_positive_int(kmax, "kmax", minimum=0)
    out = np.empty(kmax + 1)
    for k in range(kmax + 1):
        try:
            out[k] = float(_multiplicity_int(d, k))
        except OverflowError:
            out[k] = np.inf
    return out


def legendre_d(t, d, kmax):
    """Normalized Gegenbauer polynomials ``P_k^{(d)}(t)``, ``k = 0..kmax``: shape (len(t), kmax+1).

    ``P_0 = 1``, ``P_1 = t``, ``(k+d-2) P_{k+1} = (2k+d-2) t P_k - k P_{k-1}``; ``P_k(1) = 1``
    and ``|P_k| <= 1`` on [-1, 1]. ``d = 2`` gives Chebyshev, ``d = 3`` Legendre polynomials.
    """
    t = check_finite(np.asarray(check_real_dtype(t, "t"), dtype=np.float64).ravel(), "t")
    d = check_positive_int(d, "d", minimum=2)
    kmax = check_positive_int(kmax, "kmax", minimum=0)
    P = np.empty((t.size, kmax + 1))
    P[:, 0] = 1.0
    if kmax >= 1:
        P[:, 1] = t
    for k in range(1, kmax):
        P[:, k + 1] = ((2 * k + d - 2) * t * P[:, k] - k * P[:, k - 1]) / (k + d - 2)
    return P


@functools.lru_cache(maxsize=32)
def _angle_rule(n, d):
    x, w = special.roots_legendre(n)
    theta = 0.5 * math.pi * (x + 1.0)
    logc = math.lgamma(d / 2) - 0.5 * math.log(math.pi) - math.lgamma((d - 1) / 2)
    with np.errstate(divide="ignore"):
        logw = np.log(0.5 * math.pi * w) + (d - 2) * np.log(np.sin(theta)) + logc
    return np.cos(theta), np.exp(logw)


@functools.lru_cache(maxsize=32)
def _jacobi_rule(n, d):
    """Gauss-Jacobi rule for the weight ``(1-t^2)^((d-3)/2)``, normalized to a probability.

    ``scipy.special.roots_jacobi`` where it returns finite values (it fails for
    ``(d-3)/2`` in the hundreds), otherwise Golub-Welsch on the Gegenbauer recurrence
    (orthonormal three-term coefficients ``b_k^2 = k (k + 2 lam - 1) / (4 (k+lam)(k+lam-1))``,
    ``lam = (d-2)/2``).
    """
    a = 0.5 * (d - 3)
    with np.errstate(all="ignore"):
        try:
            t, w = special.roots_jacobi(n, a, a)
        except (ValueError, FloatingPointError):
            t = w = np.array([np.nan])
    if np.isfinite(t).all() and np.isfinite(w).all() and w.sum() > 0:
        return t, w / w.sum()
    lam = 0.5 * (d - 2)
    k = np.arange(1, n, dtype=np.float64)
    off = np.sqrt(k * (k + 2 * lam - 1) / (4 * (k + lam) * (k + lam - 1)))
    t, V = linalg.eigh_tridiagonal(np.zeros(n), off)
    w = V[0] ** 2
    return t, w / w.sum()


def _kernel_callable(kernel_fn_or_net, kernel):
    if kernel not in ("ntk", "nngp"):
        raise ValueError(f"kernel must be 'ntk' or 'nngp', got {kernel!r}.")
    obj = kernel_fn_or_net
    if hasattr(obj, "dot_product_fn"):
        def f(t):
            k = obj.dot_product_fn(t)
            return np.asarray(getattr(k, kernel), dtype=np.float64)
        return f
    if callable(obj):
        def f(t):
            v = obj(t)
            if isinstance(v, tuple) and len(v) == 2:
                v = v[0] if kernel == "nngp" else v[1]
            elif hasattr(v, kernel):
                v = getattr(v, kernel)
            return np.asarray(v, dtype=np.float64)
        return f
    raise TypeError("kernel_fn_or_net must be an FCNet-like object with dot_product_fn(t) or a "
                    f"callable t -> kernel values, got {type(obj).__name__}.")


def _mu(f, d, kmax, n, method):
    t, w = (_angle_rule if method == "angle" else _jacobi_rule)(n, d)
    vals = f(t)
    if vals.shape != t.shape:
        raise ValueError(f"the kernel function returned shape {vals.shape} for t of shape "
                         f"{t.shape}; it must act elementwise.")
    check_finite(vals, "the kernel function's values on [-1, 1]")
    P = legendre_d(t, d, kmax)
    return (w * vals) @ P, float(np.sum(w * np.abs(vals)))


def sphere_eigenvalues(kernel_fn_or_net, d, kmax, kernel="ntk", method="angle", n=None):
    r"""Mercer eigenvalues :math:`\mu_0..\mu_{kmax}` of a dot-product kernel on the sphere.

    Parameters
    ----------
    kernel_fn_or_net : FCNet-like or callable
        Either an object with ``dot_product_fn(t)`` returning ``.nngp`` and ``.ntk`` arrays
        (``infntk.FCNet``), or a callable ``t -> kappa(t)`` acting elementwise on an array of
        ``t = <x, y>/d`` in [-1, 1] (it may also return an ``(nngp, ntk)`` pair).
    d : int >= 2
        Input dimension; the sphere is :math:`S^{d-1}` of radius :math:`\sqrt d`.
    kmax : int >= 0
        Highest degree.
    kernel : {"ntk", "nngp"}
        Which kernel of a network to use.
    method : {"angle", "jacobi"}
        Quadrature, see the module notes.
    n : int, optional
        Number of nodes (default ``2 kmax + 4 ceil(sqrt(d)) + 200``).

    Returns
    -------
    SphereSpectrum
        ``mu`` (kmax+1,), ``multiplicity`` N(d, k) (float64, inf on overflow),
        ``log_multiplicity``, ``error`` (absolute error estimate of each ``mu_k``).

    Notes
    -----
    Identities: :math:`\sum_k N(d,k)\mu_k = \kappa(1)` (the diagonal) and the kernel's Gram
    matrix on ``m`` uniform points, divided by ``m``, has eigenvalues close to :math:`\mu_k`
    (each ``N(d, k)`` times).

    Examples
    --------
    >>> import numpy as np
    >>> s = sphere_eigenvalues(lambda t: t, d=3, kmax=2)     # <x,y>/d: only degree 1
    >>> bool(np.allclose(s.mu, [0, 1 / 3, 0], atol=1e-15)), s.multiplicity.tolist()
    (True, [1.0, 3.0, 5.0])
    """
    d = check_positive_int(d, "d", minimum=2)
    kmax = check_positive_int(kmax, "kmax", minimum=0)
    if method not in ("angle", "jacobi"):
        raise ValueError(f"method must be 'angle' or 'jacobi', got {method!r}.")
    f = _kernel_callable(kernel_fn_or_net, kernel)
    if n is None:
        n = 2 * kmax + 4 * math.ceil(math.sqrt(d)) + 200
    n = check_positive_int(n, "n", minimum=kmax + 1)
    mu, scale = _mu(f, d, kmax, n, method)
    n2 = (3 * n) // 2
    mu2, _ = _mu(f, d, kmax, n2, method)
    err = np.abs(mu2 - mu) + n2 * _EPS * scale
    logN = log_multiplicity(d, kmax)
    N = multiplicity(d, kmax)
    return SphereSpectrum(mu=mu2, multiplicity=N, log_multiplicity=logN, error=err, d=d,
                          kernel=kernel)
