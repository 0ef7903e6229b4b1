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
from infntk.conv import Conv, GlobalAvgPool, conv_diag, conv_kernels
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
