"""The Gram driver's fixed-cost passes (infntk._gram): the compiled finiteness test of a block,
the tiled mirror of the lower triangle, and the overlap of an engine's chunks with the next
block's BLAS product and the previous block's check (infntk._numba_config.overlap_with_chunks).

References: ``np.isfinite`` over the written entries, ``np.tril`` of the matrix, and the
engine's own ``block`` driven by a plain loop in the test with products computed here; the
overlap runs only with several Numba threads, so it is also exercised in a subprocess with
``NUMBA_NUM_THREADS=2`` (the test suite runs on one thread).
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import infntk
from infntk import _gram
from infntk._backends._common import mirror_stripe, mirror_tiles, rows_finite
from infntk._numba_config import overlap_with_chunks, run_chunks


# ------------------------------------------------------------------ the finiteness test
@settings(deadline=None, max_examples=60)
@given(nb=st.integers(1, 9), n=st.integers(1, 40), r0=st.integers(0, 30),
       symmetric=st.booleans(), where=st.integers(0, 10 ** 6),
       value=st.sampled_from([np.inf, -np.inf, np.nan, 1e308, None]))
def test_rows_finite_matches_isfinite_over_the_written_entries(nb, n, r0, symmetric, where,
                                                                value):
    r0 = min(r0, max(n - nb, 0)) if symmetric else r0
    blk = np.random.default_rng(where).standard_normal((nb, n))
    if value is not None:
        blk.flat[where % blk.size] = value
    written = np.ones((nb, n), dtype=bool)
    if symmetric:
        written = np.arange(n)[None, :] <= (r0 + np.arange(nb))[:, None]
    expected = bool(np.isfinite(blk[written]).all())
    assert rows_finite(blk, r0, symmetric, 0, nb) == expected
    # by parts (as the driver splits rows over threads): the conjunction is the same
    cut = nb // 2
    assert (rows_finite(blk, r0, symmetric, 0, cut)
            and rows_finite(blk, r0, symmetric, cut, nb)) == expected


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_large_block_check_finds_the_first_bad_entry(symmetric, value):
    """A block large enough to be tested on the chunk threads (and split by area in the
    symmetric case): the message still names the first bad entry, row-major."""
    n, r0 = 600, 300
    blk = np.ones((256, n))
    if symmetric:
        blk[:, :] = np.where(np.arange(n)[None, :] <= (r0 + np.arange(256))[:, None], 1.0,
                             np.nan)                      # garbage in the unwritten part
    _gram.check_block_finite(None, {"ntk": blk}, r0, symmetric, np.ones((n, 2)),
                             np.ones((n, 2)), label="NET")
    blk[250, 5] = value
    blk[100, 290] = value
    with pytest.raises(OverflowError, match=r"ntk kernel is .* at row 400, column 290 .*NET"):
        _gram.check_block_finite(None, {"ntk": blk}, r0, symmetric, np.ones((n, 2)),
                                 np.ones((n, 2)), label="NET")


# ------------------------------------------------------------------ the mirror
@settings(deadline=None, max_examples=25)
@given(n=st.integers(1, 150), block_rows=st.integers(1, 80), state=st.integers(0, 99))
def test_mirror_copies_the_lower_triangle_exactly(n, block_rows, state):
    M = np.random.default_rng(state).standard_normal((n, n))
    low = np.tril(M)
    expected = low + np.tril(M, -1).T
    _gram.mirror_lower_to_upper(M, block_rows)
    assert np.array_equal(M, expected)


@settings(deadline=None, max_examples=25)
@given(n=st.integers(1, 150), block_rows=st.integers(1, 80), tile=st.integers(1, 40),
       nch=st.integers(1, 3), state=st.integers(0, 99))
def test_block_stripes_in_row_order_give_the_mirrored_matrix(n, block_rows, tile, nch, state):
    """The driver's per-block mirror: after block ``r0:r1`` is written (rows below it are not
    yet, here NaN), its stripe of the upper triangle; in the end the mirrored matrix."""
    M = np.random.default_rng(state).standard_normal((n, n))
    expected = np.tril(M) + np.tril(M, -1).T
    W = np.full((n, n), np.nan)
    for r0 in range(0, n, block_rows):
        r1 = min(r0 + block_rows, n)
        W[r0:r1, :r1] = np.where(np.arange(r1)[None, :] <= np.arange(r0, r1)[:, None],
                                 M[r0:r1, :r1], np.nan)   # the written part only
        for c in range(nch):
            mirror_stripe(W, r0, r1, c, nch, tile)
    assert np.array_equal(W, expected)


def test_mirror_tiles_chunks_cover_every_upper_entry_once():
    n = 75
    M = np.tril(np.arange(1.0, n * n + 1).reshape(n, n))
    for c in range(3):
        mirror_tiles(M, 10, 70, c, 3, 8)
    expected = np.tril(np.arange(1.0, n * n + 1).reshape(n, n))
    rows = slice(10, 70)
    expected[rows] = np.where(np.arange(n)[None, :] > np.arange(10, 70)[:, None],
                              expected.T[rows], expected[rows])
    assert np.array_equal(M, expected)


def test_mirror_of_a_memmap_and_of_a_strided_matrix(tmp_path):
    n = 300
    M = np.random.default_rng(1).standard_normal((n, n))
    expected = np.tril(M) + np.tril(M, -1).T
    mm = np.lib.format.open_memmap(str(tmp_path / "K.npy"), mode="w+", dtype=np.float64,
                                   shape=(n, n))
    mm[...] = M
    _gram.mirror_lower_to_upper(mm, 64)
    assert np.array_equal(np.asarray(mm), expected)
    big = np.zeros((n, 2 * n))
    view = big[:, ::2]                       # not C-contiguous: the NumPy copy
    view[...] = M
    _gram.mirror_lower_to_upper(view, 64)
    assert np.array_equal(view, expected)


# ------------------------------------------------------------------ the block loop
class _Recorder:
    """An engine whose block writes a function of the rows and of G on the chunk threads
    (slowly: ``delay`` seconds per chunk), recording when its chunks ran."""

    def __init__(self, fail_at=None, delay=0.0):
        self.calls, self.fail_at, self.delay = [], fail_at, delay

    def rows(self, X):
        return X

    def prepare(self, r1, r2, symmetric):
        class Plan:
            error_bound = orders = None
        return Plan()

    def block(self, plan, X1, X2, G, r0, symmetric, out_nngp, out_ntk):
        if self.fail_at == r0:
            raise ZeroDivisionError(f"block {r0}")
        ends = []

        def chunk(c):
            time.sleep(self.delay)
            rows = slice(c, G.shape[0], 2)
            out_nngp[rows, :G.shape[1]] = G[rows]
            out_ntk[rows, :G.shape[1]] = 2.0 * G[rows] + r0
            ends.append(time.perf_counter())

        start = time.perf_counter()
        run_chunks(chunk, 2)
        self.calls.append((r0, start, min(ends)))

    def finish(self, plan):
        pass


def _reference(X1, X2, symmetric, block_rows):
    n1, n2 = X1.shape[0], X2.shape[0]
    nngp, ntk = np.zeros((n1, n2)), np.zeros((n1, n2))
    for r0 in range(0, n1, block_rows):
        r1 = min(r0 + block_rows, n1)
        G = X1[r0:r1] @ X2[:r1 if symmetric else n2].T
        nngp[r0:r1, :G.shape[1]] = G
        ntk[r0:r1, :G.shape[1]] = 2.0 * G + r0
    if symmetric:
        for M in (nngp, ntk):
            M[...] = np.tril(M) + np.tril(M, -1).T
    return nngp, ntk


class _Resume:
    def __init__(self, done):
        self.skip, self.recorded, self.times = set(done), [], []

    def done(self, r0, r1):
        return r0 in self.skip

    def record(self, r0, r1):
        self.recorded.append(r0)
        self.times.append(time.perf_counter())


@pytest.mark.parametrize("symmetric", [True, False])
def test_block_loop_results_resume_and_errors(symmetric):
    rng = np.random.default_rng(2)
    X1 = rng.standard_normal((700, 5))
    X2 = X1 if symmetric else rng.standard_normal((400, 5))
    k = _gram.gram(_Recorder(), X1, X2, symmetric, block_rows=128)
    ref = _reference(X1, X2, symmetric, 128)
    assert np.array_equal(k.nngp, ref[0]) and np.array_equal(k.ntk, ref[1])
    # resume: skipped blocks are neither computed nor recorded, the others in order
    eng, res = _Recorder(), _Resume({128, 512})
    _gram.gram(eng, X1, X2, symmetric, block_rows=128, resume=res)
    assert [c[0] for c in eng.calls] == [0, 256, 384, 640]
    assert res.recorded == [0, 256, 384, 640]
    # an engine's exception reaches the caller; blocks before it are recorded, none after
    eng, res = _Recorder(fail_at=384), _Resume(())
    with pytest.raises(ZeroDivisionError, match="block 384"):
        _gram.gram(eng, X1, X2, symmetric, block_rows=128, resume=res)
    assert res.recorded[:2] == [0, 128] and set(res.recorded) <= {0, 128, 256}


def test_overlap_task_runs_once_and_raises_at_the_end():
    ran = []
    with overlap_with_chunks(lambda: ran.append(1)):
        run_chunks(lambda c: None, 3)
        run_chunks(lambda c: None, 3)
    assert ran == [1]
    with overlap_with_chunks(lambda: ran.append(2)):
        pass                                   # no chunks: the task runs at the end
    assert ran == [1, 2]

    def fail():
        raise KeyError("task")

    with pytest.raises(KeyError, match="task"):
        with overlap_with_chunks(fail):
            run_chunks(lambda c: None, 2)
    with pytest.raises(ZeroDivisionError):     # the body's error wins; the task never runs
        with overlap_with_chunks(lambda: ran.append(3)):
            raise ZeroDivisionError
    assert ran == [1, 2]


_TWO_THREADS = r"""
import sys, time
import numba, numpy as np, infntk
sys.path.insert(0, sys.argv[1])
import test_gram_driver as t
from infntk import _gram
from infntk._numba_config import overlap_with_chunks, run_chunks
assert numba.get_num_threads() == 2
for symmetric in (True, False):
    t.test_block_loop_results_resume_and_errors(symmetric)
