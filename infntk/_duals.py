"""Closed-form dual activations, compiled: the one place where each closed form is defined.

For (u, v) ~ N(0, [[q1, s], [s, q2]]) a dual returns

* ``k  = E[phi(u) phi(v)]`` and ``kd = E[phi'(u) phi'(v)]``,
* ``kA = sqrt(k11 k22) - k`` and ``kB = sqrt(k11 k22) + k`` (``k11 = E[phi(u)^2]``), the two
  quantities that vanish for identical (resp. antipodal) features, computed without
  subtracting nearly equal numbers wherever the closed form allows it.

The pair state handed in is ``(q1, q2, m, A, B)`` with ``m = sqrt(q1 q2)``,
``A = m - s >= 0`` and ``B = m + s >= 0``; the correlation is ``rho = (B - A) / (2 m)`` and
the angle ``theta = arccos(rho) = 2 atan2(sqrt(A), sqrt(B))``, which is accurate to a few ulp
*relative* to both ``theta`` and ``pi - theta`` as long as ``A`` and ``B`` are.

Conventions
-----------
* Degenerate rows (``m = 0``, a zero input with no bias): the correlation is 0/0 and is
  defined as 0 (``theta = pi / 2``), as if ``u`` and ``v`` were independent (docs/conventions.md).
  Positively homogeneous activations of degree 0 (step, sign, and the derivative of the
  ReLU family) are evaluated in the limit ``q -> 0+``, e.g. ``E[step(u)^2] = 1/2`` for every
  ``q >= 0``; this is the value the Hermite series gives.
* step and sign: ``phi' = 0`` almost everywhere, so ``kd = 0``.

Families (codes from :mod:`infntk.activations`)
-----------------------------------------------
ABRELU(a, b)  phi = b max(x, 0) + a min(x, 0)   (relu, leaky_relu, abs, identity)
    k = sqrt(q1 q2) N (cos t + c g(t) / pi),  N = (a^2 + b^2) / 2,  c = (a - b)^2 / (2 N),
    g(t) = sin t - t cos t;   kd = ABSTEP(a, b) below.        (Cho & Saul 2009)
ABSTEP(a, b)  phi = b 1(x > 0) + a 1(x < 0)     (step, sign)
    k = (a - b)^2 (pi - t) / (2 pi) + a b
ARCCOS(n)     phi = max(x, 0)^n, n >= 2
    k = (q1 q2)^(n/2) J_n(t) / (2 pi),  kd = n^2 (q1 q2)^((n-1)/2) J_{n-1}(t) / (2 pi)
ERF           k = (2/pi) asin(2 s / sqrt((1 + 2 q1)(1 + 2 q2))),
              kd = (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 s^2)          (Williams 1997)
SIN, COS      k = exp(-(q1 + q2)/2) sinh(s) resp. cosh(s); kd swaps the two
GAUSSIAN      phi = exp(-x^2/2): k = 1 / sqrt((1 + q1)(1 + q2) - s^2),
              kd = s / ((1 + q1)(1 + q2) - s^2)^(3/2)
GELU          phi = x Phi(x): see :func:`_gelu`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._vmath import atan2_pos_recip, atan_ratio, atan_unit  # noqa: F401  (atan_unit: conv engine's)
from ._vmath import exp as vexp
from ._vmath import fma as vfma
from ._vmath import exp_expm1 as vexp_expm1
from ._vmath import expm1 as vexpm1
from .activations import (FAMILY_ABRELU, FAMILY_ABSTEP, FAMILY_ARCCOS, FAMILY_COS, FAMILY_ERF,
                          FAMILY_GAUSSIAN, FAMILY_GELU, FAMILY_SIN)

PI = math.pi
_HALF_PI = 0.5 * math.pi
# below this, products of two such numbers (variances, gaps) are safe in float64
_BIG = 1e150

# Series of g(x) = sin x - x cos x = sum_{k>=1} (-1)^(k+1) 2k x^(2k+1) / (2k+1)!, used for
# x < 0.5 where the direct form cancels; 8 terms reach 1e-18 relative at x = 0.5.
_G_SERIES = tuple(((-1.0) ** (k + 1)) * 2 * k / math.factorial(2 * k + 1) for k in range(1, 9))


@njit(cache=True, inline="always", error_model="numpy")
def g_small(x, sin_x, cos_x):
    """sin x - x cos x for 0 <= x <= pi/2, accurate to a few ulp (relative).

    ``sin_x`` and ``cos_x`` are used for x >= 0.5 only, where the subtraction loses at most
    a factor 12.
    """
    if x < 0.5:
        x2 = x * x
        acc = _G_SERIES[7]
        acc = acc * x2 + _G_SERIES[6]
        acc = acc * x2 + _G_SERIES[5]
        acc = acc * x2 + _G_SERIES[4]
        acc = acc * x2 + _G_SERIES[3]
        acc = acc * x2 + _G_SERIES[2]
        acc = acc * x2 + _G_SERIES[1]
        acc = acc * x2 + _G_SERIES[0]
        return acc * x2 * x
    return sin_x - x * cos_x


# atan on [0, 1] without a libm call (so that loops over pairs can be vectorized): reduce to
# |z| <= tan(pi/16) around the centres 0, tan(pi/8), 1 and sum 13 Taylor terms
# (truncation < 2e-17 relative). Tested against numpy.arctan to <= 2 ulp.
@njit(cache=True, inline="always", error_model="numpy")
def small_angle(A, B):
    """(t, sqrt(A) sqrt(B)) with t = min(theta, pi - theta) = 2 atan(sqrt(min(A, B) / max(A, B))).

    Branch-free so that loops over pairs vectorize: ``2 atan_ratio(lo, hi)`` with
    ``lo, hi = sorted(sqrt(A), sqrt(B))`` (see :func:`atan_ratio`). Accurate to a few ulp relative to t; ``t = 0`` for a degenerate pair (``A = B = 0``).
    """
    sA = math.sqrt(A)
    sB = math.sqrt(B)
    lo = sA if sA < sB else sB
    hi = sB if sA < sB else sA
    return 2.0 * atan_ratio(lo, hi), sA * sB


@njit(cache=True, inline="always", error_model="numpy")
def angles(m, A, B):
    """(theta, pi - theta) from the pair state; (pi/2, pi/2) for a degenerate pair.

    The smaller of the two is computed directly (relative accuracy, :func:`small_angle`),
    the other as its complement (at least pi/2, so also accurate to a couple of ulp).
    """
    t, _ = small_angle(A, B)
    theta = t if A <= B else PI - t
    phi = PI - t if A <= B else t
    if m == 0.0:
        return _HALF_PI, _HALF_PI
    return theta, phi


@njit(cache=True, inline="always", error_model="numpy")
def _g_series(x):
    """(sin x - x cos x) / x^3 for 0 <= x < 0.5 (8 terms, 1e-18 relative at x = 0.5), in
    Estrin's scheme."""
    y = x * x
    y2 = y * y
    e0 = _G_SERIES[0] + _G_SERIES[1] * y
    e1 = _G_SERIES[2] + _G_SERIES[3] * y
    e2 = _G_SERIES[4] + _G_SERIES[5] * y
    e3 = _G_SERIES[6] + _G_SERIES[7] * y
    return (e0 + e1 * y2) + (e2 + e3 * y2) * (y2 * y2)


@njit(cache=True, inline="always", error_model="numpy")
def abstep_dual(a, b, theta, phi):
    """k, kA, kB of phi = b 1(x>0) + a 1(x<0) (also the kd of the ABReLU family)."""
    c = (a - b) * (a - b) / (2.0 * PI)
    k = c * phi + a * b
    kA = c * theta
    kB = 0.5 * (a + b) * (a + b) + c * phi
    return k, kA, kB


