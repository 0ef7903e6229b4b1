r"""Hermite expansions of activations: coefficients, tails, Mehler dual series, gamma_NTK.

Conventions (docs/conventions.md, section 6): normalized probabilists' Hermite functions
:math:`h_k = He_k/\sqrt{k!}`, orthonormal under :math:`z \sim N(0, 1)`; for a variance ``q``,

.. math:: a_k(q) = E[\phi(\sqrt{q} z) h_k(z)], \qquad
          E[\phi(u)\phi(v)] = \sum_k a_k(q_1) a_k(q_2) \rho^k  \quad\text{(Mehler)},

for :math:`(u, v)` centred Gaussian with variances :math:`q_1, q_2` and correlation
:math:`\rho`. Truncating after ``K`` terms errs by at most :math:`\sqrt{T_K(q_1) T_K(q_2)}`
(Cauchy-Schwarz with :math:`|\rho| \le 1`), :math:`T_K(q) = E[\phi(\sqrt q z)^2] -
\sum_{k \le K} a_k(q)^2`.

How the coefficients are computed (``precision="double"``)
---------------------------------------------------------
* **Exact closed forms** for the rectified-monomial family
  :math:`\phi(x) = B\max(0,x)^n + A\max(0,-x)^n` (relu, leaky_relu, abs, identity, step, sign,
  arccos(n)). With :math:`r_n(z) = \max(0,z)^n`, integration by parts
  (:math:`(He_{k-1}\varphi)' = -He_k \varphi`) gives
  :math:`\int_0^\infty z^n He_k \varphi = n!\, He_{k-n-1}(0)\varphi(0)` for ``k > n`` and
  :math:`\frac{n!}{(n-k)!}\int_0^\infty z^{n-k}\varphi` for ``k <= n``; evaluated in log scale,
  so any ``K`` is fine. Accurate to a few ulps.
* **Gauss-Hermite** quadrature for activations without kinks at small variance, of order
  :func:`gauss_hermite_order` ``(K, q)`` = ``K + 40 + ceil(150 sqrt(q))`` while that is
  ``<= GH_MAX_ORDER = 200`` (roughly ``q <= 0.4`` at ``K = 30``). The order must grow like
  ``q`` because Gauss-Hermite converges like ``exp(-c b sqrt(n))`` for functions analytic in a
  strip ``|Im z| < b`` and tanh-like activations have ``b ~ 1/sqrt(q)`` (tanh, ``q = 1``:
  ``n = 200`` is needed for 1e-15).
* **Composite Gauss-Legendre** (``_PANEL_POINTS`` points per panel) otherwise, i.e. for larger
  ``q`` and for activations with kinks (elu, and any declared kink): breakpoints at ``z = 0``,
  at every kink ``c/sqrt(q)``, geometrically graded panels ``+-delta 2^j`` towards 0 with
  ``delta ~ 1/sqrt(q)`` (resolving the complex singularities of tanh-like functions at distance
  ``~1/sqrt(q)``), unit panels beyond ``|z| = 1`` up to ``Z = sqrt(4K + 2) + 10``. Measured
  against 50-digit values: ``<= 1e-15 sqrt(E[phi^2])`` absolute for every registered
  non-closed-form activation, ``1e-2 <= q <= 100``, ``K <= 100`` (``tests/test_hermite.py``).
  A callable with an undeclared kink away from 0 is *not* resolved exactly: the accuracy is
  then algebraic in the panel width (typically ``1e-6`` to ``1e-9``); declare its kinks
  through an :class:`~infntk.activations.Activation` with ``kinks=``.

``precision="mp"`` uses the same composite breakpoints with mpmath Gauss-Legendre panels at
``dps`` digits, raising the panel degree until two successive degrees agree.

Cost: the quadrature paths evaluate ``phi`` once per node and variance, then one matrix product
``(len(q), nodes) @ (nodes, K+1)``: ``10^4`` variances at ``K = 50`` take about 0.1-0.5 s (see
``benchmarks/bench_hermite.py``).

References
----------
.. [1] O'Donnell, *Analysis of Boolean Functions*, ch. 11 (Hermite expansions, Mehler).
.. [2] Daniely, Frostig, Singer, "Toward deeper understanding of neural networks: the power of
   initialization and a dual view on expressivity", NeurIPS 2016 (dual activations).
.. [3] Bombari, Mondelli, "How spurious features are memorized: precise analysis for random and
   NTK features", ICML 2024 (gamma_NTK).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import mpmath
import numpy as np

from ._validation import check_positive_int, check_positive_real, check_real_dtype
from .activations import (FAMILY_ABRELU, FAMILY_ABSTEP, FAMILY_ARCCOS, Activation,
                          get_activation)

__all__ = ["coefficients", "derivative_coefficients", "second_moment", "tail", "mehler_bound",
           "dual_series", "DualSeries", "row_expansions", "RowExpansions", "truncation_order",
           "gamma_ntk", "GammaNTK", "gauss_hermite_order", "GH_MAX_ORDER"]

_EPS = np.finfo(float).eps
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
#: Largest Gauss-Hermite order used; beyond it the composite Legendre rule takes over.
GH_MAX_ORDER = 200
_PANEL_POINTS = 24
_TAIL_PAD = 10.0
#: Largest K for the quadrature paths (closed forms take any K).
_K_MAX_QUADRATURE = 600


# ----------------------------------------------------------------------------- arguments
def _resolve(activation, params):
    return get_activation(activation, **params)


def _check_K(K, name="K"):
    return check_positive_int(K, name, minimum=0)


def _check_q(q, name="q"):
    """Return (1-D float64 array of variances, was_scalar)."""
    arr = check_real_dtype(q, name)
    scalar = arr.ndim == 0
    arr = np.atleast_1d(arr).astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty.")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must contain finite variances >= 0.")
    return arr, scalar


def _check_precision(precision):
    if precision not in ("double", "mp"):
        raise ValueError(f"precision must be 'double' or 'mp', got {precision!r}.")
    return precision


def _out(arr, scalar):
    return arr[0] if scalar else arr


# ----------------------------------------------------------------------------- closed forms
def _closed_family(act: Activation, derivative=False):
    """``(n, B, A)`` with ``phi = B r_n(x) + A r_n(-x)``, or None if not in the family.

    ``derivative=True`` returns the family of the a.e. derivative (``B = A = 0`` for step and
    sign, whose derivative vanishes almost everywhere, docs/conventions.md, section 5).
    """
    if act.family is None:
        return None
    family, p0, p1 = act.family
    if family == FAMILY_ABRELU:          # b max(x,0) + a min(x,0) = b r_1(x) - a r_1(-x)
        return (0, p1, p0) if derivative else (1, p1, -p0)
    if family == FAMILY_ABSTEP:          # b 1(x>0) + a 1(x<0)
        return (0, 0.0, 0.0) if derivative else (0, p1, p0)
    if family == FAMILY_ARCCOS:
        n = int(p0)
        return (n - 1, float(n), 0.0) if derivative else (n, 1.0, 0.0)
    return None


def _half_moment(j):
    """int_0^inf z^j phi(z) dz: (j-1)!!/2 (j even), 2^((j-1)/2) ((j-1)/2)! / sqrt(2 pi) (odd)."""
    if j <= 150:
        if j % 2 == 0:
            return math.prod(range(j - 1, 0, -2)) / 2
        return 2.0 ** ((j - 1) // 2) * math.factorial((j - 1) // 2) / math.sqrt(2 * math.pi)
    return math.exp(0.5 * j * math.log(2) + math.lgamma(0.5 * (j + 1)) - 0.5 * math.log(math.pi)
                    - math.log(2))


@functools.lru_cache(maxsize=64)
def _rectified_monomial_coefficients(n, K):
    """c_k = E[max(0, z)^n h_k(z)], k = 0..K (exact, log scale)."""
    c = np.zeros(K + 1)
    for k in range(K + 1):
        if k <= n:
            c[k] = math.exp(math.lgamma(n + 1) - math.lgamma(n - k + 1)
                            - 0.5 * math.lgamma(k + 1)) * _half_moment(n - k)
        else:
            m = k - n - 1
            if m % 2:
                continue
            logv = (math.lgamma(n + 1) + math.lgamma(m + 1) - 0.5 * m * math.log(2)
                    - math.lgamma(m // 2 + 1) - _LOG_SQRT_2PI - 0.5 * math.lgamma(k + 1))
            c[k] = (-1) ** (m // 2) * math.exp(logv)
    c.setflags(write=False)
    return c


def _family_coefficients(fam, K, q):
    n, B, A = fam
    c = _rectified_monomial_coefficients(n, K)
    signs = B + A * (-1.0) ** np.arange(K + 1)
    with np.errstate(divide="ignore"):
        scale = q ** (0.5 * n) if n else np.ones_like(q)
    return scale[:, None] * (c * signs)[None, :]


def _family_second_moment(fam, q):
    n, B, A = fam
    return (A * A + B * B) * _half_moment(2 * n) * (q ** n if n else np.ones_like(q))


# ----------------------------------------------------------------------------- quadrature rules
def gauss_hermite_order(K, q):
    """The Gauss-Hermite order used by ``precision="double"`` for smooth activations.

    ``n = K + 40 + ceil(150 sqrt(q_max))`` rounded up to even (an even rule has no node at
    ``z = 0``, so a callable's value exactly at a possible kink, e.g. ``np.sign(0) = 0``, is never
    used), used only while ``n <= GH_MAX_ORDER = 200``
    (beyond, numpy's nodes lose accuracy and the composite rule is cheaper). The ``K`` term
    makes the rule exact for the polynomial part ``h_k``; the ``sqrt(q)`` term resolves
    ``phi(sqrt(q) z)``, whose complex singularities (tanh: ``z = i pi / (2 sqrt(q))``) sit at
    distance ``~1/sqrt(q)`` from the real axis. Gauss-Hermite converges like
    ``exp(-c b sqrt(n))`` for a function analytic in the strip ``|Im z| < b``, so the order
    grows like ``q``: measured for tanh at ``q = 1``, ``K = 30``: errors 2e-7, 2e-10, 2e-12,
    6e-16 at ``n = 60, 100, 130, 200``; entire activations (erf, sin, gelu) need far fewer.
    Validated against 50-digit values in ``tests/test_hermite.py``.
    """
    qmax = float(np.max(q))
    n = int(K + 40 + math.ceil(150.0 * math.sqrt(qmax)))
    return n + (n % 2)       # even: no node at z = 0, where a callable may have a kink


@functools.lru_cache(maxsize=32)
def _gh_rule(n):
    """Probabilists' Gauss-Hermite nodes and probability weights (sum to 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    z.setflags(write=False)
    w.setflags(write=False)
    return z, w


@functools.lru_cache(maxsize=4)
def _legendre_rule(p):
    return np.polynomial.legendre.leggauss(p)


def _breakpoints(K, sq, kinks=(), zmax=None, outer_step=1.0):
    """Sorted panel breakpoints in z for phi(sq z) (see the module notes).

    ``outer_step``: panel width beyond ``|z| = 4`` (the mpmath path uses wider panels there,
    its panel degree being raised until convergence anyway).
    """
    Z = math.sqrt(4 * K + 2) + _TAIL_PAD if zmax is None else zmax
    delta = 1.0 if sq <= 1 else 2.0 ** (-math.floor(math.log2(sq)))
    pts = {0.0}
    x = delta
    while x < 1.0:
        pts.update((x, -x))
        x *= 2
    x = 1.0
    while x < Z:
        pts.update((x, -x))
        x += 1.0 if x < 4 else outer_step
    pts.update((Z, -Z))
    if sq > 0:
        for c in kinks:
            zc = c / sq
            if -Z < zc < Z:
                pts.add(zc)
    return np.array(sorted(pts))


def _composite_rule(K, sq, kinks=()):
    """Nodes and square roots of the probability weights of the composite Legendre rule."""
    t, wt = _legendre_rule(_PANEL_POINTS)
    bp = _breakpoints(K, sq, kinks)
    a, b = bp[:-1], bp[1:]
    half = 0.5 * (b - a)
    z = ((0.5 * (a + b))[:, None] + half[:, None] * t[None, :]).ravel()
    w = (half[:, None] * wt[None, :]).ravel()
    # sqrt of w * exp(-z^2/2) / sqrt(2 pi), formed without underflowing the product first
    s = np.sqrt(w) * np.exp(-0.25 * z * z - 0.5 * _LOG_SQRT_2PI)
    return z, s


def _gh_sqrt_rule(K, q):
    z, w = _gh_rule(gauss_hermite_order(K, q))
    return z, np.sqrt(w)


def _scaled_hermite_table(z, s, K):
    """G[j, k] = s_j h_k(z_j): the normalized Hermite functions times the root weights.

    Starting the three-term recursion ``h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k+1)`` from
    ``s_j`` keeps every entry bounded (``|h_k(z)| e^{-z^2/4}`` is O(1)), so no overflow for
    large ``K`` and ``|z|``.
    """
    G = np.empty((z.size, K + 1))
    G[:, 0] = s
    if K >= 1:
        G[:, 1] = z * s
    for k in range(1, K):
        G[:, k + 1] = (z * G[:, k] - math.sqrt(k) * G[:, k - 1]) / math.sqrt(k + 1)
    return G


@functools.lru_cache(maxsize=3)
def _gh_table(n, K):
    """``(z, s, G)`` of the order-``n`` Gauss-Hermite rule (cached, read-only)."""
    z, w = _gh_rule(n)
    s = np.sqrt(w)
    G = _scaled_hermite_table(z, s, K)
    G.setflags(write=False)
    return z, s, G


@functools.lru_cache(maxsize=3)
def _composite_table(K, key):
    """``(z, s, G)`` of the composite rule of octave ``key`` of ``sqrt(q)``, kinks at 0 only.

    The breakpoints depend on ``sqrt(q)`` only through ``delta`` (its octave) when every kink
    is at 0, so one table serves every variance of the octave (cached, read-only).
    """
    z, s = _composite_rule(K, 2.0 ** key, (0.0,))
    G = _scaled_hermite_table(z, s, K)
    G.setflags(write=False)
    return z, s, G


def _project(F, z, s, K, want_tails, G=None):
    """Coefficients (m, K+1) of the rows of F (m, nodes) and, optionally, tails T_j.

    ``s`` holds the square roots of the probability weights. The tails are sums of squared
    residuals ``sum_j w_j (f_j - sum_{k<=K} a_k h_k(z_j))^2``: non-negative and free of the
    cancellation in ``E[phi^2] - sum a_k^2``. ``want_tails``: False, ``"all"`` (every order,
    cost O(m nodes K) elementwise) or ``"ends"`` (only T_0 and T_K, two matrix products; the
    other columns are NaN).
    """
    if G is None:
        G = _scaled_hermite_table(z, s, K)
    Fs = F * s[None, :]
    a = Fs @ G
    if not want_tails:
        return a, None
    if want_tails == "ends":
        T = np.full_like(a, np.nan)
        # the residuals formed in place (a contiguous copy of G's first column: a strided
        # broadcast operand is several times slower); the same values as Fs - a0 G0, Fs - a G^T
        R = np.multiply(a[:, :1], np.ascontiguousarray(G[:, 0])[None, :])
        np.subtract(Fs, R, out=R)
        T[:, 0] = np.einsum("ij,ij->i", R, R)
        R = a @ G.T
        np.subtract(Fs, R, out=R)
        T[:, K] = np.einsum("ij,ij->i", R, R)
        return a, T
    T = np.empty_like(a)
    R = Fs
    for k in range(K + 1):
        R -= a[:, k:k + 1] * G[None, :, k]
        T[:, k] = np.einsum("ij,ij->i", R, R)
    return a, T


def _eval_phi(fn, X):
    Y = np.asarray(fn(X), dtype=np.float64)
    if Y.shape != X.shape:
        Y = np.broadcast_to(Y, X.shape).astype(np.float64)
    if not np.isfinite(Y).all():
        raise ValueError("activation returned NaN or inf on the quadrature nodes; it must be "
                         "finite on the real line and grow at most polynomially.")
    return Y


def _octaves(sq):
    """``0 if r <= 1 else floor(log2(r))`` for every standard deviation ``r`` of ``sq``
    (the octave that selects the composite rule), vectorized: ``frexp`` gives the exponent
    exactly, and the few values within ``1e-12`` below a power of two (where ``log2`` may
    round up to the integer) are taken from ``math.log2`` as one at a time."""
    f, e = np.frexp(sq)
    keys = np.where(sq <= 1, 0, e - 1).astype(np.int64)
    for t in np.flatnonzero((f > 1 - 1e-12) & (sq > 1)):
        keys[t] = math.floor(math.log2(float(sq[t])))
    return keys


def _double_quadrature(fn, kinks, K, q, want_tails=False, method=None):
    """Coefficients and (optionally) tails of fn(sqrt(q) z) for every q (double precision)."""
    if K > _K_MAX_QUADRATURE:
        raise ValueError(f"K must be <= {_K_MAX_QUADRATURE} for quadrature-based coefficients "
                         f"(the nodes reach |z| = sqrt(4K + 2) + 10), got {K}.")
    m = q.size
    a = np.zeros((m, K + 1))
    T = np.zeros((m, K + 1)) if want_tails else None
    sq = np.sqrt(q)
    pos = q > 0
    if not pos.all():                   # q = 0: phi(0) delta_k0 exactly
        f0 = float(_eval_phi(fn, np.zeros(1))[0])
        a[~pos, 0] = f0
    if not pos.any():
        return a, T
    if method is None:
        n_gh = gauss_hermite_order(K, q[pos])
        method = "gh" if (not kinks and n_gh <= GH_MAX_ORDER) else "composite"
    if method == "gh":
        z, s, G = _gh_table(gauss_hermite_order(K, q[pos]), K)
        idx = np.flatnonzero(pos)
        F = _eval_phi(fn, sq[idx, None] * z[None, :])
        a[idx], t = _project(F, z, s, K, want_tails, G)
        if want_tails:
            T[idx] = t
        return a, T
    # composite: group variances that share breakpoints (same octave of sqrt(q), kinks at 0)
    nonzero_kinks = any(c != 0 for c in kinks)
    if nonzero_kinks:
        groups = {i: [i] for i in np.flatnonzero(pos)}
        keyq = {i: sq[i] for i in groups}
    else:
        groups, keyq = {}, {}
        idx = np.flatnonzero(pos)
        keys = _octaves(sq[idx])
        for key in np.unique(keys):
            groups[int(key)] = idx[keys == key]
    for key, idx in groups.items():
        if nonzero_kinks:
            z, s = _composite_rule(K, keyq[key], kinks)
            G = None
        else:           # the same rule for the whole octave: its table is cached
            z, s, G = _composite_table(K, key)
        idx = np.asarray(idx)
        F = _eval_phi(fn, sq[idx, None] * z[None, :])
        a[idx], t = _project(F, z, s, K, want_tails, G)
        if want_tails:
            T[idx] = t
    return a, T


# ----------------------------------------------------------------------------- mpmath path
@functools.lru_cache(maxsize=16)
def _mp_legendre(degree, prec):
    from mpmath.calculus.quadrature import GaussLegendre
    with mpmath.workprec(prec):
        return GaussLegendre(mpmath.mp).calc_nodes(degree, prec)


def _mp_fn(act):
    if act.mp_fn is not None:
        return act.mp_fn
    raw = act.params.get("callable")
    if raw is None:
        raise ValueError(f"precision='mp' needs an mpmath implementation of {act.name!r}.")

    def f(x):
        y = raw(x)
        if isinstance(y, np.ndarray):
            y = y.item()
        return mpmath.mpf(y) if not isinstance(y, mpmath.mpf) else y
    return f


def _mp_coefficients_one(f, kinks, K, q, dps):
    """a_0..a_K of f(sqrt(q) z) as mpf at dps digits, panel degree raised to convergence."""
    with mpmath.workdps(dps + 10):
        sq = mpmath.sqrt(q)
        Z = math.sqrt(4 * K + 2) + math.sqrt(2 * (dps + 10) * math.log(10)) + 2
        bp = _breakpoints(K, float(sq), kinks, zmax=Z, outer_step=4.0)
        bps = [mpmath.mpf(x) for x in bp]
        if float(sq) > 0:             # exact kink positions in mp
            for c in kinks:
                zc = mpmath.mpf(c) / sq
                i = int(np.argmin(np.abs(bp - float(zc))))
                bps[i] = zc
        norm = 1 / mpmath.sqrt(2 * mpmath.pi)
        sqrt_k = [mpmath.sqrt(k) for k in range(K + 2)]
        prev = None
        for degree in range(3, 9):
            nodes = _mp_legendre(degree, mpmath.mp.prec)
            acc = [mpmath.mpf(0)] * (K + 1)
            for lo, hi in zip(bps[:-1], bps[1:]):
                half, mid = (hi - lo) / 2, (hi + lo) / 2
                for t, wt in nodes:
                    z = mid + half * t
                    c = half * wt * norm * mpmath.exp(-z * z / 2) * f(sq * z)
                    h0, h1 = mpmath.mpf(1), z
                    acc[0] += c * h0
                    if K >= 1:
                        acc[1] += c * h1
                    for k in range(1, K):
                        h0, h1 = h1, (z * h1 - sqrt_k[k] * h0) / sqrt_k[k + 1]
                        acc[k + 1] += c * h1
            if prev is not None:
                scale = max(max(abs(x) for x in acc), mpmath.mpf(10) ** (-dps))
                if max(abs(x - y) for x, y in zip(acc, prev)) <= scale * mpmath.mpf(10) ** (-dps):
                    return acc
            prev = acc
        raise RuntimeError("mp Hermite coefficients did not converge to the requested dps; "
                           "the activation may have an undeclared kink.")


def _mp_coefficients(act, K, q, dps):
    f = _mp_fn(act)
    out = []
    for qi in q:
        if qi == 0:
            with mpmath.workdps(dps):
                out.append([mpmath.mpf(f(mpmath.mpf(0)))] + [mpmath.mpf(0)] * K)
        else:
            out.append(_mp_coefficients_one(f, act.kinks, K, mpmath.mpf(float(qi)), dps))
    return out


# ----------------------------------------------------------------------------- public API
def coefficients(activation, K, q=1.0, precision="double", dps=50, **params):
    r"""Hermite coefficients :math:`a_0..a_K` of :math:`z \mapsto \phi(\sqrt{q} z)`.

    .. math:: a_k(q) = E[\phi(\sqrt{q} z)\, h_k(z)], \quad h_k = He_k/\sqrt{k!},\ z\sim N(0,1).

    Parameters
    ----------
    activation : str, callable or Activation
        Registered name (its parameters as keyword arguments, e.g. ``alpha=0.1``), a callable
        acting elementwise on float64 arrays, or an :class:`~infntk.activations.Activation`.
    K : int >= 0
        Highest order.
    q : float or array_like (m,), >= 0
        Variance(s). ``q = 0`` gives ``[phi(0), 0, ..., 0]`` exactly.
    precision : {"double", "mp"}
        ``"double"``: closed forms for the rectified-monomial family, otherwise Gauss-Hermite
        (smooth) or composite Gauss-Legendre (kinks, large q), see the module notes.
        ``"mp"``: mpmath at ``dps`` digits (a callable must then accept mpmath numbers).
    dps : int
        Decimal digits for ``precision="mp"``.

    Returns
    -------
    ndarray, shape (K+1,) for scalar q or (m, K+1); for ``"mp"`` a list (or list of lists) of
    ``mpmath.mpf``.

    Examples
    --------
    >>> import numpy as np
    >>> a = coefficients("relu", 3)
    >>> bool(np.allclose(a**2, [1 / (2 * np.pi), 0.25, 1 / (4 * np.pi), 0.0]))
    True
    """
    act = _resolve(activation, params)
    K = _check_K(K)
    qa, scalar = _check_q(q)
    precision = _check_precision(precision)
    if precision == "mp":
        dps = check_positive_int(dps, "dps", minimum=5)
        res = _mp_coefficients(act, K, qa, dps)
        return res[0] if scalar else res
    fam = _closed_family(act)
    if fam is not None:
        a = _family_coefficients(fam, K, qa)
        zero = qa == 0
        if zero.any():
            a[zero] = 0.0
            a[zero, 0] = float(act.fn(np.zeros(1))[0])
        return _out(a, scalar)
    a, _ = _double_quadrature(act.fn, act.kinks, K, qa)
    return _out(a, scalar)


def _deriv_limit_at_zero(act, K):
    """lim_{q->0+} b_k(q): the coefficients of d_- 1(z<0) + d_+ 1(z>0), d_+- = phi'(+-0)."""
    dm, dp = act.deriv_at_zero()
    return _family_coefficients((0, dp, dm), K, np.ones(1))[0]


def derivative_coefficients(activation, K, q=1.0, **params):
    r"""Hermite coefficients :math:`b_0..b_K` of :math:`z \mapsto \phi'(\sqrt{q} z)` (double).

    .. math:: b_k(q) = \sqrt{(k+1)/q}\; a_{k+1}(q) \qquad (q > 0,\ \text{Stein's lemma})

    (docs/conventions.md, section 6)

    The relation holds for absolutely continuous ``phi``. For the closed-form family the
    a.e. derivative is expanded directly (exactly), so step and sign give ``b = 0`` (the delta
    at 0 is ignored, docs/conventions.md, section 5) instead of the delta's coefficients.

    ``q = 0``: the limit ``q -> 0+``, i.e. the coefficients of
    ``phi'(0-) 1(z<0) + phi'(0+) 1(z>0)``: ``[phi'(0), 0, ...]`` for smooth ``phi``, and for
    relu ``b_0 = 1/2``, so that ``E[phi'(u) phi'(v)] = 1/4`` for a zero input (docs/conventions.md,
    section 4).

    Note: the relation multiplies the absolute error of ``a_{k+1}`` (``~1e-16 sqrt(E[phi^2])``)
    by ``sqrt((k+1)/q)``; for very small ``q`` prefer the closed forms.

    Parameters
    ----------
    activation, K, q, params
        As in :func:`coefficients`.

    Returns
    -------
    ndarray, shape (K+1,) or (m, K+1)

    Examples
    --------
    >>> float(derivative_coefficients("relu", 2)[0])
    0.5
    """
    act = _resolve(activation, params)
    K = _check_K(K)
    qa, scalar = _check_q(q)
    fam = _closed_family(act, derivative=True)
    if fam is not None:
        b = _family_coefficients(fam, K, qa)
        return _out(b, scalar)
    b = np.empty((qa.size, K + 1))
    pos = qa > 0
    if pos.any():
        a, _ = _double_quadrature(act.fn, act.kinks, K + 1, qa[pos])
        b[pos] = np.sqrt(np.arange(1, K + 2)[None, :] / qa[pos, None]) * a[:, 1:]
    if not pos.all():
        b[~pos] = _deriv_limit_at_zero(act, K)
    return _out(b, scalar)


def _second_moment_arrays(act, qa, derivative=False):
    fam = _closed_family(act, derivative=derivative)
    if fam is not None:
        return _family_second_moment(fam, qa)
    fn = act.deriv if derivative else act.fn
    f2 = lambda x: _eval_phi(fn, x) ** 2   # noqa: E731
    # always the composite rule: the Gauss-Hermite order of gauss_hermite_order is tuned on
    # phi, and a square has the same complex poles at twice the order (E[sech(sqrt(q) z)^4],
    # tanh's phi'^2, erred by 4e-14 relative at q = 1.1 on it; the composite rule by 2.4e-16).
    # By chunks: the quadrature's node arrays are (variances x nodes)
    return np.concatenate([_double_quadrature(f2, act.kinks, 0, qa[i:i + _TAILS_CHUNK],
                                              method="composite")[0][:, 0]
                           for i in range(0, qa.size, _TAILS_CHUNK)])


def second_moment(activation, q=1.0, derivative=False, **params):
    r""":math:`E[\phi(\sqrt{q} z)^2]` (or of :math:`\phi'` with ``derivative=True``).

    Exact for the closed-form family (``(A^2 + B^2) E[r_n(z)^2] q^n``), otherwise by the
    quadrature of :func:`coefficients` applied to ``phi^2``.

    Returns
    -------
    float or ndarray (m,)

    Examples
    --------
    >>> float(second_moment("relu", 2.0))
    1.0
    """
    act = _resolve(activation, params)
    qa, scalar = _check_q(q)
    return _out(_second_moment_arrays(act, qa, derivative), scalar)


#: variances per chunk in :func:`_tails`: the quadrature's work arrays are
#: ``chunk x nodes x (K + 1)`` floats, so memory stays bounded for any number of rows
_TAILS_CHUNK = 256


def _tails(act, K, qa, derivative=False, all_orders=False):
    """(coefficients (m, K+1), tails T_0..T_K (m, K+1), rounding floors (m, K+1)).

    Computed by chunks of :data:`_TAILS_CHUNK` variances, each independently except that a
    smooth activation's Gauss-Hermite order is the largest any variance of its chunk needs
    (:func:`gauss_hermite_order`), so the values may depend on the chunking in the last bits.
    """
    qa = np.asarray(qa, dtype=np.float64)
    if qa.size <= _TAILS_CHUNK:
        return _tails_chunk(act, K, qa, derivative, all_orders)
    parts = [_tails_chunk(act, K, qa[i:i + _TAILS_CHUNK], derivative, all_orders)
             for i in range(0, qa.size, _TAILS_CHUNK)]
    return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))


