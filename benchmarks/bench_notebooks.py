"""Benchmark: wall-clock time of each notebook in notebooks/, smoke and full configuration.

Run: ``python benchmarks/bench_notebooks.py [--config smoke|full|both] [--repeat 1]
[--timeout 600] [NAME ...]`` from the repository root (``NAME``: notebook file names or
prefixes such as ``03``; default: all).

The test suite (tests/test_notebooks.py) executes every notebook in the smoke configuration
(``INFNTK_NOTEBOOK_SMOKE=1``: smaller widths / fewer seeds, same code path) and asserts the
notebooks' own claims, but no timing: this script is where the times are measured. For each
notebook and configuration it prints the best-of-``repeat`` total time, the slowest cell, and
the ratio to a baseline measured in the same process: a one-cell notebook that starts a kernel
and imports numpy, matplotlib and infntk (the fixed cost every notebook pays). The first
notebook of a fresh environment also pays Numba's compilation (cached afterwards); run twice
for steady-state figures.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import pathlib
import sys
import tempfile
import time

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
SMOKE_VAR = "INFNTK_NOTEBOOK_SMOKE"
BASELINE_SOURCE = "import numpy, matplotlib\nmatplotlib.use('Agg')\nimport infntk\n"


def _cell_seconds(cell):
    """Execution time of one executed cell from nbclient's timing metadata (nan if absent)."""
    ex = cell.get("metadata", {}).get("execution", {})
    t0, t1 = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not (t0 and t1):
        return math.nan
    parse = datetime.datetime.fromisoformat
    return (parse(t1.replace("Z", "+00:00")) - parse(t0.replace("Z", "+00:00"))).total_seconds()


def run_notebook(nb, smoke, timeout):
    """Execute ``nb`` (a nbformat notebook, modified in place) in a fresh kernel.

    Returns ``(total_seconds, slowest_cell_seconds, slowest_cell_index)``.
    """
    import nbclient

    previous = os.environ.get(SMOKE_VAR)
    if smoke:
        os.environ[SMOKE_VAR] = "1"
    else:
        os.environ.pop(SMOKE_VAR, None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                             resources={"metadata": {"path": tmp}})
            t0 = time.perf_counter()
            client.execute()
            total = time.perf_counter() - t0
    finally:
        if previous is None:
            os.environ.pop(SMOKE_VAR, None)
        else:
            os.environ[SMOKE_VAR] = previous
    cells = [(c, i) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    times = [(_cell_seconds(c), i) for c, i in cells]
    known = [t for t in times if not math.isnan(t[0])]
    slowest, index = max(known) if known else (math.nan, -1)
    return total, slowest, index


def _best(fn, repeat):
    best = None
    for _ in range(repeat):
        out = fn()
        if best is None or out[0] < best[0]:
            best = out
    return best


def main(argv=None):
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebook names or prefixes (default: all)")
    ap.add_argument("--config", choices=("smoke", "full", "both"), default="both")
    ap.add_argument("--repeat", type=int, default=1, help="best of this many runs (>= 1)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell (>= 1)")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.timeout < 1:
        ap.error("--repeat and --timeout must be >= 1")
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(p.name.startswith(n) for n in args.names)]
        if not paths:
            ap.error(f"no notebook in {NOTEBOOKS} matches {args.names}")
    configs = {"smoke": [True], "full": [False], "both": [True, False]}[args.config]

    base_nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(BASELINE_SOURCE)])
    base, _, _ = _best(lambda: run_notebook(nbformat.from_dict(base_nb), True, args.timeout),
                       args.repeat)
    print(f"python {sys.version.split()[0]}, NUMBA_NUM_THREADS="
          f"{os.environ.get('NUMBA_NUM_THREADS', 'default')}, best of {args.repeat}")
    print(f"baseline (kernel start + imports, same process): {base:.2f} s")
    print(f"{'notebook':34s} {'config':6s} {'total [s]':>9s} {'x base':>7s} "
          f"{'slowest cell [s]':>16s}")
    for path in paths:
        for smoke in configs:
            total, slowest, index = _best(
                lambda: run_notebook(nbformat.read(path, as_version=4), smoke, args.timeout),
                args.repeat)
            print(f"{path.name:34s} {'smoke' if smoke else 'full':6s} {total:9.2f} "
                  f"{total / base:7.1f} {slowest:10.2f} (#{index})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
