"""Convolutional NNGP/NTK with activations that have no closed form (Hermite series).

The layer list is encoded by :mod:`infntk.conv` (``_compile_series``) as a small program of
plain arrays; this module runs it and certifies the result (docs/conv.md, "Activations without
a closed form"). Every activation of such a network runs its Mehler series: at an activation
the entry ``(p, p')`` of the pair ``(x, y)`` is a 2 x 2 Gaussian with the self variances
``q_x(p)``, ``q_y(p')`` and the covariance ``s``, so with ``rho = s / sqrt(q_x(p) q_y(p'))``::

    K  = sum_{k<=K} a_k(q_x(p)) a_k(q_y(p')) rho^k,
    kd = sum_{k<=K} b_k(q_x(p)) b_k(q_y(p')) rho^k,        Theta <- Theta kd,

the coefficients ``a_k`` of ``phi``, ``b_k`` of ``phi'`` per (image, position, activation)
from :mod:`infntk.hermite` (the same ``_LayerData`` as the composed engine). The self runs put
the exact second moments on the spatial diagonal of each image's own state.

State of one pair, plain C order (no padding): full ``S[i, i', j, j']`` (index ``((i h + i') w
+ j) w + j'``), diagonal ``S[i, j]``, scalars after the readout. A Conv is applied separably
(row taps, then column taps, with the tap tables of :func:`infntk.conv._axis_tables`).

Certified bound: per entry. Next to ``S``, ``T`` the pair loop carries the bounds ``eS``,
``eT`` on their errors, with each entry's Mehler tails weighted by ``|rho|^(K+1)`` and Horner's
rounding graded by ``|rho|`` (:func:`_act_span`, the terms of the fully-connected series
engine, docs/series_engine.md); ``error_bound`` is the largest over the entries of the result.
The orders are chosen by the per-row pass :func:`bound_pass` with each row's tails weighted by
its largest ``|rho|`` seen in the self runs and a sample of pairs (docs/conv.md, "Activations
without a closed form").
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from numba import njit

from .._numba_config import chunk_count, engine_lock, run_chunks
from ._common import clipped_correlation
from .composed import _series_moments
from .conv import _pair_count, _pair_of, _write_pair
from .series import K_MAX, _LayerData, _powers, _rounding

__all__ = ["OP_CONV_F", "OP_CONV_D", "OP_ACT_F", "OP_ACT_D", "OP_ACT_S", "OP_POOL_F",
           "OP_TODIAG", "OP_GAP", "OP_FLAT", "OP_DENSE", "SeriesProgram", "series_conv_kernels",
           "series_self_kernels", "bound_pass"]

OP_CONV_F, OP_CONV_D, OP_ACT_F, OP_ACT_D, OP_ACT_S, OP_POOL_F, OP_TODIAG, OP_GAP, OP_FLAT, \
    OP_DENSE = range(1, 11)
# iop columns: code, filter or window, h, w, ho, wo (input and output sizes), offset of the
# activation's variances in the per-image statistics, offset of its coefficients, order K,
# index of the conv's tap tables. fop columns: c (w2 / q^2 of a Conv, w2 of a Dense), b2, cv
# (the NTK's coefficient of the input NNGP: c in the NTK parameterization, the fan-in (per
# tap) in the standard one), tb (the NTK's bias term: b2, or 1 / 0 in the standard one).
NIOP = 10
_ACTS = (OP_ACT_F, OP_ACT_D, OP_ACT_S)
_EPS = float(np.finfo(float).eps)
_GAMMA = 1.01 * _EPS            # unit of the rounding allowances (n eps / (1 - n eps), n << 1e13)
_CAPS = (96, K_MAX)             # order tables tried, as the composed engine
_UP = 1.0 + 8.0 * _EPS          # covers the rounding of the bound's own arithmetic
#: the per-entry certificate (False: the per-row bound at |rho| = 1 of every entry, kept for
#: the before/after comparison of benchmarks/bench_conv.py --series)
_PER_ENTRY = True
#: partners per image in the sample of pairs that estimates each row's largest |rho|
_PARTNERS = 4
#: the estimate is raised this fraction of the way to 1 before it weights the tails
_R_MARGIN = 0.1
#: rows per chunk of the order rule's weighted tails
_ROW_CHUNK = 4096


# ----------------------------------------------------------------------------- compiled
@njit(cache=True, inline="always", error_model="numpy")
def _mehler(ca1, cb1, o1, ca2, cb2, o2, K, rho):
    """Both Mehler sums by Horner at ``rho`` (coefficients at ``o1``/``o2``, ``K + 1`` each)."""
    acc = ca1[o1 + K] * ca2[o2 + K]
    accd = cb1[o1 + K] * cb2[o2 + K]
    for k in range(K - 1, -1, -1):
        acc = acc * rho + ca1[o1 + k] * ca2[o2 + k]
        accd = accd * rho + cb1[o1 + k] * cb2[o2 + k]
    return acc, accd


@njit(cache=True, error_model="numpy")
def _act_span(S, T, eS, eT, t0, n, px0, xs, py0, qo, co, K, selfrun, bnd, q1, r1, e1, ed1,
              ca1, cb1, B1, RM1, q2, r2, e2, ed2, ca2, cb2, B2, RM2, ao, P, wk, ex):
    """One activation on the entries ``t0 .. t0 + n - 1`` of the state, the entry ``jj``
    pairing the row ``px0 + xs jj`` of the first image with the row ``py0 + jj`` of the second.

    Values: the Mehler sums (the self diagonal of a self run: the exact second moments). With
    ``bnd``, the per-entry error state ``eS``, ``eT`` is carried (docs/conv.md, "Certified
    bound"): ``e = eS + 4 gamma sqrt(q q')`` (the rounding of ``rho``), ``delta = e /
    sqrt(q q')``, ``a = |rho^|``, then

        eK  = sqrt(E'E') e + a^(K+1) sqrt(T T) + R(a) sqrt(E E),
        ekd = delta sqrt(S1 S1) + min(1, a + delta)^(K+1) sqrt(T'T') + R(a) sqrt(E'E'),
        eT' = |kd^| eT + ekd (|Theta^| + eT) + gamma |Theta^ kd^|,

    ``R(a) = min(16 (K + 2) eps, series._rounding(a, K))`` (64 eps on the self diagonal, no
    series summed there); the powers by :func:`infntk._backends.series._powers`. ``bnd == 2``
    also raises ``RM1``, ``RM2`` (per row) to the largest ``|rho^|`` seen. ``B1``, ``B2``: the
    rows' ``sqrt`` of ``E, E', T_K, T'_K, S1_K`` at ``ao``, ``ao + P``, ... (``P`` rows each).
    """
    K1 = K + 1
    AB = wk[0]
    AD = wk[1]
    DL = wk[2]
    FT = wk[3]
    FD = wk[4]
    PA = wk[5]
    PD = wk[6]
    KD = wk[7]
    for jj in range(n):
        t = t0 + jj
        p = px0 + xs * jj
        pp = py0 + jj
        AB[jj] = 0.0
        AD[jj] = 0.0
        DL[jj] = 0.0
        if selfrun and p == pp:
            continue
        m = r1[qo + p] * r2[qo + pp]
        rho, ex = clipped_correlation(S[t], m, ex)
        k, kd = _mehler(ca1, cb1, co + p * K1, ca2, cb2, co + pp * K1, K, rho)
        S[t] = k
        KD[jj] = kd
        if bnd:
            a = abs(rho)
            e = eS[t] + 4.0 * _GAMMA * m
            dl = e / m if m > 0.0 else 0.0
            AB[jj] = a
            DL[jj] = dl
            AD[jj] = min(1.0, a + dl)
            eS[t] = e
            if bnd == 2:
                RM1[qo + p] = max(RM1[qo + p], a)
                RM2[qo + pp] = max(RM2[qo + pp], a)
    if not bnd:
        for jj in range(n):
            t = t0 + jj
            p = px0 + xs * jj
            if selfrun and p == py0 + jj:
                S[t] = e1[qo + p]
                T[t] = T[t] * ed1[qo + p]
            else:
                T[t] = T[t] * KD[jj]
        return ex
    _powers(AB, AD, FT, FD, PA, PD, n, K + 1, 1.0 + 2.0 * (K + 2.0) * _EPS)
    Rl = 16.0 * (K + 2.0) * _EPS
    Rd = min(Rl, 64.0 * _EPS)
    for jj in range(n):
        t = t0 + jj
        p = px0 + xs * jj
        pp = py0 + jj
        x = ao + p
        y = ao + pp
        p1 = B1[x]
        p2 = B2[y]
        lip = B1[x + P] * B2[y + P]
        if selfrun and p == pp:
            S[t] = e1[qo + p]
            kd = ed1[qo + p]
            m = r1[qo + p] * r2[qo + pp]
            eK = lip * eS[t] + Rd * p1 * p2
            ekd = Rd * lip
            if m > 0.0:
                ekd += (eS[t] / m) * B1[x + 4 * P] * B2[y + 4 * P]
        else:
            kd = KD[jj]
            Rp = min(Rl, _rounding(AB[jj], K))
            eK = (lip * eS[t] + FT[jj] * B1[x + 2 * P] * B2[y + 2 * P] + Rp * p1 * p2)
            ekd = (DL[jj] * B1[x + 4 * P] * B2[y + 4 * P] + FD[jj] * B1[x + 3 * P] * B2[y + 3 * P]
                   + Rp * lip)
        th = T[t]
        tn = th * kd
        eT[t] = (abs(kd) * eT[t] + ekd * (abs(th) + eT[t]) + _GAMMA * abs(tn)) * _UP
        T[t] = tn
        eS[t] = eK * _UP
    return ex


@njit(cache=True, error_model="numpy")
def _conv_full(S, T, S2, T2, U, UT, rs, cs, q, h, w, ho, wo, c, b2, cv, tb):
    """Row taps into ``U`` (ho, ho, w, w), then column taps into ``S2`` (ho, ho, wo, wo)."""
    W2 = w * w
    for io in range(ho):
        for iq in range(ho):
            ob = (io * ho + iq) * W2
            for t in range(W2):
                U[ob + t] = 0.0
                UT[ob + t] = 0.0
            for a in range(q):
                ra = rs[a, io]
                rb = rs[a, iq]
                if ra < 0 or rb < 0:
                    continue
                ib = (ra * h + rb) * W2
                for t in range(W2):
                    U[ob + t] += S[ib + t]
                    UT[ob + t] += T[ib + t]
    for io in range(ho):
        for iq in range(ho):
            ub = (io * ho + iq) * W2
            ob = (io * ho + iq) * wo * wo
            for jo in range(wo):
                for jq in range(wo):
                    accs = 0.0
                    acct = 0.0
                    for b in range(q):
                        ca = cs[b, jo]
                        cb = cs[b, jq]
                        if ca < 0 or cb < 0:
                            continue
                        accs += U[ub + ca * w + cb]
                        acct += UT[ub + ca * w + cb]
                    o = ob + jo * wo + jq
                    S2[o] = c * accs + b2
                    T2[o] = c * acct + (cv * accs + tb)


@njit(cache=True, error_model="numpy")
def _conv_diag(S, T, S2, T2, rs, cs, q, w, ho, wo, c, b2, cv, tb):
    for io in range(ho):
        for jo in range(wo):
            accs = 0.0
            acct = 0.0
            for a in range(q):
                ra = rs[a, io]
                if ra < 0:
                    continue
                for b in range(q):
                    cb = cs[b, jo]
                    if cb < 0:
                        continue
                    accs += S[ra * w + cb]
                    acct += T[ra * w + cb]
            S2[io * wo + jo] = c * accs + b2
            T2[io * wo + jo] = c * acct + (cv * accs + tb)


@njit(cache=True, error_model="numpy")
def _pool(S, T, S2, T2, h, w, ho, wo, win):
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


@njit(cache=True, error_model="numpy")
def _round_full(eS, eT, ho, wo, g, B1, B2, mo):
    """Add the rounding ``g (sqrt(M(x, p) M(y, p')) + e)`` of a linear op to every entry of a
    full state ``(ho, ho, wo, wo)`` (``B``: the rows' ``sqrt M`` at ``mo``, ``sqrt Mt`` at
    ``mo + ho wo``)."""
    P = ho * wo
    for io in range(ho):
        for iq in range(ho):
            for jo in range(wo):
                p = io * wo + jo
                for jq in range(wo):
                    pp = iq * wo + jq
                    t = ((io * ho + iq) * wo + jo) * wo + jq
                    eS[t] = eS[t] + g * (B1[mo + p] * B2[mo + pp] + eS[t])
                    eT[t] = eT[t] + g * (B1[mo + P + p] * B2[mo + P + pp] + eT[t])


@njit(cache=True, error_model="numpy")
def _round_diag(eS, eT, P, g, B1, B2, mo):
    """:func:`_round_full` for a diagonal state of ``P`` rows (or a scalar, ``P = 1``)."""
    for p in range(P):
        eS[p] = eS[p] + g * (B1[mo + p] * B2[mo + p] + eS[p])
        eT[p] = eT[p] + g * (B1[mo + P + p] * B2[mo + P + p] + eT[p])


@njit(cache=True, error_model="numpy")
def _record(S, full, h, w, q1, r1, qo):
    """The diagonal of the current self state: the variances of the activation at ``qo``."""
    for i in range(h):
        for j in range(w):
            p = i * w + j
            v = S[((i * h + i) * w + j) * w + j] if full else S[p]
            q1[qo + p] = v
            r1[qo + p] = math.sqrt(v)


@njit(cache=True, error_model="numpy")
def _gap_sum(S, h, w):
    """Sum of a full state by two levels (rounding ``(2 P + 1) eps``, not ``P^2``)."""
    P = h * w
    acc = 0.0
    for p in range(P):
        ps = 0.0
        i = p // w
        j = p - i * w
        for ip in range(h):
            base = ((i * h + ip) * w + j) * w
            for jp in range(w):
                ps += S[base + jp]
        acc += ps
    return acc


@njit(cache=True, error_model="numpy")
def run_pair(x, y, iop, fop, src, stop, selfrun, bnd, boff, q1, r1, e1, ed1, ca1, cb1, B1,
             RM1, q2, r2, e2, ed2, ca2, cb2, B2, RM2, S, T, S2, T2, U, UT, eS, eT, eS2, eT2,
             wk, sc):
    """NNGP, NTK, the largest correlation excursion and (``bnd``) the certified error bound of
    one pair, ops ``[0, stop)``.

    ``selfrun`` (``x`` is ``y``): the diagonal entries of each activation take the exact second
    moments ``e1``, ``ed1``; if ``stop`` is an activation, its variances are recorded into
    ``q1``, ``r1`` (the diagonal of the state it receives) and the run ends there. With ``bnd``
    the error state ``eS``, ``eT`` (per entry) runs next to ``S``, ``T``: the linear ops apply
    to it as to the values (their coefficients are non-negative) plus their rounding, the
    activations by :func:`_act_span`; ``B1``, ``B2`` hold the per-row data at ``boff[k + 1]``
    (op ``k``; ``boff[0]``: ``|x_p| / sqrt(C)`` of the input). ``sc``: ``(4, 1)`` scalar state.
    """
    H, W, C = x.shape
    if iop[0, 0] == OP_CONV_F:
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
                        if bnd:
                            eS[t] = (2 * C + 2) * _GAMMA * 1.01 * B1[i * W + j] * B2[ip * W + jp]
                            eT[t] = 0.0
    else:
        for i in range(H):
            for j in range(W):
                acc = 0.0
                for ch in range(C):
                    acc += x[i, j, ch] * y[i, j, ch]
                S[i * W + j] = acc / C
                T[i * W + j] = 0.0
                if bnd:
                    eS[i * W + j] = (2 * C + 2) * _GAMMA * 1.01 * B1[i * W + j] * B2[i * W + j]
                    eT[i * W + j] = 0.0
    s_sc = sc[0]
    t_sc = sc[1]
    es_sc = sc[2]
    et_sc = sc[3]
    ex = 0.0
    for k in range(stop + 1 if stop < iop.shape[0] else stop):
        code = iop[k, 0]
        qf = iop[k, 1]
        h = iop[k, 2]
        w = iop[k, 3]
        ho = iop[k, 4]
        wo = iop[k, 5]
        qo = iop[k, 6]
        co = iop[k, 7]
        K = iop[k, 8]
        c = fop[k, 0]
        b2 = fop[k, 1]
        cv = fop[k, 2]
        tb = fop[k, 3]
        mo = boff[k + 1]
        if k == stop:                       # record the variances of this activation
            if code == OP_ACT_S:
                q1[qo] = s_sc[0]
                r1[qo] = math.sqrt(s_sc[0])
            else:
                _record(S, code == OP_ACT_F, h, w, q1, r1, qo)
            break
        if code == OP_CONV_F:
            _conv_full(S, T, S2, T2, U, UT, src[iop[k, 9], 0], src[iop[k, 9], 1], qf, h, w,
                       ho, wo, c, b2, cv, tb)
            S, S2 = S2, S
            T, T2 = T2, T
            if bnd:
                _conv_full(eS, eT, eS2, eT2, U, UT, src[iop[k, 9], 0], src[iop[k, 9], 1], qf,
                           h, w, ho, wo, c, 0.0, cv, 0.0)
                eS, eS2 = eS2, eS
                eT, eT2 = eT2, eT
                _round_full(eS, eT, ho, wo, (2 * qf + 8) * _GAMMA, B1, B2, mo)
        elif code == OP_CONV_D:
            _conv_diag(S, T, S2, T2, src[iop[k, 9], 0], src[iop[k, 9], 1], qf, w, ho, wo, c,
                       b2, cv, tb)
            S, S2 = S2, S
            T, T2 = T2, T
            if bnd:
                _conv_diag(eS, eT, eS2, eT2, src[iop[k, 9], 0], src[iop[k, 9], 1], qf, w, ho,
                           wo, c, 0.0, cv, 0.0)
                eS, eS2 = eS2, eS
                eT, eT2 = eT2, eT
                _round_diag(eS, eT, ho * wo, (2 * qf + 8) * _GAMMA, B1, B2, mo)
        elif code == OP_ACT_F:
            P = h * w
            for i in range(h):
                for j in range(w):
                    for ip in range(h):
                        ex = _act_span(S, T, eS, eT, ((i * h + ip) * w + j) * w, w, i * w + j,
                                       0, ip * w, qo, co, K, selfrun, bnd, q1, r1, e1, ed1,
                                       ca1, cb1, B1, RM1, q2, r2, e2, ed2, ca2, cb2, B2, RM2,
                                       mo, P, wk, ex)
        elif code == OP_ACT_D:
            ex = _act_span(S, T, eS, eT, 0, h * w, 0, 1, 0, qo, co, K, selfrun, bnd, q1, r1,
                           e1, ed1, ca1, cb1, B1, RM1, q2, r2, e2, ed2, ca2, cb2, B2, RM2, mo,
                           h * w, wk, ex)
        elif code == OP_ACT_S:
            ex = _act_span(s_sc, t_sc, es_sc, et_sc, 0, 1, 0, 0, 0, qo, co, K, selfrun, bnd,
                           q1, r1, e1, ed1, ca1, cb1, B1, RM1, q2, r2, e2, ed2, ca2, cb2, B2,
                           RM2, mo, 1, wk, ex)
        elif code == OP_POOL_F:
            _pool(S, T, S2, T2, h, w, ho, wo, qf)
            S, S2 = S2, S
            T, T2 = T2, T
            if bnd:
                _pool(eS, eT, eS2, eT2, h, w, ho, wo, qf)
                eS, eS2 = eS2, eS
                eT, eT2 = eT2, eT
                _round_full(eS, eT, ho, wo, (qf ** 4 + 4) * _GAMMA, B1, B2, mo)
        elif code == OP_TODIAG:
            for i in range(h):
                for j in range(w):
                    t = ((i * h + i) * w + j) * w + j
                    S2[i * w + j] = S[t]
                    T2[i * w + j] = T[t]
                    if bnd:
                        eS2[i * w + j] = eS[t]
                        eT2[i * w + j] = eT[t]
            S, S2 = S2, S
            T, T2 = T2, T
            eS, eS2 = eS2, eS
            eT, eT2 = eT2, eT
        elif code == OP_GAP:                # two-level sums: rounding (2P + 1) eps, not P^2
            P = h * w
            s_sc[0] = _gap_sum(S, h, w) / (P * P)
            t_sc[0] = _gap_sum(T, h, w) / (P * P)
            if bnd:
                es_sc[0] = _gap_sum(eS, h, w) / (P * P)
                et_sc[0] = _gap_sum(eT, h, w) / (P * P)
                _round_diag(es_sc, et_sc, 1, (2 * P + 4) * _GAMMA, B1, B2, mo)
        elif code == OP_FLAT:
            P = h * w
            accs = 0.0
            acct = 0.0
            for p in range(P):
                accs += S[p]
                acct += T[p]
            s_sc[0] = accs / P
            t_sc[0] = acct / P
            if bnd:
                accs = 0.0
                acct = 0.0
                for p in range(P):
                    accs += eS[p]
                    acct += eT[p]
                es_sc[0] = accs / P
                et_sc[0] = acct / P
                _round_diag(es_sc, et_sc, 1, (P + 4) * _GAMMA, B1, B2, mo)
        elif code == OP_DENSE:
            s0 = s_sc[0]
            s_sc[0] = c * s0 + b2
            t_sc[0] = c * t_sc[0] + (cv * s0 + tb)
            if bnd:
                e0 = es_sc[0]
                es_sc[0] = c * e0
                et_sc[0] = c * et_sc[0] + cv * e0
                _round_diag(es_sc, et_sc, 1, 6 * _GAMMA, B1, B2, mo)
    return s_sc[0], t_sc[0], ex, max(es_sc[0], et_sc[0])


@njit(cache=True, nogil=True, error_model="numpy")
def drive(mode, X1, X2, iop, fop, src, nfull, stop, chunk, nchunks, Q1, R1, E1, ED1, CA1, CB1,
          BD1, Q2, R2, E2, ED2, CA2, CB2, BD2, bnd, boff, plist, out_nngp, out_ntk, excess,
          errb, RMA, RMB):
    """Pairs ``chunk, chunk + nchunks, ...`` of the list (mode 0: self runs of ``X1`` to op
    ``stop``; 1: symmetric ``i < j``; 2: cross; 3: the pairs ``plist``, nothing written).
    ``excess[chunk]``: the largest excursion; ``errb[chunk]``: the largest certified bound
    (``bnd``); ``RMA[chunk]``, ``RMB[chunk]``: the rows' largest ``|rho|`` (``bnd == 2``)."""
    n1 = X1.shape[0]
    n2 = X2.shape[0]
    npairs = plist.shape[0] if mode == 3 else _pair_count(mode, n1, n2)
    selfrun = mode == 0
    S = np.zeros(nfull)
    T = np.zeros(nfull)
    S2 = np.zeros(nfull)
    T2 = np.zeros(nfull)
    U = np.zeros(nfull)
    UT = np.zeros(nfull)
    ne = nfull if bnd else 1
    eS = np.zeros(ne)
    eT = np.zeros(ne)
    eS2 = np.zeros(ne)
    eT2 = np.zeros(ne)
    wk = np.zeros((8, nfull))
    sc = np.zeros((4, 1))
    ex = 0.0
    eb = 0.0
    full = stop >= iop.shape[0]
    rec = bnd == 2
    for t in range(chunk, npairs, nchunks):
        if mode == 3:
            i, j = plist[t, 0], plist[t, 1]
        else:
            i, j = _pair_of(t, mode, n1, n2)
        if rec:
            rma = RMA[chunk, i]
            rmb = RMB[chunk, j]
        else:
            rma = RMA[0, 0]
            rmb = RMB[0, 0]
        a, b, e, eps_ = run_pair(X1[i], X2[j], iop, fop, src, stop, selfrun, bnd, boff, Q1[i],
                                 R1[i], E1[i], ED1[i], CA1[i], CB1[i], BD1[i], rma,
                                 Q2[j], R2[j], E2[j], ED2[j], CA2[j], CB2[j], BD2[j], rmb,
                                 S, T, S2, T2, U, UT, eS, eT, eS2, eT2, wk, sc)
        ex = max(ex, e)
        eb = max(eb, eps_)
        if full and mode != 3:
            _write_pair(mode, i, j, a, b, out_nngp, out_ntk)
    excess[chunk] = ex
    errb[chunk] = eb


# ----------------------------------------------------------------------------- planning
class SeriesProgram:
    """A compiled program (from :func:`infntk.conv._compile_series`): ``iop``, ``fop``, the
    tap tables ``src`` (nconv, 2, qmax, nmax), ``nfull`` (state floats), and per op the
    Python-side data the bound pass needs: ``acts[k]`` (the registry activation of op ``k``),
    ``taps[k]`` (row and column count matrices of a Conv: ``(ho, h)``, ``(wo, w)``).
    ``boff``: offsets of each op's per-row bound data (:func:`_bound_data`), ``nbd`` floats."""

    def __init__(self, iop, fop, src, nfull, acts, taps, C):
        self.iop = np.ascontiguousarray(iop, dtype=np.int64)
        self.fop = np.ascontiguousarray(fop, dtype=np.float64)
        self.src = np.ascontiguousarray(src, dtype=np.int64)
        self.nfull = int(nfull)
        self.acts = acts
        self.taps = taps
        self.C = int(C)
        self.act_ops = [k for k in range(self.iop.shape[0]) if self.iop[k, 0] in _ACTS]
        self.npos = {k: int(self.iop[k, 2] * self.iop[k, 3]) if self.iop[k, 0] != OP_ACT_S
                     else 1 for k in self.act_ops}
        off = 0
        for k in self.act_ops:
            self.iop[k, 6] = off
            off += self.npos[k]
        self.nq = max(off, 1)
        sizes = [int(self.iop[0, 2] * self.iop[0, 3])]
        for k in range(self.iop.shape[0]):
            code = int(self.iop[k, 0])
            if code in (OP_CONV_F, OP_CONV_D, OP_POOL_F):
                sizes.append(2 * int(self.iop[k, 4] * self.iop[k, 5]))
            elif code in (OP_GAP, OP_FLAT, OP_DENSE):
                sizes.append(2)
            elif code in _ACTS:
                sizes.append(5 * self.npos[k])
            else:
                sizes.append(0)
        self.boff = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.nbd = int(np.sum(sizes))

    def with_orders(self, orders):
        """``(iop, ncoef)`` with the orders ``{op: K}`` and the coefficient offsets set."""
        iop = self.iop.copy()
        off = 0
        for k in self.act_ops:
            iop[k, 7] = off
            iop[k, 8] = orders[k]
            off += self.npos[k] * (orders[k] + 1)
        return iop, max(off, 1)


def _run(mode, prog, iop, stop, A, B, side1, side2, out_nngp, out_ntk, bnd=0, plist=None):
    """Run ``drive`` over the pairs of ``mode`` on ``numba.get_num_threads()`` threads; returns
    ``(excursion, bound, RMA, RMB)`` (the largest ``|rho|`` per row of each side if ``bnd ==
    2``, else ``None``)."""
    n1, n2 = A.shape[0], B.shape[0]
    if plist is None:
        plist = np.zeros((0, 2), dtype=np.int64)
    npairs = (n1 if mode == 0 else n1 * (n1 - 1) // 2 if mode == 1 else n1 * n2 if mode == 2
              else plist.shape[0])
    nch = chunk_count(npairs, per_thread=1)
    excess = np.zeros(nch)
    errb = np.zeros(nch)
    if bnd == 2:
        RMA = np.zeros((nch, n1, prog.nq))
        RMB = np.zeros((nch, n2, prog.nq))
    else:
        RMA = RMB = np.zeros((1, 1, 1))

    def chunk(c):
        drive(mode, A, B, iop, prog.fop, prog.src, prog.nfull, stop, c, nch, *side1, *side2,
              bnd, prog.boff, plist, out_nngp, out_ntk, excess, errb, RMA, RMB)

    with engine_lock():
        run_chunks(chunk, nch)
    rm = (RMA.max(axis=0), RMB.max(axis=0)) if bnd == 2 else (None, None)
    return float(excess.max(initial=0.0)), float(errb.max(initial=0.0)), rm[0], rm[1]


class _Side:
    """Per-image statistics of a set of images: variances ``Q``, ``R = sqrt(Q)``, exact second
    moments ``E``, ``ED`` at every activation and position, coefficients ``CA``, ``CB``, the
    per-row bound data ``BD`` (:func:`_bound_data`)."""

    _NAMES = ("Q", "R", "E", "ED", "CA", "CB", "BD")

    def __init__(self, n, nq):
        self.Q = np.zeros((n, nq))
        self.R = np.zeros((n, nq))
        self.E = np.zeros((n, nq))
        self.ED = np.zeros((n, nq))
        self.CA = np.zeros((n, 1))
        self.CB = np.zeros((n, 1))
        self.BD = np.zeros((n, 1))

    def arrays(self):
        return self.Q, self.R, self.E, self.ED, self.CA, self.CB, self.BD

    def take(self, idx):
        out = _Side.__new__(_Side)
        for name in self._NAMES:
            setattr(out, name, np.ascontiguousarray(getattr(self, name)[idx]))
        return out


def _self_variances(prog, Z):
    """Stage by stage: the variances of every activation (the diagonal of each image's own
    state, which never depends on the series orders: docs/conv.md) and their second moments.
    Coefficients are zero (order 0) meanwhile: they only reach off-diagonal entries."""
    n = Z.shape[0]
    side = _Side(n, prog.nq)
    orders = {k: 0 for k in prog.act_ops}
    iop, ncoef = prog.with_orders(orders)
    side.CA = np.zeros((n, ncoef))
    side.CB = np.zeros((n, ncoef))
    dummy = np.empty((n, 1))
    for k in prog.act_ops:
        _run(0, prog, iop, k, Z, Z, side.arrays(), side.arrays(), dummy, dummy)
        sl = slice(int(prog.iop[k, 6]), int(prog.iop[k, 6]) + prog.npos[k])
        q = side.Q[:, sl]
        if not np.isfinite(q).all():
            raise OverflowError("the kernel overflows float64; reduce the depth, w_std or the "
                                "input scale.")
        E, Ed = _series_moments(prog.acts[k], q.ravel())
        side.E[:, sl] = E.reshape(q.shape)
        side.ED[:, sl] = Ed.reshape(q.shape)
    return side


def _fill_coefficients(prog, side, data, orders):
    """``CA``, ``CB`` of every image at the orders (from the per-row ``_LayerData``)."""
    iop, ncoef = prog.with_orders(orders)
    n = side.Q.shape[0]
    side.CA = np.zeros((n, ncoef))
    side.CB = np.zeros((n, ncoef))
    for k in prog.act_ops:
        K, P, co = orders[k], prog.npos[k], int(iop[k, 7])
        a = data[k].a[:, :K + 1].reshape(n, P * (K + 1))
        b = data[k].b[:, :K + 1].reshape(n, P * (K + 1))
        side.CA[:, co:co + P * (K + 1)] = a
        side.CB[:, co:co + P * (K + 1)] = b
    return iop


# ----------------------------------------------------------------------------- certified bound
def _act_bound(q, E, Ed, uK, uT, Mt, tT, tD, S1, K, r=None):
    """One Mehler activation (per row): ``(uK', uT')`` (docs/series_engine.md, steps 1-4).

    The input error ``uK`` plus the rounding of ``rho = s / (sqrt(q_x) sqrt(q_y))`` (four
    roundings: ``4 eps q`` in the same form) is ``e = uK + 4 eps q``; then ``uK' = E' e + T_K +
    R E`` and the derivative dual errs by ``ukd = delta S1 + 3 T'_K + R E'``, ``delta = e /
    q``; ``Theta kd``: ``uT' = uT (E' + ukd) + Mt ukd + gamma (Mt + uT)(E' + ukd)``, ``Mt`` the
    NTK majorant. ``R = 16 (K + 2) eps`` (Horner and the coefficients' quadrature errors), at
    least 64 eps (the exact second moments on a self pair's diagonal). A zero variance is
    exact (its entries are zero, ``rho = 0`` by convention): ``e = 0``.

    With ``r`` (per row, ``|rho| <= r`` for every entry of the row: ``|rho|^(K+1) <=
    sqrt(r_x^(K+1) r_y^(K+1))``) the tails are weighted as in the pair loop, ``r^(K+1) T_K``,
    ``min(1, r + delta)^(K+1) T'_K`` (the ``k <= K`` part of the ``phi'`` series' change is
    the ``delta S1`` term), and ``R`` is :func:`infntk._backends.series._rounding` at the
    largest ``r`` (at least ``min(16 (K + 2), 64) eps``): the order rule's estimate of the
    per-entry certificate.
    """
    R = max(16.0 * (K + 2), 64.0) * _EPS
    pos = q > 0
    e = np.where(pos, uK + 4.0 * _GAMMA * q, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(pos, e / np.where(pos, q, 1.0), 0.0)
    if r is None:
        wT, wD, fD = 1.0, 1.0, 3.0
    else:
        Rl = 16.0 * (K + 2) * _EPS
        R = max(min(Rl, _rounding(float(np.max(r, initial=0.0)), K)), min(Rl, 64.0 * _EPS))
        wT = r ** (K + 1)
        wD = np.minimum(1.0, r + delta) ** (K + 1)
        fD = 1.0
    uK2 = Ed * e + wT * tT + R * E
    ukd = delta * S1 + fD * wD * tD + R * Ed
    uT2 = uT * (Ed + ukd) + Mt * ukd + _GAMMA * (Mt + uT) * (Ed + ukd)
    return uK2, uT2


def bound_pass(prog, x_sq, side, data, orders, weights=None, record=None):
    """Per-image factors ``(uK, uT)`` of the two kernels: ``|error(x, y)| <= sqrt(u(x) u(y))``.

    Per row ``(image, position)`` the pass carries the error factors ``uK``, ``uT`` and the
    majorants ``M``, ``Mt`` (``|Sigma(x, p; y, p')| <= sqrt(M(x, p) M(y, p'))``, the same for
    the NTK). With Cauchy-Schwarz (a sum of geometric means is at most the geometric mean of
    the sums; a mean over a block of both indices is the product of the means of square
    roots):

    * input: ``uK = (C + 2) gamma |x_p|^2 / C``, ``uT = 0``;
    * Conv (patch trace ``c sum_taps + b2``; NTK ``c sum_taps Theta + cv sum_taps K + tb``):
      ``uK' = c sum_taps uK``, ``uT' = c sum_taps uT + cv sum_taps uK``, plus the rounding
      ``(2 q + 6) gamma (M' + u')`` of each;
    * activation: :func:`_act_bound` at the exact self variances;
    * AvgPool: ``u' = (mean_window sqrt u)^2`` (and ``M``), plus ``(win^4 + 2) gamma``;
    * GlobalAvgPool: ``u = (mean_p sqrt u)^2``, plus ``(2 P + 2) gamma`` (two-level sums);
      Flatten: ``u = mean_p u``, plus ``(P + 2) gamma``;
    * Dense: ``uK' = w2 uK``, ``uT' = w2 uT + cv uK``, plus ``4 gamma``.

    ``x_sq``: ``(n, H, W)`` squared pixel norms; ``data[k]``: the ``_LayerData`` of activation
    op ``k`` (rows ``(image, position)`` in C order), at ``orders[k]``. ``weights[k]``: the
    rows' largest ``|rho|`` ``(n, P)`` (tails weighted, :func:`_act_bound`), or ``None``.
    ``record``: a dict that receives the majorants ``(M, Mt)`` after every linear op ``k``
    (``record[-1]``: ``M`` of the input), for :func:`_bound_data`.
    """
    n = x_sq.shape[0]
    C = prog.C
    M = x_sq / C
    Mt = np.zeros_like(M)
    uK = (2 * C + 2) * _GAMMA * M * 1.01      # C products, C sums, one division
    uT = np.zeros_like(M)
    if record is not None:
        record[-1] = M
    scalar = False
    for k in range(prog.iop.shape[0]):
        code, qf, h, w, ho, wo = (int(v) for v in prog.iop[k, :6])
        c, b2, cv, tb = prog.fop[k]
        if code in (OP_CONV_F, OP_CONV_D):
            Rm, Cm = prog.taps[k]

            def tap(u):
                return np.einsum("ab,nbc,dc->nad", Rm, u, Cm)
            sK, sT, sM, sMt = tap(uK), tap(uT), tap(M), tap(Mt)
            uK = c * sK
            uT = c * sT + cv * sK
            M = c * sM + b2
            Mt = c * sMt + cv * sM + tb
            g = (2 * qf + 6) * _GAMMA
            uK = uK + g * (M + uK)
            uT = uT + g * (Mt + uT)
        elif code in _ACTS:
            P = prog.npos[k]
            sl = slice(int(prog.iop[k, 6]), int(prog.iop[k, 6]) + P)
            shape = uK.shape
            q, E, Ed = side.Q[:, sl], side.E[:, sl], side.ED[:, sl]
            tT, tD, S1 = (v.reshape(n, P) for v in data[k].at(orders[k]))
            uK2, uT2 = _act_bound(q, E, Ed, uK.reshape(n, P), uT.reshape(n, P),
                                  Mt.reshape(n, P), tT, tD, S1, orders[k],
                                  None if weights is None else weights[k])
            uK, uT = uK2.reshape(shape), uT2.reshape(shape)
            Mt = (Mt.reshape(n, P) * Ed).reshape(shape)
            M = E.reshape(shape)
        elif code == OP_POOL_F:
            def pool(u):
                r = np.sqrt(u[:, :ho * qf, :wo * qf]).reshape(n, ho, qf, wo, qf)
                return r.mean(axis=(2, 4)) ** 2
            g = (qf ** 4 + 2) * _GAMMA
            MU, MTU = pool(M + uK), pool(Mt + uT)
            uK, uT, M, Mt = pool(uK) + g * MU, pool(uT) + g * MTU, pool(M), pool(Mt)
        elif code == OP_GAP:
            def gap(u):
                return np.sqrt(u.reshape(n, -1)).mean(axis=1) ** 2
            g = (2 * h * w + 2) * _GAMMA
            MU, MTU = gap(M + uK), gap(Mt + uT)
            uK, uT, M, Mt = gap(uK) + g * MU, gap(uT) + g * MTU, gap(M), gap(Mt)
            scalar = True
        elif code == OP_FLAT:
            def flat(u):
                return u.reshape(n, -1).mean(axis=1)
            g = (h * w + 2) * _GAMMA
            MU, MTU = flat(M + uK), flat(Mt + uT)
            uK, uT, M, Mt = flat(uK) + g * MU, flat(uT) + g * MTU, flat(M), flat(Mt)
            scalar = True
        elif code == OP_DENSE:
            uK, uT = c * uK, c * uT + cv * uK
            M, Mt = c * M + b2, c * Mt + cv * M + tb
            uK = uK + 4 * _GAMMA * (M + uK)
            uT = uT + 4 * _GAMMA * (Mt + uT)
        # OP_TODIAG: the diagonal rows are unchanged
        if record is not None and code not in _ACTS:
            record[k] = (M, Mt)
    assert scalar
    return uK, uT


def _bound_data(prog, x_sq, side, data, orders):
    """Per image the rows' data of the pair loop's error state, ``(n, prog.nbd)`` at the
    offsets ``prog.boff``: ``sqrt(|x_p|^2 / C)`` of the input; after each linear op the square
    roots of its majorants ``M``, ``Mt`` (:func:`bound_pass`: ``|Sigma(x, p; y, p')| <=
    sqrt(M(x, p) M(y, p'))``, which bound the sums whose rounding the op adds); at each
    activation ``sqrt`` of ``E, E', T_K, T'_K, S1_K`` (at its order)."""
    n = x_sq.shape[0]
    rec = {}
    bound_pass(prog, x_sq, side, data, orders, record=rec)
    BD = np.zeros((n, max(prog.nbd, 1)))
    o = int(prog.boff[0])
    BD[:, o:o + x_sq[0].size] = np.sqrt(rec[-1].reshape(n, -1))
    for k in range(prog.iop.shape[0]):
        o = int(prog.boff[k + 1])
        code = int(prog.iop[k, 0])
        if code in _ACTS:
            P = prog.npos[k]
            sl = slice(int(prog.iop[k, 6]), int(prog.iop[k, 6]) + P)
            tT, tD, S1 = (v.reshape(n, P) for v in data[k].at(orders[k]))
            for t, v in enumerate((side.E[:, sl], side.ED[:, sl], tT, tD, S1)):
                BD[:, o + t * P:o + (t + 1) * P] = np.sqrt(v)
        elif code != OP_TODIAG:
            M, Mt = rec[k]
            P = M[0].size if M.ndim > 1 else 1
            BD[:, o:o + P] = np.sqrt(M.reshape(n, P))
            BD[:, o + P:o + 2 * P] = np.sqrt(Mt.reshape(n, P))
    return BD


def _pair_bound(uK, uT, n1, symmetric):
    s1, s2 = (slice(None), slice(None)) if symmetric else (slice(0, n1), slice(n1, None))
    return max(math.sqrt(float(np.max(uK[s1])) * float(np.max(uK[s2]))),
               math.sqrt(float(np.max(uT[s1])) * float(np.max(uT[s2]))))


def _layer_data(prog, side, cap, ops=None, data=None):
    """Per activation op the ``_LayerData`` of its rows ``(image, position)`` at order ``cap``
    (only for ``ops`` if given; the others are taken from ``data``)."""
    out = dict(data or {})
    for k in prog.act_ops if ops is None else ops:
        sl = slice(int(prog.iop[k, 6]), int(prog.iop[k, 6]) + prog.npos[k])
        out[k] = _LayerData(prog.acts[k], cap, side.Q[:, sl].ravel())
    return out


def _choose_orders(prog, x_sq, side, n1, symmetric, target, data, weights=None):
    """Per activation the order, by the largest common tail level whose propagated bound
    meets ``target`` (the rule of the composed engine's ``_choose_orders``); if no level up to
    the cap does, the level of the smallest bound. With ``weights`` (the rows' largest
    ``|rho|``) each row's tails are weighted by ``r^(K+1)`` (:func:`_act_bound`)."""
    worst = {}
    for k in prog.act_ops:
        tT, tD = data[k].tT, data[k].tD
        if weights is None:
            worst[k] = np.maximum(tT.max(axis=0), tD.max(axis=0))
            continue
        r = weights[k].reshape(-1, 1)
        pw = np.arange(1, tT.shape[1] + 1)[None, :]
        wk = np.zeros(tT.shape[1])
        for r0 in range(0, tT.shape[0], _ROW_CHUNK):     # no (rows, K) temporaries
            sl = slice(r0, r0 + _ROW_CHUNK)
            w = r[sl] ** pw
            wk = np.maximum(wk, np.maximum((tT[sl] * w).max(axis=0), (tD[sl] * w).max(axis=0)))
        worst[k] = wk
    caps = {k: data[k].Kc for k in prog.act_ops}
    best = None
    for lev in range(0, 61):
        tau = target * 10.0 ** (-lev / 2)
        orders = {k: min(caps[k], int(np.flatnonzero(np.append(wk <= tau, True))[0]))
                  for k, wk in worst.items()}
        b = _pair_bound(*bound_pass(prog, x_sq, side, data, orders, weights), n1, symmetric)
        if best is None or b < best[1]:
            # the smallest bound seen: when the target is out of reach, higher orders only add
            # to the rounding allowance 16 (K + 2) eps
            best = (orders, b)
        if b <= target or all(orders[k] >= caps[k] for k in orders):
            break
    return best[0], data, best[1]


def _sample_pairs(Z, n1, same, m=None):
    """Pairs for the correlation estimate: each image with its ``m`` partners of the other
    side (the same set if ``same``) of the largest ``|cos|`` between the flattened images
    (``(npairs, 2)``, indices into each side)."""
    m = _PARTNERS if m is None else m
    F = Z.reshape(Z.shape[0], -1)
    nrm = np.sqrt(np.einsum("ij,ij->i", F, F))
    U = F / np.where(nrm > 0, nrm, 1.0)[:, None]
    A, B = (U, U) if same else (U[:n1], U[n1:])
    out = []

    def top(P, Q, swap, skip_self):
        mm = min(m, Q.shape[0] - (1 if skip_self else 0))
        if mm <= 0:
            return
        for r0 in range(0, P.shape[0], 512):
            Cm = np.abs(P[r0:r0 + 512] @ Q.T)
            rows = np.arange(Cm.shape[0])
            if skip_self:
                Cm[rows, r0 + rows] = -1.0
            idx = np.argsort(-Cm, axis=1, kind="stable")[:, :mm]
            ii = np.repeat(r0 + rows, mm)
            jj = idx.ravel()
            out.append(np.stack([jj, ii] if swap else [ii, jj], axis=1))

    top(A, B, False, same)
    if not same:
        top(B, A, True, False)
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    pl = np.concatenate(out).astype(np.int64)
    if same:
        pl = np.sort(pl, axis=1)
    return np.unique(pl, axis=0)


class _Plan(NamedTuple):
    side: object
    iop: np.ndarray
    orders: dict
    bound: float          # the certificate of the self runs (per entry), or the per-row bound
    estimate: float       # the order rule's bound
    kd: np.ndarray
    kt: np.ndarray
    ex: float
    scale: float
    per_entry: bool


def _plan(prog, Z, n1, same, tol):
    """Self statistics, orders and the self runs' certified bound for the images ``Z`` (the
    rows of both sides: ``Z[:n1]`` and ``Z[n1:]``, or one set if ``same``).

    Per-entry certificate (``_PER_ENTRY``): the self runs at the cap order and the pairs of
    :func:`_sample_pairs` record each row's largest ``|rho|`` at every activation; the orders
    are chosen with the tails weighted by it (plus ``_R_MARGIN`` of the way to 1). Otherwise
    the orders and the bound are the per-row pass's at ``|rho| = 1``.
    """
    per_entry = _PER_ENTRY
    nz = Z.shape[0]
    nops = prog.iop.shape[0]
    x_sq = np.einsum("nhwc,nhwc->nhw", Z, Z)
    side = _self_variances(prog, Z)
    # provisional self kernels at the first cap's full order: the scale
    cap = _CAPS[0]
    data0 = _layer_data(prog, side, cap)
    full0 = {k: cap for k in prog.act_ops}
    iop = _fill_coefficients(prog, side, data0, full0)
    kd = np.empty((nz, 1))
    kt = np.empty((nz, 1))
    weights = None
    if per_entry:
        side.BD = _bound_data(prog, x_sq, side, data0, full0)
        _, _, rm, _ = _run(0, prog, iop, nops, Z, Z, side.arrays(), side.arrays(), kd, kt, 2)
        _check_finite(kd, kt)
        pl = _sample_pairs(Z, n1, same)
        if pl.shape[0]:
            if same:
                _, _, ra, rb = _run(3, prog, iop, nops, Z, Z, side.arrays(), side.arrays(),
                                    kd, kt, 2, pl)
                rm = np.maximum(rm, np.maximum(ra, rb))
            else:
                s1, s2 = side.take(slice(0, n1)), side.take(slice(n1, None))
                _, _, ra, rb = _run(3, prog, iop, nops, Z[:n1], Z[n1:], s1.arrays(),
                                    s2.arrays(), kd, kt, 2, pl)
                rm = np.maximum(rm, np.concatenate([ra, rb]))
        r = np.minimum(1.0, rm + _R_MARGIN * (1.0 - rm))
        weights = {k: r[:, int(prog.iop[k, 6]):int(prog.iop[k, 6]) + prog.npos[k]]
                   for k in prog.act_ops}
    else:
        _run(0, prog, iop, nops, Z, Z, side.arrays(), side.arrays(), kd, kt)
        _check_finite(kd, kt)
    scale = float(max(np.max(np.abs(kd)), np.max(np.abs(kt))))
    target = tol * scale
    best = _choose_orders(prog, x_sq, side, n1, same, target, data0, weights)
    if best[2] > target:
        # the layers whose order reached the first cap get the order tables up to K_MAX
        up = [k for k in prog.act_ops if best[0][k] >= _CAPS[0]]
        if up:
            got = _choose_orders(prog, x_sq, side, n1, same, target,
                                 _layer_data(prog, side, _CAPS[1], up, data0), weights)
            if got[2] < best[2]:
                best = got
    orders, data, est = best
    iop = _fill_coefficients(prog, side, data, orders)
    if per_entry:
        side.BD = _bound_data(prog, x_sq, side, data, orders)
    ex, cert, _, _ = _run(0, prog, iop, nops, Z, Z, side.arrays(), side.arrays(), kd, kt,
                          1 if per_entry else 0)
    _check_finite(kd, kt)
    return _Plan(side, iop, orders, cert if per_entry else float(est), float(est),
                 kd[:, 0].copy(), kt[:, 0].copy(), ex, scale, per_entry)


def _warn_unmet(plan, tol, bound):
    """``RuntimeWarning`` if the certified bound misses ``tol * scale``."""
    if bound <= tol * plan.scale:
        return
    if plan.estimate > tol * plan.scale:
        msg = (f"is not reachable with series orders <= {K_MAX}; the certified error bound "
               f"is {bound:.3g} (Kernels.error_bound). The Hermite series converges slowly "
               "for kinked activations (relu, elu) and at large variances (here up to "
               f"{float(plan.side.Q.max()):.3g}): rescale the inputs or w_std, or raise tol.")
    else:
        msg = (f"was not met: the orders were chosen for the largest correlations of a sample "
               f"of pairs, and some entry is more correlated; the certified error bound is "
               f"{bound:.3g} (Kernels.error_bound).")
    warnings.warn(f"convolutional network: tol={tol:g} (relative to the kernel scale "
                  f"{plan.scale:.3g}) " + msg, RuntimeWarning, stacklevel=4)


def _check_finite(a, b):
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise OverflowError("the kernel overflows float64; reduce the depth, w_std or the "
                            "input scale.")


def _check_excess(prog, ex, C):
    allowed = 64.0 * (K_MAX + 2 + C) * _EPS * (len(prog.act_ops) + 1)
    if ex > allowed:
        raise FloatingPointError(
            f"convolutional series engine: a correlation left [-1, 1] by {ex:.3g} (> rounding "
            f"level {allowed:.3g}); this is a bug, please report it.")


def series_self_kernels(prog, A, tol):
    """``(k(x, x), theta(x, x))`` of every image, each ``(n,)`` (orders as for the Gram)."""
    plan = _plan(prog, A, A.shape[0], True, tol)
    _check_excess(prog, plan.ex, A.shape[3])
    _warn_unmet(plan, tol, plan.bound)
    return plan.kd, plan.kt


def series_conv_kernels(prog, A, B, same, tol):
    """``(nngp, ntk, error_bound, orders, diag)``: the Gram matrices of the series program on
    images ``A`` (n1, H, W, C) and ``B`` (``same``: ``B is A``, the symmetric Gram), with the
    orders chosen so that ``error_bound <= tol * scale`` (``scale``: the largest diagonal
    entry of both kernels); ``diag`` is ``(k(x, x), theta(x, x))`` of ``A``'s images.
    ``error_bound``: the largest per-entry certificate of the pair loop and the self runs."""
    n1 = A.shape[0]
    Z = A if same else np.ascontiguousarray(np.concatenate([A, B]))
    plan = _plan(prog, Z, n1, same, tol)
    side, iop, kd, kt = plan.side, plan.iop, plan.kd, plan.kt
    bnd = 1 if plan.per_entry else 0
    n2 = Z.shape[0] if same else Z.shape[0] - n1
    nngp = np.empty((n1, n2))
    ntk = np.empty((n1, n2))
    nops = iop.shape[0]
    if same:
        ex, eb, _, _ = _run(1, prog, iop, nops, A, A, side.arrays(), side.arrays(), nngp, ntk,
                            bnd)
        idx = np.arange(n1)
        nngp[idx, idx] = kd
        ntk[idx, idx] = kt
    else:
        s1, s2 = side.take(slice(0, n1)), side.take(slice(n1, None))
        ex, eb, _, _ = _run(2, prog, iop, nops, A, B, s1.arrays(), s2.arrays(), nngp, ntk,
                            bnd)
    ex = max(ex, plan.ex)
    # a cross Gram's bound covers its entries only; the self runs' certificate is part of it
    # for a symmetric Gram (its diagonal)
    bound = max(eb, plan.bound) if (same or not plan.per_entry) else eb
    _check_excess(prog, ex, A.shape[3])
    _check_finite(nngp, ntk)
    _warn_unmet(plan, tol, bound)
    order_tuple = tuple(plan.orders[k] for k in prog.act_ops)
    return nngp, ntk, bound, order_tuple, (kd[:n1], kt[:n1])
