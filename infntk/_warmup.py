"""Compile every code path once: :func:`warmup` (also ``infntk warmup`` on the command line).

infntk's engines are compiled by Numba on first use and cached on disk (``NUMBA_CACHE_DIR``,
by default ``__pycache__`` next to the modules). A fresh installation therefore pays the
compilation the first time each path runs: the closed-form pair loop, the series engine,
the composed and convolutional engines. :func:`warmup` runs every path once on tiny inputs,
so that later processes only load the cache.

Example
-------
>>> from infntk._warmup import warmup    # also infntk.warmup
>>> timings = warmup(verbose=False)
>>> [name for name, _ in timings][:2]
['closed form, symmetric (relu)', 'closed form, cross (relu)']
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from .conv import Conv, Flatten, GlobalAvgPool
from .fcnet import FCNet
from .layers import Activation, Dense, LayerNorm, Residual
from .network import Network

__all__ = ["warmup", "PATHS", "count_specializations", "literal_specializations"]

_RNG_SEED = 0


def _data(n=6, d=5):
    rng = np.random.default_rng(_RNG_SEED)
    return rng.standard_normal((n, d)), rng.standard_normal((n - 2, d))


def _closed_symmetric():
    X, _ = _data()
    FCNet("relu", depth=2, w_std=1.5, b_std=0.1).kernels(X)


def _closed_cross():
    X, Y = _data()
    FCNet("relu", depth=2, w_std=1.5, b_std=0.1).kernels(X, Y)


def _closed_diag():
    X, _ = _data()
    FCNet("relu", depth=2, w_std=1.5, b_std=0.1).diag(X)


def _smooth():
    X, Y = _data()
    for name in ("erf", "gelu"):
        net = FCNet(name, depth=2, w_std=1.5, b_std=0.1)
        net.kernels(X)
        net.kernels(X, Y)


def _arccos():
    X, Y = _data()
    net = FCNet("arccos", depth=2, w_std=1.5, b_std=0.1, n=2)
    net.kernels(X)
    net.kernels(X, Y)


def _memmap_outputs():
    X, Y = _data()
    net = FCNet("relu", depth=2, w_std=1.5, b_std=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        outs = [np.lib.format.open_memmap(os.path.join(tmp, f"{k}.npy"), mode="w+",
                                          dtype=np.float64, shape=(X.shape[0], Y.shape[0]))
                for k in ("nngp", "ntk")]
        net.kernels(X, Y, out_nngp=outs[0], out_ntk=outs[1])
        del outs


def _memmap_inputs():
    X, Y = _data()
    net = FCNet("relu", depth=2, w_std=1.5, b_std=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        px, py = os.path.join(tmp, "X.npy"), os.path.join(tmp, "Y.npy")
        np.save(px, X)
        np.save(py, Y)
        Xm, Ym = np.load(px, mmap_mode="r"), np.load(py, mmap_mode="r")
        net.kernels(Xm)
        net.kernels(Xm, Ym)
        del Xm, Ym


def _series():
    X, Y = _data()
    net = FCNet("tanh", depth=2, w_std=1.0, b_std=0.1)
    net.kernels(X)
    net.kernels(X, Y)


def _callable():
    X, _ = _data()
    FCNet(lambda x: np.sin(x) + 0.5 * x, depth=1, w_std=1.0, b_std=0.1).kernels(X)


def _composed():
    X, Y = _data()
    net = Network([Dense(1.5, 0.1), Activation("relu"),
                   Residual([Dense(1.0, 0.1), Activation("erf"), Dense(1.0, 0.0)]),
                   LayerNorm(), Dense(1.5, 0.1)])
    net.kernels(X)
    net.kernels(X, Y)


def _conv():
    rng = np.random.default_rng(_RNG_SEED)
    X = rng.standard_normal((3, 4, 4, 2))
    net = Network([Conv(3, "same", 1.5, 0.1), Activation("relu"), Flatten(), Dense(1.5, 0.1)])
    net.kernels(X)
    net.kernels(X, X[:2].copy())


def _conv_gap():
    rng = np.random.default_rng(_RNG_SEED)
    X = rng.standard_normal((3, 4, 4, 2))
    net = Network([Conv(3, "same", 1.5, 0.1), Activation("relu"), GlobalAvgPool(),
                   Dense(1.5, 0.1)])
    net.kernels(X)
    net.kernels(X, X[:2].copy())


def _conv_families():
    rng = np.random.default_rng(_RNG_SEED)
    X = rng.standard_normal((3, 4, 4, 2))
    # any family but the ReLU family's: the plane engine's second group (one compiled copy
    # serves erf, GELU, sin, cos, Gaussian, step, sign and the arc-cosine kernels)
    net = Network([Conv(3, "same", 1.5, 0.1), Activation("erf"), GlobalAvgPool(),
                   Dense(1.5, 0.1)])
    net.kernels(X)
    net.kernels(X, X[:2].copy())


PATHS = (
    ("closed form, symmetric (relu)", _closed_symmetric),
    ("closed form, cross (relu)", _closed_cross),
    ("closed form, diag", _closed_diag),
    ("smooth closed forms (erf, gelu)", _smooth),
    ("arc-cosine kernels", _arccos),
    ("memory-mapped outputs", _memmap_outputs),
    ("read-only memory-mapped inputs", _memmap_inputs),
    ("series engine (tanh)", _series),
    ("callable activation", _callable),
    ("composed network (Residual, LayerNorm)", _composed),
    ("convolutional network", _conv),
    ("convolutional network, GlobalAvgPool", _conv_gap),
    ("convolutional network, other families (erf)", _conv_families),
)


def _dispatchers():
    """``(qualified name, dispatcher)`` of every Numba function of infntk's loaded modules."""
    import sys

    from numba.core.registry import CPUDispatcher
    seen = set()
    for name, mod in list(sys.modules.items()):
        if not name.startswith("infntk") or mod is None:
            continue
        for attr, obj in list(vars(mod).items()):
            if isinstance(obj, CPUDispatcher) and id(obj) not in seen:
                seen.add(id(obj))
                yield f"{name}.{attr}", obj