@njit(cache=True, error_model="numpy")
def arccos_J(n, theta, phi):
    """Cho & Saul's J_n(theta) for n = 1, 2, 3 (n = 0 is pi - theta)."""
    ct = math.cos(theta)
    st = math.sin(theta)
    if n == 0:
        return phi
    if n == 1:
        return st + phi * ct
    if n == 2:
        return 3.0 * st * ct + phi * (1.0 + 2.0 * ct * ct)
    return 4.0 * st * st * st + 15.0 * st * ct * ct + phi * (9.0 * st * st * ct + 15.0 * ct * ct * ct)


@njit(cache=True, error_model="numpy")
def arccos_J0(n):
    """J_n(0) = pi (2n - 1)!!."""
    r = PI
    for j in range(1, n + 1):
        r *= 2 * j - 1
    return r


@njit(cache=True, error_model="numpy")
def _erf_k(q1, q2, r1, r2, A, B):
    """(2/pi) asin(beta), beta = 2 s / sqrt((1 + 2 q1)(1 + 2 q2)), r = sqrt(q).

    |beta| <= 1/2: directly. Otherwise through 1 -+ beta, formed without cancellation as
    (2 (r1 - r2)^2 / (D + 1 + 2 r1 r2) + 1 + 2 A) / D  (resp. B for 1 + beta), and
    asin(beta) = +-(pi/2 - 2 asin(sqrt((1 -+ beta)/2))).
    """
    D = math.sqrt(1.0 + 2.0 * q1) * math.sqrt(1.0 + 2.0 * q2)
    beta = (B - A) / D
    if abs(beta) <= 0.5:
        return (2.0 / PI) * math.asin(beta)
    dq = r1 - r2
    gap = 2.0 * dq * dq / (D + 1.0 + 2.0 * r1 * r2)
    if beta > 0.0:
        return 1.0 - (4.0 / PI) * math.asin(math.sqrt(0.5 * (gap + 1.0 + 2.0 * A) / D))
    return (4.0 / PI) * math.asin(math.sqrt(0.5 * (gap + 1.0 + 2.0 * B) / D)) - 1.0


# _gelu's plain form multiplies q1 q2 Delta^2 (Delta^2 up to ~ q1 q2): safe below this
_GELU_PLAIN = 1e75


@njit(cache=True, error_model="numpy")
def _gelu(q1, q2, s, sAB):
    """E[u Phi(u) v Phi(v)] and E[phi'(u) phi'(v)] for GELU phi(x) = x Phi(x) (exact).

    With P = (1 + q1)(1 + q2) and Delta^2 = P - s^2 = 1 + q1 + q2 + (q1 q2 - s^2):
    F = s/4 + [s atan2(s, Delta) + (s^2 + q1 q2 Delta^2) / (P Delta)] / (2 pi),
    G = dF/ds = 1/4 + atan2(s, Delta)/(2 pi) + s/(2 pi Delta) [(2 + q1 + q2)/P + 1/Delta^2].
    Derived by Price's theorem (docs/closed_forms.md); as in neural-tangents' exact Gelu.
    ``sAB = sqrt(q1 q2 - s^2)``; evaluated in scaled form (``Delta`` by ``hypot``, the
    ratios ``q/(1 + q)``), so that no product of variances under- or overflows.
    """
    if q1 < _GELU_PLAIN and q2 < _GELU_PLAIN and sAB < _GELU_PLAIN:   # the plain form is safe
        P = (1.0 + q1) * (1.0 + q2)
        D2 = 1.0 + q1 + q2 + sAB * sAB
        Dl = math.sqrt(D2)
        at = math.atan2(s, Dl)
        F = 0.25 * s + (s * at + (s * s + q1 * q2 * D2) / (P * Dl)) / (2.0 * PI)
        G = 0.25 + at / (2.0 * PI) + s / (2.0 * PI * Dl) * ((2.0 + q1 + q2) / P + 1.0 / D2)
        return F, G
    c1 = 1.0 + q1
    c2 = 1.0 + q2
    Dl = math.hypot(math.sqrt(1.0 + q1 + q2), sAB)
    at = math.atan2(s, Dl)
    t = (s / math.sqrt(c1)) / math.sqrt(c2)          # s / sqrt(P)
    F = 0.25 * s + (s * at + t * t / Dl + (q1 / c1) * (q2 / c2) * Dl) / (2.0 * PI)
    iD = 1.0 / Dl
    G = 0.25 + at / (2.0 * PI) + (s * iD) / (2.0 * PI) * (1.0 / c1 + 1.0 / c2 + iD * iD)
    return F, G


@njit(cache=True, error_model="numpy")
def diag_dual(family, p0, p1, q):
    """(k11, kd11) = (E[phi(u)^2], E[phi'(u)^2]) for u ~ N(0, q)."""
    # q = 0 is a degenerate row: correlation 0 with itself too (docs/conventions.md), so that the
    # diagonal agrees with the Gram matrix; it matters where phi' (or phi) has a kink at 0.
    if family == FAMILY_ABRELU:
        if q == 0.0:
            kd, _, _ = abstep_dual(p0, p1, _HALF_PI, _HALF_PI)
            return 0.0, kd
        return 0.5 * (p0 * p0 + p1 * p1) * q, 0.5 * (p0 * p0 + p1 * p1)
    if family == FAMILY_ABSTEP:
        if q == 0.0:
            k, _, _ = abstep_dual(p0, p1, _HALF_PI, _HALF_PI)
            return k, 0.0
        return 0.5 * (p0 * p0 + p1 * p1), 0.0
    if family == FAMILY_ARCCOS:
        n = int(p0)
        return q ** n * arccos_J0(n) / (2.0 * PI), n * n * q ** (n - 1) * arccos_J0(n - 1) / (2.0 * PI)
    if family == FAMILY_ERF:
        r = math.sqrt(q)
        return _erf_k(q, q, r, r, 0.0, 2.0 * q), (4.0 / PI) / math.sqrt(1.0 + 4.0 * q)
    if family == FAMILY_SIN:
        return -0.5 * math.expm1(-2.0 * q), 0.5 * (1.0 + math.exp(-2.0 * q))
    if family == FAMILY_COS:
        return 0.5 * (1.0 + math.exp(-2.0 * q)), -0.5 * math.expm1(-2.0 * q)
    if family == FAMILY_GAUSSIAN:
        r = 1.0 / math.sqrt(1.0 + 2.0 * q)
        return r, q * r * r * r
    if family == FAMILY_GELU:
        return _gelu(q, q, q, 0.0)
    return math.nan, math.nan


