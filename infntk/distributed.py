"""Gram matrices beyond one machine: NNGP and NTK as dask arrays, block by block.

:func:`gram` returns lazy :mod:`dask.array` Gram matrices whose ``(i, j)`` block is
``net.kernels(X1[rows_i], X2[rows_j])``, computed by whichever worker of the current dask
scheduler (threads, processes, or any ``dask.distributed`` cluster) runs the task. Each row block
of the inputs is its own graph key, so a worker receives only the row blocks of the blocks it
computes (``2 * chunk * d`` floats per block), never the whole data set; the network itself is
one small key (its constructor arguments; rebuilt once per worker).

Exactness. The closed forms evaluate each pair ``(x, y)`` independently of the other rows, so a
block computed as ``net.kernels(Xi, Xj)`` holds the same numbers as the corresponding block of
``net.kernels(X1, X2)`` (the test suite checks equality to ``1e-15`` relative to ``max|K|``; in
practice they are bitwise equal). For ``X2=None`` only the blocks on and below the diagonal are
computed: diagonal blocks by ``net.kernels(Xi)`` (symmetric), off-diagonal blocks by the cross
call ``net.kernels(Xi, Xj)``, which is just as exact, and the upper blocks are their
transposes, so the result is exactly symmetric and costs half the pairs.

Cost. Per block, ``O(chunk^2 (d + L))`` time and ``2 chunk^2`` float64 of output per kernel
(``chunk = 4096``: 128 MiB for both kernels). See the README section "Beyond one machine" for
measured throughput and a worked ``10^5 x 10^5`` example, and
``benchmarks/bench_distributed.py``.

Threads. The compiled engine parallelizes each block over its rows (Numba, OpenMP layer); run
workers with one thread each and let Numba use the cores (``nthreads=1``), or many threads each
with ``NUMBA_NUM_THREADS=1``, to avoid oversubscription.

dask is an optional dependency: ``pip install 'infntk[distributed]'``.

Example
-------
>>> import numpy as np, infntk
>>> from infntk.distributed import gram
>>> X = np.random.default_rng(0).standard_normal((10, 3))
>>> net = infntk.FCNet("relu", depth=2)
>>> k = gram(net, X, chunks=4)
>>> k.ntk.chunks
((4, 4, 2), (4, 4, 2))
>>> bool(np.array_equal(k.ntk.compute(), net.ntk(X)))
True
"""
from __future__ import annotations

import functools
import numbers

import numpy as np

from . import _io
from ._gram import Kernels, check_kinds, row_blocks
from ._validation import check_pair
from .activations import ACTIVATIONS
from .fcnet import FCNet
from .layers import Activation, Residual
from .network import Network

__all__ = ["gram", "gram_to_npy", "to_npy"]


def _require_dask():
    try:
        import dask
        import dask.array as da
    except ImportError as exc:
        raise ImportError(
            "infntk.distributed needs dask, which is not installed: "
            "pip install 'infntk[distributed]' (or pip install 'dask[distributed]')") from exc
    return dask, da


def _recipe(net):
    """A small picklable description of ``net``: the FCNet constructor arguments when they
    rebuild it (registered activations hold lambdas and mpmath constants that do not pickle),
    otherwise the object itself, cloudpickled."""
    if isinstance(net, Network) and not isinstance(net, FCNet):
        try:
            layers = _layers_recipe(net.layers)
            return ("layers", (layers, net.width, net.tol))
        except TypeError:
            pass                      # a callable activation: cloudpickle below
    if isinstance(net, FCNet):
        act = net.activation
        args = (act.name, net.depth, net.w_std, net.b_std, net.parameterization, net.width,
                tuple(sorted(act.params.items())))
        try:
            if repr(_load_net(("spec", args))) == repr(net):
                return ("spec", args)
        except (ValueError, TypeError, NotImplementedError):
            pass
    import cloudpickle
    return ("pickle", cloudpickle.dumps(net))