def _tails_chunk(act, K, qa, derivative=False, all_orders=False):
    """:func:`_tails` for one chunk of variances.

    Floors: closed forms subtract ``sum_{k<=j} a_k^2`` from the exact ``E[phi^2]``, rounding
    error ``<= 4 (j+2) eps E``; the quadrature tails are sums of squared residuals whose
    rounding error is of order ``eps^2 E`` (we allow ``16 (j+2) eps^2 E``).
    """
    fam = _closed_family(act, derivative=derivative)
    if fam is not None:
        a = _family_coefficients(fam, K, qa)
        E = _family_second_moment(fam, qa)
        T = np.maximum(E[:, None] - np.cumsum(a * a, axis=1), 0.0)
        floor = _floor(E, K, _EPS)
        if not derivative:
            zero = qa == 0
            a[zero] = 0.0
            a[zero, 0] = float(act.fn(np.zeros(1))[0])
            T[zero] = 0.0
        return a, T, floor
    mode = "all" if all_orders else "ends"
    if derivative:
        b = np.empty((qa.size, K + 1))
        T = np.empty((qa.size, K + 1))
        pos = qa > 0
        if pos.any():
            fd = act.deriv
            b[pos], T[pos] = _double_quadrature(fd, act.kinks, K, qa[pos], want_tails=mode)
        if not pos.all():
            b[~pos] = _deriv_limit_at_zero(act, K)
            dm, dp = act.deriv_at_zero()
            E0 = 0.5 * (dm * dm + dp * dp)
            T[~pos] = np.maximum(E0 - np.cumsum(b[~pos] ** 2, axis=1), 0.0)
        E = np.maximum(b[:, 0] ** 2 + T[:, 0], 0.0)
        return b, T, _floor(E, K, _EPS * _EPS * 4)
    a, T = _double_quadrature(act.fn, act.kinks, K, qa, want_tails=mode)
    E = a[:, 0] ** 2 + T[:, 0]
    return a, T, _floor(E, K, _EPS * _EPS * 4)


