"""Write tests/data/reference_kernels.npz: 50-digit NNGP/NTK Gram matrices on hard inputs.

The references come from ``tests/oracles/mp_reference.py`` (pure mpmath, independent of
the compiled engine). Run from the repository root::

    python scripts/make_references.py               # both files
    python scripts/make_references.py --extra-only  # only reference_kernels_extra.npz

Contents
--------
Two input geometries (the accuracy contract, docs/conventions.md), each a float64 array with
d = 5 columns, stored exactly:

* ``X_near`` (8 rows): a generic random row ``x``; rows at relative distance
  ``||y - x|| / ||x|| = 1e-2, 1e-4, 1e-6, 1e-8, 1e-10`` from it (random directions); a nearly
  antipodal row ``-x + 1e-8 ||x|| u``; a zero row.
* ``X_norms`` (6 rows): ``x``, and the parallel rows ``1e-3 x``, ``1e3 x``, ``7.3e2 x`` (not a
  power of two, so not exactly parallel after rounding), ``0.37 x``; a zero row.

They are separate so that the error measure "relative to max |K|" of one Gram is not swamped by
the 1e3 row when checking the nearly identical pairs.

For every closed-form activation (relu, leaky_relu alpha=0.1, abs, identity, step, sign,
arccos n=0..3, erf, sin, cos, gaussian, gelu):

* ``"ntk"`` parameterization, ``w_std in {1.0, 1.5}`` x ``b_std in {None, 0.0, 0.3}``,
  depths 0, 1, 2, 3, 10, 100;
* ``"standard"`` with ``width=512``, ``(w_std, b_std) in {(1.5, None), (1.0, 0.0), (1.0, 0.3)}``,
  depths 0, 1, 3, 10;
* arccos n = 2, 3: depths <= 3 only (their variances grow or vanish doubly exponentially, and
  overflow float64 beyond that); any case with a non-finite float64 entry is dropped.

Arrays: ``X_near``, ``X_norms``, ``nngp_near``/``ntk_near`` (cases, 8, 8),
``nngp_norms``/``ntk_norms`` (cases, 6, 6), and ``meta``: a JSON list (one entry per case, in the
order near cases then norms cases) of ``{activation, params, depth, w_std, b_std,
parameterization, width, geometry, index}``. Load with
``oracles.mp_reference.load_reference_cases`` (with ``tests/`` on ``sys.path``, as in the tests).

A second file, ``tests/data/reference_kernels_extra.npz`` (same layout, ``ntk``
parameterization), holds the classes of :func:`extra_classes`: input norms 1e-100 and 1e100
(every closed form whose kernel is representable, depths 1 and 3; the oracle works at 450
digits for the huge rows), even activations (cos, gaussian, abs) on nearly antipodal rows at
``w_std`` 1, 1.5 and 3 to depth 100, sin at variances 1e-6 .. 1e-80, the chaotic regime
(``CHAOS_RUNS``: sin, erf, gelu, cos, gaussian at ``w_std`` 1.5 and 3, depths 20, 100 and 200,
on nearly identical, parallel and nearly antipodal rows; some with biases or the standard
parameterization; each checked to give the same float64 values at 30 more digits), and step,
sign, relu, abs at row norm 1e-150.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from oracles.mp_reference import mp_kernels_depths  # noqa: E402

OUT = os.path.join(ROOT, "tests", "data", "reference_kernels.npz")
OUT_EXTRA = os.path.join(ROOT, "tests", "data", "reference_kernels_extra.npz")
SEED = 20240607
D = 5

ACTIVATIONS = [
    ("relu", {}), ("leaky_relu", {"alpha": 0.1}), ("abs", {}), ("identity", {}), ("step", {}),
    ("sign", {}), ("arccos", {"n": 0}), ("arccos", {"n": 1}), ("arccos", {"n": 2}),
    ("arccos", {"n": 3}), ("erf", {}), ("sin", {}), ("cos", {}), ("gaussian", {}), ("gelu", {}),
]
NTK_DEPTHS = [0, 1, 2, 3, 10, 100]
STD_DEPTHS = [0, 1, 3, 10]
NTK_COMBOS = [(w, b) for w in (1.0, 1.5) for b in (None, 0.0, 0.3)]
STD_COMBOS = [(1.5, None), (1.0, 0.0), (1.0, 0.3)]
WIDTH = 512


def geometries():
    """The two hard input sets (deterministic)."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=D)
    nx = np.linalg.norm(x)

    def away(rel):
        u = rng.normal(size=D)
        return x + rel * nx * u / np.linalg.norm(u)

    near = [x] + [away(r) for r in (1e-2, 1e-4, 1e-6, 1e-8, 1e-10)]
    u = rng.normal(size=D)
    near.append(-x + 1e-8 * nx * u / np.linalg.norm(u))
    near.append(np.zeros(D))
    norms = [x, 1e-3 * x, 1e3 * x, 7.3e2 * x, 0.37 * x, np.zeros(D)]
    return {"near": np.array(near), "norms": np.array(norms)}


