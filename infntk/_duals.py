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

from numba import njit

from .activations import (FAMILY_ABRELU, FAMILY_ABSTEP, FAMILY_ARCCOS, FAMILY_COS, FAMILY_ERF,
                          FAMILY_GAUSSIAN, FAMILY_GELU, FAMILY_SIN)

PI = math.pi
_HALF_PI = 0.5 * math.pi
# below this, products of two such numbers (variances, gaps) are safe in float64
_BIG = 1e150

# Series of g(x) = sin x - x cos x = sum_{k>=1} (-1)^(k+1) 2k x^(2k+1) / (2k+1)!, used for
# x < 0.5 where the direct form cancels; 8 terms reach 1e-18 relative at x = 0.5.
_G_SERIES = tuple(((-1.0) ** (k + 1)) * 2 * k / math.factorial(2 * k + 1) for k in range(1, 9))


@njit(cache=True, error_model="numpy")
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
_ATAN_TAYLOR = tuple(((-1.0) ** k) / (2 * k + 1) for k in range(13))
_TAN_PI_16 = math.tan(math.pi / 16)
_TAN_3PI_16 = math.tan(3 * math.pi / 16)
_C1 = math.tan(math.pi / 8)
_ATAN_C1 = math.atan(_C1)
_ATAN_1 = math.pi / 4


@njit(cache=True, inline="always", error_model="numpy")
def atan_unit(x):
    """arctan(x) for 0 <= x <= 1, within 2 ulp, branch-light and libm-free."""
    c = 0.0
    base = 0.0
    if x > _TAN_3PI_16:
        c = 1.0
        base = _ATAN_1
    elif x > _TAN_PI_16:
        c = _C1
        base = _ATAN_C1
    z = (x - c) / (1.0 + c * x)
    z2 = z * z
    p = _ATAN_TAYLOR[12]
    p = p * z2 + _ATAN_TAYLOR[11]
    p = p * z2 + _ATAN_TAYLOR[10]
    p = p * z2 + _ATAN_TAYLOR[9]
    p = p * z2 + _ATAN_TAYLOR[8]
    p = p * z2 + _ATAN_TAYLOR[7]
    p = p * z2 + _ATAN_TAYLOR[6]
    p = p * z2 + _ATAN_TAYLOR[5]
    p = p * z2 + _ATAN_TAYLOR[4]
    p = p * z2 + _ATAN_TAYLOR[3]
    p = p * z2 + _ATAN_TAYLOR[2]
    p = p * z2 + _ATAN_TAYLOR[1]
    return base + (z + z * (z2 * p))


# small_angle's reduction: centres tan(k pi/16), k = 0..4, switched at tan((2k+1) pi/32), so
# |z| <= tan(pi/32) ~ 0.0985 and 7 Taylor terms after z reach 1e-17 relative
_SA_CUT = tuple(math.tan((2 * k + 1) * math.pi / 32) for k in range(4))
# (the centres rounded to doubles, exactly 1 at the top, and the arctans of those doubles,
# so that atan x = base + atan((x - c) / (1 + c x)) holds for the stored values)
_SA_C = tuple(math.tan(k * math.pi / 16) for k in range(4)) + (1.0,)
_SA_BASE = tuple(math.atan(c) for c in _SA_C)


@njit(cache=True, inline="always", error_model="numpy")
def small_angle(A, B):
    """(t, sqrt(A) sqrt(B)) with t = min(theta, pi - theta) = 2 atan(sqrt(min(A, B) / max(A, B))).

    Branch-free (selects only, no libm call) so that loops over pairs vectorize: with
    ``lo, hi = sorted(sqrt(A), sqrt(B))`` the ratio and the argument reduction are one
    division, ``z = (lo - c hi) / (hi + c lo)``, around the nearest of the centres
    ``c = tan(k pi/16)``, k = 0..4 (``|z| <= tan(pi/32)``); atan z by its Taylor series to
    z^15 (truncation < 1e-17 relative) in Estrin's scheme (a short dependency chain).
    Accurate to a few ulp relative to t; ``t = 0`` for a degenerate pair (``A = B = 0``).
    """
    sA = math.sqrt(A)
    sB = math.sqrt(B)
    lo = sA if sA < sB else sB
    hi = sB if sA < sB else sA
    c = _SA_C[0]
    base = _SA_BASE[0]
    c = _SA_C[1] if lo > _SA_CUT[0] * hi else c
    base = _SA_BASE[1] if lo > _SA_CUT[0] * hi else base
    c = _SA_C[2] if lo > _SA_CUT[1] * hi else c
    base = _SA_BASE[2] if lo > _SA_CUT[1] * hi else base
    c = _SA_C[3] if lo > _SA_CUT[2] * hi else c
    base = _SA_BASE[3] if lo > _SA_CUT[2] * hi else base
    c = _SA_C[4] if lo > _SA_CUT[3] * hi else c
    base = _SA_BASE[4] if lo > _SA_CUT[3] * hi else base
    den = hi + c * lo
    z = (lo - c * hi) / (den if den > 0.0 else 1.0)
    y = z * z
    y2 = y * y
    y4 = y2 * y2
    e0 = _ATAN_TAYLOR[1] + _ATAN_TAYLOR[2] * y
    e1 = _ATAN_TAYLOR[3] + _ATAN_TAYLOR[4] * y
    e2 = _ATAN_TAYLOR[5] + _ATAN_TAYLOR[6] * y
    p = (e0 + e1 * y2) + (e2 + _ATAN_TAYLOR[7] * y2) * y4
    return 2.0 * (base + (z + z * (y * p))), sA * sB