def _coefficient_arrays(act, K, qa, derivative=False):
    """Coefficients ``(m, K+1)`` of ``phi`` (or ``phi'``) only, the same values as :func:`_tails`.

    The same rules and the same chunks of :data:`_TAILS_CHUNK` variances as :func:`_tails`, so
    for the same ``qa`` the result is bitwise the first output of ``_tails`` (the tails'
    residuals are not formed: half the work).
    """
    qa = np.asarray(qa, dtype=np.float64)
    if qa.size > _TAILS_CHUNK:
        return np.concatenate([_coefficient_arrays(act, K, qa[i:i + _TAILS_CHUNK], derivative)
                               for i in range(0, qa.size, _TAILS_CHUNK)])
    fam = _closed_family(act, derivative=derivative)
    if fam is not None:
        a = _family_coefficients(fam, K, qa)
        if not derivative:
            zero = qa == 0
            a[zero] = 0.0
            a[zero, 0] = float(act.fn(np.zeros(1))[0])
        return a
    if derivative:
        b = np.empty((qa.size, K + 1))
        pos = qa > 0
        if pos.any():
            b[pos] = _double_quadrature(act.deriv, act.kinks, K, qa[pos])[0]
        if not pos.all():
            b[~pos] = _deriv_limit_at_zero(act, K)
        return b
    return _double_quadrature(act.fn, act.kinks, K, qa)[0]