def _check_inputs(net, X1, X2):
    """Rows (``(n, d)``) or, for a convolutional network, images (``(n, H, W, C)``)."""
    if getattr(net, "_conv", False):
        from .conv import check_image_pair
        return check_image_pair(X1, X2)
    return check_pair(X1, X2)


def _layers_recipe(layers):
    """Layers as nested tuples of names and numbers (registered activations only)."""
    out = []
    for layer in layers:
        if isinstance(layer, Activation):
            fn = layer.fn
            if fn.name not in ACTIVATIONS or "callable" in fn.params:
                raise TypeError("not a registered activation")
            out.append(("act", fn.name, tuple(sorted(fn.params.items()))))
        elif isinstance(layer, Residual):
            out.append(("res", layer.alpha, _layers_recipe(layer.layers)))
        else:                          # Dense, LayerNorm, convolutional layers: dataclasses
            out.append(("layer", layer))
    return tuple(out)


def _layers_from_recipe(recipe):
    layers = []
    for item in recipe:
        if item[0] == "act":
            layers.append(Activation(item[1], **dict(item[2])))
        elif item[0] == "res":
            layers.append(Residual(_layers_from_recipe(item[2]), alpha=item[1]))
        else:
            layers.append(item[1])
    return layers


@functools.lru_cache(maxsize=8)
def _load_net(recipe):
    kind, payload = recipe
    if kind == "layers":
        layers, width, tol = payload
        return Network(_layers_from_recipe(layers), width=width, tol=tol)
    if kind == "spec":
        name, depth, w_std, b_std, parameterization, width, params = payload
        return FCNet(name, depth=depth, w_std=w_std, b_std=b_std,
                     parameterization=parameterization, width=width, **dict(params))
    import cloudpickle
    return cloudpickle.loads(payload)


def _block(recipe, Xi, Xj):
    net = _load_net(recipe)
    k = net.kernels(Xi) if Xj is None else net.kernels(Xi, Xj)
    return k.nngp, k.ntk


def _check_chunks(chunks, same):
    if isinstance(chunks, numbers.Integral) and not isinstance(chunks, bool):
        rc = cc = int(chunks)
    elif isinstance(chunks, (tuple, list)) and len(chunks) == 2 and all(
            isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in chunks):
        rc, cc = int(chunks[0]), int(chunks[1])
    else:
        raise TypeError(f"chunks must be an int or a pair of ints (rows, columns) per block, "
                        f"got {chunks!r}.")
    if rc < 1 or cc < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks!r}.")
    if same and rc != cc:
        raise ValueError(f"chunks must be square for X2=None (the upper blocks are the "
                         f"transposed lower ones), got {chunks!r}.")
    return rc, cc


def _lower_blocks(net, A, B, same, rc, cc):
    """Row/column bounds and ``{(i, j): {"nngp": dask block, "ntk": dask block}}`` for every
    block to compute (``j <= i`` only when ``same``)."""
    dask, da = _require_dask()
    if not hasattr(net, "kernels"):
        raise TypeError(f"net must have a kernels(X1, X2) method (an infntk.FCNet), "
                        f"got {type(net).__name__}.")
    delayed = dask.delayed
    dnet = delayed(_recipe(net), pure=True)
    rows = list(row_blocks(A.shape[0], rc))
    cols = rows if same else list(row_blocks(B.shape[0], cc))
    xa = [delayed(np.ascontiguousarray(A[r0:r1]), pure=True) for r0, r1 in rows]
    xb = xa if same else [delayed(np.ascontiguousarray(B[c0:c1]), pure=True)
                          for c0, c1 in cols]
    block = delayed(_block, pure=True, nout=2)
    computed = {}
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            if same and j > i:
                continue  # the transpose of block (j, i)
            nngp, ntk = block(dnet, xa[i], None if (same and i == j) else xb[j])
            shape = (r1 - r0, c1 - c0)
            computed[i, j] = {"nngp": da.from_delayed(nngp, shape, dtype=np.float64),
                              "ntk": da.from_delayed(ntk, shape, dtype=np.float64)}
    return rows, cols, computed


