r"""The Hermite-series engine: kernels of activations without a closed form.

Used for tanh, sigmoid, softplus, silu, elu(alpha) and any Python callable
(``activation.family is None``). :class:`SeriesEngine` implements the engine protocol of
:mod:`infntk._backends`; the pair loop is :func:`series_block` (``prange`` over output rows).

Per layer, ``K_l = sum_k a_k(q_l(x)) a_k(q_l(y)) rho_l^k`` and
``kd_l = sum_k b_k(q_l(x)) b_k(q_l(y)) rho_l^k`` (Mehler), with per-row coefficients from
:mod:`infntk.hermite`, truncation orders ``K_l`` chosen per layer, and one certified bound on
``|computed - exact|`` for every entry of both kernels. The recursion, the conventions for
degenerate rows and the symmetric diagonal, the derivation of the bound and the choice of the
orders are in docs/series_engine.md.

Cost: coefficients ``O(n_distinct_q * nodes * K)`` per layer (NumPy, vectorized); pairs
``2 (K_l + 1)`` multiply-adds per pair and layer.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .. import hermite
from ._common import check_rows_finite

__all__ = ["SeriesEngine", "SeriesNet", "SeriesRows", "SeriesCols", "series_block", "K_MAX"]

#: Largest truncation order used (tails of kinked activations decay algebraically).
K_MAX = 400
_EPS = float(np.finfo(float).eps)
_N_QUANTILES = 16
_CHUNK = 256
_CAP0 = 96


# ----------------------------------------------------------------------------- compiled pairs
@njit(cache=True, error_model="numpy")
def _series_row(ib, net, rows, cols, G, row0, symmetric, out_nngp, out_ntk, excess):
    """One output row, by chunks of ``_CHUNK`` columns (the work vectors stay in L1)."""
    depth, Ks, w2, b2, d, cK, cb = net
    nsq1, rq1, a1, b1, E1, Ed1 = rows
    rq2, a2T, b2T = cols
    i = row0 + ib
    jend = i + 1 if symmetric else G.shape[1]
    S = np.empty(_CHUNK)
    TH = np.empty(_CHUNK)
    R = np.empty(_CHUNK)
    acc = np.empty(_CHUNK)
    accd = np.empty(_CHUNK)
    ex = 0.0
    for j0 in range(0, jend, _CHUNK):
        nj = min(_CHUNK, jend - j0)
        for jj in range(nj):
            j = j0 + jj
            g = G[ib, j] / d
            if symmetric and j == i:
                g = nsq1[i] / d
            S[jj] = w2 * g + b2
            TH[jj] = cK[0] * g + cb[0]
        for l in range(depth):
            K = Ks[l]
            r1 = rq1[l, i]
            r2 = rq2[l, j0:j0 + nj]
            for jj in range(nj):
                m = r1 * r2[jj]
                rho = S[jj] / m if m > 0.0 else 0.0
                if rho > 1.0:
                    ex = max(ex, rho - 1.0)
                    rho = 1.0
                elif rho < -1.0:
                    ex = max(ex, -1.0 - rho)
                    rho = -1.0
                R[jj] = rho
            c = a1[l, i, K]
            cd = b1[l, i, K]
            ak = a2T[l, K, j0:j0 + nj]
            bk = b2T[l, K, j0:j0 + nj]
            for jj in range(nj):
                acc[jj] = c * ak[jj]
                accd[jj] = cd * bk[jj]
            for k in range(K - 1, -1, -1):
                c = a1[l, i, k]
                cd = b1[l, i, k]
                ak = a2T[l, k, j0:j0 + nj]
                bk = b2T[l, k, j0:j0 + nj]
                for jj in range(nj):
                    acc[jj] = acc[jj] * R[jj] + c * ak[jj]
                    accd[jj] = accd[jj] * R[jj] + cd * bk[jj]
            if symmetric and j0 <= i < j0 + nj:
                acc[i - j0] = E1[l, i]
                accd[i - j0] = Ed1[l, i]
            cKl = cK[l + 1]
            cbl = cb[l + 1]
            for jj in range(nj):
                TH[jj] = cKl * acc[jj] + w2 * accd[jj] * TH[jj] + cbl
                S[jj] = w2 * acc[jj] + b2
        for jj in range(nj):
            out_nngp[ib, j0 + jj] = S[jj]
            out_ntk[ib, j0 + jj] = TH[jj]
    excess[ib] = ex


@njit(cache=True, parallel=True, error_model="numpy")
def series_block(net, rows, cols, G, row0, symmetric, out_nngp, out_ntk, excess):
    """Fill the rows ``ib`` of one block of the NNGP and NTK Gram matrices.

    ``net``: :class:`SeriesNet`, ``rows``: :class:`SeriesRows`, ``cols``: :class:`SeriesCols`.

    ``G[ib, j] = <X1[row0 + ib], X2[j]>``; per-row arrays are indexed globally:
    ``rq1[l, i] = sqrt(q_l(x_i))``, ``a1[l, i, k] = a_k(q_l(x_i))`` (zero-padded beyond
    ``Ks[l]``), ``a2T[l, k, j]`` the same for the columns (transposed so that the pair loop runs
    over contiguous columns). ``E1, Ed1``: exact diagonal values used when ``symmetric`` (then
    only ``j <= i`` is computed). ``excess[ib]``: the largest ``|rho| - 1`` clipped in that row.
    Rows are taken in pairs ``(t, nb-1-t)`` to balance the triangle between threads.
    """
    nb = G.shape[0]
    for t in prange((nb + 1) // 2):
        _series_row(t, net, rows, cols, G, row0, symmetric, out_nngp, out_ntk, excess)
        u = nb - 1 - t
        if u != t:
            _series_row(u, net, rows, cols, G, row0, symmetric, out_nngp, out_ntk, excess)


# ----------------------------------------------------------------------------- per-row data
def _deriv_at_zero(act):
    """b_0(0) = (phi'(0-) + phi'(0+)) / 2, the degenerate rows' derivative coefficient."""
    dm, dp = act.deriv_at_zero()
    return 0.5 * (dm + dp)


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
        E[l] = hermite.second_moment(act, uq)[inv]
        Ed[l] = hermite.second_moment(act, uq, derivative=True)[inv]
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
        a, T, fl = hermite._tails(act, Kc, uq, False)
        b, Td, fld = hermite._tails(act, Kc, uq, True)
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


