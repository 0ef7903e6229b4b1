r"""Kernels of activations without a closed form: the Mehler series in compiled code.

Used by :class:`infntk.FCNet` for tanh, sigmoid, softplus, silu, elu(alpha) and any Python
callable (``closed_form is None``). Entry points: :func:`series_kernels` and
:func:`series_diag`; the pair loop is :func:`series_block` (``prange`` over output rows).

Recursion (SPEC 1-2, coefficients ``cK[l], cb[l]`` from
:func:`infntk.fcnet.layer_coefficients`), activation layers ``l = 0..L-1``::

    S_0 = w2 <x,y>/d + b2,            Theta_0 = cK[0] <x,y>/d + cb[0]
    K_l  = E[phi(u) phi(v)]   = sum_k a_k(q_l(x)) a_k(q_l(y)) rho_l^k      (Mehler)
    kd_l = E[phi'(u) phi'(v)] = sum_k b_k(q_l(x)) b_k(q_l(y)) rho_l^k
    S_{l+1} = w2 K_l + b2,            Theta_{l+1} = cK[l+1] K_l + w2 kd_l Theta_l + cb[l+1]

with ``rho_l = S_l / sqrt(q_l(x) q_l(y))`` and the row variances ``q_l(x) = S_l(x, x)``.

Per row (``O(n L)``): the variances by the exact diagonal recursion
``q_{l+1} = w2 E[phi(sqrt(q_l) z)^2] + b2`` (:func:`infntk.hermite.second_moment`), then,
per layer, ``a_0..a_K`` of ``phi`` and ``b_0..b_K`` of ``phi'`` projected directly from the
registry's derivative (so kinks of ``phi'``, e.g. elu's, are split points of the quadrature),
with their tails ``T_K``, ``T'_K`` (sums of squared quadrature residuals), all vectorized over the
distinct variances (:mod:`infntk.hermite`). Per pair (compiled): both series by Horner, over
the columns of a row in the innermost loop so that it vectorizes. The truncation order ``K_l``
may differ between layers (deeper layers usually have smaller variances and need fewer terms).

Conventions
-----------
* Degenerate rows (``q_l(x) = 0``, e.g. a zero input without bias, then ``phi(0) = 0``):
  correlation 0 with every row, itself included (SPEC 2), so only ``k = 0`` contributes:
  ``K = phi(0) a_0(q_y)``, ``kd = b_0(0) b_0(q_y)`` with ``b_0(0) = (phi'(0-) + phi'(0+))/2``.
* With ``X2 = None`` the diagonal of the Gram matrices uses the exact second moments
  ``E[phi^2]``, ``E[phi'^2]`` (so ``diag(X) == np.diag(kernels(X))`` exactly); off the
  diagonal, and for ``kernels(X, X)`` with an explicit second argument, the series is used
  (the two agree within the reported bound).
* ``|rho| > 1`` by rounding (at most ``64 (d + K + 2) eps``) is clipped; a larger excursion
  raises ``FloatingPointError`` (it would mean an internal inconsistency).

Certified bound (``Kernels.error_bound``)
-----------------------------------------
``error_bound`` is one float, an upper bound on ``|computed - exact|`` for every entry of
both the NNGP and the NTK Gram matrices, "exact" meaning the infinite-width recursion above
evaluated exactly with the float64 row variances. Derivation, per pair and layer, with
``eS, eT`` bounds on the errors of the carried ``S_l`` and ``Theta_l``:

1. Truncation at a computed ``|rho^| <= 1``: ``|F_K(rho^) - F(rho^)| <= sqrt(T_K(q_x) T_K(q_y))``
   (Cauchy-Schwarz on the Mehler tail; SPEC 4), the same for ``kd`` with ``T'_K``.
2. Propagation in ``S`` (``F(s) = E[phi(u)phi(v)]`` at covariance ``s``): Price's theorem gives
   ``dF/ds = E[phi'(u) phi'(v)]``, so ``|F(s^) - F(s)| <= sqrt(E'(q_x) E'(q_y)) |s^ - s|``
   with ``E'(q) = E[phi'(sqrt q z)^2]``. Hence ``eK <= sqrt(E'E') eS + sqrt(T T) + R``.
3. ``G(rho) = E[phi'phi']`` need not be Lipschitz (elu with ``alpha != 1``: ``phi'`` jumps, ``G``
   is only Hoelder-1/2 at ``rho = 1``). From the series, with ``|rho^k - rho'^k| <= k delta`` for
   ``k <= K`` and ``<= 2`` beyond, ``delta = eS / sqrt(q_x q_y)``:
   ``|G(rho^) - G(rho)| <= delta sqrt(S1(q_x) S1(q_y)) + 2 sqrt(T'T')``,
   ``S1(q) = sum_{k<=K} k b_k(q)^2``; so ``ekd <= delta sqrt(S1 S1) + 3 sqrt(T'T') + R'``.
4. ``eS' = w2 eK``; ``eT' <= cK eK + w2 (|kd^| eT + ekd (|Theta| + eT))`` with
   ``|kd^| <= sqrt(E'E')(1 + R)`` and ``|Theta(x, y)| <= sqrt(Theta(x,x) Theta(y,y))`` (PSD).

Every term is a geometric mean ``sqrt(u(x) u(y))`` of per-row quantities, and sums and products
of geometric means are bounded by geometric means of sums and products (Cauchy-Schwarz), so the
recursion runs per row: ``eS(x, y) <= sqrt(uS(x) uS(y))`` and the same for ``eT``, in ``O(nL)``.
``R = 16 (K + 2) eps sqrt(E E)`` covers the Horner rounding (``(2K + 3) eps``) and the
coefficients' quadrature error (measured ``<= 1e-15 sqrt(E[phi^2])`` each,
``tests/test_hermite.py``); the first layer carries ``(d + 8) eps`` (the ``<x, y>`` product).
Not covered: the rounding of the row variances themselves (relative ``~1e-15``, from the
quadrature of ``E[phi^2]``) and, for a callable given without ``deriv=``, the error of the
registry's central-difference derivative (about ``1e-10`` relative): pass ``deriv=``.

Truncation order
----------------
``K_l`` is chosen so that ``error_bound <= tol * scale``, ``scale`` the largest diagonal
entry of the NNGP and NTK over all rows (which bounds ``max |K|`` of both Gram matrices):
the tails of every order (``T_k = T_Kc + sum_{k<j<=Kc} a_j^2``) are computed for a sample of
rows (16 quantiles of each layer's variances), the largest common tail level ``tau`` whose
per-layer orders make the sample's propagated bound meet half the target is found by
bisection, and the bound is then computed for all rows; if that fails, the orders are raised
by 25 % until it holds. The orders used are attached to the result as ``Kernels.orders``.
Analytic activations (tanh, sigmoid, softplus, silu) have exponentially decaying tails
and meet ``tol = 1e-10`` with ``K`` of a few tens to ~150 (tanh, ``q ~ 1``: ~100). Kinked ones
converge algebraically (elu, ``alpha = 1``: ``T'_K ~ K^{-3/2}``; ``alpha != 1``:
``T'_K ~ K^{-1/2}``): the order stops at ``K_MAX`` and a ``RuntimeWarning`` reports the
achieved bound, which is still certified.

Cost: coefficients ``O(n_distinct_q * nodes * K)`` per layer (NumPy, vectorized); pairs
``2 (K_l + 1)`` multiply-adds per pair and layer.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from numba import njit, prange

from . import hermite

__all__ = ["series_kernels", "series_diag", "series_block", "K_MAX"]

#: Largest truncation order used (tails of kinked activations decay algebraically).
K_MAX = 400
_EPS = float(np.finfo(float).eps)
_N_QUANTILES = 16
_CHUNK = 256
_CAP0 = 96


# ----------------------------------------------------------------------------- compiled pairs
@njit(cache=True, error_model="numpy")
def _series_row(ib, G, nsq1, row0, symmetric, depth, Ks, w2, b2, d, cK, cb,
                rq1, rq2, a1, b1, a2T, b2T, E1, Ed1, out_nngp, out_ntk, excess):
    """One output row, by chunks of ``_CHUNK`` columns (the work vectors stay in L1)."""
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
def series_block(G, nsq1, row0, symmetric, depth, Ks, w2, b2, d, cK, cb,
                 rq1, rq2, a1, b1, a2T, b2T, E1, Ed1, out_nngp, out_ntk, excess):
    """Fill the rows ``ib`` of one block of the NNGP and NTK Gram matrices.

    ``G[ib, j] = <X1[row0 + ib], X2[j]>``; per-row arrays are indexed globally:
    ``rq1[l, i] = sqrt(q_l(x_i))``, ``a1[l, i, k] = a_k(q_l(x_i))`` (zero-padded beyond
    ``Ks[l]``), ``a2T[l, k, j]`` the same for the columns (transposed so that the pair loop runs
    over contiguous columns). ``E1, Ed1``: exact diagonal values used when ``symmetric`` (then
    only ``j <= i`` is computed). ``excess[ib]``: the largest ``|rho| - 1`` clipped in that row.
    Rows are taken in pairs ``(t, nb-1-t)`` to balance the triangle between threads.
    """
    nb = G.shape[0]
    for t in prange((nb + 1) // 2):
        _series_row(t, G, nsq1, row0, symmetric, depth, Ks, w2, b2, d, cK, cb,
                    rq1, rq2, a1, b1, a2T, b2T, E1, Ed1, out_nngp, out_ntk, excess)
        u = nb - 1 - t
        if u != t:
            _series_row(u, G, nsq1, row0, symmetric, depth, Ks, w2, b2, d, cK, cb,
                        rq1, rq2, a1, b1, a2T, b2T, E1, Ed1, out_nngp, out_ntk, excess)


# ----------------------------------------------------------------------------- per-row data
def _setup(net, d):
    from .fcnet import layer_coefficients
    cK, cb = layer_coefficients(net.depth, d, net.w_std, net.b_std, net.parameterization,
                                net.width)
    w2 = net.w_std ** 2
    b2 = 0.0 if net.b_std is None else net.b_std ** 2
    return w2, b2, np.ascontiguousarray(cK, dtype=np.float64), \
        np.ascontiguousarray(cb, dtype=np.float64)


def _deriv_at_zero(act):
    """b_0(0) = (phi'(0-) + phi'(0+)) / 2, the degenerate rows' derivative coefficient."""
    dm, dp = (float(v) for v in act.deriv(np.array([-1e-300, 1e-300])))
    return 0.5 * (dm + dp)


