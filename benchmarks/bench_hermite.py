"""Benchmark: Hermite coefficients for many variances at once, and sphere spectra.

Run: ``python benchmarks/bench_hermite.py [--m 10000] [--K 50] [--kmax 200]``.

Reports, for each activation, the time to compute ``a_0..a_K`` for ``m`` variances spread
over ``[0.05, 4]`` (one per row and layer of a Gram computation), its cost per variance, and
the accuracy against 30-digit mpmath values at a few variances; then the time of
``sphere_eigenvalues`` at ``kmax`` for a 2-layer relu NTK (closed form written here) and for an
``infntk.FCNet`` if available.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from infntk import hermite as H
from infntk.spectrum import sphere_eigenvalues


def _best_of(fn, repeat=3):
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_coefficients(m, K):
    q = np.linspace(0.05, 4.0, m)
    print(f"coefficients: m = {m} variances in [0.05, 4], K = {K}")
    print(f"{'activation':>12} {'time [s]':>9} {'us/variance':>12} {'max err vs mp':>14}")
    for name in ("relu", "tanh", "sigmoid", "gelu", "softplus", "elu"):
        t, A = _best_of(lambda: H.coefficients(name, K, q))
        idx = [0, m // 2, m - 1]
        err = 0.0
        for i in idx:
            ref = np.array([float(x) for x in H.coefficients(name, K, q[i], precision="mp",
                                                             dps=30)])
            err = max(err, float(np.max(np.abs(A[i] - ref))) / math.sqrt(H.second_moment(name, q[i])))
        print(f"{name:>12} {t:9.3f} {1e6 * t / m:12.2f} {err:14.1e}")
    t, _ = _best_of(lambda: H.dual_series("tanh", q, q[::-1], np.linspace(-1, 1, m), K))
    print(f"dual_series(tanh, m pairs, K={K}) incl. coefficients and tails: {t:.3f} s")


def bench_spectrum(kmax):
    def ntk(t):
        t = np.clip(t, -1.0, 1.0)
        th = np.arccos(t)
        nngp = (np.sqrt((1 - t) * (1 + t)) + (np.pi - th) * t) / (2 * np.pi)
        return nngp + t * (np.pi - th) / (2 * np.pi)

    print(f"\nsphere_eigenvalues: kmax = {kmax}")
    for d in (2, 10, 100, 1000):
        for method in ("angle", "jacobi"):
            t0 = time.perf_counter()
            sphere_eigenvalues(ntk, d, kmax, method=method)
            first = time.perf_counter() - t0
            t, s = _best_of(lambda: sphere_eigenvalues(ntk, d, kmax, method=method), repeat=2)
            print(f"  relu NTK closed form, d = {d:4d}, {method:>6}: first call {first:.3f} s, "
                  f"rules cached {t:.3f} s, max error estimate {np.max(s.error):.1e}")
    try:
        import infntk
        net = infntk.FCNet("relu", depth=3, w_std=math.sqrt(2), b_std=0.1)
        t, s = _best_of(lambda: sphere_eigenvalues(net, 50, kmax), repeat=2)
        print(f"  FCNet(relu, depth 3), d = 50: {t:.3f} s, max error estimate {np.max(s.error):.1e}")
    except Exception as exc:  # pragma: no cover - FCNet may not be available
        print(f"  FCNet skipped: {exc}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=10_000)
    p.add_argument("--K", type=int, default=50)
    p.add_argument("--kmax", type=int, default=200)
    args = p.parse_args()
    bench_coefficients(args.m, args.K)
    bench_spectrum(args.kmax)


if __name__ == "__main__":
    main()