def _floor(E, K, unit):
    return 4 * unit * E[:, None] * np.arange(2, K + 3)[None, :]


def tail(activation, K, q=1.0, derivative=False, **params):
    r"""Truncation tail :math:`T_K(q) = E[\phi(\sqrt q z)^2] - \sum_{k\le K} a_k(q)^2 \ge 0`.

    Closed-form family: exact second moment minus the partial sum, clipped at 0 (its rounding
    error, at most ``4 (K+2) eps E[phi^2]``, is added by :func:`mehler_bound` and
    :func:`dual_series`). Other activations: the quadrature of the squared residual
    ``(phi - sum_{k<=K} a_k h_k)^2``, non-negative by construction and without the
    cancellation of the subtraction. With ``derivative=True``, the same for ``phi'`` (its
    coefficients projected directly from the registry's derivative).

    Returns
    -------
    float or ndarray (m,)

    Examples
    --------
    >>> bool(abs(tail("relu", 1) - (0.5 - 1 / (2 * 3.141592653589793) - 0.25)) < 1e-15)
    True
    """
    act = _resolve(activation, params)
    K = _check_K(K)
    qa, scalar = _check_q(q)
    _, T, _ = _tails(act, K, qa, derivative)
    return _out(T[:, K].copy(), scalar)