def _all_tails(a, tK):
    """T_k for k = 0..Kc from T_Kc and the coefficients (suffix sums of a_j^2)."""
    sq = a[:, ::-1] ** 2
    suffix = np.cumsum(sq, axis=1)[:, ::-1]          # suffix[:, k] = sum_{j>=k} a_j^2
    out = np.empty_like(a)
    out[:, :-1] = suffix[:, 1:]
    out[:, -1] = 0.0
    return out + tK[:, None]


def _row_bounds(setup, q, E, Ed, th, layer_tails, Ks):
    """Per-row factors ``uS, uT`` with ``|error(x, y)| <= sqrt(u(x) u(y))`` (module notes).

    ``layer_tails[l] = (tT, tD, S1)`` at order ``Ks[l]``, each ``(n,)``.
    """
    L, d, w2, b2, cK, cb = setup
    first = (d + 8) * _EPS * 1.01
    uS = first * q[0]
    uT = first * th[0]
    for l in range(L):
        tT, tD, S1 = layer_tails[l]
        R = 16.0 * (Ks[l] + 2) * _EPS
        ql = q[l]
        uK = Ed[l] * uS + tT + R * E[l]
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(ql > 0, uS / ql, 0.0)
        ukd = delta * S1 + 3.0 * tD + R * Ed[l]
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


