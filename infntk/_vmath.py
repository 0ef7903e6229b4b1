"""Branch-free elementary functions for the compiled pair loops (no libm calls).

Numba compiles ``math.exp``, ``math.expm1`` and ``math.atan2`` to scalar libm calls, which stop
LLVM from vectorizing a loop over pairs (the installed llvmlite has no vector math library).
The functions here use only arithmetic, ``sqrt``, ``floor``, selects and one integer-to-float
bit cast, so that a loop calling them vectorizes (8 doubles per instruction on AVX-512).

* :func:`exp` and :func:`expm1`: ``x = n ln2 + r`` with ``|r| <= ln2 / 2`` (Cody-Waite, ``n ln2``
  in two parts), ``expm1(r)`` by its Taylor series to ``r^13`` (truncation < 2e-17 relative) in
  Estrin's scheme, and ``2^n`` built from its exponent bits as ``2^(n//2) 2^(n - n//2)`` so that
  subnormal results and the overflow threshold come out as in IEEE arithmetic.
* :func:`exp_expm1`: both from one reduction (the same floats as the two).
* :func:`fma`: ``a b + c`` with one rounding (``llvm.fma``; two roundings on a CPU without FMA),
  for fused multiply-adds that every engine calling a function gets alike
  (``fastmath={"contract"}`` fuses per compiled loop).
* :func:`atan_ratio` ``atan(lo / hi)`` for ``0 <= lo <= hi``, :func:`atan2_pos`
  ``atan2(y, x)`` for ``x > 0`` and :func:`atan2_pos_recip` (the same and ``1 / x``, one division).

Accuracy (tests/test_vmath.py, against mpmath): a few ulp; ``expm1`` relative to itself also at
tiny arguments.
"""
from __future__ import annotations

import math

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["fma", "HAS_FMA", "exp", "expm1", "exp_expm1", "atan_ratio", "atan2_pos",
           "atan2_pos_recip", "atan_unit"]


