r"""The Hermite-series engine: kernels of activations without a closed form.

Used for tanh, sigmoid, softplus, silu, elu(alpha) and any Python callable
(``activation.family is None``). :class:`SeriesEngine` implements the engine protocol of
:mod:`infntk._backends`; the pair loop is :func:`series_block` (output rows in chunks over
threads).

Per layer, ``K_l = sum_k a_k(q_l(x)) a_k(q_l(y)) rho_l^k`` and
``kd_l = sum_k b_k(q_l(x)) b_k(q_l(y)) rho_l^k`` (Mehler), with per-row coefficients from
:mod:`infntk.hermite`, truncation orders ``K_l`` chosen per layer, and one certified bound on
``|computed - exact|`` for every entry of both kernels. The recursion, the conventions for
degenerate rows and the symmetric diagonal, the derivation of the bound and the choice of the
orders are in docs/series_engine.md.

Pairs whose Mehler series cannot meet the target within the order cap (large variance and
correlation near 1) are marked by the pair loop and recomputed, layer by layer with the same
error propagation, by the direct 2-D quadrature :func:`infntk.quadrature.pair_expectations`
(:func:`_quadrature_pairs`; docs/series_engine.md, "Direct quadrature"), when ``phi'`` is
continuous.

Memory: ``O(n L)`` per-row records; the coefficients are made per block by fixed chunks of
``_COEF_CHUNK`` rows (:class:`_CoefStore`), kept only while a side fits the budget, so the
working memory is bounded by the block (docs/series_engine.md, "Memory").

Cost: coefficients ``O(n_distinct_q * nodes * K)`` per layer (NumPy, vectorized); pairs
``2 (K_l + 1)`` multiply-adds per pair and layer.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import warnings
from typing import NamedTuple

import numpy as np
import numba
from numba import njit

from .. import hermite
from .._numba_config import blas_one_thread, chunk_count, run_chunks
from ..quadrature import pair_expectations
from ._common import check_rows_finite, clipped_correlation

__all__ = ["SeriesEngine", "SeriesNet", "SeriesRows", "SeriesCols", "series_block", "K_MAX"]

#: Largest truncation order used (tails of kinked activations decay algebraically).
K_MAX = 400
_EPS = float(np.finfo(float).eps)
_N_QUANTILES = 16
_CHUNK = 256
_CAP0 = 96
#: rows per coefficient chunk: a fixed partition of each side's rows, so that a row's
#: coefficients never depend on the block sizes (results are the same for any block_rows)
_COEF_CHUNK = 512
#: coefficients of a whole side are kept only if they fit in this many bytes, or in three
#: times the block's own work space (its Gram product and output rows), whichever is larger
_COEF_BUDGET = 64 * 2 ** 20
#: entries of one block of the extra Gram pass in :func:`_partners`
_PARTNER_FLOATS = 2 ** 19
#: rounding allowance of the direct 2-D quadrature, in eps times sqrt(E_x E_y) (contiguous
#: pairwise sums of ~600 terms on each axis, the nodes' weights, phi's own rounding; measured
#: <= 20 eps against closed forms and mpmath, tests/test_series_quadrature.py)
_QUAD_ERR = 128.0
#: safety factor on the estimate |fine - coarse| of the direct quadrature's error
_QUAD_SAFETY = 2.0
#: a pair goes to the direct quadrature only if its Mehler bound exceeds this many eps of the
#: scale (below, the quadrature's own rounding allowance would not be smaller)
_QUAD_FLOOR = 1024.0
#: largest standard deviation (every layer) of a pair sent to the direct quadrature: its panels
#: grow like log2(r), so the work per pair stays below ~1e6 evaluations (variances <= 1e6)
_QUAD_RMAX = 1e3
#: a row with more than this many pairs for the direct quadrature keeps the series for all of
#: them (the quadrature costs ~25 ms per pair and layer; meant for isolated close pairs, not
#: for inputs whose every pair is close, such as uncentred features of large norm)
_QUAD_ROW_PAIRS = 8


# ----------------------------------------------------------------------------- compiled pairs
@njit(cache=True, inline="always", error_model="numpy")
def _rounding(a, K):
    """Relative rounding allowance of a Horner sum at ``|rho| = a`` (times ``sqrt(E1 E2)``).

    Horner passes the term of degree ``k`` through ``2k + 1`` roundings, so its error is at
    most ``eps sum_k (2k + 2) |c_k| a^k <= eps sqrt(E1 E2) sqrt(4 (1 + x) / (1 - x)^3)``,
    ``x = a^2`` (Cauchy-Schwarz with ``|a_k| <= sqrt(E)``), and at most ``(2K + 3) eps``;
    the coefficients' quadrature errors (``<= 4.5 eps sqrt(E)`` each, tests/test_hermite.py)
    add ``9 eps sqrt(E1 E2) min(sqrt(K + 1), (1 - x)^(-1/2))`` the same way.
    """
    x = a * a
    om = 1.0 - x
    if om <= 0.0:
        return (2.0 * K + 3.0 + 9.0 * math.sqrt(K + 1.0)) * _EPS
    h = min(2.0 * K + 3.0, math.sqrt(4.0 * (1.0 + x) / (om * om * om)))
    c = min(math.sqrt(K + 1.0), 1.0 / math.sqrt(om))
    return (h + 9.0 * c) * _EPS


#: correlation levels of the graded per-row sums: 0, 1 - 2^(-m/2) (m = 1..40), 1
_N_GRID = 42
GRID = np.concatenate([[0.0], 1.0 - 2.0 ** (-0.5 * np.arange(1, _N_GRID - 1)), [1.0]])
#: the graded sums per row and level (docs/series_engine.md, "Graded rounding terms")
_G_MA, _G_NA, _G_MB, _G_NB, _G_S1 = range(5)
#: a coefficient's quadrature error is at most this many eps times sqrt(E[phi^2])
#: (measured against 50-digit values, tests/test_hermite.py)
_COEF_ERR = 4.5
#: relative quadrature error allowed for the exact second moments on the symmetric diagonal:
#: E[phi^2] is the k = 0 coefficient of phi^2, so within 4.5 eps sqrt(E[phi^4]); 64 eps
#: covers sqrt(E[phi^4]) / E[phi^2] up to 14 (1.7 for a linear phi, 1 for a sign-like one,
#: 3.2 for the Gaussian bump at q = 1e2, 14 at q = 1e5); it replaces the Horner allowance
#: 16 (K + 2) eps there (no series is summed on the diagonal)
_DIAG_ERR = 64.0


@njit(cache=True, inline="always", error_model="numpy")
def _level(r, grid):
    """The smallest grid index ``m`` with ``grid[m] >= r`` (``r`` in ``[0, 1]``)."""
    n = grid.size
    if r <= 0.0:
        return 0
    if r >= 1.0:
        return n - 1
    # 1 - r = f 2^e, f in [0.5, 1): -2 log2(1 - r) = -2 e - 2 log2(f), the last in (0, 2]
    f, e = math.frexp(1.0 - r)
    m = -2 * e + (1 if f >= 0.7071067811865476 else 2) - 1
    m = min(max(m, 1), n - 1)
    while m < n - 1 and grid[m] < r:
        m += 1
    return m


#: the mantissa bits of sqrt(2) rounded (``2 * 0.7071067811865476``, the threshold of
#: :func:`_level`'s ``frexp`` fraction, doubled exactly)
_MANT_MASK = (1 << 52) - 1
_MANT_SQRT2 = int(np.array([1.4142135623730951]).view(np.int64)[0]) & _MANT_MASK


@njit(cache=True, inline="always", error_model="numpy")
def _level_start(bits, r, n):
    """:func:`_level`'s starting index before its upward search, from the bits of ``1 - r``.

    ``bits``: the IEEE bits of ``1 - r`` (normal for ``0 < r < 1``); the exponent and the
    mantissa give ``frexp(1 - r)`` without a call, so that the loop over a chunk vectorizes.
    The caller finishes with ``while grid[m] < r: m += 1`` (``grid[n - 1] = 1 >= r``), which
    makes the result :func:`_level`'s.
    """
    e = ((bits >> 52) & 0x7FF) - 1022                  # frexp exponent: 1 - r = f 2^e
    m = -2 * e + (1 if (bits & _MANT_MASK) >= _MANT_SQRT2 else 2) - 1
    m = min(max(m, 1), n - 1)
    m = 0 if r <= 0.0 else m
    return n - 1 if r >= 1.0 else m


@njit(cache=True, inline="always", error_model="numpy")
def _rounding_fast(a, hK, sK1):
    """:func:`_rounding` without its branch (``hK = 2K + 3``, ``sK1 = sqrt(K + 1)``): at
    ``a = 1`` the two infinities select ``hK`` and ``sK1``, the same value bit for bit."""
    x = a * a
    om = 1.0 - x
    h = min(hK, math.sqrt(4.0 * (1.0 + x) / (om * om * om)))
    c = min(sK1, 1.0 / math.sqrt(om))
    return (h + 9.0 * c) * _EPS


@njit(cache=True, inline="always", error_model="numpy")
def _powers(A, B, FA, FB, PA, PB, nj, n, safety):
    """``FA[:nj] = A^n safety``, ``FB[:nj] = B^n safety`` for ``0 <= A, B <= 1`` by repeated
    squaring (loops over the chunk that vectorize; ``PA``, ``PB`` work space).

    Binary powering rounds at most ``2 log2 n`` times, relative error ``<= (n - 1) eps / 2``
    (Higham, *Accuracy and Stability of Numerical Algorithms*, sec. 3.1): ``safety =
    1 + 2 (n + 1) eps`` makes the result an upper bound of the exact power (underflow to 0
    below ~1e-308 aside).
    """
    for jj in range(nj):
        PA[jj] = A[jj]
        PB[jj] = B[jj]
        FA[jj] = safety
        FB[jj] = safety
    e = n
    while True:
        if e & 1:
            for jj in range(nj):
                FA[jj] *= PA[jj]
                FB[jj] *= PB[jj]
        e >>= 1
        if e == 0:
            break
        for jj in range(nj):
            PA[jj] *= PA[jj]
            PB[jj] *= PB[jj]


@njit(cache=True, inline="always", error_model="numpy")
def _quadrature_eligible(rq1, rq2, i, j, depth):
    """Whether the pair ``(i, j)`` may go to the direct quadrature: no degenerate row at layer 0
    and standard deviations ``<= _QUAD_RMAX`` at every layer (bounded work per pair)."""
    if not rq1[0, i] * rq2[0, j] > 0.0:
        return False
    for l in range(depth):
        if rq1[l, i] > _QUAD_RMAX or rq2[l, j] > _QUAD_RMAX:
            return False
    return True


def series_block(net, rows, cols, bnd, G, row0, symmetric, out_nngp, out_ntk, excess, errb,
                 flags, errq):
    """Fill the rows ``ib`` of one block of the NNGP and NTK Gram matrices.

    ``net``: :class:`SeriesNet`, ``rows``: :class:`SeriesRows`, ``cols``: :class:`SeriesCols`,
    ``bnd``: :class:`SeriesBoundData` (per-row square roots of the bound's ingredients).

    ``G[ib, j] = <X1[row0 + ib], X2[j]>``; only the columns ``cols.start <= j < cols.stop``
    are computed (one column chunk). The ``(L, n)`` per-row arrays are indexed globally
    (``rq1[l, i] = sqrt(q_l(x_i))``); the coefficients only for the rows and columns at hand:
    ``a1[l, i - rows.off, k] = a_k(q_l(x_i))`` (zero-padded beyond ``Ks[l]``) and
    ``a2T[l, k, j - cols.start]`` (transposed so that the pair loop runs over contiguous
    columns). ``E1, Ed1``: exact diagonal values used when ``symmetric`` (then only ``j <= i``
    is computed). ``excess[ib]``, ``errb[ib]`` are raised (not overwritten) to the largest
    ``|rho| - 1`` clipped and the largest certified error bound of the row's entries (both
    kernels) in this call, leaving out the pairs whose bound exceeds ``net.thr``: those are
    marked in ``flags[ib, j]`` (``int8``, raised to 1, never cleared) for the caller, and the
    largest of their bounds per row in ``errq[ib]`` (raised).
    Rows are taken in pairs ``(t, nb-1-t)`` to balance the triangle between threads.
    """
    nch = chunk_count((G.shape[0] + 1) // 2, per_thread=2)
    run_chunks(lambda c: _series_block_chunk(net, rows, cols, bnd, G, row0, symmetric, out_nngp,
                                             out_ntk, excess, errb, flags, errq, c, nch), nch)


@njit(cache=True, nogil=True, error_model="numpy")
def _series_block_chunk(net, rows, cols, bnd, G, row0, symmetric, out_nngp, out_ntk, excess,
                        errb, flags, errq, c, nch):
    """The row pairs ``(t, nb-1-t)``, ``t = c, c + nch, ...`` of :func:`series_block`.

    Each output row ``ib`` by chunks of ``_CHUNK`` columns (the work vectors stay in L1).
    (The row's body is written here, not in a function of its own: Numba links a callee's
    code into its caller's module and optimizes and code-generates it there again, and
    inlining it at the bytecode level costs a second front end; either doubled the
    compilation of this, the engine's one large kernel.)

    Next to the kernels it propagates, per pair, the bounds ``eS``, ``eT`` on the errors of
    the carried ``S_l`` and ``Theta_l`` (docs/series_engine.md, "Certified bound") and
    records their largest value in ``errb[ib]``. A pair whose bound exceeds ``net.thr``
    (its Mehler series has not converged, docs/series_engine.md, "Direct quadrature") is
    marked in ``flags[ib, j]`` instead and left out of ``errb`` (the caller recomputes it);
    the largest such bound of the row goes to ``errq[ib]`` (used if the row stays on the series).
    """
    nb = G.shape[0]
    for t in range(c, (nb + 1) // 2, nch):
        for kk in range(1 if nb - 1 - t == t else 2):
            ib = t if kk == 0 else nb - 1 - t
            depth, Ks, w2, b2, d, cK, cb, grid, thr = net
            nsq1, rq1, a1, b1, E1, Ed1, g1, roff = rows
            rq2, a2T, b2T, g2, c0, c1 = cols
            sE1, sEd1, stT1, stD1, sS11, th01, sE2, sEd2, stT2, stD2, sS12, th02, first, rnd = bnd
            i = row0 + ib
            ir = i - roff
            jend = min(c1, i + 1 if symmetric else G.shape[1])
            S = np.empty(_CHUNK)
            TH = np.empty(_CHUNK)
            R = np.empty(_CHUNK)
            acc = np.empty(_CHUNK)
            accd = np.empty(_CHUNK)
            eS = np.empty(_CHUNK)
            eT = np.empty(_CHUNK)
            AB = np.empty(_CHUNK)
            DL = np.empty(_CHUNK)
            AD = np.empty(_CHUNK)
            RP = np.empty(_CHUNK)
            FT = np.empty(_CHUNK)
            FD = np.empty(_CHUNK)
            PA = np.empty(_CHUNK)
            PD = np.empty(_CHUNK)
            EK = np.empty(_CHUNK)
            EKD = np.empty(_CHUNK)
            OM = np.empty(_CHUNK)
            OMD = np.empty(_CHUNK)
            OMI = OM.view(np.int64)
            OMDI = OMD.view(np.int64)
            MA = np.empty(_CHUNK, dtype=np.int64)
            MD = np.empty(_CHUNK, dtype=np.int64)
            ng = grid.size
            ex = 0.0
            worst = 0.0
            worstq = 0.0
            for j0 in range(c0, jend, _CHUNK):
                nj = min(_CHUNK, jend - j0)
                jc = j0 - c0
                for jj in range(nj):
                    j = j0 + jj
                    g = G[ib, j] / d
                    if symmetric and j == i:
                        g = nsq1[i] / d
                    S[jj] = w2 * g + b2
                    TH[jj] = cK[0] * g + cb[0]
                    eS[jj] = first * rq1[0, i] * rq2[0, j]
                    eT[jj] = first * math.sqrt(th01[i] * th02[j])
                for l in range(depth):
                    K = Ks[l]
                    r1 = rq1[l, i]
                    r2 = rq2[l, j0:j0 + nj]
                    for jj in range(nj):
                        m = r1 * r2[jj]
                        rho, ex = clipped_correlation(S[jj], m, ex)
                        R[jj] = rho
                    ca = a1[l, ir, K]
                    cd = b1[l, ir, K]
                    ak = a2T[l, K, jc:jc + nj]
                    bk = b2T[l, K, jc:jc + nj]
                    for jj in range(nj):
                        acc[jj] = ca * ak[jj]
                        accd[jj] = cd * bk[jj]
                    # Horner, four degrees per pass over the columns (the accumulators stay in
                    # registers): the same operations in the same order as one degree per pass
                    k = K - 1
                    while k >= 3:
                        x0, x1 = a1[l, ir, k], a1[l, ir, k - 1]
                        x2, x3 = a1[l, ir, k - 2], a1[l, ir, k - 3]
                        y0, y1 = b1[l, ir, k], b1[l, ir, k - 1]
                        y2, y3 = b1[l, ir, k - 2], b1[l, ir, k - 3]
                        ak0, ak1 = a2T[l, k, jc:jc + nj], a2T[l, k - 1, jc:jc + nj]
                        ak2, ak3 = a2T[l, k - 2, jc:jc + nj], a2T[l, k - 3, jc:jc + nj]
                        bk0, bk1 = b2T[l, k, jc:jc + nj], b2T[l, k - 1, jc:jc + nj]
                        bk2, bk3 = b2T[l, k - 2, jc:jc + nj], b2T[l, k - 3, jc:jc + nj]
                        for jj in range(nj):
                            r = R[jj]
                            sa = acc[jj] * r + x0 * ak0[jj]
                            sa = sa * r + x1 * ak1[jj]
                            sa = sa * r + x2 * ak2[jj]
                            acc[jj] = sa * r + x3 * ak3[jj]
                            sb = accd[jj] * r + y0 * bk0[jj]
                            sb = sb * r + y1 * bk1[jj]
                            sb = sb * r + y2 * bk2[jj]
                            accd[jj] = sb * r + y3 * bk3[jj]
                        k -= 4
                    while k >= 0:
                        ca = a1[l, ir, k]
                        cd = b1[l, ir, k]
                        ak = a2T[l, k, jc:jc + nj]
                        bk = b2T[l, k, jc:jc + nj]
                        for jj in range(nj):
                            acc[jj] = acc[jj] * R[jj] + ca * ak[jj]
                            accd[jj] = accd[jj] * R[jj] + cd * bk[jj]
                        k -= 1
                    cKl = cK[l + 1]
                    cbl = cb[l + 1]
                    Rl = rnd[l]
                    p1 = sE1[l, i]
                    pd1 = sEd1[l, i]
                    t1 = stT1[l, i]
                    u1 = stD1[l, i]
                    v1 = sS11[l, i]
                    K1 = K + 1.0
                    sK1 = math.sqrt(K1)
                    hK = 2.0 * K + 3.0
                    # the bound's per-pair factors, branch-free loops that vectorize:
                    # |rho^|, delta, min(1, |rho^| + delta), Horner's rounding factor, the
                    # levels' start
                    for jj in range(nj):
                        m = r1 * r2[jj]
                        a = abs(R[jj])
                        dl = eS[jj] / m if m > 0.0 else 0.0
                        aD = min(1.0, a + dl)
                        AB[jj] = a
                        DL[jj] = dl
                        AD[jj] = aD
                        RP[jj] = min(Rl, _rounding_fast(a, hK, sK1))
                        OM[jj] = 1.0 - a
                        OMD[jj] = 1.0 - aD
                    for jj in range(nj):
                        MA[jj] = _level_start(OMI[jj], AB[jj], ng)
                        MD[jj] = _level_start(OMDI[jj], AD[jj], ng)
                    # |rho^|^(K+1), min(1, |rho^| + delta)^(K+1) by repeated squaring, times an
                    # allowance for its roundings
                    _powers(AB, AD, FT, FD, PA, PD, nj, K + 1, 1.0 + 2.0 * (K + 2.0) * _EPS)
                    diag = i - j0 if symmetric and j0 <= i < j0 + nj else -1
                    for jj in range(nj):
                        j = j0 + jj
                        a = AB[jj]
                        aD = AD[jj]
                        ma = MA[jj]
                        while grid[ma] < a:
                            ma += 1
                        md = MD[jj]
                        while grid[md] < aD:
                            md += 1
                        p2 = sE2[l, j]
                        pd2 = sEd2[l, j]
                        lip = pd1 * pd2
                        Rp = RP[jj]
                        jg = jc + jj
                        # graded sums at the level above |rho^| (rounding, coefficient errors)
                        # and above the exact |rho| <= aD (the sensitivity of the phi' series)
                        hk = 1.01 * _EPS * g1[l, ir, ma, _G_MA] * g2[l, jg, ma, _G_MA]
                        qk = (_COEF_ERR * _EPS * (p1 * g2[l, jg, ma, _G_NA]
                                                  + p2 * g1[l, ir, ma, _G_NA])
                              + _COEF_ERR * _COEF_ERR * _EPS * _EPS * K1 * p1 * p2)
                        hd = 1.01 * _EPS * g1[l, ir, ma, _G_MB] * g2[l, jg, ma, _G_MB]
                        qd = (_COEF_ERR * _EPS * (pd1 * g2[l, jg, ma, _G_NB]
                                                  + pd2 * g1[l, ir, ma, _G_NB])
                              + _COEF_ERR * _COEF_ERR * _EPS * _EPS * K1 * lip)
                        sens = min(v1 * sS12[l, j],
                                   1.01 * g1[l, ir, md, _G_S1] * g2[l, jg, md, _G_S1])
                        EK[jj] = (lip * eS[jj] + FT[jj] * t1 * stT2[l, j]
                                  + min(Rp * p1 * p2, hk + qk))
                        EKD[jj] = DL[jj] * sens + FD[jj] * u1 * stD2[l, j] + min(Rp * lip, hd + qd)
                    if diag >= 0:
                        # exact second moments: only the propagated error of the variance and
                        # their quadrature error (no Horner sum: independent of K)
                        acc[diag] = E1[l, i]
                        accd[diag] = Ed1[l, i]
                        lip = pd1 * sEd2[l, i]
                        Rd = min(Rl, _DIAG_ERR * _EPS)
                        EK[diag] = lip * eS[diag] + Rd * p1 * sE2[l, i]
                        ekd = Rd * lip
                        m = r1 * r2[diag]
                        if m > 0.0:
                            ekd += (eS[diag] / m) * v1 * sS12[l, i]
                        EKD[diag] = ekd
                    for jj in range(nj):
                        j = j0 + jj
                        lip = pd1 * sEd2[l, j]
                        eK = EK[jj]
                        thn = cKl * acc[jj] + w2 * accd[jj] * TH[jj] + cbl
                        eT[jj] = (cKl * eK + w2 * ((1.0 + Rl) * lip * eT[jj]
                                                   + EKD[jj] * (abs(TH[jj]) + eT[jj]))
                                  + 4.0 * _EPS * abs(thn))
                        TH[jj] = thn
                        S[jj] = w2 * acc[jj] + b2
                        eS[jj] = w2 * eK + 4.0 * _EPS * abs(S[jj])
                dg = i - j0 if symmetric else -1
                for jj in range(nj):
                    out_nngp[ib, j0 + jj] = S[jj]
                    out_ntk[ib, j0 + jj] = TH[jj]
                    e = max(eS[jj], eT[jj])
                    if e > thr and jj != dg and _quadrature_eligible(rq1, rq2, i, j0 + jj, depth):
                        flags[ib, j0 + jj] = 1
                        worstq = max(worstq, e)
                    else:
                        worst = max(worst, e)
            excess[ib] = max(excess[ib], ex)
            errb[ib] = max(errb[ib], worst)
            errq[ib] = max(errq[ib], worstq)


# ----------------------------------------------------------------------------- admissible phi
def _with_kink_at_zero(act):
    """A user callable with ``0`` added to its kinks (its quadrature never evaluates it at 0).

    Nothing is known about a callable's smoothness; ``x = 0`` is where kinks usually are
    (``abs``, ``relu``, and ``np.sign(0) = 0`` as a derivative), so every rule used for it
    splits there and has no node at 0 (docs/series_engine.md, "Admissible activations").
    """
    if "callable" in act.params and 0.0 not in act.kinks:
        return dataclasses.replace(act, kinks=tuple(act.kinks) + (0.0,))
    return act


def _jump_grid(kinks):
    """Breakpoints in x for the continuity check: 0, the kinks, 0.02 steps to 2, then 2%."""
    inner = np.arange(1, 101) * 0.02
    outer = 2.0 * 1.02 ** np.arange(1, 431)             # up to ~1e4
    pos = np.concatenate([inner, outer])
    pts = np.concatenate([-pos[::-1], [0.0], pos, np.asarray(kinks, float)])
    return np.unique(pts)


def check_continuous(act):
    """Raise ``ValueError`` if ``phi`` jumps on ``|x| <= 1e4`` (e.g. a step function).

    The certified bound rests on Price's theorem, ``dE[phi(u)phi(v)]/ds = E[phi'(u)phi'(v)]``,
    which a jump violates (its delta in ``phi'`` is invisible to ``phi'`` evaluated pointwise).
    Every panel of a fine grid is bisected 45 times towards its half with the larger
    ``|phi(b) - phi(a)|``: for a continuous ``phi`` that difference shrinks with the width
    (by ``~2^-45`` for a Lipschitz one, ``2^-22`` for a square-root cusp), across a jump
    ``J`` it stays ``>= J/2``. Jumps smaller than ``1e-12 max|phi|`` are not detected.
    """
    bp = _jump_grid(act.kinks)
    a, b = bp[:-1].copy(), bp[1:].copy()
    fa = np.asarray(act.fn(a), dtype=float)
    fb = np.asarray(act.fn(b), dtype=float)
    if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
        return                    # reported by the quadrature with its own message
    scale = float(np.max(np.abs(np.concatenate([fa, fb])))) + 1e-300
    d0 = np.abs(fb - fa)
    for _ in range(45):
        mid = 0.5 * (a + b)
        fm = np.asarray(act.fn(mid), dtype=float)
        left = np.abs(fm - fa) >= np.abs(fb - fm)
        b = np.where(left, mid, b)
        fb = np.where(left, fm, fb)
        a = np.where(left, a, mid)
        fa = np.where(left, fa, fm)
    d = np.abs(fb - fa)
    bad = (d > 1e-3 * d0) & (d > 1e-12 * scale)
    if bad.any():
        i = int(np.argmax(np.where(bad, d, -1.0)))
        raise ValueError(
            f"activation {act.name!r} is discontinuous: it jumps by {d[i]:.3g} at x = "
            f"{0.5 * (a[i] + b[i]):.6g}. The Hermite-series kernels and their certified error "
            "bound need a continuous phi (Price's theorem). For the step function or the sign "
            "function use the registered closed forms, FCNet('step') or FCNet('sign'); for "
            "another step-like function, a steep continuous one (e.g. erf(x / eps)).")


# ----------------------------------------------------------------------------- per-row data
def _deriv_at_zero(act):
    """b_0(0) = (phi'(0-) + phi'(0+)) / 2, the degenerate rows' derivative coefficient."""
    dm, dp = act.deriv_at_zero()
    return 0.5 * (dm + dp)


def _thread_safe(act):
    """Whether ``phi`` and ``phi'`` may be evaluated from several threads at once: the
    registered activations (NumPy ufuncs and this package's own functions, no state); a
    user's callable is always evaluated from the calling thread."""
    mods = {getattr(f, "__module__", None) for f in (act.fn, act.deriv)}
    return "callable" not in act.params and mods <= {"numpy", "infntk.activations"}


#: whether :func:`_map_tasks` may use threads (set by :func:`_parallel_section`)
_PARALLEL = contextvars.ContextVar("infntk_series_parallel", default=False)
#: problems of at least this many pairs run their per-row quadratures with BLAS on one thread
#: and, for the registered activations, on several threads (the gram driver's BLAS limit)
_PARALLEL_PAIRS = 1 << 16


@contextlib.contextmanager
def _parallel_section(on):
    """While it lasts (if ``on``): BLAS on one thread and :func:`_map_tasks` on threads.

    Only for large problems: the BLAS limit costs about 1 ms per call. BLAS on one thread in
    both the threaded and the sequential case, so that the products (whose rounding may
    depend on BLAS's thread count) and hence the results do not depend on the number of
    threads."""
    if not on:
        yield
        return
    with blas_one_thread():
        token = _PARALLEL.set(True)
        try:
            yield
        finally:
            _PARALLEL.reset(token)


def _map_tasks(fn, items, act):
    """``[fn(x) for x in items]``, inside a :func:`_parallel_section` on
    ``numba.get_num_threads()`` threads when the activation is :func:`_thread_safe` (NumPy
    releases the GIL in its ufuncs and BLAS products). Every item is computed independently
    (BLAS on one thread), so the results do not depend on the number of threads."""
    items = list(items)
    workers = min(numba.get_num_threads(), len(items))
    if workers <= 1 or not _PARALLEL.get() or not _thread_safe(act):
        return [fn(x) for x in items]
    out = [None] * len(items)       # the shared chunk pool (no threads started per call)

    def one(c):
        out[c] = fn(items[c])
    run_chunks(one, len(items))
    return out


def _row_statistics(act, setup, nsq):
    """Variances, exact second moments and the NTK diagonal of every layer.

    Returns ``q (L+1, n)`` (``q[l] = S_l(x, x)``), ``E (L, n)`` = ``E[phi^2](q_l)``,
    ``Ed (L, n)`` = ``E[phi'^2](q_l)`` (``b_0(0)^2`` at ``q = 0``, docs/conventions.md) and
    ``th (L+1, n)`` = ``Theta_l(x, x)``. Same float operations as the pair loop's diagonal.
    """
    L, d, w2, b2, cK, cb = setup
    n = nsq.size
    q = np.empty((L + 1, n))
    th = np.empty((L + 1, n))
    E = np.empty((L, n))
    Ed = np.empty((L, n))
    g = nsq / d
    q[0] = w2 * g + b2
    th[0] = cK[0] * g + cb[0]
    b00 = None
    for l in range(L):
        ql = q[l]
        uq, inv = np.unique(ql, return_inverse=True)
        m, md = _map_tasks(lambda der: hermite.second_moment(act, uq, derivative=der),
                           (False, True), act)
        E[l] = m[inv]
        Ed[l] = md[inv]
        zero = ql == 0.0
        if zero.any():
            if b00 is None:
                b00 = _deriv_at_zero(act)
            Ed[l, zero] = b00 * b00
        th[l + 1] = cK[l + 1] * E[l] + w2 * Ed[l] * th[l] + cb[l + 1]
        q[l + 1] = w2 * E[l] + b2
        check_rows_finite(q[l + 1], th[l + 1], layer=l + 1)
    return q, E, Ed, th


class _LayerData:
    """Coefficients and bound ingredients of one layer for a set of variances ``q``.

    ``a, b (m, Kc+1)``; ``tT[:, K], tD[:, K]``: tails ``T_K + floor`` of phi and phi' for
    every ``K <= Kc`` (0 for ``q = 0``), from ``T_K = T_Kc + sum_{K<j<=Kc} a_j^2`` (sums of
    non-negative terms: no cancellation); ``S1[:, K] = sum_{k<=K} k b_k^2``.
    """

    def __init__(self, act, Kc, q):
        uq, inv = np.unique(q, return_inverse=True)
        (a, T, fl), (b, Td, fld) = _map_tasks(lambda der: hermite._tails(act, Kc, uq, der),
                                              (False, True), act)
        zero = uq == 0.0
        tT = _all_tails(a, T[:, Kc]) + fl
        tD = _all_tails(b, Td[:, Kc]) + fld
        tT[zero] = 0.0
        tD[zero] = 0.0      # rho = 0 exactly for degenerate rows: only k = 0 is used
        self.a = a[inv]
        self.b = b[inv]
        self.tT = tT[inv]
        self.tD = tD[inv]
        self.S1 = np.cumsum(np.arange(Kc + 1)[None, :] * b * b, axis=1)[inv]
        self.Kc = Kc

    def at(self, K):
        return self.tT[:, K], self.tD[:, K], self.S1[:, K]


def _side_tails(act, Ks, Kmax, q, keep):
    """Per-row ``(tT, tD, S1)`` at the orders ``Ks`` for one side's variances ``q (L, n)``.

    Returns ``(tails, chunks)``: ``tails[l] = (tT, tD, S1)``, each ``(n,)`` (the values of
    ``_LayerData(act, Ks[l], q[l]).at(Ks[l])``), and, if ``keep``, the coefficient chunks of
    :class:`_CoefStore` made on the way (else ``None``). Computed by the store's fixed chunks
    of ``_COEF_CHUNK`` rows (distinct variances once per chunk), so the work space is
    ``O(chunk (K + nodes))``, not ``O(n K)``, and the kept coefficients are bitwise the ones
    the store would compute.
    """
    L, n = q.shape
    out = np.empty((L, 3, n))
    chunks = {} if keep else None
    for c in range(0, (n + _COEF_CHUNK - 1) // _COEF_CHUNK):
        lo, hi = c * _COEF_CHUNK, min(n, (c + 1) * _COEF_CHUNK)
        uniq = [np.unique(q[l, lo:hi], return_inverse=True) for l in range(L)]
        # the chunk's (layer, phi / phi') quadratures are independent: one task each
        tasks = [(l, der) for l in range(L) for der in (False, True)]
        res = dict(zip(tasks, _map_tasks(
            lambda t: hermite._tails(act, Ks[t[0]], uniq[t[0]][0], t[1]), tasks, act)))
        coefs = []
        for l in range(L):
            K = Ks[l]
            uq, inv = uniq[l]
            a, T, fl = res[l, False]
            b, Td, fld = res[l, True]
            zero = uq == 0.0          # rho = 0 exactly for degenerate rows: only k = 0 is used
            out[l, 0, lo:hi] = np.where(zero, 0.0, T[:, K] + fl[:, K])[inv]
            out[l, 1, lo:hi] = np.where(zero, 0.0, Td[:, K] + fld[:, K])[inv]
            out[l, 2, lo:hi] = np.cumsum(np.arange(K + 1)[None, :] * b * b, axis=1)[inv, K]
            if keep:
                coefs.append((a[inv], b[inv]))
        if keep:
            chunks[c] = _chunk_data(Ks, Kmax, coefs)
    return [tuple(out[l]) for l in range(L)], chunks


def _all_tails(a, tK):
    """T_k for k = 0..Kc from T_Kc and the coefficients (suffix sums of a_j^2)."""
    sq = a[:, ::-1] ** 2
    suffix = np.cumsum(sq, axis=1)[:, ::-1]          # suffix[:, k] = sum_{j>=k} a_j^2
    out = np.empty_like(a)
    out[:, :-1] = suffix[:, 1:]
    out[:, -1] = 0.0
    return out + tK[:, None]


def _row_bounds(setup, q, E, Ed, th, layer_tails, Ks, fac):
    """Per-row factors ``uS, uT`` with ``|error(x, y)| <= sqrt(u(x) u(y))`` (module notes).

    ``layer_tails[l] = (tT, tD, S1)`` at order ``Ks[l]``, each ``(n,)``; ``fac[l] = r^(K+1)``
    with ``r`` the largest ``|rho|`` assumed at layer ``l`` (1: any pair), a float or ``(n,)``
    per row.
    """
    L, d, w2, b2, cK, cb = setup
    first = (d + 8) * _EPS * 1.01
    uS = first * q[0]
    uT = first * th[0]
    for l in range(L):
        tT, tD, S1 = layer_tails[l]
        R = 16.0 * (Ks[l] + 2) * _EPS
        ql = q[l]
        uK = Ed[l] * uS + fac[l] * tT + R * E[l]
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(ql > 0, uS / ql, 0.0)
        ukd = delta * S1 + fac[l] * tD + R * Ed[l]
        uT = (cK[l + 1] * uK + w2 * ((1.0 + R) * Ed[l] * uT + ukd * (th[l] + 2.0 * uT))
              + 4 * _EPS * th[l + 1])
        uS = w2 * uK + 4 * _EPS * q[l + 1]
    return uS, uT


def _pair_bound(uA, uB):
    return math.sqrt(float(np.max(uA)) * float(np.max(uB)))


def _sample_rows(q):
    """Indices of rows at the quantiles of every layer's variance (plus extremes)."""
    idx = set()
    n = q.shape[1]
    for ql in q[:-1]:
        order = np.argsort(ql, kind="stable")
        pos = np.unique(np.linspace(0, n - 1, _N_QUANTILES).round().astype(int))
        idx.update(order[pos].tolist())
    return np.array(sorted(idx))


def _partners(setup, A, B, symmetric, q0):
    """For every row of ``A``: the column of ``B`` with the largest ``|rho_0|``, and that value.

    ``rho_0 = (w2 <x, y>/d + b2) / sqrt(q_0(x) q_0(y))`` (the pair itself excluded when
    ``symmetric``), by blocks of rows: one extra pass over the Gram product, used only to
    choose the truncation orders (the certificate is computed per pair in the pair loop).
    """
    L, d, w2, b2, cK, cb = setup
    n1 = A.shape[0]
    rA = np.sqrt(q0[:n1])
    rB = np.sqrt(q0[:n1] if symmetric else q0[n1:])
    best = np.zeros(n1)
    arg = np.zeros(n1, dtype=np.int64)
    if B.shape[0] == 0 or (symmetric and n1 < 2):
        return arg, best
    step = max(1, min(512, _PARTNER_FLOATS // max(1, B.shape[0])))
    for r0 in range(0, n1, step):
        r1 = min(n1, r0 + step)
        P = A[r0:r1] @ B.T
        nch = chunk_count(r1 - r0, per_thread=1)
        run_chunks(lambda c: _best_partners(P, rA, rB, r0, symmetric, float(w2), float(d),
                                            float(b2), arg, best, c, nch), nch)
    return arg, best


@njit(cache=True, nogil=True, error_model="numpy")
def _best_partners(P, rA, rB, r0, symmetric, w2, d, b2, arg, best, c, nch):
    """For the rows ``r0 + t`` of a Gram block ``P = A[r0:r1] B^T``: the first column of the
    largest ``|w2 P / d + b2| / (rA rB)`` (0 where ``rA rB = 0``; the row itself excluded,
    value -1, when ``symmetric``) into ``arg``, that value clipped at 1 into ``best``.

    One pass over the block (the same floating-point operations as the elementwise NumPy
    expressions, so the same partners and values)."""
    nb, n2 = P.shape
    for t in range(c, nb, nch):                      # the rows of chunk c of nch
        i = r0 + t
        ra = rA[i]
        top = -math.inf
        at = 0
        for j in range(n2):
            den = ra * rB[j]
            s = w2 * P[t, j] / d + b2
            v = abs(s) / den if den > 0 else 0.0
            if symmetric and j == i:
                v = -1.0
            if v > top:
                top = v
                at = j
        arg[i] = at
        best[i] = min(top, 1.0)


def _row_correlations(setup, A, B, symmetric, q0, partners):
    """Per stacked row (A's, then B's unless ``symmetric``): its largest ``|rho_0|`` with a
    row of the other side, moved halfway towards 1 as a margin (for the order choice).

    ``partners``: :func:`_partners` of ``A`` against ``B``; B's own need one more pass.
    """
    best = partners[1]
    if not symmetric:
        n1 = A.shape[0]
        best_b = _partners(setup, B, A, False, np.concatenate([q0[n1:], q0[:n1]]))[1]
        best = np.concatenate([best, best_b])
    return 1.0 - 0.5 * (1.0 - best)


def _max_correlations(act, setup, A, B, symmetric, q, sample, partners=None):
    """Estimate of the largest off-diagonal ``|rho_l|`` per layer (for the order choice).

    The most correlated pairs at layer 0 (the 32 best, and every sampled row with its
    partner) are run through the recursion with order-``_CAP0`` series; the estimate is the
    largest ``|rho_l|`` seen, moved halfway towards 1 as a margin.
    """
    L, d, w2, b2 = setup.depth, setup.d, setup.w2, setup.b2
    n1 = A.shape[0]
    arg, best = _partners(setup, A, B, symmetric, q[0]) if partners is None else partners
    # no early exit when layer 0 is uncorrelated (zero or orthogonal rows): phi(0) != 0 or
    # biases correlate the deeper layers, so the pairs still go through the recursion
    top = np.argsort(-best, kind="stable")[:32]
    own = sample[sample < n1]
    rows_a = np.unique(np.concatenate([top, own]))
    cols_b = arg[rows_a]
    idx_b = cols_b if symmetric else cols_b + n1
    Xa = A[rows_a]
    Xb = (A if symmetric else B)[cols_b]
    S = w2 * np.einsum("ij,ij->i", Xa, Xb) / d + b2
    out = np.zeros(L)
    for l in range(L):
        both = np.concatenate([rows_a, idx_b])
        qa = q[l, both]
        data = _LayerData(act, _CAP0, qa)
        a1, a2 = data.a[:rows_a.size], data.a[rows_a.size:]
        m = np.sqrt(qa[:rows_a.size]) * np.sqrt(qa[rows_a.size:])
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.clip(np.where(m > 0, S / m, 0.0), -1.0, 1.0)
        out[l] = float(np.max(np.abs(rho)))
        powers = rho[:, None] ** np.arange(_CAP0 + 1)[None, :]
        S = w2 * np.einsum("ik,ik,ik->i", a1, a2, powers) + b2
    return 1.0 - 0.5 * (1.0 - out)


def _choose_orders(act, setup, q, E, Ed, th, target, split, rmax, rrow=None):
    """Per-layer orders ``Ks``, the per-row ``(tT, tD, S1)`` at those orders, and the
    coefficient chunks made on the way (per side, ``None`` if too large to keep; see
    :func:`_side_tails`).

    ``split``: number of rows of A in the stacked arrays (the rest are B's rows);
    ``rmax[l]``: the largest off-diagonal ``|rho_l|`` assumed (tails are weighted by
    ``rmax^(K+1)``, docs/series_engine.md); ``rrow (n,)``, optional: per row, the largest
    ``|rho_0|`` with a partner (layer 0 then weights each row's tails by ``rrow^(K+1)``: a
    pair's factor ``|rho|^(K+1) <= sqrt(rrow_x^(K+1) rrow_y^(K+1))``).
    """
    L = setup.depth
    sample = _sample_rows(q)
    if rrow is not None and L:
        # rows whose layer-0 tails weigh most: close partners and large variance (the
        # quantiles of the variances alone miss them, and the check on all rows would then
        # raise the orders pass after pass)
        score = q[0] / np.maximum(1.0 - rrow, 1e-300)
        top = np.argsort(-score, kind="stable")[:_N_QUANTILES]
        top_r = np.argsort(-rrow, kind="stable")[:_N_QUANTILES]
        sample = np.unique(np.concatenate([sample, top, top_r]))
    qs, Es, Eds, ths = q[:, sample], E[:, sample], Ed[:, sample], th[:, sample]

    def factor(l, K, rows=None):
        if l == 0 and rrow is not None:
            r = rrow if rows is None else rrow[rows]
            return _power_np(r, K + 1.0)
        return float(_power_np(rmax[l], K + 1))

    def weighted(l, dl, rows):
        t = np.maximum(dl.tT, dl.tD)
        ks = np.arange(dl.Kc + 1) + 1.0
        if l == 0 and rrow is not None:
            return np.max(t * _power_np(rrow[rows][:, None], ks[None, :]), axis=0)
        return np.max(t, axis=0) * _power_np(rmax[l], ks)

    caps = [_CAP0] * L
    data = [_LayerData(act, _CAP0, qs[l]) for l in range(L)]
    while True:
        worst = [weighted(l, dl, sample) for l, dl in enumerate(data)]
        floor = max(w.min() for w in worst)
        taus = np.unique(np.concatenate(worst))            # ascending
        taus = taus[taus >= floor]

        def orders(tau):
            return [int(np.flatnonzero(w <= tau)[0]) for w in worst]

        def meets(tau):
            Ks = orders(tau)
            uS, uT = _row_bounds(setup, qs, Es, Eds, ths,
                                 [dl.at(k) for dl, k in zip(data, Ks)], Ks,
                                 [factor(l, k, sample) for l, k in enumerate(Ks)])
            return max(np.max(uS), np.max(uT)) <= 0.5 * target

        chosen = None
        if taus.size and meets(taus[0]):
            lo, hi = 0, taus.size - 1          # meets(taus[lo]) holds
            if meets(taus[hi]):
                lo = hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if meets(taus[mid]):
                    lo = mid
                else:
                    hi = mid
            chosen = orders(taus[lo])
        raise_ = [l for l in range(L) if caps[l] < K_MAX and worst[l][-1] > 1e-3 * target]
        if not raise_ or (chosen is not None and all(
                k < caps[l] for l, k in enumerate(chosen))):
            break
        for l in raise_:
            caps[l] = K_MAX
            data[l] = _LayerData(act, K_MAX, qs[l])
    if chosen is None:
        # the sample cannot meet the target: per layer, the order where its own tail term is
        # negligible (1e-3 of the target), or the cap
        chosen = []
        for l, w in enumerate(worst):
            ok = np.flatnonzero(w <= 1e-3 * target)
            chosen.append(int(ok[0]) if ok.size else caps[l])
    # full set of rows: verify, raise the orders if the sample missed a worse row
    n = q.shape[1]
    sides = [q[:L, :split]] + ([q[:L, split:]] if split < n else [])
    while True:
        Kmax = max(chosen)
        work = 24 * min(256, split) * (n - split or split)      # a default block's work space
        keep = 8 * n * L * (2 * (Kmax + 1) + 5 * _N_GRID) <= max(_COEF_BUDGET, work)
        parts = [_side_tails(act, chosen, Kmax, qs_, keep) for qs_ in sides]
        tails = [tuple(np.concatenate([p[0][l][i] for p in parts]) for i in range(3))
                 for l in range(L)]
        chunks = [p[1] for p in parts]
        uS, uT = _row_bounds(setup, q, E, Ed, th, tails, chosen,
                             [factor(l, k) for l, k in enumerate(chosen)])
        bound = max(_pair_bound(uS[:split], uS[split:] if split < uS.size else uS[:split]),
                    _pair_bound(uT[:split], uT[split:] if split < uT.size else uT[:split]))
        # raise only the layers whose truncation tail still matters: a layer whose tail term
        # is already far below the target gains nothing from more terms (only cost)
        grow = [l for l in range(L) if chosen[l] < K_MAX and float(np.max(
            factor(l, chosen[l]) * np.maximum(tails[l][0], tails[l][1])))
            * max(1.0, float(np.max(th[l]))) > 1e-3 * target]
        if bound <= target or not grow:
            return chosen, tails, chunks
        chosen = [min(K_MAX, int(math.ceil(1.25 * K)) + 2) if l in grow else K
                  for l, K in enumerate(chosen)]


def _power_np(a, n):
    """a^n elementwise for 0 <= a <= 1 (0^n = 0)."""
    with np.errstate(divide="ignore"):
        return np.where(a >= 1.0, 1.0, np.exp(n * np.log(np.maximum(a, 0.0))))


# ----------------------------------------------------------------------------- direct quadrature
def derivative_is_continuous(act):
    """Whether ``phi'`` is continuous on ``|x| <= 1e4`` (:func:`check_continuous` on it).

    The direct quadrature bounds the change of ``E[phi'(u) phi'(v)]`` with the covariance by
    Price's theorem applied to ``phi'``, which needs a continuous ``phi'`` (docs/series_engine.md,
    "Direct quadrature"); for a jumping ``phi'`` (relu-like, abs, elu with ``alpha != 1``) the
    engine keeps the Mehler series and its (then loose) bound.
    """
    dact = dataclasses.replace(act, fn=act.deriv, name=f"{act.name}'")
    try:
        check_continuous(dact)
    except ValueError:
        return False
    return True


def _second_derivative_moment(act, r):
    """``1.25 E[phi2(r z)^2]`` for each standard deviation ``r (m,)``, ``phi2`` the second
    derivative of ``phi`` (1.25: a margin).

    ``phi2`` by central differences of ``phi'`` (step ``2^-17 max(1, |x|)``: truncation
    ``~h^2 |phi^(4)| / 6`` and rounding ``~eps |phi'| / h``, both ``~1e-10`` relative, far inside
    the margin), on the composite rule of :mod:`infntk.hermite` (kinks are breakpoints).
    """
    out = np.empty(r.size)
    for t, rt in enumerate(r):
        if rt <= 0.0:
            out[t] = 0.0
            continue
        z, sw = hermite._composite_rule(0, float(rt), act.kinks)
        x = rt * z
        h = 2.0 ** -17 * np.maximum(1.0, np.abs(x))
        d2 = (np.asarray(act.deriv(x + h), float) - np.asarray(act.deriv(x - h), float)) / (2 * h)
        out[t] = 1.25 * float(np.sum((sw * d2) ** 2))
    return out


def _quadrature_pairs(act, net, plan, G, row0, ib, jc):
    """Kernels and bounds of the pairs ``(row0 + ib, jc)`` by direct 2-D quadrature per layer.

    The same recursion and error propagation as the pair loop (docs/series_engine.md,
    "Certified bound"), with ``K_l, kd_l`` from :func:`infntk.quadrature.pair_expectations`
    instead of the Mehler series: per layer, ``eK = sqrt(E'E') eS + e_Q`` and ``ekd =
    sqrt(E2_x E2_y) eS + e_Q'`` (Price's theorem for ``phi'``, ``E2`` the second moment of the
    second derivative), with the quadrature's error ``e_Q = 2 |fine - coarse| + 128 eps
    sqrt(E E)``. Returns ``(nngp, ntk, bound)``, each ``(P,)``.
    """
    depth, Ks, w2, b2, d, cK, cb, grid, thr = net
    bnd = plan.bnd
    i = row0 + ib
    rq1, rq2 = plan.rows.rq, plan.cols.rq
    g = G[ib, jc] / d
    S = w2 * g + b2
    TH = cK[0] * g + cb[0]
    eS = bnd.first * rq1[0, i] * rq2[0, jc]
    eT = bnd.first * np.sqrt(bnd.th01[i] * bnd.th02[jc])
    for l in range(depth):
        r1, r2 = rq1[l, i], rq2[l, jc]
        m = r1 * r2
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.clip(np.where(m > 0, S / m, 0.0), -1.0, 1.0)
        res = pair_expectations(act.fn, act.deriv, act.kinks, r1, r2, rho)
        pE = bnd.sE1[l, i] * bnd.sE2[l, jc]
        lip = bnd.sEd1[l, i] * bnd.sEd2[l, jc]
        sens = np.sqrt(plan.second_moment(l, 1, i, r1) * plan.second_moment(l, 2, jc, r2))
        eK = lip * eS + _QUAD_SAFETY * res.dk + _QUAD_ERR * _EPS * pE
        ekd = sens * eS + _QUAD_SAFETY * res.dkd + _QUAD_ERR * _EPS * lip
        thn = cK[l + 1] * res.k + w2 * res.kd * TH + cb[l + 1]
        eT = (cK[l + 1] * eK + w2 * (np.abs(res.kd) * eT + ekd * (np.abs(TH) + eT))
              + 4.0 * _EPS * np.abs(thn))
        TH = thn
        S = w2 * res.k + b2
        eS = w2 * eK + 4.0 * _EPS * np.abs(S)
    return S, TH, np.maximum(eS, eT)


# ----------------------------------------------------------------------------- the engine
class SeriesNet(NamedTuple):
    """The network, as the compiled pair loop sees it."""

    depth: int
    Ks: np.ndarray     # (max(depth, 1),) int64 truncation order per layer
    w2: float
    b2: float
    d: float
    cK: np.ndarray
    cb: np.ndarray
    grid: np.ndarray   # GRID, the levels of the graded sums
    thr: float         # pairs whose bound exceeds it go to the direct quadrature (inf: none)


class SeriesRows(NamedTuple):
    """Per-row data of the output rows, layer-major (``a[l, i - off, k] = a_k(q_l(x_i))``).

    The coefficients cover only the rows of the current block (from row ``off``).
    """

    nsq: np.ndarray    # (n1,)
    rq: np.ndarray     # (L, n1) sqrt of the variances
    a: np.ndarray      # (L, m, Kmax + 1) coefficients of phi (zero-padded beyond Ks[l])
    b: np.ndarray      # (L, m, Kmax + 1) coefficients of phi'
    E: np.ndarray      # (L, n1) exact E[phi^2] (the symmetric diagonal)
    Ed: np.ndarray     # (L, n1) exact E[phi'^2]
    g: np.ndarray      # (L, m, _N_GRID, 5) graded sums of the block's rows (_graded_sums)
    off: int           # first row covered by a, b, g


class SeriesCols(NamedTuple):
    """Per-row data of one chunk of output columns, transposed for contiguous inner loops."""

    rq: np.ndarray     # (L, n2)
    aT: np.ndarray     # (L, Kmax + 1, m): columns start .. start + m - 1
    bT: np.ndarray
    g: np.ndarray      # (L, m, _N_GRID, 5) graded sums of the chunk's columns
    start: int         # first column of the chunk (and of aT, bT, g)
    stop: int          # one past the last column computed


def _graded_sums(a, b):
    """The graded per-row sums ``(m, _N_GRID, 5)`` of coefficients ``a, b (m, K+1)``.

    At every level ``r`` of :data:`GRID`: ``M(r) = sum_k (2k+2) a_k^2 r^k``,
    ``N(r) = sum_k |a_k| r^k``, the same for ``b``, and ``S1(r) = sum_k k b_k^2 r^(k-1)``
    (``0^0 = 1``); all non-decreasing in ``r`` (docs/series_engine.md, "Graded rounding
    terms"). ``M``, ``M'`` and ``S1`` are stored as their square roots (the pair loop
    multiplies two of them).
    """
    K = a.shape[1] - 1
    k = np.arange(K + 1.0)
    P = GRID[None, :] ** k[:, None]                       # (K+1, G), 0^0 = 1
    P1 = np.zeros_like(P)
    P1[1:] = k[1:, None] * GRID[None, :] ** (k[1:, None] - 1.0)
    out = np.empty((a.shape[0], GRID.size, 5))
    out[:, :, _G_MA] = np.sqrt(((2.0 * k + 2.0) * a * a) @ P)
    out[:, :, _G_NA] = np.abs(a) @ P
    out[:, :, _G_MB] = np.sqrt(((2.0 * k + 2.0) * b * b) @ P)
    out[:, :, _G_NB] = np.abs(b) @ P
    out[:, :, _G_S1] = np.sqrt((b * b) @ P1)
    return out


def _chunk_data(Ks, Kmax, coefs):
    """``(aT, bT, g)`` of one chunk from per-layer ``(a, b)`` of shapes ``(m, Ks[l] + 1)``."""
    L = len(coefs)
    m = coefs[0][0].shape[0]
    aT = np.zeros((L, Kmax + 1, m))
    bT = np.zeros((L, Kmax + 1, m))
    g = np.empty((L, m, GRID.size, 5))
    for l, (a, b) in enumerate(coefs):
        K = Ks[l]
        aT[l, :K + 1] = a.T
        bT[l, :K + 1] = b.T
        g[l] = _graded_sums(a, b)
    return aT, bT, g


def _layer_coefficients(act, Ks, Kmax, qs):
    """``(aT, bT, g)``: coefficients ``(L, Kmax + 1, m)`` of ``phi``, ``phi'`` for ``qs (L, m)``
    and their graded sums ``g (L, m, _N_GRID, 5)``.

    Per layer ``l`` up to ``Ks[l]`` (zero beyond), computed once per distinct variance.
    """
    L = qs.shape[0]
    uniq = [np.unique(qs[l], return_inverse=True) for l in range(L)]
    tasks = [(l, der) for l in range(L) for der in (False, True)]
    res = dict(zip(tasks, _map_tasks(
        lambda t: hermite._coefficient_arrays(act, Ks[t[0]], uniq[t[0]][0], t[1]), tasks, act)))
    coefs = [(res[l, False][uniq[l][1]], res[l, True][uniq[l][1]]) for l in range(L)]
    return _chunk_data(Ks, Kmax, coefs)


class _CoefStore:
    """The per-row Hermite coefficients of one side, by fixed chunks of ``_COEF_CHUNK`` rows.

    A chunk is always computed from the same rows (``c * _COEF_CHUNK`` onwards), so a row's
    coefficients do not depend on the block sizes or on what is kept. ``keep(True)``: every
    chunk computed is kept (the whole side fits the budget); ``keep(False)``: only the last
    two, so the memory is ``O(_COEF_CHUNK L K)`` whatever the number of rows (chunks are then
    recomputed for every row block that needs them).
    """

    def __init__(self, act, Ks, Kmax, q):
        self.act, self.Ks, self.Kmax, self.q = act, Ks, Kmax, q
        self.n = q.shape[1]
        self.chunks = {}
        self.keep_all = True

    def nbytes(self):
        return 8 * self.n * self.q.shape[0] * (2 * (self.Kmax + 1) + 5 * _N_GRID)

    def chunk(self, c):
        """``(aT, bT, g)`` of chunk ``c``: ``(L, Kmax + 1, m)`` twice, ``(L, m, G, 5)``."""
        got = self.chunks.pop(c, None)
        if got is None:
            lo = c * _COEF_CHUNK
            got = _layer_coefficients(self.act, self.Ks, self.Kmax,
                                      self.q[:, lo:lo + _COEF_CHUNK])
        if not self.keep_all:
            while len(self.chunks) > 1:
                self.chunks.pop(next(iter(self.chunks)))
        self.chunks[c] = got            # most recently used last
        return got

    def rows(self, lo, hi):
        """``(a, b, g)`` of rows ``lo:hi``: ``(L, hi - lo, Kmax + 1)`` twice and
        ``(L, hi - lo, G, 5)`` (C-contiguous)."""
        parts_a, parts_b, parts_g = [], [], []
        for c in range(lo // _COEF_CHUNK, (hi - 1) // _COEF_CHUNK + 1):
            aT, bT, g = self.chunk(c)
            c0 = c * _COEF_CHUNK
            s = slice(max(lo, c0) - c0, min(hi, c0 + aT.shape[2]) - c0)
            parts_a.append(aT[:, :, s])
            parts_b.append(bT[:, :, s])
            parts_g.append(g[:, s])
        a = np.concatenate(parts_a, axis=2).transpose(0, 2, 1)
        b = np.concatenate(parts_b, axis=2).transpose(0, 2, 1)
        return (np.ascontiguousarray(a), np.ascontiguousarray(b),
                np.ascontiguousarray(np.concatenate(parts_g, axis=1)))


class SeriesBoundData(NamedTuple):
    """Square roots of the per-row bound ingredients, ``(L, n)`` (rows ``1``, columns ``2``).

    ``sE = sqrt(E[phi^2])``, ``sEd = sqrt(E[phi'^2])``, ``stT``, ``stD`` the square roots of the
    tails ``T_K`` (plus floors) of ``phi`` and ``phi'``, ``sS1 = sqrt(sum_{k<=K} k b_k^2)``,
    ``th0`` the first layer's NTK diagonal; ``first = (d + 8) eps`` and ``rnd[l] =
    16 (K_l + 2) eps`` (docs/series_engine.md).
    """

    sE1: np.ndarray
    sEd1: np.ndarray
    stT1: np.ndarray
    stD1: np.ndarray
    sS11: np.ndarray
    th01: np.ndarray
    sE2: np.ndarray
    sEd2: np.ndarray
    stT2: np.ndarray
    stD2: np.ndarray
    sS12: np.ndarray
    th02: np.ndarray
    first: float
    rnd: np.ndarray


class _Plan:
    """What ``prepare`` hands to ``block`` and ``finish``; ``error_bound`` grows per block."""

    def __init__(self, net, rows, cols, bnd, allowed, extra, target, orders, cause,
                 store1, store2, act=None):
        self.net, self.rows, self.cols, self.bnd = net, rows, cols, bnd
        self.act = act
        self.quad_pairs = 0           # pairs computed by the direct quadrature
        self.crowded_rows = 0         # rows left on the series (too many such pairs)
        self._e2 = {}                 # (layer, side, row) -> 1.25 E[phi2^2]
        self.store1, self.store2 = store1, store2     # the same object when symmetric
        self.budget_set = False
        self.parallel = False         # per-row quadratures in a _parallel_section
        self.excess = 0.0
        self.allowed = allowed
        self.extra = extra            # rounding of the row statistics, added once
        self.pairs = 0.0              # largest per-pair bound seen
        self.target = target
        self.orders = orders
        self.cause = cause

    @property
    def error_bound(self):
        return float(self.pairs + self.extra)

    def second_moment(self, l, side, idx, r):
        """``1.25 E[phi2(r z)^2]`` (``phi2 = phi''``) of rows ``idx`` of a side at layer ``l``
        (cached per row)."""
        out = np.empty(idx.size)
        keys = [(l, side, int(j)) for j in idx]
        todo = sorted({t for t, key in enumerate(keys) if key not in self._e2})
        if todo:
            for t, v in zip(todo, _second_derivative_moment(self.act, r[todo])):
                self._e2[keys[t]] = float(v)
        for t, key in enumerate(keys):
            out[t] = self._e2[key]
        return out


class SeriesEngine:
    """Engine protocol (:mod:`infntk._backends`) for activations without a closed form.

    The Mehler series per layer with orders chosen so that the certified bound
    (docs/series_engine.md) meets ``tol`` times the kernel scale.

    Parameters
    ----------
    activation : infntk.activations.Activation
        A continuous activation (a user callable gets a kink at 0 declared; a discontinuous
        one is refused with ``ValueError``).
    setup : infntk._layers.LayerSetup
    tol : float
    """

    def __init__(self, activation, setup, tol):
        activation = _with_kink_at_zero(activation)
        check_continuous(activation)
        self.activation = activation
        self.setup = setup
        self.tol = tol
        self._quadrature_ok = None

    @property
    def quadrature_ok(self):
        """Whether pairs the Mehler series cannot certify may use the direct quadrature
        (``phi'`` continuous, :func:`derivative_is_continuous`; checked once)."""
        if self._quadrature_ok is None:
            self._quadrature_ok = derivative_is_continuous(self.activation)
        return self._quadrature_ok

    def rows(self, X):
        """The rows and their squared norms (the statistics are computed for both sides at once)."""
        return X, np.einsum("ij,ij->i", X, X)

    def prepare(self, rows1, rows2, symmetric):
        n1, n2 = rows1[0].shape[0], rows2[0].shape[0]
        parallel = n1 * n2 >= _PARALLEL_PAIRS
        with _parallel_section(parallel):
            plan = self._prepare(rows1, rows2, symmetric)
        plan.parallel = parallel      # the blocks' coefficient chunks: the same BLAS setting
        return plan

    def _prepare(self, rows1, rows2, symmetric):
        (A, nsq1), (B, nsq2) = rows1, rows2
        n1 = A.shape[0]
        setup, act = self.setup, self.activation
        L, d = setup.depth, setup.d
        nsq = nsq1 if symmetric else np.concatenate([nsq1, nsq2])
        n = nsq.size
        q, E, Ed, th = _row_statistics(act, setup, nsq)
        scale = float(max(np.max(np.abs(q[-1])), np.max(np.abs(th[-1]))))
        target = self.tol * scale
        rmax = np.ones(L)
        chunks = [None, None]
        if L == 0:
            Ks, tails = [], []
        else:
            partners = _partners(setup, A, B, symmetric, q[0])
            rmax = _max_correlations(act, setup, A, B, symmetric, q, _sample_rows(q),
                                     partners)
            rrow = _row_correlations(setup, A, B, symmetric, q[0], partners)
            Ks, tails, chunks = _choose_orders(act, setup, q, E, Ed, th, target, n1, rmax,
                                               rrow)
        Kmax = max(Ks) if Ks else 0
        Lb = max(L, 1)
        Ks_arr = np.array(Ks if Ks else [0], dtype=np.int64)
        rq = np.sqrt(q[:Lb])
        Ecl = E if L else np.zeros((1, n))
        Edl = Ed if L else np.zeros((1, n))
        tT = np.zeros((Lb, n))
        tD = np.zeros((Lb, n))
        S1 = np.zeros((Lb, n))
        for l, t in enumerate(tails):
            tT[l], tD[l], S1[l] = t
        roots = [np.sqrt(np.maximum(v, 0.0)) for v in (Ecl, Edl, tT, tD, S1)] + [np.sqrt(th[0])]
        c = slice(0, n1) if symmetric else slice(n1, None)
        rnd = np.array([16.0 * (K + 2) * _EPS for K in (Ks if Ks else [0])])
        bnd = SeriesBoundData(*[np.ascontiguousarray(v[..., :n1]) for v in roots],
                              *[np.ascontiguousarray(v[..., c]) for v in roots],
                              (d + 8) * _EPS * 1.01, rnd)
        # the coefficients are made per block (by fixed chunks of rows, _CoefStore): the
        # per-row records kept here are O(n L), never O(n K)
        Ks_c = list(Ks) if L else [0]
        qc = q[:Lb] if L else np.zeros((1, n))
        store1 = _CoefStore(act, Ks_c, Kmax, np.ascontiguousarray(qc[:, :n1]))
        store2 = store1 if symmetric else _CoefStore(act, Ks_c, Kmax,
                                                      np.ascontiguousarray(qc[:, c]))
        for st_, ch in zip((store1, store2), chunks):
            if ch:
                st_.chunks.update(ch)
        empty = np.zeros((Lb, 0, Kmax + 1))     # depth 0: placeholders, never read
        gempty = np.zeros((Lb, 0, _N_GRID, 5))
        rows = SeriesRows(nsq1, np.ascontiguousarray(rq[:, :n1]), empty, empty,
                          np.ascontiguousarray(Ecl[:, :n1]), np.ascontiguousarray(Edl[:, :n1]),
                          gempty, 0)
        cols = SeriesCols(np.ascontiguousarray(rq[:, c]), empty, empty, gempty, 0, 0)
        # the row statistics (quadrature of E[phi^2], relative ~1e-15 per layer) are not in the
        # per-pair recursion: a fixed allowance covers them
        extra = 64.0 * L * _EPS * scale
        # pairs whose Mehler bound would miss the target go to the direct quadrature
        thr = (max(target - extra, _QUAD_FLOOR * _EPS * scale)
               if L and self.quadrature_ok else math.inf)
        net = SeriesNet(L, Ks_arr, setup.w2, setup.b2, float(d), setup.cK, setup.cb, GRID,
                        float(thr))
        cause = _cause(act, q, rmax, Ks, L > 0 and self.quadrature_ok)
        return _Plan(net, rows, cols, bnd, 64.0 * (d + Kmax + 2) * _EPS, extra, target,
                     tuple(int(k) for k in Ks), cause, store1, store2, act)

    def block(self, plan, X1, X2, G, row0, symmetric, out_nngp, out_ntk):
        """One row block, by column chunks of ``_COEF_CHUNK`` (coefficients made per chunk).

        Working memory beyond the block's ``G`` and output rows: the per-row ``(L, n)``
        records and at most two coefficient chunks per side, unless a whole side's
        coefficients fit ``max(_COEF_BUDGET, 3 * 8 * G.size)`` bytes (then they are kept and
        computed once).
        """
        nb, ncols = G.shape
        if not plan.budget_set:
            budget = max(_COEF_BUDGET, 24 * nb * ncols)
            stores = {id(plan.store1): plan.store1, id(plan.store2): plan.store2}.values()
            keep = sum(st.nbytes() for st in stores) <= budget
            for st in stores:
                st.keep_all = keep
            plan.budget_set = True
        with _parallel_section(plan.parallel):
            self._block(plan, G, row0, symmetric, out_nngp, out_ntk)

    def _block(self, plan, G, row0, symmetric, out_nngp, out_ntk):
        nb, ncols = G.shape
        G = np.ascontiguousarray(G)
        ex = np.zeros(nb)
        eb = np.zeros(nb)
        flags = np.zeros((nb, ncols), dtype=np.int8)
        eq_rows = np.zeros(nb)
        if plan.net.depth == 0:
            a1, b1, g1 = plan.rows.a, plan.rows.b, plan.rows.g
        else:
            a1, b1, g1 = plan.store1.rows(row0, row0 + nb)
        rows = plan.rows._replace(a=a1, b=b1, g=g1, off=row0)
        stop = row0 + nb if symmetric else ncols
        for c in range(0, (stop + _COEF_CHUNK - 1) // _COEF_CHUNK):
            c0 = c * _COEF_CHUNK
            if plan.net.depth == 0:
                aT, bT, g2 = plan.cols.aT, plan.cols.bT, plan.cols.g
            else:
                aT, bT, g2 = plan.store2.chunk(c)
            cols = plan.cols._replace(aT=aT, bT=bT, g=g2, start=c0,
                                      stop=min(stop, c0 + _COEF_CHUNK))
            series_block(plan.net, rows, cols, plan.bnd, G, row0, symmetric, out_nngp,
                         out_ntk, ex, eb, flags, eq_rows)
        plan.excess = max(plan.excess, float(ex.max()))
        plan.pairs = max(plan.pairs, float(eb.max()))
        count = flags.sum(axis=1, dtype=np.int64)
        crowded = count > _QUAD_ROW_PAIRS
        if crowded.any():
            # rows with many such partners (e.g. uncentred inputs of large norm: every pair
            # correlated) stay on the series with its bound: the quadrature is for few pairs
            flags[crowded] = 0
            plan.pairs = max(plan.pairs, float(eq_rows[crowded].max()))
            plan.crowded_rows += int(crowded.sum())
        ib, jc = np.nonzero(flags)
        if ib.size:
            # pairs the Mehler series cannot certify: direct 2-D quadrature, layer by layer
            nn, nt, eq = _quadrature_pairs(self.activation, plan.net, plan, G, row0, ib, jc)
            out_nngp[ib, jc] = nn
            out_ntk[ib, jc] = nt
            plan.pairs = max(plan.pairs, float(eq.max()))
            plan.quad_pairs += int(ib.size)

    def finish(self, plan):
        worst = plan.excess
        if worst > plan.allowed:
            raise FloatingPointError(
                f"series engine: a correlation left [-1, 1] by {worst:.3g} (> rounding level "
                f"{plan.allowed:.3g}); this is a bug, please report it.")
        if plan.error_bound > plan.target:
            scale = plan.target / self.tol
            cause = (_crowded_cause(plan) if plan.crowded_rows else
                     _QUAD_CAUSE if plan.quad_pairs else plan.cause)
            warnings.warn(
                f"FCNet({self.activation.name!r}): tol={self.tol:g} (relative to the kernel "
                f"scale {scale:.3g}) was not reached; the certified error bound is "
                f"{plan.error_bound:.3g} (Kernels.error_bound), with truncation orders "
                f"{plan.orders} (cap {K_MAX}). Cause: {cause}.",
                RuntimeWarning, stacklevel=4)

    def diag(self, rows):
        """``k(x, x)`` from the exact second moments (no series needed)."""
        _, nsq = rows
        q, _, _, th = _row_statistics(self.activation, self.setup, nsq)
        return q[-1].copy(), th[-1].copy()


#: the warning's cause when pairs went to the direct quadrature and tol is still not met
_QUAD_CAUSE = ("the pairs the Hermite series could not certify (large variance, correlation "
               "near 1) were computed by the direct 2-D quadrature, whose rounding allowance "
               "(~128 eps of the scale per layer) is above the requested tol; raise tol")


def _crowded_cause(plan):
    """The warning's cause when rows had too many pairs for the direct quadrature."""
    return (f"{plan.crowded_rows} rows each had more than {_QUAD_ROW_PAIRS} partners of large "
            "variance and correlation near 1, where the Hermite series cannot converge (too "
            "many for the direct 2-D quadrature, ~25 ms per pair and layer); those pairs keep "
            f"the series ({plan.cause}); centring the inputs (subtracting their mean) usually "
            "removes such correlations")


def _cause(act, q, rmax, Ks, quadrature=False):
    """Why the series may not reach the tolerance, in words (for the warning).

    ``quadrature``: whether the engine may send pairs to the direct quadrature (else large
    variance is named as the cause, with the reason the quadrature is not used).
    """
    parts = []
    if act.kinks:
        parts.append(f"phi or phi' has kinks at {tuple(act.kinks)}, so the Hermite tails decay "
                     "algebraically")
    qmax = float(np.max(q[:-1])) if q.shape[0] > 1 else float(np.max(q))
    close = float(np.max(rmax)) if np.size(rmax) else 0.0
    if qmax > 4.0:
        corr = (f", for pairs correlated up to ~{2 * close - 1:.3g}, whose rho^k damp them "
                "slowly" if close > 0.95 else "")
        parts.append(f"large pre-activation variance (up to {qmax:.3g}; the tails of a smooth "
                     f"phi(sqrt(q) z) decay like exp(-c sqrt(k / q)){corr}); "
                     + ("" if quadrature else "phi' is not continuous, so the direct 2-D "
                        "quadrature (which needs Price's theorem for phi') is not used; ")
                     + "rescale the inputs or lower w_std/b_std to reach tol")
    if close > 0.999:
        parts.append(f"nearly identical rows (correlation up to ~{2 * close - 1:.12g}, where "
                     "the Mehler tail is not damped)")
    if not parts:
        parts.append("the truncation orders chosen from a sample of rows and pairs were too "
                     "small for some pair (raise tol or report this)")
    return "; ".join(parts)
