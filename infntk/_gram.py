"""The Gram driver: the one blocked loop that turns an engine into NNGP and NTK matrices.

Every Gram matrix of the package is made here, whoever asks (:class:`infntk.FCNet`, the
command line, :mod:`infntk.distributed`)::

    rows1 = engine.rows(X1)             # O(n L) per-row record (variances, diagonals, ...)
    rows2 = rows1 if X2 is None else engine.rows(X2)
    plan  = engine.prepare(rows1, rows2, symmetric)  # anything that needs both sides
    for each block of rows r0:r1:
        G = X1[r0:r1] @ X2[:cols].T     # cols = r1 in the symmetric case (lower triangle)
        engine.block(plan, X1, X2, G, r0, symmetric, out_nngp[r0:r1], out_ntk[r0:r1])
        check the block, mirror its lower triangle (symmetric case), record, count it
    Kernels(out_nngp, out_ntk, plan.error_bound, plan.orders)

With several Numba threads, while an engine's block runs its chunks on the pool, the calling
thread makes the next block's product and checks, mirrors, records and counts the previous
block (see :func:`_fill_blocks`); the results are the same bits on any number of threads.

Engines live in :mod:`infntk._backends` and follow the protocol described there; the driver
knows nothing about activations or layers. Inputs arrive validated (C-contiguous float64,
matching widths); ``out_*`` may be memory maps (each block is written where it belongs).

The checks every caller gets, here once:

* ``out_nngp``/``out_ntk`` that are the same array, overlap, map the same file or share memory
  with ``X1``/``X2`` are refused (``ValueError``): a block written there would corrupt input or
  the other kernel;
* outputs to allocate are compared with the available memory first (``MemoryError`` with the
  bytes needed, instead of an out-of-memory kill after minutes of work);
* every block is checked for finiteness as soon as it is written (with the overlap above,
  while the next one is: ``OverflowError`` naming the row, the column and the network's
  settings, never a silent inf/NaN in the result);
* engine calls hold a process-wide lock when Numba's threading layer is not thread-safe (see
  :mod:`infntk._numba_config`), so Python threads (a dask thread pool) can share a network;
* ``resume``: an object with ``done(r0) -> bool`` and ``record(r0, r1)`` (see
  :class:`infntk._io.BlockProgress`) skips blocks already on disk and records each new one after
  it is written, so a killed block-wise write continues where it stopped, bitwise identically.
"""
from __future__ import annotations

import contextlib
import os
import mmap
from dataclasses import dataclass

import numpy as np

from ._backends._common import mirror_stripe, mirror_tiles, rows_finite
from ._numba_config import (blas_one_thread, chunk_count, engine_lock, overlap_with_chunks,
                            run_chunks)
from ._validation import check_positive_int

# Gram matrices with at least this many entries run BLAS on one thread (_numba_config) and
# overlap each block's engine call with the next block's BLAS product (_fill_blocks)
_BLAS_LIMIT_PAIRS = 1 << 16
# passes over at least this many output entries (finiteness test, mirror) run on the chunk
# threads, a share of the rows each (below, a thread hand-off costs more than it saves)
_PARALLEL_ENTRIES = 1 << 16
# rows and columns of the squares the mirror copies at a time (mirror_tiles)
_MIRROR_TILE = 32

__all__ = ["Kernels", "KernelDiag", "gram", "diag", "row_blocks", "mirror_lower_to_upper",
           "check_out", "check_kinds", "check_no_alias", "check_memory", "available_memory",
           "check_block_finite", "compiled_view", "DEFAULT_BLOCK_ROWS"]

#: Rows per block of the Gram loop (work space ``block_rows * n2`` floats per kernel).
DEFAULT_BLOCK_ROWS = 256
_KINDS = ("nngp", "ntk")


@dataclass
class Kernels:
    """NNGP and NTK Gram matrices of one network, ``(n1, n2)`` float64 each.

    ``error_bound`` is ``None`` for closed forms (accurate to rounding, see
    docs/conventions.md, "Accuracy"); for Hermite-series activations it is one absolute bound
    on ``|computed - exact|`` covering every entry of both matrices, and ``orders`` gives the
    series truncation order used at each layer. Unpacks as ``nngp, ntk = net.kernels(X)``.
    """

    nngp: np.ndarray
    ntk: np.ndarray
    error_bound: float | None = None
    orders: tuple | None = None

    def __iter__(self):
        return iter((self.nngp, self.ntk))

    def __repr__(self):
        shape = next((a.shape for a in (self.nngp, self.ntk) if a is not None), None)
        extra = "" if self.error_bound is None else (
            f", error_bound={self.error_bound:.3g}, orders={self.orders}")
        return f"Kernels(shape={shape}{extra})"