t.test_overlap_task_runs_once_and_raises_at_the_end()
# the task runs while the chunks do: before the first chunk has finished
ends, when = [], []
with overlap_with_chunks(lambda: when.append(time.perf_counter())):
    run_chunks(lambda c: (time.sleep(0.2), ends.append(time.perf_counter())), 2)
assert when[0] < min(ends), (when, ends)
# in the driver: block b-1 is recorded while block b's chunks run (not after them), except
# before the last block (nothing left to overlap with: recorded after it)
X = np.random.default_rng(0).standard_normal((700, 4))
eng, res = t._Recorder(delay=0.2), t._Resume(())
_gram.gram(eng, X, X, True, block_rows=128, resume=res)
assert res.recorded == [0, 128, 256, 384, 512, 640]
for (r0, start, first_end), rec in zip(eng.calls[1:-1], res.times):
    assert start < rec < first_end, (r0, start, rec, first_end)
assert res.times[-2] > eng.calls[-1][2]
# closed forms, series and composed networks: the same bits as on one thread, and closed
# forms as their engine's own block driven here block by block
Y = np.random.default_rng(1).standard_normal((300, 4))
L = infntk
nets = [infntk.FCNet(a, depth=3, w_std=1.5, b_std=0.1) for a in ("gaussian", "relu", "erf")]
nets += [infntk.FCNet("tanh", depth=2, tol=1e-8),
         infntk.Network([L.Dense(1.5, 0.1), L.Activation("relu"),
                         L.Residual([L.Dense(1.0, 0.1), L.Activation("erf"), L.Dense()]),
                         L.LayerNorm(), L.Dense()])]
