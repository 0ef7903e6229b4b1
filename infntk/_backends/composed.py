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
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .._duals import abrelu_pair, abstep_pair, arccos_pair, diag_dual, smooth_pair
from ..activations import FAMILY_ABRELU, FAMILY_ABSTEP, FAMILY_ARCCOS
from ._common import check_rows_finite
from .closed import _first_layer_gram, _first_layer_rows, _geomean, _needs_rows

__all__ = ["ComposedEngine", "Op", "INPUT_DENSE", "DENSE", "ACT", "NORM", "PUSH", "POP"]

INPUT_DENSE, DENSE, ACT, NORM, PUSH, POP = range(6)


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


# ----------------------------------------------------------------------------- per-row pass
@njit(cache=True, error_model="numpy")
def _act_rows(family, p0, p1, q):
    n = q.shape[0]
    k = np.empty(n)
    kd = np.empty(n)
    for i in range(n):
        k[i], kd[i] = diag_dual(family, p0, p1, q[i])
    return k, kd


class _RowState:
    """Per-row variance ``q``, NTK diagonal ``th`` and pending factor ``kd``, op by op."""

    def __init__(self, q, th, kd):
        self.q, self.th, self.kd = q, th, kd


def _row_pass(ops, X, d):
    """Per-row arrays every operation needs, and the final diagonal ``(q, th)``."""
    nsq = np.einsum("ij,ij->i", X, X)
    steps = []
    st = None
    stack = []
    for op in ops:
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
            st = _RowState(k11, st.th, st.kd * kd11)
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
    return nsq, steps, st.q, st.kd * st.th


# ----------------------------------------------------------------------------- pair passes
@njit(cache=True, parallel=True, error_model="numpy")
def _input_dense(X1, X2, G, nsq1, nsq2, row0, symmetric, op, S):
    """First Dense layer for the rows of one block; ``S`` = (A, B, K, TH, KD)."""
    A, B, K, TH, KD = S
    d = X1.shape[1]
    w2, b2, cK, cb = op.w2, op.b2, op.cK, op.cb
    for ib in prange(G.shape[0]):
        i = row0 + ib
        jend = i + 1 if symmetric else X2.shape[0]
        nx2 = nsq1[i]
        for j in range(jend):
            A[ib, j], B[ib, j] = _first_layer_gram(G[ib, j], nx2, nsq2[j], w2, b2, d)
            K[ib, j] = G[ib, j] / d
            TH[ib, j] = cK * K[ib, j] + cb
            KD[ib, j] = 1.0
        for j in range(jend):
            same = symmetric and j == i
            if same or _needs_rows(G[ib, j], nx2, nsq2[j]):
                A[ib, j], B[ib, j] = _first_layer_rows(X1[i], X2[j], G[ib, j], nx2, nsq2[j],
                                                       w2, b2, d, same)
        for j in range(jend):
            K[ib, j] = w2 * K[ib, j] + b2


@njit(cache=True, parallel=True, error_model="numpy")
def _dense(row0, symmetric, op, s1, rn1, s2, rn2, S):
    A, B, K, TH, KD = S
    w2, b2, cK, cb = op.w2, op.b2, op.cK, op.cb
    for ib in prange(K.shape[0]):
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


@njit(cache=True, parallel=True, error_model="numpy")
def _act(row0, symmetric, op, q1, r1, sk1, q2, r2, sk2, S):
    A, B, K, TH, KD = S
    family, p0, p1 = op.family, op.p0, op.p1
    for ib in prange(K.shape[0]):
        i = row0 + ib
        jend = i + 1 if symmetric else K.shape[1]
        qa, ra, s1 = q1[i], r1[i], sk1[i]
        for j in range(jend):
            m = _geomean(qa, q2[j], ra, r2[j])
            if family == FAMILY_ABRELU:
                k, kd, kA, kB = abrelu_pair(p0, p1, m, A[ib, j], B[ib, j])
            elif family == FAMILY_ABSTEP:
                k, kd, kA, kB = abstep_pair(p0, p1, m, A[ib, j], B[ib, j], s1 * sk2[j])
            elif family == FAMILY_ARCCOS:
                k, kd, kA, kB = arccos_pair(int(p0), m, A[ib, j], B[ib, j])
            else:
                k, kd, kA, kB = smooth_pair(family, qa, q2[j], ra, r2[j], A[ib, j], B[ib, j],
                                            s1, sk2[j])
            K[ib, j] = k
            KD[ib, j] = KD[ib, j] * kd
            A[ib, j] = kA
            B[ib, j] = kB


@njit(cache=True, parallel=True, error_model="numpy")
def _norm(row0, symmetric, r1, r2, S):
    A, B, K, TH, KD = S
    for ib in prange(K.shape[0]):
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
            else:                      # a zero representation stays zero (docs/composed.md)
                K[ib, j] = 0.0
                TH[ib, j] = 0.0
                A[ib, j] = 0.0
                B[ib, j] = 0.0


@njit(cache=True, parallel=True, error_model="numpy")
def _pop(row0, symmetric, op, qs1, qb1, rq1, qs2, qb2, rq2, saved, S):
    A, B, K, TH, KD = S
    As, Bs, Ks, THs, KDs = saved
    a2 = op.a2
    for ib in prange(K.shape[0]):
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


# ----------------------------------------------------------------------------- the engine
class _Plan(NamedTuple):
    rows: tuple
    cols: tuple
    error_bound: None = None
    orders: None = None


class ComposedEngine:
    """Engine protocol (:mod:`infntk._backends`) for a compiled list of :class:`Op`.

    Parameters
    ----------
    ops : sequence of Op
        Starting with ``INPUT_DENSE``; closed-form activations only.
    d : int
        Input width.
    """

    def __init__(self, ops, d):
        self.ops = tuple(ops)
        self.d = int(d)

    def rows(self, X):
        nsq, steps, q, th = _row_pass(self.ops, X, self.d)
        return X, nsq, steps, q, th

    def prepare(self, rows1, rows2, symmetric):
        return _Plan(rows1, rows2)

    def block(self, plan, X1, X2, G, row0, symmetric, out_nngp, out_ntk):
        _, nsq1, st1, _, _ = plan.rows
        _, nsq2, st2, _, _ = plan.cols
        shape = G.shape
        A, B, TH, KD = (np.zeros(shape) for _ in range(4))
        S = (A, B, out_nngp, TH, KD)          # K is computed in place in the output
        stack = []
        for op, a, b in zip(self.ops, st1, st2):
            if op.kind == INPUT_DENSE:
                _input_dense(X1, X2, np.ascontiguousarray(G), nsq1, nsq2, row0, symmetric, op, S)
            elif op.kind == DENSE:
                _dense(row0, symmetric, op, a[0], a[1], b[0], b[1], S)
            elif op.kind == ACT:
                _act(row0, symmetric, op, a[0], a[1], a[2], b[0], b[1], b[2], S)
            elif op.kind == NORM:
                _norm(row0, symmetric, a[0], b[0], S)
            elif op.kind == PUSH:
                stack.append(tuple(x.copy() for x in S))
            else:
                _pop(row0, symmetric, op, a[0], a[1], a[2], b[0], b[1], b[2], stack.pop(), S)
        np.multiply(KD, TH, out=out_ntk[:, :shape[1]])

    def finish(self, plan):
        return None

    def diag(self, rows):
        _, _, _, q, th = rows
        return q.copy(), th.copy()
