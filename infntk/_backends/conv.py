"""Compiled CNN-GP / CNTK recursions, one pair of images at a time (closed-form duals).

Kernels receive plain arrays and scalars only and never validate: :mod:`infntk.conv` checks
the inputs, detects the regime and encodes the layers as a small program (``iop``, ``fop``,
the tap table ``src``, the padded-axis maps ``pmap`` and their contiguous runs ``runs``); this
module only runs it.

State of one pair ``(x, y)`` of images (``h x w`` positions):

* full regime: ``S[i, i', j, j'] = Sigma(x_{ij}, y_{i'j'})`` and ``T`` (the NTK), stored with
  the two row indices first (``(h, h, w, w)``, C order), so that a row tap adds contiguous
  ``w x w`` blocks;
* diagonal regime: ``S[i, j] = Sigma(x_{ij}, y_{ij})`` only (Novak et al. 2019);
* after the readout: two scalars.

Patch trace of a ``q x q`` convolution (NTK parameterization, fan-in ``q^2 C``)::

    Sigma'[p, p'] = w2 / q^2 * sum_{a, b} K[p + (a, b), p' + (a, b)] + b2
    Theta'[p, p'] = w2 / q^2 * sum_{a, b} Theta[p + (a, b), p' + (a, b)] + Sigma'[p, p']

applied separably and block by block (double-buffered state ``S -> S2``): for each output
row pair ``(i, i')`` the ``q`` row taps are summed into a *padded* ``wp x wp`` block (zero,
or wrapped, borders from the axis map ``pmap``), on which the column pair taps
``(j + b, j' + b)`` are a plain shift by ``b (wp + 1)`` of the flat index, one contiguous loop;
the bias, the NTK's new NNGP term and the dual activation follow while the block is in cache.
The diagonal regime does the same on the ``(h, w)`` diagonal: a padded image and shifts by
``a wp`` and ``b``.

Dual inputs: ``m = sqrt(q_x q_y)``, ``A = max(m - s, 0)``, ``B = max(m + s, 0)`` from the
carried ``s = Sigma`` and the self variances ``q`` (a simpler formulation than the FC engine's
carried gaps). A pair of identical positions gets ``A = 0`` exactly: the self variances are
computed by the same passes, in the same order, as the pair's entries. Elsewhere the absolute
error of ``A`` is a few ulp of ``m``; see docs/conv.md for what that means for accuracy. The
ReLU family (relu, leaky_relu, abs, identity) has a branch-free, libm-free form below that
the compiler vectorizes; the other closed forms go through :func:`infntk._duals.pair_dual`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .._duals import atan_unit, diag_dual, pair_dual
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

# iop columns: code, q or window, number of column runs, family (-1: none), offset of the self
# statistics, h_in, w_in, h_out, w_out, hp, wp (padded sizes).   fop columns: w2, b2, p0, p1.
NIOP = 11

_PI = math.pi
_INV_2PI = 1.0 / (2.0 * math.pi)


@njit(cache=True, inline="always", error_model="numpy")
def _abrelu_kkd(a, b, m, s):
    """(k, kd) of phi = b max(x, 0) + a min(x, 0) at ``m = sqrt(q_x q_y)``, covariance ``s``.

    ``k = N s + (a - b)^2 / (2 pi) (sqrt(A B) - theta s)`` with ``N = (a^2 + b^2) / 2`` and
    ``kd = (a - b)^2 / (2 pi) (pi - theta) + a b`` (Cho & Saul 2009), ``theta`` from
    ``2 atan(x)``, ``x = sqrt(min(A, B) / max(A, B))`` (the smaller angle directly) and
    ``sqrt(A B) = max(A, B) x``: two square roots and two divisions. Branch-free, so the
    loops over a block vectorize; the absolute error is a few ulp of ``m``. ``m = 0`` gives
    ``theta = pi / 2`` (docs/conventions.md: a degenerate row is uncorrelated).
    """
    A = max(m - s, 0.0)
    B = max(m + s, 0.0)
    lo = min(A, B)
    hi = max(A, B)
    x = math.sqrt(lo / hi) if hi > 0.0 else 1.0
    at = 2.0 * atan_unit(x)
    small = A <= B
    theta = at if small else _PI - at
    phi = _PI - at if small else at
    c2 = (a - b) * (a - b) * _INV_2PI
    kd = c2 * phi + a * b
    k = 0.5 * (a * a + b * b) * s + c2 * (hi * x - theta * s)     # hi x = sqrt(A B)
    return k, kd


@njit(cache=True, inline="always", error_model="numpy")
def _dual(family, p0, p1, qa, qb, ra, rb, ska, skb, s):
    """(k, kd) of any closed-form family at the pair state ``(qa, qb, s)``."""
    if family == FAMILY_ABRELU:
        return _abrelu_kkd(p0, p1, _geomean(qa, qb, ra, rb), s)
    m = _geomean(qa, qb, ra, rb)
    A = max(m - s, 0.0)
    B = max(m + s, 0.0)
    k, kd, _, _ = pair_dual(family, p0, p1, qa, qb, A, B, ska, skb)
    return k, kd


@njit(cache=True, inline="always", error_model="numpy")
def _act_block(family, p0, p1, qa_v, ra_v, ska_v, ia, qb_v, rb_v, skb_v, ib, S, T, base,
               nrow, ncol):
    """Activation in place on ``S[base : base + nrow * ncol]`` (row-major ``nrow x ncol``):
    the row ``j`` has the variance ``qa_v[ia + j]``, the column ``j'`` ``qb_v[ib + j']``.
    The family switch sits outside the loops; the ReLU loop vectorizes. (Two-dimensional
    views keep every index a loop counter, which lets the compiler drop the negative-index
    checks that otherwise block vectorization.)"""
    qa = qa_v[ia:ia + nrow]
    ra = ra_v[ia:ia + nrow]
    ska = ska_v[ia:ia + nrow]
    qb = qb_v[ib:ib + ncol]
    rb = rb_v[ib:ib + ncol]
    skb = skb_v[ib:ib + ncol]
    Sv = S[base:base + nrow * ncol].reshape((nrow, ncol))
    Tv = T[base:base + nrow * ncol].reshape((nrow, ncol))
    if family == FAMILY_ABRELU:
        for j in range(nrow):
            for t in range(ncol):
                k, kd = _abrelu_kkd(p0, p1, _geomean(qa[j], qb[t], ra[j], rb[t]), Sv[j, t])
                Sv[j, t] = k
                Tv[j, t] = Tv[j, t] * kd
    else:
        for j in range(nrow):
            for t in range(ncol):
                k, kd = _dual(family, p0, p1, qa[j], qb[t], ra[j], rb[t], ska[j], skb[t],
                              Sv[j, t])
                Sv[j, t] = k
                Tv[j, t] = Tv[j, t] * kd


@njit(cache=True, error_model="numpy")
def _act_diag(family, p0, p1, q1, r1, sk1, q2, r2, sk2, off, S, T, n):
    """Activation in place on the diagonal state ``S[:n]`` (variances ``q1[off + t]``,
    ``q2[off + t]``)."""
    qa = q1[off:off + n]
    qb = q2[off:off + n]
    ra = r1[off:off + n]
    rb = r2[off:off + n]
    ska = sk1[off:off + n]
    skb = sk2[off:off + n]
    if family == FAMILY_ABRELU:
        for t in range(n):
            k, kd = _abrelu_kkd(p0, p1, _geomean(qa[t], qb[t], ra[t], rb[t]), S[t])
            S[t] = k
            T[t] = T[t] * kd
    else:
        for t in range(n):
            k, kd = _dual(family, p0, p1, qa[t], qb[t], ra[t], rb[t], ska[t], skb[t], S[t])
            S[t] = k
            T[t] = T[t] * kd


@njit(cache=True, inline="always", error_model="numpy")
def _row_taps(S, T, tS, tT, srow, i, ip, h, w, wp, runs, nrun, q):
    """Padded block ``tS[jj, jj'] = sum_a S[src[a, i], src[a, i'], cmap[jj], cmap[jj']]``.

    ``runs`` are the stretches of the padded axis with ``cmap[jj] = jj + shift``; only those
    rectangles are written (the zero border of ``tS`` stays as initialised). Returns False
    when every tap is out of range."""
    ww = w * w
    dS = tS[:wp * wp].reshape((wp, wp))
    dT = tT[:wp * wp].reshape((wp, wp))
    first = True
    for a in range(q):
        si = srow[a, i]
        sip = srow[a, ip]
        if si < 0 or sip < 0:
            continue
        blk = (si * h + sip) * ww
        xS = S[blk:blk + ww].reshape((w, w))
        xT = T[blk:blk + ww].reshape((w, w))
        for r1 in range(nrun):
            a1 = runs[r1, 0]
            n1 = runs[r1, 1] - a1
            b1 = a1 + runs[r1, 2]
            for r2 in range(nrun):
                a2 = runs[r2, 0]
                n2 = runs[r2, 1] - a2
                b2 = a2 + runs[r2, 2]
                oS = dS[a1:a1 + n1, a2:a2 + n2]
                oT = dT[a1:a1 + n1, a2:a2 + n2]
                iS = xS[b1:b1 + n1, b2:b2 + n2]
                iT = xT[b1:b1 + n1, b2:b2 + n2]
                if first:
                    for j in range(n1):
                        for t in range(n2):
                            oS[j, t] = iS[j, t]
                            oT[j, t] = iT[j, t]
                else:
                    for j in range(n1):
                        for t in range(n2):
                            oS[j, t] += iS[j, t]
                            oT[j, t] += iT[j, t]
        first = False
    return not first


@njit(cache=True, inline="always", error_model="numpy")
def _col_taps(tS, tT, oS, oT, wp, wo, q, c, b2, S2, T2, base):
    """``S2[base + j wo + j'] = c sum_b tS[(j + b) wp + j' + b] + b2`` (a shift by
    ``b (wp + 1)`` of the flat padded index) and ``T2 = c sum_b tT[...] + S2``."""
    L = (wo - 1) * wp + wo
    for t in range(L):
        oS[t] = tS[t]
        oT[t] = tT[t]
    for b in range(1, q):
        d = b * (wp + 1)
        xS = tS[d:d + L]
        xT = tT[d:d + L]
        for t in range(L):
            oS[t] += xS[t]
            oT[t] += xT[t]
    dS = S2[base:base + wo * wo].reshape((wo, wo))
    dT = T2[base:base + wo * wo].reshape((wo, wo))
    xS = oS[:wo * wp].reshape((wo, wp))
    xT = oT[:wo * wp].reshape((wo, wp))
    for j in range(wo):
        for t in range(wo):
            s = c * xS[j, t] + b2
            dS[j, t] = s
            dT[j, t] = c * xT[j, t] + s


@njit(cache=True, error_model="numpy")
def _conv_full(S, T, S2, T2, tS, tT, oS, oT, srow, runs, nrun, h, w, ho, wo, wp, q, c,
               b2, fuse, fam, p0, p1, q1, r1, sk1, q2, r2, sk2, off):
    """One Conv layer on the full state ``S, T -> S2, T2``, with the activation fused per
    block when ``fuse`` (the self variances of both images are known)."""
    for t in range(wp * wp):
        tS[t] = 0.0
        tT[t] = 0.0
    nb = wo * wo
    for i in range(ho):
        for ip in range(ho):
            base = (i * ho + ip) * nb
            if _row_taps(S, T, tS, tT, srow, i, ip, h, w, wp, runs, nrun, q):
                _col_taps(tS, tT, oS, oT, wp, wo, q, c, b2, S2, T2, base)
            else:
                for t in range(nb):
                    S2[base + t] = b2
                    T2[base + t] = b2
            if fuse:
                _act_block(fam, p0, p1, q1, r1, sk1, off + i * wo, q2, r2, sk2, off + ip * wo,
                           S2, T2, base, wo, wo)


@njit(cache=True, error_model="numpy")
def _conv_diag(D, TD, D2, TD2, tD, tTD, uD, uTD, rmap, cmap, h, w, ho, wo, hp, wp, q, c, b2):
    """Diagonal state: ``D2[i, j] = c sum_{a, b} D[rmap[i + a], cmap[j + b]] + b2`` (zero
    where a map is ``-1``) from a padded copy, shifts by ``a wp`` then by ``b``."""
    for ii in range(hp):
        si = rmap[ii]
        for jj in range(wp):
            sj = cmap[jj]
            if si >= 0 and sj >= 0:
                tD[ii * wp + jj] = D[si * w + sj]
                tTD[ii * wp + jj] = TD[si * w + sj]
            else:
                tD[ii * wp + jj] = 0.0
                tTD[ii * wp + jj] = 0.0
    L = ho * wp
    for t in range(L):
        uD[t] = tD[t]
        uTD[t] = tTD[t]
    for a in range(1, q):
        d = a * wp
        xD = tD[d:d + L]
        xT = tTD[d:d + L]
        for t in range(L):
            uD[t] += xD[t]
            uTD[t] += xT[t]
    L2 = (ho - 1) * wp + wo
    for t in range(L2):
        tD[t] = uD[t]
        tTD[t] = uTD[t]
    for b in range(1, q):
        xD = uD[b:b + L2]
        xT = uTD[b:b + L2]
        for t in range(L2):
            tD[t] += xD[t]
            tTD[t] += xT[t]
    for i in range(ho):
        dD = D2[i * wo:(i + 1) * wo]
        dT = TD2[i * wo:(i + 1) * wo]
        xD = tD[i * wp:i * wp + wo]
        xT = tTD[i * wp:i * wp + wo]
        for j in range(wo):
            s = c * xD[j] + b2
            dD[j] = s
            dT[j] = c * xT[j] + s


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
def run_pair(x, y, iop, fop, src, pmap, runs, q1, r1, sk1, q2, r2, sk2, selfrun, S, T, S2,
             T2, tS, tT, oS, oT, dg):
    """NNGP and NTK of one image pair, running the layer program ``iop``/``fop``.

    ``selfrun``: ``x`` is ``y``; the self statistics are computed on the way and written to
    ``q1, r1, sk1`` (and the same arrays are read as ``q2, ...``). Work arrays ``S .. T2``
    hold a full state (double-buffered), ``tS .. oT`` a padded block, ``dg`` a diagonal.
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
            fuse = fam >= 0 and not selfrun
            _conv_full(S, T, S2, T2, tS, tT, oS, oT, src[k], runs[k], iop[k, 2],
                       h, w, ho, wo, iop[k, 10], qf, c, b2, fuse, fam, p0, p1, q1, r1, sk1,
                       q2, r2, sk2, off)
            S, S2 = S2, S
            T, T2 = T2, T
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
                    _act_block(fam, p0, p1, q1, r1, sk1, off + i * wo, q2, r2, sk2,
                               off + ip * wo, S, T, (i * ho + ip) * nb, wo, wo)
        elif code == OP_CONV_D:
            qf = iop[k, 1]
            c = w2 / (qf * qf)
            _conv_diag(S, T, S2, T2, tS, tT, oS, oT, pmap[k, 0], pmap[k, 1], h, w, ho, wo,
                       iop[k, 9], iop[k, 10], qf, c, b2)
            S, S2 = S2, S
            T, T2 = T2, T
            if fam >= 0:
                code = OP_ACT_D
        if code == OP_ACT_D:
            n = ho * wo
            if selfrun:
                _record_self(fam, p0, p1, S, n, q1, r1, sk1, off)
            _act_diag(fam, p0, p1, q1, r1, sk1, q2, r2, sk2, off, S, T, n)
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
                            S2[t] = accs * inv
                            T2[t] = acct * inv
            S, S2 = S2, S
            T, T2 = T2, T
        elif code == OP_TODIAG:
            for i in range(h):
                for j in range(w):
                    t = ((i * h + i) * w + j) * w + j
                    S2[i * w + j] = S[t]
                    T2[i * w + j] = T[t]
            S, S2 = S2, S
            T, T2 = T2, T
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
            np.empty(nblock), np.empty(nblock), np.empty(nblock), np.empty(nblock),
            np.empty(nfull))


