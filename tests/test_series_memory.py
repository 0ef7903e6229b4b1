"""The series engine's memory is bounded by the block, and its results do not depend on it.

* A cross (and symmetric) kernel computed with small row blocks and small coefficient chunks,
  the per-row coefficients recomputed per chunk instead of kept, equals the one computed in
  one block: bitwise for the same row blocks (the coefficients of a row never depend on what
  is kept), at the rounding level of ``X1 X2^T`` for other row blocks, with the same
  certificate.
* A subprocess computes a 4 x 150000 tanh cross kernel into memory maps and reports its peak
  RSS: the growth must stay within three times the figure expected from the block, the
  ``(L, n)`` per-row records and the coefficient budget -- far below the ``O(n K)`` per-row
  coefficients that the engine used to hold (~7 arrays of ``n L (K + 1)`` floats).
"""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import infntk
from infntk._backends import series
from tolerances import rel_err_vs_max, tolerance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(20261201)
# a different row-block split changes only the BLAS blocking of X1 X2^T (a few ulps of |K|)
SCHEDULE_RTOL = tolerance(1e-14, "block size changes only the BLAS blocking of X X^T: ulps")
# the certified bound is a maximum over pairs of per-row ingredients; other chunks change
# those ingredients at the rounding level only
BOUND_RTOL = tolerance(1e-9, "per-row tails from other coefficient chunks: rounding level")


def _rows(n, d):
    """Rows with spread norms (variances 0.05 .. 5), some repeated, one zero row."""
    X = RNG.normal(size=(n, d)) * RNG.uniform(0.2, 2.2, size=(n, 1))
    X[3] = X[1]
    X[-1] = 0.0
    return X


@pytest.mark.parametrize("act", ["tanh", "softplus"])
def test_cross_kernel_does_not_depend_on_blocks_or_chunks(monkeypatch, act):
    X1, X2 = _rows(9, 3), _rows(23, 3)
    net = infntk.FCNet(act, depth=2, w_std=1.3, b_std=0.2, tol=1e-9)
    one = net.kernels(X1, X2, block_rows=64)          # one block, everything kept
    monkeypatch.setattr(series, "_COEF_CHUNK", 4)      # 3 .. 6 chunks per side
    kept = net.kernels(X1, X2, block_rows=2)
    monkeypatch.setattr(series, "_COEF_BUDGET", 0)     # nothing kept: recomputed per block
    bounded = net.kernels(X1, X2, block_rows=2)
    for a, b in ((kept.nngp, bounded.nngp), (kept.ntk, bounded.ntk)):
        assert np.array_equal(a, b)                    # same chunks: bitwise
    assert kept.error_bound == bounded.error_bound and kept.orders == bounded.orders
    for a, b in ((one.nngp, bounded.nngp), (one.ntk, bounded.ntk)):
        assert rel_err_vs_max(b, a) <= SCHEDULE_RTOL
        assert np.abs(b - a).max() <= one.error_bound
    assert one.orders == bounded.orders
    assert abs(one.error_bound - bounded.error_bound) <= BOUND_RTOL * one.error_bound


def test_symmetric_kernel_does_not_depend_on_blocks_or_chunks(monkeypatch):
    X = _rows(17, 4)
    net = infntk.FCNet("tanh", depth=3, tol=1e-10)
    one = net.kernels(X)
    monkeypatch.setattr(series, "_COEF_CHUNK", 5)
    monkeypatch.setattr(series, "_COEF_BUDGET", 0)
    small = net.kernels(X, block_rows=3)
    for a, b in ((one.nngp, small.nngp), (one.ntk, small.ntk)):
        assert rel_err_vs_max(b, a) <= SCHEDULE_RTOL
        assert np.array_equal(b, b.T)
        assert np.array_equal(np.diag(b), np.diag(a))   # exact second moments on the diagonal
    assert one.orders == small.orders
    assert abs(one.error_bound - small.error_bound) <= BOUND_RTOL * one.error_bound


_SCRIPT = textwrap.dedent("""
    import json, os, resource, sys
    import numpy as np
    import infntk
    from infntk._backends import series
    series._COEF_BUDGET = int(sys.argv[1])
    n1, n2, d, depth, out = int(sys.argv[2]), int(sys.argv[3]), 4, 2, sys.argv[4]
    rng = np.random.default_rng(0)
    # rows on a sphere: one distinct variance, so the quadrature is quick; the engine used to
    # expand the coefficients to every row all the same
    X2 = rng.normal(size=(n2, d))
    X2 *= 1.5 / np.linalg.norm(X2, axis=1, keepdims=True)
    X1 = X2[:n1] * 1.0001
    net = infntk.FCNet("tanh", depth=depth, tol=1e-10)
    net.kernels(X1[:2], X2[:3])                     # compile, warm the caches
    o1 = np.lib.format.open_memmap(os.path.join(out, "nngp.npy"), mode="w+", shape=(n1, n2))
    o2 = np.lib.format.open_memmap(os.path.join(out, "ntk.npy"), mode="w+", shape=(n1, n2))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    k = net.kernels(X1, X2, out_nngp=o1, out_ntk=o2, block_rows=n1)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"growth": after - before, "orders": list(k.orders),
                      "bound": k.error_bound, "diag": float(o1[0, 0])}))
""")


def test_memory_of_a_long_cross_kernel_is_bounded_by_the_block(tmp_path):
    n1, n2, L, budget = 4, 150_000, 2, 4 * 2 ** 20
    script = tmp_path / "mem.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, NUMBA_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(script), str(budget), str(n1), str(n2),
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    kmax = max(info["orders"])
    n = n1 + n2
    # what the block needs: the (L, n) per-row records (about 30 float arrays of n (L + 1);
    # 20 measured),
    # G, the block's output rows and checks (4 floats per column), two coefficient chunks
    # per side, the kept-coefficient budget, and a fixed 64 MiB for the quadrature tables
    # and NumPy's temporaries
    expected = (8 * 30 * (L + 1) * n + 4 * 8 * n1 * n2
                + 2 * 2 * series._COEF_CHUNK * L * (kmax + 1) * 16 + budget + 64 * 2 ** 20)
    assert info["growth"] <= 3 * expected, (info, expected)
    # the former engine held ~7 arrays of n L (K + 1) floats (measured: 812 MB here, 73 MB now)
    assert 3 * expected < 7 * 8 * n * L * (kmax + 1), "the test would not tell the two apart"
    # and what was written is the kernel (the NNGP of a row with itself, up to the 1.0001)
    ref = infntk.FCNet("tanh", depth=2, tol=1e-10).diag(np.full((1, 4), 0.75)).nngp[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert abs(info["diag"] - ref) <= tolerance(1e-3, "rows differ by a factor 1.0001")