def mehler_bound(activation, K, q1, q2, derivative=False, **params):
    r"""Bound on the Mehler truncation error, :math:`\sqrt{T_K(q_1) T_K(q_2)}` (plus rounding).

    For :math:`|\rho| \le 1`,
    :math:`|\sum_{k>K} a_k(q_1) a_k(q_2)\rho^k| \le \sqrt{T_K(q_1)T_K(q_2)}` (Cauchy-Schwarz).
    The closed-form family adds its rounding floor ``4 (K+2) eps E[phi^2]`` to each tail.

    Returns
    -------
    float or ndarray (broadcast shape of q1, q2)
    """
    act = _resolve(activation, params)
    K = _check_K(K)
    q1b, q2b = np.broadcast_arrays(np.asarray(q1, float), np.asarray(q2, float))
    qall, _ = _check_q(np.concatenate([q1b.ravel(), q2b.ravel()]), "q1, q2")
    uq, inv = np.unique(qall, return_inverse=True)
    _, T, floor = _tails(act, K, uq, derivative)
    t = T[:, K] + floor[:, K]
    n = q1b.size
    out = np.sqrt(t[inv[:n]] * t[inv[n:]]).reshape(q1b.shape)
    return out[()] if out.ndim == 0 else out


class DualSeries(NamedTuple):
    """Result of :func:`dual_series`: ``(nngp, ntk_dot, nngp_bound, dot_bound, K)``.

    ``nngp`` ~ E[phi(u) phi(v)], ``ntk_dot`` ~ E[phi'(u) phi'(v)], the bounds bound
    ``|truncated - exact|`` (truncation plus rounding), ``K`` the truncation order.
    Unpacks like the tuple it is.
    """

    nngp: np.ndarray
    ntk_dot: np.ndarray
    nngp_bound: np.ndarray
    dot_bound: np.ndarray
    K: int

    def __repr__(self):
        shape = np.shape(self.nngp)
        return (f"DualSeries(shape={shape}, K={self.K}, max nngp_bound="
                f"{float(np.max(self.nngp_bound)):.3g}, max dot_bound="
                f"{float(np.max(self.dot_bound)):.3g})")


