"""Where a Gram matrix's time goes outside the engine's pair loop (the driver's fixed costs).

For each activation (closed forms), depth and shape: the whole call (``FCNet.kernels``, wall
and process CPU, best of ``--repeats``) and, measured alone in the same process, each phase
the driver (infntk/_gram.py) adds around the engine's blocks: the per-row records
(``engine.rows`` + ``prepare``), the BLAS products of the blocks, the engine's blocks into
outputs already in memory, the first touch of two new ``(n1, n2)`` outputs, the finiteness
test and (symmetric) the mirror of the lower triangle (block by block, as the driver does it,
and in one pass over the whole matrix, as it does when resuming), with their share of the
whole call's CPU time. The engine blocks are the pair loop; everything else is what the driver can hide
(overlap with the pair loop on the chunk threads) or make cheaper.

With ``--baseline-tree DIR`` (another checkout, e.g. ``git worktree add DIR <commit>``), that
checkout's ``infntk/_gram.py`` is loaded into this process as a second driver and both
drivers are timed on the same engine, calls alternated (``--ab`` calls each): wall min and
median, CPU min, and the ratio old / new. The engines are this tree's in both, so the
comparison is of the drivers alone and the machine's load shifts both alike.

Usage: PYTHONPATH=$PWD python benchmarks/bench_gram_phases.py [--acts gaussian,cos,step]
       [--depth 10] [--n1 2000] [--n2 1000] [--symmetric] [--repeats 5]
       [--baseline-tree DIR] [--ab 15]
"""
import argparse
import importlib.util
import math
import os
import sys
import time

import numpy as np

import infntk
from infntk import _gram
from infntk._numba_config import blas_one_thread
from infntk._validation import check_pair


def _best(f, repeats):
    """(min wall, min CPU) seconds of ``repeats`` calls of ``f`` (after one untimed call)."""
    f()
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        f()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def phases(act, depth, n1, n2, symmetric, repeats, d=100):
    rng = np.random.default_rng(0)
    X1 = rng.standard_normal((n1, d))
    X2 = None if symmetric else rng.standard_normal((n2, d))
    net = infntk.FCNet(act, depth=depth, w_std=math.sqrt(2.0) if act == "relu" else 1.5,
                       b_std=0.1)
    A, B, same = check_pair(X1, X2)
    m = B.shape[0]
    eng = net._engine(d)
    r1 = eng.rows(A)
    r2 = r1 if same else eng.rows(B)
    plan = eng.prepare(r1, r2, same)
    blocks = list(_gram.row_blocks(n1, _gram.DEFAULT_BLOCK_ROWS))
    with blas_one_thread():
        Gs = [A[a:b] @ B[:b if same else m].T for a, b in blocks]
    o1, o2 = np.zeros((n1, m)), np.zeros((n1, m))

    def products():
        with blas_one_thread():
            for a, b in blocks:
                A[a:b] @ B[:b if same else m].T

    def engine_blocks():
        for (a, b), G in zip(blocks, Gs):
            eng.block(plan, A, B, G, a, same, o1[a:b], o2[a:b])

    def check():
        for a, b in blocks:
            _gram.check_block_finite(eng, {"nngp": o1[a:b], "ntk": o2[a:b]}, a, same, A, B)

    def touch():
        for _ in range(2):
            np.empty((n1, m)).fill(0.0)

    parts = {"rows+prepare": lambda: eng.prepare(eng.rows(A), r2 if same else eng.rows(B),
                                                 same),
             "BLAS products": products, "engine blocks": engine_blocks,
             "first touch": touch, "finite check": check}
    if same:
        parts["mirror, whole"] = lambda: (_gram.mirror_lower_to_upper(o1),
                                          _gram.mirror_lower_to_upper(o2))
        parts["mirror, blocks"] = lambda: [_gram._mirror_block(o, a, b, True)
                                           for a, b in blocks for o in (o1, o2)]
    wall, cpu = _best(lambda: net.kernels(X1, X2), repeats)
    got = {k: _best(f, repeats)[1] for k, f in parts.items()}
    shape = f"{n1}x{m}" + (" sym" if same else "")
    print(f"\n{act} depth {depth} {shape}: whole call wall {wall * 1e3:.1f} ms, CPU "
          f"{cpu * 1e3:.1f} ms (load {os.getloadavg()[0]:.1f})")
    for k, v in got.items():
        print(f"  {k:14} CPU {v * 1e3:7.1f} ms  {100 * v / cpu:5.1f} % of the call's CPU")
    # the driver mirrors block by block (the whole matrix only when resuming)
    outside = sum(v for k, v in got.items() if k not in ("engine blocks", "mirror, whole"))
    print(f"  {'outside loop':14} CPU {outside * 1e3:7.1f} ms  {100 * outside / cpu:5.1f} %")
    return net, A, B, same


