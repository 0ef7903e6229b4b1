"""Throughput of FCNet's compiled closed-form engine, against a plain NumPy baseline.

Prints, for relu and erf, depth 3 and 10, n = 4000, d = 100, NNGP and NTK together,
symmetric (X2 = None) and cross (X2 = a second set of n points):
wall time, pair-layers per second (n1 n2 L / s, counting every entry of the output even
where symmetry lets the engine compute one triangle), the same excluding the X X^T product,
and the ratio against a vectorized NumPy implementation of the same recursion run in the
same process. Then cold start: a fresh process importing infntk and computing a 100 x 100
Gram matrix, with an empty Numba cache and with a warm one.

Usage: python benchmarks/bench_kernels.py [--n 4000] [--d 100] [--quick]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from scipy import special

import infntk


def numpy_baseline(act, X1, X2, depth, w_std, b_std):
    """The same recursion (ntk parameterization) vectorized over whole matrices in NumPy.

    Deliberately plain (arccos of the clipped correlation): this is the baseline users would
    write, not a reference of record.
    """
    d = X1.shape[1]
    w2, b2 = w_std ** 2, b_std ** 2
    S = w2 * (X1 @ X2.T) / d + b2
    q1 = w2 * (X1 ** 2).sum(1) / d + b2
    q2 = w2 * (X2 ** 2).sum(1) / d + b2
    T = S.copy()
    for _ in range(depth):
        if act == "relu":
            m = np.sqrt(np.outer(q1, q2))
            rho = np.clip(S / m, -1.0, 1.0)
            th = np.arccos(rho)
            k = m * (np.sqrt(1 - rho ** 2) + (np.pi - th) * rho) / (2 * np.pi)
            kd = (np.pi - th) / (2 * np.pi)
            q1, q2 = w2 * q1 / 2 + b2, w2 * q2 / 2 + b2
        else:
            D = np.sqrt(np.outer(1 + 2 * q1, 1 + 2 * q2))
            k = 2 / np.pi * np.arcsin(2 * S / D)
            kd = 4 / np.pi / np.sqrt(D ** 2 - 4 * S ** 2)
            q1 = w2 * 2 / np.pi * np.arcsin(2 * q1 / (1 + 2 * q1)) + b2
            q2 = w2 * 2 / np.pi * np.arcsin(2 * q2 / (1 + 2 * q2)) + b2
        S = w2 * k + b2
        T = S + w2 * kd * T
    return S, T


def best_of(f, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


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
    args = ap.parse_args()
    import numba
    print(f"infntk {infntk.__version__}, numba {numba.__version__}, threads {numba.get_num_threads()}")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.d))
    Y = rng.standard_normal((args.n, args.d))
    t_gram = best_of(lambda: X @ X.T, args.repeats)
    print(f"X X^T alone ({args.n} x {args.d}): {t_gram:.3f} s")
    print(f"{'act':5} {'L':>3} {'mode':5} {'time s':>8} {'pair-layers/s':>14} "
          f"{'excl. XX^T':>12} {'numpy s':>8} {'speed-up':>8}")
    for act in ("relu", "erf"):
        for depth in (3, 10):
            net = infntk.FCNet(act, depth=depth, w_std=1.4, b_std=0.1)
            net.kernels(X[:8])       # compile / load from cache outside the timing
            for mode, X2 in (("sym", None), ("cross", Y)):
                t = best_of(lambda: net.kernels(X, X2), args.repeats)
                Xb = X if X2 is None else X2
                tb = best_of(lambda: numpy_baseline(act, X, Xb, depth, 1.4, 0.1), 1)
                pl = args.n * args.n * depth
                print(f"{act:5} {depth:3d} {mode:5} {t:8.3f} {pl / t:14.3g} "
                      f"{pl / max(t - t_gram, 1e-9):12.3g} {tb:8.3f} {tb / t:8.1f}x")
    with tempfile.TemporaryDirectory() as cache:
        wall, inproc = cold_start(cache)
        print(f"cold start, empty Numba cache: {wall:.2f} s wall ({inproc:.2f} s import+compute)")
        wall, inproc = cold_start(cache)
        print(f"cold start, warm Numba cache:  {wall:.2f} s wall ({inproc:.2f} s import+compute)")


if __name__ == "__main__":
    main()