def gram(net, X1, X2=None, chunks=4096):
    """NNGP and NTK Gram matrices of ``net`` as lazy dask arrays, one task per block.

    Parameters
    ----------
    net : infntk.FCNet
        Any object with ``kernels(X1, X2=None)`` returning ``.nngp`` and ``.ntk``.
    X1 : (n1, d) array
    X2 : (n2, d) array, optional
        ``None`` means ``X1``: the upper blocks are then transposes of the lower ones.
    chunks : int or (int, int)
        Rows and columns per block (``(4096, 4096)`` by default; must be square for
        ``X2=None``).

    Returns
    -------
    Kernels
        ``.nngp`` and ``.ntk``: dask arrays ``(n1, n2)``, float64, with ``chunks`` blocks.
        ``.compute()``, ``.to_zarr(...)``, ``dask.array.store`` or :func:`to_npy` evaluate
        them; both share the block tasks, so compute them together
        (``dask.compute(k.nngp, k.ntk)``) to evaluate each block once.

    Notes
    -----
    Block ``(i, j)`` equals the same block of ``net.kernels(X1, X2)`` to rounding (the closed
    forms are pairwise; see the module docstring). The inputs are validated and cast to
    float64 once, here; each row block is a separate graph key.

    Examples
    --------
    >>> import numpy as np, dask, infntk
    >>> X, Y = np.eye(3), np.ones((2, 3))
    >>> net = infntk.FCNet("erf", depth=2)
    >>> nngp, ntk = dask.compute(*gram(net, X, Y, chunks=2))
    >>> bool(np.array_equal(ntk, net.ntk(X, Y)))
    True
    """
    dask, da = _require_dask()
    A, B, same = _check_inputs(net, X1, X2)
    rc, cc = _check_chunks(chunks, same)
    rows, cols, computed = _lower_blocks(net, A, B, same, rc, cc)
    out = {}
    for name in ("nngp", "ntk"):
        out[name] = [[computed[i, j][name] if (i, j) in computed else computed[j, i][name].T
                      for j in range(len(cols))] for i in range(len(rows))]
    return Kernels(da.block(out["nngp"]), da.block(out["ntk"]))


def to_npy(arr, path, progress=False, overwrite=False):
    """Evaluate a 2-D dask array into a ``.npy`` file, one row of blocks at a time.

    Each row of blocks is computed by the current scheduler (threads, or the workers of a
    ``dask.distributed`` client) and written here into a ``np.memmap``, so memory on this
    machine is one row of blocks (``chunk * n2`` floats). To write from the workers to shared
    storage instead, use ``arr.to_zarr(...)`` (needs ``zarr``).

    Parameters
    ----------
    arr : dask array, 2-D
    path : str
        Destination ``.npy`` file. It appears only when complete (a ``.partial`` file is
        filled, fsync-ed and renamed); a killed run leaves any previous file intact.
    progress : bool
        Show a tqdm progress bar over the rows of blocks.
    overwrite : bool
        Replace an existing ``path`` (default: ``FileExistsError``).

    Returns
    -------
    numpy.memmap
        The written array, opened read-only.
    """
    _require_dask()
    if arr.ndim != 2:
        raise ValueError(f"arr must be a 2-D dask array, got shape {arr.shape}.")
    if arr.dtype != np.float64:
        raise ValueError(f"arr must be float64, got {arr.dtype}.")
    from tqdm.auto import tqdm
    _io.check_output_path(path, overwrite=overwrite)
    # an arbitrary graph has no inputs hash: a partial file is never resumed, only replaced
    prog = _io.BlockProgress({"arr": path}, arr.shape, {"graph": str(arr.name)},
                             overwrite=True)
    prog.discard()
    mm = prog.open()["arr"]
    try:
        r0 = 0
        for i in tqdm(range(arr.numblocks[0]), disable=not progress, desc="row blocks"):
            rows = arr.blocks[i].compute()
            mm[r0:r0 + rows.shape[0]] = rows
            r0 += rows.shape[0]
        del mm
        prog.commit()
    except BaseException:
        prog.discard()
        raise
    return np.load(path, mmap_mode="r")


