r"""Spurious-feature memorization: the feature alignment of NTK regression (Bombari & Mondelli 2024).

Setting. A sample ``z = [x, y]`` has a core part ``x in R^{d_x}`` and a spurious part
``y in R^{d_y}``, ``d_y = alpha d``; ``z^s = [x', y]`` keeps the spurious part of ``z`` with a
fresh core part, so ``<z, z^s>/d ~ alpha``. For a feature map :math:`\varphi` and training
inputs ``Z = (z_1, ..., z_N)``, the *feature alignment* between a test point and training
sample ``i`` is

.. math:: \mathcal F(z, z_i) = \frac{\varphi(z)^\top P^\perp_{-i}\varphi(z_i)}
                                  {\|P^\perp_{-i}\varphi(z_i)\|^2}
          = \frac{K_{z i} - K_{z,-i} K_{-i}^{-1} K_{-i,i}}{K_{ii} - K_{i,-i} K_{-i}^{-1} K_{-i,i}}
          = \big[K(z, Z)\, K(Z, Z)^{-1}\big]_i,

:math:`P^\perp_{-i}` the projection orthogonal to the features of the other samples; the last
form (the weight of sample ``i`` in the kernel interpolant at ``z``) is what is computed: one
Cholesky factorization serves every ``i``. How much a model trained on ``(z_i, y_i)`` predicts
``y_i`` at ``z_i^s`` is ``F(z_i^s, z_i)`` times its prediction at ``z_i``: memorization of the
spurious part.

Theorem (Bombari & Mondelli 2024, NTK features :math:`\varphi(z) = z \otimes \phi'(Wz)`):
:math:`|\mathcal F_{NTK}(z^s_i, z_i) - \gamma_{NTK}| = o(1)` with
:math:`\gamma_{NTK} = \alpha \sum_{l\ge1}\mu_l'^2\alpha^l / \sum_{l\ge1}\mu_l'^2`
(:func:`infntk.hermite.gamma_ntk`), when ``N/d -> infinity`` and ``N = o(d^2)`` (up to logs).
Why: the NTK feature kernel is :math:`d\sum_l \mu_l'^2\rho^{l+1}`; the other samples span its
linear (``l = 0``) part once ``N >> d`` and leave the higher ones (rank ``~d^{l+1}``) alone.
Measured (``notebooks/07_theorems.ipynb``): with ``N = d^{3/2}`` the gap falls roughly like
``d^{-1/2}``; with ``N = 2d`` it stays near 0.1 for relu (the linear part is not projected out).

References
----------
.. [1] Bombari, Mondelli, "How spurious features are memorized: precise analysis for random
   and NTK features", ICML 2024.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from ._validation import (check_matrix, check_pair, check_positive_int, check_positive_real)
from .activations import get_activation
from .data import sample
from .fcnet import FCNet
from .hermite import gamma_ntk

__all__ = ["ntk_feature_gram", "feature_alignment", "spurious_inputs", "spurious_alignment",
           "SpuriousAlignment"]


def ntk_feature_gram(Z1, Z2=None, activation="relu", width=None, seed=None, deriv=None,
                     **params):
    r"""Gram matrix of the first-layer NTK features of a two-layer network.

    :math:`\varphi(z) = z \otimes \phi'(Wz)/\sqrt{k}`, :math:`W_{ij} \sim N(0, 1/d)` (``k``
    rows), i.e.

    .. math:: K(z, z') = \langle z, z'\rangle\,\frac1k\sum_{j=1}^k \phi'(w_j^\top z)\phi'(w_j^\top z')
              \;\xrightarrow{k\to\infty}\; \langle z, z'\rangle\, E[\phi'(u)\phi'(v)],

    ``(u, v)`` centred Gaussian with covariance ``[[|z|^2, <z,z'>], [<z,z'>, |z'|^2]]/d``.

    Parameters
    ----------
    Z1 : array_like (n1, d)
    Z2 : array_like (n2, d), optional (default ``Z1``)
    activation : str or callable
        As for :class:`infntk.FCNet` (``deriv=`` for a callable).
    width : int, optional
        ``k``; ``None`` (default) gives the infinite-width kernel.
    seed : int or numpy Generator, optional
        For ``W`` (finite width only).

    Returns
    -------
    ndarray (n1, n2)

    Notes
    -----
    Infinite width: ``d (Theta - Sigma)`` of ``FCNet(activation, depth=1, w_std=1,
    b_std=None)`` (its NTK minus its NNGP is ``E[phi' phi'] <z, z'>/d``), so closed forms and
    the certified Hermite series are reused; the subtraction costs ``~eps sqrt(d)`` relative.
    Cost ``O(n1 n2 d)``; finite width ``O((n1 + n2) k d + n1 n2 (k + d))``.

    Examples
    --------
    >>> import numpy as np
    >>> Z = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> np.round(ntk_feature_gram(Z), 12).tolist()     # relu: E[1(u>0)^2] = 1/2, <z,z'> = 0
    [[0.5, 0.0], [0.0, 0.5]]
    """
    A, B, same = check_pair(Z1, Z2, "Z1", "Z2")
    if width is None:
        net = FCNet(activation, depth=1, w_std=1.0, b_std=None, deriv=deriv, **params)
        k = net.kernels(A, None if same else B)
        K = A.shape[1] * (k.ntk - k.nngp)
        if same:
            K = 0.5 * (K + K.T)
        return K
    width = check_positive_int(width, "width")
    act = get_activation(activation, deriv=deriv, **params)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    d = A.shape[1]
    W = rng.standard_normal((width, d)) / math.sqrt(d)
    DA = act.deriv(A @ W.T)
    DB = DA if same else act.deriv(B @ W.T)
    return (A @ B.T) * (DA @ DB.T) / width


def feature_alignment(K_train, K_test_train, index):
    r"""Feature alignment :math:`\mathcal F(z_r, z_{index_r})` of test rows with training samples.

    .. math:: \mathcal F(z, z_i) = \frac{K_{zi} - K_{z,-i}K_{-i}^{-1}K_{-i,i}}
                                       {K_{ii} - K_{i,-i}K_{-i}^{-1}K_{-i,i}}
              = [K(z, Z) K(Z, Z)^{-1}]_i

    Parameters
    ----------
    K_train : array_like (N, N)
        Symmetric positive-definite Gram matrix of the training inputs.
    K_test_train : array_like (m, N)
        Kernel between test points and training inputs.
    index : int or array_like of int (m,)
        For each test row, the training sample it is aligned with.

    Returns
    -------
    ndarray (m,)

    Notes
    -----
    One Cholesky factorization, ``O(N^3/3 + m N^2)``; raises ``ValueError`` if ``K_train`` is
    not numerically positive definite.

    Examples
    --------
    >>> import numpy as np
    >>> K = np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> # a test point equal to z_1: fully aligned with sample 0, not with sample 1
    >>> np.round(feature_alignment(K, K[[0, 0]], [0, 1]), 12).tolist()
    [1.0, 0.0]
    """
    K = check_matrix(K_train, "K_train")
    N = K.shape[0]
    if K.shape != (N, N):
        raise ValueError(f"K_train must be square, got shape {K.shape}.")
    C = check_matrix(K_test_train, "K_test_train")
    if C.shape[1] != N:
        raise ValueError(f"K_test_train must have one column per training sample ({N}), got "
                         f"shape {C.shape}.")
    idx = np.atleast_1d(np.asarray(index))
    if not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 1:
        raise TypeError(f"index must be an integer or a 1-D array of integers, got {index!r}.")
    if idx.size == 1 and C.shape[0] > 1:
        idx = np.full(C.shape[0], int(idx[0]))
    if idx.size != C.shape[0]:
        raise ValueError(f"index must have one entry per row of K_test_train ({C.shape[0]}), "
                         f"got {idx.size}.")
    if (idx < 0).any() or (idx >= N).any():
        raise ValueError(f"index must be in [0, {N}), got values in [{idx.min()}, {idx.max()}].")
    try:
        factor = linalg.cho_factor(0.5 * (K + K.T), lower=True, check_finite=False)
    except linalg.LinAlgError:
        raise ValueError("K_train is not numerically positive definite (Cholesky failed); "
                         "the feature alignment needs linearly independent training "
                         "features.") from None
    rows = np.unique(idx)
    # [K(z, Z) K^{-1}]_i = (K^{-1} e_i)^T K(Z, z): solve only for the columns e_i needed
    E = np.zeros((N, rows.size))
    E[rows, np.arange(rows.size)] = 1.0
    dual = linalg.cho_solve(factor, E, check_finite=False)       # (N, len(rows))
    pos = np.searchsorted(rows, idx)
    return np.einsum("rn,nr->r", C, dual[:, pos])


def spurious_inputs(N, d, alpha, n_probe=None, seed=None):
    r"""Training inputs ``z_i = [x_i, y_i]`` and spurious copies ``z_i^s = [x_i', y_i]``.

    ``x`` uniform on the sphere of radius ``sqrt(d_x)`` in ``R^{d_x}``, ``y`` on the sphere of
    radius ``sqrt(d_y)`` in ``R^{d_y}``, ``d_y = round(alpha d)``, ``d_x = d - d_y``: every
    input has ``|z|^2 = d`` (unit-variance pre-activations) and ``<z_i, z_i^s>/d = alpha +
    O(1/sqrt(d))``.

    Returns
    -------
    (Z, Zs) : ndarrays (N, d) and (n_probe, d); ``Zs[r]`` is the copy of ``Z[r]``.
    """
    N = check_positive_int(N, "N", minimum=2)
    d = check_positive_int(d, "d", minimum=2)
    alpha = check_positive_real(alpha, "alpha")
    if not alpha < 1:
        raise ValueError(f"alpha (the spurious fraction) must be in (0, 1), got {alpha!r}.")
    n_probe = N if n_probe is None else check_positive_int(n_probe, "n_probe")
    if n_probe > N:
        raise ValueError(f"n_probe must be <= N = {N}, got {n_probe}.")
    dy = int(round(alpha * d))
    if not 1 <= dy <= d - 1:
        raise ValueError(f"alpha d = {alpha * d:g} leaves no core or no spurious coordinate; "
                         "increase d.")
    dx = d - dy
    rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
    Z = np.hstack([sample("sphere", N, dx, seed=rng), sample("sphere", N, dy, seed=rng)])
    Zs = np.hstack([sample("sphere", n_probe, dx, seed=rng), Z[:n_probe, dx:]])
    return Z, Zs


@dataclass
class SpuriousAlignment:
    """Result of :func:`spurious_alignment`.

    Attributes
    ----------
    F : ndarray (n_probe,)
        :math:`\\mathcal F(z_i^s, z_i)` for the first ``n_probe`` training samples.
    gamma, gamma_error : float
        :math:`\\gamma_{NTK}` and its certified error (:func:`infntk.hermite.gamma_ntk`).
    alpha_effective : float
        ``d_y/d`` after rounding ``alpha d`` to an integer (what ``gamma`` is evaluated at).
    d, N : int
    """

    F: np.ndarray
    gamma: float
    gamma_error: float
    alpha_effective: float
    d: int
    N: int

    @property
    def gap(self):
        """``mean(F) - gamma``."""
        return float(np.mean(self.F)) - self.gamma

    @property
    def std_error(self):
        """Standard error of ``mean(F)`` over the probes."""
        return float(np.std(self.F, ddof=1) / math.sqrt(self.F.size)) if self.F.size > 1 else \
            math.nan


def spurious_alignment(activation, d, N, alpha, n_probe=64, width=None, seed=None, deriv=None,
                       **params):
    r"""One draw of the spurious-memorization experiment: ``F(z_i^s, z_i)`` vs ``gamma_NTK``.

    Parameters
    ----------
    activation : str or callable
        As for :class:`infntk.FCNet` (``deriv=`` for a callable).
    d, N : int
        Input dimension and number of training samples (the theorem needs ``d << N << d^2``).
    alpha : float in (0, 1)
        Spurious fraction.
    n_probe : int
        How many training samples get a spurious copy (all share one factorization).
    width : int, optional
        Finite ``k`` of the NTK features; ``None``: the infinite-width kernel.
    seed : int, optional

    Returns
    -------
    SpuriousAlignment

    Notes
    -----
    Cost: the ``(N + n_probe) x N`` Gram (``O(N^2 d)``) and one Cholesky (``N^3/3``):
    ``d = 256, N = 4096`` takes ~15 s on 2 cores.

    Examples
    --------
    >>> r = spurious_alignment("relu", d=36, N=216, alpha=0.5, seed=0)
    >>> round(r.gamma, 6), bool(abs(r.gap) < 0.1)
    (0.166667, True)
    """
    d = check_positive_int(d, "d", minimum=2)
    N = check_positive_int(N, "N", minimum=2)
    n_probe = check_positive_int(n_probe, "n_probe")
    n_probe = min(n_probe, N)
    Z, Zs = spurious_inputs(N, d, alpha, n_probe=n_probe, seed=seed)
    a_eff = int(round(alpha * d)) / d
    gamma, gerr = gamma_ntk(activation if deriv is None else get_activation(activation, deriv),
                            a_eff, **params)
    rng = np.random.default_rng(None if seed is None else seed + 1)
    K = ntk_feature_gram(np.vstack([Zs, Z]), Z, activation, width=width, seed=rng, deriv=deriv,
                         **params)
    F = feature_alignment(K[n_probe:], K[:n_probe], np.arange(n_probe))
    return SpuriousAlignment(F=F, gamma=gamma, gamma_error=gerr, alpha_effective=a_eff, d=d,
                             N=N)
