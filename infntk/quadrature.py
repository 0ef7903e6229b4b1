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
import math
import warnings
from typing import NamedTuple

import numpy as np

from ._validation import check_finite, check_positive_int, check_real_dtype
from .activations import get_activation

__all__ = ["dual_quadrature", "DualQuadrature", "pair_expectations", "PairExpectations"]

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


# ----------------------------------------------------------------------------- composite 2-D rule
#: |z| range of both axes of :func:`pair_expectations`: P(|z| > 10) = 1.5e-23
_PAIR_Z = 10.0
#: work elements (pairs x outer nodes x inner nodes) per batch of :func:`pair_expectations`
_PAIR_ELEMENTS = 1_500_000


class PairExpectations(NamedTuple):
    """Result of :func:`pair_expectations`: values of the finer rule and ``|fine - coarse|``."""

    k: np.ndarray
    kd: np.ndarray
    dk: np.ndarray
    dkd: np.ndarray


def _graded(delta, n):
    """``(P, n)``: ``min(delta 2^i, 1)``, ``i = 0..n-1`` (points graded towards 0)."""
    return np.minimum(delta[:, None] * 2.0 ** np.arange(n)[None, :], 1.0)


def _octave_below(r):
    """``2^-ceil(log2 max(1, r))``: the first graded panel width for a scale ``r``."""
    return 2.0 ** -np.ceil(np.log2(np.maximum(1.0, r)))


def _pieces(bp, t, w):
    """Nodes ``z`` and Gaussian-weighted weights of Gauss-Legendre ``(t, w)`` on every panel
    between consecutive breakpoints ``bp (..., nb)``; shapes ``(..., (nb - 1) len(t))``."""
    a, b = bp[..., :-1], bp[..., 1:]
    h = 0.5 * (b - a)
    z = (0.5 * (a + b))[..., None] + h[..., None] * t
    wz = h[..., None] * w * np.exp(-0.5 * z * z - 0.5 * math.log(2.0 * math.pi))
    shape = z.shape[:-2] + (-1,)
    return z.reshape(shape), wz.reshape(shape)


def _safe_div(a, b, inf):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), inf)


def _pair_batch(fns, kinks, r1, r2, rho, points, degenerate=False):
    """:func:`pair_expectations` for one batch: ``{p: [E[f(u) f(v)] for f in fns]}``.

    ``degenerate``: every pair has ``sigma = 0`` (``|rho| = 1`` or ``r2 = 0``), so ``v = r2 rho
    z1`` and the integral is 1-D (the outer rule alone).
    """
    Z = _PAIR_Z
    P = r1.size
    sig = r2 * np.sqrt(np.maximum(0.0, (1.0 - rho) * (1.0 + rho)))
    rr = r2 * rho
    # outer axis z1 (u = r1 z1): panels graded towards 0, where phi(r1 z1) and
    # psi(r2 rho z1) = E[phi(r2 rho z1 + sig z2)] vary fastest, then unit panels to Z
    ng = int(math.ceil(math.log2(max(1.0, float(np.max(r1)), float(np.max(r2)))))) + 1
    g = _graded(_octave_below(np.maximum(r1, r2)), ng)
    units = np.arange(1.0, Z + 1.0)
    pts = [np.zeros((P, 1)), g, -g, np.broadcast_to(units, (P, units.size)),
           np.broadcast_to(-units, (P, units.size))]
    for c in kinks:             # u = c at z1 = c / r1; v = c at z1 = c / (r2 rho) if sig = 0
        pts.append(np.clip(_safe_div(np.full(P, c), r1, 0.0), -Z, Z)[:, None])
        pts.append(np.clip(_safe_div(c * np.sign(rr), np.abs(rr), 0.0), -Z, Z)[:, None])
    bo = np.sort(np.concatenate(pts, axis=1), axis=1)
    # inner axis z2 (v = x + sig z2, x = r2 rho z1): per outer node, unit panels on [-Z, Z]
    # plus panels graded (width 1/sig) around z* = -x / sig, where phi(v) varies, and a
    # breakpoint at every kink c: z2 = (c - x) / sig (clipped to [-Z, Z]: zero-width panels)
    ngi = int(math.ceil(math.log2(max(1.0, float(np.max(sig)))))) + 1
    gi = _graded(_octave_below(sig), ngi)[:, None, :]
    out = {}
    for p in points:
        t, w = np.polynomial.legendre.leggauss(p)
        z1, w1 = _pieces(bo, t, w)                                   # (P, N1)
        x = rr[:, None] * z1
        if degenerate:
            u = r1[:, None] * z1
            out[p] = [(np.asarray(f(u), dtype=np.float64) * np.asarray(f(x), dtype=np.float64)
                       * w1).sum(axis=1) for f in fns]
            continue
        s = sig[:, None]
        zs = np.clip(_safe_div(-x, s, np.inf), -2 * Z, 2 * Z)[..., None]
        ip = [np.broadcast_to(np.arange(-Z, Z + 1.0), x.shape + (int(2 * Z) + 1,)), zs,
              zs + gi, zs - gi]
        for c in kinks:
            if c != 0.0:
                ip.append(np.clip(_safe_div(c - x, s, np.inf), -2 * Z, 2 * Z)[..., None])
        bi = np.clip(np.sort(np.concatenate(ip, axis=2), axis=2), -Z, Z)
        z2, w2 = _pieces(bi, t, w)                                   # (P, N1, N2)
        v = x[..., None] + sig[:, None, None] * z2
        u = r1[:, None] * z1
        vals = []
        for f in fns:
            # contiguous sums (numpy's pairwise summation): rounding O(log n) eps
            psi = (np.asarray(f(v), dtype=np.float64) * w2).sum(axis=2)
            vals.append((np.asarray(f(u), dtype=np.float64) * psi * w1).sum(axis=1))
        out[p] = vals
    return out


