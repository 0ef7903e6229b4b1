"""Independent 50-digit reference for the closed-form NNGP and NTK kernels (the test oracle).

A plain mpmath evaluation of the layerwise recursion (docs/conventions.md), for both
parameterizations, with its own implementation of every closed-form dual (the formulas of
``docs/closed_forms.md``). It imports nothing from :mod:`infntk` except the activation registry,
and only to normalize names and parameters; it shares no code with the compiled engine. At 50
digits the cancellations that the float64 engine must avoid (``arccos`` near 1, ``sin - x cos``
for small angles, ...) cost at most ~25 digits, so plain formulas suffice here.

Public names
------------
``mp_kernels(activation, X1, X2=None, depth, w_std, b_std, parameterization="ntk", width=None,
dps=50, **params) -> (nngp, ntk)`` float64 Gram matrices (rounded from mpf);
``mp_diag(...) -> (nngp_diag, ntk_diag)``; ``mp_kernels_depths(...)`` for several depths at the
cost of the deepest; ``mp_dual(activation, q1, q2, s, **params) -> (F, G)`` the single-layer
duals; ``load_reference_cases(path=None)`` the stored cases of ``tests/data/reference_kernels.npz``
(made by ``scripts/make_references.py``).

Conventions
-----------
* Inputs are float64 arrays, converted exactly to mpf; ``w_std``, ``b_std`` (floats) likewise.
* Degenerate rows (docs/conventions.md): any pair involving a row with ``Sigma(x, x) = 0`` gets
  correlation 0
  (``theta = pi/2``, ``s = 0``), including that row's own diagonal entry; the closed forms are
  evaluated at ``q = 0`` as limits (relu: ``F = 0``, ``G = 1/4``; step: ``F = 1/4``).
* Step and sign: ``phi' = 0`` (``G = 0``).

Example
-------
>>> import numpy as np
>>> X = np.array([[1.0, 0.0], [0.0, 2.0]])
>>> nngp, ntk = mp_kernels("relu", X, depth=2, w_std=2 ** 0.5, b_std=None)
>>> bool(np.allclose(np.diag(nngp), (X ** 2).sum(1)))  # relu, w_std^2 = 2, d = 2
True
"""
from __future__ import annotations

import os

import mpmath as mp
import numpy as np

from infntk.activations import get_activation

__all__ = ["mp_dual", "mp_kernels", "mp_kernels_depths", "mp_diag", "load_reference_cases",
           "DEFAULT_DATA_PATH"]

# the stored references live in tests/data/, one level above this package
DEFAULT_DATA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "data", "reference_kernels.npz")


# ----------------------------------------------------------------------------- duals
def _angle(q1, q2, s, same):
    """(theta, s) with the degenerate-row convention; ``same`` marks a row with itself."""
    if q1 == 0 or q2 == 0:
        return mp.pi / 2, mp.mpf(0)
    if same:
        return mp.mpf(0), s
    r = s / mp.sqrt(q1 * q2)
    r = min(max(r, mp.mpf(-1)), mp.mpf(1))
    return mp.acos(r), s


def _J(n, t):
    """Cho & Saul's J_n(theta), n = 0..3."""
    c, sn, pi = mp.cos(t), mp.sin(t), mp.pi
    if n == 0:
        return pi - t
    if n == 1:
        return sn + (pi - t) * c
    if n == 2:
        return 3 * sn * c + (pi - t) * (1 + 2 * c ** 2)
    if n == 3:
        return 15 * sn - 11 * sn ** 3 + (pi - t) * (9 * sn ** 2 * c + 15 * c ** 3)
    raise ValueError(f"n must be 0..3, got {n}")


def _abrelu(a, b):
    a, b = mp.mpf(a), mp.mpf(b)

    def dual(q1, q2, s, t):
        S = mp.sin(t) - t * mp.cos(t)
        F = (a * a + b * b) * s / 2 + (a - b) ** 2 * mp.sqrt(q1 * q2) * S / (2 * mp.pi)
        G = (a * a + b * b) / 2 - (a - b) ** 2 * t / (2 * mp.pi)
        return F, G
    return dual


