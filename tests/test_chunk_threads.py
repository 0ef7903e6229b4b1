"""The chunk runner that replaced the ``parallel=True`` kernels (infntk._numba_config).

Checked: every chunk runs exactly once, on several threads when asked; an exception in one
chunk is raised after all chunks finished (none left writing); a call from a pool thread runs
inline instead of waiting on the pool; and the composed engine's kernels give the same bits
on one thread and on several (each row is computed by one chunk, with the same operations).
"""
import threading
import time

import numba
import numpy as np
import pytest

import infntk
from infntk._numba_config import chunk_count, run_chunks
from infntk.layers import Activation, Dense, LayerNorm, Residual


def test_every_chunk_once_on_several_threads():
    seen = []
    names = set()
    lock = threading.Lock()

    def fn(c):
        time.sleep(0.01)
        with lock:
            seen.append(c)
            names.add(threading.current_thread().name)

    run_chunks(fn, 7)
    assert sorted(seen) == list(range(7))
    if numba.get_num_threads() > 1:
        assert len(names) > 1


def test_error_raised_after_every_chunk_finished():
    done = []

    def fn(c):
        if c == 0:
            raise ZeroDivisionError("chunk 0")
        time.sleep(0.05)
        done.append(c)

    with pytest.raises(ZeroDivisionError, match="chunk 0"):
        run_chunks(fn, 4)
    assert sorted(done) == [1, 2, 3]


def test_nested_call_runs_inline():
    inner = []

    def outer(c):
        run_chunks(lambda k: inner.append((c, k)), 3)

    run_chunks(outer, 2)
    assert sorted(inner) == [(c, k) for c in range(2) for k in range(3)]


def test_chunk_count_bounds():
    assert chunk_count(0) == 1
    assert chunk_count(1) == 1
    assert chunk_count(10 ** 6, per_thread=3) == 3 * numba.get_num_threads()


def test_composed_kernels_independent_of_thread_count():
    X = np.random.default_rng(4).standard_normal((37, 6))
    Y = np.random.default_rng(5).standard_normal((11, 6))
    net = infntk.Network([Dense(1.5, 0.1), Activation("relu"),
                          Residual([Dense(1.0, 0.1), Activation("erf"), Dense()], alpha=0.5),
                          LayerNorm(), Dense(1.2, 0.0), Activation("tanh"), Dense()], tol=1e-8)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = (net.kernels(X), net.kernels(X, Y))
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = (net.kernels(X), net.kernels(X, Y))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a.nngp, b.nngp)
        np.testing.assert_array_equal(a.ntk, b.ntk)
        assert a.error_bound == b.error_bound


_FORK = r"""
import multiprocessing as mp, numpy as np, infntk
from infntk.layers import Activation, Dense, LayerNorm
X = np.random.default_rng(0).normal(size=(40, 3))
net = infntk.Network([Dense(1.5, 0.1), Activation("erf"), LayerNorm(), Dense()])
ref = net.kernels(X).ntk                      # the chunk pool started in the parent first
def work(i):
    return net.kernels(X).ntk.tobytes()
if __name__ == "__main__":
    with mp.get_context("fork").Pool(2) as pool:
        out = pool.map_async(work, range(2)).get(timeout=60)
    assert all(o == ref.tobytes() for o in out)
    print("ok")
"""


def test_forked_children_start_their_own_pool(tmp_path):
    """A child forked after the pool started has the pool object but not its threads."""
    import subprocess
    import sys
    script = tmp_path / "fork.py"
    script.write_text(_FORK)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=180, env={**__import__("os").environ, "NUMBA_NUM_THREADS": "2"})
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr
