"""Numba settings chosen before any infntk module compiles (cache directory, threading layer)
and the thread pool that runs the compiled chunks.

Imported first by the package (before any module that imports Numba), it sets defaults that
the user can override with the usual environment variables:

* ``NUMBA_CACHE_DIR``: compiled kernels are cached under the user's cache directory,
  ``$XDG_CACHE_HOME/infntk/numba`` (default ``~/.cache/infntk/numba``), or, when that is not
  writable, under the temporary directory, in a subdirectory keyed by the state of the
  package's sources (so an edited file never leaves stale inlined code in another file's
  compiled kernels). Nothing is written next to the sources, so a
  read-only installation works and a cache left in ``site-packages/infntk/__pycache__`` by an
  uninstalled copy cannot shadow a later (editable) installation. Numba keys its cache by
  source path, so several installations never share entries.
* ``NUMBA_THREADING_LAYER``: ``"tbb"`` when Intel TBB is available (safe with ``fork`` and
  with several Python threads), otherwise ``"workqueue"``, which survives ``os.fork``
  (``multiprocessing``, the GNU OpenMP layer does not: the forked child is terminated) but is
  not thread-safe; the Gram driver then serialises engine calls with :func:`engine_lock`, so a
  dask thread pool or ``concurrent.futures`` threads sharing a network are safe.

Setting either variable before importing infntk keeps the user's choice.

infntk's own kernels no longer use Numba's parallel backends: they release the GIL and run
in chunks on a shared pool of Python threads (:func:`run_chunks`, ``numba.get_num_threads()``
workers), which a forked child replaces with its own. The threading layer only concerns the
user's Numba code; :func:`engine_lock` still serialises engine calls under ``workqueue``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import threading

__all__ = ["cache_dir", "threading_layer_default", "engine_lock", "blas_one_thread",
           "chunk_count", "run_chunks", "overlap_with_chunks", "interrupted_by_user",
           "INTERRUPTS"]

#: what a Ctrl-C may arrive as: ``KeyboardInterrupt``, or a ``SystemError`` when the signal
#: lands while Numba runs Python code from C (loading a cached function, ``_numba_unpickle``)
INTERRUPTS = (KeyboardInterrupt, SystemError)


def interrupted_by_user(exc):
    """Whether ``exc`` is a Ctrl-C: a ``KeyboardInterrupt``, or a ``SystemError`` raised with
    one as its cause or context (a C callback that returned while the interrupt was pending).

    >>> interrupted_by_user(KeyboardInterrupt()), interrupted_by_user(SystemError("x"))
    (True, False)
    """
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, KeyboardInterrupt):
            return True
        if not isinstance(exc, SystemError):
            return False
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _writable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
        return True
    except OSError:
        return False


def _sources_key():
    """A short hash of the package's Python sources (names, sizes, modification times).

    Numba invalidates a cached kernel when *its own* file changes, not when a function it
    inlined from another file does (an edit of ``_duals.py`` would leave stale compiled
    duals inside the engines). Keying the cache directory by every source file makes any
    change of the package start from a fresh cache.
    """
    import hashlib
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}:{st.st_size}:"
                         f"{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def cache_dir():
    """The directory for Numba's cache: under the user's cache dir, else the temporary dir.

    One subdirectory per state of the sources (:func:`_sources_key`).
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = _sources_key()
    candidates = [os.path.join(base, "infntk", "numba", key)]
    try:
        uid = os.getuid()
    except AttributeError:  # Windows
        uid = os.environ.get("USERNAME", "user")
    candidates.append(os.path.join(tempfile.gettempdir(), f"infntk-numba-{uid}", key))
    for path in candidates:
        if _writable_dir(path):
            return path
    return None


def threading_layer_default():
    """``"tbb"`` if Numba's TBB layer can load, else ``"workqueue"`` (fork-safe)."""
    if importlib.util.find_spec("numba") is None:
        return "workqueue"
    try:
        import numba.np.ufunc.tbbpool  # noqa: F401  (fails when libtbb is missing)
        return "tbb"
    except Exception:  # ImportError, OSError from the shared library
        return "workqueue"