def load_driver(tree):
    """The ``infntk/_gram.py`` of checkout ``tree`` as a module of this package."""
    loader = importlib.util.spec_from_file_location("infntk._gram_baseline",
                                                  os.path.join(tree, "infntk", "_gram.py"))
    mod = importlib.util.module_from_spec(loader)
    sys.modules["infntk._gram_baseline"] = mod
    loader.loader.exec_module(mod)
    return mod


class _Timed:
    """The engine, with the wall-clock intervals of its ``block`` calls recorded."""

    def __init__(self, eng):
        self.eng, self.spans = eng, []

    def __getattr__(self, name):
        return getattr(self.eng, name)

    def block(self, *args):
        t = time.perf_counter()
        self.eng.block(*args)
        self.spans.append((t, time.perf_counter()))


def ab(base, net, A, B, same, calls):
    """Both drivers on the same engine, alternated. Besides wall and CPU: the time of each
    call during which no engine block is running ("outside blocks"), when the chunk threads
    have nothing to do: the serial part the overlap removes, which does not depend on how
    many cores the machine's load leaves free as much as the wall time does."""
    eng = _Timed(net._engine(A.shape[1]))
    drivers = (("base", base), ("this", _gram))
    for _, mod in drivers:
        mod.gram(eng, A, B, same)
    res = {"base": [], "this": []}
    for r in range(calls):
        for name, mod in (drivers if r % 2 == 0 else drivers[::-1]):
            eng.spans = []
            t, c = time.perf_counter(), time.process_time()
            mod.gram(eng, A, B, same)
            wall = time.perf_counter() - t
            res[name].append((wall, time.process_time() - c,
                              wall - sum(b - a for a, b in eng.spans)))
    o, n = np.array(res["base"]) * 1e3, np.array(res["this"]) * 1e3
    print(f"  driver A/B ({calls} calls each, alternated): wall min base {o[:, 0].min():.1f} "
          f"this {n[:, 0].min():.1f} ms ({o[:, 0].min() / n[:, 0].min():.2f}x), median "
          f"{np.median(o[:, 0]):.1f} / {np.median(n[:, 0]):.1f} "
          f"({np.median(o[:, 0]) / np.median(n[:, 0]):.2f}x); CPU min {o[:, 1].min():.1f} / "
          f"{n[:, 1].min():.1f} ms; outside blocks, median {np.median(o[:, 2]):.1f} / "
          f"{np.median(n[:, 2]):.1f} ms; load {os.getloadavg()[0]:.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--acts", default="gaussian,cos,step")
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--n1", type=int, default=2000)
    ap.add_argument("--n2", type=int, default=1000)
    ap.add_argument("--symmetric", action="store_true", help="X2 = None (n1 x n1)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline-tree", help="a checkout whose _gram.py is the A/B baseline")
    ap.add_argument("--ab", type=int, default=15, help="calls per driver in the A/B")
    args = ap.parse_args()
    import numba
    print(f"infntk {infntk.__version__}, {numba.get_num_threads()} Numba threads, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
    base = load_driver(args.baseline_tree) if args.baseline_tree else None
    for act in args.acts.split(","):
        net, A, B, same = phases(act, args.depth, args.n1, args.n2, args.symmetric,
                                 args.repeats)
        if base is not None:
            ab(base, net, A, B, same, args.ab)


if __name__ == "__main__":
    main()