@njit(cache=True, inline="always", error_model="numpy")
def kinked_state(step, a, b, A, B, skk):
    """(k, kd, kA, kB) of the ReLU family (``step`` False) or the step family (True).

    One branch-free body for both, from the gaps (A, B) alone (no ``m = sqrt(q1 q2)``):
    ``step`` selects the outputs, so a loop over pairs with a loop-invariant ``step``
    vectorizes, and both families share one compiled loop. ``skk = sqrt(k11 k22)`` is used
    by the step family's degenerate pairs only.

    ReLU family, phi = b max(x, 0) + a min(x, 0): the output correlation is
    ``rho' = cos theta + c g(theta) / pi`` with ``g(x) = sin x - x cos x`` (:func:`g_small`),
    N = (a^2 + b^2) / 2, c = (a - b)^2 / (2 N); ``1 -+ rho'`` are formed multiplied through
    by m, so that no division by m is needed: with ``t = min(theta, pi - theta)``,
    ``sqrt(A B) = m sin(theta)``, ``B - A = 2 m cos(theta)``,
    ``m g(t) = sqrt(A B) - t |B - A| / 2`` (the series ``m t^3 G(t^2)`` below t = 0.5, with
    ``m = (A + B) / 2``):

    * theta <= pi/2: ``kA = N (A - c m g(t) / pi)``, ``kB = N (B + c m g(t) / pi)``;
    * theta > pi/2:  ``kA = N (((2 - c) A + c B) / 2 - c m g(t) / pi)``,
      ``kB = N (B + c m g(theta) / pi)`` with ``m g(theta) = sqrt(A B) + theta (A - B) / 2``;

    each a sum of non-negative terms or a difference that cannot cancel (``c g / pi`` is
    at most half of what it is subtracted from). ``k = (kB - kA) / 2``; ``kd`` is the step
    family's k at the same angles.

    Step family, phi = b 1(x > 0) + a 1(x < 0): ``k = (a - b)^2 (pi - theta) / (2 pi) + a b``
    (:func:`abstep_dual`), ``kd = 0``.

    A degenerate pair (``A = B = 0``, i.e. ``m = 0``) has the angle pi/2
    (docs/conventions.md): k = kA = kB = 0 for the ReLU family, gaps against ``skk`` for
    the step family.
    """
    t, sab = small_angle(A, B)
    d = B - A
    big = PI - t
    acute = A <= B
    degenerate = A + B == 0.0
    theta = t if acute else big
    theta = _HALF_PI if degenerate else theta
    phi = big if acute else t
    phi = _HALF_PI if degenerate else phi
    ks, kAs, kBs = abstep_dual(a, b, theta, phi)
    if step:
        kAs = skk - ks if degenerate else kAs
        kBs = skk + ks if degenerate else kBs
        return ks, 0.0, kAs, kBs
    N = 0.5 * (a * a + b * b)
    c = (a - b) * (a - b) / (2.0 * N) if N > 0.0 else 0.0
    ad = d if acute else -d
    mgs = (0.5 * (A + B)) * (t * t * t) * _g_series(t)
    mgt = mgs if t < 0.5 else sab - 0.5 * t * ad
    cg = (c / PI) * mgt
    mgb = sab + 0.5 * big * ad                # m g(theta) for theta = pi - t > pi/2
    omr = A - cg if acute else 0.5 * ((2.0 - c) * A + c * B) - cg
    opr = B + cg if acute else B + (c / PI) * mgb
    kA = N * omr
    kB = N * opr
    return 0.5 * (kB - kA), ks, kA, kB


# T(x) = x - sin x cos x = sum_{k>=1} (-1)^(k+1) 4^k x^(2k+1) / (2k+1)!, for x < 0.5
_T_SERIES = tuple(((-1.0) ** (k + 1)) * 4.0 ** k / math.factorial(2 * k + 1) for k in range(1, 10))


@njit(cache=True, inline="always", error_model="numpy")
def t_small(x, sin_x, cos_x):
    """x - sin x cos x for 0 <= x <= pi/2, relative accuracy (series below 0.5)."""
    if x < 0.5:
        x2 = x * x
        acc = _T_SERIES[8]
        for i in range(7, -1, -1):
            acc = acc * x2 + _T_SERIES[i]
        return acc * x2 * x
    return x - sin_x * cos_x


@njit(cache=True, inline="always", error_model="numpy")
def arccos_J_complement(n, m, A, B, theta, phi):
    """J_n(0) - J_n(theta) >= 0 without cancellation for small theta (n = 2, 3)."""
    sin_t = math.sqrt(A / m) * math.sqrt(B / m)
    cos_t = 0.5 * (B / m - A / m)
    if theta > 1.0:
        return arccos_J0(n) - arccos_J(n, theta, phi)
    s2 = sin_t * sin_t
    if n == 2:
        return 2.0 * phi * s2 + 3.0 * t_small(theta, sin_t, cos_t)
    V = A / m
    S = g_small(theta, sin_t, cos_t)
    return 15.0 * (PI * V - S) + 11.0 * s2 * sin_t + 6.0 * phi * s2 * cos_t


@njit(cache=True, error_model="numpy")
def arccos_pair(n, m, A, B):
    """(k, kd, kA, kB) of phi = max(x, 0)^n, n >= 2 (Cho & Saul 2009)."""
    theta, phi = angles(m, A, B)
    Jt = arccos_J(n, theta, phi)
    J0 = arccos_J0(n)
    mn = m ** n / (2.0 * PI)
    kd = n * n * m ** (n - 1) * arccos_J(n - 1, theta, phi) / (2.0 * PI)
    if m == 0.0:
        return 0.0, kd, 0.0, 0.0
    return mn * Jt, kd, mn * arccos_J_complement(n, m, A, B, theta, phi), mn * (J0 + Jt)


@njit(cache=True, error_model="numpy")
def smooth_kkd(family, q1, q2, r1, r2, A, B):
    """(k, kd) of the non-homogeneous closed forms at the pair state (q, r = sqrt(q), A, B)."""
    s = 0.5 * (B - A)
    sAB = math.sqrt(A) * math.sqrt(B)          # sqrt(q1 q2 - s^2), never the product
    if family == FAMILY_ERF:
        k = _erf_k(q1, q2, r1, r2, A, B)
        if sAB < _BIG:
            kd = (4.0 / PI) / math.sqrt(1.0 + 2.0 * (q1 + q2) + 4.0 * (sAB * sAB))
        else:
            kd = (4.0 / PI) / math.hypot(math.sqrt(1.0 + 2.0 * (q1 + q2)), 2.0 * sAB)
    elif family == FAMILY_SIN or family == FAMILY_COS:
        dq = r1 - r2
        em = math.exp(-0.5 * (dq * dq + 2.0 * A))
        ep = math.exp(-0.5 * (dq * dq + 2.0 * B))
        # em - ep = -em expm1(-2 s): no cancellation at small variance (s = (B - A) / 2)
        if B >= A:
            dif = -0.5 * em * math.expm1(A - B)
        else:
            dif = 0.5 * ep * math.expm1(B - A)
        if family == FAMILY_SIN:
            k = dif
            kd = 0.5 * (em + ep)
        else:
            k = 0.5 * (em + ep)
            kd = dif
    elif family == FAMILY_GAUSSIAN:
        if sAB < _BIG:
            det = 1.0 + q1 + q2 + sAB * sAB
            k = 1.0 / math.sqrt(det)
            kd = s * k / det
        else:
            k = 1.0 / math.hypot(math.sqrt(1.0 + q1 + q2), sAB)     # det^(-1/2)
            kd = ((s * k) * k) * k
    elif family == FAMILY_GELU:
        k, kd = _gelu(q1, q2, s, sAB)
    else:
        k = math.nan
        kd = math.nan
    return k, kd


# 4-point Gauss-Legendre rule on [-1, 1]
_GL_X = (-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526)
_GL_W = (0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538)
# 8-point rule on [-1, 1]
_GL8_X = (-0.9602898564975363, -0.7966664774136267, -0.5255324099163290, -0.1834346424956498,
          0.1834346424956498, 0.5255324099163290, 0.7966664774136267, 0.9602898564975363)
_GL8_W = (0.1012285362903763, 0.2223810344533745, 0.3137066458778873, 0.3626837833783620,
          0.3626837833783620, 0.3137066458778873, 0.2223810344533745, 0.1012285362903763)
# below this gap (relative to min(m, 1), the analyticity radius of the duals in s) the
# angular part of a gap is integrated (GL4 error < 1e-14 relative); above it, subtracted.
_GAP_QUAD = 0.01
# below this |log(r1/r2)|/2 the radial gap is taken from its even expansion in delta
_RADIAL_D0 = 1e-3


@njit(cache=True, error_model="numpy")
def _gap_integral(family, q1, q2, r1, r2, m, g, upper):
    """int of kd = dk/ds (Price) over the gap g = m - s (upper) or s + m (lower)."""
    acc = 0.0
    for i in range(4):
        h = 0.5 * g * (1.0 + _GL_X[i])       # distance from the end point +-m
        if upper:
            _, kd = smooth_kkd(family, q1, q2, r1, r2, h, 2.0 * m - h)
        else:
            _, kd = smooth_kkd(family, q1, q2, r1, r2, 2.0 * m - h, h)
        acc += _GL_W[i] * kd
    return 0.5 * g * acc


