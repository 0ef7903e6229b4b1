"""Independent high-precision reference for convolutional NNGP/NTK kernels (tiny images).

A plain mpmath evaluation of the CNTK recursion of Arora et al. (2019, their eqs. for
``Sigma^(h)``, ``K^(h)``, ``Theta^(h)``) with neural-tangents' normalisation (input covariance
``<x_p, y_p'> / C``, patch trace divided by ``q^2``, shared bias), always carrying the FULL
spatial covariance of the pair and of both self pairs: it knows nothing of the diagonal regime,
the separable passes or the padding tables of the compiled engine. The single-layer duals are
those of ``tests/mp_reference.py`` (mpmath closed forms). Layers are given as the JSON-style
dicts of ``scripts/make_nt_references.py``.

Cost: ``O(P^2 q^2)`` mpf operations and ``3 P^2`` dual evaluations per layer and pair; use it on
3 x 3 or 4 x 4 images.
"""
from __future__ import annotations

import mpmath as mp
import numpy as np

from oracles.mp_reference import mp_dual

__all__ = ["mp_conv_kernels"]


def _taps(n, q, padding):
    """Output size and, per output index, the list over taps of source indices (None: zero)."""
    if padding == "valid":
        n_out, lo = n - q + 1, 0
    else:
        n_out, lo = n, (q - 1) // 2
    table = []
    for o in range(n_out):
        row = []
        for a in range(q):
            s = o + a - lo
            if padding == "circular":
                s %= n
            elif not 0 <= s < n:
                s = None
            row.append(s)
        table.append(row)
    return n_out, table


class _State:
    """Full covariances as dicts {(i, j, i2, j2): mpf} for the pairs (x,x), (y,y), (x,y)."""

    def __init__(self, x, y, same):
        H, W, C = x.shape
        self.h, self.w, self.same = H, W, same
        X = [[[mp.mpf(float(v)) for v in x[i, j]] for j in range(W)] for i in range(H)]
        Y = [[[mp.mpf(float(v)) for v in y[i, j]] for j in range(W)] for i in range(H)]

        def cov(A, B):
            return {(i, j, k, l): mp.fsum(a * b for a, b in zip(A[i][j], B[k][l])) / C
                    for i in range(H) for j in range(W) for k in range(H) for l in range(W)}
        self.S = {"xx": cov(X, X), "yy": cov(Y, Y), "xy": cov(X, Y)}
        self.T = {key: {p: mp.mpf(0) for p in self.S[key]} for key in self.S}

    def keys(self):
        return [(i, j, k, l) for i in range(self.h) for j in range(self.w)
                for k in range(self.h) for l in range(self.w)]

    def conv(self, q, padding, w_std, b_std, fan_in=None):
        """``fan_in``: the standard parameterization (neural-tangents' ``stax.Conv``): the NTK
        is ``fan_in mean_taps(K) + w^2 mean_taps(Theta)`` (+1 with biases), ``fan_in = q^2
        C_in``; ``None``: the NTK parameterization, ``w^2 mean_taps(Theta) + Sigma'``."""
        ho, ti = _taps(self.h, q, padding)
        wo, tj = _taps(self.w, q, padding)
        c = mp.mpf(w_std) ** 2 / (q * q)
        b2 = mp.mpf(0 if b_std is None else b_std) ** 2
        for key in self.S:
            S, T = self.S[key], self.T[key]
            nS, nT = {}, {}
            for i in range(ho):
                for j in range(wo):
                    for k in range(ho):
                        for l in range(wo):
                            acc_s, acc_t = mp.mpf(0), mp.mpf(0)
                            for a in range(q):
                                for b in range(q):
                                    p = (ti[i][a], tj[j][b], ti[k][a], tj[l][b])
                                    if None in p:
                                        continue
                                    acc_s += S[p]
                                    acc_t += T[p]
                            s = c * acc_s + b2
                            nS[(i, j, k, l)] = s
                            if fan_in is None:
                                nT[(i, j, k, l)] = c * acc_t + s
                            else:
                                nT[(i, j, k, l)] = (mp.mpf(fan_in) * acc_s / (q * q) + c * acc_t
                                                    + (0 if b_std is None else 1))
            self.S[key], self.T[key] = nS, nT
        self.h, self.w = ho, wo

    def act(self, name, params, dps, dual=mp_dual):
        Sxx, Syy = dict(self.S["xx"]), dict(self.S["yy"])
        for key, (A, B, same_img) in {"xx": (Sxx, Sxx, True), "yy": (Syy, Syy, True),
                                      "xy": (Sxx, Syy, self.same)}.items():
            S, T = self.S[key], self.T[key]
            for (i, j, k, l), s in list(S.items()):
                q1, q2 = A[(i, j, i, j)], B[(k, l, k, l)]
                same = same_img and (i, j) == (k, l)
                kk, kd = dual(name, q1, q2, s, same=same, dps=dps, **params)
                S[(i, j, k, l)] = kk
                T[(i, j, k, l)] = T[(i, j, k, l)] * kd

    def pool(self, win):
        ho, wo = self.h // win, self.w // win
        for key in self.S:
            S, T = self.S[key], self.T[key]
            nS, nT = {}, {}
            for I in range(ho):
                for J in range(wo):
                    for K in range(ho):
                        for L in range(wo):
                            ps = [(I * win + a, J * win + b, K * win + c, L * win + d)
                                  for a in range(win) for b in range(win)
                                  for c in range(win) for d in range(win)]
                            nS[(I, J, K, L)] = mp.fsum(S[p] for p in ps) / len(ps)
                            nT[(I, J, K, L)] = mp.fsum(T[p] for p in ps) / len(ps)
            self.S[key], self.T[key] = nS, nT
        self.h, self.w = ho, wo

    def readout(self, kind):
        out = {}
        for key in self.S:
            S, T = self.S[key], self.T[key]
            if kind == "flatten":
                ps = [(i, j, i, j) for i in range(self.h) for j in range(self.w)]
            else:
                ps = list(S)
            out[key] = [mp.fsum(S[p] for p in ps) / len(ps), mp.fsum(T[p] for p in ps) / len(ps)]
        return out