def pair_expectations(fn, deriv, kinks, r1, r2, rho, fine=16, coarse=12):
    r"""``E[phi(u) phi(v)]`` and ``E[phi'(u) phi'(v)]`` by a composite 2-D Gauss-Legendre rule.

    For ``u = r1 z1``, ``v = r2 (rho z1 + sqrt(1 - rho^2) z2)``, ``z1, z2`` iid ``N(0, 1)``,
    i.e. variances ``r1^2, r2^2`` and correlation ``rho``; any ``rho`` in ``[-1, 1]``,
    including ``|rho| = 1``. Written as ``E_z1[phi(r1 z1) psi(r2 rho z1)]`` with the inner
    smoothing ``psi(x) = E_z2[phi(x + sigma z2)]``, ``sigma = r2 sqrt(1 - rho^2)``, both
    integrals on ``[-10, 10]`` (Gaussian mass outside: ``1.5e-23``) with ``fine`` and
    ``coarse`` Gauss-Legendre points per panel on the same panels:

    * outer (``z1``): breakpoints at 0, graded ``+-2^-j`` down to ``1 / max(r1, r2)``
      (``phi(r1 z1)`` and ``psi`` vary on that scale near 0; tanh's poles are at
      ``z1 = +-i pi / (2 r1)``), unit panels beyond ``|z1| = 1``, and every kink ``c``
      at ``z1 = c / r1`` and ``c / (r2 rho)``;
    * inner (``z2``), per outer node ``x``: unit panels, plus panels graded down to
      ``1 / sigma`` around ``z* = -x / sigma`` (where ``phi(v)`` varies fastest) and a
      breakpoint at every kink ``c``: ``z2 = (c - x) / sigma``.

    So each panel's integrand is analytic on the panel (for an activation analytic except
    at its declared kinks, where it is continuous), with its nearest singularity at least
    about one half-width away, and both rules converge geometrically (measured: tanh,
    softplus, erf at variances 1..100 and ``rho`` 0.9..1, already the 10-point rule is at
    the rounding level, ``tests/test_series_quadrature.py``). ``|fine - coarse|`` is then a
    conservative estimate of the finer rule's error (returned as ``dk, dkd``); it is not a
    proof for an activation with an undeclared kink or singularity off the real axis
    closer than ``~1 / max(r1, r2)``.

    Parameters
    ----------
    fn, deriv : callable
        ``phi`` and ``phi'``, vectorized on float arrays.
    kinks : tuple of float
        Points where ``phi`` or ``phi'`` may not be analytic (panel breakpoints).
    r1, r2 : ndarray, shape (P,)
        Standard deviations ``>= 0`` of ``u`` and ``v``.
    rho : ndarray, shape (P,)
        Correlations in ``[-1, 1]``.
    fine, coarse : int
        Points per panel of the two rules.

    Returns
    -------
    PairExpectations
        ``(k, kd, dk, dkd)``, each ``(P,)``: the finer rule's values and ``|fine - coarse|``.

    Notes
    -----
    Cost: about ``(2 ceil(log2 r) + 23)^2 (fine^2 + coarse^2)`` evaluations of ``phi`` and as
    many of ``phi'`` per pair (``~4e5`` at variance 100, 15-30 ms); a pair with ``sigma = 0``
    (``|rho| = 1``, e.g. duplicate rows) is a 1-D integral on the outer rule (``~1e3``
    evaluations). Batched so that the work arrays stay below ``_PAIR_ELEMENTS`` elements.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import special
    >>> f = special.erf
    >>> df = lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x)
    >>> r = np.array([10.0])
    >>> res = pair_expectations(f, df, (), r, r, np.array([0.9999]))
    >>> s = 0.9999 * 100.0
    >>> exact = 2 / np.pi * np.arcsin(2 * s / (1 + 2 * 100.0))
    >>> bool(abs(res.k[0] - exact) < 1e-14)
    True
    """
    r1 = np.asarray(r1, dtype=np.float64).ravel()
    r2 = np.asarray(r2, dtype=np.float64).ravel()
    rho = np.clip(np.asarray(rho, dtype=np.float64).ravel(), -1.0, 1.0)
    P = r1.size
    out = [np.empty(P) for _ in range(4)]
    if P == 0:
        return PairExpectations(*out)
    # elements per pair: (outer panels x fine) x (inner panels x fine)
    ng = math.ceil(math.log2(max(1.0, float(np.max(r1)), float(np.max(r2))))) + 1
    per = (2 * ng + 2 * _PAIR_Z + 2 + 2 * len(kinks)) * (4 * ng + 2 * _PAIR_Z + 2
                                                          + len(kinks)) * fine * fine
    step = max(1, int(_PAIR_ELEMENTS // per))
    flat = r2 * np.sqrt(np.maximum(0.0, (1.0 - rho) * (1.0 + rho))) == 0.0
    for sel, n in ((np.flatnonzero(~flat), step), (np.flatnonzero(flat), 64 * step)):
        for lo in range(0, sel.size, n):
            sl = sel[lo:lo + n]
            res = _pair_batch((fn, deriv), tuple(kinks), r1[sl], r2[sl], rho[sl],
                              (fine, coarse), degenerate=n > step)
            (kf, kdf), (kc, kdc) = res[fine], res[coarse]
            out[0][sl], out[1][sl] = kf, kdf
            out[2][sl], out[3][sl] = np.abs(kf - kc), np.abs(kdf - kdc)
    return PairExpectations(*out)