@njit(cache=True, error_model="numpy")
def _radial_direct(family, a, b):
    """sqrt(E[phi(a z)^2] E[phi(b z)^2]) - E[phi(a z) phi(b z)] by subtraction."""
    k11, _ = smooth_kkd(family, a * a, a * a, a, a, 0.0, 2.0 * a * a)
    k22, _ = smooth_kkd(family, b * b, b * b, b, b, 0.0, 2.0 * b * b)
    k12, _ = smooth_kkd(family, a * a, b * b, a, b, 0.0, 2.0 * a * b)
    return math.sqrt(k11) * math.sqrt(k22) - k12


@njit(cache=True, error_model="numpy")
def _radial_gap(family, r1, r2, sk1, sk2):
    """R = sqrt(k11 k22) - k(q1, q2, s = sqrt(q1 q2)) >= 0, the gap of perfectly correlated
    inputs of different scales; 0 for r1 = r2 and even in delta = log(r1/r2)/2.

    For |delta| < 1e-3 it is R(delta0) (delta/delta0)^2 corrected by Richardson from
    R(2 delta0) (relative error ~1e-11); otherwise by subtraction (relative error < 1e-10).
    """
    if r1 == r2:
        return 0.0
    if r1 == 0.0 or r2 == 0.0:
        return sk1 * sk2 - smooth_kkd(family, r1 * r1, r2 * r2, r1, r2, 0.0, 0.0)[0]
    delta = 0.5 * math.log(r1 / r2)
    if abs(delta) >= _RADIAL_D0:
        return sk1 * sk2 - smooth_kkd(family, r1 * r1, r2 * r2, r1, r2, 0.0,
                                      2.0 * r1 * r2)[0]
    c = math.sqrt(r1) * math.sqrt(r2)
    e1 = math.exp(_RADIAL_D0)
    e2 = math.exp(2.0 * _RADIAL_D0)
    R1 = _radial_direct(family, c * e1, c / e1)
    R2 = _radial_direct(family, c * e2, c / e2)
    # R = C2 d^2 + C4 d^4:  C2 d0^2 = (16 R1 - R2) / 12, C4 d0^4 = (R2 - 4 R1) / 12
    t = (delta / _RADIAL_D0) ** 2
    return t * ((16.0 * R1 - R2) + t * (R2 - 4.0 * R1)) / 12.0


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# x - atan x = sum_{k>=1} (-1)^(k+1) x^(2k+1) / (2k+1), for x < 0.5 (25 terms: < 1e-17)
_XATAN = tuple(((-1.0) ** (k + 1)) / (2 * k + 1) for k in range(1, 26))


@njit(cache=True, error_model="numpy")
def _gelu_eps(q):
    """eps(q) = 1/2 - E[phi(u)^2] / q for GELU, u ~ N(0, q), q > 0, to a few ulp.

    eps = [atan(e/q) - 2q/((1+q) e)] / (2 pi), e = sqrt(1 + 2q) (from the diagonal of
    :func:`_gelu` with asin(q/(1+q)) = pi/2 - atan(e/q)); for q >= 1 as
    [(1 + 3q)/(q (1+q) e) - (x - atan x)] / (2 pi), x = e/q, which has no cancellation
    (eps ~ q^(-3/2): GELU becomes homogeneous at large variance).
    """
    if q < 1.0:
        return 0.5 - _gelu(q, q, q, 0.0)[0] / q
    e = math.sqrt(1.0 + 2.0 * q)
    x = e / q
    if x < 0.5:
        x2 = x * x
        acc = _XATAN[24]
        for k in range(23, -1, -1):
            acc = acc * x2 + _XATAN[k]
        xa = acc * x2 * x
    else:
        xa = x - math.atan(x)
    return ((3.0 + 1.0 / q) / ((1.0 + q) * e) - xa) / (2.0 * PI)


@njit(cache=True, inline="always", error_model="numpy")
def _gelu_kappa_slope(q):
    """d/dq (E[phi(u)^2] / q) for GELU = [1/(1+2q) + 2/(1+q)] / (2 pi (1+q) sqrt(1+2q)) > 0."""
    return (1.0 / (1.0 + 2.0 * q) + 2.0 / (1.0 + q)) / (2.0 * PI * (1.0 + q) * math.sqrt(1.0 + 2.0 * q))


@njit(cache=True, error_model="numpy")
def _gelu_k11_slope(q):
    """d/dq E[phi(u)^2], u ~ N(0, q), for GELU: kappa + q kappa' = 1/2 - eps(q) + q kappa'(q)
    (no asin near 1, whose argument's rounding would cost sqrt(q) ulp)."""
    return 0.5 - _gelu_eps(q) + q * _gelu_kappa_slope(q)


@njit(cache=True, inline="always", error_model="numpy")
def _phi_tail_diff(a2, w):
    """Phi(-a2) - Phi(-a2 - w) = int_{a2}^{a2+w} phi_N for a2, w >= 0, relative accuracy."""
    a1 = a2 + w
    if w < 0.05:
        acc = 0.0
        for i in range(4):
            u = a2 + 0.5 * w * (1.0 + _GL_X[i])
            acc += _GL_W[i] * math.exp(-0.5 * u * u)
        return 0.5 * w * acc * _INV_SQRT_2PI
    if w < 0.5:
        acc = 0.0
        for i in range(8):
            u = a2 + 0.5 * w * (1.0 + _GL8_X[i])
            acc += _GL8_W[i] * math.exp(-0.5 * u * u)
        return 0.5 * w * acc * _INV_SQRT_2PI
    return 0.5 * (math.erfc(a2 * _SQRT_HALF) - math.erfc(a1 * _SQRT_HALF))


@njit(cache=True, error_model="numpy")
def diag_diff(family, q1, q2, D):
    """``E[phi(u)^2] - E[phi(v)^2]`` for u ~ N(0, q1), v ~ N(0, q2), given ``D = q1 - q2``.

    ``D`` is carried per pair (it is accurate where ``q1 - q2`` formed from the rounded
    per-row variances is not, for nearly identical rows), and the difference is formed without
    cancellation: sin and cos through ``expm1``, gaussian and erf by conjugates, GELU by an
    8-point Gauss-Legendre rule on the slope when ``|D| < 0.1 (1 + min(q))`` (the slope is
    analytic on that scale), by subtraction otherwise. The non-smooth families return
    ``nan`` (they do not use it).
    """
    if family == FAMILY_SIN or family == FAMILY_COS:
        if D >= 0.0:
            v = -0.5 * math.exp(-2.0 * q2) * math.expm1(-2.0 * D)
        else:
            v = 0.5 * math.exp(-2.0 * q1) * math.expm1(2.0 * D)
        return v if family == FAMILY_SIN else -v
    if family == FAMILY_GAUSSIAN:
        a = math.sqrt(1.0 + 2.0 * q1)
        b = math.sqrt(1.0 + 2.0 * q2)
        return -2.0 * D / (a * b * (a + b))
    if D == 0.0:
        return 0.0
    if family == FAMILY_ERF:
        if q1 >= _GELU_PLAIN or q2 >= _GELU_PLAIN:     # q1 q2 would overflow below
            return diag_dual(family, 0.0, 0.0, q1)[0] - diag_dual(family, 0.0, 0.0, q2)[0]
        # (2/pi) (atan u1 - atan u2), u = 2 q / sqrt(1 + 4 q)
        e1 = math.sqrt(1.0 + 4.0 * q1)
        e2 = math.sqrt(1.0 + 4.0 * q2)
        u1 = 2.0 * q1 / e1
        u2 = 2.0 * q2 / e2
        du = 4.0 * D * (q1 + q2 + 4.0 * q1 * q2) / ((2.0 * q1 * e2 + 2.0 * q2 * e1) * e1 * e2)
        return (2.0 / PI) * math.atan(du / (1.0 + u1 * u2))
    if family == FAMILY_GELU:
        if abs(D) < 0.1 * (1.0 + min(q1, q2)):
            # the slope's singularities (q = -1/2, -1) are >= 10 half-lengths away: GL8 error
            # < 20^-16 relative
            acc = 0.0
            for i in range(8):
                acc += _GL8_W[i] * _gelu_k11_slope(q2 + 0.5 * D * (1.0 + _GL8_X[i]))
            return 0.5 * D * acc
        return _gelu(q1, q1, q1, 0.0)[0] - _gelu(q2, q2, q2, 0.0)[0]
    return math.nan