def _abstep(a, b):
    a, b = mp.mpf(a), mp.mpf(b)

    def dual(q1, q2, s, t):
        return (a * a + b * b) / 2 - (a - b) ** 2 * t / (2 * mp.pi), mp.mpf(0)
    return dual


def _arccos(n):
    def dual(q1, q2, s, t):
        F = mp.power(q1 * q2, mp.mpf(n) / 2) * _J(n, t) / (2 * mp.pi)
        G = n * n * mp.power(q1 * q2, mp.mpf(n - 1) / 2) * _J(n - 1, t) / (2 * mp.pi)
        return F, G
    return dual


def _erf(q1, q2, s, t):
    A, B = 1 + 2 * q1, 1 + 2 * q2
    F = 2 / mp.pi * mp.asin(2 * s / mp.sqrt(A * B))
    G = 4 / mp.pi / mp.sqrt(A * B - 4 * s * s)
    return F, G


def _sin(q1, q2, s, t):
    e = mp.exp(-(q1 + q2) / 2)
    return e * mp.sinh(s), e * mp.cosh(s)


def _cos(q1, q2, s, t):
    e = mp.exp(-(q1 + q2) / 2)
    return e * mp.cosh(s), e * mp.sinh(s)


def _gaussian(q1, q2, s, t):
    det = (1 + q1) * (1 + q2) - s * s
    return 1 / mp.sqrt(det), s / det ** mp.mpf(1.5)


def _gelu(q1, q2, s, t):
    P = (1 + q1) * (1 + q2)
    D2 = P - s * s
    Dl = mp.sqrt(D2)
    asn = mp.asin(s / mp.sqrt(P))
    F = s / 4 + (s * asn + (s * s + q1 * q2 * D2) / (P * Dl)) / (2 * mp.pi)
    G = mp.mpf(1) / 4 + asn / (2 * mp.pi) + s / (2 * mp.pi * Dl) * ((2 + q1 + q2) / P + 1 / D2)
    return F, G


def _dual_for(activation, params):
    """The (q1, q2, s, theta) -> (F, G) function for a registry activation."""
    act = get_activation(activation, **params)
    name, p = act.name, act.params
    if name == "relu":
        return _abrelu(0, 1)
    if name == "leaky_relu":
        return _abrelu(p["alpha"], 1)
    if name == "abs":
        return _abrelu(-1, 1)
    if name == "identity":
        return _abrelu(1, 1)
    if name == "step":
        return _abstep(0, 1)
    if name == "sign":
        return _abstep(-1, 1)
    if name == "arccos":
        n = p["n"]
        return {0: _abstep(0, 1), 1: _abrelu(0, 1)}.get(n) or _arccos(n)
    table = {"erf": _erf, "sin": _sin, "cos": _cos, "gaussian": _gaussian, "gelu": _gelu}
    if name in table:
        return table[name]
    raise ValueError(f"activation {name!r} has no closed form in the mpmath reference.")


def mp_dual(activation, q1, q2, s, same=False, dps=50, **params):
    """The single-layer duals ``(E[phi(u)phi(v)], E[phi'(u)phi'(v)])`` as mpf numbers.

    Parameters
    ----------
    activation : str
        A closed-form activation name of the registry (parameters as keyword arguments).
    q1, q2, s : float, str or mpf
        ``(u, v) ~ N(0, [[q1, s], [s, q2]])``; ``q1, q2 >= 0``, ``s^2 <= q1 q2``.
    same : bool
        The pair is a row with itself (``theta = 0`` exactly).
    """
    dual = _dual_for(activation, params)
    with mp.workdps(dps):
        q1, q2, s = mp.mpf(q1), mp.mpf(q2), mp.mpf(s)
        t, s = _angle(q1, q2, s, same)
        return dual(q1, q2, s, t)


# ----------------------------------------------------------------------------- recursion
def _to_mp(X, name):
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {X.shape}.")
    X = X.astype(np.float64)
    return [[mp.mpf(float(v)) for v in row] for row in X]