def _configure():
    changed = False
    if not os.environ.get("NUMBA_CACHE_DIR"):
        path = cache_dir()
        if path is not None:
            os.environ["NUMBA_CACHE_DIR"] = path
            changed = True
    if not os.environ.get("NUMBA_THREADING_LAYER"):
        os.environ["NUMBA_THREADING_LAYER"] = threading_layer_default()
        changed = True
    if changed and "numba" in sys.modules:  # numba imported first: re-read the environment
        try:
            from numba.core import config
            config.reload_config()
        except Exception:
            pass


_configure()

_LOCK = threading.RLock()
_THREAD_SAFE_LAYERS = ("tbb", "omp")


def _layer_is_thread_safe():
    try:
        import numba
        return numba.threading_layer() in _THREAD_SAFE_LAYERS
    except (ImportError, ValueError):   # ValueError: no parallel launch yet
        return os.environ.get("NUMBA_THREADING_LAYER", "") in _THREAD_SAFE_LAYERS


def engine_lock():
    """A context manager: a process-wide re-entrant lock unless the threading layer is
    thread-safe (TBB, OpenMP), where it does nothing."""
    if _layer_is_thread_safe():
        return contextlib.nullcontext()
    return _LOCK


_BLAS_LOCK = threading.Lock()
_BLAS_STATE = {"depth": 0, "limiter": None}


@contextlib.contextmanager
def blas_one_thread():
    """A context manager: BLAS on one thread while it lasts (re-entrant, thread-safe).

    The drivers call BLAS (the Gram products of each block) between compiled pair loops. A
    multi-threaded OpenBLAS keeps its idle threads spinning for a while after every call,
    and on a machine with as many cores as Numba threads they take the cores from the pair
    loop: measured 1.5-3.5x slower closed-form Gram matrices on 2 cores. The products are a
    small part of the work, so they run on one thread instead. The limit is process-wide:
    the first caller sets it and the last one to leave restores the original thread counts,
    so overlapping calls from several threads (dask's threaded scheduler) leave BLAS as they
    found it.
    """
    with _BLAS_LOCK:
        if _BLAS_STATE["depth"] == 0:
            _BLAS_STATE["limiter"] = _limit_blas()
        _BLAS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["depth"] -= 1
            if _BLAS_STATE["depth"] == 0 and _BLAS_STATE["limiter"] is not None:
                _BLAS_STATE["limiter"].restore_original_limits()
                _BLAS_STATE["limiter"] = None


_BLAS_CONTROLLER = {"controller": None, "modules": -1}


def _limit_blas():
    """threadpoolctl's limiter of the loaded BLAS libraries to one thread, or None.

    The scan of the loaded libraries (``ThreadpoolController()``, 0.2-1 ms) is kept and made
    again only when ``sys.modules`` has changed size since the last one: a BLAS library
    arrives with the import of the extension module that loads it, so a library loaded since
    the last call is limited too, and a Gram matrix pays ~10 us instead of the scan. (Called
    under ``_BLAS_LOCK``.)"""
    try:
        from threadpoolctl import ThreadpoolController
        nmods = len(sys.modules)
        ctl = _BLAS_CONTROLLER["controller"]
        if ctl is None or _BLAS_CONTROLLER["modules"] != nmods:
            ctl = ThreadpoolController()
            _BLAS_CONTROLLER["controller"] = ctl
            _BLAS_CONTROLLER["modules"] = len(sys.modules)
        return ctl.limit(limits=1, user_api="blas")
    except Exception:          # threadpoolctl missing or unable to inspect: leave BLAS as is
        return None


# ----------------------------------------------------------------------------- chunk threads
# The compiled drivers release the GIL (``nogil=True``) and take a chunk number: ``run_chunks``
# runs them on a pool of Python threads. This replaces ``parallel=True`` kernels, each of which
# made Numba generate and optimise again the code of everything it called (several seconds of
# compilation per kernel), with no difference in speed for loops of independent rows.
_POOL_LOCK = threading.Lock()
_POOL = {"executor": None, "size": 0}
_IN_POOL = threading.local()
# the task overlap_with_chunks gives the calling thread to run while its chunks run
_CALLER = threading.local()


