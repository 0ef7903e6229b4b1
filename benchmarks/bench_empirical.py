"""Benchmark of the empirical NTK of infntk.empirical.MLP (a script that prints figures).

1. Width 4096, depth 3, n = 512, d = 64: time of ``mlp.ntk(X)`` (target <= 3 s on 2 cores),
   float64 and float32, with the split between features (forward + backward passes) and
   Gram products, and the peak memory traced by ``tracemalloc``.
2. A blocked run at large n (default n = 10^4): time and peak traced memory, or, with
   ``--extrapolate``, an extrapolation from n = 2048 using the cost model
   ``t(n) = a n + b n^2`` (features linear, Grams quadratic in n).

Usage::

    python benchmarks/bench_empirical.py [--large-n 10000] [--extrapolate] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc

import numpy as np

from infntk.empirical import MLP


def timed(fn, repeat):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def traced_peak(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return dt, peak, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--large-n", type=int, default=10_000)
    ap.add_argument("--extrapolate", action="store_true",
                    help="estimate the large-n run from n = 2048 instead of running it")
    args = ap.parse_args(argv)

    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.d))
    print(f"\n1. NTK of MLP(width={args.width}, depth={args.depth}, relu), n={args.n}, "
          f"d={args.d} (best of {args.repeat})")
    for dtype in (np.float64, np.float32):
        t0 = time.perf_counter()
        mlp = MLP(args.width, args.depth, "relu", seed=0, input_dim=args.d, dtype=dtype)
        t_init = time.perf_counter() - t0
        Xc = X.astype(dtype)
        t_feat, F = timed(lambda: mlp._features(Xc), args.repeat)
        t_gram, _ = timed(lambda: mlp._gram_from_features(F, F), args.repeat)
        del F
        t_ntk, K = timed(lambda: mlp.ntk(X), args.repeat)
        _, peak, _ = traced_peak(lambda: mlp.ntk(X))
        print(f"   {np.dtype(dtype).name}: ntk {t_ntk:.2f} s (features {t_feat:.2f} s + Grams "
              f"{t_gram:.2f} s); init {t_init:.2f} s; peak traced memory {peak / 2**20:.0f} MB "
              f"(weights {sum(p.nbytes for p in mlp.params) / 2**20:.0f} MB, not counted)")
        del mlp, K

    N = args.large_n
    print(f"\n2. Blocked NTK at n={N} (width {args.width}, depth {args.depth}, d {args.d}, "
          "float64)")
    mlp = MLP(args.width, args.depth, "relu", seed=0, input_dim=args.d)
    per_row = 8 * (2 * args.depth * args.width + args.d + 1)
    print(f"   features: {per_row / 1024:.0f} KB per row; output {8 * N * N / 2**30:.2f} GB; "
          f"default block {mlp._default_block(None)} rows")
    if args.extrapolate:
        ts = {}
        for n in (1024, 2048):
            Xn = rng.standard_normal((n, args.d))
            ts[n], _ = timed(lambda: mlp.ntk(Xn), 1)
        # t = a n + b n^2 through the two points
        b = (ts[2048] / 2048 - ts[1024] / 1024) / 1024
        a = ts[1024] / 1024 - b * 1024
        est = a * N + b * N * N
        mem = 8 * N * N + per_row * N + 2 * per_row * mlp._default_block(None)
        print(f"   measured n=1024: {ts[1024]:.1f} s, n=2048: {ts[2048]:.1f} s -> "
              f"estimated n={N}: {est:.0f} s; memory estimate {mem / 2**30:.2f} GB "
              "(output + cached features + one block)")
    else:
        XN = rng.standard_normal((N, args.d))
        dt, peak, K = traced_peak(lambda: mlp.ntk(XN))
        print(f"   time {dt:.1f} s, peak traced memory {peak / 2**30:.2f} GB "
              f"(output alone {K.nbytes / 2**30:.2f} GB); symmetric: {np.array_equal(K, K.T)}")


if __name__ == "__main__":
    main()
