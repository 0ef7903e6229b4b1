"""Scaling of the block computation behind infntk.distributed.gram, and an extrapolation.

Measures, for a ReLU network, the time of one cross block ``net.kernels(Xi, Xj)`` of
``c x c`` pairs for growing ``c`` and several depths, reports the throughput in
pair-layers per second (``c^2 (L + 1) / time``), then times ``distributed.gram`` end to end
(``gram_to_npy``) on the local threaded scheduler, writing both kernels to ``.npy`` memmaps, and extrapolates
to a ``10^5 x 10^5`` Gram matrix.

Usage::

    python benchmarks/bench_distributed.py            # about a minute
    python benchmarks/bench_distributed.py --quick    # a few seconds

Numbers depend on the machine and its load; the README quotes one run.
"""
import argparse
import os
import tempfile
import time

import numpy as np

import infntk


def _best(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def block_scaling(sizes, depths, d, repeat):
    rng = np.random.default_rng(0)
    rows = []
    for L in depths:
        net = infntk.FCNet("relu", depth=L, w_std=2 ** 0.5, b_std=0.1)
        net.kernels(rng.standard_normal((8, d)), rng.standard_normal((8, d)))  # compile/load
        for c in sizes:
            Xi, Xj = rng.standard_normal((c, d)), rng.standard_normal((c, d))
            t = _best(lambda: net.kernels(Xi, Xj), repeat)
            rows.append((L, c, t, c * c * (L + 1) / t, c * c / t))
            print(f"depth {L:3d}  block {c:5d} x {c:<5d} d={d}: {t:8.3f} s  "
                  f"{c * c * (L + 1) / t:10.3e} pair-layers/s  {c * c / t:10.3e} pairs/s")
    return rows


def end_to_end(n, chunk, depth, d):
    from infntk.distributed import gram_to_npy
    X = np.random.default_rng(1).standard_normal((n, d))
    net = infntk.FCNet("relu", depth=depth, w_std=2 ** 0.5, b_std=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        gram_to_npy(net, X, path=os.path.join(tmp, "K"), chunks=chunk)
        t = time.perf_counter() - t0
    pairs = n * (n + 1) / 2   # lower triangle with the diagonal (upper blocks transposed)
    print(f"gram -> .npy, n={n}, chunk={chunk}, depth={depth}: {t:.2f} s, "
          f"{pairs * (depth + 1) / t:.3e} pair-layers/s (NNGP and NTK written to .npy)")
    return pairs * (depth + 1) / t


def extrapolate(rate_blocks, rate_e2e, n=100_000, depth=3, chunk=4096):
    pairs = n * (n + 1) / 2
    disk = n * n * 8
    mem = 2 * chunk * chunk * 8 * 2   # both kernels of a block, plus the transposed copy
    for label, rate in (("block compute only", rate_blocks), ("end to end", rate_e2e)):
        t = pairs * (depth + 1) / rate
        print(f"extrapolated n={n:.0e}, depth={depth}, {label}: {t / 60:.0f} min on this "
              f"machine at {rate:.2e} pair-layers/s")
    print(f"disk {disk / 2 ** 30:.0f} GiB per kernel; ~{mem / 2 ** 20:.0f} MiB per block in "
          f"flight per worker thread (chunk {chunk})")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    d = 32
    if a.quick:
        rows = block_scaling([256, 512, 1024], [3], d, repeat=2)
        e2e = end_to_end(2048, 512, 3, d)
    else:
        rows = block_scaling([512, 1024, 2048, 4096], [1, 3, 10], d, repeat=3)
        e2e = end_to_end(8192, 2048, 3, d)
    big = [r for r in rows if r[0] == 3]
    extrapolate(big[-1][3], e2e)


if __name__ == "__main__":
    main()
