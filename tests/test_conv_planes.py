"""The plane engine of infntk.conv (GlobalAvgPool networks of Conv and activation layers)
against the full-state engine, which carries the whole ``(h, h, w, w)`` covariance and is
itself checked against neural-tangents and mpmath in tests/test_conv.py.

A Conv keeps the offsets ``(i' - i, j' - j)`` of every entry, so the plane engine runs each
plane of fixed offsets through all layers, several pairs at a time; these tests switch it off
(``prog["planes"] = False``) to get the other engine's result for the same layers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import infntk.conv as conv_mod
from infntk import Activation, Dense
from infntk.conv import AvgPool, Conv, Flatten, GlobalAvgPool, conv_diag, conv_kernels
from tolerances import CLOSED_FORM_RTOL, rel_err_vs_max

S2 = math.sqrt(2.0)
NETS = {
    "relu_same": [Conv(3, "same", S2, 0.1), Activation("relu")] * 3
    + [GlobalAvgPool(), Dense(S2, 0.1)],
    "circular_mixed_filters": [Conv(3, "circular", 1.5, 0.1), Activation("relu"),
                               Conv(2, "circular", 1.2, 0.0), Activation("erf"),
                               GlobalAvgPool(), Dense(1.5, 0.1), Activation("relu"),
                               Dense(1.0, 0.0)],
    "valid_same_unfused": [Conv(3, "valid", 1.5, 0.1), Activation("gelu"),
                           Conv(2, "same", 1.5, 0.1), Conv(1, "valid"), Activation("relu"),
                           GlobalAvgPool(), Dense(1.5, 0.1)],
    "circular_filter_larger_than_image": [Conv(5, "circular", 1.5, 0.1),
                                          Activation("leaky_relu", alpha=0.2), GlobalAvgPool()],
    "sign_then_relu": [Conv(2, "same", 1.5, 0.1), Activation("sign"), Conv(3, "valid", 1.5, 0.1),
                       Activation("relu"), GlobalAvgPool(), Dense(1.5, 0.1)],
    "standard": [Conv(3, "same", 1.5, 0.1, "standard"), Activation("relu"),
                 Conv(3, "same", 1.5, None, "standard"), Activation("relu"), GlobalAvgPool(),
                 Dense(1.5, 0.1, "standard")],
}
SHAPES = {"circular_filter_larger_than_image": (3, 4, 1), "valid_same_unfused": (7, 6, 1)}
# the same bodies with the Flatten readout: the plane engine runs the plane (0, 0) alone (the
# spatial diagonal); the reference is then the diagonal engine
FLAT_NETS = {name: [Flatten() if isinstance(L, GlobalAvgPool) else L for L in layers]
             for name, layers in NETS.items()}


def _full_state(monkeypatch):
    orig = conv_mod._compile

    def no_planes(*args, **kwargs):
        prog = orig(*args, **kwargs)
        assert prog["planes"]
        prog["planes"] = False
        return prog
    monkeypatch.setattr(conv_mod, "_compile", no_planes)


@pytest.mark.parametrize("name", sorted(NETS))
def test_plane_engine_equals_the_full_state_engine(name, monkeypatch):
    layers = NETS[name]
    shape = SHAPES.get(name, (6, 5, 2))
    rng = np.random.default_rng(len(name))
    X = rng.standard_normal((11,) + shape)      # 55 pairs: batches of 8 and a partial one
    Y = rng.standard_normal((3,) + shape)
    width = 4
    got = (conv_kernels(layers, X, width=width) + conv_kernels(layers, X, Y, width=width)
           + conv_diag(layers, X, width=width))
    _full_state(monkeypatch)
    ref = (conv_kernels(layers, X, width=width) + conv_kernels(layers, X, Y, width=width)
           + conv_diag(layers, X, width=width))
    for g, r in zip(got, ref):
        assert rel_err_vs_max(g, r) <= CLOSED_FORM_RTOL


@pytest.mark.parametrize("name", sorted(FLAT_NETS))
def test_flatten_plane_equals_the_diagonal_engine(name, monkeypatch):
    """Flatten networks of Conv layers (activations fused) take the plane engine's plane
    ``(0, 0)``: symmetric Gram (the upper triangle, mirrored), cross Gram and ``conv_diag``
    against the diagonal engine; 11 images make batches of several segments (one ``x``
    against consecutive ``y``) and a partial batch, 3 cross images rows shorter than a batch."""
    layers = FLAT_NETS[name]
    shape = SHAPES.get(name, (6, 5, 2))
    rng = np.random.default_rng(100 + len(name))
    X = rng.standard_normal((11,) + shape)
    Y = rng.standard_normal((3,) + shape)
    width = 4
    got = (conv_kernels(layers, X, width=width) + conv_kernels(layers, X, Y, width=width)
           + conv_kernels(layers, Y, X, width=width) + conv_diag(layers, X, width=width))
    assert np.array_equal(got[0], got[0].T) and np.array_equal(got[1], got[1].T)
    _full_state(monkeypatch)
    ref = (conv_kernels(layers, X, width=width) + conv_kernels(layers, X, Y, width=width)
           + conv_kernels(layers, Y, X, width=width) + conv_diag(layers, X, width=width))
    for g, r in zip(got, ref):
        assert rel_err_vs_max(g, r) <= CLOSED_FORM_RTOL


def test_flatten_plane_mixed_scales_take_both_forms():
    """Images whose variances leave the ReLU family's fast range (``1e80`` times the others)
    next to ordinary ones: the call takes the per-batch check and the separate statistics
    instead of the products, in the same batches. Without biases the kernels are homogeneous
    of degree 2, ``K(c x, y) = c K(x, y)``, so the rows of the scaled images are the
    ordinary kernel's rows times ``c`` (and ``c^2`` on their own diagonal)."""
    layers = [Conv(3, "same", 1.5, 0.0), Activation("relu"), Conv(3, "same", 1.2, 0.0),
              Activation("relu"), Flatten(), Dense(1.5, 0.0)]
    X = np.random.default_rng(21).standard_normal((9, 5, 4, 1))
    scale = np.ones(9)
    scale[[2, 5]] = 1e80
    ref = conv_kernels(layers, X)
    got = conv_kernels(layers, X * scale[:, None, None, None])
    for g, r in zip(got, ref):
        assert rel_err_vs_max(g / np.outer(scale, scale), r) <= CLOSED_FORM_RTOL


