r"""The second, independent route to the dual activations: 2-D Gauss-Hermite quadrature.

For :math:`(u, v) \sim N(0, [[q_1, s], [s, q_2]])` write :math:`u = \sqrt{q_1} z_1`,
:math:`v = \sqrt{q_2}(\rho z_1 + \sqrt{1-\rho^2} z_2)` with :math:`\rho = s/\sqrt{q_1 q_2}` and
:math:`z_1, z_2` iid :math:`N(0,1)`, and apply the tensor Gauss-Hermite rule of ``order``
points per axis (as neural-tangents' ``stax.ElementwiseNumerical`` does):

.. math:: E[\phi(u)\phi(v)] \approx \sum_{i,j} w_i w_j\, \phi(u_i)\, \phi(v_{ij}).

It shares nothing with the Hermite series (:mod:`infntk.hermite`) except the activation
registry, so the two cross-check each other.

Accuracy (measured, ``tests/test_quadrature.py``)
------------------------------------------------
Errors below are ``max |quadrature - reference| / E[phi^2]`` over ``rho`` in [-1, 1],
``q1 = q2 = q``, against the Hermite series with its certified bound (values for
``E[phi'(u)phi'(v)]`` in parentheses).

* Smooth activations: exponential convergence in ``order``, slower for larger ``q`` (tanh-like
  functions are singular at distance ``~1/sqrt(q)`` from the real axis). tanh, ``q = 1``:
  1e-6 (9e-6), 4e-10 (7e-9), 3e-15 (2e-13) at ``order = 40, 80, 160``; ``q = 0.25``: 1e-15 from
  ``order = 80``. erf, ``q = 1``: 7e-9 at 40, 2e-15 from 80.
* Kinked activations converge only algebraically (the kink of ``phi(v)`` lies on a slanted
  line of the ``(z1, z2)`` grid): relu 7e-3, 3e-3, 2e-3 (3e-2, 2e-2, 2e-2) at
  ``order = 40, 80, 160``; elu 3e-4, 7e-5, 2e-5; step (a jump) 7e-2, 5e-2, 3e-2. For these, use
  the closed forms or the Hermite series with its certified bound; this route is a smoke
  check there, not a reference.

Zero variance: if ``q1 q2 = 0`` the correlation is taken as 0 (SPEC section 2), i.e. ``u`` and
``v`` independent.
"""
from __future__ import annotations

import functools

import numpy as np

from ._validation import check_positive_int
from .activations import get_activation

__all__ = ["dual_quadrature"]

_CHUNK_ELEMENTS = 2_000_000


@functools.lru_cache(maxsize=16)
def _rule(order):
    z, w = np.polynomial.hermite_e.hermegauss(order)
    return z, w / w.sum()


def _as_array(x, name):
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)
                                   or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be real (float or int), got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf.")
    return arr


def dual_quadrature(activation, q1, q2, s, order=80, derivative=True, **params):
    r"""2-D Gauss-Hermite estimates of :math:`E[\phi(u)\phi(v)]` and :math:`E[\phi'(u)\phi'(v)]`.

    Parameters
    ----------
    activation : str, callable or Activation
        As in :func:`infntk.activations.get_activation` (parameters as keyword arguments).
    q1, q2 : array_like, >= 0
        Variances of ``u`` and ``v``.
    s : array_like
        Covariance of ``u`` and ``v``; ``|s| <= sqrt(q1 q2)`` up to rounding (clipped).
    order : int, default 80
        Gauss-Hermite points per axis (cost ``order**2`` activation calls per pair).
    derivative : bool, default True
        Also return :math:`E[\phi'(u)\phi'(v)]` (from the registry's derivative).

    Returns
    -------
    nngp : ndarray, broadcast shape of (q1, q2, s)
    dot : ndarray, same shape (only if ``derivative``)

    Examples
    --------
    >>> nngp, dot = dual_quadrature("erf", 1.0, 1.0, 0.5)
    >>> import numpy as np
    >>> bool(abs(nngp - 2 / np.pi * np.arcsin(1.0 / 3.0)) < 1e-13)
    True
    """
    act = get_activation(activation, **params)
    order = check_positive_int(order, "order", minimum=2)
    q1, q2, s = np.broadcast_arrays(_as_array(q1, "q1"), _as_array(q2, "q2"), _as_array(s, "s"))
    if (q1 < 0).any() or (q2 < 0).any():
        raise ValueError("q1 and q2 must be variances >= 0.")
    shape = q1.shape
    q1, q2, s = q1.ravel(), q2.ravel(), s.ravel()
    prod = q1 * q2
    if (np.abs(s) > np.sqrt(prod) * (1 + 1e-12) + 1e-300).any():
        raise ValueError("s must satisfy |s| <= sqrt(q1 q2) (a valid covariance).")
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(prod > 0, s / np.sqrt(prod), 0.0)
    rho = np.clip(rho, -1.0, 1.0)
    z, w = _rule(order)
    W = w[:, None] * w[None, :]
    fns = [act.fn] + ([act.deriv] if derivative else [])
    outs = [np.empty(q1.size) for _ in fns]
    chunk = max(1, _CHUNK_ELEMENTS // (order * order))
    for lo in range(0, q1.size, chunk):
        sl = slice(lo, lo + chunk)
        r = rho[sl, None, None]
        c = np.sqrt((1.0 - r) * (1.0 + r))
        u = np.sqrt(q1[sl])[:, None] * z[None, :]                              # (p, i)
        v = np.sqrt(q2[sl])[:, None, None] * (r * z[None, :, None] + c * z[None, None, :])
        for fn, out in zip(fns, outs):
            fu = np.asarray(fn(u), dtype=np.float64)
            fv = np.asarray(fn(v), dtype=np.float64)
            out[sl] = np.einsum("pi,pij,ij->p", fu, fv, W)
    res = tuple(o.reshape(shape) for o in outs)
    if not shape:
        res = tuple(o[()] for o in res)
    return res if derivative else res[0]