class KernelDiag(np.ndarray):
    """The NTK diagonal ``Theta(x, x)`` as an array, with ``.nngp`` and ``.ntk`` attributes."""

    def __new__(cls, nngp, ntk):
        obj = np.asarray(ntk, dtype=np.float64).view(cls)
        obj.nngp = np.asarray(nngp, dtype=np.float64)
        obj.ntk = np.asarray(ntk, dtype=np.float64)
        return obj

    def __array_finalize__(self, obj):
        if obj is None:
            return
        self.nngp = getattr(obj, "nngp", None)
        self.ntk = getattr(obj, "ntk", None)


def check_out(out, shape, name):
    """``out`` as given (validated), or a new ``(n1, n2)`` float64 array when ``None``."""
    if out is None:
        return np.empty(shape, dtype=np.float64)
    if not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != shape:
        raise ValueError(f"{name} must be a float64 array of shape {shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} "
                         f"{getattr(out, 'shape', '')}.")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable.")
    return out


def check_kinds(kinds, name="kinds"):
    """A non-empty tuple of distinct kernel names from ``("nngp", "ntk")``."""
    kinds = tuple(kinds) if not isinstance(kinds, str) else (kinds,)
    if not kinds or any(k not in _KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(f"{name} must be a non-empty subset of {_KINDS}, got {kinds!r}.")
    return kinds


def _memmap_file(a):
    """The file behind ``a`` (or the array it views) if it is a memory map, else ``None``."""
    while a is not None:
        name = getattr(a, "filename", None)
        if isinstance(a, np.memmap) and name:
            return os.path.realpath(name)
        a = a.base if isinstance(a, np.ndarray) else None
    return None


def check_no_alias(outs, inputs):
    """Refuse outputs that share memory (or a mapped file) with each other or with an input.

    ``outs`` and ``inputs``: ``{name: array or None}``. ``ValueError`` naming both arguments.
    """
    outs = {k: v for k, v in outs.items() if v is not None}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    items = list(outs.items())
    for i, (na, a) in enumerate(items):
        others = items[i + 1:] + list(inputs.items())
        fa = _memmap_file(a)
        for nb, b in others:
            fb = _memmap_file(b)
            if np.shares_memory(a, b) or (fa is not None and fa == fb):
                raise ValueError(f"{na} shares memory with {nb}: the blocks written to {na} "
                                 f"would overwrite {nb} and corrupt the result; pass separate, "
                                 "non-overlapping arrays.")


def available_memory():
    """Bytes of memory available to a new allocation (``MemAvailable``), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def check_memory(nbytes, what):
    """``MemoryError`` if ``nbytes`` exceed the available memory (a no-op when unknown)."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise MemoryError(
            f"{what} needs {_fmt_bytes(nbytes)} ({nbytes} bytes) but only {_fmt_bytes(avail)} "
            "of memory is available; write the Gram matrices to disk block by block instead: "
            "pass out_nngp=/out_ntk= memory maps (np.lib.format.open_memmap), ask for one "
            "kernel only, or use the command line (infntk kernel X.npy --out K.npy).")


def _describe(engine, label=None):
    if label is not None:
        return label
    setup = getattr(engine, "setup", None) or getattr(engine, "net", None)
    if setup is None:
        return type(engine).__name__
    fields = [f"{k}={getattr(setup, k)!r}" for k in ("depth", "w2", "b2")
              if hasattr(setup, k)]
    return ", ".join(fields) or type(engine).__name__


def check_block_finite(engine, dst, r0, symmetric, X1, X2, label=None, parallel=True):
    """``OverflowError`` if a written entry of the block rows ``r0:r0+len`` is inf or NaN.

    In the symmetric case only the lower triangle (``j <= i``) is written, so only it is read.
    The test is one compiled pass (:func:`infntk._backends._common.rows_finite`), on the
    chunk threads for large blocks (unless not ``parallel``: in the calling thread, while the
    chunk threads run the next block); only a block that fails it is searched for its first
    bad entry (row-major, ``nngp`` before ``ntk``), which the message names.
    """
    if _blocks_finite(list(dst.values()), r0, symmetric, parallel):
        return
    for name, blk in dst.items():
        nb = blk.shape[0]
        if symmetric:
            ok = np.isfinite(blk[:, :r0]).all() and np.isfinite(
                blk[:, r0:r0 + nb][np.tril_indices(nb)]).all()
        else:
            ok = np.isfinite(blk).all()
        if ok:
            continue
        bad = ~np.isfinite(blk)
        if symmetric:
            bad[:, r0:r0 + nb] &= np.tri(nb, dtype=bool)
            bad[:, r0 + nb:] = False
        i, j = (int(v) for v in np.argwhere(bad)[0])
        value = float(blk[i, j])
        scale = max(float(np.abs(X1[r0 + i]).max()), float(np.abs(X2[j]).max()))
        raise OverflowError(
            f"the {name} kernel is {value!r} at row {r0 + i}, column {j} (inputs up to "
            f"|x| = {scale:.3g}; network {_describe(engine, label)}): float64 overflowed; reduce "
            "w_std, depth or the input scale (rescale X).")


