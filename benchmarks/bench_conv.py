"""Per-pair time of the convolutional NNGP+NTK: 8x8 and 28x28 images, depth 5 and 10,
Flatten ("vanilla", diagonal regime) and GlobalAvgPool (full regime); relu, Conv(3, "same").

Run with infntk's environment::

    PYTHONPATH=. python benchmarks/bench_conv.py            # infntk timings
    /work/nt-venv/bin/python benchmarks/bench_conv.py --nt  # the same nets in neural-tangents

(the second prints neural-tangents' per-pair times on CPU; paste both, or run with ``--nt-python
PATH`` from infntk's environment to launch it as a subprocess and print the ratios). Baseline
for the ratio column "vs NumPy": a plain NumPy prototype measured 4.6 ms per pair for 8x8 GAP
depth 10 and 1.06 s for 28x28 GAP depth 10. The first call compiles (not timed).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import numpy as np

CASES = [(8, 5), (8, 10), (28, 5), (28, 10)]
NUMPY_PROTOTYPE = {(8, 10, "gap"): 4.6e-3, (28, 10, "gap"): 1.06}


def n_images(size, readout):
    if readout == "flatten":
        return 64 if size == 8 else 32
    return 24 if size == 8 else 4


def images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 1))


def time_infntk():
    from infntk import Activation, Dense
    from infntk.conv import Conv, Flatten, GlobalAvgPool, conv_kernels
    w = math.sqrt(2.0)
    out = {}
    for size, depth in CASES:
        for readout in ("flatten", "gap"):
            ro = Flatten() if readout == "flatten" else GlobalAvgPool()
            layers = [Conv(3, "same", w, 0.1), Activation("relu")] * depth + [ro, Dense(w, 0.1)]
            conv_kernels(layers, images(2, size))          # compile / warm up
            n = n_images(size, readout)
            X = images(n, size, 1)
            t0 = time.perf_counter()
            conv_kernels(layers, X)
            dt = time.perf_counter() - t0
            out[f"{size},{depth},{readout}"] = dt / (n * (n + 1) / 2)
    return out


def time_nt():
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from neural_tangents import stax
    w = math.sqrt(2.0)
    out = {}
    for size, depth in CASES:
        for readout in ("flatten", "gap"):
            if size == 28 and depth == 10 and readout == "gap":
                pass
            ro = stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool()
            layers = [stax.Conv(1, (3, 3), padding="SAME", W_std=w, b_std=0.1), stax.Relu()]
            _, _, kfn = stax.serial(*(layers * depth), ro, stax.Dense(1, W_std=w, b_std=0.1))
            kfn = jax.jit(kfn, static_argnames="get")
            n = 8 if readout == "flatten" or size == 8 else 2
            X = jnp.asarray(images(n, size, 1))
            kfn(X, None, get=("nngp", "ntk"))[0].block_until_ready()   # compile
            t0 = time.perf_counter()
            kfn(X, None, get=("nngp", "ntk"))[0].block_until_ready()
            dt = time.perf_counter() - t0
            out[f"{size},{depth},{readout}"] = dt / (n * n)   # NT computes all n^2 pairs
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nt", action="store_true", help="time neural-tangents (its venv) as JSON")
    ap.add_argument("--nt-python", default=None, help="python of a neural-tangents venv")
    args = ap.parse_args()
    if args.nt:
        print(json.dumps(time_nt()))
        return
    import numba
    ours = time_infntk()
    nt = None
    if args.nt_python:
        res = subprocess.run([args.nt_python, __file__, "--nt"], capture_output=True, text=True)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        nt = json.loads(lines[-1]) if lines else None
        if nt is None:
            print("neural-tangents run failed:", res.stderr[-500:], file=sys.stderr)
    print(f"numba threads: {numba.get_num_threads()}   (per pair = wall time / pairs computed)")
    print(f"{'image':>6} {'depth':>5} {'readout':>8} {'infntk':>11} {'NumPy proto':>12} "
          f"{'x faster':>9} {'neural-tangents':>16} {'x faster':>9}")
    for size, depth in CASES:
        for readout in ("flatten", "gap"):
            key = f"{size},{depth},{readout}"
            t = ours[key]
            base = NUMPY_PROTOTYPE.get((size, depth, readout))
            b1 = f"{base * 1e3:10.2f}ms" if base else f"{'-':>12}"
            r1 = f"{base / t:9.1f}" if base else f"{'-':>9}"
            if nt and key in nt:
                b2, r2 = f"{nt[key] * 1e3:14.2f}ms", f"{nt[key] / t:9.1f}"
            else:
                b2, r2 = f"{'-':>16}", f"{'-':>9}"
            print(f"{size:>4}^2 {depth:>5} {readout:>8} {t * 1e3:9.3f}ms {b1} {r1} {b2} {r2}")
    if nt is None:
        print("neural-tangents: rerun with --nt-python /work/nt-venv/bin/python for its column")


if __name__ == "__main__":
    main()
