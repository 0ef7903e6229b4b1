"""Compiled CNN-GP / CNTK recursions, one pair of images at a time (closed-form duals).

Kernels receive plain arrays and scalars only and never validate: :mod:`infntk.conv` checks
the inputs, detects the regime and encodes the layers as a small program (``iop``, ``fop``
and the padded-axis maps ``pmap``); this module only runs it.

State of one pair ``(x, y)`` of images (``h x w`` positions):

* full regime: ``S[i, i', j, j'] = Sigma(x_{ij}, y_{i'j'})`` and ``T`` (the NTK), C order
  ``(hp, hp, wp, wp)``, stored *padded in all four axes* for the layer that reads it: the
  interior ``[lo, lo + h)`` of each axis holds the state, the border is zero (``"same"``,
  kept zero across layers and pairs: the border of a layout is cleared only when a buffer
  changes layout) or wrapped (``"circular"``, filled by the Conv that reads it). Layers that
  do not pad read an unpadded layout (``lo = 0``);
* diagonal regime: ``S[i, j] = Sigma(x_{ij}, y_{ij})`` only (Novak et al. 2019);
* after the readout: two scalars.

Patch trace of a ``q x q`` convolution (NTK parameterization, fan-in ``q^2 C``)::

    Sigma'[p, p'] = w2 / q^2 * sum_{a, b} K[p + (a, b), p' + (a, b)] + b2
    Theta'[p, p'] = w2 / q^2 * sum_{a, b} Theta[p + (a, b), p' + (a, b)] + Sigma'[p, p']

applied separably with no bounds logic: for an output row ``i`` the ``q`` row taps
``(i + a, i' + a)`` of every ``i'`` are one contiguous stretch of the padded state (block
``((i + a) hp + a) + i'``), so they add as ``q`` flat loops of ``ho wp^2`` entries; on the sum
the column taps ``(j + b, j' + b)`` are a shift by ``b (wp + 1)`` of the flat index, ``q`` more
flat loops. The bias, the NTK's new NNGP term and the dual activation follow row by row
(:func:`_block`) while the stretch is in cache, written straight into the next layer's
padded layout. The diagonal regime does the same on the ``(h, w)`` diagonal: a padded image
and shifts by ``a wp`` and ``b``.

Dual inputs: ``m = sqrt(q_x q_y)``, ``A = max(m - s, 0)``, ``B = max(m + s, 0)`` from the
carried ``s = Sigma`` and the self variances ``q`` (a simpler formulation than the FC engine's
carried gaps). A pair of identical positions gets ``A = 0`` exactly: the self variances are
computed by the same passes, in the same order, as the pair's entries. Elsewhere the absolute
error of ``A`` is a few ulp of ``m``; see docs/conv.md for what that means for accuracy. The
ReLU family (relu, leaky_relu, abs, identity) has a branch-free, libm-free form below that
the compiler vectorizes; the other closed forms go through :func:`_dual_other` (the smooth
families' plain forms, or :func:`infntk._duals.smooth_kkd` beyond their range).

Compilation: one driver (:func:`drive`: self statistics, symmetric or cross Gram; no parallel
kernel: the caller runs one chunk of pairs per thread, the driver releases the GIL), one pair
runner and a handful of small loops, each compiled once (no signature depends on the layer
list).

Networks whose full-state part is Conv and activation layers up to GlobalAvgPool run the plane
engine instead (:func:`drive_planes`, below): every Conv keeps the offsets ``(i' - i, j' -
j)``, so the planes of fixed offsets are independent; each runs through all layers in cache,
for a batch of pairs with the pair index innermost (docs/conv.md, "Plane engine"). Flatten
networks of Conv layers (no pooling) run its plane ``(0, 0)`` alone: the spatial diagonal.
Its compilation: :func:`drive_planes` has the pieces called once (the plane runner, the fused
3 x 3 Conv, the row activation, the scalar tail) inlined, since Numba links and re-optimizes
every callee's code into each caller's module (a deep chain pays a big leaf at every level);
two family groups (``allf``), so that a network of the ReLU family alone compiles no other
family's dual.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._duals import (_PLAIN_MAX, arccos_pair, atan_unit, diag_dual, erf_plain, gaussian_plain,
                      gelu_plain, kinked_state, smooth_kkd, smooth_plain, trig_plain)
from .._vmath import _atan_centre, _atan_reduced_fma, fma
from ..activations import (FAMILY_ABRELU, FAMILY_ABSTEP, FAMILY_ARCCOS, FAMILY_COS, FAMILY_ERF,
                           FAMILY_GAUSSIAN, FAMILY_GELU, FAMILY_SIN)

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

# iop columns: code, q or window, unused, family (-1: none), offset of the self statistics,
# h_in, w_in, h_out, w_out, hp, wp (padded sizes of a diagonal conv), then the full-state
# layouts: the op's input (hp, wp, lo, layout id, wrapped) and the layout it writes
# (hp, wp, lo, layout id). Layout id >= 0: a zero-bordered layout (its border is cleared
# when a buffer changes to it); -1: no border, or a wrapped one (filled by the reader).
# fop columns: w2, b2, p0, p1.
NIOP = 20
I_HP, I_WP, I_LO, I_LID, I_WRAP, O_HP, O_WP, O_LO, O_LID = 11, 12, 13, 14, 15, 16, 17, 18, 19

_PI = math.pi
_INV_2PI = 1.0 / (2.0 * math.pi)
# variances within this range take the fast ReLU-family form (q_x q_y and s^2 in range)
_Q_LO = 1e-140
_Q_HI = 1e140
_CHUNK = 4096      # entries of a row stretch processed at once (cache blocking)


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


@njit(cache=True, error_model="numpy")
def _abrelu_fast(n2, c2, ab, m, qq, s):
    """(k, kd) of the ReLU family (:func:`_abrelu_kkd`) with one square root and one
    division, for ``q_x, q_y`` in ``[1e-140, 1e140]`` (so ``m > 0``): ``m = sqrt(q_x)
    sqrt(q_y)``, ``qq = q_x q_y``, and the loop constants ``n2 = (a^2 + b^2) / 2``, ``c2 = (a
    - b)^2 / (2 pi)``, ``ab = a b``.

    ``sqrt(A B) = sqrt(q_x q_y - s^2)`` directly, and ``x = sqrt(min(A, B) / max(A, B)) =
    sqrt(A B) / (m + |s|)`` goes into the argument reduction of
    :func:`infntk._duals.atan_ratio` without being formed (its centres ``tan(k pi / 16)`` and
    Taylor polynomial to ``z^15``, here in Estrin's scheme): ``z = (sqrt(A B) - c hi) / (hi +
    c sqrt(A B))``, ``theta = 2 atan x`` or ``pi - 2 atan x`` by the sign of ``s``, ``k = n2 s
    + c2 (sqrt(A B) - theta s)``, ``kd = c2 (pi - theta) + a b``, with fused multiply-adds
    (:func:`infntk._vmath.fma`) wherever they save a rounding. ``q_x q_y - s^2`` is *not*
    fused: at a pair of identical positions of a self pair (``q_x = q_y = s``) it is exactly 0
    (theta = 0), which an FMA's exact ``s^2`` would break. ``hi = m + |s| > 0``, so no
    degenerate-pair selects. A few ulp (tests/test_conv.py: neural-tangents, mpmath).
    """
    lo = math.sqrt(max(qq - s * s, 0.0))
    hi = m + abs(s)
    c, base = _atan_centre(lo, hi)
    z = fma(-c, hi, lo) / fma(c, lo, hi)
    at = 2.0 * (base + _atan_reduced_fma(z))
    theta = at if s >= 0.0 else _PI - at
    kd = fma(c2, _PI - theta, ab)
    k = fma(c2, fma(-theta, s, lo), n2 * s)
    return k, kd


@njit(cache=True, error_model="numpy")
def _geomean_exact(qa, qb):
    """``sqrt(qa qb)``, and exactly ``q`` when ``qa = qb = q``, at any scale: beyond
    ``[1e-150, 1e150]`` through mantissas and exponents (powers of two scale exactly). (The
    product of the square roots, the other engines' fallback there, is off by an ulp at
    ``qa = qb``, which the step-like duals turn into ~1e-8 at a self pair.)"""
    m = math.sqrt(qa * qb)
    if m > 1e-150 and m < 1e150:
        return m
    if qa <= 0.0 or qb <= 0.0:
        return 0.0
    fa, ea = math.frexp(qa)
    fb, eb = math.frexp(qb)
    e = ea + eb
    if e % 2 != 0:
        fa *= 2.0
        e -= 1
    return math.ldexp(math.sqrt(fa * fb), e // 2)


@njit(cache=True, error_model="numpy")
def _dual_kinked(family, p0, p1, qa, qb, ska, skb, s, allf):
    """(k, kd) of the ReLU family's general form (variances beyond the fast form's range), the
    step family and the arc-cosine kernels at the pair state ``(qa, qb, s)``: the duals of
    :mod:`infntk._duals` (``kinked_state``, ``arccos_pair``) with ``A, B = m -+ s``, ``m`` the
    exact geometric mean. No smooth family here: the plane engine compiles none of their scalar
    forms (their loops are in :func:`_act_entries`). ``allf`` None: the ReLU family only (the
    branch of the other families is pruned at compile time: a ReLU network compiles neither)."""
    m = _geomean_exact(qa, qb)
    if allf is None:
        return _abrelu_kkd(p0, p1, m, s)
    if family == FAMILY_ABRELU:
        return _abrelu_kkd(p0, p1, m, s)
    A = max(m - s, 0.0)
    B = max(m + s, 0.0)
    if family == FAMILY_ABSTEP:
        k, kd, _, _ = kinked_state(True, p0, p1, A, B, ska * skb)
        return k, kd
    k, kd, _, _ = arccos_pair(int(p0), math.sqrt(qa) * math.sqrt(qb), A, B)
    return k, kd


@njit(cache=True, error_model="numpy")
def _smooth_wide(family, qa, qb, A, B):
    """(k, kd) of a smooth family (erf, GELU, sin, cos, Gaussian) beyond the plain forms' range
    (a variance >= ``_PLAIN_MAX`` = 1e75): :func:`infntk._duals.smooth_kkd`, whose forms
    neither over- nor underflow (``hypot`` for ``sqrt(det)``, GELU's scaled form), evaluated
    with ``B < A`` mirrored for the even families (cos, Gaussian: ``k(-s) = k(s)``, ``kd``
    odd), as the fully-connected engine's stable route does. The engines keep only ``k, kd``,
    so its gaps are not needed."""
    r1 = math.sqrt(qa)
    r2 = math.sqrt(qb)
    if (family == FAMILY_COS or family == FAMILY_GAUSSIAN) and B < A:
        k, kd = smooth_kkd(family, qa, qb, r1, r2, B, A)
        return k, -kd
    return smooth_kkd(family, qa, qb, r1, r2, A, B)


@njit(cache=True, error_model="numpy")
def _dual_other(family, p0, p1, qa, qb, ra, rb, ska, skb, s):
    """(k, kd) of any closed-form family at the pair state ``(qa, qb, s)``, one entry (the
    full-state and diagonal engines; the ReLU family comes here only for variances beyond the
    fast form's range): :func:`_dual_kinked`, or for the smooth families their plain form
    (:func:`infntk._duals.smooth_plain`) at the exact geometric mean inside its range and
    :func:`_smooth_wide` beyond."""
    if family == FAMILY_ABRELU or family == FAMILY_ABSTEP or family == FAMILY_ARCCOS:
        return _dual_kinked(family, p0, p1, qa, qb, ska, skb, s, np.int64(1))
    m = _geomean_exact(qa, qb)
    A = max(m - s, 0.0)
    B = max(m + s, 0.0)
    if qa < _PLAIN_MAX and qb < _PLAIN_MAX:
        return smooth_plain(family, qa, qb, math.sqrt(qa), math.sqrt(qb), A, B)
    return _smooth_wide(family, qa, qb, A, B)


@njit(cache=True, error_model="numpy")
def _act_entries(fam, p0, p1, n, D, DT, do, QA, RA, SKA, ao, QB, RB, SKB, bo, WK, allf):
    """In place over ``n`` entries: ``D[do + t] = k``, ``DT[do + t] *= kd`` at the pair state
    ``s = D[do + t]`` and the variances ``QA[ao + t]``, ``QB[bo + t]``, for a family other
    than the ReLU family's fast form (``WK``: ``3 n`` floats of work space). ``allf`` None:
    the network has no family but the ReLU family's, and only its general form is compiled
    (Numba prunes a branch on an argument that is None at compile time).

    The smooth families run one loop per family that vectorizes, at ``m = WK[t]``: ``sqrt(q_a
    q_b)``, computed with the range check, or, where that product leaves the normal range
    (``m <= 1e-150``), the exact geometric mean (:func:`_geomean_exact`). Entries with a
    variance beyond the plain forms' range (``>= 1e75``, where they would overflow) are
    evaluated first by :func:`_smooth_wide` (their ``k`` and ``DT kd`` kept in ``WK[n:3n]``)
    and put back after the loop. The other families go through :func:`_dual_kinked` entry
    by entry.
    """
    n = np.uint64(n)          # offsets are uint64 (the callers'): no mixed int64 sums
    if fam == FAMILY_ABRELU or fam == FAMILY_ABSTEP or fam == FAMILY_ARCCOS:
        for t in range(n):
            k, kd = _dual_kinked(fam, p0, p1, QA[ao + t], QB[bo + t], SKA[ao + t], SKB[bo + t],
                                 D[do + t], allf)
            D[do + t] = k
            DT[do + t] = DT[do + t] * kd
        return
    if allf is None:
        return
    bad = 0
    for t in range(n):                  # branch-free: vectorizes
        qa = QA[ao + t]
        qb = QB[bo + t]
        m = math.sqrt(qa * qb)
        WK[t] = m
        bad += (qa >= _PLAIN_MAX) | (qb >= _PLAIN_MAX) | (m <= 1e-150)
    wide = 0
    if bad > 0:
        for t in range(n):
            qa = QA[ao + t]
            qb = QB[bo + t]
            if qa >= _PLAIN_MAX or qb >= _PLAIN_MAX:
                m = _geomean_exact(qa, qb)
                s = D[do + t]
                k, kd = _smooth_wide(fam, qa, qb, max(m - s, 0.0), max(m + s, 0.0))
                WK[n + t] = k
                WK[n + n + t] = DT[do + t] * kd
                wide += 1
            elif WK[t] <= 1e-150:
                WK[t] = _geomean_exact(qa, qb)
    if fam == FAMILY_ERF:
        for t in range(n):
            m = WK[t]
            s = D[do + t]
            k, kd = erf_plain(QA[ao + t], QB[bo + t], max(m - s, 0.0), max(m + s, 0.0))
            D[do + t] = k
            DT[do + t] = DT[do + t] * kd
    elif fam == FAMILY_GELU:
        for t in range(n):
            m = WK[t]
            s = D[do + t]
            k, kd = gelu_plain(QA[ao + t], QB[bo + t], max(m - s, 0.0), max(m + s, 0.0))
            D[do + t] = k
            DT[do + t] = DT[do + t] * kd
    elif fam == FAMILY_GAUSSIAN:
        for t in range(n):
            m = WK[t]
            s = D[do + t]
            k, kd = gaussian_plain(QA[ao + t], QB[bo + t], max(m - s, 0.0), max(m + s, 0.0))
            D[do + t] = k
            DT[do + t] = DT[do + t] * kd
    else:
        is_sin = fam == FAMILY_SIN
        for t in range(n):
            m = WK[t]
            s = D[do + t]
            k, kd = trig_plain(is_sin, math.sqrt(QA[ao + t]), math.sqrt(QB[bo + t]),
                               max(m - s, 0.0), max(m + s, 0.0))
            D[do + t] = k
            DT[do + t] = DT[do + t] * kd
    if wide > 0:
        for t in range(n):
            if QA[ao + t] >= _PLAIN_MAX or QB[bo + t] >= _PLAIN_MAX:
                D[do + t] = WK[n + t]
                DT[do + t] = WK[n + n + t]


@njit(cache=True, inline="always", error_model="numpy")
def _block(fam, p0, p1, q1, r1, sk1, ia, q2, r2, sk2, ib, V, VT, vb, vs, D, DT, db, ds, nj,
           nu, c, b2, tp):
    """Bias, NTK term and activation of an ``nj x nu`` block, rows ``j``, columns ``u``::

        s = c V[vb + j vs + u] + b2,   t = c VT[...] + tp s
        D[db + j ds + u] = k(s),       DT[...] = t kd(s)

    with the variances ``q1[ia + j]`` (row) and ``q2[ib + u]`` (column). ``V is D`` with
    ``c = 1, b2 = tp = 0`` is the activation in place. The family switch sits outside the
    loops. Indices are unsigned (no negative-index wraparound code) and no views are made per
    row (a view per row costs two atomic reference-count updates where Numba cannot prune
    them), so the ReLU loop vectorizes. The ReLU family takes :func:`_abrelu_fast` when every
    variance is within ``[1e-140, 1e140]``, the general dual otherwise.
    """
    nu_ = np.uint64(nu)
    ib_ = np.uint64(ib)
    kn2 = 0.5 * (p0 * p0 + p1 * p1)         # the ReLU family's constants (_abrelu_fast)
    kc2 = (p0 - p1) * (p0 - p1) * _INV_2PI
    kab = p0 * p1
    inrange = True
    if fam == FAMILY_ABRELU:
        for u in range(nu):
            qb = q2[ib + u]
            inrange = inrange and qb > _Q_LO and qb < _Q_HI
    for j in range(nj):
        o = np.uint64(vb + j * vs)
        p = np.uint64(db + j * ds)
        qa = q1[ia + j]
        ra = r1[ia + j]
        if fam == FAMILY_ABRELU and inrange and qa > _Q_LO and qa < _Q_HI:
            for u in range(nu_):
                s = c * V[o + u] + b2
                t = c * VT[o + u] + tp * s
                k, kd = _abrelu_fast(kn2, kc2, kab, ra * r2[ib_ + u], qa * q2[ib_ + u], s)
                D[p + u] = k
                DT[p + u] = t * kd
        else:                       # other families, and variances beyond the fast range
            ska = sk1[ia + j]
            for u in range(nu_):
                s = c * V[o + u] + b2
                t = c * VT[o + u] + tp * s
                k, kd = _dual_other(fam, p0, p1, qa, q2[ib_ + u], ra, r2[ib_ + u], ska,
                                    sk2[ib_ + u], s)
                D[p + u] = k
                DT[p + u] = t * kd


@njit(cache=True, error_model="numpy")
def _in_range(q, off, n):
    """All ``q[off : off + n]`` inside the fast form's range."""
    for t in range(n):
        if not (q[off + t] > _Q_LO and q[off + t] < _Q_HI):
            return False
    return True


@njit(cache=True, inline="always", error_model="numpy")
def _flat_act(p0, p1, V, VT, vb, QA, RA, QB, RB, qb, D, DT, db, n, c, b2, cv, tb):
    """ReLU family on one flat stretch: ``s = c V[vb + t] + b2``, ``t' = c VT[.] + (cv V[.] +
    tb)`` (``cv = c, tb = b2`` in the NTK parameterization: the new term is ``s``),
    ``D[db + t] = k``, ``DT[db + t] = t' kd``, variances ``QA[t] QB[qb + t]``."""
    n_ = np.uint64(n)
    vb_ = np.uint64(vb)
    qb_ = np.uint64(qb)
    db_ = np.uint64(db)
    kn2 = 0.5 * (p0 * p0 + p1 * p1)         # the ReLU family's constants (_abrelu_fast)
    kc2 = (p0 - p1) * (p0 - p1) * _INV_2PI
    kab = p0 * p1
    for t in range(n_):
        v = V[vb_ + t]
        s = c * v + b2
        tt = c * VT[vb_ + t] + (cv * v + tb)
        k, kd = _abrelu_fast(kn2, kc2, kab, RA[t] * RB[qb_ + t], QA[t] * QB[qb_ + t], s)
        D[db_ + t] = k
        DT[db_ + t] = tt * kd


@njit(cache=True, error_model="numpy")
def _conv_full(Sin, Tin, Sout, Tout, U, UT, V, VT, QA, RA, QB, RB, ihp, iwp, ho, wo, q, c, b2,
               cv, tb, ohp, owp, olo, fam, p0, p1, q1, r1, sk1, q2, r2, sk2, off):
    """One Conv layer, padded input ``(ihp, ihp, iwp, iwp)`` -> the interior of the output
    layout ``(ohp, ohp, owp, owp)`` at offset ``olo``, activation ``fam`` fused (``-1``: none).

    Output row ``i``: ``U = sum_a Sin[((i + a) ihp + a) B + (0 .. ho B)]`` (``B = iwp^2``),
    ``V[t] = sum_b U[t + b (iwp + 1)]``; entry ``(i', j, j')`` of ``V`` is at
    ``i' B + j iwp + j'`` (done for chunks of ``i'``: the column taps of a block stay inside
    it). With the ReLU family and equal input and output row strides
    (``iwp == owp``) the activation runs on the whole flat stretch of each block, ``(wo - 1)
    iwp + wo`` entries, border columns included (their variances set to 1), which are then
    cleared: long vectorized loops instead of rows of ``wo`` entries. ``QA, RA, QB, RB`` hold
    the variances broadcast to that stretch.
    """
    B = iwp * iwp
    d = iwp + 1
    oB = owp * owp
    L = (wo - 1) * iwp + wo
    flat = (fam == FAMILY_ABRELU and iwp == owp and _in_range(q1, off, ho * wo)
            and _in_range(q2, off, ho * wo))
    if flat:
        for ip in range(ho):
            for t in range(L):
                jj = t // iwp
                u = t - jj * iwp
                if u < wo:
                    QB[ip * L + t] = q2[off + ip * wo + u]
                    RB[ip * L + t] = r2[off + ip * wo + u]
                else:
                    QB[ip * L + t] = 1.0
                    RB[ip * L + t] = 1.0
    d_ = np.uint64(d)
    cb = max(1, _CHUNK // B)          # blocks per chunk: U, V and the input rows stay in L2
    for i in range(ho):
        if flat:
            for t in range(L):
                jj = t // iwp
                if t - jj * iwp < wo:
                    QA[t] = q1[off + i * wo + jj]
                    RA[t] = r1[off + i * wo + jj]
                else:
                    QA[t] = 1.0
                    RA[t] = 1.0
        for c0 in range(0, ho, cb):
            c1 = min(ho, c0 + cb)
            m = (c1 - c0) * B
            m_ = np.uint64(m)
            m2_ = np.uint64(m - (q - 1) * d)
            b0 = np.uint64((i * ihp + c0) * B)
            if q == 3:                  # the common filter: one pass per direction
                b1 = np.uint64(((i + 1) * ihp + 1 + c0) * B)
                b2_ = np.uint64(((i + 2) * ihp + 2 + c0) * B)
                for t in range(m_):
                    U[t] = Sin[b0 + t] + Sin[b1 + t] + Sin[b2_ + t]
                    UT[t] = Tin[b0 + t] + Tin[b1 + t] + Tin[b2_ + t]
                for t in range(m2_):
                    V[t] = U[t] + U[d_ + t] + U[d_ + d_ + t]
                    VT[t] = UT[t] + UT[d_ + t] + UT[d_ + d_ + t]
            else:
                for t in range(m_):
                    U[t] = Sin[b0 + t]
                    UT[t] = Tin[b0 + t]
                for a in range(1, q):
                    ba = np.uint64(((i + a) * ihp + a + c0) * B)
                    for t in range(m_):
                        U[t] += Sin[ba + t]
                        UT[t] += Tin[ba + t]
                for t in range(m2_):
                    V[t] = U[t]
                    VT[t] = UT[t]
                for b in range(1, q):
                    bd = np.uint64(b * d)
                    for t in range(m2_):
                        V[t] += U[bd + t]
                        VT[t] += UT[bd + t]
            for ip in range(c0, c1):
                db = ((i + olo) * ohp + ip + olo) * oB + olo * owp + olo
                if flat:
                    _flat_act(p0, p1, V, VT, (ip - c0) * B, QA, RA, QB, RB, ip * L, Sout,
                              Tout, db, L, c, b2, cv, tb)
                    for jj in range(wo - 1):
                        for t in range(db + jj * owp + wo, db + (jj + 1) * owp):
                            Sout[t] = 0.0
                            Tout[t] = 0.0
                else:
                    vb = (ip - c0) * B
                    for jj in range(wo):
                        o = np.uint64(vb + jj * iwp)
                        p = np.uint64(db + jj * owp)
                        for t in range(np.uint64(wo)):
                            v = V[o + t]
                            Sout[p + t] = c * v + b2
                            Tout[p + t] = c * VT[o + t] + (cv * v + tb)
        if fam >= 0 and not flat:
            _act_rows(fam, p0, p1, q1, r1, sk1, q2, r2, sk2, off, Sout, Tout, i, ho, wo, ohp,
                      owp, olo)


@njit(cache=True, error_model="numpy")
def _act_rows(fam, p0, p1, q1, r1, sk1, q2, r2, sk2, off, S, T, i, h, w, hp, wp, lo):
    """Activation in place on output row ``i`` of the full state (layout ``hp, wp, lo``):
    the ``h`` blocks ``(i, i')``. (The one compiled copy of :func:`_block`.)"""
    B = wp * wp
    for ip in range(h):
        db = ((i + lo) * hp + ip + lo) * B + lo * wp + lo
        _block(fam, p0, p1, q1, r1, sk1, off + i * w, q2, r2, sk2, off + ip * w, S, T, db, wp,
               S, T, db, wp, w, w, 1.0, 0.0, 0.0)


@njit(cache=True, error_model="numpy")
def _wrap_fill(S, T, hp, wp, lo, h, w, rmap, cmap):
    """Fill the border of a padded layout from its interior through the axis maps (``-1``:
    zero); the interior ``[lo, lo + h) x [lo, lo + w)`` is left as it is."""
    B = wp * wp
    for ii in range(hp):
        ri = rmap[ii]
        in1 = lo <= ii < lo + h
        for iip in range(hp):
            rip = rmap[iip]
            in2 = in1 and lo <= iip < lo + h
            for jj in range(wp):
                cj = cmap[jj]
                in3 = in2 and lo <= jj < lo + w
                for jjp in range(wp):
                    if in3 and lo <= jjp < lo + w:
                        continue
                    cjp = cmap[jjp]
                    t = (ii * hp + iip) * B + jj * wp + jjp
                    if ri < 0 or rip < 0 or cj < 0 or cjp < 0:
                        S[t] = 0.0
                        T[t] = 0.0
                    else:
                        s = ((ri + lo) * hp + rip + lo) * B + (cj + lo) * wp + cjp + lo
                        S[t] = S[s]
                        T[t] = T[s]


@njit(cache=True, error_model="numpy")
def _prepare(S, T, bst, ib, lid, size):
    """Before writing a layout ``lid`` into physical buffer ``ib``: clear it if it held another
    layout (``lid >= 0``, zero border), or mark it as holding no zero border (``lid < 0``)."""
    if lid < 0:
        bst[ib] = -1
    elif bst[ib] != lid:
        for t in range(size):
            S[t] = 0.0
            T[t] = 0.0
        bst[ib] = lid


@njit(cache=True, error_model="numpy")
def _act_diag(family, p0, p1, q1, r1, sk1, q2, r2, sk2, off, S, T, n):
    """Activation in place on the diagonal state ``S[:n]`` (variances ``q1[off + t]``,
    ``q2[off + t]``); the ReLU family's fused form (:func:`_abrelu_fast`) when every variance
    is within ``[1e-140, 1e140]``, the general dual otherwise. (Flatten networks without
    pooling run the plane engine; this serves the diagonal after an AvgPool.)"""
    qa = q1[off:off + n]
    qb = q2[off:off + n]
    ra = r1[off:off + n]
    rb = r2[off:off + n]
    ska = sk1[off:off + n]
    skb = sk2[off:off + n]
    fast = family == FAMILY_ABRELU
    if fast:                # inline, not _in_range: a call here costs more than the loop
        for t in range(n):
            if not (qa[t] > _Q_LO and qa[t] < _Q_HI and qb[t] > _Q_LO and qb[t] < _Q_HI):
                fast = False
                break
    if fast:
        kn2 = 0.5 * (p0 * p0 + p1 * p1)     # the ReLU family's constants (_abrelu_fast)
        kc2 = (p0 - p1) * (p0 - p1) * _INV_2PI
        kab = p0 * p1
        for t in range(n):
            k, kd = _abrelu_fast(kn2, kc2, kab, ra[t] * rb[t], qa[t] * qb[t], S[t])
            S[t] = k
            T[t] = T[t] * kd
    else:
        for t in range(n):
            k, kd = _dual_other(family, p0, p1, qa[t], qb[t], ra[t], rb[t], ska[t], skb[t], S[t])
            S[t] = k
            T[t] = T[t] * kd


@njit(cache=True, error_model="numpy")
def _conv_diag(D, TD, D2, TD2, tD, tTD, uD, uTD, rmap, cmap, h, w, ho, wo, hp, wp, q, c, b2, cv,
               tb):
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
            v = xD[j]
            dD[j] = c * v + b2
            dT[j] = c * xT[j] + (cv * v + tb)


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
def _input_full(x, y, S, T, yT, hp, wp, lo):
    """``Sigma^0[i, i', j, j'] = <x_ij, y_i'j'> / C`` into the interior of the layout ``(hp, wp,
    lo)``, ``Theta^0 = 0``; rows of ``j'`` as flat loops over ``y`` transposed to
    ``yT[i', c, j']``."""
    H, W, C = x.shape
    for ip in range(H):
        for ch in range(C):
            for jp in range(W):
                yT[(ip * C + ch) * W + jp] = y[ip, jp, ch]
    B = wp * wp
    W_ = np.uint64(W)
    for i in range(H):
        for ip in range(H):
            for j in range(W):
                base = np.uint64(((i + lo) * hp + ip + lo) * B + (j + lo) * wp + lo)
                yo = np.uint64(ip * C * W)
                xv = x[i, j, 0]
                for jp in range(W_):
                    S[base + jp] = xv * yT[yo + jp]
                for ch in range(1, C):
                    xv = x[i, j, ch]
                    yo = np.uint64((ip * C + ch) * W)
                    for jp in range(W_):
                        S[base + jp] += xv * yT[yo + jp]
                for jp in range(W_):
                    S[base + jp] = S[base + jp] / C
                    T[base + jp] = 0.0


@njit(cache=True, inline="always", error_model="numpy")
def _dense(w2, b2, cv, tb, s, t):
    """A Dense layer on the scalar state: ``s' = w2 s + b2``; NTK parameterization (``cv < 0``)
    ``t' = w2 t + s'``, standard ``t' = (cv s + w2 t) + tb`` (fan-in ``cv``, ``tb`` 1 with
    biases, else 0; docs/conventions.md)."""
    s2 = w2 * s + b2
    if cv < 0.0:
        return s2, w2 * t + s2
    return s2, (cv * s + w2 * t) + tb


@njit(cache=True, inline="always", error_model="numpy")
def run_pair(x, y, iop, fop, pmap, q1, r1, sk1, q2, r2, sk2, selfrun, S, T, S2, T2, U, UT,
             V, VT, QA, RA, QB, RB, dg, yT, bst):
    """NNGP and NTK of one image pair, running the layer program ``iop``/``fop``.

    ``selfrun``: ``x`` is ``y``; the self statistics are computed on the way and written to
    ``q1, r1, sk1`` (and the same arrays are read as ``q2, ...``). Work arrays ``S .. T2``
    hold a full state (double-buffered, physical buffers 0 and 1 whose zero-border layouts
    ``bst`` records across calls), ``U .. VT`` a row of padded blocks, ``QA .. RB`` variances
    broadcast to it, ``dg`` a diagonal, ``yT`` the image ``y`` transposed. Inlined into
    :func:`drive` (one function to optimize instead of two nested ones).
    """
    H, W, C = x.shape
    nops = iop.shape[0]
    cur = np.int64(0)               # physical buffer of S (typed: no literal specialization)
    if iop[0, 0] == OP_CONV_F:
        hp = iop[0, I_HP]
        _prepare(S, T, bst, cur, iop[0, I_LID], hp * hp * iop[0, I_WP] * iop[0, I_WP])
        _input_full(x, y, S, T, yT, hp, iop[0, I_WP], iop[0, I_LO])
    else:
        bst[cur] = -1
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
        ohp = iop[k, O_HP]
        owp = iop[k, O_WP]
        olo = iop[k, O_LO]
        if code == OP_CONV_F:
            qf = iop[k, 1]
            ihp = iop[k, I_HP]
            iwp = iop[k, I_WP]
            if iop[k, I_WRAP]:
                _wrap_fill(S, T, ihp, iwp, iop[k, I_LO], h, w, pmap[k, 0], pmap[k, 1])
                bst[cur] = -1
            _prepare(S2, T2, bst, 1 - cur, iop[k, O_LID], ohp * ohp * owp * owp)
            ffam = -1 if selfrun else fam
            c = w2 / (qf * qf)
            cv = c if fop[k, 4] < 0 else fop[k, 4]
            tb = b2 if fop[k, 4] < 0 else fop[k, 5]
            _conv_full(S, T, S2, T2, U, UT, V, VT, QA, RA, QB, RB, ihp, iwp, ho, wo, qf, c, b2,
                       cv, tb, ohp, owp, olo, ffam, p0, p1, q1, r1, sk1, q2, r2, sk2, off)
            S, S2 = S2, S
            T, T2 = T2, T
            cur = 1 - cur
            if fam >= 0 and selfrun:
                code = OP_ACT_F          # fall through to the activation below
        if code == OP_ACT_F:
            oB = owp * owp
            if selfrun:
                for i in range(ho):
                    for j in range(wo):
                        dg[i * wo + j] = S[(i + olo) * (ohp + 1) * oB + (j + olo) * (owp + 1)]
                _record_self(fam, p0, p1, dg, ho * wo, q1, r1, sk1, off)
            for i in range(ho):
                _act_rows(fam, p0, p1, q1, r1, sk1, q2, r2, sk2, off, S, T, i, ho, wo, ohp, owp,
                          olo)
        elif code == OP_CONV_D:
            qf = iop[k, 1]
            c = w2 / (qf * qf)
            cv = c if fop[k, 4] < 0 else fop[k, 4]
            tb = b2 if fop[k, 4] < 0 else fop[k, 5]
            _conv_diag(S, T, S2, T2, U, UT, V, VT, pmap[k, 0], pmap[k, 1], h, w, ho, wo,
                       iop[k, 9], iop[k, 10], qf, c, b2, cv, tb)
            S, S2 = S2, S
            T, T2 = T2, T
            bst[1 - cur] = -1
            cur = 1 - cur
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
            _prepare(S2, T2, bst, 1 - cur, iop[k, O_LID], ohp * ohp * owp * owp)
            oB = owp * owp
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
                            t = ((I + olo) * ohp + Ip + olo) * oB + (J + olo) * owp + Jp + olo
                            S2[t] = accs * inv
                            T2[t] = acct * inv
            S, S2 = S2, S
            T, T2 = T2, T
            cur = 1 - cur
        elif code == OP_TODIAG:
            for i in range(h):
                for j in range(w):
                    t = ((i * h + i) * w + j) * w + j
                    S2[i * w + j] = S[t]
                    T2[i * w + j] = T[t]
            S, S2 = S2, S
            T, T2 = T2, T
            bst[1 - cur] = -1
            cur = 1 - cur
        elif code == OP_GAP:        # over a plain or zero-bordered layout
            n = iop[k, I_HP] * iop[k, I_HP] * iop[k, I_WP] * iop[k, I_WP]
            accs = 0.0
            acct = 0.0
            for t in range(n):
                accs += S[t]
                acct += T[t]
            s_sc = accs / (h * h * w * w)
            t_sc = acct / (h * h * w * w)
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
            s_sc, t_sc = _dense(w2, b2, fop[k, 4], fop[k, 5], s_sc, t_sc)
        elif code == OP_ACT_S:
            if selfrun:
                dg[0] = s_sc
                _record_self(fam, p0, p1, dg, np.int64(1), q1, r1, sk1, off)
            kk, kd = _dual_other(fam, p0, p1, q1[off], q2[off], r1[off], r2[off], sk1[off],
                                 sk2[off], s_sc)
            s_sc = kk
            t_sc = t_sc * kd
    return s_sc, t_sc


@njit(cache=True, inline="always", error_model="numpy")
def _write_pair(mode, i, j, a, b, out_nngp, out_ntk):
    """Store pair ``(i, j)``'s NNGP ``a`` and NTK ``b`` (see :func:`_pair_of` for ``mode``; the
    symmetric Gram is mirrored here, the self runs go to column 0)."""
    if mode == 0:
        out_nngp[i, 0] = a
        out_ntk[i, 0] = b
    else:
        out_nngp[i, j] = a
        out_ntk[i, j] = b
        if mode == 1:
            out_nngp[j, i] = a
            out_ntk[j, i] = b


@njit(cache=True, inline="always", error_model="numpy")
def _pair_count(mode, n1, n2):
    """Length of a driver's pair list (see :func:`_pair_of`)."""
    if mode == 0:
        return n1
    if mode == 1:
        return n1 * (n1 - 1) // 2
    return n1 * n2


@njit(cache=True, inline="always", error_model="numpy")
def _pair_of(t, mode, n1, n2):
    """Pair ``t`` of a driver's list: (t, t) for the self runs (mode 0), row-major over the
    strict upper triangle ``i < j`` (mode 1), row-major over ``n1 x n2`` (mode 2)."""
    if mode == 0:
        return t, t
    if mode == 1:
        i = int((2 * n1 - 1 - math.sqrt((2 * n1 - 1) ** 2 - 8 * t)) // 2)
        while i > 0 and t < i * (2 * n1 - i - 1) // 2:
            i -= 1
        while t >= (i + 1) * (2 * n1 - i - 2) // 2:
            i += 1
        return i, t - i * (2 * n1 - i - 1) // 2 + i + 1
    i = t // n2
    return i, t - i * n2


@njit(cache=True, nogil=True, error_model="numpy")
def drive(mode, X1, X2, iop, fop, pmap, nfull, nblock, chunk, nchunks, Q1, R1, SK1, Q2, R2,
          SK2, out_nngp, out_ntk):
    """The one driver: the pairs ``chunk, chunk + nchunks, ...`` of the pair list, with one set
    of work arrays. ``mode`` 0: self statistics of ``X1`` (written to ``Q1, R1, SK1``;
    ``k(x_i, x_i)`` to ``out_nngp[i, 0]``, ``out_ntk[i, 0]``); 1: symmetric Gram (``i < j``
    only, the caller fills the diagonal); 2: cross Gram. Releases the GIL: the caller runs
    one chunk per thread (Python threads rather than ``prange``: a parallel kernel around
    the pair runner took more compile time than all the rest of the engine)."""
    n1 = X1.shape[0]
    n2 = X2.shape[0]
    npairs = _pair_count(mode, n1, n2)
    if npairs <= chunk:
        return
    selfrun = mode == 0
    S = np.empty(nfull)
    T = np.empty(nfull)
    S2 = np.empty(nfull)
    T2 = np.empty(nfull)
    U = np.empty(nblock)
    UT = np.empty(nblock)
    V = np.empty(nblock)
    VT = np.empty(nblock)
    QA = np.empty(nblock)
    RA = np.empty(nblock)
    QB = np.empty(nblock)
    RB = np.empty(nblock)
    dg = np.empty(nfull)
    yT = np.empty(X2.shape[1] * X2.shape[2] * X2.shape[3])
    bst = np.full(2, -1, dtype=np.int64)
    for t in range(chunk, npairs, nchunks):
        i, j = _pair_of(t, mode, n1, n2)
        a, b = run_pair(X1[i], X2[j], iop, fop, pmap, Q1[i], R1[i], SK1[i], Q2[j], R2[j],
                        SK2[j], selfrun, S, T, S2, T2, U, UT, V, VT, QA, RA, QB, RB, dg, yT,
                        bst)
        _write_pair(mode, i, j, a, b, out_nngp, out_ntk)


# ----------------------------------------------------------------------------- plane engine
# A Conv maps the entry (i, i', j, j') of the state to a sum over (i + a, i' + a, j + b, j' + b):
# the offsets d = i' - i and e = j' - j are preserved, and so by the activations. A network
# whose full-state part is Conv and activation layers up to GlobalAvgPool therefore splits
# into independent planes P_{d,e}[i, j] = S[i, i + d, j, j + e] (offsets modulo the size for
# circular padding), each run through every layer while it sits in L1, and the GAP is the sum
# over the planes. Several pairs are computed at once with the pair index innermost: every
# loop is a flat stretch of (columns x pairs) entries, whatever the image size.


@njit(cache=True, error_model="numpy")
def _pl_border(S, T, nb, hp, wp, lo_r, lo_c, nr, nc, wrap):
    """Border of a padded ``(hp, wp, nb)`` plane around the interior ``nr x nc`` at ``(lo_r,
    lo_c)``: zero (contiguous stretches), or wrapped from the interior (circular padding)."""
    if not wrap:
        a = np.uint64(lo_r * wp * nb)
        for t in range(a):
            S[t] = 0.0
            T[t] = 0.0
        for r in range(lo_r, lo_r + nr + 1):
            a = np.uint64((r * wp - (wp - lo_c - nc)) * nb) if r > lo_r else np.uint64(0)
            a = max(a, np.uint64(lo_r * wp * nb))
            z = np.uint64((r * wp + lo_c) * nb) if r < lo_r + nr else np.uint64((r * wp) * nb)
            for t in range(a, z):
                S[t] = 0.0
                T[t] = 0.0
        for t in range(np.uint64((lo_r + nr) * wp * nb), np.uint64(hp * wp * nb)):
            S[t] = 0.0
            T[t] = 0.0
        return
    nb_ = np.uint64(nb)
    for rr in range(hp):
        inr = lo_r <= rr < lo_r + nr
        sr = (rr - lo_r) % nr + lo_r
        for cc in range(wp):
            if inr and lo_c <= cc < lo_c + nc:
                continue
            o = np.uint64((rr * wp + cc) * nb)
            sc = (cc - lo_c) % nc + lo_c
            s = np.uint64((sr * wp + sc) * nb)
            for b in range(nb_):
                S[o + b] = S[s + b]
                T[o + b] = T[s + b]


@njit(cache=True, error_model="numpy")
def _pl_taps(Sin, Tin, U, UT, V, VT, q, wp, ndo, nb):
    """Box sums of a padded plane: ``U[r] = sum_a Sin[r + a]`` (rows of ``wp nb`` entries),
    ``V[t] = sum_b U[t + b nb]``; entry ``(r, c, pair)`` of ``V`` is at ``(r wp + c) nb + pair``."""
    st = np.uint64(wp * nb)
    n = np.uint64(ndo * wp * nb)
    n2 = np.uint64(ndo * wp * nb - (q - 1) * nb)
    nb_ = np.uint64(nb)
    if q == 3:
        for t in range(n):
            U[t] = Sin[t] + Sin[st + t] + Sin[st + st + t]
            UT[t] = Tin[t] + Tin[st + t] + Tin[st + st + t]
        for t in range(n2):
            V[t] = U[t] + U[nb_ + t] + U[nb_ + nb_ + t]
            VT[t] = UT[t] + UT[nb_ + t] + UT[nb_ + nb_ + t]
        return
    for t in range(n):
        U[t] = Sin[t]
        UT[t] = Tin[t]
    for a in range(1, q):
        sa = np.uint64(a) * st
        for t in range(n):
            U[t] += Sin[sa + t]
            UT[t] += Tin[sa + t]
    for t in range(n2):
        V[t] = U[t]
        VT[t] = UT[t]
    for b in range(1, q):
        sb = np.uint64(b) * nb_
        for t in range(n2):
            V[t] += U[sb + t]
            VT[t] += UT[sb + t]


@njit(cache=True, inline="always", error_model="numpy")
def _pl_act(fam, p0, p1, fast, V, VT, vo, vs, D, DT, do, ds, nrows, n, coef, sa, ao, as_, sb, bo,
            bs, brow, bmod, WK, allf):
    """``nrows`` rows of ``n`` entries: ``s = c V[vo + r vs + t] + b2``, ``t' = c VT[.] + (cv
    V[.] + tb)``, ``D[do + r ds + t] = k(s)``, ``DT = t' kd``, variances ``QA[ao + r as_ + t]`` and
    ``QB[bo + rb bs + t]``, ``rb = brow + r`` (wrapped at ``bmod`` if ``bmod > 0``).
    ``fam < 0``: no activation, ``D = s``, ``DT = c VT + s``. ``coef = (c, b2, cv, tb)``, ``sa =
    (QA, RA, SKA)``, ``sb = (QB, RB, SKB)`` (inlined into :func:`_pl_plane`: at most 30
    arguments, or CPython passes them as a tuple that Numba cannot inline)."""
    c, b2, cv, tb = coef
    QA, RA, SKA = sa
    QB, RB, SKB = sb
    n_ = np.uint64(n)
    kn2 = 0.5 * (p0 * p0 + p1 * p1)         # the ReLU family's constants
    kc2 = (p0 - p1) * (p0 - p1) * _INV_2PI
    kab = p0 * p1
    for r in range(nrows):
        rb = brow + r
        if bmod > 0 and rb >= bmod:
            rb -= bmod
        vo_ = np.uint64(vo + r * vs)
        do_ = np.uint64(do + r * ds)
        ao_ = np.uint64(ao + r * as_)
        bo_ = np.uint64(bo + rb * bs)
        if fam < 0:
            for t in range(n_):
                v = V[vo_ + t]
                D[do_ + t] = c * v + b2
                DT[do_ + t] = c * VT[vo_ + t] + (cv * v + tb)
        elif fast:
            for t in range(n_):
                v = V[vo_ + t]
                s = c * v + b2
                tt = fma(c, VT[vo_ + t], fma(cv, v, tb))
                k, kd = _abrelu_fast(kn2, kc2, kab, RA[ao_ + t] * RB[bo_ + t],
                                      QA[ao_ + t] * QB[bo_ + t], s)
                D[do_ + t] = k
                DT[do_ + t] = tt * kd
        else:                               # s and t' first, then the activation in place
            for t in range(n_):
                v = V[vo_ + t]
                D[do_ + t] = c * v + b2
                DT[do_ + t] = c * VT[vo_ + t] + (cv * v + tb)
            _act_entries(fam, p0, p1, n, D, DT, do_, QA, RA, SKA, ao_, QB, RB, SKB, bo_, WK,
                         allf)


@njit(cache=True, inline="always", error_model="numpy")
def _pl_conv3(fam, p0, p1, fast, S, T, wp, ndo, n, nb, U, UT, D, DT, do, ds, coef, sa, ao, as_,
              sb, bo, bs, brow, bmod, WK, allf):
    """A 3 x 3 Conv with its activation (``fam < 0``: none), row by row so that the row sums
    stay in L1: ``U = S[r] + S[r + 1] + S[r + 2]`` (rows of ``wp nb`` entries), then for each
    entry ``s = c v + b2`` (``v = U[t] + U[t + nb] + U[t + 2 nb]``), ``t' = c (UT ...) + (cv v
    + tb)`` and the
    activation, written to ``D[do + r ds + t]`` (variances and packed arguments as in
    :func:`_pl_act`)."""
    c, b2, cv, tb = coef
    QA, RA, SKA = sa
    QB, RB, SKB = sb
    st = np.uint64(wp * nb)
    nb_ = np.uint64(nb)
    n_ = np.uint64(n)
    kn2 = 0.5 * (p0 * p0 + p1 * p1)         # the ReLU family's constants
    kc2 = (p0 - p1) * (p0 - p1) * _INV_2PI
    kab = p0 * p1
    for r in range(ndo):
        b0 = np.uint64(r) * st
        for t in range(st):
            U[t] = S[b0 + t] + S[b0 + st + t] + S[b0 + st + st + t]
            UT[t] = T[b0 + t] + T[b0 + st + t] + T[b0 + st + st + t]
        rb = brow + r
        if bmod > 0 and rb >= bmod:
            rb -= bmod
        do_ = np.uint64(do + r * ds)
        ao_ = np.uint64(ao + r * as_)
        bo_ = np.uint64(bo + rb * bs)
        if fam < 0:
            for t in range(n_):
                v = U[t] + U[nb_ + t] + U[nb_ + nb_ + t]
                D[do_ + t] = c * v + b2
                DT[do_ + t] = c * (UT[t] + UT[nb_ + t] + UT[nb_ + nb_ + t]) + (cv * v + tb)
        elif fast:
            for t in range(n_):
                v = U[t] + U[nb_ + t] + U[nb_ + nb_ + t]
                s = c * v + b2
                tt = fma(c, UT[t] + UT[nb_ + t] + UT[nb_ + nb_ + t], fma(cv, v, tb))
                k, kd = _abrelu_fast(kn2, kc2, kab, RA[ao_ + t] * RB[bo_ + t],
                                      QA[ao_ + t] * QB[bo_ + t], s)
                D[do_ + t] = k
                DT[do_ + t] = tt * kd
        else:                               # s and t' first, then the activation in place
            for t in range(n_):
                v = U[t] + U[nb_ + t] + U[nb_ + nb_ + t]
                D[do_ + t] = c * v + b2
                DT[do_ + t] = c * (UT[t] + UT[nb_ + t] + UT[nb_ + nb_ + t]) + (cv * v + tb)
            _act_entries(fam, p0, p1, n, D, DT, do_, QA, RA, SKA, ao_, QB, RB, SKB, bo_, WK,
                         allf)


@njit(cache=True, error_model="numpy")
def _pl_record(fam, p0, p1, V, vo, c, b2, n, nb, w, QA, RA, SKA, ao, QB, RB, SKB, bo):
    """Self pass, plane (0, 0), one row: the variances ``s = c V[vo + t] + b2`` of ``n = w nb``
    entries into the batch statistics (``QB``: rows of ``2 w`` positions, written twice)."""
    for t in range(n):
        s = c * V[vo + t] + b2
        r = math.sqrt(s)
        k11, _ = diag_dual(fam, p0, p1, s)
        sk = math.sqrt(k11)
        QA[ao + t] = s
        RA[ao + t] = r
        SKA[ao + t] = sk
        for u in (0, w * nb):
            QB[bo + u + t] = s
            RB[bo + u + t] = r
            SKB[bo + u + t] = sk


@njit(cache=True, error_model="numpy")
def _pl_fast(fam, QA, QB, ao, bo, h, w, nb, wb):
    """The ReLU family's fast form applies to a layer: its ``h x w`` positions' variances
    (``nb`` pairs each; ``QB`` in rows of ``2 w`` positions, of which the first ``wb w`` are
    filled) within the range."""
    if fam != FAMILY_ABRELU:
        return False
    for t in range(h * w * nb):
        if not (QA[ao + t] > _Q_LO and QA[ao + t] < _Q_HI):
            return False
    for i in range(h):
        o = bo + i * 2 * w * nb
        for t in range(wb * w * nb):
            if not (QB[o + t] > _Q_LO and QB[o + t] < _Q_HI):
                return False
    return True


@njit(cache=True, error_model="numpy")
def _pl_input(XB, YB, C, W, nb, d, e, H, circ, S, T, wp, lo, i0, j0, nd, ne, bkey, key):
    """Input plane ``<x_{i j}, y_{i + d, j + e}> / C`` of each pair of the batch into the
    interior of the ``(., wp, nb)`` layout of buffer 0 (rows ``i0 ..``, columns ``j0 ..``), from
    the batch's images ``XB[((i C + ch) W + j) nb + pair]``, ``YB`` the same with rows of ``2 W``
    positions (wrapped)."""
    if bkey[0] != key:
        bkey[0] = -1
    n = np.uint64(ne * nb)
    for r in range(nd):
        i = i0 + r
        ii = i + d
        if circ and ii >= H:
            ii -= H
        o = np.uint64(((r + lo) * wp + lo) * nb)
        for ch in range(C):
            xo = np.uint64(((i * C + ch) * W + j0) * nb)
            yo = np.uint64(((ii * C + ch) * 2 * W + j0 + e) * nb)
            if ch == 0:
                for t in range(n):
                    S[o + t] = XB[xo + t] * YB[yo + t]
            else:
                for t in range(n):
                    S[o + t] += XB[xo + t] * YB[yo + t]
        for t in range(n):
            S[o + t] = S[o + t] / C
            T[o + t] = 0.0


@njit(cache=True, inline="always", error_model="numpy")
def _tail(iop, fop, k0, s_sc, t_sc, selfrun, Q1, R1, SK1, i, n1, Q2, R2, SK2, j, n2, WK, TS,
          TT, allf):
    """The scalar ops ``k0 ..`` after the readout (Dense, activations) of the pair ``(i, j)``,
    statistics position-major (flat ``(nst, n)``: entry ``u n + i``); a self run records them
    (as :func:`_record_self`). An activation is :func:`_act_entries` on the one entry ``TS[0],
    TT[0]`` (the planes' duals, the same floats: no other compiled form; ``WK``: at least 3
    floats)."""
    for k in range(k0, iop.shape[0]):
        code = iop[k, 0]
        off = iop[k, 4]
        if code == OP_DENSE:
            s_sc, t_sc = _dense(fop[k, 0], fop[k, 1], fop[k, 4], fop[k, 5], s_sc, t_sc)
        elif code == OP_ACT_S:
            fam = iop[k, 3]
            p0 = fop[k, 2]
            p1 = fop[k, 3]
            a = off * n1 + i
            b = off * n2 + j
            if selfrun:
                Q1[a] = s_sc
                R1[a] = math.sqrt(s_sc)
                k11, _ = diag_dual(fam, p0, p1, s_sc)
                SK1[a] = math.sqrt(k11)
            TS[0] = s_sc
            TT[0] = t_sc
            _act_entries(fam, p0, p1, np.int64(1), TS, TT, np.uint64(0), Q1, R1, SK1,
                         np.uint64(a), Q2, R2, SK2, np.uint64(b), WK, allf)
            s_sc = TS[0]
            t_sc = TT[0]
    return s_sc, t_sc


@njit(cache=True, inline="always", error_model="numpy")
def _pl_plane(XB, YB, C, nb, d, e, circ, iop, fop, kgap, record, fastf, bst, bufs, bkey, accv,
              acct, lazy, st, idx, n1, n2, ns, wb, allfast, WK, allf):
    """Run the plane ``(d, e)`` of a batch of ``nb`` pairs through the ops ``0 .. kgap - 1``
    (Conv layers, each with or without a fused activation: the program builder never puts an
    unfused activation before GlobalAvgPool in a plane program) and add its columns to ``accv,
    acct`` (``(column, pair)``). ``record``: the self pass (plane (0, 0) of pairs ``(x, x)``):
    the variances of every activation are written into the batch statistics on the way and
    ``fastf`` is set. Buffers ``S0, T0`` / ``S1, T1`` alternate; ``bkey[b]`` is the layout
    whose zero border buffer ``b`` holds (-1: none), so a border is cleared only when a
    buffer changes layout. ``lazy`` (a single plane: Flatten): each layer's statistics are
    gathered (:func:`_pl_stats`, arguments ``st .. allfast``) into the start of ``QA ..``
    just before the layer, while the buffers are in cache; otherwise they are in place for
    every layer. ``bst = (QA, RA, SKA, QB, RB, SKB)`` (the batch statistics), ``bufs = (S0, T0,
    S1, T1, U, UT, V, VT)`` (inlined into :func:`drive_planes`, its one caller: at most 30
    arguments, see :func:`_pl_act`)."""
    QA, RA, SKA, QB, RB, SKB = bst
    S0, T0, S1, T1, U, UT, V, VT = bufs
    h = iop[0, 5]
    w = iop[0, 6]
    i0 = 0 if circ else max(0, -d)
    j0 = 0 if circ else max(0, -e)
    nd = h if circ else h - abs(d)
    ne = w if circ else w - abs(e)
    q = iop[0, 1]
    lo = 0 if iop[0, 2] == 1 else (q - 1) // 2
    tot = 0 if iop[0, 2] == 1 else q - 1
    wp = ne + tot
    hp = nd + tot
    _pl_input(XB, YB, C, w, nb, d, e, h, circ, S0, T0, wp, lo, i0, j0, nd, ne, bkey,
              (hp * 4096 + wp) * 4096 + lo)
    S = S0
    T = T0
    S2 = S1
    T2 = T1
    cur = 0
    for k in range(kgap):
        code = iop[k, 0]
        fam = iop[k, 3]
        off = iop[k, 4]
        p0 = fop[k, 2]
        p1 = fop[k, 3]
        if code == OP_CONV_F or code == OP_CONV_D:
            q = iop[k, 1]
            pad = iop[k, 2]
            if pad == 2:
                _pl_border(S, T, nb, hp, wp, lo, lo, nd, ne, np.bool_(True))
                bkey[cur] = -1
            elif pad == 0:
                key = (hp * 4096 + wp) * 4096 + lo
                if bkey[cur] != key:
                    _pl_border(S, T, nb, hp, wp, lo, lo, nd, ne, np.bool_(False))
                    bkey[cur] = key
            ho = iop[k, 7]
            wo = iop[k, 8]
            qb_ = QB
            rb_ = RB
            if lazy and fam >= 0:
                if _pl_stats(iop, k, np.int64(0), st, idx, n1, n2, ns, nb, wb, lazy, allfast,
                             fastf, QA, RA, SKA, QB, RB, SKB):
                    qb_ = st[6]         # products in QA, RA; ones on y's side
                    rb_ = st[6]
                off = 0
            ndo = ho if circ else ho - abs(d)
            neo = wo if circ else wo - abs(e)
            olo = 0             # the layout of the output: padded for the next Conv
            otot = 0
            for k2 in range(k + 1, kgap):
                if iop[k2, 0] == OP_CONV_F or iop[k2, 0] == OP_CONV_D:
                    if iop[k2, 2] != 1:
                        olo = (iop[k2, 1] - 1) // 2
                        otot = iop[k2, 1] - 1
                    break
            owp = neo + otot
            ohp = ndo + otot
            if bkey[1 - cur] != (ohp * 4096 + owp) * 4096 + olo:
                bkey[1 - cur] = -1
            c = fop[k, 0] / (q * q)
            b2 = fop[k, 1]
            cv = c if fop[k, 4] < 0 else fop[k, 4]
            tb = b2 if fop[k, 4] < 0 else fop[k, 5]
            n = neo * nb
            bcol = (2 * off + (e if circ else j0 + e)) * nb
            bmod = ho if circ else 0
            fast = fastf[k] if fam >= 0 else False
            if q == 3 and not record:
                coef = (c, b2, cv, tb)
                sa = (QA, RA, SKA)
                sb = (qb_, rb_, SKB)
                _pl_conv3(fam, p0, p1, fast, S, T, wp, ndo, n, nb, U, UT, S2, T2,
                          (olo * owp + olo) * nb, owp * nb, coef, sa, (off + i0 * wo + j0) * nb,
                          wo * nb, sb, bcol, 2 * wo * nb, i0 + d, bmod, WK, allf)
                S, S2 = S2, S
                T, T2 = T2, T
                cur = 1 - cur
                nd = ndo
                ne = neo
                hp = ohp
                wp = owp
                lo = olo
                continue
            _pl_taps(S, T, U, UT, V, VT, q, wp, ndo, nb)
            if record and fam >= 0:
                for r in range(ndo):
                    _pl_record(fam, p0, p1, V, r * wp * nb, c, b2, n, nb, wo, QA, RA, SKA,
                               (off + r * wo) * nb, QB, RB, SKB, (2 * off + r * 2 * wo) * nb)
                fastf[k] = _pl_fast(fam, QA, QB, off * nb, 2 * off * nb, ho, wo, nb, np.int64(2))
                fast = fastf[k]
            coef = (c, b2, cv, tb)
            sa = (QA, RA, SKA)
            sb = (qb_, rb_, SKB)
            _pl_act(fam, p0, p1, fast, V, VT, np.int64(0), wp * nb, S2, T2,
                    (olo * owp + olo) * nb, owp * nb, ndo, n, coef, sa,
                    (off + i0 * wo + j0) * nb, wo * nb, sb, bcol, 2 * wo * nb, i0 + d, bmod, WK,
                    allf)
            S, S2 = S2, S
            T, T2 = T2, T
            cur = 1 - cur
            nd = ndo
            ne = neo
            hp = ohp
            wp = owp
            lo = olo
    # the state after the last op: interior of the layout (lo, wp)
    n = np.uint64(ne * nb)
    for r in range(nd):
        o = np.uint64(((r + lo) * wp + lo) * nb)
        for t in range(n):
            accv[t] += S[o + t]
            acct[t] += T[o + t]


@njit(cache=True, error_model="numpy")
def _pl_gather_b(F, G, n2, FB, GB, off, dst, h, w, wb, nb, ja, seg, ns):
    """``y``'s statistics of one layer (positions ``off ..``) into the batch layout at ``dst``:
    ``FB[(2 dst + i 2 w + jj) nb + b] = F[u n2 + ja[b]]`` (``u = off + i w + jj mod w``, ``jj <
    wb w``: rows of ``2 w`` positions, wrapped), the same from ``G`` into ``GB``; per segment of
    consecutive ``ja`` a contiguous copy."""
    for i in range(h):
        for jj in range(wb * w):
            u = np.uint64(off + i * w + jj % w)
            o = np.uint64((2 * dst + i * 2 * w + jj) * nb)
            for g in range(ns):
                b0 = np.uint64(seg[g])
                b1 = np.uint64(seg[g + 1])
                src = u * n2 + np.uint64(ja[b0])
                for b in range(b1 - b0):
                    FB[o + b0 + b] = F[src + b]
                    GB[o + b0 + b] = G[src + b]


@njit(cache=True, error_model="numpy")
def _pl_stats(iop, k, dst, st, idx, n1, n2, ns, nb, wb, prod, allfast, fastf, QA, RA, SKA, QB,
              RB, SKB):
    """The statistics of layer ``k`` for a batch of pairs into the batch layout at position
    ``dst`` (``x``'s ``(position, pair)``, ``y``'s in rows of ``2 w`` positions of which ``wb
    w`` are filled), from the position-major ``st = (Q1, R1, SK1, Q2, R2, SK2)`` (flat ``(nst,
    n)``) and ``idx = (ia, ja, seg)``: the pairs' images and the segments of the batch in which
    ``x`` is one image and ``y`` consecutive ones (``ns`` segments): ``x``'s values are
    broadcast, ``y``'s copied. Sets ``fastf[k]`` (the ReLU family's fast form applies: every
    variance in range, known for the whole call when ``allfast[k]``); ``sqrt(E[phi^2])`` only
    where it does not.

    ``prod`` (the plane ``(0, 0)``, ``wb = 1``) and the fast form for the whole call: the
    products ``QA = q_x q_y``, ``RA = sqrt(q_x) sqrt(q_y)`` (``R = sqrt(Q)`` exactly, as
    recorded) in ``x``'s layout, read against ``y``'s side ``st[6]`` (ones: ``QA * 1 = QA``
    exactly, the same values as the separate factors): half the gathered data, ``x``'s
    variances read from the image-major copy ``st[7]`` (``(n1, nst)``: one contiguous row per
    ``x``), ``y``'s ``Q, R`` from the blocked copies ``st[8], st[9]`` (``(n2 / bk, nst, bk)``,
    ``bk = len(ia)``, the largest batch: the images of a segment are one or two contiguous
    stretches per position, and successive positions adjacent). Returns whether it took this
    form."""
    Q1, R1, SK1, Q2, R2, SK2, ONE, Q1I, Q2K, R2K = st
    ia, ja, seg = idx
    off = iop[k, 4]
    hh = iop[k, 7]
    ww = iop[k, 8]
    n1_ = np.uint64(n1)
    if prod and allfast[k] and wb == 1:
        nst = np.uint64(Q1I.shape[0]) // n1_
        bk = np.uint64(ia.shape[0])    # the blocks of y: the batch size
        for g in range(ns):
            b0 = np.uint64(seg[g])
            b1 = np.uint64(seg[g + 1])
            ra0 = np.uint64(ia[b0]) * nst + np.uint64(off)    # image-major: x's row
            j0 = np.uint64(ja[b0])
            # y's block rows: up to two pieces of consecutive images in blocks of bk
            p1 = min(b1 - b0, bk - j0 % bk)
            for v in range(hh * ww):
                o = np.uint64((dst + v) * nb) + b0
                qa = Q1I[ra0 + np.uint64(v)]
                ra = math.sqrt(qa)
                src = ((j0 // bk) * nst + np.uint64(off + v)) * bk + j0 % bk
                for b in range(p1):
                    QA[o + b] = qa * Q2K[src + b]
                    RA[o + b] = ra * R2K[src + b]
                src = ((j0 // bk + np.uint64(1)) * nst + np.uint64(off + v)) * bk
                for b in range(b1 - b0 - p1):
                    QA[o + p1 + b] = qa * Q2K[src + b]
                    RA[o + p1 + b] = ra * R2K[src + b]
        fastf[k] = True
        return True
    for v in range(hh * ww):
        o = np.uint64((dst + v) * nb)
        for g in range(ns):
            b0 = np.uint64(seg[g])
            b1 = np.uint64(seg[g + 1])
            a = np.uint64(off + v) * n1_ + np.uint64(ia[b0])
            qa = Q1[a]
            ra = R1[a]
            for b in range(b0, b1):
                QA[o + b] = qa
                RA[o + b] = ra
    _pl_gather_b(Q2, R2, np.uint64(n2), QB, RB, off, dst, hh, ww, wb, nb, ja, seg, ns)
    fastf[k] = allfast[k] or _pl_fast(iop[k, 3], QA, QB, dst * nb, 2 * dst * nb, hh, ww, nb,
                                      wb)
    if not fastf[k]:
        for v in range(hh * ww):
            for b in range(nb):
                SKA[(dst + v) * nb + b] = SK1[(off + v) * n1 + ia[b]]
        _pl_gather_b(SK2, SK2, np.uint64(n2), SKB, SKB, off, dst, hh, ww, wb, nb, ja, seg, ns)
    return False


@njit(cache=True, nogil=True, error_model="numpy")
def drive_planes(mode, X1, X2, iop, fop, kgap, circ, nbmax, nplane, chunk, nchunks, Q1, R1,
                 SK1, Q2, R2, SK2, Q1I, Q2K, R2K, out_nngp, out_ntk, allf):
    """:func:`drive` for networks whose layers before the readout ``iop[kgap]`` are Conv
    layers, each with or without a fused activation: batches of up to ``nbmax`` pairs, plane
    by plane (``nplane``: entries of the largest padded plane). GlobalAvgPool sums every plane;
    Flatten reads the plane ``(0, 0)`` alone, the spatial diagonal (diagonal-regime Conv ops
    run as the full-state ones on that plane). Mode 0 computes the self statistics (plane
    ``(0, 0)`` of the pairs ``(x, x)``) and then ``k(x, x)``. The batches ``chunk, chunk +
    nchunks, ...`` of the pair list are this call's: a batch is a run of consecutive pairs
    (mostly one ``x`` against consecutive ``y``), whichever the number of chunks.

    Position-major inputs: the images ``X1`` are ``(H, C, W, n1)`` (``X.transpose(1, 3, 2,
    0)``), the statistics ``Q1, R1, SK1`` are ``(nst, n1)``: a batch's ``(position, pair)``
    layout is gathered from contiguous rows (for the statistics one ``x``'s value broadcast,
    consecutive ``y``'s copied). ``Q1I``: ``Q1`` image-major, ``(n1, nst)``; ``Q2K, R2K``:
    ``Q2, R2`` in blocks of ``nbmax`` images, ``(n2 / nbmax, nst, nbmax)`` (Flatten's pair runs
    read the variances from these, :func:`_pl_stats`; otherwise unused). ``allf``: None if
    every activation of the network is of the ReLU family (relu, leaky_relu, abs, identity),
    which then compiles no other family's dual (a second specialization of the plane engine,
    as the closed-form engine's family-group kernels); otherwise ``1``."""
    H = X1.shape[0]
    C = X1.shape[1]
    W = X1.shape[2]
    n1 = X1.shape[3]
    n2 = X2.shape[3]
    X1f = X1.reshape(-1)
    X2f = X2.reshape(-1)
    npairs = _pair_count(mode, n1, n2)
    nst = Q1.shape[0]
    st = (Q1.reshape(-1), R1.reshape(-1), SK1.reshape(-1), Q2.reshape(-1), R2.reshape(-1),
          SK2.reshape(-1), np.ones(2 * nplane * nbmax), Q1I.reshape(-1), Q2K.reshape(-1),
          R2K.reshape(-1))
    Q1f, R1f, SK1f, Q2f, R2f, SK2f, _, _, _, _ = st
    hL = iop[kgap, 5]
    wL = iop[kgap, 6]
    diag = iop[kgap, 0] == OP_FLAT
    wb = 1 if diag else 2           # filled share of y's rows of 2 W (wrapped) positions
    lazy = np.bool_(diag and mode != 0)     # one plane: each layer's statistics just in time
    eager = np.bool_(False)                 # (GlobalAvgPool, and the self runs: in place)
    S0 = np.zeros(nplane * nbmax)
    T0 = np.zeros(nplane * nbmax)
    S1 = np.zeros(nplane * nbmax)
    T1 = np.zeros(nplane * nbmax)
    U = np.zeros(nplane * nbmax)
    UT = np.zeros(nplane * nbmax)
    V = np.zeros(nplane * nbmax)
    VT = np.zeros(nplane * nbmax)
    QA = np.ones(nst * nbmax)
    RA = np.ones(nst * nbmax)
    SKA = np.ones(nst * nbmax)
    QB = np.ones(2 * nst * nbmax)
    RB = np.ones(2 * nst * nbmax)
    SKB = np.ones(2 * nst * nbmax)
    XB = np.zeros(H * W * C * nbmax)
    YB = np.zeros(2 * H * W * C * nbmax)
    fastf = np.zeros(kgap, dtype=np.bool_)
    accv = np.zeros(W * nbmax)
    acct = np.zeros(W * nbmax)
    WK = np.zeros(3 * W * nbmax)    # _act_entries' work space (a row of a plane)
    TS = np.zeros(1)                # _tail's activations: one entry
    TT = np.zeros(1)
    bkey = np.full(2, -1, dtype=np.int64)
    ia = np.zeros(nbmax, dtype=np.int64)
    ja = np.zeros(nbmax, dtype=np.int64)
    seg = np.zeros(nbmax + 1, dtype=np.int64)
    idx = (ia, ja, seg)
    bst = (QA, RA, SKA, QB, RB, SKB)
    bufs = (S0, T0, S1, T1, U, UT, V, VT)
    # the layers whose variances are all within the fast form's range (checked once here,
    # otherwise per batch)
    allfast = np.zeros(kgap, dtype=np.bool_)
    if mode != 0:
        for k in range(kgap):
            off = iop[k, 4]
            m = iop[k, 7] * iop[k, 8]
            allfast[k] = (iop[k, 3] == FAMILY_ABRELU and _in_range(Q1f, off * n1, m * n1)
                          and _in_range(Q2f, off * n2, m * n2))
    # typed (not literal) arguments: one compiled copy of _pl_plane serves the self pass and
    # the other planes (a literal True/False or 0 compiles it again, and _pl_input with it;
    # tests/test_conv_planes.py checks the self pass against the full-state engine)
    rec_yes = np.bool_(True)
    rec_no = np.bool_(False)
    nbprev = -1
    wmode = 0 if mode == 0 else 2   # the symmetric Gram's lower triangle: by the caller
    for g0 in range(chunk * nbmax, npairs, nchunks * nbmax):
        nb = min(nbmax, npairs - g0)
        ns = np.int64(0)
        for b in range(nb):
            i, j = _pair_of(g0 + b, mode, n1, n2)
            ia[b] = i
            ja[b] = j
            if b == 0 or i != ia[b - 1] + (mode == 0) or j != ja[b - 1] + 1:
                seg[ns] = b         # segments: one x (mode 0: x = y) against consecutive y
                ns += 1
        seg[ns] = nb
        # the batch's images, pair index innermost (y in rows of 2 W positions); per segment
        # x's pixel broadcast (mode 0: copied, x = y), y's copied
        for r in range(H * C):
            for j in range(W):
                o = np.uint64((r * W + j) * nb)
                for g in range(ns):
                    b0 = np.uint64(seg[g])
                    b1 = np.uint64(seg[g + 1])
                    src = np.uint64((r * W + j) * n1 + ia[b0])
                    if mode == 0:
                        for b in range(b1 - b0):
                            XB[o + b0 + b] = X1f[src + b]
                    else:
                        xv = X1f[src]
                        for b in range(b0, b1):
                            XB[o + b] = xv
            for j in range(wb * W):
                o = np.uint64((r * 2 * W + j) * nb)
                for g in range(ns):
                    b0 = np.uint64(seg[g])
                    b1 = np.uint64(seg[g + 1])
                    src = np.uint64((r * W + j % W) * n2 + ja[b0])
                    for b in range(b1 - b0):
                        YB[o + b0 + b] = X2f[src + b]
        for t in range(W * nb):
            accv[t] = 0.0
            acct[t] = 0.0
        if nb != nbprev:            # nb changed the layouts' strides
            bkey[0] = -1
            bkey[1] = -1
            nbprev = nb
        if mode != 0 and not lazy:
            for k in range(kgap):
                if iop[k, 3] >= 0:
                    _pl_stats(iop, k, iop[k, 4], st, idx, n1, n2, ns, nb, wb, eager, allfast,
                              fastf, QA, RA, SKA, QB, RB, SKB)
        # one call site of _pl_plane (inlined): pass 0 of mode 0 is the self pass (plane
        # (0, 0), recording), then the planes of the pair runs: (0, 0) for Flatten, every
        # offset (modulo the size for circular padding) for GlobalAvgPool
        for ps in range(2 if mode == 0 else 1):
            rec = mode == 0 and ps == 0
            d0 = 0 if rec or diag or circ else 1 - hL
            e0 = 0 if rec or diag or circ else 1 - wL
            d1 = 1 if rec or diag else hL
            e1 = 1 if rec or diag else wL
            recf = rec_yes if rec else rec_no
            for d in range(d0, d1):
                for e in range(e0, e1):
                    _pl_plane(XB, YB, C, nb, d, e, circ, iop, fop, kgap, recf, fastf, bst, bufs,
                              bkey, accv, acct, lazy, st, idx, n1, n2, ns, wb, allfast, WK, allf)
            if rec:
                for t in range(W * nb):
                    accv[t] = 0.0
                    acct[t] = 0.0
                for u in range(nst):
                    for b in range(nb):
                        Q1f[u * n1 + ia[b]] = QA[u * nb + b]
                        R1f[u * n1 + ia[b]] = RA[u * nb + b]
                        SK1f[u * n1 + ia[b]] = SKA[u * nb + b]
        npos = hL * wL if diag else hL * hL * wL * wL
        for b in range(nb):
            s_sc = 0.0
            t_sc = 0.0
            for cc in range(W):
                s_sc += accv[cc * nb + b]
                t_sc += acct[cc * nb + b]
            s_sc = s_sc / npos
            t_sc = t_sc / npos
            i = ia[b]
            j = ja[b]
            a, bb = _tail(iop, fop, kgap + 1, s_sc, t_sc, mode == 0, Q1f, R1f, SK1f, i, n1,
                          Q2f, R2f, SK2f, j, n2, WK, TS, TT, allf)
            _write_pair(wmode, i, j, a, bb, out_nngp, out_ntk)
