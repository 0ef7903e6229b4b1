"""What every engine shares: the overflow check of the per-row recursion, the clipped
correlation of a pair, the smooth closed forms' stable-route pairs of one row."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._duals import diag_diff, smooth_pair, smooth_route_stable

__all__ = ["check_rows_finite", "clipped_correlation", "stable_pairs", "max_or_nan"]


@njit(cache=True, error_model="numpy")
def max_or_nan(a):
    """The largest entry of ``a`` (NaN if any entry is NaN, 0 for an empty array)."""
    m = 0.0 if a.shape[0] == 0 else a[0]
    for v in a:
        if v != v:
            return v
        m = max(m, v)
    return m


@njit(cache=True, error_model="numpy")
def stable_pairs(family, qa, ra, s1, ga, q2, r2, s2, g2, A, B, D, cand, ncand, fix_j, fix_v):
    """The pairs ``j = cand[c]``, ``c < ncand``, of one row that take the stable route, and
    their duals.

    A candidate does when it carries ``D`` (not NaN) or when
    :func:`infntk._duals.smooth_route_stable` says so from its gain ``ga * g2[j]`` (the caller
    passes every column as a candidate, or only the carried ones where
    :func:`infntk._duals.row_may_need_stable` rules the rest out). For the ``c``-th of them:
    ``fix_j[c] = j`` and ``fix_v[c, :5] = (k, kd, kA, kB, dk)`` from
    :func:`infntk._duals.smooth_pair` (``dk = k11 - k22`` by ``diag_diff`` for a carried pair,
    NaN otherwise); returns their number. The state (``A``, ``B``, ``D``) is not modified: the
    engines run their plain pass over every pair next, then overwrite these.
    """
    # the test first, in a loop that vectorizes (its one output is allocated here), then the
    # rare pairs that pass it
    flag = np.empty(ncand, dtype=np.uint8)
    count = 0
    for c in range(ncand):
        j = cand[c]
        f = D[j] == D[j] or smooth_route_stable(family, qa, q2[j], ra * r2[j], A[j], B[j],
                                                ga * g2[j])
        flag[c] = f
        count += f
    nfix = 0
    if count == 0:
        return 0
    for c in range(ncand):
        j = cand[c]
        Dj = D[j]
        carried = Dj == Dj
        if flag[c]:
            k, kd, kA, kB = smooth_pair(family, qa, q2[j], ra, r2[j], A[j], B[j], s1, s2[j],
                                        Dj if carried else qa - q2[j])
            fix_j[nfix] = j
            fix_v[nfix, 0] = k
            fix_v[nfix, 1] = kd
            fix_v[nfix, 2] = kA
            fix_v[nfix, 3] = kB
            fix_v[nfix, 4] = diag_diff(family, qa, q2[j], Dj) if carried else math.nan
            nfix += 1
    return nfix


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
