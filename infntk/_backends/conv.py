"""Compiled CNN-GP / CNTK recursions, one pair of images at a time (closed-form duals).

Kernels receive plain arrays and scalars only and never validate: :mod:`infntk.conv` checks
the inputs, detects the regime and encodes the layers as a small program (``iop``, ``fop``,
the padding tables ``src`` and ``seg``); this module only runs it.

State of one pair ``(x, y)`` of images (``h x w`` positions):

* full regime: ``S[i, i', j, j'] = Sigma(x_{ij}, y_{i'j'})`` and ``T`` (the NTK), stored with
  the two row indices first (``(h, h, w, w)``, C order) so that the first pass of the patch
  trace adds contiguous ``w x w`` blocks;
* diagonal regime: ``S[i, j] = Sigma(x_{ij}, y_{ij})`` only (Novak et al. 2019);
* after the readout: two scalars.

Patch trace of a ``q x q`` convolution (NTK parameterization, fan-in ``q^2 C``)::

    Sigma'[p, p'] = w2 / q^2 * sum_{a, b} K[p + (a, b), p' + (a, b)] + b2
    Theta'[p, p'] = w2 / q^2 * sum_{a, b} Theta[p + (a, b), p' + (a, b)] + Sigma'[p, p']

applied separably: one ``q``-tap pass over the row pair ``(i, i')``, then one over the column
pair ``(j, j')`` per ``(i, i')`` block, fused with the dual activation that follows
(``K = E[phi(u) phi(v)]``, ``Theta <- Theta * E[phi'(u) phi'(v)]``). Out-of-range taps are
zero (``"same"``, ``"valid"``) or wrap around (``"circular"``); the tables say which.

Dual inputs: ``m = sqrt(q_x q_y)``, ``A = max(m - s, 0)``, ``B = max(m + s, 0)`` from the
carried ``s = Sigma`` and the self variances ``q`` (a simpler formulation than the FC engine's
carried gaps). A pair of identical positions gets ``A = 0`` exactly: the self variances are
computed by the same passes, in the same order, as the pair's entries. Elsewhere the absolute
error of ``A`` is a few ulp of ``m``; see docs/conv.md for what that means for accuracy.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .._duals import abrelu_pair, diag_dual, pair_dual
from ..activations import FAMILY_ABRELU
from .closed import _geomean

# op codes (see infntk.conv._compile)
OP_CONV_F = 1      # conv, full state; iop[k, 3] >= 0: fused activation of that family
OP_CONV_D = 2      # conv, diagonal state
OP_ACT_F = 3
OP_ACT_D = 4
OP_ACT_S = 5       # activation after the readout (scalars)
OP_POOL_F = 6      # non-overlapping average pooling, full state
OP_TODIAG = 7      # full -> diagonal state
OP_GAP = 8         # full state -> scalars (mean over all position pairs)
OP_FLAT = 9        # diagonal state -> scalars (mean over positions)
OP_DENSE = 10      # scalars

# iop columns: code, q or window, (unused), family (-1: none), offset of the self statistics,
# h_in, w_in, h_out, w_out.   fop columns: w2, b2, p0, p1.
NSEG = 3


@njit(cache=True, inline="always", error_model="numpy")
def _dual(family, p0, p1, qa, qb, ra, rb, ska, skb, s):
    """(k, kd) at the pair state of variances ``qa, qb`` and covariance ``s``."""
    m = _geomean(qa, qb, ra, rb)
    A = m - s
    if A < 0.0:
        A = 0.0
    B = m + s
    if B < 0.0:
        B = 0.0
    if family == FAMILY_ABRELU:
        k, kd, _, _ = abrelu_pair(p0, p1, m, A, B)
    else:
        k, kd, _, _ = pair_dual(family, p0, p1, qa, qb, A, B, ska, skb)
    return k, kd


@njit(cache=True, error_model="numpy")
def _act_rows(family, p0, p1, qa, ra, ska, qrow, rrow, skrow, S, T, base, n):
    """Activation on ``n`` consecutive entries ``S[base:base+n]`` against one row of self
    statistics (the partner variance fixed at ``qa``); family switch outside the loop."""
    if family == FAMILY_ABRELU:
        for t in range(n):
            m = _geomean(qa, qrow[t], ra, rrow[t])
            s = S[base + t]
            A = m - s
            if A < 0.0:
                A = 0.0
            B = m + s
            if B < 0.0:
                B = 0.0
            k, kd, _, _ = abrelu_pair(p0, p1, m, A, B)
            S[base + t] = k
            T[base + t] = T[base + t] * kd
    else:
        for t in range(n):
            k, kd = _dual(family, p0, p1, qa, qrow[t], ra, rrow[t], ska, skrow[t], S[base + t])
            S[base + t] = k
            T[base + t] = T[base + t] * kd


@njit(cache=True, error_model="numpy")
def _pass_rows_full(S, T, tS, tT, src, h, ho, w, q):
    """tS[i, i', :, :] = sum_a S[src[a, i], src[a, i'], :, :] (same for T); zero taps skipped."""
    ww = w * w
    for i in range(ho):
        for ip in range(ho):
            ob = (i * ho + ip) * ww
            for t in range(ww):
                tS[ob + t] = 0.0
                tT[ob + t] = 0.0
            for a in range(q):
                si = src[a, i]
                sip = src[a, ip]
                if si < 0 or sip < 0:
                    continue
                ib = (si * h + sip) * ww
                for t in range(ww):
                    tS[ob + t] += S[ib + t]
                    tT[ob + t] += T[ib + t]


@njit(cache=True, error_model="numpy")
def _pass_cols_block(tS, tT, ib, src, seg, w, wo, q, c, b2, bS, bT):
    """One (i, i') block: bS[j, j'] = c * sum_b tS[src[b, j], src[b, j'] ] + b2, bT likewise
    plus bS (the NTK's new NNGP term). ``seg[b]`` lists contiguous runs of j'."""
    for t in range(wo * wo):
        bS[t] = 0.0
        bT[t] = 0.0
    for b in range(q):
        for j in range(wo):
            sj = src[b, j]
            if sj < 0:
                continue
            rb = ib + sj * w
            ob = j * wo
            for r in range(NSEG):
                start = seg[b, r, 0]
                end = seg[b, r, 1]
                shift = seg[b, r, 2]
                for jp in range(start, end):
                    bS[ob + jp] += tS[rb + jp + shift]
                    bT[ob + jp] += tT[rb + jp + shift]
    for t in range(wo * wo):
        s = c * bS[t] + b2
        bS[t] = s
        bT[t] = c * bT[t] + s


@njit(cache=True, error_model="numpy")
def _conv_diag(D, TD, tD, tTD, srci, srcj, segj, h, w, ho, wo, q, c, b2):
    """Diagonal state: the same two passes on the (h, w) diagonal; result in D, TD (ho, wo)."""
    for i in range(ho):
        for j in range(w):
            tD[i * w + j] = 0.0
            tTD[i * w + j] = 0.0
        for a in range(q):
            si = srci[a, i]
            if si < 0:
                continue
            for j in range(w):
                tD[i * w + j] += D[si * w + j]
                tTD[i * w + j] += TD[si * w + j]
    for i in range(ho):
        for j in range(wo):
            D[i * wo + j] = 0.0
            TD[i * wo + j] = 0.0
        for b in range(q):
            for r in range(NSEG):
                start = segj[b, r, 0]
                end = segj[b, r, 1]
                shift = segj[b, r, 2]
                for j in range(start, end):
                    D[i * wo + j] += tD[i * w + j + shift]
                    TD[i * wo + j] += tTD[i * w + j + shift]
        for j in range(wo):
            s = c * D[i * wo + j] + b2
            D[i * wo + j] = s
            TD[i * wo + j] = c * TD[i * wo + j] + s


@njit(cache=True, error_model="numpy")
def _record_self(family, p0, p1, qvals, n, selfq, selfr, selfsk, off):
    """Self statistics of one image at one activation: q, sqrt(q), sqrt(E[phi^2])."""
    for t in range(n):
        qv = qvals[t]
        selfq[off + t] = qv
        selfr[off + t] = math.sqrt(qv)
        k11, _ = diag_dual(family, p0, p1, qv)
        selfsk[off + t] = math.sqrt(k11)


@njit(cache=True, error_model="numpy")
def run_pair(x, y, iop, fop, src, seg, q1, r1, sk1, q2, r2, sk2, selfrun, S, T, tS, tT,
             bS, bT, dg):
    """NNGP and NTK of one image pair, running the layer program ``iop``/``fop``.

    ``selfrun``: ``x`` is ``y``; the self statistics are computed on the way and written to
    ``q1, r1, sk1`` (and the same arrays are read as ``q2, ...``). Work arrays ``S .. tT``
    hold a full state, ``bS, bT`` one block, ``dg`` a diagonal.
    """
    H, W, C = x.shape
    nops = iop.shape[0]
    first_full = iop[0, 0] == OP_CONV_F
    # input layer: Sigma^0 = <x_p, y_p'> / C
    if first_full:
        for i in range(H):
            for ip in range(H):
                for j in range(W):
                    for jp in range(W):
                        acc = 0.0
                        for ch in range(C):
                            acc += x[i, j, ch] * y[ip, jp, ch]
                        t = ((i * H + ip) * W + j) * W + jp
                        S[t] = acc / C
                        T[t] = 0.0
    else:
        for i in range(H):
            for j in range(W):
                acc = 0.0
                for ch in range(C):
                    acc += x[i, j, ch] * y[i, j, ch]
                S[i * W + j] = acc / C
                T[i * W + j] = 0.0
    s_sc = 0.0
    t_sc = 0.0
    for k in range(nops):
        code = iop[k, 0]
        h = iop[k, 5]
        w = iop[k, 6]
        ho = iop[k, 7]
        wo = iop[k, 8]
        fam = iop[k, 3]
        off = iop[k, 4]
        w2 = fop[k, 0]
        b2 = fop[k, 1]
        p0 = fop[k, 2]
        p1 = fop[k, 3]
        if code == OP_CONV_F:
            qf = iop[k, 1]
            c = w2 / (qf * qf)
            _pass_rows_full(S, T, tS, tT, src[k, 0], h, ho, w, qf)
            fuse = fam >= 0 and not selfrun
            nb = wo * wo
            for i in range(ho):
                for ip in range(ho):
                    _pass_cols_block(tS, tT, (i * ho + ip) * w * w, src[k, 1], seg[k], w, wo,
                                     qf, c, b2, bS, bT)
                    ob = (i * ho + ip) * nb
                    if fuse:                  # activation on the block while it is in cache
                        for j in range(wo):
                            o1 = off + i * wo + j
                            _act_rows(fam, p0, p1, q1[o1], r1[o1], sk1[o1], q2[off + ip * wo:],
                                      r2[off + ip * wo:], sk2[off + ip * wo:], bS, bT,
                                      j * wo, wo)
                    for t in range(nb):
                        S[ob + t] = bS[t]
                        T[ob + t] = bT[t]
            if fam >= 0 and selfrun:
                code = OP_ACT_F          # fall through to the activation below
        if code == OP_ACT_F:
            if selfrun:
                for i in range(ho):
                    for j in range(wo):
                        dg[i * wo + j] = S[((i * ho + i) * wo + j) * wo + j]
                _record_self(fam, p0, p1, dg, ho * wo, q1, r1, sk1, off)
            nb = wo * wo
            for i in range(ho):
                for ip in range(ho):
                    ob = (i * ho + ip) * nb
                    for j in range(wo):
                        o1 = off + i * wo + j
                        _act_rows(fam, p0, p1, q1[o1], r1[o1], sk1[o1], q2[off + ip * wo:],
                                  r2[off + ip * wo:], sk2[off + ip * wo:], S, T, ob + j * wo, wo)
        elif code == OP_CONV_D:
            qf = iop[k, 1]
            c = w2 / (qf * qf)
            _conv_diag(S, T, tS, tT, src[k, 0], src[k, 1], seg[k], h, w, ho, wo, qf, c, b2)
            if fam >= 0:
                code = OP_ACT_D
        if code == OP_ACT_D:
            n = ho * wo
            if selfrun:
                _record_self(fam, p0, p1, S, n, q1, r1, sk1, off)
            for t in range(n):
                kk, kd = _dual(fam, p0, p1, q1[off + t], q2[off + t], r1[off + t],
                               r2[off + t], sk1[off + t], sk2[off + t], S[t])
                S[t] = kk
                T[t] = T[t] * kd
        elif code == OP_POOL_F:
            win = iop[k, 1]
            inv = 1.0 / (win * win * win * win)
            for I in range(ho):
                for Ip in range(ho):
                    for J in range(wo):
                        for Jp in range(wo):
                            accs = 0.0
                            acct = 0.0
                            for a in range(win):
                                for ap in range(win):
                                    base = ((I * win + a) * h + Ip * win + ap) * w * w
                                    for b in range(win):
                                        rb = base + (J * win + b) * w + Jp * win
                                        for bp in range(win):
                                            accs += S[rb + bp]
                                            acct += T[rb + bp]
                            t = ((I * ho + Ip) * wo + J) * wo + Jp
                            tS[t] = accs * inv
                            tT[t] = acct * inv
            n = ho * ho * wo * wo
            for t in range(n):
                S[t] = tS[t]
                T[t] = tT[t]
        elif code == OP_TODIAG:
            for i in range(h):
                for j in range(w):
                    t = ((i * h + i) * w + j) * w + j
                    tS[i * w + j] = S[t]
                    tT[i * w + j] = T[t]
            for t in range(h * w):
                S[t] = tS[t]
                T[t] = tT[t]
        elif code == OP_GAP:
            n = h * h * w * w
            accs = 0.0
            acct = 0.0
            for t in range(n):
                accs += S[t]
                acct += T[t]
            s_sc = accs / n
            t_sc = acct / n
        elif code == OP_FLAT:
            n = h * w
            accs = 0.0
            acct = 0.0
            for t in range(n):
                accs += S[t]
                acct += T[t]
            s_sc = accs / n
            t_sc = acct / n
        elif code == OP_DENSE:
            s_sc = w2 * s_sc + b2
            t_sc = w2 * t_sc + s_sc
        elif code == OP_ACT_S:
            if selfrun:
                dg[0] = s_sc
                _record_self(fam, p0, p1, dg, 1, q1, r1, sk1, off)
            kk, kd = _dual(fam, p0, p1, q1[off], q2[off], r1[off], r2[off], sk1[off], sk2[off],
                           s_sc)
            s_sc = kk
            t_sc = t_sc * kd
    return s_sc, t_sc


@njit(cache=True, error_model="numpy")
def _buffers(nfull, nblock):
    return (np.empty(nfull), np.empty(nfull), np.empty(nfull), np.empty(nfull),
            np.empty(nblock), np.empty(nblock), np.empty(nfull))


@njit(cache=True, parallel=True, error_model="numpy")
def self_stats(X, iop, fop, src, seg, nfull, nblock, nthreads, Q, R, SK, kself):
    """Self statistics (Q, R, SK: (n, nstat)) and the kernels K(x, x) (kself: (n, 2))."""
    n = X.shape[0]
    nchunks = min(n, 4 * nthreads)
    for c in prange(nchunks):
        S, T, tS, tT, bS, bT, dg = _buffers(nfull, nblock)
        for i in range(c, n, nchunks):
            a, b = run_pair(X[i], X[i], iop, fop, src, seg, Q[i], R[i], SK[i], Q[i], R[i],
                            SK[i], True, S, T, tS, tT, bS, bT, dg)
            kself[i, 0] = a
            kself[i, 1] = b


@njit(cache=True, parallel=True, error_model="numpy")
def gram(X1, X2, iop, fop, src, seg, nfull, nblock, nthreads, Q1, R1, SK1, Q2, R2, SK2,
         symmetric, out_nngp, out_ntk):
    """All pairs (``i < j`` only when ``symmetric``; the caller fills the diagonal), ``prange``
    over interleaved chunks of the pair list, work arrays allocated once per chunk."""
    n1 = X1.shape[0]
    n2 = X2.shape[0]
    if symmetric:
        npairs = n1 * (n1 - 1) // 2
    else:
        npairs = n1 * n2
    if npairs == 0:
        return
    nchunks = min(npairs, 8 * nthreads)
    for c in prange(nchunks):
        S, T, tS, tT, bS, bT, dg = _buffers(nfull, nblock)
        for t in range(c, npairs, nchunks):
            if symmetric:
                # t -> (i, j), i < j, row-major over the strict upper triangle
                i = int((2 * n1 - 1 - math.sqrt((2 * n1 - 1) ** 2 - 8 * t)) // 2)
                while i > 0 and t < i * (2 * n1 - i - 1) // 2:
                    i -= 1
                while t >= (i + 1) * (2 * n1 - i - 2) // 2:
                    i += 1
                j = t - i * (2 * n1 - i - 1) // 2 + i + 1
            else:
                i = t // n2
                j = t - i * n2
            a, b = run_pair(X1[i], X2[j], iop, fop, src, seg, Q1[i], R1[i], SK1[i], Q2[j],
                            R2[j], SK2[j], False, S, T, tS, tT, bS, bT, dg)
            out_nngp[i, j] = a
            out_ntk[i, j] = b
            if symmetric:
                out_nngp[j, i] = a
                out_ntk[j, i] = b
