r"""The second, independent route to the dual activations: 2-D Gauss-Hermite quadrature.

For :math:`(u, v)` centred Gaussian with variances :math:`q_1, q_2` and correlation
:math:`\rho` (the convention of :func:`infntk.hermite.dual_series`) write
:math:`u = \sqrt{q_1} z_1`, :math:`v = \sqrt{q_2}(\rho z_1 + \sqrt{1-\rho^2} z_2)` with
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

Zero variance: if ``q1 q2 = 0`` the correlation is taken as 0 (docs/conventions.md, section 4),
i.e. ``u`` and ``v`` independent.
"""
from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import numpy as np

from ._validation import check_finite, check_positive_int, check_real_dtype
from .activations import get_activation

__all__ = ["dual_quadrature", "DualQuadrature"]

_CHUNK_ELEMENTS = 2_000_000


@functools.lru_cache(maxsize=16)
def _rule(order):
    z, w = np.polynomial.hermite_e.hermegauss(order)
    return z, w / w.sum()


def _as_array(x, name):
    return check_finite(check_real_dtype(x, name).astype(np.float64), name)


class DualQuadrature(NamedTuple):
    """Result of :func:`dual_quadrature` with ``derivative=True``: ``(nngp, dot)``."""

    nngp: np.ndarray
    dot: np.ndarray

    def __repr__(self):
        return f"DualQuadrature(shape={np.shape(self.nngp)})"


_NO_RHO = object()


def dual_quadrature(activation, q1, q2, *args, rho=_NO_RHO, order=80, derivative=True, s=None,
                    **params):
    r"""2-D Gauss-Hermite estimates of :math:`E[\phi(u)\phi(v)]` and :math:`E[\phi'(u)\phi'(v)]`.

    Same convention as :func:`infntk.hermite.dual_series`: variances ``q1``, ``q2`` and the
    **correlation** ``rho`` (docs/conventions.md, section 6).

    Parameters
    ----------
    activation : str, callable or Activation
        As in :func:`infntk.activations.get_activation` (parameters as keyword arguments).
    q1, q2 : array_like, >= 0
        Variances of ``u`` and ``v``.
    rho : array_like, keyword-only
        Correlation of ``u`` and ``v``, in ``[-1, 1]`` up to rounding (clipped). Ignored where
        ``q1 q2 = 0``.
    order : int, default 80
        Gauss-Hermite points per axis (cost ``order**2`` activation calls per pair).
    derivative : bool, default True
        Also return :math:`E[\phi'(u)\phi'(v)]` (from the registry's derivative).
    s : array_like, optional
        Deprecated: the covariance ``rho sqrt(q1 q2)`` of the former signature
        ``dual_quadrature(activation, q1, q2, s, order, derivative)``. Passing a fourth
        positional argument still means ``s`` in this release (with a ``DeprecationWarning``);
        in the next release the fourth positional argument becomes ``rho``.

    Returns
    -------
    DualQuadrature or ndarray
        ``(nngp, dot)`` (a named tuple, unpacks as before) if ``derivative``, else ``nngp``;
        arrays of the broadcast shape of ``(q1, q2, rho)``.

    Examples
    --------
    >>> nngp, dot = dual_quadrature("erf", 1.0, 1.0, rho=0.5)
    >>> import numpy as np
    >>> bool(abs(nngp - 2 / np.pi * np.arcsin(1.0 / 3.0)) < 1e-13)
    True
    """
    if args:
        if len(args) > 3:
            raise TypeError(f"dual_quadrature takes at most 6 positional arguments, got "
                            f"{3 + len(args)}.")
        warnings.warn("dual_quadrature(activation, q1, q2, s, ...): the positional covariance "
                      "s is deprecated; pass the correlation as rho= (the convention of "
                      "infntk.hermite.dual_series). In the next release the fourth positional "
                      "argument will be rho.", DeprecationWarning, stacklevel=2)
        if s is not None:
            raise TypeError("dual_quadrature got the covariance both positionally and as s=.")
        s = args[0]
        if len(args) > 1:
            order = args[1]
        if len(args) > 2:
            derivative = args[2]
    elif s is not None:
        warnings.warn("dual_quadrature(s=...) is deprecated; pass the correlation as rho= "
                      "(the convention of infntk.hermite.dual_series).", DeprecationWarning,
                      stacklevel=2)
    if (s is None) == (rho is _NO_RHO):
        raise TypeError("dual_quadrature needs exactly one of rho= (the correlation) or the "
                        "deprecated covariance s.")
    act = get_activation(activation, **params)
    order = check_positive_int(order, "order", minimum=2)
    if not isinstance(derivative, (bool, np.bool_)):
        raise TypeError(f"derivative must be True or False, got {derivative!r}.")
    if s is not None:
        q1, q2, c = np.broadcast_arrays(_as_array(q1, "q1"), _as_array(q2, "q2"),
                                        _as_array(s, "s"))
    else:
        q1, q2, c = np.broadcast_arrays(_as_array(q1, "q1"), _as_array(q2, "q2"),
                                        _as_array(rho, "rho"))
    if (q1 < 0).any() or (q2 < 0).any():
        raise ValueError("q1 and q2 must be variances >= 0.")
    shape = q1.shape
    q1, q2, c = q1.ravel(), q2.ravel(), c.ravel()
    prod = q1 * q2
    if s is not None:
        if (np.abs(c) > np.sqrt(prod) * (1 + 1e-12) + 1e-300).any():
            raise ValueError("s must satisfy |s| <= sqrt(q1 q2) (a valid covariance).")
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.where(prod > 0, c / np.sqrt(prod), 0.0)
    else:
        if (np.abs(c) > 1 + 1e-12).any():
            raise ValueError("rho must satisfy |rho| <= 1 (a correlation).")
        rho = np.where(prod > 0, c, 0.0)
    rho = np.clip(rho, -1.0, 1.0)
    z, w = _rule(order)
    W = w[:, None] * w[None, :]
    fns = [act.fn] + ([act.deriv] if derivative else [])
    outs = [np.empty(q1.size) for _ in fns]
    chunk = max(1, _CHUNK_ELEMENTS // (order * order))
    for lo in range(0, q1.size, chunk):
        sl = slice(lo, lo + chunk)
        r = rho[sl, None, None]
        cc = np.sqrt((1.0 - r) * (1.0 + r))
        u = np.sqrt(q1[sl])[:, None] * z[None, :]                              # (p, i)
        v = np.sqrt(q2[sl])[:, None, None] * (r * z[None, :, None] + cc * z[None, None, :])
        for fn, out in zip(fns, outs):
            fu = np.asarray(fn(u), dtype=np.float64)
            fv = np.asarray(fn(v), dtype=np.float64)
            out[sl] = np.einsum("pi,pij,ij->p", fu, fv, W)
    res = tuple(o.reshape(shape) for o in outs)
    if not shape:
        res = tuple(o[()] for o in res)
    return DualQuadrature(*res) if derivative else res[0]