def dual_series(activation, q1, q2, rho, K, **params):
    r"""Truncated Mehler series of the dual activation and of its derivative, with bounds.

    .. math:: E[\phi(u)\phi(v)] \approx \sum_{k=0}^K a_k(q_1)a_k(q_2)\rho^k, \quad
              E[\phi'(u)\phi'(v)] \approx \sum_{k=0}^K b_k(q_1)b_k(q_2)\rho^k

    for :math:`(u,v) \sim N(0, [[q_1, \rho\sqrt{q_1q_2}], [\cdot, q_2]])`. Vectorized: ``q1``,
    ``q2``, ``rho`` broadcast together; coefficients are computed once per distinct variance.

    Parameters
    ----------
    activation : str, callable or Activation
    q1, q2 : array_like, >= 0
    rho : array_like, in [-1, 1]
    K : int >= 0

    The derivative series uses coefficients projected directly from the registry's ``phi'``
    (exact for registered activations; for a callable without ``deriv=`` that is a central
    difference, ~1e-10), which :func:`derivative_coefficients` (the relation
    ``b_k = sqrt((k+1)/q) a_{k+1}``) cross-checks.

    Returns
    -------
    DualSeries
        ``(nngp, ntk_dot, nngp_bound, dot_bound, K)``, arrays of the broadcast shape. Bounds are
        :math:`\sqrt{T_K(q_1)T_K(q_2)}` plus a rounding allowance
        ``(K+1) 4 eps sqrt(E1 E2)``.

    Examples
    --------
    >>> s = dual_series("relu", 1.0, 1.0, 1.0, 200)
    >>> bool(abs(s.nngp - 0.5) <= s.nngp_bound)
    True
    """
    act = _resolve(activation, params)
    K = _check_K(K)
    q1b, q2b, rb = np.broadcast_arrays(np.asarray(q1, float), np.asarray(q2, float),
                                       np.asarray(rho, float))
    if not np.isfinite(rb).all() or (np.abs(rb) > 1).any():
        raise ValueError("rho must contain finite correlations in [-1, 1].")
    qall, _ = _check_q(np.concatenate([q1b.ravel(), q2b.ravel()]), "q1, q2")
    uq, inv = np.unique(qall, return_inverse=True)
    n = q1b.size
    i1, i2 = inv[:n], inv[n:]
    r = rb.ravel()
    powers = r[:, None] ** np.arange(K + 1)[None, :]
    res = []
    for derivative in (False, True):
        a, T, floor = _tails(act, K, uq, derivative)
        E = a[:, 0] ** 2 + T[:, 0]
        val = np.einsum("ik,ik,ik->i", a[i1], a[i2], powers)
        tk = T[:, K] + floor[:, K]
        bound = np.sqrt(tk[i1] * tk[i2]) + 4 * (K + 1) * _EPS * np.sqrt(E[i1] * E[i2])
        res += [val.reshape(q1b.shape), bound.reshape(q1b.shape)]
    return DualSeries(res[0], res[2], res[1], res[3], K)