def _choose_orders(act, setup, q, E, Ed, th, target, split):
    """Per-layer truncation orders ``Ks`` and the per-layer data at those orders.

    ``split``: number of rows of A in the stacked arrays (the rest are B's rows).
    """
    L = setup.depth
    sample = _sample_rows(q)
    qs, Es, Eds, ths = q[:, sample], E[:, sample], Ed[:, sample], th[:, sample]
    # all orders up to a cap for the sample; a layer's cap is raised (once, to K_MAX) only if
    # its tails at the cap are not far below the target
    caps = [_CAP0] * L
    data = [_LayerData(act, _CAP0, qs[l]) for l in range(L)]
    while True:
        worst = [np.max(np.maximum(dl.tT, dl.tD), axis=0) for dl in data]   # (cap+1,)
        floor = max(w.min() for w in worst)
        taus = np.unique(np.concatenate(worst))            # ascending
        taus = taus[taus >= floor]

        def orders(tau):
            return [int(np.flatnonzero(w <= tau)[0]) for w in worst]

        def meets(tau):
            Ks = orders(tau)
            uS, uT = _row_bounds(setup, qs, Es, Eds, ths,
                                 [dl.at(k) for dl, k in zip(data, Ks)], Ks)
            return max(np.max(uS), np.max(uT)) <= 0.5 * target

        # the largest tail level whose orders meet the target (bisection: the bound decreases
        # with tau up to rounding; the check on all rows below catches any miss)
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
        chosen = list(caps)
    # full set of rows: verify, raise the orders if the sample missed a worse row
    while True:
        full = [_LayerData(act, K, q[l]) for l, K in enumerate(chosen)]
        tails = [dl.at(K) for dl, K in zip(full, chosen)]
        uS, uT = _row_bounds(setup, q, E, Ed, th, tails, chosen)
        bound = max(_pair_bound(uS[:split], uS[split:] if split < uS.size else uS[:split]),
                    _pair_bound(uT[:split], uT[split:] if split < uT.size else uT[:split]))
        if bound <= target or all(K >= K_MAX for K in chosen):
            return chosen, full, bound, uS, uT
        chosen = [min(K_MAX, int(math.ceil(1.25 * K)) + 2) for K in chosen]


def _pad(arr, Kmax):
    out = np.zeros((arr.shape[0], Kmax + 1))
    out[:, :arr.shape[1]] = arr
    return out


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


class SeriesRows(NamedTuple):
    """Per-row data of the output rows, layer-major (``a[l, i, k] = a_k(q_l(x_i))``)."""

    nsq: np.ndarray    # (n1,)
    rq: np.ndarray     # (L, n1) sqrt of the variances
    a: np.ndarray      # (L, n1, Kmax + 1) coefficients of phi (zero-padded beyond Ks[l])
    b: np.ndarray      # (L, n1, Kmax + 1) coefficients of phi'
    E: np.ndarray      # (L, n1) exact E[phi^2] (the symmetric diagonal)
    Ed: np.ndarray     # (L, n1) exact E[phi'^2]


class SeriesCols(NamedTuple):
    """Per-row data of the output columns, transposed for contiguous inner loops."""

    rq: np.ndarray     # (L, n2)
    aT: np.ndarray     # (L, Kmax + 1, n2)
    bT: np.ndarray


class _Plan(NamedTuple):
    net: SeriesNet
    rows: SeriesRows
    cols: SeriesCols
    excess: list       # [worst |rho| - 1 clipped so far], updated by block()
    allowed: float
    error_bound: float
    orders: tuple


