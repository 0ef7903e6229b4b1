"""Engines: the compute behind the Gram driver (:mod:`infntk._gram`).

An engine is built for one network and one input dimension ``d`` and answers four calls,
which the driver makes in this order (and nothing else calls them)::

    rows = engine.rows(X)                      # (n, d) validated -> per-row record, O(n L)
    plan = engine.prepare(rows1, rows2, symmetric)   # work that needs both sides
    engine.block(plan, X1, X2, G, row0, symmetric, out_nngp, out_ntk)   # one row block
    engine.finish(plan)                        # checks after the last block

``G[ib, j] = <X1[row0 + ib], X2[j]>`` is the block's Gram product; with ``symmetric`` only
``j <= row0 + ib`` must be written (the driver mirrors). ``plan`` carries ``error_bound``
(``None`` for closed forms, else a certified absolute bound for every entry of both
kernels) and ``orders`` (series truncation orders or ``None``). ``engine.diag(rows)`` returns
``(nngp, ntk)`` diagonals from a row record without any pair work.

Engines take plain arrays and records of arrays; they never validate (the public API does)
and never import the public API or the driver. Compiled kernels receive their many
arrays packed in NamedTuples (:class:`closed.NetRecord`, ...), a handful of arguments each.

To add an engine (e.g. a convolutional one): implement the five methods above in a module of
this package and return it from :func:`select_engine` (or construct it where its network
type is built); the driver and its callers stay as they are.
"""
from __future__ import annotations

from .closed import ClosedFormEngine
from .series import SeriesEngine

__all__ = ["ClosedFormEngine", "SeriesEngine", "select_engine"]


def select_engine(activation, setup, tol):
    """The engine for a homogeneous fully-connected network.

    Parameters
    ----------
    activation : infntk.activations.Activation
    setup : LayerSetup
        ``depth, d, w2, b2, cK, cb`` of the network (see :func:`infntk._layers.layer_setup`).
    tol : float
        Requested relative error of the Hermite series (ignored by closed forms).
    """
    if activation.family is not None:
        return ClosedFormEngine(activation.family, setup)
    return SeriesEngine(activation, setup, tol)
