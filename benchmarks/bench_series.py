"""Throughput of the Hermite-series engine (activations without a closed form).

The series path and its accuracy contract: docs/conventions.md, sections 6 and 8.

A tanh network, depth 3, n = 2000 points of dimension d = 50 (standard normal), tol = 1e-10:
prints the truncation orders chosen per layer, the certified error bound, the time against
erf (closed form) of the same network in the same process, the time of the
per-row part (row variances, coefficient and tail computation, choice of the orders), the
pair loop's throughput in pair-layers per second (n1 n2 L / s, counting every entry of the
output even where symmetry lets the engine compute one triangle, as bench_kernels.py does),
and the spectrum for kmax = 200 via infntk.spectrum.sphere_eigenvalues. Then the same for
the other named activations at a smaller n.

The first figure is the issue's target: tanh against erf at depth 3, n = 2000, d = 100,
w_std = 1.5, b_std = 0.1, tol 1e-10 (symmetric, warm cache), both timed in the same process,
alternating, best of ``--repeats``, with the wall and CPU time of the per-row part
(``SeriesEngine.prepare``) and of the compiled pair loop (``series_block``). With
``--baseline DIR`` (an older checkout, e.g. ``git worktree add /tmp/base <commit>``) the same
figure is measured for it in a subprocess (``PYTHONPATH=DIR``), alternating with this tree.

Usage: python benchmarks/bench_series.py [--n 2000] [--d 50] [--depth 3] [--tol 1e-10]
       [--baseline DIR] [--target-only]
"""
import argparse
import functools
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

import infntk
from infntk._backends import series as se
from _timing import best_of  # noqa: E402  (benchmarks/_timing.py)



def per_row_time(net, X):
    """Time of everything but the pair loop: row statistics, orders, coefficients."""
    eng = net._engine(X.shape[1])
    nsq = np.einsum("ij,ij->i", X, X)

    def run():
        q, E, Ed, th = se._row_statistics(eng.activation, eng.setup, nsq)
        scale = float(max(q[-1].max(), th[-1].max()))
        # the engine's estimate of the largest off-diagonal correlation per layer
        rmax = se._max_correlations(eng.activation, eng.setup, X, X, True, q,
                                    se._sample_rows(q))
        return se._choose_orders(eng.activation, eng.setup, q, E, Ed, th, net.tol * scale,
                                 X.shape[0], rmax)
    return run


def target_figure(repeats=3, n=2000, d=100, depth=3):
    """Wall and CPU seconds (best of ``repeats``, tanh and erf alternating) of the issue's
    figure, with the per-row part and the pair loop of the tanh call; a dict."""
    stages = {}

    def timed(obj, name):
        f = getattr(obj, name)

        @functools.wraps(f)
        def g(*a, **k):
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                c, w = stages.get(name, (0.0, 0.0))
                stages[name] = (c + time.process_time() - c0, w + time.perf_counter() - w0)
        setattr(obj, name, g)
        return f

    X = np.random.default_rng(0).standard_normal((n, d))
    tanh = infntk.FCNet("tanh", depth=depth, w_std=1.5, b_std=0.1, tol=1e-10)
    erf = infntk.FCNet("erf", depth=depth, w_std=1.5, b_std=0.1)
    for net in (tanh, erf):                  # compile / load the cache, warm the tables
        net.kernels(X[:50])
        net.kernels(X)
    saved = [(se.SeriesEngine, "prepare", timed(se.SeriesEngine, "prepare")),
             (se, "series_block", timed(se, "series_block"))]
    best = {}

    def keep(name, c, w):
        b = best.get(name, (math.inf, math.inf))
        best[name] = (min(b[0], c), min(b[1], w))
    try:
        for _ in range(repeats):
            for name, net in (("tanh", tanh), ("erf", erf)):
                stages.clear()
                c0, w0 = time.process_time(), time.perf_counter()
                k = net.kernels(X)
                keep(name, time.process_time() - c0, time.perf_counter() - w0)
                if name == "tanh":
                    for st, (c, w) in stages.items():
                        keep(st, c, w)
                    orders, bound = list(k.orders), k.error_bound
    finally:
        for obj, name, f in saved:
            setattr(obj, name, f)
    return {"orders": orders, "bound": bound, "load": os.getloadavg()[0],
            **{f"{k}_{u}": v[i] for k, v in best.items() for i, u in enumerate(("cpu", "wall"))}}