def _pair(x, y, same, layers, dps, width, dual=mp_dual):
    with mp.workdps(dps):
        st = _State(x, y, same)
        sc = None
        chans = x.shape[2]          # channels of the representation (width after a Conv)
        for L in layers:
            kind = L["layer"]
            std = L.get("parameterization", "ntk") == "standard"
            if sc is None:
                if kind == "conv":
                    st.conv(L["filter"], L["padding"], L["w_std"], L["b_std"],
                            L["filter"] ** 2 * chans if std else None)
                    chans = width
                elif kind == "activation":
                    st.act(L["name"], L.get("params", {}), dps, dual)
                elif kind == "avgpool":
                    st.pool(L["window"])
                elif kind in ("flatten", "gap"):
                    sc = st.readout(kind)
                    if chans is not None:
                        chans = chans * st.h * st.w if kind == "flatten" else chans
                else:
                    raise ValueError(f"{kind} before the readout")
            elif kind == "dense":
                w2 = mp.mpf(L["w_std"]) ** 2
                b2 = mp.mpf(0 if L["b_std"] is None else L["b_std"]) ** 2
                for key in sc:
                    s = w2 * sc[key][0] + b2
                    if std:
                        sc[key] = [s, mp.mpf(chans) * sc[key][0] + w2 * sc[key][1]
                                   + (0 if L["b_std"] is None else 1)]
                    else:
                        sc[key] = [s, w2 * sc[key][1] + s]
                chans = width
            elif kind == "activation":
                q1, q2 = sc["xx"][0], sc["yy"][0]
                for key, (a, b, sm) in {"xx": (q1, q1, True), "yy": (q2, q2, True),
                                        "xy": (q1, q2, same)}.items():
                    kk, kd = dual(L["name"], a, b, sc[key][0], same=sm, dps=dps,
                                  **L.get("params", {}))
                    sc[key] = [kk, sc[key][1] * kd]
            else:
                raise ValueError(f"{kind} after the readout")
        return sc["xy"]


def mp_conv_kernels(layers, X1, X2=None, dps=30, width=None, dual=mp_dual):
    """(nngp, ntk) float64 Gram matrices of the layer dicts ``layers`` at ``dps`` digits
    (``width``: the hidden channels, for layers with ``"parameterization": "standard"``;
    ``dual(name, q1, q2, s, same, dps, **params) -> (k, kd)`` the single-layer dual, by
    default the closed forms of ``oracles.mp_reference``)."""
    X1 = np.asarray(X1, dtype=np.float64)
    same_set = X2 is None
    X2 = X1 if same_set else np.asarray(X2, dtype=np.float64)
    n1, n2 = X1.shape[0], X2.shape[0]
    nngp = np.empty((n1, n2))
    ntk = np.empty((n1, n2))
    for i in range(n1):
        for j in range(n2):
            if same_set and j < i:
                nngp[i, j], ntk[i, j] = nngp[j, i], ntk[j, i]
                continue
            s, t = _pair(X1[i], X2[j], same_set and i == j, layers, dps, width, dual)
            nngp[i, j], ntk[i, j] = float(s), float(t)
    return nngp, ntk
