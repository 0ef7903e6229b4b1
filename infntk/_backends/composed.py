"""The composed-network engine: any sequence of Dense, activation, residual and LayerNorm layers.

A network is compiled (by :mod:`infntk.network`) into a flat list of operations on the kernel
state of the current hidden representation; this engine applies them, one compiled pass per
operation over a block of pairs. Per pair the state is

* ``K``: the covariance of the representation, ``TH``: its NTK, ``KD``: a pending factor
  ``E[phi'(u) phi'(v)]`` of the last activation, applied to ``TH`` by the next operation (this
  keeps the float operations of a ``Dense``-activation-``Dense`` chain exactly those of the
  fully-connected engine, so homogeneous networks agree bitwise);
* ``A = sqrt(q1 q2) - K`` and ``B = sqrt(q1 q2) + K`` (``q`` the per-row variances), the gaps
  that vanish for identical and antipodal representations, never formed by subtraction.

Operations (see docs/composed.md for the derivations)::

    INPUT_DENSE  first layer, from the rows (as the fully-connected engine)
    DENSE        K <- w2 K + b2,  TH <- cK K + w2 KD TH + cb,  A, B <- bias gap + w2 (A, B)
    ACT          K, KD, A, B <- closed-form dual at (q1, q2, A, B)
    NORM         K, TH, A, B <- (K, KD TH, A, B) / sqrt(q1 q2)              (LayerNorm)
    PUSH / POP   residual: K <- K_skip + a2 K_block, TH likewise,
                 A <- gap + A_skip + a2 A_block with the Cauchy-Schwarz gap
                 a2 (sqrt(qs1 qb2) - sqrt(qb1 qs2))^2 / (sqrt(Q1 Q2) + sqrt(qs1 qs2) + a2 sqrt(qb1 qb2))

Only closed-form activations run here; networks whose activations need the Hermite series
are refused by :mod:`infntk.network` unless they have the homogeneous fully-connected shape
(then the series engine runs them).
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from numba import njit

from .. import hermite
from .._numba_config import chunk_count, run_chunks
from .._duals import (arccos_pair, diag_dual, erf_plain, gaussian_plain, gelu_plain,
                      kinked_state, row_may_need_stable, trig_plain)
from ..activations import (FAMILY_ABRELU, FAMILY_ABSTEP, FAMILY_ARCCOS, FAMILY_COS,
                           FAMILY_ERF, FAMILY_GAUSSIAN, FAMILY_GELU, FAMILY_SIN)
from ._common import (check_rows_finite, clipped_correlation, max_or_nan, stable_pairs,
                      stable_pairs_all)
from .closed import (_first_layer_gram_pre, _first_layer_rows, _geomean, _needs_rows,
                     _sqnorm_diff, first_layer_root)
from .series import K_MAX, _deriv_at_zero, _LayerData

__all__ = ["ComposedEngine", "Op", "INPUT_DENSE", "DENSE", "ACT", "NORM", "PUSH", "POP",
           "SERIES"]

INPUT_DENSE, DENSE, ACT, NORM, PUSH, POP, SERIES = range(7)


class Op(NamedTuple):
    """One operation of a compiled network (fields unused by a kind are 0)."""

    kind: int
    w2: float = 0.0
    b2: float = 0.0
    cK: float = 0.0
    cb: float = 0.0
    family: int = 0
    p0: float = 0.0
    p1: float = 0.0
    a2: float = 0.0
    act: object = None     # SERIES: the registry activation (never passed to compiled code)


# ----------------------------------------------------------------------------- per-row pass
@njit(cache=True, error_model="numpy")
def _act_rows(family, p0, p1, q):
    n = q.shape[0]
    k = np.empty(n)
    kd = np.empty(n)
    for i in range(n):
        k[i], kd[i] = diag_dual(family, p0, p1, q[i])
    return k, kd


def _series_moments(act, q):
    """Exact ``E[phi^2]`` and ``E[phi'^2]`` at the rows' variances (degenerate rows: the
    one-sided derivatives' mean squared, docs/conventions.md)."""
    uq, inv = np.unique(q, return_inverse=True)
    E = hermite.second_moment(act, uq)[inv]
    Ed = hermite.second_moment(act, uq, derivative=True)[inv]
    zero = q == 0.0
    if zero.any():
        b00 = _deriv_at_zero(act)
        Ed = np.where(zero, b00 * b00, Ed)
    return E, Ed


class _RowState:
    """Per-row variance ``q``, NTK diagonal ``th`` and pending factor ``kd``, op by op."""

    def __init__(self, q, th, kd):
        self.q, self.th, self.kd = q, th, kd


def _row_pass(ops, X, d):
    """Per-row arrays every operation needs, and the final diagonal ``(q, th)``."""
    nsq = np.einsum("ij,ij->i", X, X)
    steps = []
    back = []          # per op, what the backward gain pass needs
    st = None
    stack = []
    for op in ops:
        back.append(st.q if (st is not None and op.kind == NORM) else None)
        if op.kind == INPUT_DENSE:
            k0 = nsq / d
            st = _RowState(op.w2 * k0 + op.b2, op.cK * k0 + op.cb, np.ones_like(k0))
            steps.append(())
        elif op.kind == DENSE:
            s_in = np.sqrt(st.q)
            q = op.w2 * st.q + op.b2
            th = op.cK * st.q + op.w2 * st.kd * st.th + op.cb
            st = _RowState(q, th, np.ones_like(q))
            steps.append((s_in, np.sqrt(q)))
        elif op.kind == ACT:
            k11, kd11 = _act_rows(op.family, op.p0, op.p1, st.q)
            steps.append((st.q, np.sqrt(st.q), np.sqrt(k11)))
            back[-1] = (k11, kd11)
            st = _RowState(k11, st.th, st.kd * kd11)
        elif op.kind == SERIES:
            E, Ed = _series_moments(op.act, st.q)
            steps.append((st.q, np.sqrt(st.q), E, Ed))
            back[-1] = Ed
            st = _RowState(E, st.th, st.kd * Ed)
        elif op.kind == NORM:
            pos = st.q > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                th = np.where(pos, st.kd * st.th / np.where(pos, st.q, 1.0), 0.0)
            steps.append((np.sqrt(st.q),))
            st = _RowState(pos.astype(np.float64), th, np.ones_like(th))
        elif op.kind == PUSH:
            stack.append(st)
            steps.append(())
        else:  # POP
            skip = stack.pop()
            q = skip.q + op.a2 * st.q
            th = skip.kd * skip.th + op.a2 * (st.kd * st.th)
            steps.append((skip.q, st.q, np.sqrt(q)))
            st = _RowState(q, th, np.ones_like(q))
        check_rows_finite(st.q, st.th)
    gains = _gains(ops, back, st.q)
    steps = [step + (gains[i],) if op.kind == ACT else step
             for i, (op, step) in enumerate(zip(ops, steps))]
    return nsq, steps, st.q, st.kd * st.th


def _kinked(op):
    """Whether a closed-form activation has a kink (or a jump) at 0: relu-like with unequal
    slopes, step-like with unequal levels, and the arc-cosine family."""
    if op.family == FAMILY_ARCCOS:
        return True
    return op.family in (FAMILY_ABRELU, FAMILY_ABSTEP) and op.p0 != op.p1


def _gains(ops, back, q_out):
    """Per ACT op, the per-row error gain of its gaps (as the FC engine's ``row_statistics``):
    an absolute error ``e`` of ``kA``/``kB`` there moves the output by at most
    ``e sqrt(g1 g2)`` relative to ``sqrt(q_out1 q_out2)``, to first order. Backwards from the
    output: Dense multiplies by ``w^2``, an activation by ``E[phi'^2]``, LayerNorm by ``1/q``,
    a residual block ``skip + a2 inner`` adds the skip's gain to ``a2`` times the inner one's
    (the geometric mean of two rows' sums bounds the pair's, by Cauchy-Schwarz), and a kinked
    activation makes it infinite (the stable route for every small gap before it)."""
    with np.errstate(divide="ignore", invalid="ignore"):    # inf * 0 = NaN counts as large
        return _gains_backward(ops, back, q_out)


def _gains_backward(ops, back, q_out):
    G = np.where(q_out > 0.0, 1.0 / np.where(q_out > 0.0, q_out, 1.0), np.inf)
    gains = {}
    stack = []
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        if op.kind in (INPUT_DENSE, DENSE):
            G = G * op.w2
        elif op.kind == ACT:
            k11, kd11 = back[i]
            gains[i] = G * k11
            G = G * kd11
            if _kinked(op):
                # a kink maps an absolute error e of a small gap to ~sqrt(e): only gaps that
                # are accurate relative to themselves may reach it
                G = np.full_like(G, np.inf)
        elif op.kind == SERIES:
            G = G * back[i]
        elif op.kind == NORM:
            G = G * np.where(back[i] > 0.0, 1.0 / np.where(back[i] > 0.0, back[i], 1.0), np.inf)
        elif op.kind == POP:
            stack.append(G)
            G = G * op.a2
        else:  # PUSH: the start of the block, skip path and inner path meet
            G = G + stack.pop()
    return gains


# ----------------------------------------------------------------------------- pair passes
@njit(cache=True, nogil=True, error_model="numpy")
def _input_dense(X1, X2, G, nsq1, nsq2, row0, symmetric, op, S, c, nch):
    """First Dense layer for the rows of one block; ``S`` = (A, B, K, TH, KD, D).

    ``D = q1 - q2`` is carried for the pairs whose angle comes from the rows (nearly parallel,
    as in the FC engine), NaN (not carried: ``q1 - q2`` of the rows is used) for the others."""
    A, B, K, TH, KD, D = S
    d = X1.shape[1]
    w2, b2, cK, cb = op.w2, op.b2, op.cK, op.cb
    n2 = np.sqrt(nsq2)                    # the per-row roots of the FC engine's first layer
    m2 = np.empty(nsq2.shape[0])
    for j in range(nsq2.shape[0]):
        m2[j] = first_layer_root(nsq2[j], w2, b2, d)
    for ib in range(c, G.shape[0], nch):
        i = row0 + ib
        jend = i + 1 if symmetric else X2.shape[0]
        nx2 = nsq1[i]
        nx = math.sqrt(nx2)
        mx = first_layer_root(nx2, w2, b2, d)
        for j in range(jend):
            A[ib, j], B[ib, j] = _first_layer_gram_pre(G[ib, j], nx, n2[j], mx, m2[j], w2, b2, d)
            K[ib, j] = G[ib, j] / d
            TH[ib, j] = cK * K[ib, j] + cb
            KD[ib, j] = 1.0
        for j in range(jend):
            same = symmetric and j == i
            D[ib, j] = math.nan
            if same or _needs_rows(G[ib, j], nx2, nsq2[j]):
                A[ib, j], B[ib, j] = _first_layer_rows(X1[i], X2[j], G[ib, j], nx2, nsq2[j],
                                                       w2, b2, d, same)
                D[ib, j] = 0.0 if same else w2 * (_sqnorm_diff(X1[i], X2[j]) / d)
        for j in range(jend):
            K[ib, j] = w2 * K[ib, j] + b2


@njit(cache=True, nogil=True, error_model="numpy")
def _dense(row0, symmetric, op, s1, rn1, s2, rn2, S, c, nch):
    A, B, K, TH, KD, D = S
    w2, b2, cK, cb = op.w2, op.b2, op.cK, op.cb
    for ib in range(c, K.shape[0], nch):
        i = row0 + ib
        jend = i + 1 if symmetric else K.shape[1]
        for j in range(jend):
            TH[ib, j] = cK * K[ib, j] + w2 * KD[ib, j] * TH[ib, j] + cb
            KD[ib, j] = 1.0
            gap = 0.0
            if b2 > 0.0:
                ds = s1[i] - s2[j]
                gap = w2 * b2 * ds * ds / (rn1[i] * rn2[j] + w2 * s1[i] * s2[j] + b2)
            A[ib, j] = gap + w2 * A[ib, j]
            B[ib, j] = gap + w2 * B[ib, j] + 2.0 * b2
            K[ib, j] = w2 * K[ib, j] + b2
            D[ib, j] = w2 * D[ib, j]


# one kernel per family group (kinked / arc-cosine / smooth), so that a network compiles only
# the duals it uses: Numba does not prune an unused branch
@njit(cache=True, nogil=True, error_model="numpy")
def _act_kinked(row0, symmetric, op, q1, r1, sk1, g1, q2, r2, sk2, g2, S, c, nch):
    """One ReLU-family or step-family activation for the pairs of a block."""
    A, B, K, TH, KD, D = S
    p0, p1 = op.p0, op.p1
    step = op.family == FAMILY_ABSTEP
    for ib in range(c, K.shape[0], nch):
        i = row0 + ib
        jend = i + 1 if symmetric else K.shape[1]
        s1 = sk1[i]
        Ai, Bi, Ki, KDi, Di = A[ib], B[ib], K[ib], KD[ib], D[ib]
        for j in range(jend):                   # one inlined body for both
            k, kd, kA, kB = kinked_state(step, p0, p1, Ai[j], Bi[j], s1 * sk2[j])
            Ki[j] = k
            KDi[j] = KDi[j] * kd
            Ai[j] = kA
            Bi[j] = kB
            Di[j] = math.nan


@njit(cache=True, nogil=True, error_model="numpy")
def _act_arccos(row0, symmetric, op, q1, r1, sk1, g1, q2, r2, sk2, g2, S, c, nch):
    """One arc-cosine activation (degree ``op.p0``) for the pairs of a block."""
    A, B, K, TH, KD, D = S
    n = int(op.p0)
    for ib in range(c, K.shape[0], nch):
        i = row0 + ib
        jend = i + 1 if symmetric else K.shape[1]
        qa, ra = q1[i], r1[i]
        Ai, Bi, Ki, KDi, Di = A[ib], B[ib], K[ib], KD[ib], D[ib]
        for j in range(jend):
            k, kd, kA, kB = arccos_pair(n, _geomean(qa, q2[j], ra, r2[j]), Ai[j], Bi[j])
            Ki[j] = k
            KDi[j] = KDi[j] * kd
            Ai[j] = kA
            Bi[j] = kB
            Di[j] = math.nan


@njit(cache=True, nogil=True, error_model="numpy")
def _act_smooth(row0, symmetric, op, q1, r1, sk1, g1, q2, r2, sk2, g2, S, c, nch):
    """One smooth closed-form activation for the pairs of a block (:func:`_act_row` per row)."""
    A, B, K, TH, KD, D = S
    q2max = max_or_nan(q2)
    g2max = max_or_nan(g2)
    for ib in range(c, K.shape[0], nch):
        i = row0 + ib
        jend = i + 1 if symmetric else K.shape[1]
        _act_row(op.family, jend, q1[i], r1[i], sk1[i], g1[i], q2, r2, sk2, g2,
                 q2max, g2max, A[ib], B[ib], K[ib], KD[ib], D[ib])


def act_kernel(family):
    """The compiled activation kernel of ``family`` (a family code of infntk.activations)."""
    if family in (FAMILY_ABRELU, FAMILY_ABSTEP):
        return _act_kinked
    if family == FAMILY_ARCCOS:
        return _act_arccos
    return _act_smooth


@njit(cache=True, error_model="numpy")
def _act_row(family, jend, qa, ra, s1, ga, q2, r2, sk2, g2, q2max, g2max, A, B, K, KD, D):
    """One row of :func:`_act_smooth`. The plain route (vectorized) except for the pairs that
    need the stable one (carried ``D``, or :func:`infntk._duals.smooth_route_stable`), exactly
    as the FC engine does, so that a homogeneous network gives the FC engine's floats.
    Inlined into :func:`_act_smooth`, its one call site (compiled once, not twice)."""
    fix_j = np.empty(jend, dtype=np.int64)
    fix_v = np.empty((jend, 6))
    if row_may_need_stable(qa, q2max, ga, g2max):
        flag = np.empty(jend, dtype=np.uint8)
        nfix = stable_pairs_all(family, qa, ra, s1, ga, q2, r2, sk2, g2, A, B, D, jend, flag,
                                fix_j, fix_v)
    else:                                        # only the pairs that carry D
        cand = np.empty(jend, dtype=np.int64)
        ncand = np.int64(0)     # typed: a literal 0 would compile a second stable_pairs
        for j in range(jend):
            if D[j] == D[j]:
                cand[ncand] = j
                ncand += 1
        nfix = stable_pairs(family, qa, ra, s1, ga, q2, r2, sk2, g2, A, B, D, cand, ncand,
                            fix_j, fix_v)
    for c in range(nfix):
        j = fix_j[c]
        fix_v[c, 5] = KD[j]
        if fix_v[c, 4] == fix_v[c, 4]:            # carried: D' = k11 - k22
            D[j] = fix_v[c, 4]
    if family == FAMILY_ERF:
        for j in range(jend):
            k, kd = erf_plain(qa, q2[j], A[j], B[j])
            K[j] = k
            KD[j] = KD[j] * kd
            A[j], B[j] = _plain_gaps(k, s1 * sk2[j])
    elif family == FAMILY_GELU:
        for j in range(jend):
            k, kd = gelu_plain(qa, q2[j], A[j], B[j])
            K[j] = k
            KD[j] = KD[j] * kd
            A[j], B[j] = _plain_gaps(k, s1 * sk2[j])
    elif family == FAMILY_GAUSSIAN:
        for j in range(jend):
            k, kd = gaussian_plain(qa, q2[j], A[j], B[j])
            K[j] = k
            KD[j] = KD[j] * kd
            A[j], B[j] = _plain_gaps(k, s1 * sk2[j])
    else:
        is_sin = family == FAMILY_SIN
        for j in range(jend):
            k, kd = trig_plain(is_sin, ra, r2[j], A[j], B[j])
            K[j] = k
            KD[j] = KD[j] * kd
            A[j], B[j] = _plain_gaps(k, s1 * sk2[j])
    for c in range(nfix):
        j = fix_j[c]
        K[j] = fix_v[c, 0]
        KD[j] = fix_v[c, 5] * fix_v[c, 1]
        A[j] = fix_v[c, 2]
        B[j] = fix_v[c, 3]


@njit(cache=True, inline="always", error_model="numpy")
def _plain_gaps(k, sk):
    """The plain route's gaps ``(sk - k, sk + k)``, clipped at 0 (scalars only: an array
    passed to an inlined function puts reference-count calls in the caller's loop, which
    can stop it vectorizing; see :func:`infntk._backends.closed._advance`)."""
    return max(sk - k, 0.0), max(sk + k, 0.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _norm(row0, symmetric, r1, r2, S, c, nch):
    A, B, K, TH, KD, D = S
    for ib in range(c, K.shape[0], nch):
        i = row0 + ib
        jend = i + 1 if symmetric else K.shape[1]
        for j in range(jend):
            m = r1[i] * r2[j]
            th = KD[ib, j] * TH[ib, j]
            KD[ib, j] = 1.0
            if m > 0.0:
                K[ib, j] = K[ib, j] / m
                TH[ib, j] = th / m
                A[ib, j] = A[ib, j] / m
                B[ib, j] = B[ib, j] / m
                D[ib, j] = 0.0 * D[ib, j]  # variance 1 for both rows: 0 where carried
            else:                      # a zero representation stays zero (docs/composed.md)
                K[ib, j] = 0.0
                TH[ib, j] = 0.0
                A[ib, j] = 0.0
                B[ib, j] = 0.0
                D[ib, j] = math.nan


@njit(cache=True, nogil=True, error_model="numpy")
def _pop(row0, symmetric, op, qs1, qb1, rq1, qs2, qb2, rq2, saved, S, c, nch):
    A, B, K, TH, KD, D = S
    As, Bs, Ks, THs, KDs, Ds = saved
    a2 = op.a2
    for ib in range(c, K.shape[0], nch):
        i = row0 + ib
        jend = i + 1 if symmetric else K.shape[1]
        for j in range(jend):
            u = math.sqrt(qs1[i] * qb2[j])
            v = math.sqrt(qb1[i] * qs2[j])
            den = rq1[i] * rq2[j] + math.sqrt(qs1[i] * qs2[j]) + a2 * math.sqrt(qb1[i] * qb2[j])
            gap = a2 * (u - v) * (u - v) / den if den > 0.0 else 0.0
            A[ib, j] = gap + As[ib, j] + a2 * A[ib, j]
            B[ib, j] = gap + Bs[ib, j] + a2 * B[ib, j]
            K[ib, j] = Ks[ib, j] + a2 * K[ib, j]
            TH[ib, j] = KDs[ib, j] * THs[ib, j] + a2 * (KD[ib, j] * TH[ib, j])
            KD[ib, j] = 1.0
            D[ib, j] = Ds[ib, j] + a2 * D[ib, j]


@njit(cache=True, nogil=True, error_model="numpy")
def _series(row0, symmetric, order, r1, e1, ed1, a1, b1, r2, e2, ed2, a2T, b2T, S, excess, c,
            nch):
    """Mehler series of one activation for the pairs of a block (coefficients zero-padded)."""
    A, B, K, TH, KD, D = S
    for ib in range(c, K.shape[0], nch):
        i = row0 + ib
        jend = i + 1 if symmetric else K.shape[1]
        ex = 0.0
        for j in range(jend):
            m = r1[i] * r2[j]
            rho, ex = clipped_correlation(K[ib, j], m, ex)
            acc = a1[i, order] * a2T[order, j]
            accd = b1[i, order] * b2T[order, j]
            for k in range(order - 1, -1, -1):
                acc = acc * rho + a1[i, k] * a2T[k, j]
                accd = accd * rho + b1[i, k] * b2T[k, j]
            if symmetric and j == i:
                acc = e1[i]
                accd = ed1[i]
            sk = _geomean(e1[i], e2[j], math.sqrt(e1[i]), math.sqrt(e2[j]))
            K[ib, j] = acc
            KD[ib, j] = KD[ib, j] * accd
            A[ib, j] = sk - acc
            B[ib, j] = sk + acc
            D[ib, j] = math.nan
        excess[ib] = ex


# ----------------------------------------------------------------------------- certified bound
_EPS = float(np.finfo(float).eps)
_R_CLOSED = 64 * _EPS          # rounding allowance of one closed-form dual, relative
_GH = np.polynomial.hermite_e.hermegauss(160)


def _second_derivative_moment(code, q):
    """``E[phi''(sqrt(q) z)^2]`` of the smooth closed-form families (Lipschitz constant of the
    derivative dual in the covariance, by Price's theorem)."""
    z, w = _GH
    w = w / w.sum()
    x = np.sqrt(q)[:, None] * z[None, :]
    if code == FAMILY_ERF:
        f2 = -4.0 / math.sqrt(math.pi) * x * np.exp(-x * x)
    elif code == FAMILY_SIN:
        f2 = -np.sin(x)
    elif code == FAMILY_COS:
        f2 = -np.cos(x)
    elif code == FAMILY_GAUSSIAN:
        f2 = (x * x - 1.0) * np.exp(-0.5 * x * x)
    elif code == FAMILY_GELU:
        f2 = (2.0 - x * x) * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    else:
        raise ValueError(f"no second derivative for family {code}")
    # 160 nodes integrate these entire functions far below the bound's own slack; the factor
    # covers the quadrature error
    return 1.001 * (f2 * f2 * w).sum(axis=1)


def _closed_act_bound(op, q, uK, uKs, E, Ed):
    """``(uK', ukd, uKs')`` of a closed-form activation (per row).

    ``uK`` bounds the input covariance error, ``uKs <= uK`` its part caused by series layers
    upstream (truncation and its propagation). Rounding upstream is covered by the closed
    forms' accuracy contract (a relative allowance ``_R_CLOSED`` per layer); the Hoelder-1/2
    steps of kinked or discontinuous activations are applied to the series part only.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(q > 0, uKs / q, 0.0)
    code = op.family
    c = (op.p0 - op.p1) ** 2 / (2.0 * math.sqrt(2.0))   # Hoelder-1/2 constant of the step
    if code == FAMILY_ABSTEP:                             # phi has a jump: K is Hoelder
        hk = c * c * np.sqrt(delta)
        return hk + _R_CLOSED * E, np.zeros_like(q), hk
    uK2 = Ed * uK + _R_CLOSED * E
    if code == FAMILY_ABRELU:                             # phi' has a jump: kd is Hoelder
        return uK2, c * c * np.sqrt(delta) + _R_CLOSED * Ed, Ed * uKs
    if code == FAMILY_ARCCOS:
        n = int(op.p0)
        j = 2 * n - 4                                     # E[max(z,0)^j]
        mj = 0.5 if j == 0 else 2.0 ** (j / 2 - 1) * math.gamma((j + 1) / 2) / math.sqrt(math.pi)
        E2 = (n * (n - 1)) ** 2 * q ** (n - 2) * mj
    else:
        E2 = _second_derivative_moment(code, q)
    return uK2, E2 * uK + _R_CLOSED * Ed, Ed * uKs


def _bound_pass(ops, rows, series_data, orders):
    """Per-row factors ``(uK, uT)`` of the final kernels: ``|error(x, y)| <= sqrt(u(x) u(y))``.

    The rules per operation are in docs/composed.md ("Certified bound"); ``series_data[i]`` is
    the :class:`~infntk._backends.series._LayerData` of series op ``i`` for these rows.
    """
    d, nsq, steps = rows
    stack = []
    st = None
    for i, (op, step) in enumerate(zip(ops, steps)):
        if op.kind == INPUT_DENSE:
            f = (d + 8) * _EPS * 1.01
            k0 = nsq / d
            q = op.w2 * k0 + op.b2
            th = op.cK * k0 + op.cb
            st = dict(q=q, th=th, kd=np.ones_like(q), uK=f * q, uT=f * np.abs(th),
                      uD=np.zeros_like(q), dd=np.ones_like(q), uKs=np.zeros_like(q))
        elif op.kind == DENSE:
            q = op.w2 * st["q"] + op.b2
            th = op.cK * st["q"] + op.w2 * st["kd"] * st["th"] + op.cb
            uT = (op.cK * st["uK"] + op.w2 * ((1 + _R_CLOSED) * st["dd"] * st["uT"]
                                            + st["uD"] * (st["th"] + 2 * st["uT"]))
                  + 4 * _EPS * th)
            st = dict(q=q, th=th, kd=np.ones_like(q), uK=op.w2 * st["uK"] + 4 * _EPS * q,
                      uT=uT, uD=np.zeros_like(q), dd=np.ones_like(q), uKs=op.w2 * st["uKs"])
        elif op.kind in (ACT, SERIES):
            q = st["q"]
            if op.kind == ACT:
                E, Ed = _act_rows(op.family, op.p0, op.p1, q)
                uK, ukd, uKs = _closed_act_bound(op, q, st["uK"], st["uKs"], E, Ed)
                R = _R_CLOSED
            else:
                _, _, E, Ed = step
                tT, tD, S1 = series_data[i].at(orders[i])
                R = 16.0 * (orders[i] + 2) * _EPS
                with np.errstate(divide="ignore", invalid="ignore"):
                    delta = np.where(q > 0, st["uK"] / q, 0.0)
                uK = Ed * st["uK"] + tT + R * E
                uKs = Ed * st["uK"] + tT       # all of it counts as series-induced from here
                ukd = delta * S1 + 3.0 * tD + R * Ed
            uD = st["dd"] * ukd + (1 + R) * Ed * st["uD"] + st["uD"] * ukd
            st = dict(q=E, th=st["th"], kd=st["kd"] * Ed, uK=uK, uT=st["uT"], uD=uD,
                      dd=st["dd"] * Ed * (1 + R), uKs=uKs)
        elif op.kind == NORM:
            q = st["q"]
            pos = q > 0
            qs = np.where(pos, q, 1.0)
            th = np.where(pos, st["kd"] * st["th"] / qs, 0.0)
            uT = np.where(pos, ((1 + _R_CLOSED) * st["dd"] * st["uT"]
                                + st["uD"] * (st["th"] + 2 * st["uT"])) / qs, 0.0)
            st = dict(q=pos.astype(float), th=th, kd=np.ones_like(q),
                      uK=np.where(pos, st["uK"] / qs, 0.0) + 4 * _EPS, uT=uT + 4 * _EPS * th,
                      uD=np.zeros_like(q), dd=np.ones_like(q),
                      uKs=np.where(pos, st["uKs"] / qs, 0.0))
        elif op.kind == PUSH:
            stack.append(st)
        else:
            sk = stack.pop()
            a2 = op.a2

            def flushed(t):
                return (1 + _R_CLOSED) * t["dd"] * t["uT"] + t["uD"] * (t["th"] + 2 * t["uT"])
            q = sk["q"] + a2 * st["q"]
            th = sk["kd"] * sk["th"] + a2 * (st["kd"] * st["th"])
            st = dict(q=q, th=th, kd=np.ones_like(q),
                      uK=sk["uK"] + a2 * st["uK"] + 4 * _EPS * q,
                      uT=flushed(sk) + a2 * flushed(st) + 4 * _EPS * np.abs(th),
                      uD=np.zeros_like(q), dd=np.ones_like(q), uKs=sk["uKs"] + a2 * st["uKs"])
    uT = (1 + _R_CLOSED) * st["dd"] * st["uT"] + st["uD"] * (st["th"] + 2 * st["uT"])
    return st["uK"], uT


# ----------------------------------------------------------------------------- the engine
class _Plan(NamedTuple):
    rows: tuple
    cols: tuple
    coef1: dict            # series op index -> (a, b) of the rows, (n1, K+1)
    coef2: dict            # series op index -> (aT, bT) of the columns, (K+1, n2)
    orders: tuple | None
    error_bound: float | None
    excess: list


class ComposedEngine:
    """Engine protocol (:mod:`infntk._backends`) for a compiled list of :class:`Op`.

    Parameters
    ----------
    ops : sequence of Op
        Starting with ``INPUT_DENSE``.
    d : int
        Input width.
    tol : float
        Requested bound of the series layers' error relative to the kernel scale (only used
        when there are ``SERIES`` operations; then the plan carries a certified bound).
    """

    def __init__(self, ops, d, tol=1e-10):
        self.ops = tuple(ops)
        self.d = int(d)
        self.tol = float(tol)
        self.series_ops = [i for i, op in enumerate(self.ops) if op.kind == SERIES]

    def rows(self, X):
        nsq, steps, q, th = _row_pass(self.ops, X, self.d)
        return X, nsq, steps, q, th

    def prepare(self, rows1, rows2, symmetric):
        if not self.series_ops:
            return _Plan(rows1, rows2, {}, {}, None, None, [0.0])
        _, nsq1, st1, q1, th1 = rows1
        _, nsq2, st2, q2, th2 = rows2
        n1 = nsq1.size
        nsq = nsq1 if symmetric else np.concatenate([nsq1, nsq2])
        steps = st1 if symmetric else [tuple(np.concatenate([x, y]) for x, y in zip(a, b))
                                       for a, b in zip(st1, st2)]
        qf = q1 if symmetric else np.concatenate([q1, q2])
        thf = th1 if symmetric else np.concatenate([th1, th2])
        scale = float(max(np.max(np.abs(qf)), np.max(np.abs(thf))))
        target = self.tol * scale
        rows = (self.d, nsq, steps)
        orders, data, bound = self._choose_orders(rows, n1, symmetric, target)
        if bound > target:
            warnings.warn(
                f"Network: tol={self.tol:g} (relative to the kernel scale {scale:.3g}) is not "
                f"reachable with series orders <= {K_MAX}; the certified error bound is "
                f"{bound:.3g} (Kernels.error_bound). Kinked activations converge slowly in "
                "the Hermite series, and closed-form layers after a series layer propagate "
                "its error with their Hoelder constants.", RuntimeWarning, stacklevel=4)
        coef1, coef2 = {}, {}
        for i in self.series_ops:
            K = orders[i]
            a, b = data[i].a[:, :K + 1], data[i].b[:, :K + 1]
            coef1[i] = (np.ascontiguousarray(a[:n1]), np.ascontiguousarray(b[:n1]))
            c = slice(0, n1) if symmetric else slice(n1, None)
            coef2[i] = (np.ascontiguousarray(a[c].T), np.ascontiguousarray(b[c].T))
        return _Plan(rows1, rows2, coef1, coef2,
                     tuple(orders[i] for i in self.series_ops), float(bound), [0.0])

    def _choose_orders(self, rows, n1, symmetric, target):
        """Per series op the order, by the largest common tail level that meets ``target``;
        if none does, the orders of the smallest bound found (higher orders than needed only
        add to the rounding allowance)."""
        d, nsq, steps = rows

        def bound_at(orders, data):
            uK, uT = _bound_pass(self.ops, rows, data, orders)
            sl1, sl2 = (slice(None), slice(None)) if symmetric else \
                (slice(0, n1), slice(n1, None))
            return max(math.sqrt(float(np.max(uK[sl1])) * float(np.max(uK[sl2]))),
                       math.sqrt(float(np.max(uT[sl1])) * float(np.max(uT[sl2]))))

        overall = None                  # (orders, data, bound) of the smallest bound seen
        for cap in (96, K_MAX):
            data = {i: _LayerData(self.ops[i].act, cap, steps[i][0]) for i in self.series_ops}
            worst = {i: np.max(np.maximum(data[i].tT, data[i].tD), axis=0)
                     for i in self.series_ops}
            for k in range(0, 61):
                tau = target * 10.0 ** (-k / 2)
                orders = {i: int(np.flatnonzero(np.append(w <= tau, True))[0])
                          for i, w in worst.items()}
                orders = {i: min(o, cap) for i, o in orders.items()}
                b = bound_at(orders, data)
                # when the target is out of reach, higher orders only add to the rounding
                # allowance: keep the smallest bound, not the last one
                if overall is None or b < overall[2]:
                    overall = (orders, data, b)
                if b <= target or all(o >= cap for o in orders.values()):
                    break
            if overall[2] <= target:
                return overall
        # out of reach: the tail levels above the target (lower orders, less rounding) may
        # give a smaller bound than the ones scanned from the target down
        for k in range(1, 41):
            tau = target * 10.0 ** (k / 2)
            orders = {i: min(int(np.flatnonzero(np.append(w <= tau, True))[0]), K_MAX)
                      for i, w in worst.items()}
            b = bound_at(orders, data)
            if b < overall[2]:
                overall = (orders, data, b)
        return overall

    def block(self, plan, X1, X2, G, row0, symmetric, out_nngp, out_ntk):
        _, nsq1, st1, _, _ = plan.rows
        _, nsq2, st2, _, _ = plan.cols
        shape = G.shape
        A, B, TH, KD, D = (np.zeros(shape) for _ in range(5))
        S = (A, B, out_nngp, TH, KD, D)       # K is computed in place in the output
        nch = chunk_count(shape[0], per_thread=2)  # each call costs ~20 us of dispatch

        def rows(kernel, *args):              # the block's rows, interleaved over the threads
            run_chunks(lambda c: kernel(*args, c, nch), nch)

        stack = []
        for i, (op, a, b) in enumerate(zip(self.ops, st1, st2)):
            if op.kind == INPUT_DENSE:
                rows(_input_dense, X1, X2, np.ascontiguousarray(G), nsq1, nsq2, row0, symmetric,
                     op, S)
            elif op.kind == DENSE:
                rows(_dense, row0, symmetric, op, a[0], a[1], b[0], b[1], S)
            elif op.kind == ACT:
                rows(act_kernel(op.family), row0, symmetric, op, a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], S)
            elif op.kind == SERIES:
                (a1, b1), (a2T, b2T) = plan.coef1[i], plan.coef2[i]
                ex = np.zeros(shape[0])
                rows(_series, row0, symmetric, a1.shape[1] - 1, a[1], a[2], a[3], a1, b1,
                     b[1], b[2], b[3], a2T, b2T, S, ex)
                plan.excess[0] = max(plan.excess[0], float(ex.max(initial=0.0)))
            elif op.kind == NORM:
                rows(_norm, row0, symmetric, a[0], b[0], S)
            elif op.kind == PUSH:
                stack.append(tuple(x.copy() for x in S))
            else:
                rows(_pop, row0, symmetric, op, a[0], a[1], a[2], b[0], b[1], b[2], stack.pop(), S)
        np.multiply(KD, TH, out=out_ntk[:, :shape[1]])

    def finish(self, plan):
        allowed = 64.0 * (self.d + K_MAX + 2) * _EPS
        if plan.excess[0] > allowed:
            raise FloatingPointError(
                f"composed engine: a correlation left [-1, 1] by {plan.excess[0]:.3g} (> rounding "
                f"level {allowed:.3g}); this is a bug, please report it.")

    def diag(self, rows):
        _, _, _, q, th = rows
        return q.copy(), th.copy()