def _row_cuts(nb, parts, r0, symmetric):
    """``parts + 1`` row boundaries splitting a block's ``nb`` rows into shares of about equal
    work: equal row counts, or in the symmetric case equal areas (row ``i`` has ``r0 + i + 1``
    written entries)."""
    if not symmetric or parts == 1:
        return [nb * p // parts for p in range(parts + 1)]
    area = np.cumsum(np.arange(r0 + 1, r0 + nb + 1, dtype=np.float64))
    cuts = np.searchsorted(area, area[-1] * np.arange(1, parts) / parts, side="right")
    return [0] + [int(c) for c in cuts] + [nb]


def _blocks_finite(blks, r0, symmetric, parallel=True):
    """Whether every written entry of the blocks ``blks`` (rows ``r0:r0+nb`` of the outputs)
    is finite; large blocks on the chunk threads (if ``parallel``), a share of the rows each."""
    blks = [np.asarray(b) for b in blks]
    if not blks or blks[0].size == 0:
        return True
    if any(b.dtype != np.float64 or b.ndim != 2 or not b.flags.c_contiguous for b in blks):
        return all(np.isfinite(b[i, :r0 + i + 1] if symmetric else b[i]).all()
                   for b in blks for i in range(b.shape[0]))
    nb, n = blks[0].shape
    parts = chunk_count(nb, per_thread=1) if parallel and nb * n >= _PARALLEL_ENTRIES else 1
    cuts = _row_cuts(nb, parts, r0, symmetric)
    ok = [True] * parts

    def part(c):
        ok[c] = all(rows_finite(b, r0, symmetric, cuts[c], cuts[c + 1]) for b in blks)

    run_chunks(part, parts)
    return all(ok)


def compiled_view(X):
    """``X`` as a writeable plain ndarray (no copy where possible), for compiled kernels.

    Numba compiles a separate specialization of every kernel for read-only arrays (e.g.
    ``np.load(path, mmap_mode="r")``), which costs a full second compilation. A read-only
    view of a file-backed memory map is mapped again copy-on-write (``mode="c"``: writeable,
    the pages stay shared with the page cache, nothing is copied, and the engines never
    write to their inputs); any other read-only array is copied. ``X`` must be C-contiguous.
    """
    if X.flags.writeable:
        return X
    mm = X       # the memory map that owns the file mapping (a slice of one is a memmap too)
    while mm is not None and not (isinstance(mm, np.memmap) and mm.filename
                                  and isinstance(mm.base, mmap.mmap)):
        mm = getattr(mm, "base", None)
    if mm is not None and X.flags.c_contiguous:
        offset = mm.offset + (X.__array_interface__["data"][0]
                              - mm.__array_interface__["data"][0])
        try:
            cow = np.memmap(mm.filename, dtype=X.dtype, mode="c", offset=offset, shape=X.shape)
        except (OSError, ValueError):
            cow = None
        if cow is not None:
            return np.asarray(cow)
    return np.array(X, order="C")


def row_blocks(n, block_rows):
    """``(r0, r1)`` of consecutive blocks of ``block_rows`` rows covering ``range(n)``."""
    for r0 in range(0, n, block_rows):
        yield r0, min(r0 + block_rows, n)


def mirror_lower_to_upper(M, block_rows=DEFAULT_BLOCK_ROWS):
    """Copy the strict lower triangle of a square matrix onto the upper one, by blocks.

    Touches ``O(block_rows * n)`` entries at a time, so memory maps are streamed. A float64
    C-contiguous ``M`` (every output of :func:`gram`) is copied by the compiled
    :func:`infntk._backends._common.mirror_tiles` (by ``32 x 32`` squares, on the chunk
    threads for large matrices); the copies are exact either way.
    """
    n = M.shape[0]
    A = np.asarray(M)
    if A.dtype == np.float64 and A.flags.c_contiguous and A.flags.writeable:
        for r0, r1 in row_blocks(n, block_rows):
            ntiles = -(-(r1 - r0) // _MIRROR_TILE)
            nch = (chunk_count(ntiles, per_thread=2)
                   if (r1 - r0) * (n - r0) >= _PARALLEL_ENTRIES else 1)
            run_chunks(lambda c: mirror_tiles(A, r0, r1, c, nch, _MIRROR_TILE), nch)
        return
    for r0, r1 in row_blocks(n, block_rows):
        # rows r0:r1, columns > row: from column block r0:r1 of the rows below
        for i in range(r0, r1):
            M[i, i + 1:r1] = M[i + 1:r1, i]
        if r1 < n:
            M[r0:r1, r1:] = M[r1:, r0:r1].T


def _mirror_block(M, r0, r1, parallel):
    """The strict upper triangle's columns ``r0:r1`` of ``M`` from its rows ``r0:r1``
    (:func:`infntk._backends._common.mirror_stripe`; on the chunk threads if ``parallel`` and
    large)."""
    A = np.asarray(M)
    ntiles = -(-r1 // _MIRROR_TILE)
    nch = (chunk_count(ntiles, per_thread=2)
           if parallel and (r1 - r0) * r1 >= _PARALLEL_ENTRIES else 1)
    run_chunks(lambda c: mirror_stripe(A, r0, r1, c, nch, _MIRROR_TILE), nch)


def gram(engine, X1, X2, symmetric, out_nngp=None, out_ntk=None,
         block_rows=DEFAULT_BLOCK_ROWS, kinds=_KINDS, progress=None, resume=None,
         label=None):
    """NNGP and NTK Gram matrices of ``engine`` for validated inputs.

    Parameters
    ----------
    engine : an engine of :mod:`infntk._backends`
    X1 : (n1, d) float64, C-contiguous (a read-only memory map works, see compiled_view)
    X2 : (n2, d) float64, C-contiguous; ``X1`` itself when ``symmetric``
    symmetric : bool
        ``X2`` is ``X1``: only the lower triangle is computed, then mirrored.
    out_nngp, out_ntk : (n1, n2) float64 C-contiguous arrays, optional
        Written block by block (``np.memmap`` works); allocated when ``None``.
    block_rows : int
        Rows per block, ``>= 1``.
    kinds : tuple of {"nngp", "ntk"}
        The kernels to keep. A kernel not listed is computed into a per-block scratch
        buffer and returned as ``None`` (no ``(n1, n2)`` allocation for it).
    progress : callable, optional
        Called as ``progress(pairs)`` after each block with the number of pairs computed.
    resume : object, optional
        ``resume.done(r0, r1)`` says whether block rows ``r0:r1`` are already in ``out_*``
        (then skipped); ``resume.record(r0, r1)`` is called after each new block is written
        and checked. See :class:`infntk._io.BlockProgress`.
    label : str, optional
        The network's description (its ``repr``) for error messages.

    Returns
    -------
    Kernels

    Raises
    ------
    ValueError
        ``out_*`` overlapping each other or the inputs.
    MemoryError
        Outputs to allocate larger than the available memory (nothing is computed).
    OverflowError
        An entry of a block is inf or NaN (the message names the row, column and settings).
    """
    block_rows = check_positive_int(block_rows, "block_rows")
    kinds = check_kinds(kinds)
    n1, n2 = X1.shape[0], X2.shape[0]
    outs = {"nngp": out_nngp, "ntk": out_ntk}
    for k in _KINDS:
        if k not in kinds and outs[k] is not None:
            raise ValueError(f"out_{k} was given but {k!r} is not in kinds={kinds!r}.")
    check_no_alias({"out_nngp": out_nngp, "out_ntk": out_ntk},
                   {"X1": X1, "X2": None if symmetric else X2})
    to_allocate = sum(1 for k in kinds if outs[k] is None)
    bn = min(block_rows, n1)
    check_memory(8 * n1 * n2 * to_allocate + 8 * bn * (n2 + n2) * 2,
                 f"the {n1} x {n2} Gram matrices ({'+'.join(k for k in kinds if outs[k] is None)})"
                 if to_allocate else f"the {bn} x {n2} block work space")
    for k in kinds:
        outs[k] = check_out(outs[k], (n1, n2), f"out_{k}")
    scratch = {k: np.empty((bn, n2)) for k in _KINDS if k not in kinds}

    # writeable views: read-only inputs would compile every kernel a second time
    X1 = compiled_view(X1)
    X2 = X1 if symmetric else compiled_view(X2)
    with engine_lock():
        rows1 = engine.rows(X1)
        rows2 = rows1 if symmetric else engine.rows(X2)
        plan = engine.prepare(rows1, rows2, symmetric)
    # the symmetric outputs are mirrored block by block (each block's rows while they are in
    # the cache), except when resuming: then blocks already on disk are not read again, and
    # the whole matrix is mirrored at the end
    mirror = symmetric and resume is None
    # (the BLAS limit is not worth it for small Gram matrices)
    with blas_one_thread() if n1 * n2 >= _BLAS_LIMIT_PAIRS else contextlib.nullcontext():
        _fill_blocks(engine, plan, X1, X2, symmetric, outs, scratch, kinds, block_rows,
                     progress, resume, label, mirror)
    engine.finish(plan)
    if symmetric and not mirror:
        for k in kinds:
            mirror_lower_to_upper(outs[k], block_rows)
    return Kernels(outs["nngp"] if "nngp" in kinds else None,
                   outs["ntk"] if "ntk" in kinds else None,
                   plan.error_bound, plan.orders)


def _fill_blocks(engine, plan, X1, X2, symmetric, outs, scratch, kinds, block_rows, progress,
                 resume, label, mirror=False):
    """The block loop of :func:`gram` (BLAS products, engine blocks, checks, progress).

    Each block is filled by the engine, then checked, mirrored (``mirror``: its stripe of the
    upper triangle, :func:`_mirror_block`), recorded (``resume``) and counted (``progress``),
    in block order. The BLAS product of a block is made in the calling thread (under its
    BLAS limit) and always as one product of the whole block, so its rounding, hence the
    result, never depends on the thread count. With several Numba threads and a large
    matrix, the calling thread makes the *next* block's product and checks, mirrors, records
    and counts the *previous* block while the engine's block runs its chunks on the pool
    (:func:`infntk._numba_config.overlap_with_chunks`), work that would otherwise leave the
    chunk threads idle (a tenth to a fifth of a gaussian network's time at depth 10). Then
    a block is recorded and counted once the next one is written too, an ``OverflowError``
    is raised after the next block is written, and ``resume.done`` of the next block is
    asked before the current one is recorded.
    """
    n1, n2 = X1.shape[0], X2.shape[0]
    overlap = n1 * n2 >= _BLAS_LIMIT_PAIRS and chunk_count(2, per_thread=1) > 1

    def todo():
        for r0, r1 in row_blocks(n1, block_rows):
            if resume is None or not resume.done(r0, r1):
                yield r0, r1

    use_product = getattr(engine, "gram_product", True)     # the conv engine needs none

    def product(blk):
        if blk is None or not use_product:
            return None
        return X1[blk[0]:blk[1]] @ X2[:blk[1] if symmetric else n2].T

    def fill(r0, G, dst):
        with engine_lock():
            engine.block(plan, X1, X2, G, r0, symmetric, dst["nngp"], dst["ntk"])

    def settle(r0, r1, dst, parallel):
        # the kept kernels only: the scratch of the others is the next block's already
        kept = {k: dst[k] for k in kinds}
        check_block_finite(engine, kept, r0, symmetric, X1, X2, label, parallel)
        if mirror:
            for k in kinds:
                _mirror_block(outs[k], r0, r1, parallel)
        if resume is not None:
            resume.record(r0, r1)
        if progress is not None:
            progress((r1 - r0) * (r0 + r1 + 1) // 2 if symmetric else (r1 - r0) * n2)

    blocks = todo()
    nxt = next(blocks, None)
    G_next = product(nxt)
    prev = None                  # a block written, not yet settled (checked, recorded, ...)
    while nxt is not None:
        (r0, r1), G = nxt, G_next
        # plain ndarray views (a memory map's too): one compiled signature for every output
        dst = {k: np.asarray(outs[k][r0:r1] if k in kinds else scratch[k][:r1 - r0])
               for k in _KINDS}
        nxt = next(blocks, None)
        if overlap and nxt is not None:
            made = {}

            def meanwhile(nxt=nxt, prev=prev):
                made["G"] = product(nxt)
                if prev is not None:
                    settle(*prev, parallel=False)

            with overlap_with_chunks(meanwhile):
                fill(r0, G, dst)
            G_next, prev = made["G"], (r0, r1, dst)
        else:
            fill(r0, G, dst)
            if prev is not None:
                settle(*prev, parallel=True)
                prev = None
            settle(r0, r1, dst, parallel=True)
            G_next = product(nxt)


def diag(engine, X):
    """``k(x, x)`` for every row of validated ``X``, from the engine's per-row record."""
    with engine_lock():
        nngp, ntk = engine.diag(engine.rows(compiled_view(X)))
    return KernelDiag(nngp, ntk)