def _row_statistics(net, nsq, d):
    """Variances, exact second moments and the NTK diagonal of every layer.

    Returns ``q (L+1, n)`` (``q[l] = S_l(x, x)``), ``E (L, n)`` = ``E[phi^2](q_l)``,
    ``Ed (L, n)`` = ``E[phi'^2](q_l)`` (``b_0(0)^2`` at ``q = 0``, SPEC 2) and
    ``th (L+1, n)`` = ``Theta_l(x, x)``. Same float operations as the pair loop's diagonal.
    """
    act = net.activation
    w2, b2, cK, cb = _setup(net, d)
    L = net.depth
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
        if not (np.isfinite(q[l + 1]).all() and np.isfinite(th[l + 1]).all()):
            bad = int(np.argmax(~(np.isfinite(q[l + 1]) & np.isfinite(th[l + 1]))))
            raise OverflowError(
                f"the kernel overflows float64 (row {bad}, layer {l + 1}: variance "
                f"{q[l + 1, bad]!r}); reduce depth, w_std or the input scale.")
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


def _row_bounds(net, d, q, E, Ed, th, layer_tails, Ks):
    """Per-row factors ``uS, uT`` with ``|error(x, y)| <= sqrt(u(x) u(y))`` (module notes).

    ``layer_tails[l] = (tT, tD, S1)`` at order ``Ks[l]``, each ``(n,)``.
    """
    w2, b2, cK, cb = _setup(net, d)
    first = (d + 8) * _EPS * 1.01
    uS = first * q[0]
    uT = first * th[0]
    for l in range(net.depth):
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