@intrinsic
def _bits_to_float(typingctx, bits):
    """The float64 whose IEEE bit pattern is the int64 ``bits``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = context.cast(builder, args[0], signature.args[0], types.int64)
        return builder.bitcast(v, ir.DoubleType())

    return types.float64(bits), codegen


def _target_has_fma():
    """Whether the CPU Numba compiles for has fused multiply-add instructions (the host's, or
    ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` when those are set)."""
    from llvmlite import binding
    from numba.core import config
    if config.CPU_NAME and config.CPU_NAME != "host":
        return "+fma" in (config.CPU_FEATURES or "")
    try:
        return bool(binding.get_host_cpu_features().get("fma", False))
    except RuntimeError:
        return False


HAS_FMA = _target_has_fma()


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (LLVM's ``llvm.fma``: one instruction, and a loop
    calling it still vectorizes) where the target CPU has FMA instructions, which every
    x86-64 CPU since 2013 has; ``a * b + c`` with two roundings otherwise (``llvm.fma``
    would become a scalar library call per entry there and stop the loops vectorizing).
    Unlike ``fastmath={"contract"}``, the fused operations are fixed in the source, so every
    engine that calls a function built from it gets the same floats on a given machine."""
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        x, y, z = (context.cast(builder, v, t, types.float64)
                   for v, t in zip(args, signature.args))
        if not HAS_FMA:
            return builder.fadd(builder.fmul(x, y), z)
        d = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [d], ir.FunctionType(d, [d, d, d]))
        return builder.call(fn, [x, y, z])

    return types.float64(types.float64, types.float64, types.float64), codegen


_LOG2E = 1.4426950408889634
# fdlibm's split of ln 2: n * _LN2_HI is exact for |n| < 2^20
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_FACT = tuple(1.0 / math.factorial(k) for k in range(14))


@njit(cache=True, inline="always", error_model="numpy")
def _reduce(x):
    """(q, s1, s2) with exp(x) = (1 + q) s1 s2, s1 s2 = 2^n, q = expm1(r).

    The scale is kept in two factors so that ``((1 + q) s1) s2`` is finite up to the overflow
    threshold (``2^1024`` itself is not a double) and rounds once into the subnormal range."""
    x = -746.0 if x < -746.0 else x          # NaN passes through both selects
    x = 710.0 if x > 710.0 else x
    nf = math.floor(x * _LOG2E + 0.5)
    r = (x - nf * _LN2_HI) - nf * _LN2_LO
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    e0 = _INV_FACT[2] + _INV_FACT[3] * r
    e1 = _INV_FACT[4] + _INV_FACT[5] * r
    e2 = _INV_FACT[6] + _INV_FACT[7] * r
    e3 = _INV_FACT[8] + _INV_FACT[9] * r
    e4 = _INV_FACT[10] + _INV_FACT[11] * r
    e5 = _INV_FACT[12] + _INV_FACT[13] * r
    p = (e0 + e1 * r2) + (e2 + e3 * r2) * r4 + (e4 + e5 * r2) * r8
    q = r + r2 * p
    n = int(nf) if nf == nf else 0
    n1 = n >> 1
    n2 = n - n1
    return q, _bits_to_float((n1 + 1023) << 52), _bits_to_float((n2 + 1023) << 52)


@njit(cache=True, inline="always", error_model="numpy")
def exp(x):
    """e^x, branch-free (0 below -745.2, inf above 709.8, NaN for NaN)."""
    q, s1, s2 = _reduce(x)
    return ((1.0 + q) * s1) * s2


@njit(cache=True, inline="always", error_model="numpy")
def expm1(x):
    """e^x - 1, accurate relative to itself also for tiny x, branch-free."""
    q, s1, s2 = _reduce(x)
    s = s1 * s2                               # 2^n, inf only for n = 1024
    big = ((1.0 + q) * s1) * s2 - 1.0
    return s * q + (s - 1.0) if s < math.inf else big


@njit(cache=True, inline="always", error_model="numpy")
def exp_expm1(x):
    """``(e^x, e^x - 1)`` from one argument reduction: the same floats as :func:`exp` and
    :func:`expm1`, for about the cost of one."""
    q, s1, s2 = _reduce(x)
    s = s1 * s2
    e = ((1.0 + q) * s1) * s2
    return e, (s * q + (s - 1.0) if s < math.inf else e - 1.0)


_ATAN_TAYLOR = tuple(((-1.0) ** k) / (2 * k + 1) for k in range(13))
_TAN_PI_16 = math.tan(math.pi / 16)
_TAN_3PI_16 = math.tan(3 * math.pi / 16)
_C1 = math.tan(math.pi / 8)
_ATAN_C1 = math.atan(_C1)
_ATAN_1 = math.pi / 4
_HALF_PI = 0.5 * math.pi


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


# atan_ratio's reduction: centres tan(k pi/16), k = 0..4, switched at tan((2k+1) pi/32), so
# |z| <= tan(pi/32) ~ 0.0985 and 7 Taylor terms after z reach 1e-17 relative
_SA_CUT = tuple(math.tan((2 * k + 1) * math.pi / 32) for k in range(4))
# (the centres rounded to doubles, exactly 1 at the top, and the arctans of those doubles,
# so that atan x = base + atan((x - c) / (1 + c x)) holds for the stored values)
_SA_C = tuple(math.tan(k * math.pi / 16) for k in range(4)) + (1.0,)
_SA_BASE = tuple(math.atan(c) for c in _SA_C)


@njit(cache=True, inline="always", error_model="numpy")
def atan_ratio(lo, hi):
    """arctan(lo / hi) for 0 <= lo <= hi, without forming the ratio (0 for lo = hi = 0).

    The ratio and the argument reduction are one division, ``z = (lo - c hi) / (hi + c lo)``,
    around the nearest of the centres ``c = tan(k pi/16)``, k = 0..4 (``|z| <= tan(pi/32)``);
    atan z by its Taylor series to z^15 (truncation < 1e-17 relative) in Estrin's scheme.
    Branch-free (selects only, no libm call), so that loops over pairs vectorize; a few ulp.
    """
    c, base = _atan_centre(lo, hi)
    den = hi + c * lo
    z = (lo - c * hi) / (den if den > 0.0 else 1.0)
    return base + _atan_reduced(z)


@njit(cache=True, inline="always", error_model="numpy")
def _atan_centre(lo, hi):
    """(c, atan c): the reduction centre of :func:`atan_ratio` for ``lo / hi``."""
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
    return c, base


@njit(cache=True, inline="always", error_model="numpy")
def _atan_reduced(z):
    """atan z for ``|z| <= tan(pi/32)`` (Taylor to z^15, Estrin)."""
    y = z * z
    y2 = y * y
    y4 = y2 * y2
    e0 = _ATAN_TAYLOR[1] + _ATAN_TAYLOR[2] * y
    e1 = _ATAN_TAYLOR[3] + _ATAN_TAYLOR[4] * y
    e2 = _ATAN_TAYLOR[5] + _ATAN_TAYLOR[6] * y
    p = (e0 + e1 * y2) + (e2 + _ATAN_TAYLOR[7] * y2) * y4
    return z + z * (y * p)


@njit(cache=True, inline="always", error_model="numpy")
def _atan_reduced_fma(z):
    """:func:`_atan_reduced` with its multiply-adds fused (:func:`fma`)."""
    y = z * z
    y2 = y * y
    y4 = y2 * y2
    e0 = fma(_ATAN_TAYLOR[2], y, _ATAN_TAYLOR[1])
    e1 = fma(_ATAN_TAYLOR[4], y, _ATAN_TAYLOR[3])
    e2 = fma(_ATAN_TAYLOR[6], y, _ATAN_TAYLOR[5])
    p = fma(fma(_ATAN_TAYLOR[7], y2, e2), y4, fma(e1, y2, e0))
    return fma(z, y * p, z)


@njit(cache=True, inline="always", error_model="numpy")
def atan2_pos(y, x):
    """atan2(y, x) for x > 0 (any finite y), branch-free, a few ulp (:func:`atan_ratio`)."""
    ay = abs(y)
    small = ay <= x
    t = atan_ratio(ay if small else x, x if small else ay)
    a = t if small else _HALF_PI - t
    return a if y >= 0.0 else -a


@njit(cache=True, inline="always", error_model="numpy")
def atan2_pos_recip(y, x):
    """``(atan2(y, x), 1 / x)`` for ``x > 0``, with one division for both.

    :func:`atan2_pos`'s reduced argument ``z = num / den`` and ``1 / x`` are both taken from
    ``r = 1 / (den x)`` (``z = num (x r)``, ``1 / x = den r``): two roundings more in each, so a
    few ulp (the duals that need both, erf and GELU, save a division per pair). Valid while
    ``den x`` does not overflow: ``|y|, x < 1e150``. The reduction and the polynomial use
    :func:`fma` (fewer instructions, and ``lo - c hi`` with one rounding).
    """
    ay = abs(y)
    small = ay <= x
    lo = ay if small else x
    hi = x if small else ay
    c, base = _atan_centre(lo, hi)
    den = fma(c, lo, hi)                     # >= hi >= x > 0
    r = 1.0 / (den * x)
    t = base + _atan_reduced_fma(fma(-c, hi, lo) * (x * r))
    a = t if small else _HALF_PI - t
    return (a if y >= 0.0 else -a), den * r