@njit(cache=True, inline="always", error_model="numpy")
def _sinh_minus(x):
    """sinh x - x for x >= 0, relative accuracy (series below 1)."""
    if x < 1.0:
        x2 = x * x
        t = x * x2 / 6.0
        acc = t
        for k in range(2, 12):
            t *= x2 / ((2 * k) * (2 * k + 1))
            acc += t
        return acc
    return math.sinh(x) - x


@njit(cache=True, error_model="numpy")
def _radial_gap_exact(family, q1, q2, r1, r2, D, sk1, sk2):
    """R = sqrt(k11 k22) - k(q1, q2, sqrt(q1 q2)) of sin, cos, gaussian from ``D = q1 - q2``.

    R = (k11 k22 - k12^2) / (sqrt(k11 k22) + k12), the numerator in closed form (x and y below
    are (r1 + r2)^2 / 2 and (r1 - r2)^2 / 2, t = |D| / 2 = sqrt(x y), S = q1 + q2 = x + y):

    * sin: ``e^-S [sinh x sinh y - sinh^2 t]`` =
      ``e^-S [(sinh x - x) sinh y + x (sinh y - y) - (sinh t - t)(sinh t + t)]``,
    * cos: ``e^-S [sinh x sinh y + sinh^2 t]``,
    * gaussian: ``D^2 / ((1 + S + a b) a b (1 + S))``, ``a b = sqrt((1 + 2 q1)(1 + 2 q2))``;

    called for sin and cos when ``|r1 - r2| < 0.5 (r1 + r2)`` (then ``t <= x / 2`` and
    ``y <= x / 4``: nothing overflows below ``x = 700``, above it only ``e^-S sinh x sinh y``
    is left, and the sin terms of opposite sign are in ratio ``2 y / x <= 1/2``). Relative
    accuracy ~1e-15 (tests/test_radial_gap.py).
    """
    if family == FAMILY_GAUSSIAN:
        ab = math.sqrt(1.0 + 2.0 * q1) * math.sqrt(1.0 + 2.0 * q2)
        S1 = 1.0 + q1 + q2
        num = (D / (S1 + ab)) * (D / (ab * S1))
        return num / (sk1 * sk2 + 1.0 / math.sqrt(S1))
    dr = D / (r1 + r2)
    y = 0.5 * dr * dr
    x = 0.5 * (r1 + r2) * (r1 + r2)
    t = 0.5 * abs(D)
    ex = math.exp(-x)
    ey = math.exp(-y)
    shy = math.sinh(y)
    # e^-x sinh x = -expm1(-2x)/2
    esx = -0.5 * math.expm1(-2.0 * x)
    if x >= 700.0:
        # e^-x underflows: the terms carrying it are below 1e-300 of e^-y sinh y (t <= x/2)
        num = esx * (-0.5 * math.expm1(-2.0 * y))
        k12 = -0.5 * ey * math.expm1(-2.0 * r1 * r2) if family == FAMILY_SIN else 0.5 * ey
        return max(num, 0.0) / (sk1 * sk2 + k12)
    sht = math.sinh(t)
    if family == FAMILY_SIN:
        # e^-x (sinh x - x), relative accuracy: from the series below 1 (no overflow there)
        exs = ex * _sinh_minus(x) if x < 700.0 else esx - x * ex
        num = ey * (exs * shy + x * ex * _sinh_minus(y) - ex * _sinh_minus(t) * (sht + t))
        k12 = -0.5 * ey * math.expm1(-2.0 * r1 * r2)
    else:
        num = ey * (esx * shy + ex * sht * sht)
        k12 = 0.5 * (ey + ex)
    return max(num, 0.0) / (sk1 * sk2 + k12)


_GELU_PANEL = 0.5


@njit(cache=True, error_model="numpy")
def _gelu_radial(q1, q2, r1, r2, D, sk1, sk2):
    """GELU's radial gap R = sqrt(k11 k22) - k(q1, q2, sqrt(q1 q2)) from ``D = q1 - q2``.

    With f_i(z) = phi(r_i z) and g = f1/sk1 - f2/sk2, R = sk1 sk2 E[g^2] / 2. Split
    phi = relu + psi, psi(x) = -|x| Phi(-|x|) (even): relu is homogeneous, so
    g = c relu(z) + p(|z|) with c = 1/sqrt(kappa1) - 1/sqrt(kappa2) (kappa = k11 / q, its
    difference from the slope :func:`_gelu_kappa_slope` or from :func:`_gelu_eps`) and
    p(z) = psi(r1 z)/sk1 - psi(r2 z)/sk2, formed from Phi(-r2 z) - Phi(-r1 z) and
    sqrt(k11) - sqrt(k22) (:func:`diag_diff`), never from a difference of nearly equal
    numbers. Then E[g^2] = c^2/2 + 2 c int_0^inf z p phi_N + 2 int_0^inf p^2 phi_N, the integrals
    by 8-point Gauss-Legendre panels in t = max(r1, 1) z (r1 >= r2): of length 1/2 on [0, 12],
    where Phi(-r1 z) varies, then of length rho/2 on [12, 12 rho], rho = max(r1, 1)/max(r2, 1)
    (48 panels at most). Relative error ~3e-15 over q in [1e-2, 1e10] and any r1/r2
    (tests/test_radial_gap.py).
    """
    if D < 0.0:
        q1, q2, r1, r2, sk1, sk2, D = q2, q1, r2, r1, sk2, sk1, -D
    if D == 0.0:
        return 0.0
    # kappa1 - kappa2 >= 0
    if D < 0.1 * (1.0 + q2):
        acc = 0.0
        for i in range(8):
            acc += _GL8_W[i] * _gelu_kappa_slope(q2 + 0.5 * D * (1.0 + _GL8_X[i]))
        dkap = 0.5 * D * acc
    else:
        dkap = _gelu_eps(q2) - _gelu_eps(q1)
    k1 = 0.5 - _gelu_eps(q1)
    k2 = 0.5 - _gelu_eps(q2)
    s1 = math.sqrt(k1)
    s2 = math.sqrt(k2)
    c = -dkap / (s1 * s2 * (s1 + s2))
    ds = diag_diff(np.int64(FAMILY_GELU), q1, q2, D) / (sk1 + sk2)      # sk1 - sk2
    dr = D / (r1 + r2)
    sig = max(r1, 1.0)
    rho = sig / max(r2, 1.0)
    I1 = 0.0
    I2 = 0.0
    # t = sig z: [0, 12] in panels of 1/2 (where Phi(-r1 z) varies), then [12, 12 rho] in
    # panels of rho/2 (only Phi(-r2 z) and phi_N(z) left, varying on the scale rho)
    n1 = int(math.ceil(12.0 / _GELU_PANEL))
    n2 = int(math.ceil(12.0 * (rho - 1.0) / (_GELU_PANEL * rho)))
    for pnl in range(n1 + n2):
        wpan = _GELU_PANEL if pnl < n1 else (12.0 * rho - 12.0) / n2
        t0 = _GELU_PANEL * pnl if pnl < n1 else 12.0 + (pnl - n1) * wpan
        sub1 = 0.0
        sub2 = 0.0
        for i in range(8):
            z = (t0 + 0.5 * wpan * (1.0 + _GL8_X[i])) / sig
            a2 = r2 * z
            P1 = 0.5 * math.erfc(r1 * z * _SQRT_HALF)      # Phi(-r1 z)
            P2 = 0.5 * math.erfc(a2 * _SQRT_HALF)
            # psi(r1 z) - psi(r2 z), with r1 z - r2 z = dr z (not the rounded difference)
            dpsi = -z * (dr * P1 - r2 * _phi_tail_diff(a2, dr * z))
            p = dpsi / sk1 + a2 * P2 * ds / (sk1 * sk2)
            wgt = _GL8_W[i] * math.exp(-0.5 * z * z)
            sub1 += wgt * z * p
            sub2 += wgt * p * p
        I1 += wpan * sub1
        I2 += wpan * sub2
    scale = 0.5 / sig * _INV_SQRT_2PI
    Eg2 = 0.5 * c * c + 2.0 * c * I1 * scale + 2.0 * I2 * scale
    return 0.5 * sk1 * sk2 * max(Eg2, 0.0)