def _check_args(depths, parameterization, width):
    if parameterization not in ("ntk", "standard"):
        raise ValueError(f"parameterization must be 'ntk' or 'standard', got {parameterization!r}.")
    if parameterization == "standard" and (width is None or int(width) < 1):
        raise ValueError("width: the standard parameterization needs a positive integer width.")
    if any(int(L) < 0 for L in depths):
        raise ValueError(f"depth must be >= 0, got {depths}.")


class _Layers:
    """Evaluate the recursion on a list of (i, j, same) pairs, recording requested depths."""

    def __init__(self, activation, w_std, b_std, parameterization, width, params):
        self.dual = _dual_for(activation, params)
        self.w2 = mp.mpf(float(w_std)) ** 2
        self.has_bias = b_std is not None
        self.b2 = mp.mpf(float(b_std)) ** 2 if b_std is not None else mp.mpf(0)
        self.param = parameterization
        self.width = None if width is None else mp.mpf(int(width))

    def run(self, A, B, pairs, depths):
        """Per depth in ``depths``: dict pair -> (nngp, ntk) as mpf."""
        d = mp.mpf(len(A[0]))
        wanted = sorted(set(int(L) for L in depths))
        Lmax = wanted[-1]
        nA, nB = len(A), len(B)
        # row variances of both sides, per layer, as "pairs" of a row with itself
        dotA = [mp.fdot(r, r) / d for r in A]
        dotB = [mp.fdot(r, r) / d for r in B]
        K = {p: mp.fdot(A[p[0]], B[p[1]]) / d for p in pairs}
        KA, KB = dotA, dotB
        # first Dense layer
        if self.param == "ntk":
            K = {p: self.w2 * k + self.b2 for p, k in K.items()}
            T = dict(K)
        else:
            T = {p: d * k + (1 if self.has_bias else 0) for p, k in K.items()}
            K = {p: self.w2 * k + self.b2 for p, k in K.items()}
        KA = [self.w2 * k + self.b2 for k in KA]
        KB = [self.w2 * k + self.b2 for k in KB]
        out = {}
        if 0 in wanted:
            out[0] = {p: (K[p], T[p]) for p in pairs}
        for layer in range(1, Lmax + 1):
            newK, newT = {}, {}
            for p in pairs:
                i, j, same = p
                q1, q2 = KA[i], KB[j]
                t, s = _angle(q1, q2, K[p], same)
                F, G = self.dual(q1, q2, s, t)
                if self.param == "ntk":
                    newK[p] = self.w2 * F + self.b2
                    newT[p] = newK[p] + self.w2 * G * T[p]
                else:
                    newT[p] = self.width * F + self.w2 * (G * T[p]) + (1 if self.has_bias else 0)
                    newK[p] = self.w2 * F + self.b2
            KA = [self.w2 * self.dual(q, q, q, _angle(q, q, q, True)[0])[0] + self.b2 for q in KA]
            KB = [self.w2 * self.dual(q, q, q, _angle(q, q, q, True)[0])[0] + self.b2 for q in KB]
            K, T = newK, newT
            if layer in wanted:
                out[layer] = {p: (K[p], T[p]) for p in pairs}
        return out


def mp_kernels_depths(activation, X1, X2=None, depths=(1,), w_std=1.0, b_std=0.0,
                      parameterization="ntk", width=None, dps=50, **params):
    """NNGP and NTK Gram matrices at several depths, by one 50-digit recursion.

    Parameters
    ----------
    activation : str
        Closed-form activation name (registry), parameters as keyword arguments.
    X1 : ndarray, shape (n1, d)
    X2 : ndarray, shape (n2, d), optional
        ``None`` means ``X1`` (the symmetric Gram; rows paired with themselves get
        ``theta = 0`` exactly).
    depths : sequence of int
        Numbers of hidden layers ``L >= 0``.
    w_std, b_std : float
        ``b_std=None``: layers without biases (differs from 0.0 only for ``"standard"``).
    parameterization : {"ntk", "standard"}
    width : int
        Hidden width, only for ``"standard"`` (its NTK depends on it).
    dps : int
        Working decimal digits.

    Returns
    -------
    dict
        ``depth -> (nngp, ntk)``, float64 arrays of shape (n1, n2) rounded from mpf.
    """
    _check_args(depths, parameterization, width)
    with mp.workdps(dps):
        A = _to_mp(X1, "X1")
        sym = X2 is None
        B = A if sym else _to_mp(X2, "X2")
        if len(A[0]) != len(B[0]):
            raise ValueError("X1 and X2 must have the same number of columns.")
        n1, n2 = len(A), len(B)
        if sym:
            pairs = [(i, j, i == j) for i in range(n1) for j in range(i, n1)]
        else:
            pairs = [(i, j, False) for i in range(n1) for j in range(n2)]
        layers = _Layers(activation, w_std, b_std, parameterization, width, params)
        res = layers.run(A, B, pairs, depths)
        out = {}
        for L, vals in res.items():
            nngp = np.empty((n1, n2))
            ntk = np.empty((n1, n2))
            for (i, j, _), (k, t) in vals.items():
                nngp[i, j] = float(k)
                ntk[i, j] = float(t)
                if sym:
                    nngp[j, i] = nngp[i, j]
                    ntk[j, i] = ntk[i, j]
            out[L] = (nngp, ntk)
        return out


