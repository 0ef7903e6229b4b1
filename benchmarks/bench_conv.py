"""Per-pair time of the convolutional NNGP+NTK: 8x8 and 28x28 images, depth 5 and 10,
Flatten ("vanilla", diagonal regime) and GlobalAvgPool (full regime); relu, Conv(3, "same").

Run with infntk's environment::

    PYTHONPATH=. python benchmarks/bench_conv.py            # infntk vs a NumPy prototype
    PYTHONPATH=. python benchmarks/bench_conv.py --nt-python /path/to/nt-venv/bin/python
    INFNTK_NT_PYTHON=/path/to/nt-venv/bin/python PYTHONPATH=. python benchmarks/bench_conv.py
    /path/to/nt-venv/bin/python benchmarks/bench_conv.py --nt  # neural-tangents alone, as JSON
    PYTHONPATH=. python benchmarks/bench_conv.py --baseline-tree /path/to/other/checkout
    PYTHONPATH=. python benchmarks/bench_conv.py --series   # tanh (Hermite series) vs erf

``--series``: tanh (no closed form: the Hermite-series engine, ``tol=1e-10``) against the
closed-form erf of the same network in the same process, 8x8, depth 5, both readouts; per
pair the Gram time (including the per-image planning: coefficients, orders, certified bound)
and the pair runs alone, the orders and the bound.

With ``--baseline-tree DIR`` (another checkout of infntk, e.g. made by ``git worktree add``),
each case is also timed with that checkout's engine in a subprocess right after this one's
(alternating, so both see the same load), and the speed-up column compares the process CPU
times per pair. ``--repeat N`` times each case N times (alternating with the baseline) and
keeps the least times; ``--gap`` runs the GlobalAvgPool cases only, ``--flatten`` the Flatten
ones; ``--flatten-n N`` sets the images of the Flatten cases (neural-tangents at most 64).

Baseline measured in the same process: a plain NumPy prototype of the same recursion
(:func:`numpy_pair`: the whole ``(h, w, h, w)`` covariance of one pair as one array, the
patch trace as shifted slices of a zero-padded copy, the relu dual through ``np.arccos``); it
is checked against infntk on the first pair of each case. With ``--nt-python``,
neural-tangents' ``stax`` kernel of the same network (jit-compiled, CPU, float64) runs in a
subprocess of that interpreter. The issue's reference figures for a NumPy prototype were
4.6 ms per pair (8x8 GAP depth 10) and 1.06 s (28x28 GAP depth 10). The first call of each
implementation compiles and is not timed. Per pair = wall time / pairs computed (infntk's
symmetric Gram computes ``n (n + 1) / 2``, neural-tangents ``n^2``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

CASES = [(8, 5), (8, 10), (28, 5), (28, 10)]
W_STD, B_STD = math.sqrt(2.0), 0.1


FLATTEN_N = {8: 64, 28: 32}     # images of the Flatten cases (--flatten-n overrides)
NT_FLATTEN_MAX = 64             # neural-tangents' Flatten cases: at most this many images


def n_images(size, readout):
    if readout == "flatten":
        return FLATTEN_N[size]
    return 24 if size == 8 else 4


def images(n, size, stream=0):
    return np.random.default_rng(stream).standard_normal((n, size, size, 1))


# ----------------------------------------------------------------------------- NumPy baseline
def _relu_dual(s, qx, qy):
    m = np.sqrt(qx * qy)
    cos = np.clip(s / m, -1.0, 1.0)
    th = np.arccos(cos)
    k = m / (2 * np.pi) * (np.sqrt(1.0 - cos * cos) + (np.pi - th) * cos)
    return k, (np.pi - th) / (2 * np.pi)


def _conv_numpy(S, T, full):
    """Conv(3, "same") on the full (h, w, h, w) or the diagonal (h, w) covariance."""
    c, b2 = W_STD ** 2 / 9.0, B_STD ** 2
    out = []
    for A in (S, T):
        P = np.pad(A, 1)
        if full:
            h, w = A.shape[0], A.shape[1]
            U = sum(P[a:a + h, :, a:a + h, :] for a in range(3))
            out.append(c * sum(U[:, b:b + w, :, b:b + w] for b in range(3)))
        else:
            h, w = A.shape
            U = sum(P[a:a + h, :] for a in range(3))
            out.append(c * sum(U[:, b:b + w] for b in range(3)))
    s = out[0] + b2
    return s, out[1] + s


def numpy_pair(x, y, depth, readout, qx=None, qy=None):
    """NNGP and NTK of one pair of (h, w, 1) images; ``qx, qy``: the self variances of each
    layer (``None``: a self pair, they are recorded and returned)."""
    full = readout == "gap"
    if full:
        S = np.einsum("ijc,klc->ijkl", x, y) / x.shape[2]
    else:
        S = np.einsum("ijc,ijc->ij", x, y) / x.shape[2]
    T = np.zeros_like(S)
    rec = []
    for layer in range(depth):
        S, T = _conv_numpy(S, T, full)
        if qx is None:
            d = np.einsum("ijij->ij", S) if full else S
            rec.append(d.copy())
            a = b = d
        else:
            a, b = qx[layer], qy[layer]
        if full:
            a, b = a[:, :, None, None], b[None, None, :, :]
        S, kd = _relu_dual(S, a, b)
        T = T * kd
    s, t = S.mean(), T.mean()
    s2 = W_STD ** 2 * s + B_STD ** 2
    return (s2, W_STD ** 2 * t + s2), rec


def time_numpy(size, depth, readout, npairs):
    X = images(npairs + 1, size, 1)
    recs = [numpy_pair(X[i], X[i], depth, readout)[1] for i in range(npairs + 1)]
    t0 = time.perf_counter()
    first = None
    for p in range(npairs):
        k, _ = numpy_pair(X[p], X[p + 1], depth, readout, recs[p], recs[p + 1])
        first = k if first is None else first
    return (time.perf_counter() - t0) / npairs, X[:2], first


# ----------------------------------------------------------------------------- infntk, NT
def infntk_layers(depth, readout):
    from infntk import Activation, Dense
    from infntk.conv import Conv, Flatten, GlobalAvgPool
    ro = Flatten() if readout == "flatten" else GlobalAvgPool()
    return [Conv(3, "same", W_STD, B_STD), Activation("relu")] * depth + [ro, Dense(W_STD, B_STD)]


def time_infntk(size, depth, readout, repeat=1):
    """(wall, process CPU) seconds per pair of one symmetric Gram (the least of ``repeat``
    runs, each minimum separately)."""
    from infntk.conv import conv_kernels
    layers = infntk_layers(depth, readout)
    conv_kernels(layers, images(2, size))          # compile / warm up
    n = n_images(size, readout)
    X = images(n, size, 1)
    npairs = n * (n + 1) / 2
    best = (math.inf, math.inf)
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        conv_kernels(layers, X)
        t, c = (time.perf_counter() - t0) / npairs, (time.process_time() - c0) / npairs
        best = (min(best[0], t), min(best[1], c))
    return best


def time_series(size=8, depth=5, n=24, tol=1e-10):
    """Print the tanh (series) / erf (closed form) per-pair times of one symmetric Gram."""
    from infntk import Activation, Dense, Network
    from infntk.conv import Conv, Flatten, GlobalAvgPool
    from infntk._backends import conv_series as cs
    print(f"series engine: tanh vs erf, {size}x{size}, depth {depth}, {n} images, "
          f"Conv(3, 'same', 1.5, 0.1), tol {tol:g} (per pair = wall time / (n (n + 1) / 2))")
    print("certificate: 'row' = per row at |rho| = 1 (before), 'entry' = per entry (after)")
    print(f"{'readout':>8} {'cert':>5} {'erf':>10} {'tanh':>10} {'ratio':>7} {'tanh pairs':>11} "
          f"{'ratio':>7} {'orders':>24} {'bound/scale':>11}")
    for readout, per_entry in [(r, p) for r in ("flatten", "gap") for p in (False, True)]:
        cs._PER_ENTRY = per_entry
        ro = Flatten() if readout == "flatten" else GlobalAvgPool()

        def net(act):
            return Network([Conv(3, "same", 1.5, 0.1), Activation(act)] * depth
                           + [ro, Dense(1.0, 0.0)], tol=tol)
        X = images(n, size, 1)
        npairs = n * (n + 1) / 2
        times = {}
        for act in ("erf", "tanh"):
            net(act).kernels(images(2, size))          # compile / warm up
            t0 = time.perf_counter()
            k = net(act).kernels(X)
            times[act] = (time.perf_counter() - t0) / npairs
        # the pair runs alone (mode 1), from the run's plan
        orig = cs._run
        spent = [0.0]

        def timed(mode, *a, **kw):
            t0 = time.perf_counter()
            out = orig(mode, *a, **kw)
            if mode == 1:
                spent[0] += time.perf_counter() - t0
            return out
        cs._run = timed
        try:
            net("tanh").kernels(X)
        finally:
            cs._run = orig
            cs._PER_ENTRY = True
        tp = spent[0] / (n * (n - 1) / 2)
        scale = max(np.diag(k.nngp).max(), np.diag(k.ntk).max())
        print(f"{readout:>8} {'entry' if per_entry else 'row':>5} "
              f"{times['erf'] * 1e3:8.3f}ms {times['tanh'] * 1e3:8.3f}ms "
              f"{times['tanh'] / times['erf']:7.1f} {tp * 1e3:9.3f}ms {tp / times['erf']:7.1f} "
              f"{str(k.orders):>24} {k.error_bound / scale:11.2e}", flush=True)


def time_nt():
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from neural_tangents import stax
    out = {}
    for size, depth in CASES:
        for readout in ("flatten", "gap"):
            ro = stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool()
            layers = [stax.Conv(1, (3, 3), padding="SAME", W_std=W_STD, b_std=B_STD), stax.Relu()]
            _, _, kfn = stax.serial(*(layers * depth), ro, stax.Dense(1, W_std=W_STD, b_std=B_STD))
            kfn = jax.jit(kfn, static_argnames="get")
            n = min(FLATTEN_N[size], NT_FLATTEN_MAX) if readout == "flatten" else (
                8 if size == 8 else 2)
            X = jnp.asarray(images(n, size, 1))
            kfn(X, None, get=("nngp", "ntk"))[0].block_until_ready()   # compile
            best = math.inf
            for _ in range(3):                                          # the least of 3
                t0 = time.perf_counter()
                kfn(X, None, get=("nngp", "ntk"))[0].block_until_ready()
                best = min(best, time.perf_counter() - t0)
            out[f"{size},{depth},{readout}"] = best / (n * n)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nt", action="store_true", help="time neural-tangents (its venv) as JSON")
    ap.add_argument("--nt-python", default=os.environ.get("INFNTK_NT_PYTHON"),
                    help="python of a neural-tangents venv (default: $INFNTK_NT_PYTHON)")
    ap.add_argument("--quick", action="store_true", help="8x8 cases and 28x28 depth 5 only")
    ap.add_argument("--baseline-tree", help="another checkout of infntk to time in the same run")
    ap.add_argument("--one", help=argparse.SUPPRESS)      # "size,depth,readout": JSON of one case
    ap.add_argument("--series", action="store_true",
                    help="tanh (Hermite series) against erf (closed form), 8x8 depth 5")
    ap.add_argument("--series-tol", type=float, default=1e-10, help="tol of --series")
    ap.add_argument("--gap", action="store_true", help="GlobalAvgPool cases only")
    ap.add_argument("--flatten", action="store_true", help="Flatten cases only")
    ap.add_argument("--flatten-n", type=int,
                    help="images of the Flatten cases (default 64 at 8x8, 32 at 28x28; "
                         f"neural-tangents: at most {NT_FLATTEN_MAX})")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time each case this many times (least CPU and least wall time; "
                         "with --baseline-tree, alternating with the baseline)")
    args = ap.parse_args()
    if args.flatten_n:
        FLATTEN_N.update({8: args.flatten_n, 28: args.flatten_n})
    if args.series:
        time_series(tol=args.series_tol)
        return
    if args.nt:
        print(json.dumps(time_nt()))
        return
    if args.one:
        size, depth, readout = args.one.split(",")
        print(json.dumps(time_infntk(int(size), int(depth), readout, args.repeat)))
        return
    import numba
    from infntk.conv import conv_kernels
    nt = None
    if args.nt_python:
        res = subprocess.run([args.nt_python, __file__, "--nt"]
                             + (["--flatten-n", str(args.flatten_n)] if args.flatten_n else []),
                             capture_output=True, text=True)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        nt = json.loads(lines[-1]) if lines else None
        if nt is None:
            print("neural-tangents run failed:", res.stderr[-500:], file=sys.stderr)
    print(f"numba threads: {numba.get_num_threads()}, load average {os.getloadavg()[0]:.1f}   "
          "(per pair = wall time / pairs computed; cpu = infntk's process CPU time per pair)")
    print(f"Flatten: {FLATTEN_N[8]} images at 8x8, {FLATTEN_N[28]} at 28x28 (neural-tangents "
          f"{min(FLATTEN_N[8], NT_FLATTEN_MAX)} and {min(FLATTEN_N[28], NT_FLATTEN_MAX)})")
    base_hdr = f" {'base cpu':>10} {'speed-up':>8}" if args.baseline_tree else ""
    print(f"{'image':>6} {'depth':>5} {'readout':>8} {'infntk':>11} {'cpu':>10} {'NumPy':>11} "
          f"{'x faster':>9} {'neural-tangents':>16} {'x faster':>9} {'check':>8}{base_hdr}")
    cases = [c for c in CASES if not (args.quick and c == (28, 10))]
    for size, depth in cases:
        for readout in ("gap",) if args.gap else ("flatten",) if args.flatten else (
                "flatten", "gap"):
            key = f"{size},{depth},{readout}"
            t = tc = bc = math.inf
            base = ""
            for _ in range(args.repeat):
                t1, tc1 = time_infntk(size, depth, readout)
                t, tc = min(t, t1), min(tc, tc1)
                if args.baseline_tree:
                    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.baseline_tree))
                    extra = ["--flatten-n", str(args.flatten_n)] if args.flatten_n else []
                    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--one",
                                          key] + extra, env=env, capture_output=True, text=True)
                    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("[")]
                    if lines:
                        bc = min(bc, json.loads(lines[-1])[1])
                    else:
                        print("baseline run failed:", res.stderr[-500:], file=sys.stderr)
            if args.baseline_tree:
                base = (f" {bc * 1e3:8.3f}ms {bc / tc:8.2f}" if bc < math.inf
                        else f" {'failed':>10} {'-':>8}")
            npairs = 1 if (size == 28 and readout == "gap") else 6
            tb, X2, kb = time_numpy(size, depth, readout, npairs)
            nngp, ntk = conv_kernels(infntk_layers(depth, readout), X2)
            err = max(abs(nngp[0, 1] - kb[0]) / abs(nngp).max(),
                      abs(ntk[0, 1] - kb[1]) / abs(ntk).max())
            if nt and key in nt:
                b2, r2 = f"{nt[key] * 1e3:14.3f}ms", f"{nt[key] / t:9.1f}"
            else:
                b2, r2 = f"{'-':>16}", f"{'-':>9}"
            print(f"{size:>4}^2 {depth:>5} {readout:>8} {t * 1e3:9.3f}ms {tc * 1e3:8.3f}ms "
                  f"{tb * 1e3:9.3f}ms "
                  f"{tb / t:9.1f} {b2} {r2} {err:8.1e}{base}", flush=True)
    if nt is None:
        print("neural-tangents: rerun with --nt-python /path/to/nt-venv/bin/python for its column")


if __name__ == "__main__":
    main()
