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

Certified bound (per row ``(image, position)`` factors ``u`` with ``|error| <= sqrt(u(x, p)
u(y, p'))``): see :func:`bound_pass`.
"""
from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from .._numba_config import engine_lock
from ._common import clipped_correlation
from .composed import _series_moments
from .conv import _pair_count, _pair_of, _write_pair
from .series import K_MAX, _LayerData

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


@njit(cache=True, inline="always", error_model="numpy")
def _entry(s, qa, ra, qb, rb, ex):
    """Clipped correlation of an entry (0 at a degenerate row) and the running excursion
    (:func:`infntk._backends._common.clipped_correlation` at ``m = ra rb``)."""
    return clipped_correlation(s, ra * rb, ex)


@njit(cache=True, error_model="numpy")
def _act_full(S, T, h, w, qo, co, K, selfrun, q1, r1, e1, ed1, ca1, cb1, q2, r2, e2, ed2,
              ca2, cb2, ex):
    K1 = K + 1
    for i in range(h):
        for j in range(w):
            p = i * w + j
            o1 = co + p * K1
            for ip in range(h):
                base = ((i * h + ip) * w + j) * w
                for jp in range(w):
                    pp = ip * w + jp
                    t = base + jp
                    if selfrun and pp == p:
                        S[t] = e1[qo + p]
                        T[t] = T[t] * ed1[qo + p]
                        continue
                    rho, ex = _entry(S[t], q1[qo + p], r1[qo + p], q2[qo + pp], r2[qo + pp], ex)
                    k, kd = _mehler(ca1, cb1, o1, ca2, cb2, co + pp * K1, K, rho)
                    S[t] = k
                    T[t] = T[t] * kd
    return ex


@njit(cache=True, error_model="numpy")
def _act_diag(S, T, n, qo, co, K, selfrun, q1, r1, e1, ed1, ca1, cb1, q2, r2, e2, ed2, ca2,
              cb2, ex):
    K1 = K + 1
    for p in range(n):
        if selfrun:
            S[p] = e1[qo + p]
            T[p] = T[p] * ed1[qo + p]
            continue
        rho, ex = _entry(S[p], q1[qo + p], r1[qo + p], q2[qo + p], r2[qo + p], ex)
        k, kd = _mehler(ca1, cb1, co + p * K1, ca2, cb2, co + p * K1, K, rho)
        S[p] = k
        T[p] = T[p] * kd
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
def _record(S, full, h, w, q1, r1, qo):
    """The diagonal of the current self state: the variances of the activation at ``qo``."""
    for i in range(h):
        for j in range(w):
            p = i * w + j
            v = S[((i * h + i) * w + j) * w + j] if full else S[p]
            q1[qo + p] = v
            r1[qo + p] = math.sqrt(v)


@njit(cache=True, error_model="numpy")
def run_pair(x, y, iop, fop, src, stop, selfrun, q1, r1, e1, ed1, ca1, cb1, q2, r2, e2, ed2,
             ca2, cb2, S, T, S2, T2, U, UT):
    """NNGP, NTK and the largest correlation excursion of one pair, ops ``[0, stop)``.

    ``selfrun`` (``x`` is ``y``): the diagonal entries of each activation take the exact second
    moments ``e1``, ``ed1``; if ``stop`` is an activation, its variances are recorded into
    ``q1``, ``r1`` (the diagonal of the state it receives) and the run ends there.
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
        if k == stop:                       # record the variances of this activation
            if code == OP_ACT_S:
                q1[qo] = s_sc
                r1[qo] = math.sqrt(s_sc)
            else:
                _record(S, code == OP_ACT_F, h, w, q1, r1, qo)
            break
        if code == OP_CONV_F:
            _conv_full(S, T, S2, T2, U, UT, src[iop[k, 9], 0], src[iop[k, 9], 1], qf, h, w,
                       ho, wo, c, b2, cv, tb)
            S, S2 = S2, S
            T, T2 = T2, T
        elif code == OP_CONV_D:
            _conv_diag(S, T, S2, T2, src[iop[k, 9], 0], src[iop[k, 9], 1], qf, w, ho, wo, c,
                       b2, cv, tb)
            S, S2 = S2, S
            T, T2 = T2, T
        elif code == OP_ACT_F:
            ex = _act_full(S, T, h, w, qo, co, K, selfrun, q1, r1, e1, ed1, ca1, cb1, q2, r2,
                           e2, ed2, ca2, cb2, ex)
        elif code == OP_ACT_D:
            ex = _act_diag(S, T, h * w, qo, co, K, selfrun, q1, r1, e1, ed1, ca1, cb1, q2, r2,
                           e2, ed2, ca2, cb2, ex)
        elif code == OP_ACT_S:
            if selfrun:
                s_sc = e1[qo]
                t_sc = t_sc * ed1[qo]
            else:
                rho, ex = _entry(s_sc, q1[qo], r1[qo], q2[qo], r2[qo], ex)
                kk, kd = _mehler(ca1, cb1, co, ca2, cb2, co, K, rho)
                s_sc = kk
                t_sc = t_sc * kd
        elif code == OP_POOL_F:
            _pool(S, T, S2, T2, h, w, ho, wo, qf)
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
        elif code == OP_GAP:                # two-level sums: rounding (2P + 1) eps, not P^2
            P = h * w
            accs = 0.0
            acct = 0.0
            for p in range(P):
                ps = 0.0
                pt = 0.0
                i = p // w
                j = p - i * w
                for ip in range(h):
                    base = ((i * h + ip) * w + j) * w
                    for jp in range(w):
                        ps += S[base + jp]
                        pt += T[base + jp]
                accs += ps
                acct += pt
            s_sc = accs / (P * P)
            t_sc = acct / (P * P)
        elif code == OP_FLAT:
            P = h * w
            accs = 0.0
            acct = 0.0
            for p in range(P):
                accs += S[p]
                acct += T[p]
            s_sc = accs / P
            t_sc = acct / P
        elif code == OP_DENSE:
            s_new = c * s_sc + b2
            t_sc = c * t_sc + (cv * s_sc + tb)
            s_sc = s_new
    return s_sc, t_sc, ex


@njit(cache=True, nogil=True, error_model="numpy")
def drive(mode, X1, X2, iop, fop, src, nfull, stop, chunk, nchunks, Q1, R1, E1, ED1, CA1, CB1,
          Q2, R2, E2, ED2, CA2, CB2, out_nngp, out_ntk, excess):
    """Pairs ``chunk, chunk + nchunks, ...`` of the list (mode 0: self runs of ``X1`` to op
    ``stop``; 1: symmetric ``i < j``; 2: cross). ``excess[chunk]``: the largest excursion."""
    n1 = X1.shape[0]
    n2 = X2.shape[0]
    npairs = _pair_count(mode, n1, n2)
    selfrun = mode == 0
    S = np.zeros(nfull)
    T = np.zeros(nfull)
    S2 = np.zeros(nfull)
    T2 = np.zeros(nfull)
    U = np.zeros(nfull)
    UT = np.zeros(nfull)
    ex = 0.0
    full = stop >= iop.shape[0]
    for t in range(chunk, npairs, nchunks):
        i, j = _pair_of(t, mode, n1, n2)
        a, b, e = run_pair(X1[i], X2[j], iop, fop, src, stop, selfrun, Q1[i], R1[i], E1[i],
                           ED1[i], CA1[i], CB1[i], Q2[j], R2[j], E2[j], ED2[j], CA2[j], CB2[j],
                           S, T, S2, T2, U, UT)
        ex = max(ex, e)
        if full:
            _write_pair(mode, i, j, a, b, out_nngp, out_ntk)
    excess[chunk] = ex


# ----------------------------------------------------------------------------- planning
class SeriesProgram:
    """A compiled program (from :func:`infntk.conv._compile_series`): ``iop``, ``fop``, the
    tap tables ``src`` (nconv, 2, qmax, nmax), ``nfull`` (state floats), and per op the
    Python-side data the bound pass needs: ``acts[k]`` (the registry activation of op ``k``),
    ``taps[k]`` (row and column count matrices of a Conv: ``(ho, h)``, ``(wo, w)``)."""

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

    def with_orders(self, orders):
        """``(iop, ncoef)`` with the orders ``{op: K}`` and the coefficient offsets set."""
        iop = self.iop.copy()
        off = 0
        for k in self.act_ops:
            iop[k, 7] = off
            iop[k, 8] = orders[k]
            off += self.npos[k] * (orders[k] + 1)
        return iop, max(off, 1)


def _run(mode, prog, iop, stop, A, B, side1, side2, out_nngp, out_ntk):
    n1, n2 = A.shape[0], B.shape[0]
    npairs = n1 if mode == 0 else n1 * (n1 - 1) // 2 if mode == 1 else n1 * n2
    nch = max(1, min(npairs, numba.get_num_threads()))
    excess = np.zeros(nch)

    def chunk(c):
        drive(mode, A, B, iop, prog.fop, prog.src, prog.nfull, stop, c, nch, *side1, *side2,
              out_nngp, out_ntk, excess)

    with engine_lock():
        if nch == 1:
            chunk(0)
        else:
            with ThreadPoolExecutor(nch) as ex:
                list(ex.map(chunk, range(nch)))
    return float(excess.max(initial=0.0))


class _Side:
    """Per-image statistics of a set of images: variances ``Q``, ``R = sqrt(Q)``, exact second
    moments ``E``, ``ED`` at every activation and position, coefficients ``CA``, ``CB``."""

    def __init__(self, n, nq):
        self.Q = np.zeros((n, nq))
        self.R = np.zeros((n, nq))
        self.E = np.zeros((n, nq))
        self.ED = np.zeros((n, nq))
        self.CA = np.zeros((n, 1))
        self.CB = np.zeros((n, 1))

    def arrays(self):
        return self.Q, self.R, self.E, self.ED, self.CA, self.CB

    def take(self, idx):
        out = _Side.__new__(_Side)
        for name in ("Q", "R", "E", "ED", "CA", "CB"):
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
def _act_bound(q, E, Ed, uK, uT, Mt, tT, tD, S1, K):
    """One Mehler activation (per row): ``(uK', uT')`` (docs/series_engine.md, steps 1-4).

    The input error ``uK`` plus the rounding of ``rho = s / (sqrt(q_x) sqrt(q_y))`` (four
    roundings: ``4 eps q`` in the same form) is ``e = uK + 4 eps q``; then ``uK' = E' e + T_K +
    R E`` and the derivative dual errs by ``ukd = delta S1 + 3 T'_K + R E'``, ``delta = e /
    q``; ``Theta kd``: ``uT' = uT (E' + ukd) + Mt ukd + gamma (Mt + uT)(E' + ukd)``, ``Mt`` the
    NTK majorant. ``R = 16 (K + 2) eps`` (Horner and the coefficients' quadrature errors), at
    least 64 eps (the exact second moments on a self pair's diagonal). A zero variance is
    exact (its entries are zero, ``rho = 0`` by convention): ``e = 0``.
    """
    R = max(16.0 * (K + 2), 64.0) * _EPS
    pos = q > 0
    e = np.where(pos, uK + 4.0 * _GAMMA * q, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(pos, e / np.where(pos, q, 1.0), 0.0)
    uK2 = Ed * e + tT + R * E
    ukd = delta * S1 + 3.0 * tD + R * Ed
    uT2 = uT * (Ed + ukd) + Mt * ukd + _GAMMA * (Mt + uT) * (Ed + ukd)
    return uK2, uT2


def bound_pass(prog, x_sq, side, data, orders):
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
    op ``k`` (rows ``(image, position)`` in C order), at ``orders[k]``.
    """
    n = x_sq.shape[0]
    C = prog.C
    M = x_sq / C
    Mt = np.zeros_like(M)
    uK = (2 * C + 2) * _GAMMA * M * 1.01      # C products, C sums, one division
    uT = np.zeros_like(M)
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
                                  Mt.reshape(n, P), tT, tD, S1, orders[k])
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
    assert scalar
    return uK, uT


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


def _choose_orders(prog, x_sq, side, n1, symmetric, target, data):
    """Per activation the order, by the largest common tail level whose propagated bound
    meets ``target`` (the rule of the composed engine's ``_choose_orders``); if no level up to
    the cap does, the level of the smallest bound."""
    worst = {k: np.max(np.maximum(data[k].tT, data[k].tD), axis=0) for k in prog.act_ops}
    caps = {k: data[k].Kc for k in prog.act_ops}
    best = None
    for lev in range(0, 61):
        tau = target * 10.0 ** (-lev / 2)
        orders = {k: min(caps[k], int(np.flatnonzero(np.append(wk <= tau, True))[0]))
                  for k, wk in worst.items()}
        b = _pair_bound(*bound_pass(prog, x_sq, side, data, orders), n1, symmetric)
        if best is None or b < best[1]:
            # the smallest bound seen: when the target is out of reach, higher orders only add
            # to the rounding allowance 16 (K + 2) eps
            best = (orders, b)
        if b <= target or all(orders[k] >= caps[k] for k in orders):
            break
    return best[0], data, best[1]


def _plan(prog, Z, n1, same, tol):
    """Self statistics, orders and certified bound for the images ``Z`` (the rows of both
    sides: ``Z[:n1]`` and ``Z[n1:]``, or one set if ``same``); returns ``(side, iop, orders,
    bound, k_self, theta_self, excursion)``."""
    nz = Z.shape[0]
    x_sq = np.einsum("nhwc,nhwc->nhw", Z, Z)
    side = _self_variances(prog, Z)
    # provisional self kernels at the first cap's full order: the scale
    cap = _CAPS[0]
    data0 = _layer_data(prog, side, cap)
    iop = _fill_coefficients(prog, side, data0, {k: cap for k in prog.act_ops})
    kd = np.empty((nz, 1))
    kt = np.empty((nz, 1))
    _run(0, prog, iop, iop.shape[0], Z, Z, side.arrays(), side.arrays(), kd, kt)
    _check_finite(kd, kt)
    scale = float(max(np.max(np.abs(kd)), np.max(np.abs(kt))))
    target = tol * scale
    best = _choose_orders(prog, x_sq, side, n1, same, target, data0)
    if best[2] > target:
        # the layers whose order reached the first cap get the order tables up to K_MAX
        up = [k for k in prog.act_ops if best[0][k] >= _CAPS[0]]
        if up:
            got = _choose_orders(prog, x_sq, side, n1, same, target,
                                 _layer_data(prog, side, _CAPS[1], up, data0))
            if got[2] < best[2]:
                best = got
    orders, data, bound = best
    if bound > target:
        warnings.warn(
            f"convolutional network: tol={tol:g} (relative to the kernel scale {scale:.3g}) is "
            f"not reachable with series orders <= {K_MAX}; the certified error bound is "
            f"{bound:.3g} (Kernels.error_bound). The Hermite series converges slowly for "
            "kinked activations (relu, elu) and at large variances (here up to "
            f"{float(side.Q.max()):.3g}): rescale the inputs or w_std, or raise tol.",
            RuntimeWarning, stacklevel=4)
    iop = _fill_coefficients(prog, side, data, orders)
    ex = _run(0, prog, iop, iop.shape[0], Z, Z, side.arrays(), side.arrays(), kd, kt)
    _check_finite(kd, kt)
    return side, iop, orders, float(bound), kd[:, 0].copy(), kt[:, 0].copy(), ex


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
    _, _, _, _, kd, kt, ex = _plan(prog, A, A.shape[0], True, tol)
    _check_excess(prog, ex, A.shape[3])
    return kd, kt


def series_conv_kernels(prog, A, B, same, tol):
    """``(nngp, ntk, error_bound, orders, diag)``: the Gram matrices of the series program on
    images ``A`` (n1, H, W, C) and ``B`` (``same``: ``B is A``, the symmetric Gram), with the
    orders chosen so that ``error_bound <= tol * scale`` (``scale``: the largest diagonal
    entry of both kernels); ``diag`` is ``(k(x, x), theta(x, x))`` of ``A``'s images."""
    n1 = A.shape[0]
    Z = A if same else np.ascontiguousarray(np.concatenate([A, B]))
    side, iop, orders, bound, kd, kt, ex = _plan(prog, Z, n1, same, tol)
    n2 = Z.shape[0] if same else Z.shape[0] - n1
    nngp = np.empty((n1, n2))
    ntk = np.empty((n1, n2))
    if same:
        ex = max(ex, _run(1, prog, iop, iop.shape[0], A, A, side.arrays(), side.arrays(), nngp,
                          ntk))
        idx = np.arange(n1)
        nngp[idx, idx] = kd
        ntk[idx, idx] = kt
    else:
        s1, s2 = side.take(slice(0, n1)), side.take(slice(n1, None))
        ex = max(ex, _run(2, prog, iop, iop.shape[0], A, B, s1.arrays(), s2.arrays(), nngp,
                          ntk))
    _check_excess(prog, ex, A.shape[3])
    _check_finite(nngp, ntk)
    order_tuple = tuple(orders[k] for k in prog.act_ops)
    return nngp, ntk, bound, order_tuple, (kd[:n1], kt[:n1])