class SeriesEngine:
    """Engine protocol (:mod:`infntk._backends`) for activations without a closed form.

    The Mehler series per layer with orders chosen so that the certified bound
    (docs/series_engine.md) meets ``tol`` times the kernel scale.

    Parameters
    ----------
    activation : infntk.activations.Activation
    setup : infntk._layers.LayerSetup
    tol : float
    """

    def __init__(self, activation, setup, tol):
        self.activation = activation
        self.setup = setup
        self.tol = tol

    def rows(self, X):
        """The squared norms (the statistics are computed for both sides at once)."""
        return X, np.einsum("ij,ij->i", X, X)

    def prepare(self, rows1, rows2, symmetric):
        (A, nsq1), (B, nsq2) = rows1, rows2
        n1 = A.shape[0]
        setup, act = self.setup, self.activation
        L, d = setup.depth, setup.d
        nsq = nsq1 if symmetric else np.concatenate([nsq1, nsq2])
        q, E, Ed, th = _row_statistics(act, setup, nsq)
        scale = float(max(np.max(np.abs(q[-1])), np.max(np.abs(th[-1]))))
        target = self.tol * scale
        if L == 0:
            Ks, full = [], []
            uS = (d + 8) * _EPS * 1.01 * q[0]
            uT = (d + 8) * _EPS * 1.01 * th[0]
            bound = max(_pair_bound(uS[:n1], uS[n1:] if not symmetric else uS),
                        _pair_bound(uT[:n1], uT[n1:] if not symmetric else uT))
        else:
            Ks, full, bound, uS, uT = _choose_orders(act, setup, q, E, Ed, th, target, n1)
            if bound > target:
                warnings.warn(
                    f"FCNet({act.name!r}): tol={self.tol:g} (relative to the kernel scale "
                    f"{scale:.3g}) is not reachable with truncation orders <= {K_MAX}; the "
                    f"certified error bound is {bound:.3g} (see Kernels.error_bound). "
                    "Activations with kinks converge algebraically in the Hermite series.",
                    RuntimeWarning, stacklevel=4)
        Kmax = max(Ks) if Ks else 0
        Ks_arr = np.array(Ks if Ks else [0], dtype=np.int64)
        rq = np.sqrt(q[:max(L, 1)])
        a = np.stack([_pad(f.a, Kmax) for f in full]) if L else np.zeros((1, nsq.size, 1))
        b = np.stack([_pad(f.b, Kmax) for f in full]) if L else np.zeros((1, nsq.size, 1))
        Ecl = E if L else np.zeros((1, nsq.size))
        Edl = Ed if L else np.zeros((1, nsq.size))
        rows = SeriesRows(nsq1, np.ascontiguousarray(rq[:, :n1]),
                          np.ascontiguousarray(a[:, :n1]), np.ascontiguousarray(b[:, :n1]),
                          np.ascontiguousarray(Ecl[:, :n1]), np.ascontiguousarray(Edl[:, :n1]))
        c = slice(0, n1) if symmetric else slice(n1, None)
        cols = SeriesCols(np.ascontiguousarray(rq[:, c]),
                          np.ascontiguousarray(a[:, c].transpose(0, 2, 1)),
                          np.ascontiguousarray(b[:, c].transpose(0, 2, 1)))
        net = SeriesNet(L, Ks_arr, setup.w2, setup.b2, float(d), setup.cK, setup.cb)
        return _Plan(net, rows, cols, [0.0], 64.0 * (d + Kmax + 2) * _EPS, float(bound),
                     tuple(int(k) for k in Ks))

    def block(self, plan, X1, X2, G, row0, symmetric, out_nngp, out_ntk):
        ex = np.zeros(G.shape[0])
        series_block(plan.net, plan.rows, plan.cols, np.ascontiguousarray(G), row0, symmetric,
                     out_nngp, out_ntk, ex)
        plan.excess[0] = max(plan.excess[0], float(ex.max()))

    def finish(self, plan):
        worst = plan.excess[0]
        if worst > plan.allowed:
            raise FloatingPointError(
                f"series engine: a correlation left [-1, 1] by {worst:.3g} (> rounding level "
                f"{plan.allowed:.3g}); this is a bug, please report it.")

    def diag(self, rows):
        """``k(x, x)`` from the exact second moments (no series needed)."""
        _, nsq = rows
        q, _, _, th = _row_statistics(self.activation, self.setup, nsq)
        return q[-1].copy(), th[-1].copy()