@njit(cache=True, inline="always", error_model="numpy")
def _erf_diff(a2, w):
    """erf(a2 + w) - erf(a2) for a2, w >= 0, relative accuracy."""
    if w < 0.05:          # GL4 of exp(-u^2) on a width < 0.05: error < 1e-17 relative
        acc = 0.0
        for i in range(4):
            u = a2 + 0.5 * w * (1.0 + _GL_X[i])
            acc += _GL_W[i] * math.exp(-u * u)
        return w * acc / math.sqrt(PI)
    if w < 0.5:
        acc = 0.0
        for i in range(8):
            u = a2 + 0.5 * w * (1.0 + _GL8_X[i])
            acc += _GL8_W[i] * math.exp(-u * u)
        return w * acc / math.sqrt(PI)
    return math.erfc(a2) - math.erfc(a2 + w)


@njit(cache=True, inline="always", error_model="numpy")
def _erf_g2_panels(z0, z1, h, r1, r2, dr, sk1, sk2, ds):
    """sum of GL8 panels of width <= h over [z0, z1] of g(z)^2 exp(-z^2/2) (see _erf_radial)."""
    if z1 <= z0:
        return 0.0
    npan = int(math.ceil((z1 - z0) / h))
    w = (z1 - z0) / npan
    acc = 0.0
    for p in range(npan):
        for i in range(8):
            z = z0 + w * (p + 0.5 * (1.0 + _GL8_X[i]))
            g = _erf_diff(r2 * z, dr * z) / sk1 - math.erf(r2 * z) * ds / (sk1 * sk2)
            acc += _GL8_W[i] * g * g * math.exp(-0.5 * z * z)
    return 0.5 * w * acc


@njit(cache=True, error_model="numpy")
def _erf_radial(q1, q2, r1, r2, D, sk1, sk2):
    """erf's radial gap R = sqrt(k11 k22) - k(q1, q2, sqrt(q1 q2)) from ``D = q1 - q2``.

    R = sk1 sk2 E[g^2] / 2 with g = f1/sk1 - f2/sk2 = (f1 - f2)/sk1 - f2 (sk1 - sk2)/(sk1 sk2),
    f_i = erf(r_i z): ``f1 - f2`` by Gauss-Legendre on its derivative (or erfc differences),
    ``sk1 - sk2`` from :func:`diag_diff`; g is odd, so E[g^2] = 2 int_0^inf g^2 phi_N, by GL8
    panels of width min(1/2, 1/(2 r_i)) on [0, 6/r1], [6/r1, 6/r2] (where erf(r_i z) still
    varies) and 1/2 on to z = 12: at most 72 panels whatever r1/r2. Relative error ~1e-15,
    ~3e-14 at q = 1e-3 where erf is nearly linear and g cancels (tests/test_radial_gap.py).
    """
    if D < 0.0:
        q1, q2, r1, r2, sk1, sk2, D = q2, q1, r2, r1, sk2, sk1, -D
    if D == 0.0:
        return 0.0
    ds = diag_diff(np.int64(FAMILY_ERF), q1, q2, D) / (sk1 + sk2)
    dr = D / (r1 + r2)
    z1 = min(12.0, 6.0 / r1)           # erf(r1 z) varies below z1, erf(r2 z) below z2
    z2 = min(12.0, 6.0 / r2)
    # the three segments [0, z1], [z1, z2], [z2, 12] in one loop: one inlined copy of the
    # panels (each term is >= +0, so 0.0 + first term is the first term)
    I = 0.0
    for seg in range(3):
        za = 0.0 if seg == 0 else (z1 if seg == 1 else z2)
        zb = z1 if seg == 0 else (z2 if seg == 1 else 12.0)
        h = min(0.5, 0.5 / r1) if seg == 0 else (min(0.5, 0.5 / r2) if seg == 1 else 0.5)
        I += _erf_g2_panels(za, zb, h, r1, r2, dr, sk1, sk2, ds)
    return sk1 * sk2 * I * _INV_SQRT_2PI


@njit(cache=True, inline="always", error_model="numpy")
def _radial(family, q1, q2, r1, r2, D, sk1, sk2):
    """The radial gap R (see :func:`_radial_gap`), from the carried ``D = q1 - q2`` for sin,
    cos and gaussian (:func:`_radial_gap_exact`); erf and GELU use :func:`_radial_gap`.

    Inlined (a dispatch on the family, small) into its one call site in
    :func:`_smooth_pair_oriented`, itself inlined into :func:`smooth_pair`: the big leaves
    below are then linked into one function, not re-optimized at three more levels."""
    if family == FAMILY_GAUSSIAN or ((family == FAMILY_SIN or family == FAMILY_COS)
                                     and abs(D) < 0.5 * (r1 + r2) * (r1 + r2)):
        if D == 0.0:
            return 0.0
        return _radial_gap_exact(family, q1, q2, r1, r2, D, sk1, sk2)
    if q1 > 0.0 and q2 > 0.0 and q1 < _GELU_PLAIN and q2 < _GELU_PLAIN:
        if family == FAMILY_GELU:
            return _gelu_radial(q1, q2, r1, r2, D, sk1, sk2)
        if family == FAMILY_ERF:
            return _erf_radial(q1, q2, r1, r2, D, sk1, sk2)
    return _radial_gap(family, r1, r2, sk1, sk2)


# GELU gaps above the Gauss-Legendre threshold but below this fraction of m are integrated on
# a logarithmic grid (the subtraction sqrt(k11 k22) - k would lose m / A digits there)
_GELU_GRADED = 0.02


@njit(cache=True, error_model="numpy")
def _gelu_gap_graded(q1, q2, r1, r2, m, g):
    """int_{m-g}^{m} G(t) dt for GELU, 8-point Gauss-Legendre panels in v = log(h + h0).

    ``G(m - h)`` has its branch points where ``Delta^2 = (h + h0)(h1 - h) = 0``, i.e. at
    ``h = -h0`` (``h0 = Delta_m^2 / (m + sqrt(m^2 + Delta_m^2))``, ``Delta_m^2 = 1 + q1 + q2``)
    and ``h = h1 ~ 2 m``; in ``v`` the first goes to ``-inf`` and, for ``g <= 0.02 m``, the
    second stays >= log(50) beyond the end of the interval. Panels of length <= 1 in ``v``
    (GL8 error < 1e-16 relative to the panel there); ``h = h0 expm1(v - log h0)`` keeps the
    nodes accurate next to the end point.
    """
    Dm2 = 1.0 + q1 + q2
    h0 = Dm2 / (m + math.sqrt(m * m + Dm2))
    U = math.log1p(g / h0)          # v - log(h0) runs over [0, U]
    npan = int(math.ceil(U))
    if npan < 1:
        npan = 1
    w = U / npan
    acc = 0.0
    for p in range(npan):
        c = (p + 0.5) * w
        for i in range(8):
            u = c + 0.5 * w * _GL8_X[i]
            h = min(h0 * math.expm1(u), g)
            _, kd = smooth_kkd(np.int64(FAMILY_GELU), q1, q2, r1, r2, h, 2.0 * m - h)
            acc += _GL8_W[i] * kd * math.exp(u)
    return 0.5 * w * h0 * acc