def _choose_orders(net, d, q, E, Ed, th, target, split):
    """Per-layer truncation orders ``Ks`` and the per-layer data at those orders.

    ``split``: number of rows of A in the stacked arrays (the rest are B's rows).
    """
    act = net.activation
    L = net.depth
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
            uS, uT = _row_bounds(net, d, qs, Es, Eds, ths,
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
        uS, uT = _row_bounds(net, d, q, E, Ed, th, tails, chosen)
        bound = max(_pair_bound(uS[:split], uS[split:] if split < uS.size else uS[:split]),
                    _pair_bound(uT[:split], uT[split:] if split < uT.size else uT[:split]))
        if bound <= target or all(K >= K_MAX for K in chosen):
            return chosen, full, bound, uS, uT
        chosen = [min(K_MAX, int(math.ceil(1.25 * K)) + 2) for K in chosen]


def _pad(arr, Kmax):
    out = np.zeros((arr.shape[0], Kmax + 1))
    out[:, :arr.shape[1]] = arr
    return out


# ----------------------------------------------------------------------------- entry points
def series_kernels(net, A, B, same, out_nngp, out_ntk, block_rows):
    """NNGP and NTK Gram matrices of ``net`` through the Mehler series (see module notes).

    Parameters
    ----------
    net : FCNet
        With ``activation.closed_form is None``.
    A : (n1, d) float64 C-contiguous
    B : (n2, d) float64 C-contiguous (``A`` itself when ``same``)
    same : bool
        ``B is A``: the lower triangle is computed and mirrored.
    out_nngp, out_ntk : (n1, n2) float64 C-contiguous
        Filled by blocks of ``block_rows`` rows (memmaps work).
    block_rows : int

    Returns
    -------
    infntk.fcnet.Kernels
        ``error_bound``: a float bounding ``|computed - exact|`` for every entry of both
        matrices; ``K <= error_bound`` is guaranteed to be ``<= net.tol * scale`` (``scale`` the
        largest diagonal entry) unless a ``RuntimeWarning`` says the tolerance was not reachable.
    """
    from .fcnet import Kernels, _mirror_lower_to_upper
    n1, d = A.shape
    n2 = B.shape[0]
    L = net.depth
    w2, b2, cK, cb = _setup(net, d)
    nsq1 = np.einsum("ij,ij->i", A, A)
    nsq = nsq1 if same else np.concatenate([nsq1, np.einsum("ij,ij->i", B, B)])
    q, E, Ed, th = _row_statistics(net, nsq, d)
    scale = float(max(np.max(np.abs(q[-1])), np.max(np.abs(th[-1]))))
    target = net.tol * scale
    if L == 0:
        Ks, full = [], []
        uS = (d + 8) * _EPS * 1.01 * q[0]
        uT = (d + 8) * _EPS * 1.01 * th[0]
        bound = max(_pair_bound(uS[:n1], uS[n1:] if not same else uS),
                    _pair_bound(uT[:n1], uT[n1:] if not same else uT))
    else:
        Ks, full, bound, uS, uT = _choose_orders(net, d, q, E, Ed, th, target, n1)
        if bound > target:
            warnings.warn(
                f"FCNet({net.activation.name!r}): tol={net.tol:g} (relative to the kernel scale "
                f"{scale:.3g}) is not reachable with truncation orders <= {K_MAX}; the "
                f"certified error bound is {bound:.3g} (see Kernels.error_bound). Activations "
                "with kinks converge algebraically in the Hermite series.",
                RuntimeWarning, stacklevel=3)
    Kmax = max(Ks) if Ks else 0
    Ks_arr = np.array(Ks if Ks else [0], dtype=np.int64)
    rq = np.sqrt(q[:max(L, 1)])
    a = np.stack([_pad(f.a, Kmax) for f in full]) if L else np.zeros((1, nsq.size, 1))
    b = np.stack([_pad(f.b, Kmax) for f in full]) if L else np.zeros((1, nsq.size, 1))
    Ecl = E if L else np.zeros((1, nsq.size))
    Edl = Ed if L else np.zeros((1, nsq.size))
    rq1 = np.ascontiguousarray(rq[:, :n1])
    a1 = np.ascontiguousarray(a[:, :n1])
    b1 = np.ascontiguousarray(b[:, :n1])
    E1 = np.ascontiguousarray(Ecl[:, :n1])
    Ed1 = np.ascontiguousarray(Edl[:, :n1])
    cols = slice(0, n1) if same else slice(n1, None)
    rq2 = np.ascontiguousarray(rq[:, cols])
    a2T = np.ascontiguousarray(a[:, cols].transpose(0, 2, 1))
    b2T = np.ascontiguousarray(b[:, cols].transpose(0, 2, 1))
    excess = np.zeros(block_rows)
    worst = 0.0
    for r0 in range(0, n1, block_rows):
        r1 = min(r0 + block_rows, n1)
        ncols = r1 if same else n2
        G = np.ascontiguousarray(A[r0:r1] @ B[:ncols].T)
        ex = excess[:r1 - r0]
        series_block(G, nsq1, r0, same, L, Ks_arr, w2, b2, float(d), cK, cb, rq1, rq2, a1, b1,
                     a2T, b2T, E1, Ed1, out_nngp[r0:r1], out_ntk[r0:r1], ex)
        worst = max(worst, float(ex.max()))
    allowed = 64.0 * (d + Kmax + 2) * _EPS
    if worst > allowed:
        raise FloatingPointError(
            f"series engine: a correlation left [-1, 1] by {worst:.3g} (> rounding level "
            f"{allowed:.3g}); this is a bug, please report it.")
    if same:
        _mirror_lower_to_upper(out_nngp, block_rows)
        _mirror_lower_to_upper(out_ntk, block_rows)
    res = Kernels(out_nngp, out_ntk, float(bound), tuple(int(k) for k in Ks))
    return res


def series_diag(net, X):
    """``k(x, x)`` of every row of ``X`` (exact second moments, no series needed).

    Parameters
    ----------
    net : FCNet
    X : (n, d) float64 C-contiguous

    Returns
    -------
    infntk.fcnet.KernelDiag
        NTK diagonal with ``.nngp`` and ``.ntk`` (each ``(n,)``); equal to the diagonals of
        ``net.kernels(X)``.
    """
    from .fcnet import KernelDiag
    nsq = np.einsum("ij,ij->i", X, X)
    q, _, _, th = _row_statistics(net, nsq, X.shape[1])
    return KernelDiag(q[-1].copy(), th[-1].copy())
