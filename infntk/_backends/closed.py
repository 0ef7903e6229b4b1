"""The closed-form engine: compiled layerwise Sigma/Theta recursions (closed-form duals).

Kernels receive plain arrays and records of arrays only and never validate (the public API
checks and casts first). The compiled entry points: :func:`row_statistics` (O(n L)) and
the pair loop, one kernel per family group (``_block_kinked``, ``_block_arccos``,
``_block_smooth``, chosen by :func:`block_kernel`, run by :func:`gram_block` in chunks of
output rows over threads), so that a network compiles only its own group's code;
:class:`ClosedFormEngine` wraps them in the engine protocol of :mod:`infntk._backends`.

The recursion, for Dense layers ``l = 0..L`` with coefficients ``cK[l]``, ``cb[l]`` (see
:mod:`infntk._layers`) and ``K_0 = <x, y>/d``::

    Sigma^{l+1} = w2 K_l + b2
    Theta^{l+1} = cK[l] K_l + w2 kd_l Theta^l + cb[l]          (Theta^0 = 0)
    K_l, kd_l   = E[phi(u) phi(v)], E[phi'(u) phi'(v)],  (u, v) ~ N(0, Sigma^l)

Per pair the loop carries ``A = sqrt(q1 q2) - Sigma`` and ``B = sqrt(q1 q2) + Sigma``,
which vanish for identical and antipodal features; they are propagated by
``A' = gap + w2 kA``, ``B' = gap + w2 kB + 2 b2`` with the bias gap
``sqrt(q1' q2') - w2 sqrt(k11 k22) - b2 = w2 b2 (sqrt k11 - sqrt k22)^2 / (...) >= 0``.
At the first layer they come from the input rows themselves (a projection with an exact
product for nearly parallel rows), never from ``1 - <x,y>/(|x||y|)``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from .._numba_config import chunk_count, run_chunks

from .._duals import (arccos_pair, diag_dual, erf_plain, gaussian_plain, gaussian_plain_recip,
                      gelu_plain, kinked_state, recip_den_ok, row_may_need_stable,
                      trig_factored_ok, trig_plain, trig_plain_factored)
from ..activations import (FAMILY_ABRELU, FAMILY_ABSTEP, FAMILY_ARCCOS, FAMILY_COS,
                           FAMILY_ERF, FAMILY_GAUSSIAN, FAMILY_GELU, FAMILY_SIN)
from ._common import check_rows_finite, stable_candidates, stable_pairs, stable_pairs_all

__all__ = ["ClosedFormEngine", "NetRecord", "RowRecord", "ColRecord", "row_statistics",
           "gram_block"]


class NetRecord(NamedTuple):
    """The network, as the compiled kernels see it."""

    family: int
    p0: float
    p1: float
    depth: int
    w2: float
    b2: float
    cK: np.ndarray     # (depth + 1,)
    cb: np.ndarray     # (depth + 1,)


class RowRecord(NamedTuple):
    """Per-row data of the output rows (row-major: ``q[i, l]``)."""

    X: np.ndarray      # (n1, d)
    nsq: np.ndarray    # (n1,) squared norms
    q: np.ndarray      # (n1, depth + 1) variances Sigma^l(x, x), l = 1..depth+1
    r: np.ndarray      # sqrt(q)
    sk: np.ndarray     # (n1, depth) sqrt(E[phi(u)^2]) at each activation
    g: np.ndarray      # (n1, depth) gaps' error gain after each activation (row_statistics)
    e: np.ndarray      # (n1, depth + 1) exp(-q / 2) for sin and cos, else (n1, 0)


class ColRecord(NamedTuple):
    """Per-row data of the output columns, layer-major (``qT[l, j]``) for the inner loop."""

    X: np.ndarray      # (n2, d)
    nsq: np.ndarray    # (n2,)
    qT: np.ndarray     # (depth + 1, n2)
    rT: np.ndarray
    skT: np.ndarray    # (depth, n2)
    nrm: np.ndarray    # (n2,) sqrt(nsq)
    gT: np.ndarray     # (depth, n2)
    qmax: np.ndarray   # (depth + 1,) max over the columns of qT[l]
    gmax: np.ndarray   # (depth,) max over the columns of gT[l] (NaN if any is NaN)
    m0: np.ndarray     # (n2,) first_layer_root(nsq): sqrt(w2 |x|^2 / d + b2)
    eT: np.ndarray     # (depth + 1, n2) exp(-qT / 2) for sin and cos, else (0, n2)

# Rows whose Gram cosine is within this distance of +-1 get their angle from the rows.
_PARALLEL_TOL = 0.0625
_SPLITTER = 134217729.0  # 2^27 + 1, Dekker/Veltkamp split


@njit(cache=True, inline="always", error_model="numpy")
def _two_product(a, b):
    """p, e with p + e = a * b exactly (Dekker, no FMA needed)."""
    p = a * b
    t = _SPLITTER * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLITTER * b
    bh = t - (t - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


@njit(cache=True, inline="always", error_model="numpy")
def _cross_norm2_exact(x, y):
    """|x ^ y|^2 = sum_{k<l} (x_k y_l - x_l y_k)^2 with each minor from exact products.

    Exactly 0 for exactly proportional rows; O(d^2), used only when the O(d) projection
    cannot resolve the angle (sin^2 below 1e-28).
    """
    acc = 0.0
    for k in range(x.shape[0]):
        for l in range(k + 1, x.shape[0]):
            p1, e1 = _two_product(x[k], y[l])
            p2, e2 = _two_product(x[l], y[k])
            m = (p1 - p2) + (e1 - e2)
            acc += m * m
    return acc


@njit(cache=True, inline="always", error_model="numpy")
def _sin2_from_rows(x, y, nx2, g):
    """sin^2 of the angle between rows x and y, accurate relative to itself, and |x|^2 - |y|^2.

    r = y - t x with t = <x,y>/|x|^2 (any t leaves |x ^ y| unchanged); each component
    is formed from an exact product, so r is accurate even when it is tiny compared with y
    and sin^2 = (|r|^2 - <x,r>^2/|x|^2)/|y|^2 carries a relative error ~ 1e-48 / sin^2.
    Below 1e-28 (angles under 1e-14, in practice exactly parallel rows) the exact O(d^2)
    minor sum decides, so that exactly parallel rows get exactly 0. The squared-norm
    difference is summed from (x_k - y_k)(x_k + y_k), accurate for nearly equal rows.
    """
    t = g / nx2
    rr = 0.0
    xr = 0.0
    yy = 0.0
    dn2 = 0.0
    same = True
    for k in range(x.shape[0]):
        p, e = _two_product(t, x[k])
        r = (y[k] - p) - e
        rr += r * r
        xr += x[k] * r
        yy += y[k] * y[k]
        dn2 += (x[k] - y[k]) * (x[k] + y[k])
        same = same and x[k] == y[k]
    if same:
        return 0.0, 0.0
    s2 = (rr - xr * xr / nx2) / yy
    if s2 < 1e-28:
        s2 = _cross_norm2_exact(x, y) / nx2 / yy
    if s2 < 0.0:
        s2 = 0.0
    return s2, dn2


@njit(cache=True, inline="always", error_model="numpy")
def _needs_rows(g, nx2, ny2):
    """Whether the Gram cosine is too close to +-1 to give the angle to full accuracy."""
    nn = math.sqrt(nx2) * math.sqrt(ny2)
    return nn > 0.0 and abs(g) > (1.0 - _PARALLEL_TOL) * nn


@njit(cache=True, inline="always", error_model="numpy")
def _first_layer_ab(nx2, ny2, omc, opc, dn, w2, b2, d):
    """(A, B) of Sigma^1 from |x|^2, |y|^2, 1 -+ cos(x, y) and |x| - |y|."""
    return _first_layer_ab_pre(math.sqrt(nx2), math.sqrt(ny2), first_layer_root(nx2, w2, b2, d),
                               first_layer_root(ny2, w2, b2, d), omc, opc, dn, w2, b2, d)


@njit(cache=True, inline="always", error_model="numpy")
def first_layer_root(nsq, w2, b2, d):
    """``sqrt(Sigma^1(x, x)) = sqrt(w2 |x|^2 / d + b2)`` as the first-layer gaps use it (NumPy's
    ``np.sqrt(w2 * nsq / d + b2)`` gives the same floats, for per-row arrays)."""
    return math.sqrt(w2 * nsq / d + b2)


@njit(cache=True, inline="always", error_model="numpy")
def _first_layer_ab_pre(nx, ny, mx, my, omc, opc, dn, w2, b2, d):
    """:func:`_first_layer_ab` from the per-row roots ``|x|``, ``|y|`` and
    ``mx = first_layer_root(|x|^2)``, ``my`` (no square root per pair)."""
    m = mx * my
    w2d = w2 / d                  # loop-invariant in the pair loops (hoisted): no division
    wn = w2d * (nx * ny)
    gap = 0.0
    if b2 > 0.0:
        gap = (w2d * b2) * (dn * dn) / (m + wn + b2)
    return gap + wn * omc, gap + wn * opc + 2.0 * b2


@njit(cache=True, inline="always", error_model="numpy")
def _first_layer_gram(g, nx2, ny2, w2, b2, d):
    """(A, B) of Sigma^1 from the Gram entry: exact unless _needs_rows (branch-free)."""
    return _first_layer_gram_pre(g, math.sqrt(nx2), math.sqrt(ny2),
                                 first_layer_root(nx2, w2, b2, d),
                                 first_layer_root(ny2, w2, b2, d), w2, b2, d)


@njit(cache=True, inline="always", error_model="numpy")
def _first_layer_gram_pre(g, nx, ny, mx, my, w2, b2, d):
    """:func:`_first_layer_gram` from the per-row roots (:func:`_first_layer_ab_pre`): the
    same floats, without the four square roots per pair, so that the pair loop is cheap."""
    nn = nx * ny
    c = g / nn if nn > 0.0 else 0.0
    return _first_layer_ab_pre(nx, ny, mx, my, 1.0 - c, 1.0 + c, nx - ny, w2, b2, d)


@njit(cache=True, error_model="numpy")
def _first_layer_rows(x, y, g, nx2, ny2, w2, b2, d, identical):
    """(A, B) of Sigma^1 from the rows themselves, for (nearly) parallel or identical rows.

    (One call site of the inlined :func:`_first_layer_ab`, explicit loops rather than array
    expressions: each of those is compiled on its own.)"""
    omc = 0.0
    opc = 2.0
    dn = 0.0
    if not identical:
        # rows scaled by one power of two (exact) to norm ~1: the exact products and minors
        # of _sin2_from_rows neither overflow (norms up to 1e150) nor underflow (1e-150)
        e = math.frexp(math.sqrt(max(nx2, ny2)))[1]
        c = math.ldexp(1.0, -e)
        xs = np.empty(x.shape[0])
        ys = np.empty(y.shape[0])
        for k in range(x.shape[0]):
            xs[k] = x[k] * c
            ys[k] = y[k] * c
        s2, dn2 = _sin2_from_rows(xs, ys, nx2 * c * c, g * c * c)
        dn2 = dn2 / (c * c)
        dn = dn2 / (math.sqrt(nx2) + math.sqrt(ny2))
        ac = math.sqrt(1.0 - s2)
        lo = s2 / (1.0 + ac)
        hi = 1.0 + ac
        omc = lo if g > 0.0 else hi
        opc = hi if g > 0.0 else lo
    return _first_layer_ab(nx2, ny2, omc, opc, dn, w2, b2, d)


@njit(cache=True, error_model="numpy")
def row_statistics(net, X, nsq):
    """Per-row quantities of every layer (``net``: a :class:`NetRecord`).

    Returns
    -------
    q : (n, depth + 1)   Sigma^l(x, x) for l = 1..depth+1 (column l-1)
    sk : (n, depth)      sqrt(E[phi(u)^2]) at the activation of layer l = 1..depth
    ntk : (n,)           Theta^{depth+1}(x, x)
    g : (n, depth)       the error gain of the gaps made at activation l: an absolute error e
                         of kA or kB there moves the output kernel by at most
                         e sqrt(g1 g2) relative to sqrt(q_out1 q_out2) (to first order),
                         g = k11_l w2 prod_{l' > l} (E[phi'^2]_{l'} w2) / q_out, made by
                         :func:`suffix_gain` (see :func:`infntk._duals.smooth_route_stable`)
    """
    family, p0, p1, depth, w2, b2, cK, cb = net
    n = X.shape[0]
    d = X.shape[1]
    q = np.empty((n, depth + 1))
    sk = np.empty((n, depth))
    ntk = np.empty(n)
    g = np.empty((n, depth))
    k11s = np.empty(depth)
    kd11s = np.empty(depth)
    for i in range(n):
        k0 = nsq[i] / d
        qi = w2 * k0 + b2
        th = cK[0] * k0 + cb[0]
        q[i, 0] = qi
        for l in range(depth):
            k11, kd11 = diag_dual(family, p0, p1, qi)
            k11s[l] = k11
            kd11s[l] = kd11
            sk[i, l] = math.sqrt(k11)
            th = cK[l + 1] * k11 + w2 * kd11 * th + cb[l + 1]
            qi = w2 * k11 + b2
            q[i, l + 1] = qi
        ntk[i] = th
        G = suffix_gain_start(qi, w2)
        for l in range(depth - 1, -1, -1):
            g[i, l] = G * k11s[l]
            G = (G * kd11s[l]) * w2
    return q, sk, ntk, g


@njit(cache=True, inline="always", error_model="numpy")
def suffix_gain_start(q_out, w2):
    """The gain just before the readout Dense: ``w2 / q_out`` (inf for a zero output row)."""
    return (1.0 / q_out if q_out > 0.0 else math.inf) * w2


@njit(cache=True, inline="always", error_model="numpy")
def _geomean(qa, qb, ra, rb):
    """sqrt(qa qb), from the per-row square roots where the product under- or overflows.

    (Written this way because the plain product of the square roots, though always safe,
    stopped LLVM from vectorizing the pair loops that use it; the relu and step families no
    longer need m at all, see :func:`infntk._duals.kinked_state`.)
    """
    m = math.sqrt(qa * qb)
    if m > 1e-150 and m < 1e150:
        return m
    return ra * rb


@njit(cache=True, inline="always", error_model="numpy")
def _advance(k, kd, kA, kB, s1, s2, rn1, rn2, w2, b2, cK, cb, th):
    """One Dense layer for one pair: ``(Theta', A', B')`` from the activation's
    ``(k, kd, kA, kB)`` and the pair's ``Theta``, with the bias gap.

    Takes and returns scalars only, never the state arrays: an array passed to an inlined
    function gets NRT reference-count calls (incref/decref) in the caller's loop, and when
    a branch (``b2 > 0`` here) separates them, they are still there when LLVM's loop
    vectorizer runs ("call instruction cannot be vectorized"; Numba's reference-count
    pruning removes them only afterwards, leaving a scalar loop without any call).
    """
    gap = 0.0
    if b2 > 0.0:
        ds = s1 - s2
        gap = w2 * b2 * ds * ds / (rn1 * rn2 + w2 * s1 * s2 + b2)
    return cK * k + w2 * kd * th + cb, gap + w2 * kA, gap + w2 * kB + 2.0 * b2


@njit(cache=True, error_model="numpy")
def _plain_pass(family, jend, qa, ra, s1, rn1, q2l, r2l, s2l, r2n, w2, b2, cKl, cbl, A, B, TH, K):
    """One smooth activation layer by the plain route for columns ``j < jend``: one loop per
    family (each vectorizes: the dual and :func:`_advance_plain` inlined, on scalars).
    Inlined into :func:`_block_smooth`, its one call site (not compiled twice); not so
    :func:`_plain_pass_recip`, whose ``fastmath`` flags an inlined body would lose."""
    if family == FAMILY_ERF:
        for j in range(jend):
            k, kd = erf_plain(qa, q2l[j], A[j], B[j])
            TH[j], A[j], B[j] = _advance_plain(k, kd, s1, s2l[j], rn1, r2n[j], w2, b2, cKl, cbl,
                                               TH[j])
            K[j] = k
    elif family == FAMILY_GELU:
        for j in range(jend):
            k, kd = gelu_plain(qa, q2l[j], A[j], B[j])
            TH[j], A[j], B[j] = _advance_plain(k, kd, s1, s2l[j], rn1, r2n[j], w2, b2, cKl, cbl,
                                               TH[j])
            K[j] = k
    elif family == FAMILY_GAUSSIAN:
        for j in range(jend):
            k, kd = gaussian_plain(qa, q2l[j], A[j], B[j])
            TH[j], A[j], B[j] = _advance_plain(k, kd, s1, s2l[j], rn1, r2n[j], w2, b2, cKl, cbl,
                                               TH[j])
            K[j] = k
    else:
        is_sin = family == FAMILY_SIN
        for j in range(jend):
            k, kd = trig_plain(is_sin, ra, r2l[j], A[j], B[j])
            TH[j], A[j], B[j] = _advance_plain(k, kd, s1, s2l[j], rn1, r2n[j], w2, b2, cKl, cbl,
                                               TH[j])
            K[j] = k


@njit(cache=True, inline="always", error_model="numpy")
def _advance_plain(k, kd, s1, s2, rn1, rn2, w2, b2, cK, cb, th):
    """:func:`_advance` with the gaps by subtraction (the plain route)."""
    sk = s1 * s2
    return _advance(k, kd, max(sk - k, 0.0), max(sk + k, 0.0), s1, s2, rn1, rn2, w2, b2, cK, cb,
                    th)


@njit(cache=True, inline="always", error_model="numpy")
def _advance_recip(k, kd, s1, s2, w2, b2, cK, cb, th, iden):
    """:func:`_advance_plain` with the bias gap's ``1 / den`` given (``iden``; any finite value
    for ``b2 = 0``, where the gap is 0)."""
    sk = s1 * s2
    ds = s1 - s2
    gap = (w2 * b2) * (ds * ds) * iden
    return (cK * k + w2 * kd * th + cb, gap + w2 * max(sk - k, 0.0),
            gap + w2 * max(sk + k, 0.0) + 2.0 * b2)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _plain_pass_recip(family, jend, qa, ea, s1, rn1, q2l, e2l, s2l, r2n, w2, b2, cKl, cbl,
                      A, B, TH, K):
    """:func:`_plain_pass` for gaussian (:func:`infntk._duals.gaussian_plain_recip`) and sin, cos
    (:func:`infntk._duals.trig_plain_factored`, ``ea = exp(-qa/2)``, ``e2l = exp(-q2l/2)``):
    the dual's division also gives the bias gap's ``1 / den`` (one division per pair instead
    of two), and multiply-adds contract to FMA (``fastmath={"contract"}`` only: no
    reassociation, no NaN/inf assumptions). For rows where :func:`infntk._duals.recip_den_ok`
    and, for sin and cos, :func:`infntk._duals.trig_factored_ok` hold."""
    ws1 = w2 * s1
    bias = b2 > 0.0
    if family == FAMILY_GAUSSIAN:
        for j in range(jend):
            s2 = s2l[j]
            den = rn1 * r2n[j] + ws1 * s2 + b2
            k, kd, iden = gaussian_plain_recip(qa, q2l[j], A[j], B[j], den if bias else 1.0)
            TH[j], A[j], B[j] = _advance_recip(k, kd, s1, s2, w2, b2, cKl, cbl, TH[j], iden)
            K[j] = k
    else:
        is_sin = family == FAMILY_SIN
        for j in range(jend):
            s2 = s2l[j]
            den = rn1 * r2n[j] + ws1 * s2 + b2
            k, kd, iden = trig_plain_factored(is_sin, ea * e2l[j], A[j], B[j],
                                              den if bias else 1.0)
            TH[j], A[j], B[j] = _advance_recip(k, kd, s1, s2, w2, b2, cKl, cbl, TH[j], iden)
            K[j] = k


@njit(cache=True, error_model="numpy")
def _sqnorm_diff(x, y):
    """|x|^2 - |y|^2 = sum (x_k - y_k)(x_k + y_k), accurate for nearly equal rows; the rows
    are scaled by a power of two (exact) so that norms 1e-150 .. 1e150 neither under- nor
    overflow."""
    mx = 0.0
    for k in range(x.shape[0]):
        mx = max(mx, abs(x[k]), abs(y[k]))
    if mx == 0.0:
        return 0.0
    e = math.frexp(mx)[1]
    c = math.ldexp(1.0, -e)
    acc = 0.0
    for k in range(x.shape[0]):
        acc += (x[k] * c - y[k] * c) * (x[k] * c + y[k] * c)
    return acc / c / c


@njit(cache=True, error_model="numpy")
def _first_layer(i, rows, cols, gi, jend, symmetric, w2, b2, cK0, cb0, A, B, TH, K, Dq,
                 carried, rowf):
    """The state after the first Dense layer for columns ``0..jend-1`` of output row ``i``.

    Angles from the Gram row ``gi`` (a loop that vectorizes), then from the rows themselves
    for the (nearly) parallel pairs and, in the symmetric case, the diagonal (the last
    column). With ``Dq`` of length ``jend`` (the smooth families), also ``D = q1 - q2`` of
    those pairs and their columns in ``carried``; returns how many. ``rowf``: uint8 work
    array, ``(>= jend,)``.
    """
    X1, nsq1 = rows.X, rows.nsq
    X2, nsq2, nrm2, m02 = cols.X, cols.nsq, cols.nrm, cols.m0
    d = X1.shape[1]
    x = X1[i]
    nx2 = nsq1[i]
    nx = math.sqrt(nx2)
    mx = first_layer_root(nx2, w2, b2, d)
    for j in range(jend):                # vectorized: angles from the Gram matrix
        A[j], B[j] = _first_layer_gram_pre(gi[j], nx, nrm2[j], mx, m02[j], w2, b2, d)
        K[j] = gi[j] / d
        TH[j] = cK0 * K[j] + cb0
    smooth = Dq.shape[0] > 0
    ncarried = np.int64(0)  # typed: a literal 0 would compile a second stable_pairs
    # the test first, in a loop that vectorizes (_needs_rows with sqrt(nsq2[j]) precomputed),
    # then the rare pairs that pass it
    nrows = 0
    jlast = jend - 1 if symmetric else jend
    for j in range(jlast):
        nn = nx * nrm2[j]
        f = (nn > 0.0) & (abs(gi[j]) > (1.0 - _PARALLEL_TOL) * nn)
        rowf[j] = f
        nrows += f
    if symmetric:
        rowf[i] = True
    if nrows > 0 or symmetric:
        for j in range(0 if nrows > 0 else jlast, jend):
            if rowf[j]:
                same = symmetric and j == i
                A[j], B[j] = _first_layer_rows(x, X2[j], gi[j], nx2, nsq2[j], w2, b2, d, same)
                if smooth:
                    Dq[j] = 0.0 if same else w2 * (_sqnorm_diff(x, X2[j]) / d)
                    if Dq[j] == Dq[j]:
                        carried[ncarried] = j
                        ncarried += 1
    return ncarried


@njit(cache=True, inline="always", error_model="numpy")
def _work_vectors(n):
    """The per-row state ``A, B, TH, K`` and the ``uint8`` flags of :func:`_first_layer`, for
    up to ``n`` columns: allocated once per chunk, reused by its rows (``jend <= n``)."""
    return np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n, dtype=np.uint8)


@njit(cache=True, inline="always", error_model="numpy")
def _row_index(t, k, nb):
    """Output row ``k`` (0 or 1) of row pair ``t``: ``t``, then ``nb - 1 - t``."""
    return t if k == 0 else nb - 1 - t


@njit(cache=True, inline="always", error_model="numpy")
def _write_row(ib, jend, w2, b2, K, TH, out_nngp, out_ntk):
    for j in range(jend):
        out_nngp[ib, j] = w2 * K[j] + b2
        out_ntk[ib, j] = TH[j]


# One compiled kernel per family group, so that a network compiles only its group's loop
# (Numba does not prune an unused branch: one kernel for all families compiled every dual).
# Each runs the row pairs (t, nb-1-t), t = c, c + nch, ... of one chunk of gram_block;
# the state per row is three work vectors over the columns, looped innermost (with the
# column-major per-row statistics q2T[l, j]) so that the compiler vectorizes the loop.
@njit(cache=True, nogil=True, error_model="numpy")
def _block_kinked(net, rows, cols, G, row0, symmetric, out_nngp, out_ntk, c, nch):
    """ReLU-family (``FAMILY_ABRELU``) and step-family (``FAMILY_ABSTEP``) rows."""
    family, p0, p1, depth, w2, b2, cK, cb = net
    sk1, r1 = rows.sk, rows.r
    X2, nsq2, r2T, sk2T = cols.X, cols.nsq, cols.rT, cols.skT
    step = family == FAMILY_ABSTEP
    nb = G.shape[0]
    d = rows.X.shape[1]
    empty = np.empty(0)
    carried = np.empty(0, dtype=np.int64)
    n2 = X2.shape[0]
    A, B, TH, K, rowf = _work_vectors(n2)
    for t in range(c, (nb + 1) // 2, nch):
        for k in range(1 if nb - 1 - t == t else 2):
            ib = _row_index(t, k, nb)
            i = row0 + ib
            jend = i + 1 if symmetric else n2
            gi = G[ib]
            _first_layer(i, rows, cols, gi, jend, symmetric, w2, b2, cK[0], cb[0], A, B, TH,
                         K, empty, carried, rowf)
            if step:
                # step, sign: only the angle matters, and at tiny norms (m < 1e-100) the gaps
                # of nearly parallel rows are subnormal; recompute them with the rows (and b2)
                # scaled by a power of two: the same angle, gaps of order 1
                x = rows.X[i]
                nx2 = rows.nsq[i]
                for j in range(jend):
                    if r1[i, 0] * r2T[0, j] < 1e-100 and r1[i, 0] * r2T[0, j] > 0.0:
                        e = math.frexp(math.sqrt(max(nx2, nsq2[j])))[1]
                        sc = math.ldexp(1.0, -e)
                        c2 = sc * sc
                        same = symmetric and j == i
                        if same or _needs_rows(gi[j], nx2, nsq2[j]):
                            xs = np.empty(d)         # loops: no array expressions to compile
                            ys = np.empty(d)
                            for k2 in range(d):
                                xs[k2] = x[k2] * sc
                                ys[k2] = X2[j, k2] * sc
                            A[j], B[j] = _first_layer_rows(xs, ys, gi[j] * c2, nx2 * c2,
                                                           nsq2[j] * c2, w2, b2 * c2, d, same)
                        else:
                            A[j], B[j] = _first_layer_gram(gi[j] * c2, nx2 * c2, nsq2[j] * c2,
                                                           w2, b2 * c2, d)
            for l in range(depth):
                s1 = sk1[i, l]
                rn1 = r1[i, l + 1]
                s2l = sk2T[l]
                r2n = r2T[l + 1]
                cKl = cK[l + 1]
                cbl = cb[l + 1]
                # one vectorized loop for both (kinked_state: no m = sqrt(q1 q2) needed)
                for j in range(jend):
                    kk, kd, kA, kB = kinked_state(step, p0, p1, A[j], B[j], s1 * s2l[j])
                    TH[j], A[j], B[j] = _advance(kk, kd, kA, kB, s1, s2l[j], rn1, r2n[j], w2,
                                                 b2, cKl, cbl, TH[j])
                    K[j] = kk
            _write_row(ib, jend, w2, b2, K, TH, out_nngp, out_ntk)


@njit(cache=True, nogil=True, error_model="numpy")
def _block_arccos(net, rows, cols, G, row0, symmetric, out_nngp, out_ntk, c, nch):
    """Arc-cosine kernels of degree ``n = p0`` (``FAMILY_ARCCOS``)."""
    family, p0, p1, depth, w2, b2, cK, cb = net
    q1, r1, sk1 = rows.q, rows.r, rows.sk
    X2, q2T, r2T, sk2T = cols.X, cols.qT, cols.rT, cols.skT
    n = int(p0)
    nb = G.shape[0]
    empty = np.empty(0)
    carried = np.empty(0, dtype=np.int64)
    n2 = X2.shape[0]
    A, B, TH, K, rowf = _work_vectors(n2)
    for t in range(c, (nb + 1) // 2, nch):
        for k in range(1 if nb - 1 - t == t else 2):
            ib = _row_index(t, k, nb)
            i = row0 + ib
            jend = i + 1 if symmetric else n2
            _first_layer(i, rows, cols, G[ib], jend, symmetric, w2, b2, cK[0], cb[0], A, B,
                         TH, K, empty, carried, rowf)
            for l in range(depth):
                qa = q1[i, l]
                ra = r1[i, l]
                s1 = sk1[i, l]
                rn1 = r1[i, l + 1]
                q2l = q2T[l]
                r2l = r2T[l]
                s2l = sk2T[l]
                r2n = r2T[l + 1]
                cKl = cK[l + 1]
                cbl = cb[l + 1]
                for j in range(jend):
                    kk, kd, kA, kB = arccos_pair(n, _geomean(qa, q2l[j], ra, r2l[j]), A[j],
                                                 B[j])
                    TH[j], A[j], B[j] = _advance(kk, kd, kA, kB, s1, s2l[j], rn1, r2n[j], w2,
                                                 b2, cKl, cbl, TH[j])
                    K[j] = kk
            _write_row(ib, jend, w2, b2, K, TH, out_nngp, out_ntk)


@njit(cache=True, nogil=True, error_model="numpy")
def _block_smooth(net, rows, cols, G, row0, symmetric, out_nngp, out_ntk, c, nch):
    """The smooth families (erf, GELU, sin, cos, Gaussian): the plain pass for the pairs where
    nothing cancels, the stable route (:mod:`infntk._backends._common`) for the others."""
    family, p0, p1, depth, w2, b2, cK, cb = net
    q1, r1, sk1, g1, e1 = rows.q, rows.r, rows.sk, rows.g, rows.e
    X2, q2T, r2T, sk2T, g2T, q2max, g2max, e2T = (cols.X, cols.qT, cols.rT, cols.skT, cols.gT,
                                                  cols.qmax, cols.gmax, cols.eT)
    # sin, cos, gaussian also take the bias gap's sqrt(k11) - sqrt(k22) from it
    exact_d = family == FAMILY_SIN or family == FAMILY_COS or family == FAMILY_GAUSSIAN
    # the one-division plain pass (_plain_pass_recip): gaussian always, sin and cos for rows
    # within trig_factored_ok (e1, e2T are there for them), if the bias gap's range allows
    trig = family == FAMILY_SIN or family == FAMILY_COS
    recip = (family == FAMILY_GAUSSIAN or (trig and e1.shape[1] > 0)) and recip_den_ok(w2, b2)
    nb = G.shape[0]
    n2 = X2.shape[0]
    A, B, TH, K, rowf = _work_vectors(n2)
    Dq = np.empty(n2)
    carried = np.empty(n2, dtype=np.int64)
    fix_j = np.empty(n2, dtype=np.int64)
    fix_v = np.empty((n2, 6))
    flag = np.empty(n2, dtype=np.uint8)
    cand = np.empty(n2, dtype=np.int64)
    for t in range(c, (nb + 1) // 2, nch):
        for k in range(1 if nb - 1 - t == t else 2):
            ib = _row_index(t, k, nb)
            i = row0 + ib
            jend = i + 1 if symmetric else n2
            # D = q1 - q2 for the nearly parallel pairs (the ones whose angle comes from the
            # rows): their radial gap needs it to full relative accuracy, which q1 - q2 of the
            # rounded per-row variances is not. NaN: not carried, q1 - q2 is used (a pair
            # starting at |cos| < 15/16 reaches a small gap only where the recursion
            # contracts, or keeps its gap O(1) in the chaotic regime).
            Dq[:jend] = math.nan
            ncarried = _first_layer(i, rows, cols, G[ib], jend, symmetric, w2, b2, cK[0], cb[0],
                                    A, B, TH, K, Dq, carried, rowf)
            for l in range(depth):
                qa = q1[i, l]
                ra = r1[i, l]
                s1 = sk1[i, l]
                rn1 = r1[i, l + 1]
                q2l = q2T[l]
                r2l = r2T[l]
                s2l = sk2T[l]
                r2n = r2T[l + 1]
                cKl = cK[l + 1]
                cbl = cb[l + 1]
                # the pairs that take the stable route (carried D, or a small gap the rest of
                # the network would amplify): computed first from the entry state, applied last
                ga = g1[i, l]
                # (one call site of each: they are inlined, see stable_pairs)
                nc = np.int64(-2)                    # -2: only the pairs that carry D
                if row_may_need_stable(qa, q2max[l], ga, g2max[l]):
                    # candidates from the gaps alone (a superset), then the exact test on
                    # them; every column (-1) when a variance leaves the plain range
                    nc = stable_candidates(family, qa, q2max[l], ra * math.sqrt(q2max[l]), A, B,
                                           Dq, jend, flag, cand)
                if nc == -1:
                    nfix = stable_pairs_all(family, qa, ra, s1, ga, q2l, r2l, s2l, g2T[l], A,
                                            B, Dq, jend, flag, fix_j, fix_v)
                else:
                    some = nc >= 0
                    nfix = stable_pairs(family, qa, ra, s1, ga, q2l, r2l, s2l, g2T[l], A, B, Dq,
                                        cand if some else carried, nc if some else ncarried,
                                        fix_j, fix_v)
                for cc in range(nfix):
                    j = fix_j[cc]
                    fix_v[cc, 5] = TH[j]
                    s2 = s2l[j]
                    dk = fix_v[cc, 4]
                    if dk == dk:                      # carried: D' = w2 (k11 - k22)
                        Dq[j] = w2 * dk
                        if exact_d and s1 + s2 > 0.0:  # sqrt(k11) - sqrt(k22) from the pair's D
                            s2 = s1 - dk / (s1 + s2)
                    fix_v[cc, 4] = s2
                if recip and (not trig or trig_factored_ok(qa, q2max[l])):
                    _plain_pass_recip(family, jend, qa, e1[i, l] if trig else 1.0, s1, rn1, q2l,
                                      e2T[l] if trig else q2l, s2l, r2n, w2, b2, cKl, cbl,
                                      A, B, TH, K)
                else:
                    _plain_pass(family, jend, qa, ra, s1, rn1, q2l, r2l, s2l, r2n, w2, b2, cKl,
                                cbl, A, B, TH, K)
                for cc in range(nfix):
                    j = fix_j[cc]
                    TH[j], A[j], B[j] = _advance(fix_v[cc, 0], fix_v[cc, 1], fix_v[cc, 2],
                                                 fix_v[cc, 3], s1, fix_v[cc, 4], rn1, r2n[j],
                                                 w2, b2, cKl, cbl, fix_v[cc, 5])
                    K[j] = fix_v[cc, 0]
            _write_row(ib, jend, w2, b2, K, TH, out_nngp, out_ntk)


def block_kernel(family):
    """The compiled block kernel of ``family`` (a family code of :mod:`infntk.activations`)."""
    if family == FAMILY_ABRELU or family == FAMILY_ABSTEP:
        return _block_kinked
    if family == FAMILY_ARCCOS:
        return _block_arccos
    return _block_smooth


def gram_block(net, rows, cols, G, row0, symmetric, out_nngp, out_ntk):
    """Fill ``out_nngp[ib]``, ``out_ntk[ib]`` for the rows ``ib`` of one block.

    ``G[ib, j] = <X1[row0 + ib], X2[j]>``. With ``symmetric`` (X2 is X1) only the columns
    ``j <= row0 + ib`` are computed (the caller mirrors). Per-row arrays are indexed
    globally (``q1[row0 + ib]``), outputs locally. Rows are taken in pairs (ib, nb-1-ib) so
    that the triangle's work is split evenly between threads.
    """
    kernel = block_kernel(net.family)
    nch = chunk_count((G.shape[0] + 1) // 2, per_thread=2)
    run_chunks(lambda c: kernel(net, rows, cols, G, row0, symmetric, out_nngp, out_ntk, c, nch),
               nch)


# ----------------------------------------------------------------------------- the engine
def _column_max(M):
    """Per row of ``M`` (layer-major), the largest entry; NaN if any entry is NaN (a NaN gain
    counts as large); 0 for no columns."""
    if M.shape[1] == 0:
        return np.zeros(M.shape[0])
    return np.max(M, axis=1)


class _Plan(NamedTuple):
    rows: RowRecord
    cols: ColRecord
    error_bound: None = None
    orders: None = None


class ClosedFormEngine:
    """Engine protocol (:mod:`infntk._backends`) for activations with a closed-form dual.

    Parameters
    ----------
    family : infntk.activations.Family
    setup : infntk._layers.LayerSetup
    """

    def __init__(self, family, setup):
        self.net = NetRecord(int(family.code), float(family.p0), float(family.p1),
                             setup.depth, setup.w2, setup.b2, setup.cK, setup.cb)

    def rows(self, X):
        """``RowRecord`` of validated rows ``X`` plus the NTK diagonal; overflow raises."""
        nsq = np.einsum("ij,ij->i", X, X)
        q, sk, ntk, g = row_statistics(self.net, X, nsq)
        check_rows_finite(q, ntk)
        trig = self.net.family in (FAMILY_SIN, FAMILY_COS)
        e = np.exp(-0.5 * q) if trig else np.empty((q.shape[0], 0))
        return RowRecord(X, nsq, q, np.sqrt(q), sk, g, e), ntk

    def prepare(self, rows1, rows2, symmetric):
        rec1, _ = rows1
        rec2, _ = rows2
        qT = np.ascontiguousarray(rec2.q.T)
        gT = np.ascontiguousarray(rec2.g.T)
        net = self.net
        m0 = np.sqrt(net.w2 * rec2.nsq / rec2.X.shape[1] + net.b2)   # first_layer_root
        cols = ColRecord(rec2.X, rec2.nsq, qT, np.sqrt(qT), np.ascontiguousarray(rec2.sk.T),
                         np.sqrt(rec2.nsq), gT, _column_max(qT), _column_max(gT), m0,
                         np.ascontiguousarray(rec2.e.T))
        return _Plan(rec1, cols)

    def block(self, plan, X1, X2, G, row0, symmetric, out_nngp, out_ntk):
        gram_block(self.net, plan.rows, plan.cols, G, row0, symmetric, out_nngp, out_ntk)

    def finish(self, plan):
        return None

    def diag(self, rows):
        rec, ntk = rows
        return rec.q[:, -1].copy(), ntk