# ----------------------------------------------------------------------------- extra classes
#: (geometry, activations, runs [(w_std, b_std, depths)], dps) of the second file
SCALE_ACTS = [a for a in ACTIVATIONS if not (a[0] == "arccos" and a[1]["n"] >= 2)]
EVEN_ACTS = [("cos", {}), ("gaussian", {}), ("abs", {})]


def extra_geometries():
    """Input scales and even-activation geometries of the second file (deterministic).

    * ``tiny``/``huge``: 4 random rows (two of them parallel up to 1e-9) times 1e-100 / 1e100:
      every kernel of the closed forms (but arccos n >= 2) is representable in float64.
    * ``antipodal``: ``x + 1e-10 |x| e``, ``-x``, ``x + 1e-5 |x| e'``, ``-(1 + 1e-8) x``:
      even activations map nearly antipodal rows to nearly identical features.
    * ``sin1e-3`` .. ``sin1e-40``: 4 random rows scaled to small variance.
    """
    rng = np.random.default_rng(SEED + 1)
    Y = rng.normal(size=(4, D))
    Y[1] = Y[0] * (1 + 1e-9)
    x = rng.normal(size=D)
    e = rng.normal(size=D)
    e /= np.linalg.norm(e)
    nx = np.linalg.norm(x)
    anti = np.array([x + 1e-10 * nx * e, -x, x + 1e-5 * nx * e[::-1], -x * (1 + 1e-8)])
    Z = rng.normal(size=(4, D))
    out = {"tiny": Y * 1e-100, "huge": Y * 1e100, "antipodal": anti}
    for sc in ("1e-3", "1e-4", "1e-7", "1e-40"):
        out["sin" + sc] = Z * float(sc)
    # chaotic regime: nearly identical (angle and radius), parallel, nearly antipodal rows
    c = rng.normal(size=D)
    c *= 2.0 / np.linalg.norm(c)          # |c|^2 / d = 0.8
    nc = np.linalg.norm(c)
    u = rng.normal(size=(3, D))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    out["chaos"] = np.array([c, c + 1e-8 * nc * u[0], c * (1 + 1e-9), -c + 1e-8 * nc * u[1],
                             c + 1e-4 * nc * u[2], rng.normal(size=D)])
    # step and sign at row norm 1e-150 (the pair's gaps are ~1e-300 before scaling)
    out["tiny150"] = Y * 1e-150
    return out


#: chaotic-regime classes: (activation, w_std, b_std, parameterization, width)
CHAOS_RUNS = ([(a, w, None, "ntk", None) for a in ("sin", "erf", "gelu", "cos", "gaussian")
               for w in (1.5, 3.0)]
              + [("sin", 3.0, 0.3, "ntk", None), ("gelu", 1.5, 0.3, "ntk", None),
                 ("erf", 3.0, 0.3, "standard", 512), ("gelu", 3.0, None, "standard", 512)])


def extra_classes():
    """(geometry, activation, params, w_std, b_std, depths, dps[, parameterization, width])
    of the second file (parameterization ``"ntk"`` unless given)."""
    out = []
    for g in ("tiny", "huge"):
        for act, params in SCALE_ACTS:
            # huge inputs: 1 + 2 q ~ 1e200 must not swamp D = q1 q2 - s^2 in the oracle
            out.append((g, act, params, 1.0, None, (1, 3), 450 if g == "huge" else 50))
    for act, params in EVEN_ACTS:
        for w in (1.0, 1.5, 3.0):
            depths = (3, 50) if (act == "gaussian" and w == 3.0) else (3, 50, 100)
            out.append(("antipodal", act, params, w, None, depths, 80))
    for sc in ("1e-3", "1e-4", "1e-7", "1e-40"):
        out.append(("sin" + sc, "sin", {}, 1.0, None, (1, 3), 50))
    for act, w, b, par, width in CHAOS_RUNS:
        # gelu's variance grows like (w^2 / 2)^L (1e130 at w = 3, depth 200): P - s^2 ~ q of
        # P ~ q^2 needs 2 log10(q) more digits in the oracle
        dps = (350 if w == 3.0 else 80) if act == "gelu" else 50
        out.append(("chaos", act, {}, w, b, (20, 100, 200), dps, par, width))
    for act in ("step", "sign", "relu", "abs"):
        out.append(("tiny150", act, {}, 1.0, None, (1, 3), 50))
    return out


