"""The Gram driver: the one blocked loop that turns an engine into NNGP and NTK matrices.

Every Gram matrix of the package is made here, whoever asks (:class:`infntk.FCNet`, the
command line, :mod:`infntk.distributed`)::

    rows1 = engine.rows(X1)             # O(n L) per-row record (variances, diagonals, ...)
    rows2 = rows1 if X2 is None else engine.rows(X2)
    plan  = engine.prepare(rows1, rows2, symmetric)  # anything that needs both sides
    for each block of rows r0:r1:
        G = X1[r0:r1] @ X2[:cols].T     # cols = r1 in the symmetric case (lower triangle)
        engine.block(plan, X1, X2, G, r0, symmetric, out_nngp[r0:r1], out_ntk[r0:r1])
    mirror the lower triangle (symmetric case)
    Kernels(out_nngp, out_ntk, plan.error_bound, plan.orders)

Engines live in :mod:`infntk._backends` and follow the protocol described there; the driver
knows nothing about activations or layers. Inputs arrive validated (C-contiguous float64,
matching widths); ``out_*`` may be memory maps (each block is written where it belongs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validation import check_positive_int

__all__ = ["Kernels", "KernelDiag", "gram", "diag", "row_blocks", "mirror_lower_to_upper",
           "check_out", "check_kinds", "DEFAULT_BLOCK_ROWS"]

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


def row_blocks(n, block_rows):
    """``(r0, r1)`` of consecutive blocks of ``block_rows`` rows covering ``range(n)``."""
    for r0 in range(0, n, block_rows):
        yield r0, min(r0 + block_rows, n)


def mirror_lower_to_upper(M, block_rows=DEFAULT_BLOCK_ROWS):
    """Copy the strict lower triangle of a square matrix onto the upper one, by blocks.

    Touches ``O(block_rows * n)`` entries at a time, so memory maps are streamed.
    """
    n = M.shape[0]
    for r0, r1 in row_blocks(n, block_rows):
        # rows r0:r1, columns > row: from column block r0:r1 of the rows below
        for i in range(r0, r1):
            M[i, i + 1:r1] = M[i + 1:r1, i]
        if r1 < n:
            M[r0:r1, r1:] = M[r1:, r0:r1].T


def gram(engine, X1, X2, symmetric, out_nngp=None, out_ntk=None,
         block_rows=DEFAULT_BLOCK_ROWS, kinds=_KINDS, progress=None):
    """NNGP and NTK Gram matrices of ``engine`` for validated inputs.

    Parameters
    ----------
    engine : an engine of :mod:`infntk._backends`
    X1 : (n1, d) float64, C-contiguous (a read-only memory map works)
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

    Returns
    -------
    Kernels
    """
    block_rows = check_positive_int(block_rows, "block_rows")
    kinds = check_kinds(kinds)
    n1, n2 = X1.shape[0], X2.shape[0]
    outs = {"nngp": out_nngp, "ntk": out_ntk}
    for k in _KINDS:
        if k in kinds:
            outs[k] = check_out(outs[k], (n1, n2), f"out_{k}")
        elif outs[k] is not None:
            raise ValueError(f"out_{k} was given but {k!r} is not in kinds={kinds!r}.")
    scratch = {k: np.empty((min(block_rows, n1), n2)) for k in _KINDS if k not in kinds}

    rows1 = engine.rows(X1)
    rows2 = rows1 if symmetric else engine.rows(X2)
    plan = engine.prepare(rows1, rows2, symmetric)
    for r0, r1 in row_blocks(n1, block_rows):
        cols = r1 if symmetric else n2
        G = X1[r0:r1] @ X2[:cols].T
        # plain ndarray views (a memory map's too): one compiled signature for every output
        dst = {k: np.asarray(outs[k][r0:r1] if k in kinds else scratch[k][:r1 - r0])
               for k in _KINDS}
        engine.block(plan, X1, X2, G, r0, symmetric, dst["nngp"], dst["ntk"])
        if progress is not None:
            progress((r1 - r0) * (r0 + r1 + 1) // 2 if symmetric else (r1 - r0) * n2)
    engine.finish(plan)
    if symmetric:
        for k in kinds:
            mirror_lower_to_upper(outs[k], block_rows)
    return Kernels(outs["nngp"] if "nngp" in kinds else None,
                   outs["ntk"] if "ntk" in kinds else None,
                   plan.error_bound, plan.orders)


def diag(engine, X):
    """``k(x, x)`` for every row of validated ``X``, from the engine's per-row record."""
    nngp, ntk = engine.diag(engine.rows(X))
    return KernelDiag(nngp, ntk)