@njit(cache=True, error_model="numpy")
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
    if q1 < _BIG and q2 < _BIG and sAB < _BIG:          # the plain form is safe
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


@njit(cache=True, error_model="numpy")
def t_small(x, sin_x, cos_x):
    """x - sin x cos x for 0 <= x <= pi/2, relative accuracy (series below 0.5)."""
    if x < 0.5:
        x2 = x * x
        acc = _T_SERIES[8]
        for i in range(7, -1, -1):
            acc = acc * x2 + _T_SERIES[i]
        return acc * x2 * x
    return x - sin_x * cos_x


@njit(cache=True, error_model="numpy")
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


@njit(cache=True, error_model="numpy")
def _smooth_pair_oriented(family, q1, q2, r1, r2, A, B, sk1, sk2):
    """(k, kd, kA, kB) of the non-homogeneous closed forms, as :func:`smooth_pair`.

    The gaps are split into a radial and an angular part,
    ``kA = [sqrt(k11 k22) - k(m)] + [k(m) - k(s)]`` with ``m = sqrt(q1 q2)``: the angular
    part is ``int_s^m kd dt`` (Price's theorem) by Gauss-Legendre when the gap is small, the
    radial part from its even expansion in ``log(r1/r2)``; likewise ``kB`` near ``s = -m``.
    Both are then accurate relative to themselves, which matters in the chaotic regime where
    the recursion magnifies ``1 - rho`` layer after layer.
    """
    k, kd = smooth_kkd(family, q1, q2, r1, r2, A, B)
    sk = sk1 * sk2
    m = r1 * r2
    lim = _GAP_QUAD * min(m, 1.0)
    if A <= lim:
        kA = _radial_gap(family, r1, r2, sk1, sk2) + _gap_integral(family, q1, q2, r1, r2, m,
                                                                    A, True)
    else:
        kA = sk - k
    if B <= lim:
        kneg, _ = smooth_kkd(family, q1, q2, r1, r2, 2.0 * m, 0.0)
        if family == FAMILY_ERF or family == FAMILY_SIN:    # odd: sk + k(-m) = R
            anti = _radial_gap(family, r1, r2, sk1, sk2)
        else:
            anti = sk + kneg
        kB = anti + _gap_integral(family, q1, q2, r1, r2, m, B, False)
    else:
        kB = sk + k
    # rounding-level negative values are set to 0 (exact values are >= 0 by Cauchy-Schwarz)
    return k, kd, max(kA, 0.0), max(kB, 0.0)


@njit(cache=True, error_model="numpy")
def smooth_pair(family, q1, q2, r1, r2, A, B, sk1, sk2):
    """(k, kd, kA, kB) of the non-homogeneous closed forms (erf, sin, cos, gaussian, gelu).

    For the even activations (cos, gaussian) ``k(s) = k(-s)``: nearly antipodal inputs
    give nearly identical features, so ``kA`` is small where ``B`` is. The pair is then
    evaluated mirrored, ``(s, A, B) -> (-s, B, A)`` (``kA``, ``kB`` unchanged, ``kd`` odd), so
    that the small gap is formed by the accurate route; see :func:`_smooth_pair_oriented`.
    """
    if (family == FAMILY_COS or family == FAMILY_GAUSSIAN) and B < A:
        k, kd, kA, kB = _smooth_pair_oriented(family, q1, q2, r1, r2, B, A, sk1, sk2)
        return k, -kd, kA, kB
    return _smooth_pair_oriented(family, q1, q2, r1, r2, A, B, sk1, sk2)


@njit(cache=True, error_model="numpy")
def pair_dual(family, p0, p1, q1, q2, A, B, sk1, sk2):
    """(k, kd, kA, kB) for one pair of any family; ``sk = sqrt(E[phi(u)^2])`` per row."""
    r1 = math.sqrt(q1)
    r2 = math.sqrt(q2)
    m = r1 * r2
    if family == FAMILY_ABRELU or family == FAMILY_ABSTEP:     # one inlined body for both
        return kinked_state(family == FAMILY_ABSTEP, p0, p1, A, B, sk1 * sk2)
    if family == FAMILY_ARCCOS:
        return arccos_pair(int(p0), m, A, B)
    return smooth_pair(family, q1, q2, r1, r2, A, B, sk1, sk2)