@njit(cache=True, parallel=True, error_model="numpy")
def self_stats(X, iop, fop, src, pmap, runs, nfull, nblock, nthreads, Q, R, SK, kself):
    """Self statistics (Q, R, SK: (n, nstat)) and the kernels K(x, x) (kself: (n, 2))."""
    n = X.shape[0]
    nchunks = min(n, 4 * nthreads)
    for c in prange(nchunks):
        S, T, S2, T2, tS, tT, oS, oT, dg = _buffers(nfull, nblock)
        for i in range(c, n, nchunks):
            a, b = run_pair(X[i], X[i], iop, fop, src, pmap, runs, Q[i], R[i], SK[i], Q[i],
                            R[i], SK[i], True, S, T, S2, T2, tS, tT, oS, oT, dg)
            kself[i, 0] = a
            kself[i, 1] = b


@njit(cache=True, parallel=True, error_model="numpy")
def gram(X1, X2, iop, fop, src, pmap, runs, nfull, nblock, nthreads, Q1, R1, SK1, Q2, R2,
         SK2, symmetric, out_nngp, out_ntk):
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
        S, T, S2, T2, tS, tT, oS, oT, dg = _buffers(nfull, nblock)
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
            a, b = run_pair(X1[i], X2[j], iop, fop, src, pmap, runs, Q1[i], R1[i], SK1[i],
                            Q2[j], R2[j], SK2[j], False, S, T, S2, T2, tS, tT, oS, oT, dg)
            out_nngp[i, j] = a
            out_ntk[i, j] = b
            if symmetric:
                out_nngp[j, i] = a
                out_ntk[j, i] = b