def mp_kernels(activation, X1, X2=None, depth=1, w_std=1.0, b_std=0.0, parameterization="ntk",
               width=None, dps=50, **params):
    """``(nngp, ntk)`` float64 Gram matrices of one depth (see :func:`mp_kernels_depths`)."""
    return mp_kernels_depths(activation, X1, X2, (depth,), w_std, b_std, parameterization,
                             width, dps, **params)[int(depth)]


def mp_diag(activation, X, depth=1, w_std=1.0, b_std=0.0, parameterization="ntk", width=None,
            dps=50, **params):
    """``(nngp_diag, ntk_diag)``: k(x, x) per row, float64 arrays of shape (n,)."""
    _check_args((depth,), parameterization, width)
    with mp.workdps(dps):
        A = _to_mp(X, "X")
        pairs = [(i, i, True) for i in range(len(A))]
        layers = _Layers(activation, w_std, b_std, parameterization, width, params)
        vals = layers.run(A, A, pairs, (depth,))[int(depth)]
        nngp = np.array([float(vals[p][0]) for p in pairs])
        ntk = np.array([float(vals[p][1]) for p in pairs])
        return nngp, ntk


# ----------------------------------------------------------------------------- stored cases
def load_reference_cases(path=None):
    """The stored 50-digit reference cases (``tests/data/reference_kernels.npz``).

    Returns
    -------
    list of dict
        One dict per case with keys ``activation`` (str), ``params`` (dict, e.g.
        ``{"alpha": 0.1}``, pass as ``**params`` to ``infntk.FCNet``), ``depth`` (int),
        ``w_std`` (float), ``b_std`` (float or None), ``parameterization`` (str), ``width``
        (int or None), ``geometry`` (``"near"``: nearly identical/antipodal/zero rows, or
        ``"norms"``: parallel rows of norms 1e-3..1e3 and a zero row), ``X`` (float64, shape
        (n, 5), shared by the cases of one geometry), ``nngp`` and ``ntk`` (float64, shape
        (n, n), the 50-digit values rounded once, ``X`` against itself), and ``id`` (a readable
        name for pytest ids).

    Example
    -------
    >>> cases = load_reference_cases()
    >>> c = cases[0]
    >>> sorted(c)[:4]
    ['X', 'activation', 'b_std', 'depth']
    """
    import json
    path = DEFAULT_DATA_PATH if path is None else path
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in z.files if k != "meta"}
    cases = []
    for m in meta:
        g, k = m["geometry"], m["index"]
        c = dict(m)
        c["X"] = arrays[f"X_{g}"]
        c["nngp"] = arrays[f"nngp_{g}"][k]
        c["ntk"] = arrays[f"ntk_{g}"][k]
        ps = ",".join(f"{a}={v}" for a, v in c["params"].items())
        c["id"] = (f"{g}-{c['activation']}{'(' + ps + ')' if ps else ''}-"
                   f"{c['parameterization']}{'' if c['width'] is None else c['width']}"
                   f"-L{c['depth']}-w{c['w_std']}-b{c['b_std']}")
        cases.append(c)
    return cases