def print_target(label, r):
    print(f"  {label}: tanh {r['tanh_wall']:.3f} s (cpu {r['tanh_cpu']:.3f}; per-row part "
          f"{r['prepare_wall']:.3f} s, cpu {r['prepare_cpu']:.3f}; pair loop "
          f"{r['series_block_wall']:.3f} s, cpu {r['series_block_cpu']:.3f}), erf "
          f"{r['erf_wall']:.3f} s: tanh / erf = {r['tanh_wall'] / r['erf_wall']:.2f} "
          f"(cpu {r['tanh_cpu'] / r['erf_cpu']:.2f}); orders {r['orders']}, bound "
          f"{r['bound']:.3g}, load {r['load']:.2f}")


def compare_target(baseline, repeats, rounds=2):
    """The target figure of this tree and of ``baseline`` (subprocesses, alternating)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import bench_series as b; "
            "print(json.dumps(b.target_figure(int(sys.argv[2]))))")
    env = dict(os.environ)
    for _ in range(rounds):
        for label, root in (("baseline", baseline), ("this tree", here)):
            env["PYTHONPATH"] = root
            out = subprocess.run([sys.executable, "-c", code, os.path.dirname(
                os.path.abspath(__file__)), str(repeats)], env=env, capture_output=True,
                text=True, check=True, cwd=root).stdout     # cwd: `-c` puts it first on sys.path
            print_target(label, json.loads(out.strip().splitlines()[-1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=50)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", default=None,
                    help="an older checkout to time the target figure against (subprocesses)")
    ap.add_argument("--target-only", action="store_true",
                    help="print only the target figure (tanh vs erf, depth 3, n 2000, d 100)")
    args = ap.parse_args()
    import numba
    print(f"numba {numba.__version__}, threads {numba.get_num_threads()}")
    print("target: tanh vs erf, depth 3, n 2000, d 100, w_std 1.5, b_std 0.1, tol 1e-10 "
          "(symmetric, same process, best of {}):".format(args.repeats))
    if args.baseline:
        compare_target(args.baseline, args.repeats)
    else:
        print_target("this tree", target_figure(args.repeats))
    if args.target_only:
        return
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.d))
    net = infntk.FCNet("tanh", depth=args.depth, w_std=1.0, b_std=0.1, tol=args.tol)
    net.kernels(X[:8])                       # compile / load the cache outside the timing
    t_rows, res = best_of(per_row_time(net, X), args.repeats)
    Ks = res[0]
    t_all, k = best_of(lambda: net.kernels(X), args.repeats)
    pl = args.n * args.n * args.depth
    t_pairs = t_all - t_rows
    print(f"tanh depth {args.depth}, n {args.n}, d {args.d}, tol {args.tol:g}: orders K_l = "
          f"{list(k.orders)}, error_bound {k.error_bound:.3g} "
          f"(kernel scale {max(np.abs(k.nngp).max(), np.abs(k.ntk).max()):.3g})")
    print(f"  total {t_all:.3f} s; per-row part (variances, coefficients, orders) {t_rows:.3f} s;"
          f" pair loop {t_pairs:.3f} s")
    print(f"  pair-layers/s: {pl / t_all:.3g} overall, {pl / t_pairs:.3g} in the pair loop")
    # the baseline of the same process: erf (closed form) at the same depth and size
    erf = infntk.FCNet("erf", depth=args.depth, w_std=1.0, b_std=0.1)
    erf.kernels(X[:8])
    t_erf, _ = best_of(lambda: erf.kernels(X), args.repeats)
    print(f"  erf (closed form) same network: {t_erf:.3f} s; tanh / erf = {t_all / t_erf:.2f}")
    t_cross, _ = best_of(lambda: net.kernels(X, X[::-1].copy()), 1)
    print(f"  cross (X2 given, full n x n): {t_cross:.3f} s, {pl / t_cross:.3g} pair-layers/s")
    try:
        from infntk.spectrum import sphere_eigenvalues
    except ImportError:
        sphere_eigenvalues = None
    if sphere_eigenvalues is not None:
        t_spec, spec = best_of(lambda: sphere_eigenvalues(net, args.d, 200), 1)
        print(f"  spectrum kmax=200, d={args.d}: {t_spec:.3f} s (mu_0 {spec.mu[0]:.4g}, "
              f"mu_200 {spec.mu[200]:.3g})")
    n_small = min(args.n, 1000)
    Xs = X[:n_small]
    print(f"other activations, n {n_small}, depth {args.depth}, tol {args.tol:g}:")
    for name in ("sigmoid", "softplus", "silu", "elu"):
        import warnings
        net = infntk.FCNet(name, depth=args.depth, w_std=1.0, b_std=0.1, tol=args.tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t, k = best_of(lambda: net.kernels(Xs), 1)
        print(f"  {name:8} K_l {list(k.orders)}  bound {k.error_bound:.3g}  {t:.3f} s  "
              f"{n_small * n_small * args.depth / t:.3g} pair-layers/s")


if __name__ == "__main__":
    main()
