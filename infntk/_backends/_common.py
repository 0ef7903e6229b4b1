"""What every engine shares: the overflow check of the per-row recursion, the clipped
correlation of a pair, the smooth closed forms' stable-route pairs of one row; and the Gram
driver's two compiled passes over the output (the finiteness test of a block's rows, the
mirror of a symmetric matrix's lower triangle)."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._duals import diag_diff, smooth_pair, smooth_route_stable, stable_gap_limits

__all__ = ["check_rows_finite", "clipped_correlation", "stable_pairs", "stable_pairs_all",
           "stable_candidates", "max_or_nan", "rows_finite", "mirror_tiles", "mirror_stripe"]


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
    passes only the carried columns where :func:`infntk._duals.row_may_need_stable` rules the
    rest out, else every column to :func:`stable_pairs_all`). For the ``c``-th of them:
    ``fix_j[c] = j`` and ``fix_v[c, :5] = (k, kd, kA, kB, dk)`` from
    :func:`infntk._duals.smooth_pair` (``dk = k11 - k22`` by ``diag_diff`` for a carried pair,
    NaN otherwise); returns their number. The state (``A``, ``B``, ``D``) is not modified: the
    engines run their plain pass over every pair next, then overwrite these.

    Inlined, like :func:`stable_pairs_all` and :func:`stable_candidates`, into the engines'
    row loops (one call site each there): the stable-route duals (:func:`smooth_pair` and
    the leaves below it) are then linked and compiled once more per engine kernel only, not
    once more per level of calls.
    """
    nfix = 0
    for c in range(ncand):
        j = cand[c]
        if _route_stable(family, qa, ra, ga, q2[j], r2[j], g2[j], A[j], B[j], D[j]):
            nfix = _stable_pair(family, qa, ra, s1, q2[j], r2[j], s2[j], A[j], B[j], D[j], j,
                                fix_j, fix_v, nfix)
    return nfix


@njit(cache=True, error_model="numpy")
def stable_pairs_all(family, qa, ra, s1, ga, q2, r2, s2, g2, A, B, D, n, flag, fix_j, fix_v):
    """:func:`stable_pairs` with every column ``j < n`` a candidate.

    The test runs first, over all columns, in a branch-free contiguous loop that vectorizes
    (one byte per pair into the work array ``flag``, ``(>= n,)`` uint8), then the few pairs
    that pass it are evaluated.
    """
    count = 0
    for j in range(n):
        f = _route_stable(family, qa, ra, ga, q2[j], r2[j], g2[j], A[j], B[j], D[j])
        flag[j] = f
        count += f
    nfix = 0
    if count == 0:
        return 0
    for j in range(n):
        if flag[j]:
            nfix = _stable_pair(family, qa, ra, s1, q2[j], r2[j], s2[j], A[j], B[j], D[j], j,
                                fix_j, fix_v, nfix)
    return nfix


@njit(cache=True, error_model="numpy")
def stable_candidates(family, qa, q2max, mmax, A, B, D, n, flag, cand):
    """The columns ``j < n`` of one row that may take the stable route, into ``cand`` (int64,
    ``(>= n,)``; ``flag``: uint8 work array, ``(>= n,)``); returns their number, or -1 when the
    gaps alone cannot decide (a variance outside the plain range: test every column with
    :func:`stable_pairs_all`).

    A superset of the pairs :func:`stable_pairs_all` would select (see
    :func:`infntk._duals.stable_gap_limits`): the pairs that carry ``D`` and those with a small
    gap (NaN counts as small), from ``A``, ``B``, ``D`` only (three arrays, not six), in a
    branch-free loop that vectorizes; :func:`stable_pairs` then applies the exact test to the
    candidates, so that the pairs and their values are the same as :func:`stable_pairs_all`'s.
    """
    ok, lim, glim = stable_gap_limits(family, qa, q2max, mmax)
    if not ok:
        return -1
    count = 0
    for j in range(n):
        a = A[j]
        b = B[j]
        mn = a if a < b else b
        f = (D[j] == D[j]) | (not (mn > lim)) | (not (a > glim)) | (b != b)
        flag[j] = f
        count += f
    if count == 0:
        return 0
    c = 0
    for j in range(n):
        if flag[j]:
            cand[c] = j
            c += 1
    return c


@njit(cache=True, inline="always", error_model="numpy")
def _route_stable(family, qa, ra, ga, q2, r2, g2, A, B, D):
    """Whether a pair takes the stable route: it carries ``D`` or
    :func:`infntk._duals.smooth_route_stable` (branch-free: ``|``, not ``or``)."""
    return (D == D) | smooth_route_stable(family, qa, q2, ra * r2, A, B, ga * g2)