def count_specializations():
    """Number of compiled signatures over infntk's Numba functions (loaded or compiled)."""
    return sum(len(obj.signatures) for _, obj in _dispatchers())


def literal_specializations():
    """``{name: [argument positions]}`` of the functions compiled for a literal argument type.

    A call such as ``f(x, 0)`` or ``f(x, True)`` from compiled code types the constant as a
    literal, and Numba compiles ``f`` once more for it (each copy costs its whole compile
    time); pass ``np.int64(0)`` or ``np.bool_(True)`` instead. Meaningful after a cold
    compile: functions loaded from the cache list only the signatures called from Python.
    """
    from numba.core import types
    found = {}
    for name, obj in _dispatchers():
        pos = sorted({k for sig in obj.signatures for k, a in enumerate(sig)
                      if isinstance(a, types.Literal)})
        if pos:
            found[name] = pos
    return found


def warmup(verbose=True):
    """Run every compiled path of infntk once on tiny inputs, filling the Numba cache.

    Parameters
    ----------
    verbose : bool
        Print one line per path (what it compiled or loaded, and how long it took).

    Returns
    -------
    list of (str, float)
        The paths, in order, with their times in seconds. With an empty cache the first
        paths include the compilation of what later paths share.

    Notes
    -----
    The compiled code is cached where Numba caches (``NUMBA_CACHE_DIR``, by default the
    user's cache directory, see :mod:`infntk._numba_config`); a process started later with
    the same cache only loads it. The command line adds no compiled path of its own (it runs
    the driver paths above: symmetric and cross kernels, read-only inputs, memmap outputs).
    Cost: the compilation itself (tens of seconds with an empty cache on a small machine,
    about a second once cached); the inputs are a few points.
    """
    timings = []
    for name, fn in PATHS:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        timings.append((name, dt))
        if verbose:
            print(f"{name:44} {dt:7.2f} s", flush=True)
    if verbose:
        print(f"{'total':44} {sum(dt for _, dt in timings):7.2f} s "
              f"({count_specializations()} compiled signatures)", flush=True)
    return timings