for i, net in enumerate(nets):
    for B in (None, Y):
        two = net.kernels(X, B, block_rows=128)
        numba.set_num_threads(1)
        one = net.kernels(X, B, block_rows=128)
        numba.set_num_threads(2)
        for a, b in zip(two, one):
            assert np.array_equal(a, b), (i, B is None)
        if i >= 3:
            continue
        eng = net._engine(4)
        sym = B is None
        B2 = X if sym else B
        rows1 = eng.rows(X)
        plan = eng.prepare(rows1, rows1 if sym else eng.rows(B2), sym)
        ref = [np.zeros((700, B2.shape[0])) for _ in range(2)]
        for r0 in range(0, 700, 128):
            r1 = min(r0 + 128, 700)
            G = X[r0:r1] @ B2[:r1 if sym else None].T
            eng.block(plan, X, B2, G, r0, sym, ref[0][r0:r1], ref[1][r0:r1])
        if sym:
            ref = [np.tril(M) + np.tril(M, -1).T for M in ref]
        for a, c in zip(two, ref):
            assert np.array_equal(a, c), i
print("ok")
"""


def test_overlapped_blocks_on_two_threads(tmp_path):
    """With two Numba threads the driver's work between blocks runs while the engine's chunks
    do: same results, resume records and errors as on one thread."""
    script = tmp_path / "two.py"
    script.write_text(_TWO_THREADS)
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