def _stable(act, X, depths, w, b, par, width, dps, res, params):
    """Recompute at dps + 30 digits: the float64 values must not move (chaotic classes)."""
    hi = mp_kernels_depths(act, X, None, depths, w, b, par, width, dps=dps + 30, **params)
    for L in depths:
        for a, e in zip(res[L], hi[L]):
            if np.max(np.abs(a - e)) > 1e-15 * np.max(np.abs(e)):
                raise RuntimeError(f"unstable reference: {act} w={w} L={L} at {dps} digits")


def main_extra():
    geo = extra_geometries()
    meta, store = [], {g: ([], []) for g in geo}
    t0 = time.time()
    for g, act, params, w, b, depths, dps, *pw in extra_classes():
        par, width = pw if pw else ("ntk", None)
        res = mp_kernels_depths(act, geo[g], None, depths, w, b, par, width, dps=dps, **params)
        if g == "chaos":
            _stable(act, geo[g], depths, w, b, par, width, dps, res, params)
        for L in depths:
            nngp, ntk = res[L]
            if not (np.all(np.isfinite(nngp)) and np.all(np.isfinite(ntk))):
                print(f"  dropped (not finite in float64): {g} {act} w={w} L={L}")
                continue
            store[g][0].append(nngp)
            store[g][1].append(ntk)
            meta.append({"activation": act, "params": params, "depth": L, "w_std": w,
                         "b_std": b, "parameterization": par, "width": width,
                         "geometry": g, "index": len(store[g][0]) - 1})
    arrays = {"meta": np.array(json.dumps(meta))}
    for g, X in geo.items():
        if store[g][0]:
            arrays[f"X_{g}"] = X
            arrays[f"nngp_{g}"] = np.array(store[g][0])
            arrays[f"ntk_{g}"] = np.array(store[g][1])
    _save(OUT_EXTRA, arrays)
    print(f"{len(meta)} extra cases, {time.time() - t0:.0f} s -> {OUT_EXTRA}")


def _save(path, arrays):
    """np.savez_compressed to a temporary name in the same directory, then os.replace."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main():
    if "--extra-only" in sys.argv:
        main_extra()
        return
    geo = geometries()
    meta = []
    store = {g: ([], []) for g in geo}
    t0 = time.time()
    for gname, X in geo.items():
        for act, params in ACTIVATIONS:
            t1 = time.time()
            limit = 3 if act == "arccos" and params["n"] >= 2 else None
            runs = [("ntk", None, w, b, NTK_DEPTHS) for w, b in NTK_COMBOS]
            runs += [("standard", WIDTH, w, b, STD_DEPTHS) for w, b in STD_COMBOS]
            for par, width, w, b, depths in runs:
                if limit is not None:
                    depths = [L for L in depths if L <= limit]
                res = mp_kernels_depths(act, X, None, depths, w, b, par, width, **params)
                for L in depths:
                    nngp, ntk = res[L]
                    if not (np.all(np.isfinite(nngp)) and np.all(np.isfinite(ntk))):
                        print(f"  dropped (not finite in float64): {gname} {act}{params} {par} "
                              f"w={w} b={b} L={L}")
                        continue
                    store[gname][0].append(nngp)
                    store[gname][1].append(ntk)
                    meta.append({"activation": act, "params": params, "depth": L, "w_std": w,
                                 "b_std": b, "parameterization": par, "width": width,
                                 "geometry": gname, "index": len(store[gname][0]) - 1})
            print(f"{gname:5s} {act}{params}: {time.time() - t1:.1f} s", flush=True)
    arrays = {"meta": np.array(json.dumps(meta))}
    for g, X in geo.items():
        arrays[f"X_{g}"] = X
        arrays[f"nngp_{g}"] = np.array(store[g][0])
        arrays[f"ntk_{g}"] = np.array(store[g][1])
    _save(OUT, arrays)
    print(f"{len(meta)} cases, {os.path.getsize(OUT) / 1e6:.2f} MB, {time.time() - t0:.0f} s -> {OUT}")
    main_extra()


if __name__ == "__main__":
    main()