def gram_to_npy(net, X1, X2=None, path="K", chunks=4096, kernels=("nngp", "ntk"),
                progress=False, overwrite=False):
    """Compute Gram matrices on the current dask scheduler and write them to ``.npy`` files.

    Row ``i`` of blocks (for ``X2=None`` only the blocks ``j <= i``) is computed as one batch
    of tasks (both kernels from the same block tasks) and written here into
    ``np.memmap`` files; for ``X2=None`` each off-diagonal block is also written transposed
    into the upper triangle, so every pair is computed once.

    Parameters
    ----------
    net : infntk.FCNet
    X1 : (n1, d) array
    X2 : (n2, d) array, optional
    path : str
        Output stem: writes ``{path}_nngp.npy`` and ``{path}_ntk.npy`` (those in ``kernels``).
    chunks : int or (int, int)
        Block size, as in :func:`gram`.
    kernels : sequence of {"nngp", "ntk"}
    progress : bool
        tqdm progress bar over the rows of blocks.
    overwrite : bool
        Replace existing output files, and discard an unfinished run of other inputs or
        settings (default: ``FileExistsError``).

    Returns
    -------
    dict
        ``{kernel: numpy.memmap}`` of the written files, opened read-only.

    Notes
    -----
    Files (see :mod:`infntk._io`): the outputs appear only when complete; until then they are
    ``{path}_{kernel}.npy.partial`` with a progress record ``{path}_{kernel}.npy.progress.json``
    (first kernel), and a call with the same inputs, network and chunks after a kill resumes
    with the rows of blocks not yet written, giving bitwise the same files.

    Memory here: one row of blocks, ``chunk * n2 * 8`` bytes per kernel (``chunk = 2048``,
    ``n2 = 10^5``: 1.6 GB each). Disk: ``n1 * n2 * 8`` bytes per kernel. Parallelism: the
    ``n2 / chunk`` blocks of a row run at once, enough for clusters of up to that many
    worker threads.
    """
    dask, _ = _require_dask()
    A, B, same = _check_inputs(net, X1, X2)
    rc, cc = _check_chunks(chunks, same)
    kernels = check_kinds(kernels, "kernels")
    rows, cols, computed = _lower_blocks(net, A, B, same, rc, cc)
    n1, n2 = A.shape[0], B.shape[0]
    paths = {k: f"{path}_{k}.npy" for k in kernels}
    key = {"inputs": _io.hash_arrays(A, None if same else B), "network": repr(net),
           "tol": getattr(net, "tol", None), "chunks": [rc, cc], "kernels": list(kernels)}
    prog = _io.BlockProgress(paths, (n1, n2), key, overwrite=overwrite)
    mms = prog.open()
    from tqdm.auto import tqdm
    for i in tqdm(range(len(rows)), disable=not progress, desc="row blocks"):
        if prog.done(i):
            continue
        js = [j for j in range(len(cols)) if (i, j) in computed]
        vals = dask.compute(*[computed[i, j][k] for j in js for k in kernels])
        r0, r1 = rows[i]
        it = iter(vals)
        for j in js:
            c0, c1 = cols[j]
            for k in kernels:
                blk = next(it)
                mms[k][r0:r1, c0:c1] = blk
                if same and j < i:
                    mms[k][c0:c1, r0:r1] = blk.T
        prog.record(i)
    del mms
    prog.commit()
    return {k: np.load(p, mmap_mode="r") for k, p in paths.items()}
