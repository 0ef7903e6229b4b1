"""Compilation cost of every code path: cold (empty Numba cache) and warm (cache filled).

Runs, in a fresh process with ``NUMBA_CACHE_DIR`` set to an empty temporary directory, one
tiny call of each path in turn and prints the time of each (the first call of a path
compiles what it needs and is not yet compiled; later paths reuse what earlier ones
compiled; wall time and the process's CPU time, which is the figure to compare on a
machine loaded by other work: compilation is single-threaded), and the number of compiled
specializations (signatures) of infntk's Numba functions after each step, and the
functions compiled again for a literal argument type
(``infntk._warmup.literal_specializations``: each such copy is compile time lost). Then the
same sequence again with the now filled cache (what every later process pays), and
finally ``infntk warmup`` itself.

Paths: import, closed form symmetric / cross / diag (relu, then erf, which reuses the same
kernel), memory-mapped outputs, read-only memory-mapped inputs, the series engine (tanh), a
callable activation, a composed network (residual + LayerNorm), a convolutional network,
the command line (``infntk kernel`` with ``.npy`` files).

Usage: python benchmarks/bench_compile.py [--keep-cache DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

_CHILD = r"""
import json, os, sys, tempfile, time
t0, c0 = time.perf_counter(), time.process_time()
import numpy as np
import infntk
from infntk import _warmup
steps = [("import infntk", time.perf_counter() - t0, time.process_time() - c0,
          _warmup.count_specializations())]
for name, fn in _warmup.PATHS:
    t, c = time.perf_counter(), time.process_time()
    fn()
    steps.append((name, time.perf_counter() - t, time.process_time() - c,
                  _warmup.count_specializations()))
print(json.dumps(steps))
print(json.dumps(_warmup.literal_specializations()))
"""


def run(cache_dir, code=_CHILD, args=()):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    t = time.perf_counter()
    out = subprocess.run([sys.executable, *args] if args else [sys.executable, "-c", code],
                         env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode:
        raise RuntimeError(out.stderr)
    return wall, out.stdout


def show(title, wall, steps):
    print(f"{title}: {wall:.1f} s wall for the process")
    print(f"  {'path':44} {'wall s':>8} {'cpu s':>8} {'signatures':>10}")
    for name, dt, cpu, nsig in steps:
        print(f"  {name:44} {dt:8.2f} {cpu:8.2f} {nsig:10d}")
    print(f"  {'total':44} {sum(s[1] for s in steps):8.2f} {sum(s[2] for s in steps):8.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep-cache", help="use (and keep) this cache directory")
    args = ap.parse_args()
    import numba
    print(f"numba {numba.__version__}, python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.keep_cache or tmp
        wall, out = run(cache)
        steps, literal = (json.loads(line) for line in out.splitlines()[-2:])
        show("cold (empty cache)", wall, steps)
        print("  compiled again for a literal argument (each copy is compile time lost): "
              + (", ".join(f"{k} {v}" for k, v in literal.items()) or "none"))
        wall, out = run(cache)
        show("warm (cache filled)", wall, json.loads(out.splitlines()[-2]))
    with tempfile.TemporaryDirectory() as tmp:
        wall, out = run(tmp, args=("-m", "infntk", "warmup"))
        print(f"`infntk warmup` with an empty cache: {wall:.1f} s wall")
        print("  " + out.strip().replace("\n", "\n  "))
        wall, _ = run(tmp, args=("-m", "infntk", "warmup"))
        print(f"`infntk warmup` again (cache filled): {wall:.1f} s wall")


if __name__ == "__main__":
    main()