def chunk_count(items, per_thread=4):
    """Chunks to split ``items`` independent pieces of work into: ``per_thread`` per thread of
    ``numba.get_num_threads()`` (the user's ``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``),
    at most ``items``, at least 1. Several chunks per thread let a thread that finishes early
    (another one was descheduled on a busy machine) take the remaining ones."""
    import numba
    return max(1, min(int(items), per_thread * numba.get_num_threads()))


def _executor(size):
    from concurrent.futures import ThreadPoolExecutor
    with _POOL_LOCK:
        if _POOL["executor"] is None or _POOL["size"] < size:
            old = _POOL["executor"]
            _POOL["executor"] = ThreadPoolExecutor(size, thread_name_prefix="infntk",
                                                   initializer=_mark_pool_thread)
            _POOL["size"] = size
            if old is not None:
                old.shutdown(wait=False)
        return _POOL["executor"]


def _mark_pool_thread():
    _IN_POOL.active = True


def _forget_pool_in_child():
    """After ``os.fork`` the child has the pool object but none of its threads: work submitted
    to it would wait forever. The child starts a pool of its own when it needs one."""
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    _POOL["executor"] = None
    _POOL["size"] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def run_chunks(fn, nchunks):
    """``fn(c)`` for ``c`` in ``range(nchunks)``, on a shared pool of
    ``min(nchunks, numba.get_num_threads())`` threads.

    ``fn`` should spend its time in a compiled ``nogil`` function (otherwise the threads only
    take turns). Chunks run inline when one thread is asked for, or when called from a pool
    thread (no nested waiting on the same pool). The first exception raised by a chunk is
    raised here after every chunk has finished (inline too: the same chunks run whatever
    the thread count), so no chunk is still writing to shared outputs. (Inline, a
    ``KeyboardInterrupt`` stops at once: no other chunk is running.) Under
    :func:`overlap_with_chunks`, the calling thread runs the given task between submitting
    the chunks to the pool and waiting for them.
    """
    import numba
    workers = min(nchunks, numba.get_num_threads())
    error = None
    if workers <= 1 or getattr(_IN_POOL, "active", False):
        for c in range(nchunks):      # every chunk, as on threads (the first error after)
            try:
                fn(c)
            except Exception as exc:  # noqa: BLE001 (re-raised below, after all chunks)
                error = exc if error is None else error
    else:
        pool = _executor(workers)
        futures = [pool.submit(fn, c) for c in range(nchunks)]
        task = getattr(_CALLER, "task", None)
        if task is not None:          # overlap_with_chunks: the caller's work, meanwhile
            task.run()
        for f in futures:
            try:
                f.result()
            except BaseException as exc:   # noqa: BLE001 (re-raised below, after all chunks)
                error = exc if error is None else error
    if error is not None:
        raise error


class _Task:
    """A task run at most once; its exception is kept (raised by overlap_with_chunks)."""

    def __init__(self, fn):
        self.fn, self.ran, self.error = fn, False, None

    def run(self):
        if self.ran:
            return
        self.ran = True
        try:
            self.fn()
        except BaseException as exc:   # noqa: BLE001 (raised by overlap_with_chunks)
            self.error = exc


@contextlib.contextmanager
def overlap_with_chunks(task):
    """A context manager: ``task()`` runs in this thread while chunks run on the pool.

    The first :func:`run_chunks` call of this thread inside the ``with`` body that runs its
    chunks on the pool runs ``task()`` after submitting them and before waiting for them:
    the Gram driver makes the next block's BLAS product and checks and records the previous
    block there, work that would otherwise leave the chunk threads idle, while an engine's
    block runs its chunks (in the calling thread as ever: its locks, its BLAS limit, a
    user's callables). If no such call came (one thread, chunks run inline, an engine
    without chunks), ``task()`` runs when the body ends. An exception of ``task`` is raised
    when the body ends (never into the code that called ``run_chunks``); when the body
    raises, its exception wins and a task that has not run yet does not run. Thread-local:
    other threads' ``run_chunks`` calls are not affected; nested uses each own their task.
    """
    t = _Task(task)
    outer = getattr(_CALLER, "task", None)
    _CALLER.task = t
    try:
        yield
    finally:
        _CALLER.task = outer
    t.run()
    if t.error is not None:
        raise t.error