@njit(cache=True, inline="always", error_model="numpy")
def _stable_pair(family, qa, ra, s1, q2, r2, s2, A, B, D, j, fix_j, fix_v, nfix):
    """Record pair ``j``'s stable-route duals as entry ``nfix`` of ``fix_j``, ``fix_v``;
    returns ``nfix + 1``."""
    carried = D == D
    k, kd, kA, kB = smooth_pair(family, qa, q2, ra, r2, A, B, s1, s2, D if carried else qa - q2)
    fix_j[nfix] = j
    fix_v[nfix, 0] = k
    fix_v[nfix, 1] = kd
    fix_v[nfix, 2] = kA
    fix_v[nfix, 3] = kB
    fix_v[nfix, 4] = diag_diff(family, qa, q2, D) if carried else math.nan
    return nfix + 1


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


@njit(cache=True, nogil=True, fastmath={"reassoc"}, error_model="numpy")
def rows_finite(blk, r0, symmetric, i0, i1):
    """Whether rows ``i0:i1`` of the block ``blk`` (``(nb, n)`` float64, C-contiguous) hold
    finite numbers only, reading the written part: columns ``j <= r0 + i`` when
    ``symmetric`` (block row ``i`` is output row ``r0 + i``), else every column.

    One pass: ``sum (v - v)`` is 0 exactly when every ``v`` is finite and NaN as soon as one
    is inf or NaN (``inf - inf`` is NaN), in any order of summation, so the sum may be
    reassociated (``fastmath={"reassoc"}`` only: no NaN or inf assumptions) and vectorizes:
    0.15-0.4 ns per entry (block in cache .. in memory) against 0.35-0.5 ns for
    ``np.isfinite(...).all()``, which also makes a temporary.
    ``nogil``: the Gram driver runs it on its chunk threads, a share of the rows each.
    """
    n = blk.shape[1]
    s = 0.0
    for i in range(i0, i1):
        jend = min(r0 + i + 1, n) if symmetric else n
        t = 0.0
        for j in range(jend):
            v = blk[i, j]
            t += v - v
        s += t
    return s == 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def mirror_tiles(M, r0, r1, c, nch, tile):
    """Copy ``M[j, i]`` onto ``M[i, j]`` for ``j > i`` and the rows ``i`` of the row tiles
    ``[t, t + tile)`` of ``r0:r1``, ``t = r0 + c tile, r0 + (c + nch) tile, ...`` (chunk ``c``
    of ``nch``; ``M`` square, C-contiguous).

    By ``tile x tile`` squares, so that the strided reads of one square stay in the L1 cache
    (1.4-1.9 ns per entry for n = 256..1000 against NumPy's transposed assignment's 1.4-3.1;
    both bound by memory at n = 2000, 6-7 ns). Chunks write disjoint rows and read only the
    strict lower triangle, which no chunk writes, so they run on threads in any order
    (``nogil``); the copies are exact.
    """
    n = M.shape[0]
    for t0 in range(r0 + c * tile, r1, nch * tile):
        t1 = min(t0 + tile, r1)
        for j0 in range(t0, n, tile):
            j1 = min(j0 + tile, n)
            for i in range(t0, t1):
                for j in range(max(j0, i + 1), j1):
                    M[i, j] = M[j, i]


@njit(cache=True, nogil=True, error_model="numpy")
def mirror_stripe(M, r0, r1, c, nch, tile):
    """Copy ``M[i, j]`` onto ``M[j, i]`` for the rows ``i`` of ``r0:r1`` and every ``j < i``: the
    strict upper triangle's columns ``r0:r1`` from a block of rows as soon as it is written
    (``M`` square, C-contiguous). Chunk ``c`` of ``nch`` writes the destination rows of the
    tiles ``[t, t + tile)``, ``t = c tile, (c + nch) tile, ...`` below ``r1``.

    After every block of rows has had its stripe copied, ``M`` is symmetric with the values
    of its lower triangle, as after :func:`mirror_tiles` over all rows; the block's rows are
    still in the cache when they are read here. Chunks write disjoint rows and read only
    rows ``r0:r1`` left of the diagonal, which no chunk writes.
    """
    for t0 in range(c * tile, r1, nch * tile):
        t1 = min(t0 + tile, r1)
        for i0 in range(max(r0, t0), r1, tile):
            i1 = min(i0 + tile, r1)
            for j in range(t0, t1):
                for i in range(max(i0, j + 1), i1):
                    M[j, i] = M[i, j]