class RowExpansions(NamedTuple):
    """Result of :func:`row_expansions`: ``(a, b, tail_a, tail_b)``.

    ``a``, ``b``: (m, K+1) coefficients of ``phi`` and ``phi'`` per variance; ``tail_a``,
    ``tail_b``: (m,) tails ``T_K`` including their rounding allowance, so that
    ``sqrt(tail_a[i] tail_a[j])`` bounds the truncation error of pair ``(i, j)``.
    """

    a: np.ndarray
    b: np.ndarray
    tail_a: np.ndarray
    tail_b: np.ndarray

    def __repr__(self):
        m, k1 = np.shape(self.a)
        return (f"RowExpansions(rows={m}, K={k1 - 1}, max tail_a={float(np.max(self.tail_a)):.3g},"
                f" max tail_b={float(np.max(self.tail_b)):.3g})")


def row_expansions(activation, K, q, **params):
    r"""Everything a per-pair Mehler engine needs for one layer, for every row's variance.

    For ``E[phi(u)phi(v)] ~ sum_k a_k(q_i) a_k(q_j) rho^k`` and
    ``E[phi'(u)phi'(v)] ~ sum_k b_k(q_i) b_k(q_j) rho^k``, with certified errors
    ``sqrt(tail_a[i] tail_a[j])`` and ``sqrt(tail_b[i] tail_b[j])`` (plus the evaluation's own
    rounding, ``~4 (K+1) eps sqrt(E_i E_j)``). Coefficients are computed once per distinct
    variance.

    Parameters
    ----------
    activation : str, callable or Activation
    K : int >= 0
    q : array_like (m,), >= 0

    Returns
    -------
    RowExpansions
        ``(a, b, tail_a, tail_b)`` with shapes (m, K+1), (m, K+1), (m,), (m,).

    Examples
    --------
    >>> r = row_expansions("tanh", 30, [0.5, 1.0])
    >>> r.a.shape, r.tail_a.shape
    ((2, 31), (2,))
    """
    act = _resolve(activation, params)
    K = _check_K(K)
    qa, _ = _check_q(q)
    uq, inv = np.unique(qa, return_inverse=True)
    out = []
    for derivative in (False, True):
        c, T, floor = _tails(act, K, uq, derivative)
        out.append((c[inv], (T[:, K] + floor[:, K])[inv]))
    return RowExpansions(out[0][0], out[1][0], out[0][1], out[1][1])


