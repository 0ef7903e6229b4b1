r"""Sensitivity of kernel/feature regression to its input (Bombari, Kiyani & Mondelli 2023).

For the minimum-norm interpolator :math:`f(z) = \varphi(z)^\top\Phi^\top K^{-1}Y` of a feature
map :math:`\varphi` (``K = Phi Phi^T`` the Gram of the ``N`` training inputs), the
sensitivity at a test point is

.. math:: \mathcal S(z) = \|z\|_2\,\|\nabla_z f(z)\|_2, \qquad
          \nabla_z f(z) = \sum_i a_i \nabla_z K(z, z_i), \quad a = K^{-1} Y,

computed with the kernel trick (no ``p``-dimensional features). Two models, both two-layer
with ``W_ij ~ N(0, 1/d)`` (``k`` rows):

* ``"ntk"``: :math:`\varphi(z) = z\otimes\phi'(Wz)/\sqrt k` (``p = kd`` parameters), kernel
  :math:`\langle z,z'\rangle\frac1k\sum_j\phi'(w_j^\top z)\phi'(w_j^\top z')`, gradient
  :math:`\sum_i a_i[s_i z_i + g_i W^\top(\phi''(Wz)\odot\phi'(Wz_i))/k]`,
  :math:`s_i = \frac1k\sum_j \phi'(w_j^\top z)\phi'(w_j^\top z_i)`, :math:`g_i = \langle z, z_i\rangle`.
* ``"rf"``: random features :math:`\varphi(z) = \phi(Wz)/\sqrt k` (``p = k``), gradient
  :math:`W^\top(\phi'(Wz)\odot\Phi_Z^\top a)/k`.

``width=None`` uses the infinite-width kernels (:func:`infntk.memorization.ntk_feature_gram`,
and the NNGP of ``FCNet(activation, depth=1, w_std=1, b_std=None)`` for ``"rf"``); their
gradient is taken by central differences of the kernel in each input coordinate
(``2 d`` kernel rows; step ``h = 1e-5 max(1, |z|_inf)``, relative error ~1e-9).

Claims of the paper reproduced in ``notebooks/07_theorems.ipynb``: with Gaussian inputs and
random labels, the NTK model with an *even* activation reaches the universal law of
robustness :math:`\mathcal S \sim \sqrt{Nd/p} = \sqrt{N/k}`; random features do not
(their sensitivity does not fall with ``k``); a non-even activation's NTK neither.

References
----------
.. [1] Bombari, Kiyani, Mondelli, "Beyond the universal law of robustness: sharper laws for
   random features and neural tangent kernels", ICML 2023.
.. [2] Bubeck, Sellke, "A universal law of robustness via isoperimetry", NeurIPS 2021.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import linalg

from ._validation import check_matrix, check_pair, check_positive_int, check_positive_real
from .activations import get_activation
from .fcnet import FCNet
from .memorization import ntk_feature_gram

__all__ = ["sensitivity", "interpolation_weights"]

_MODELS = ("ntk", "rf")


def _gram(model, A, B, act_spec, width, W):
    activation, deriv, params = act_spec
    if width is None:
        if model == "ntk":
            return ntk_feature_gram(A, B, activation, deriv=deriv, **params)
        return FCNet(activation, depth=1, w_std=1.0, b_std=None, deriv=deriv, **params).nngp(A, B)
    act = get_activation(activation, deriv=deriv, **params)
    if model == "ntk":
        return (A @ B.T) * (act.deriv(A @ W.T) @ act.deriv(B @ W.T).T) / width
    return act.fn(A @ W.T) @ act.fn(B @ W.T).T / width


def interpolation_weights(K, Y, ridge=0.0):
    """``a = (K + ridge I)^{-1} Y`` by Cholesky; ``ValueError`` if not positive definite."""
    K = check_matrix(K, "K")
    Y = np.asarray(Y, dtype=np.float64).ravel()
    if Y.size != K.shape[0]:
        raise ValueError(f"Y must have one entry per row of K ({K.shape[0]}), got {Y.size}.")
    ridge = check_positive_real(ridge, "ridge", allow_zero=True)
    try:
        c = linalg.cho_factor(0.5 * (K + K.T) + ridge * np.eye(K.shape[0]), lower=True)
    except linalg.LinAlgError:
        raise ValueError("the training Gram matrix is not numerically positive definite: the "
                         "model cannot interpolate (more samples than features?); use "
                         "ridge > 0 or a larger width.") from None
    return linalg.cho_solve(c, Y)


def sensitivity(Z_train, Y, Z_test, activation="relu", model="ntk", width=None, seed=None,
                ridge=0.0, deriv=None, deriv2=None, **params):
    r"""Sensitivity :math:`\|z\|\,\|\nabla_z f(z)\|` of the interpolating regressor at each test row.

    Parameters
    ----------
    Z_train : array_like (N, d)
    Y : array_like (N,)
        Training labels.
    Z_test : array_like (m, d)
    activation : str or callable
        As for :class:`infntk.FCNet` (``deriv=`` for a callable).
    model : {"ntk", "rf"}
        NTK features ``z (x) phi'(Wz)`` or random features ``phi(Wz)`` (module notes).
    width : int, optional
        ``k``; ``None`` for the infinite-width kernel.
    seed : int or numpy Generator, optional
        For ``W`` (finite width).
    ridge : float >= 0
        ``a = (K + ridge I)^{-1} Y`` (0: the minimum-norm interpolator).
    deriv2 : callable, optional
        :math:`\phi''` for ``model="ntk"`` at finite width; default: central differences of
        :math:`\phi'` (step ``1e-5``, error ~1e-10 for smooth activations). For a kinked
        :math:`\phi'` (relu, abs) the delta part is ignored, as the a.e. derivative.

    Returns
    -------
    ndarray (m,)

    Notes
    -----
    Cost: the Gram ``O(N^2 (d + k))`` and a Cholesky ``N^3/3``; per test point ``O(N k + k d +
    N d)`` at finite width, ``O(d N (d + k))`` with the ``2d`` kernel rows at infinite width.

    Examples
    --------
    A linear model (identity activation, RF): ``f(z) = <z, w>`` and ``S = |z| |w|``.

    >>> import numpy as np
    >>> Z = np.eye(3)[:2] * np.sqrt(3); Y = np.array([1.0, -1.0])
    >>> S = sensitivity(Z, Y, np.array([[0.0, 0.0, np.sqrt(3)]]), "identity", model="rf")
    >>> round(float(S[0]), 10)     # f(z) = z . (e1 - e2)/sqrt(3): |grad f| = sqrt(2/3)
    1.4142135624
    """
    A, T, _ = check_pair(Z_train, Z_test, "Z_train", "Z_test")
    if model not in _MODELS:
        raise ValueError(f"model must be one of {_MODELS}, got {model!r}.")
    N, d = A.shape
    act_spec = (activation, deriv, params)
    W = None
    if width is not None:
        width = check_positive_int(width, "width")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        W = rng.standard_normal((width, d)) / math.sqrt(d)
    a = interpolation_weights(_gram(model, A, A, act_spec, width, W), Y, ridge)
    out = np.empty(T.shape[0])
    if width is None:
        for r, z in enumerate(T):
            h = 1e-5 * max(1.0, float(np.max(np.abs(z))))
            P = np.vstack([z + h * np.eye(d), z - h * np.eye(d)])
            f = _gram(model, P, A, act_spec, None, None) @ a
            grad = (f[:d] - f[d:]) / (2 * h)
            out[r] = np.linalg.norm(z) * np.linalg.norm(grad)
        return out
    act = get_activation(activation, deriv=deriv, **params)
    if model == "rf":
        proj = act.fn(A @ W.T).T @ a                       # (k,) = Phi_Z^T a
        pre = T @ W.T                                      # (m, k)
        G = (act.deriv(pre) * proj) @ W / width            # (m, d)
        return np.linalg.norm(T, axis=1) * np.linalg.norm(G, axis=1)
    if deriv2 is None:
        def deriv2(x, _f=act.deriv):
            step = 1e-5
            return (_f(x + step) - _f(x - step)) / (2 * step)
    DA = act.deriv(A @ W.T)                                # (N, k)
    pre = T @ W.T
    Dz, D2z = act.deriv(pre), deriv2(pre)                  # (m, k)
    s = Dz @ DA.T / width                                  # (m, N)
    g = T @ A.T                                            # (m, N)
    G = (s * a) @ A + (D2z * (((g * a) @ DA) / width)) @ W
    return np.linalg.norm(T, axis=1) * np.linalg.norm(G, axis=1)