def _plane_self_statistics_match(layers, shape, seed):
    """The plane engine's self statistics of 10 random images against those of the same
    program run by the other engine (full-state or diagonal), entry by entry."""
    X = np.random.default_rng(seed).standard_normal((10,) + shape)
    H, W, C = shape
    got = conv_mod._self_statistics(X, conv_mod._compile(layers, H, W, C, 4))
    prog = conv_mod._compile(layers, H, W, C, 4)
    assert prog["planes"]
    prog["planes"] = False
    ref = conv_mod._self_statistics(X, prog)
    for g, r in zip(got, ref):
        assert rel_err_vs_max(g, r) <= CLOSED_FORM_RTOL


@pytest.mark.parametrize("name", ["relu_same", "sign_then_relu", "standard"])
def test_flatten_self_statistics_equal_the_diagonal_engines(name):
    """The self pass of a Flatten plane program against the diagonal engine's, entry by entry
    (the statistics are kept position-major by the plane engine)."""
    _plane_self_statistics_match(FLAT_NETS[name], SHAPES.get(name, (6, 5, 2)), 9 + len(name))


def test_self_pair_is_exact_in_the_plane_engine():
    """At a self pair the plane (0, 0) reproduces the recorded variances bitwise, so relu's
    E[phi' phi'] is exactly 1/2 there: a symmetric Gram's diagonal equals conv_diag's and the
    cross Gram of a set with itself."""
    layers = NETS["relu_same"]
    X = np.random.default_rng(3).standard_normal((9, 5, 5, 1))
    nngp, ntk = conv_kernels(layers, X)
    dn, dt = conv_diag(layers, X)
    cn, ct = conv_kernels(layers, X, X.copy())
    assert np.array_equal(np.diag(nngp), dn) and np.array_equal(np.diag(ntk), dt)
    assert np.array_equal(np.diag(cn), dn) and np.array_equal(np.diag(ct), dt)


@pytest.mark.parametrize("name", sorted(NETS))
def test_self_pass_statistics_equal_the_full_state_engines(name):
    """The plane engine's self pass (plane (0, 0) of the pairs ``(x, x)``, the variances
    recorded on the way: the ``record`` path of ``_pl_plane``, which also skips the fused
    3 x 3 loop) against the full-state engine's self statistics: every activation's input
    variance ``q``, ``sqrt(q)`` and ``sqrt(E[phi^2])`` at every position, and ``k(x, x)``.
    A self pass that went wrong only there (one compiled copy of ``_pl_plane`` serves both
    paths) shows up here entry by entry, not only through the kernels."""
    _plane_self_statistics_match(NETS[name], SHAPES.get(name, (6, 5, 2)), 7 + len(name))


