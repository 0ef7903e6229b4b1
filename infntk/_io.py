"""Writing files so that nothing is lost and nothing incomplete looks complete.

Every file infntk writes (the command line's ``.npy``/``.npz``, :func:`infntk.distributed.to_npy`
and :func:`~infntk.distributed.gram_to_npy`, :meth:`infntk.convergence.SweepResult.save` and
the checkpoints of :func:`~infntk.convergence.width_sweep`) goes through this module:

* **atomic replacement**: data go to a temporary file in the destination's directory, which is
  flushed, ``fsync``-ed and moved into place with ``os.replace`` only when complete. A process
  killed at any moment (even ``SIGKILL``) leaves the previous file intact, or no final file;
  never a file that loads but holds partial data;
* **inputs are never overwritten**: an output that is the same file as an input (same inode,
  ``os.path.samefile``, whatever the path spelling or links) is refused, even with
  ``overwrite=True``;
* **existing outputs are kept** unless ``overwrite=True`` (``--force`` on the command line);
* **disk space is checked up front** and reserved (``posix_fallocate``) for memory-mapped
  outputs, so a full disk gives one clear error naming the path and the bytes needed, instead
  of a ``SIGBUS`` and a full-size file of zeros;
* **resumable block-wise writes** (:class:`BlockProgress`): a sidecar progress record
  (``<output>.progress.json``) lists the blocks on disk, a hash of the inputs and the settings
  of the computation; a rerun with exactly the same inputs and settings continues where the
  killed run stopped and produces bitwise the same file as an uninterrupted run; any mismatch
  refuses to resume. The record is rewritten (after flushing the data) at most once a second
  (``INFNTK_PROGRESS_INTERVAL`` seconds), so a kill loses at most that much work.

Example
-------
>>> import os, tempfile, json
>>> d = tempfile.mkdtemp()
>>> p = os.path.join(d, "a.json")
>>> with atomic_open(p, "w") as fh:
...     json.dump({"x": 1}, fh)
>>> json.load(open(p))
{'x': 1}
>>> try:
...     check_output_path(p)
... except FileExistsError as exc:
...     print("refused")
refused
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

__all__ = ["DiskSpaceError", "check_output_path", "check_disk_space", "atomic_open",
           "fsync_dir", "hash_arrays", "BlockProgress", "partial_path", "progress_path"]


class DiskSpaceError(OSError):
    """Not enough free disk space for an output (``errno.ENOSPC``)."""


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(path, inputs=(), overwrite=False, name="out"):
    """Refuse ``path`` if it is one of ``inputs``, exists (unless ``overwrite``), or its
    directory is missing. Returns the absolute path.

    Raises
    ------
    ValueError
        ``path`` is the same file as an input (never overwritten, even with ``overwrite``).
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    FileNotFoundError
        The directory of ``path`` does not exist.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path, got {path!r}.")
    path = os.fspath(path)
    for inp in inputs:
        if inp is not None and (_same_file(path, inp) or
                                os.path.abspath(path) == os.path.abspath(os.fspath(inp))):
            raise ValueError(f"{name}: {path!r} is the input file {os.fspath(inp)!r}; "
                             "refusing to overwrite an input, choose another output path.")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"{name}: directory {directory!r} does not exist",
                                directory)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(errno.EEXIST, f"{name}: {path!r} exists; pass overwrite=True "
                              "(--force on the command line) to replace it", path)
    return os.path.abspath(path)


def check_disk_space(path, nbytes):
    """``DiskSpaceError`` if the file system holding ``path`` has less than ``nbytes`` free."""
    directory = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(directory).free
    if nbytes > free:
        raise DiskSpaceError(errno.ENOSPC, f"not enough disk space for {path!r}: needs "
                             f"{nbytes} bytes, {free} free", path)


