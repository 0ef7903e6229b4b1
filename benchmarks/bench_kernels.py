"""Throughput of FCNet's compiled closed-form engine, against a plain NumPy baseline.

Prints, for every closed form (relu, leaky_relu, abs, step, erf, gelu, sin, cos, gaussian),
depth 3 and 10, n = 4000, d = 100, NNGP and NTK together, symmetric (X2 = None) and cross
(X2 = a second set of n points): wall time, pair-layers per second (n1 n2 L / s, counting
every entry of the output even where symmetry lets the engine compute one triangle), the
rate of entries actually computed ("computed/s": n (n + 1) / 2 L / s in the symmetric case,
so the two modes compare per unit of work), the rate excluding the X X^T product, the ratio
against a vectorized NumPy implementation of the same recursion run in the same process,
and the largest difference to it relative to the kernel scale ("agree"; the NumPy formulas
lose digits where they cancel). Then cold start: a fresh process importing infntk and computing a 100 x 100
Gram matrix, with an empty Numba cache and with a warm one.

Usage: python benchmarks/bench_kernels.py [--n 4000] [--d 100] [--depths 3,10]
       [--activations relu,erf] [--no-cold-start]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import infntk
from _timing import best_of  # noqa: E402  (benchmarks/_timing.py)


# (a, b) of phi = b relu(x) + a min(x, 0); step is b 1(x > 0) + a 1(x < 0)
_ABRELU = {"relu": (0.0, 1.0), "leaky_relu": (0.01, 1.0), "abs": (-1.0, 1.0)}
_ABSTEP = {"step": (0.0, 1.0)}
ACTIVATIONS = ("relu", "leaky_relu", "abs", "step", "erf", "gelu", "sin", "cos", "gaussian")


def numpy_dual(act, q1, q2, S):
    """(k, kd) = (E[phi(u) phi(v)], E[phi'(u) phi'(v)]) in plain NumPy, broadcasting.

    The textbook formulas (clipped arccos for the angle, no care for cancellation): the
    baseline users would write, not a reference of record.
    """
    m = np.sqrt(q1 * q2)
    if act in _ABRELU or act in _ABSTEP:
        a, b = _ABRELU.get(act) or _ABSTEP[act]
        with np.errstate(invalid="ignore", divide="ignore"):
            th = np.arccos(np.clip(np.where(m > 0, S / m, 0.0), -1.0, 1.0))
        step = ((a * a + b * b) * (np.pi - th) + 2 * a * b * th) / (2 * np.pi)
        if act in _ABSTEP:
            return step, np.zeros_like(step)
        j1 = np.sin(th) + (np.pi - th) * np.cos(th)       # J_1(theta)
        j1c = np.sin(th) - th * np.cos(th)                # J_1(pi - theta)
        return m * ((a * a + b * b) * j1 - 2 * a * b * j1c) / (2 * np.pi), step
    if act == "erf":
        D = np.sqrt((1 + 2 * q1) * (1 + 2 * q2))
        return (2 / np.pi * np.arcsin(2 * S / D),
                4 / np.pi / np.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * S ** 2))
    if act in ("sin", "cos"):
        e = np.exp(-0.5 * (q1 + q2))
        sh, ch = e * np.sinh(S), e * np.cosh(S)
        return (sh, ch) if act == "sin" else (ch, sh)
    if act == "gaussian":
        det = (1 + q1) * (1 + q2) - S ** 2
        return 1 / np.sqrt(det), S / det ** 1.5
    if act == "gelu":
        P = (1 + q1) * (1 + q2)
        D2 = P - S ** 2
        Dl = np.sqrt(D2)
        at = np.arctan2(S, Dl)
        F = 0.25 * S + (S * at + (S ** 2 + q1 * q2 * D2) / (P * Dl)) / (2 * np.pi)
        G = 0.25 + at / (2 * np.pi) + S / (2 * np.pi * Dl) * ((2 + q1 + q2) / P + 1 / D2)
        return F, G
    raise ValueError(act)


def numpy_baseline(act, X1, X2, depth, w_std, b_std):
    """The same recursion (ntk parameterization) vectorized over whole matrices in NumPy."""
    d = X1.shape[1]
    w2, b2 = w_std ** 2, b_std ** 2
    S = w2 * (X1 @ X2.T) / d + b2
    q1 = (w2 * (X1 ** 2).sum(1) / d + b2)[:, None]
    q2 = (w2 * (X2 ** 2).sum(1) / d + b2)[None, :]
    T = S.copy()
    for _ in range(depth):
        k, kd = numpy_dual(act, q1, q2, S)
        q1 = w2 * numpy_dual(act, q1, q1, q1)[0] + b2
        q2 = w2 * numpy_dual(act, q2, q2, q2)[0] + b2
        S = w2 * k + b2
        T = S + w2 * kd * T
    return S, T



def cold_start(cache_dir):
    code = ("import time; t = time.perf_counter(); import numpy as np, infntk; "
            "X = np.random.default_rng(0).standard_normal((100, 10)); "
            "infntk.FCNet('relu', depth=3).kernels(X); "
            "print(time.perf_counter() - t)")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return time.perf_counter() - t, float(out.stdout.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--depths", type=lambda t: [int(v) for v in t.split(",")], default=[3, 10])
    ap.add_argument("--activations", help="comma-separated (default: every closed form)")
    ap.add_argument("--no-cold-start", action="store_true")
    args = ap.parse_args()
    import numba
    print(f"infntk {infntk.__version__}, numba {numba.__version__}, threads "
          f"{numba.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.d))
    Y = rng.standard_normal((args.n, args.d))
    t_gram, _ = best_of(lambda: X @ X.T, args.repeats)
    print(f"X X^T alone ({args.n} x {args.d}): {t_gram:.3f} s")
    print(f"{'act':10} {'L':>3} {'mode':5} {'time s':>8} {'pair-layers/s':>14} "
          f"{'computed/s':>11} {'excl. XX^T':>12} {'numpy s':>8} {'speed-up':>8} {'agree':>8}")
    acts = args.activations.split(",") if args.activations else ACTIVATIONS
    for act in acts:
        for depth in args.depths:
            w_std = 2 ** 0.5 if act in _ABRELU else 1.4
            net = infntk.FCNet(act, depth=depth, w_std=w_std, b_std=0.1)
            net.kernels(X[:8])       # compile / load from cache outside the timing
            for mode, X2 in (("sym", None), ("cross", Y)):
                t, k = best_of(lambda: net.kernels(X, X2), args.repeats)
                Xb = X if X2 is None else X2
                tb, (S, T) = best_of(lambda: numpy_baseline(act, X, Xb, depth, w_std, 0.1), 1)
                scale = max(np.abs(k.nngp).max(), np.abs(k.ntk).max())
                agree = max(np.abs(k.nngp - S).max(), np.abs(k.ntk - T).max()) / scale
                pl = args.n * args.n * depth
                computed = pl if X2 is not None else args.n * (args.n + 1) // 2 * depth
                print(f"{act:10} {depth:3d} {mode:5} {t:8.3f} {pl / t:14.3g} "
                      f"{computed / t:11.3g} {pl / max(t - t_gram, 1e-9):12.3g} {tb:8.3f} "
                      f"{tb / t:8.1f}x {agree:8.1e}", flush=True)
                del k, S, T
    if args.no_cold_start:
        return
    with tempfile.TemporaryDirectory() as cache:
        wall, inproc = cold_start(cache)
        print(f"cold start, empty Numba cache: {wall:.2f} s wall ({inproc:.2f} s import+compute)")
        wall, inproc = cold_start(cache)
        print(f"cold start, warm Numba cache:  {wall:.2f} s wall ({inproc:.2f} s import+compute)")


if __name__ == "__main__":
    main()
