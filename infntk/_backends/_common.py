"""What every engine shares: the overflow check of the per-row recursion, the clipped
correlation of a pair."""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["check_rows_finite", "clipped_correlation"]


@njit(cache=True, inline="always", error_model="numpy")
def clipped_correlation(s, m, ex):
    """``(rho, ex')``: ``rho = s / m`` clipped to [-1, 1] (0 for ``m = 0``, a degenerate row:
    docs/conventions.md), and ``ex`` raised to how far ``|s / m|`` overshot 1 (rounding of the
    recursion, which the series engines add to their error bound)."""
    rho = s / m if m > 0.0 else 0.0
    if rho > 1.0:
        ex = max(ex, rho - 1.0)
        rho = 1.0
    elif rho < -1.0:
        ex = max(ex, -1.0 - rho)
        rho = -1.0
    return rho, ex


def check_rows_finite(q, ntk, layer=None):
    """Raise ``OverflowError`` if a row's layer variances ``q`` or NTK diagonal overflowed.

    ``q``: ``(n, L + 1)`` variances (or ``(n,)`` of one ``layer``), ``ntk``: ``(n,)``.
    """
    qf = np.isfinite(q)
    if qf.ndim == 2:
        qf = qf.all(axis=1)
    ok = qf & np.isfinite(ntk)
    if ok.all():
        return
    bad = int(np.argmax(~ok))
    where = f"row {bad}" if layer is None else f"row {bad}, layer {layer}"
    vals = q[bad].tolist()[:5] if np.ndim(q) == 2 else q[bad]
    raise OverflowError(f"the kernel overflows float64 ({where}: variance(s) {vals!r}); "
                        "reduce depth, w_std or the input scale.")