def truncation_order(activation, q, tol, kmax=400, derivative=None, **params):
    """Smallest ``K`` whose Mehler bound ``T_K(q)`` (worst over ``q``) is ``<= tol``.

    Since ``sqrt(T_K(q1) T_K(q2)) <= max(T_K(q1), T_K(q2))``, the returned ``K`` meets ``tol``
    for every pair of the given variances. ``derivative=None`` requires both the activation
    and its derivative series to meet ``tol``; ``False``/``True`` only one of them.

    Raises
    ------
    ValueError
        If no ``K <= kmax`` meets ``tol`` (e.g. relu, whose tail decays like ``K^{-3/2}``:
        use its closed form instead).

    Examples
    --------
    >>> truncation_order("identity", 1.0, 1e-12)
    1
    """
    act = _resolve(activation, params)
    qa, _ = _check_q(q)
    tol = check_positive_real(tol, "tol")
    kmax = _check_K(kmax, "kmax")
    uq = np.unique(qa)
    which = (False, True) if derivative is None else (bool(derivative),)
    worst = np.zeros(kmax + 1)
    for der in which:
        _, T, floor = _tails(act, kmax, uq, der, all_orders=True)
        worst = np.maximum(worst, np.max(T + floor, axis=0))
    ok = np.flatnonzero(worst <= tol)
    if ok.size == 0:
        raise ValueError(f"tol={tol:g} is not reachable with K <= kmax={kmax} for "
                         f"{act.name!r} (best bound {worst.min():.3g}).")
    return int(ok[0])


class GammaNTK(NamedTuple):
    """Result of :func:`gamma_ntk`: ``(gamma, error)`` with ``|gamma - exact| <= error``."""

    gamma: float
    error: float

    def __repr__(self):
        return f"GammaNTK(gamma={self.gamma:.15g}, error={self.error:.2g})"


def gamma_ntk(activation, alpha, K=None, tol=1e-14, q=1.0, **params):
    r"""The spurious-memorization constant :math:`\gamma_{NTK}` (Bombari & Mondelli 2024).

    .. math:: \gamma_{NTK} = \alpha\,\frac{\sum_{l\ge1}\mu_l'^2\alpha^l}{\sum_{l\ge1}\mu_l'^2},

    :math:`\mu'_l = b_l(q)` the Hermite coefficients of :math:`\phi'` (``q = 1``: inputs
    normalized to ``|z|^2 = d``). ``alpha`` in [0, 1] is the **spurious-feature fraction**: a
    sample ``z = [x, y]`` is split into a core part ``x`` and a spurious part ``y`` of
    dimension ``d_y = alpha d``; ``alpha`` is the correlation ``<z, z^s>/d`` between a sample
    and its spurious copy ``z^s = [x', y]`` (Bombari & Mondelli 2024; docs/conventions.md,
    section 6).

    Both sums are evaluated exactly up to ``K`` and the rest is bounded: the denominator
    ``D = T'_0 = E[phi'^2] - b_0^2`` is known, the numerator's tail lies in
    ``[0, alpha^{K+1} T'_K]``. The midpoint is returned with its error.

    Returns
    -------
    GammaNTK
        ``(gamma, error)`` (a named tuple of floats, unpacks as before), with
        ``|gamma - exact| <= error``.

    Examples
    --------
    >>> g, err = gamma_ntk("identity", 0.5)   # phi' = 1: mu'_l = 0 for l >= 1 -> 0/0
    Traceback (most recent call last):
    ...
    ValueError: gamma_ntk: phi' has no Hermite coefficient of order >= 1 (phi is affine); gamma_NTK is undefined.
    """
    act = _resolve(activation, params)
    alpha = check_positive_real(alpha, "alpha", allow_zero=True)
    if alpha > 1:
        raise ValueError(f"alpha must be in [0, 1] (the spurious-feature fraction), got "
                         f"{alpha!r}.")
    qa, _ = _check_q(q)
    if qa.size != 1:
        raise ValueError("gamma_ntk: q must be a scalar variance.")
    fam = _closed_family(act, derivative=True)
    if K is None:
        # alpha^(K+1) <= tol is enough, but for alpha near 1 that K is large (6.9e3 at
        # 0.999 for tol 1e-3); the tail term alpha^(K+1) T'_K decays with T'_K too: take the
        # smallest K <= cap whose tail term is <= tol D (quadrature paths: cap 600)
        Kcap = 200 if alpha >= 1 else int(min(2000, max(10, math.ceil(
            math.log(max(tol, 1e-300)) / math.log(max(alpha, 1e-300))))))
        if fam is None:
            Kcap = min(Kcap, _K_MAX_QUADRATURE)
        b, T, floor = _tails(act, Kcap, qa, derivative=True, all_orders=True)
        term = alpha ** (np.arange(Kcap + 1) + 1.0) * (T[0] + floor[0])
        ok = np.flatnonzero(term <= tol * max(T[0, 0], 1e-300))
        K = max(1, int(ok[0])) if ok.size else Kcap
        b, T, floor = b[0, :K + 1], T[0, :K + 1], floor[0, K]
    else:
        K = check_positive_int(K, "K", minimum=1)
        b, T, floor = _tails(act, K, qa, derivative=True)
        b, T, floor = b[0], T[0], floor[0, K]
    D = T[0]
    if D <= floor:
        raise ValueError("gamma_ntk: phi' has no Hermite coefficient of order >= 1 (phi is "
                         "affine); gamma_NTK is undefined.")
    ls = np.arange(1, K + 1)
    num = float(np.sum(b[1:] ** 2 * alpha ** ls))
    rest = alpha ** (K + 1) * (T[K] + floor)
    gamma = alpha * (num + 0.5 * rest) / D
    err = alpha * (0.5 * rest) / D + alpha * (floor / D) * (num / D + 1.0)
    return GammaNTK(float(gamma), float(err))