@njit(cache=True, inline="always", error_model="numpy")
def _smooth_pair_oriented(family, q1, q2, r1, r2, A, B, sk1, sk2, D):
    """(k, kd, kA, kB) of the non-homogeneous closed forms, as :func:`smooth_pair`.

    The gaps are split into a radial and an angular part,
    ``kA = [sqrt(k11 k22) - k(m)] + [k(m) - k(s)]`` with ``m = sqrt(q1 q2)``: the angular
    part is ``int_s^m kd dt`` (Price's theorem) by Gauss-Legendre when the gap is small, the
    radial part from its even expansion in ``log(r1/r2)``; likewise ``kB`` near ``s = -m``.
    Both are then accurate relative to themselves, which matters in the chaotic regime where
    the recursion magnifies ``1 - rho`` layer after layer.

    The radial gap ``R`` is computed once, where one of the gaps needs it (one inlined copy
    of :func:`_radial`); inlined into :func:`smooth_pair`, its one call site.
    """
    k, kd = smooth_kkd(family, q1, q2, r1, r2, A, B)
    sk = sk1 * sk2
    m = r1 * r2
    lim = _GAP_QUAD * min(m, 1.0)
    near_a = A <= lim
    graded = ((not near_a) and family == FAMILY_GELU and A <= _GELU_GRADED * m
              and m < _BIG)
    near_b = B <= lim
    odd = family == FAMILY_ERF or family == FAMILY_SIN      # odd: sk + k(-m) = R
    R = -1.0
    if near_a or graded or (near_b and odd):
        R = _radial(family, q1, q2, r1, r2, D, sk1, sk2)
    if near_a:
        kA = R + _gap_integral(family, q1, q2, r1, r2, m, A, np.bool_(True))
    elif graded:
        kA = R + _gelu_gap_graded(q1, q2, r1, r2, m, A)
    else:
        kA = sk - k
    if near_b:
        if odd:
            anti = R
        else:
            kneg, _ = smooth_kkd(family, q1, q2, r1, r2, 2.0 * m, 0.0)
            anti = sk + kneg
        kB = anti + _gap_integral(family, q1, q2, r1, r2, m, B, np.bool_(False))
    else:
        kB = sk + k
    # rounding-level negative values are set to 0 (exact values are >= 0 by Cauchy-Schwarz)
    return k, kd, max(kA, 0.0), max(kB, 0.0)


@njit(cache=True, error_model="numpy")
def smooth_pair(family, q1, q2, r1, r2, A, B, sk1, sk2, D):
    """(k, kd, kA, kB) of the non-homogeneous closed forms (erf, sin, cos, gaussian, gelu).

    For the even activations (cos, gaussian) ``k(s) = k(-s)``: nearly antipodal inputs
    give nearly identical features, so ``kA`` is small where ``B`` is. The pair is then
    evaluated mirrored, ``(s, A, B) -> (-s, B, A)`` (``kA``, ``kB`` unchanged, ``kd`` odd), so
    that the small gap is formed by the accurate route; see :func:`_smooth_pair_oriented`.
    """
    mirror = (family == FAMILY_COS or family == FAMILY_GAUSSIAN) and B < A
    a = B if mirror else A
    b = A if mirror else B
    # one call site: one inlined copy of the oriented evaluation
    k, kd, kA, kB = _smooth_pair_oriented(family, q1, q2, r1, r2, a, b, sk1, sk2, D)
    return k, (-kd if mirror else kd), kA, kB


# ----------------------------------------------------------------------------- plain route
# The plain forms below are valid (nothing over- or underflows) for variances below this
_PLAIN_MAX = 1e75
_TWO_OVER_PI = 2.0 / PI
_INV_TWO_PI = 1.0 / (2.0 * PI)


@njit(cache=True, inline="always", error_model="numpy")
def erf_plain(q1, q2, A, B):
    """(k, kd) of erf: ``(2/pi) atan2(2 s, E)``, ``(4/pi) / E``, ``E = sqrt(1 + 2(q1 + q2) + 4AB)``
    (``E^2 = (1 + 2 q1)(1 + 2 q2) - 4 s^2``: one square root for both, no cancellation;
    ``4AB + ...`` fused by :func:`infntk._vmath.fma`, so that every engine gets these floats)."""
    E = math.sqrt(vfma(4.0 * A, B, 1.0 + 2.0 * (q1 + q2)))
    at, iE = atan2_pos_recip(B - A, E)          # one division for both
    return _TWO_OVER_PI * at, (2.0 * _TWO_OVER_PI) * iE


@njit(cache=True, inline="always", error_model="numpy")
def trig_plain(is_sin, r1, r2, A, B):
    """(k, kd) of sin (``is_sin``) or cos: with ``e^-+ = exp(-(r1 - r2)^2/2 - A, B)``, the
    difference ``(e^- - e^+)/2`` through ``expm1`` (no cancellation at small variance) and the
    sum ``(e^- + e^+)/2``; sin has (difference, sum), cos (sum, difference)."""
    dq = r1 - r2
    lo = A if A < B else B
    hi = B if A < B else A
    e1 = vexp(-0.5 * (dq * dq) - lo)
    t = vexpm1(lo - hi)                     # exp(-2 |s|) - 1
    dif = -0.5 * e1 * t
    dif = dif if B >= A else -dif
    tot = e1 + 0.5 * e1 * t
    return (dif if is_sin else tot), (tot if is_sin else dif)


@njit(cache=True, inline="always", error_model="numpy")
def gaussian_plain(q1, q2, A, B):
    """(k, kd) of phi = exp(-x^2/2): ``det^(-1/2)``, ``s det^(-3/2)``, ``det = 1 + q1 + q2 + AB``
    (``det^(-3/2)`` as ``k^3``: one division per pair, not two)."""
    det = 1.0 + q1 + q2 + A * B
    k = 1.0 / math.sqrt(det)
    return k, 0.5 * (B - A) * (k * (k * k))


# trig_plain_factored's range: |s| <= sqrt(q1 q2) <= 8 (its error grows like |s| ulp, see there)
TRIG_FACTORED_MAX = 8.0
# the plain duals with a caller's denominator (``*_recip``): safe for denominators in this range
_RECIP_DEN_MIN = 1e-100
_RECIP_DEN_MAX = 1e100


@njit(cache=True, inline="always", error_model="numpy")
def trig_factored_ok(q1max, q2max):
    """Whether :func:`trig_plain_factored` applies to every pair of a row with variance
    ``q1max`` and columns of variance at most ``q2max`` (NaN: no)."""
    return q1max <= TRIG_FACTORED_MAX and q2max <= TRIG_FACTORED_MAX


@njit(cache=True, inline="always", error_model="numpy")
def recip_den_ok(w2, b2):
    """Whether the bias-gap denominator ``den = sqrt(q1' q2') + w2 sk1 sk2 + b2`` of a network
    with ``w2``, ``b2`` (and ``k11 <= 1``: sin, cos, gaussian) stays within the range that
    :func:`trig_plain_factored` and :func:`gaussian_plain_recip` accept (``den = 1`` for
    ``b2 = 0``): ``b2 = 0`` or ``1e-100 <= b2, w2 <= 1e100 / 4``."""
    if b2 == 0.0:
        return True
    return b2 >= _RECIP_DEN_MIN and b2 <= 0.25 * _RECIP_DEN_MAX and w2 <= 0.25 * _RECIP_DEN_MAX


