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

Usage: python benchmarks/bench_series.py [--n 2000] [--d 50] [--depth 3] [--tol 1e-10]
"""
import argparse
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=50)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import numba
    print(f"numba {numba.__version__}, threads {numba.get_num_threads()}")
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