def fsync_dir(directory):
    """``fsync`` a directory so that a rename in it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path, mode="wb", inputs=(), overwrite=True, name="path"):
    """Open a temporary file next to ``path``; on success flush, fsync and ``os.replace`` it.

    On any exception (``KeyboardInterrupt`` included) the temporary file is removed and
    ``path`` is untouched. ``overwrite`` and ``inputs``: as in :func:`check_output_path`.
    """
    path = check_output_path(path, inputs, overwrite, name)
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def hash_arrays(*arrays, chunk_bytes=1 << 24):
    """SHA-256 (hex) of the shapes, dtypes and bytes of ``arrays`` (``None`` entries count).

    Reads in chunks, so large memory-mapped inputs are not copied.
    """
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        a = np.asarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        flat = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
        step = max(1, chunk_bytes // max(1, flat.shape[1] * a.itemsize))
        for r0 in range(0, flat.shape[0], step):
            h.update(np.ascontiguousarray(flat[r0:r0 + step]).tobytes())
    return h.hexdigest()


def partial_path(path):
    """Where a block-wise output is written before it is complete."""
    return f"{path}.partial"


def progress_path(path):
    """The sidecar progress record of a block-wise output."""
    return f"{path}.progress.json"


class BlockProgress:
    """Resumable block-wise writing of one or more ``.npy`` files through memory maps.

    Parameters
    ----------
    paths : dict ``name -> path``
        Final ``.npy`` paths (e.g. ``{"nngp": "K_nngp.npy", "ntk": "K_ntk.npy"}``).
    shape : tuple of int
        Shape of every array (float64).
    key : dict
        JSON-serialisable description of the computation: a hash of the inputs
        (:func:`hash_arrays`) and every setting that changes a value or the block layout.
        A rerun resumes only when this is exactly the recorded one.
    inputs : sequence of paths
        Input files, never overwritten.
    overwrite : bool
        Replace existing final files (and discard a partial output of other settings).

    Use::

        prog = BlockProgress(paths, shape, key, inputs, overwrite)
        mms = prog.open()            # {name: np.memmap} of the partial files
        for each block b:
            if prog.done(*b): continue
            ... write mms[name][block] ...
            prog.record(*b)          # after the data: flush, then the sidecar (atomically)
        prog.commit()                # fsync, then os.replace every partial into place

    The data files are ``<path>.partial`` until :meth:`commit`; the sidecar is
    ``progress_path(first path)``. Both are removed after the commit.
    """

    def __init__(self, paths, shape, key, inputs=(), overwrite=False):
        self.paths = {k: os.path.abspath(os.fspath(p)) for k, p in paths.items()}
        self.shape = tuple(int(s) for s in shape)
        self.key = json.loads(json.dumps({"shape": list(self.shape), "names": sorted(self.paths),
                                          **key}))
        self.inputs = tuple(inputs)
        self.overwrite = overwrite
        first = next(iter(self.paths.values()))
        self.sidecar = progress_path(first)
        self.partials = {k: partial_path(p) for k, p in self.paths.items()}
        self.blocks = set()
        self.resumed = False
        self.complete = False
        self.mms = None
        #: seconds between progress records (environment ``INFNTK_PROGRESS_INTERVAL``)
        self.interval = float(os.environ.get("INFNTK_PROGRESS_INTERVAL", "1.0"))
        self._last_write = time.monotonic()

    # ---------------------------------------------------------------- set-up
    def _read_sidecar(self):
        try:
            with open(self.sidecar) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def _write_sidecar(self, complete=False):
        record = {"key": self.key, "blocks": sorted(list(b) for b in self.blocks),
                  "complete": complete}
        with atomic_open(self.sidecar, "w", overwrite=True, name="progress record") as fh:
            json.dump(record, fh)

    def open(self):
        """Create (or reopen, to resume) the partial files; returns ``{name: memmap}``."""
        for k, p in self.paths.items():
            check_output_path(p, self.inputs, overwrite=True, name=k)
        old = self._read_sidecar()
        resumable = (old is not None and old.get("key") == self.key
                     and all(os.path.exists(p) for p in self.partials.values()))
        if old is not None and not resumable:
            if not self.overwrite:
                raise FileExistsError(
                    errno.EEXIST, f"{self.sidecar!r} records an unfinished run with other inputs "
                    "or settings (or its data are missing); refusing to resume it. Rerun with "
                    "the same inputs and settings, or pass overwrite=True (--force) to start "
                    "over", self.sidecar)
            self.discard()
        if resumable:
            self.resumed = True
            self.blocks = {tuple(b) for b in old.get("blocks", [])}
            self.mms = {k: np.lib.format.open_memmap(p, mode="r+")
                        for k, p in self.partials.items()}
            for k, mm in self.mms.items():
                if mm.shape != self.shape or mm.dtype != np.float64:
                    raise ValueError(f"{self.partials[k]!r} does not match the recorded "
                                     "shape; remove it or pass overwrite=True (--force).")
            self.complete = bool(old.get("complete"))
            return self.mms
        for p in self.paths.values():
            check_output_path(p, self.inputs, self.overwrite)
        nbytes = 8 * int(np.prod(self.shape)) + 256
        check_disk_space(next(iter(self.paths.values())), nbytes * len(self.paths))
        self.mms = {}
        try:
            for k, p in self.partials.items():
                mm = np.lib.format.open_memmap(p, mode="w+", dtype=np.float64, shape=self.shape)
                self.mms[k] = mm
                _reserve(p)
            self._write_sidecar()
        except BaseException:
            self.discard()
            raise
        return self.mms

    # ---------------------------------------------------------------- progress
    def done(self, *block):
        """Whether ``block`` (any tuple of ints) is already on disk."""
        return self.complete or tuple(int(b) for b in block) in self.blocks

    def record(self, *block):
        """Mark ``block`` as written. At most every :attr:`interval` seconds (and always at
        the commit) the data are flushed first, then the sidecar is rewritten, so the record
        never lists a block that is not on disk; a kill loses at most that much work."""
        self.blocks.add(tuple(int(b) for b in block))
        now = time.monotonic()
        if now - self._last_write >= self.interval:
            for mm in self.mms.values():
                mm.flush()
            self._write_sidecar()
            self._last_write = time.monotonic()

    def commit(self):
        """Make the outputs final: fsync each partial file, ``os.replace`` it into place."""
        for mm in self.mms.values():
            mm.flush()
        self.mms = None
        self._write_sidecar(complete=True)
        for k, part in self.partials.items():
            if os.path.exists(part):
                with open(part, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(part, self.paths[k])
        for directory in {os.path.dirname(p) for p in self.paths.values()}:
            fsync_dir(directory)
        with contextlib.suppress(OSError):
            os.unlink(self.sidecar)

    def discard(self):
        """Remove the partial files and the sidecar (the final files are untouched)."""
        self.mms = None
        for p in list(self.partials.values()) + [self.sidecar]:
            with contextlib.suppress(OSError):
                os.unlink(p)


def _reserve(path):
    """Allocate the blocks of ``path`` now (``posix_fallocate``): a full disk fails here with
    ``DiskSpaceError`` instead of ``SIGBUS`` when a memory-mapped page is first written."""
    if not hasattr(os, "posix_fallocate"):
        return
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskSpaceError(errno.ENOSPC, f"not enough disk space for {path!r}: needs "
                                 f"{size} bytes", path) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", 95)):
            raise
    finally:
        os.close(fd)