@njit(cache=True, inline="always", error_model="numpy")
def trig_plain_factored(is_sin, e12, A, B, den):
    """``(k, kd, 1 / den)`` of sin (``is_sin``) or cos with the radial factor given:
    ``e12 = exp(-q1/2) exp(-q2/2)`` (per-row values), ``k = e12 sinh(s)`` resp.
    ``e12 cosh(s)``, ``s = (B - A)/2``.

    One exponential per pair (:func:`trig_plain` takes two): ``w = e^-|s|`` and
    ``u = expm1(-|s|)`` from one argument reduction (:func:`infntk._vmath.exp_expm1`),
    ``sinh|s| = -u (2 + u) e^|s| / 2`` (no cancellation at small ``s``) and
    ``cosh s = (e^|s| + w) / 2``, ``e^|s|`` taken from the one division ``1 / (w den)`` that
    also gives the caller's ``1 / den`` (``den > 0``, in ``[1e-100, 1e101]``).

    Accuracy: a few ulp of ``sqrt(k11 k22)`` plus ``|s|`` ulp (``e^|s|`` carries the rounding
    of ``s`` with condition number ``|s|``; the state's own rounding moves the exact dual by
    ``kd * eps * m`` already); so only for ``q1, q2 <= TRIG_FACTORED_MAX``
    (:func:`trig_factored_ok`), where ``e^-|s| >= e^-8`` and the division cannot overflow.
    Tested against mpmath in tests/test_smooth_fast.py.
    """
    w, u = vexp_expm1(-0.5 * abs(B - A))      # e^-|s|, e^-|s| - 1
    r = 1.0 / (w * den)
    ie = r * den                               # e^|s|
    sh = (-0.5 * e12) * (u * (2.0 + u)) * ie
    sh = sh if B >= A else -sh
    ch = (0.5 * e12) * (ie + w)
    return (sh if is_sin else ch), (ch if is_sin else sh), r * w


@njit(cache=True, inline="always", error_model="numpy")
def gaussian_plain_recip(q1, q2, A, B, den):
    """``(k, kd, 1 / den)``: :func:`gaussian_plain` with the caller's ``1 / den`` from the same
    division, ``r = 1 / (sqrt(det) den)``, ``k = r den``, ``1 / den = r sqrt(det)`` (two
    roundings more; ``den`` in ``[1e-100, 1e101]``, ``det = 1 + q1 + q2 + A B < 1e151``)."""
    det = 1.0 + q1 + q2 + A * B
    t = math.sqrt(det)
    r = 1.0 / (t * den)
    k = r * den
    return k, 0.5 * (B - A) * (k * (k * k)), r * t


@njit(cache=True, inline="always", error_model="numpy")
def gelu_plain(q1, q2, A, B):
    """(k, kd) of GELU: :func:`_gelu`'s plain form with ``Delta^2 = 1 + q1 + q2 + AB``
    (multiply-adds fused by :func:`infntk._vmath.fma`, as in :func:`erf_plain`)."""
    s = 0.5 * (B - A)
    iP = 1.0 / ((1.0 + q1) * (1.0 + q2))
    D2 = vfma(A, B, 1.0 + q1 + q2)
    Dl = math.sqrt(D2)
    at, iD = atan2_pos_recip(s, Dl)            # one division for both
    inner = vfma(s, at, vfma(s, s, (q1 * q2) * D2) * (iP * iD))
    F = vfma(0.25, s, inner * _INV_TWO_PI)
    G = vfma((s * iD) * _INV_TWO_PI, vfma(2.0 + q1 + q2, iP, iD * iD), vfma(at, _INV_TWO_PI, 0.25))
    return F, G


@njit(cache=True, error_model="numpy")
def smooth_plain(family, q1, q2, r1, r2, A, B):
    """(k, kd) of the smooth closed forms by the plain route: the same duals as
    :func:`smooth_kkd` (module docstring), branch-free and libm-free so that a loop over
    pairs vectorizes (:func:`erf_plain`, :func:`trig_plain`, :func:`gaussian_plain`,
    :func:`gelu_plain`; the engines call those directly, one loop per family).

    Accurate in absolute terms (a few ulp of ``sqrt(k11 k22)``) for ``q1, q2 < 1e75``; the gaps
    ``sqrt(k11 k22) -+ k`` formed from it are not accurate relative to themselves when small
    (:func:`smooth_route_stable` says when that matters).
    """
    if family == FAMILY_ERF:
        return erf_plain(q1, q2, A, B)
    if family == FAMILY_SIN or family == FAMILY_COS:
        return trig_plain(family == FAMILY_SIN, r1, r2, A, B)
    if family == FAMILY_GAUSSIAN:
        return gaussian_plain(q1, q2, A, B)
    if family == FAMILY_GELU:
        return gelu_plain(q1, q2, A, B)
    return math.nan, math.nan


# the stable route pays where an error of a few ulp of sqrt(k11 k22) in a gap would be
# amplified by the rest of the network by more than this factor (relative to the output)
_GAIN_STABLE = 1.0


@njit(cache=True, inline="always", error_model="numpy")
def row_may_need_stable(qa, q2max, ga, g2max):
    """Whether any pair of a row with the columns summarized by ``q2max = max q2`` and
    ``g2max = max g2`` can satisfy :func:`smooth_route_stable` (otherwise only the pairs that
    carry ``D`` take the stable route). NaN counts as large."""
    if qa >= _PLAIN_MAX or q2max >= _PLAIN_MAX:
        return True
    return not (ga * g2max <= _GAIN_STABLE * _GAIN_STABLE)


@njit(cache=True, inline="always", error_model="numpy")
def stable_gap_limits(family, qa, q2max, mmax):
    """``(ok, lim, glim)``: for a row of variance ``qa`` against columns of variance at most
    ``q2max`` and ``m = sqrt(q1 q2) <= mmax``, a pair that :func:`smooth_route_stable` sends to
    the stable route has ``min(A, B) <= lim`` or ``A <= glim`` (GELU's graded range; ``-inf``
    for the other families), whatever its gain, provided ``ok`` (both variances inside the
    plain range; otherwise every pair must be tested). A superset test on the gaps alone, for
    a prefilter that reads two arrays instead of six."""
    ok = qa < _PLAIN_MAX and q2max < _PLAIN_MAX
    lim = _GAP_QUAD * min(mmax, 1.0)
    glim = _GELU_GRADED * mmax if family == FAMILY_GELU else -math.inf
    return ok, lim, glim


@njit(cache=True, inline="always", error_model="numpy")
def smooth_route_stable(family, q1, q2, m, A, B, gain):
    """Whether the pair needs :func:`smooth_pair` (the stable route) rather than
    :func:`smooth_plain`.

    ``gain`` bounds how much the rest of the network amplifies an absolute error of the gaps
    ``kA``, ``kB`` relative to the output kernel, ``sqrt(g1 g2)`` of the per-row suffix products
    ``g = k11 prod_{later} (w^2 E[phi'^2]) / q_out`` (Price's theorem: ``dk/ds = kd`` and
    ``|kd| <= sqrt(kd11 kd22)``). The stable route is taken when the gain exceeds 1 and a gap is
    small (the same thresholds as :func:`_smooth_pair_oriented`), and always outside the plain
    forms' range. A NaN gain counts as large.
    """
    # branch-free, so that a scan over pairs vectorizes: ``|`` and ``&`` of the comparisons
    # (Python's ``or``/``and`` short-circuit, i.e. branch, and the scan then stays scalar)
    out = (q1 >= _PLAIN_MAX) | (q2 >= _PLAIN_MAX)
    large = not (gain <= _GAIN_STABLE * _GAIN_STABLE)     # gain is g1 g2, the bound squared
    lim = _GAP_QUAD * min(m, 1.0)
    small = min(A, B) <= lim
    graded = (family == FAMILY_GELU) & (A <= _GELU_GRADED * m) & (m < _BIG)
    return out | (large & (small | graded))


@njit(cache=True, error_model="numpy")
def pair_dual(family, p0, p1, q1, q2, A, B, sk1, sk2):
    """(k, kd, kA, kB) for one pair of any family; ``sk = sqrt(E[phi(u)^2])`` per row.

    The radial difference of the smooth families is taken as ``q1 - q2`` here (callers that
    carry it per pair call :func:`smooth_pair` directly)."""
    r1 = math.sqrt(q1)
    r2 = math.sqrt(q2)
    m = r1 * r2
    if family == FAMILY_ABRELU or family == FAMILY_ABSTEP:     # one inlined body for both
        return kinked_state(family == FAMILY_ABSTEP, p0, p1, A, B, sk1 * sk2)
    if family == FAMILY_ARCCOS:
        return arccos_pair(int(p0), m, A, B)
    return smooth_pair(family, q1, q2, r1, r2, A, B, sk1, sk2, q1 - q2)
