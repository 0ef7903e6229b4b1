"""The drivers' BLAS limit (infntk._numba_config.blas_one_thread): one thread inside (as seen
from the calling thread), the original thread counts restored after, also when calls overlap
in several threads (what each thread then reports inside is OpenBLAS' business: its count is
not always global)."""
import threading

import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

import infntk
from infntk._numba_config import blas_one_thread


def _blas_threads():
    return [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]


def test_limit_inside_and_restored_after():
    before = _blas_threads()
    with blas_one_thread():
        assert all(n == 1 for n in _blas_threads())
        with blas_one_thread():              # re-entrant
            assert all(n == 1 for n in _blas_threads())
        assert all(n == 1 for n in _blas_threads())
    assert _blas_threads() == before


def test_overlapping_calls_in_threads_restore_the_original_counts():
    before = _blas_threads()
    inside = threading.Barrier(2)

    def work():
        with blas_one_thread():
            inside.wait(timeout=30)      # both inside at once
            inside.wait(timeout=30)

    ts = [threading.Thread(target=work) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert _blas_threads() == before
    # and a Gram matrix through the driver leaves them as they were
    infntk.FCNet("relu", depth=2).kernels(np.random.default_rng(0).normal(size=(300, 3)))
    assert _blas_threads() == before