ROUTES = [   # (layers, the path they take)
    ([Conv(3), Activation("relu"), Activation("abs"), GlobalAvgPool()], "series"),
    ([Conv(3), AvgPool(2), Activation("relu"), Conv(3), Activation("relu"), GlobalAvgPool()],
     "full"),
    ([Conv(3), Activation("relu"), AvgPool(2), Activation("erf"), GlobalAvgPool(), Dense()],
     "full"),
    ([Conv(2, "valid"), Conv(3), Activation("gelu"), GlobalAvgPool(), Activation("relu")],
     "planes"),
    ([Conv(3), Activation("relu"), Conv(2, "valid"), Flatten(), Dense()], "planes"),
    ([Conv(3), Activation("relu"), AvgPool(2), Conv(3), Activation("relu"), Flatten()],
     "full"),
    ([Conv(3, "circular"), Activation("relu"), Conv(3, "same"), Flatten()], "full"),
]


@pytest.mark.parametrize("k", range(len(ROUTES)))
def test_plane_programs_fuse_every_activation(k):
    """The plane engine has no unfused-activation op: in a plane program every activation
    before GlobalAvgPool is fused into the Conv before it. An activation that does not follow
    a Conv follows another activation (the series path) or a pooling (the full-state engine);
    the program builder raises an internal error if it would ever emit one for the planes."""
    layers, route = ROUTES[k]
    got = "series" if conv_mod._has_series(layers) else None
    if got is None:
        prog = conv_mod._compile(layers, 6, 6, 1, None)
        got = "planes" if prog["planes"] else "full"
        codes = list(prog["iop"][:, 0])
        if got == "planes":
            assert conv_mod._ce.OP_ACT_F not in codes[:prog["kgap"]]
            assert conv_mod._ce.OP_ACT_D not in codes[:prog["kgap"]]
            assert {conv_mod._ce.OP_CONV_F, conv_mod._ce.OP_CONV_D} & set(codes[:prog["kgap"]])
        elif conv_mod._ce.OP_GAP in codes:
            assert conv_mod._ce.OP_ACT_F in codes
    assert got == route


@pytest.mark.parametrize("readout", [GlobalAvgPool, Flatten])
def test_network_ending_with_an_activation(readout):
    """An activation as the last layer (after the readout) acts on the readout's scalar
    kernel: relu's arc-cosine dual (Cho & Saul 2009) of the network without it, written out
    here, ``k = sqrt(q_x q_y) (sin t + (pi - t) cos t) / (2 pi)`` and ``Theta' = Theta (pi -
    t) / (2 pi)``, ``cos t = k_xy / sqrt(q_x q_y)`` (the program builder once raised an
    IndexError for a list ending with an activation)."""
    body = [Conv(3, "same", 1.5, 0.1), Activation("gelu"), readout(), Dense(1.3, 0.2)]
    X = np.random.default_rng(11).standard_normal((5, 4, 5, 1))
    n0, t0 = conv_kernels(body, X)
    n1, t1 = conv_kernels(body + [Activation("relu")], X)
    q = np.diag(n0)
    m = np.sqrt(np.outer(q, q))
    th = np.arccos(np.clip(n0 / m, -1.0, 1.0))
    np.fill_diagonal(th, 0.0)                   # exact at a self pair (arccos near 1 is not)
    assert rel_err_vs_max(n1, m * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)) \
        <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(t1, t0 * (np.pi - th) / (2 * np.pi)) <= CLOSED_FORM_RTOL


def test_fma_rounds_once_where_the_cpu_has_it():
    """``fma(a, b, c)`` (infntk._vmath's, the engines' fused multiply-add) against exact rational
    arithmetic: ``a b + c`` rounded once where the target CPU has FMA instructions, the two
    roundings of ``a * b + c`` otherwise."""
    from fractions import Fraction

    from numba import njit

    from infntk import _vmath

    f = njit(lambda a, b, c: _vmath.fma(a, b, c))
    rng = np.random.default_rng(5)
    for _ in range(200):
        a, b = 1.0 + rng.random(2) * 2.0 ** -20
        c = -float(Fraction(a) * Fraction(b)) * (1.0 + rng.standard_normal() * 2.0 ** -50)
        exact = float(Fraction(a) * Fraction(b) + Fraction(c))
        assert f(a, b, c) == (exact if _vmath.HAS_FMA else a * b + c)
