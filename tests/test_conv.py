"""Convolutional NNGP/NTK (infntk.conv) against neural-tangents, mpmath, the FC kernel, and laws.

References that the code under test did not produce:

* ``tests/data/nt_conv_references.npz``: neural-tangents 0.6.5 ``stax`` kernels of 21
  architectures, 5 of them in the standard parameterization (``scripts/make_nt_references.py``);
* ``tests/conv_mp_reference.py``: a 30-digit mpmath evaluation carrying the full spatial
  covariance, on 3 x 3 and 4 x 4 images;
* ``infntk.FCNet`` for 1 x 1 images; symmetry, PSD and the translation laws of circular padding.
"""
from __future__ import annotations

import json
import math
import os
import zlib

import numpy as np
import pytest

import infntk
from infntk import Activation, Dense
from oracles.mp_conv import mp_conv_kernels
from infntk.conv import (AvgPool, Conv, Flatten, GlobalAvgPool,
                         conv_kernels, kernel_regime)
from tolerances import CLOSED_FORM_RTOL, PSD_RTOL, rel_err_vs_max, tolerance



def _act(name, params):
    return Activation(name, **params)


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                    "nt_conv_references.npz")
NT_RTOL = tolerance(1e-10, "agreement with neural-tangents' float64 stax kernels (the accuracy target for convolutional kernels)")
# neural-tangents takes the angle as arctan2(sqrt(max(q11 q22 - q12^2, 0)), q12): at a
# self pair (theta = 0 exactly) the subtraction leaves ~1e-16 relative, i.e. theta ~ 1e-8,
# which the step-like duals (relu's kd, sign's k) pass on linearly. Its diagonal is
# therefore only checked loosely here, and against the mpmath reference at 1e-12 below.
NT_DIAG_RTOL = tolerance(3e-9, "neural-tangents' diagonal: sqrt of a cancelled q11 q22 - q12^2")
REORDER_RTOL = tolerance(1e-13, "a permutation of positions changes the summation order")

S2 = math.sqrt(2.0)


def build(desc):
    """infntk layers from the JSON-style dicts of the reference data."""
    out = []
    for L in desc:
        k = L["layer"]
        if k == "conv":
            out.append(Conv(L["filter"], L["padding"], L["w_std"], L["b_std"],
                            L.get("parameterization", "ntk")))
        elif k == "activation":
            out.append(_act(L["name"], L.get("params", {})))
        elif k == "avgpool":
            out.append(AvgPool(L["window"]))
        elif k == "flatten":
            out.append(Flatten())
        elif k == "gap":
            out.append(GlobalAvgPool())
        elif k == "dense":
            out.append(Dense(L["w_std"], L["b_std"], L.get("parameterization", "ntk")))
        else:
            raise ValueError(k)
    return out


def conv(q, padding, w, b, parameterization="ntk"):
    return {"layer": "conv", "filter": q, "padding": padding, "w_std": w, "b_std": b,
            "parameterization": parameterization}


def act(name, **params):
    return {"layer": "activation", "name": name, "params": params}


def dense(w, b, parameterization="ntk"):
    return {"layer": "dense", "w_std": w, "b_std": b, "parameterization": parameterization}


FLAT, GAP = {"layer": "flatten"}, {"layer": "gap"}


def _nt_cases():
    d = np.load(DATA)
    return d, json.loads(str(d["layers"]))


_D, _META = _nt_cases()


# ----------------------------------------------------------------------------- neural-tangents
@pytest.mark.parametrize("a", range(len(_META)), ids=[m["name"] for m in _META])
def test_against_neural_tangents(a):
    m = _META[a]
    layers = build(m["layers"])
    if m["inputs"] == "X":
        A, B, C = _D["X1"], _D["X1"], _D["X2"]
    else:
        A, B, C = _D["Y1"], _D["Y1"][:2], _D["Y1"][1:]
    width = m.get("width")
    nngp, ntk = conv_kernels(layers, A, width=width)
    off = ~np.eye(A.shape[0], dtype=bool)
    for got, ref in ((nngp, _D[f"nngp_{a}"]), (ntk, _D[f"ntk_{a}"])):
        scale = np.abs(ref).max()
        assert np.abs(got - ref)[off].max() <= NT_RTOL * scale
        assert np.abs(np.diag(got) - np.diag(ref)).max() <= NT_DIAG_RTOL * scale
    nngp, ntk = conv_kernels(layers, B, C, width=width)
    assert rel_err_vs_max(nngp, _D[f"nngp_cross_{a}"]) <= NT_RTOL
    assert rel_err_vs_max(ntk, _D[f"ntk_cross_{a}"]) <= NT_RTOL


# ----------------------------------------------------------------------------- mpmath
MP_CASES = [
    ("relu_same_flatten", (3, 3, 1), [conv(3, "same", 1.5, 0.1), act("relu"),
                                      conv(3, "same", 1.5, 0.1), act("relu"), FLAT,
                                      dense(1.5, 0.1)]),
    ("relu_same_gap", (4, 4, 1), [conv(3, "same", S2, 0.0), act("relu"), conv(3, "same", S2, 0.0),
                                  act("relu"), GAP, dense(S2, 0.0)]),
    ("erf_circular_gap_head", (3, 3, 2), [conv(3, "circular", 1.5, 0.1), act("erf"), GAP,
                                          dense(1.5, 0.1), act("erf"), dense(1.5, 0.1)]),
    ("erf_valid_pool_flatten", (4, 4, 1), [conv(2, "valid", 1.5, 0.1), act("erf"),
                                           {"layer": "avgpool", "window": 2},
                                           act("relu"), FLAT, dense(1.0, 0.2)]),
    ("sign_gelu_same_flatten", (3, 3, 1), [conv(3, "same", 1.2, 0.1), act("gelu"),
                                           conv(3, "same", 1.0, 0.3), act("sign"), FLAT,
                                           dense(1.0, 0.1)]),
]
STD = "standard"
# the standard parameterization (width: the hidden channels); its NTK is checked on the
# plane engine (GAP, and Flatten on the plane (0, 0)) and the full-state one (AvgPool); the
# diagonal engine against the plane (0, 0) in tests/test_conv_planes.py
MP_CASES_STANDARD = [
    ("standard_relu_same_gap", (4, 4, 2), [conv(3, "same", 1.5, 0.1, STD), act("relu"),
                                           conv(3, "same", 1.5, 0.1, STD), act("relu"), GAP,
                                           dense(1.5, 0.1, STD)], 6),
    ("standard_erf_flatten_no_bias", (4, 4, 1), [conv(3, "same", 1.3, None, STD), act("erf"),
                                                 conv(2, "valid", 1.5, 0.2, STD), act("relu"),
                                                 FLAT, dense(1.2, None, STD), act("relu"),
                                                 dense(1.0, 0.1, STD)], 3),
    ("standard_pool_gap", (4, 4, 1), [conv(3, "circular", 1.5, 0.1, STD), act("relu"),
                                      {"layer": "avgpool", "window": 2},
                                      conv(1, "same", 1.5, 0.1), act("erf"), GAP,
                                      dense(1.5, 0.1, STD)], 5),
]


@pytest.mark.parametrize("name,shape,desc,width",
                         [c + (None,) for c in MP_CASES] + MP_CASES_STANDARD,
                         ids=[c[0] for c in MP_CASES + MP_CASES_STANDARD])
def test_against_mpmath(name, shape, desc, width):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    X = rng.standard_normal((3,) + shape)
    X[2] = X[0] * 0.999 + 0.001 * X[1]         # a nearly identical pair
    ref_n, ref_t = mp_conv_kernels(desc, X, dps=30, width=width)
    nngp, ntk = conv_kernels(build(desc), X, width=width)
    assert rel_err_vs_max(nngp, ref_n) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(ntk, ref_t) <= CLOSED_FORM_RTOL
    Y = rng.standard_normal((2,) + shape)
    ref_n, ref_t = mp_conv_kernels(desc, X[:2], Y, dps=30, width=width)
    nngp, ntk = conv_kernels(build(desc), X[:2], Y, width=width)
    assert rel_err_vs_max(nngp, ref_n) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(ntk, ref_t) <= CLOSED_FORM_RTOL


def test_zero_image_without_bias_against_mpmath():
    """A zero image with b_std = 0 is degenerate (q = 0): correlation 0 by convention."""
    desc = [conv(3, "same", S2, 0.0), act("relu"), GAP, dense(S2, 0.0)]
    X = np.random.default_rng(3).standard_normal((3, 3, 3, 1))
    X[1] = 0.0
    ref_n, ref_t = mp_conv_kernels(desc, X, dps=30)
    nngp, ntk = conv_kernels(build(desc), X)
    assert rel_err_vs_max(nngp, ref_n) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(ntk, ref_t) <= CLOSED_FORM_RTOL


# ----------------------------------------------------------------------------- invariants
def _relu_net(padding, readout, depth=3, w=1.5, b=0.1):
    return ([Conv(3, padding, w, b), Activation("relu")] * depth + [readout, Dense(w, b)])


@pytest.mark.parametrize("readout", [Flatten(), GlobalAvgPool()], ids=["flatten", "gap"])
def test_symmetric_psd_and_cross_consistent(readout):
    X = np.random.default_rng(5).standard_normal((8, 6, 6, 2))
    layers = _relu_net("same", readout)
    nngp, ntk = conv_kernels(layers, X)
    for K in (nngp, ntk):
        assert np.array_equal(K, K.T)
        ev = np.linalg.eigvalsh(K)
        assert ev.min() >= -PSD_RTOL * ev.max()
    # the cross path (all pairs, no symmetric shortcut) gives the same matrix
    cn, ct = conv_kernels(layers, X, X.copy())
    assert rel_err_vs_max(cn, nngp) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(ct, ntk) <= CLOSED_FORM_RTOL


@pytest.mark.parametrize("readout", [Flatten(), GlobalAvgPool()], ids=["flatten", "gap"])
@pytest.mark.parametrize("shift", [(1, 0), (2, 3), (5, 1)])
def test_circular_translation_equivariance(readout, shift):
    X = np.random.default_rng(7).standard_normal((3, 5, 6, 2))
    Y = np.random.default_rng(8).standard_normal((2, 5, 6, 2))
    layers = [Conv(3, "circular", 1.5, 0.1), Activation("erf"), Conv(3, "circular", 1.5, 0.1),
              Activation("relu"), readout, Dense(1.5, 0.1)]
    ref = conv_kernels(layers, X, Y)
    rolled = conv_kernels(layers, np.roll(X, shift, axis=(1, 2)), np.roll(Y, shift, axis=(1, 2)))
    for got, want in zip(rolled, ref):
        assert rel_err_vs_max(got, want) <= REORDER_RTOL
    # GAP sums over every pair of positions: shifting ONE image leaves it unchanged too,
    # while Flatten (same positions only) does change
    one = conv_kernels(layers, X, np.roll(Y, shift, axis=(1, 2)))
    if isinstance(readout, GlobalAvgPool):
        for got, want in zip(one, ref):
            assert rel_err_vs_max(got, want) <= REORDER_RTOL
    else:
        assert rel_err_vs_max(one[1], ref[1]) > 1e-6


@pytest.mark.parametrize("scale", [1e80, 1e-80])
@pytest.mark.parametrize("readout", [Flatten(), GlobalAvgPool()], ids=["flatten", "gap"])
def test_relu_kernels_are_homogeneous_at_extreme_scales(scale, readout):
    """Without biases the ReLU kernels are homogeneous of degree 2 in the inputs:
    ``K(c x, c y) = c^2 K(x, y)``. At ``c = 1e80`` (variances ~1e160) and ``1e-80`` the engine
    leaves its fast ReLU form (``q_x q_y`` would overflow or underflow) for the guarded one,
    so this compares the two forms of the dual (and the symmetric and cross paths)."""
    X = np.random.default_rng(13).standard_normal((4, 5, 5, 2))
    Y = np.random.default_rng(14).standard_normal((3, 5, 5, 2))
    layers = [Conv(3, "same", 1.5, 0.0), Activation("relu"), Conv(2, "same", 1.2, 0.0),
              Activation("relu"), readout, Dense(1.5, 0.0)]
    for args in ((X,), (X, Y)):
        ref = conv_kernels(layers, *args)
        got = conv_kernels(layers, *(A * scale for A in args))
        for g, r in zip(got, ref):
            assert rel_err_vs_max(g / scale ** 2, r) <= CLOSED_FORM_RTOL


@pytest.mark.parametrize("readout", [Flatten(), GlobalAvgPool()], ids=["flatten", "gap"])
def test_thread_chunks_give_the_same_matrix(readout, monkeypatch):
    """The pair list split over several threads (one chunk and one set of work arrays each,
    borders of the padded state reused across pairs) gives the single-chunk result exactly."""
    import numba
    X = np.random.default_rng(15).standard_normal((7, 6, 5, 1))
    Y = np.random.default_rng(16).standard_normal((3, 6, 5, 1))
    layers = _relu_net("same", readout, depth=2) + [Activation("erf"), Dense(1.0, 0.1)]
    monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    one = conv_kernels(layers, X) + conv_kernels(layers, X, Y)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 3)
    three = conv_kernels(layers, X) + conv_kernels(layers, X, Y)
    for a, b in zip(one, three):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("activation,params", [("relu", {}), ("erf", {}), ("gelu", {}),
                                               ("leaky_relu", {"alpha": 0.1}), ("sign", {})])
@pytest.mark.parametrize("filt,padding", [(1, "same"), (3, "circular")])
def test_one_pixel_image_is_the_fc_kernel(activation, params, filt, padding):
    """On 1 x 1 images a Conv is a Dense layer (filter 1, or filter 3 wrapping onto itself)."""
    X = np.random.default_rng(11).standard_normal((5, 1, 1, 4))
    depth, w, b = 3, 1.5, 0.1
    layers = ([Conv(filt, padding, w, b), _act(activation, params)] * depth
              + [Flatten(), Dense(w, b)])
    nngp, ntk = conv_kernels(layers, X)
    ref = infntk.FCNet(activation, depth=depth, w_std=w, b_std=b, **params).kernels(
        X.reshape(5, 4))
    assert rel_err_vs_max(nngp, ref.nngp) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(ntk, ref.ntk) <= CLOSED_FORM_RTOL


def test_kernel_regime_detection():
    relu = Activation("relu")
    assert kernel_regime([Conv(), relu, Conv(), relu, Flatten()]) == ("diagonal",) * 4
    assert kernel_regime([Conv(), relu, GlobalAvgPool()]) == ("full", "full")
    assert kernel_regime([Conv(), relu, AvgPool(2), Conv(), relu, Flatten(), Dense()]) == (
        "full", "full", "full", "diagonal", "diagonal")
    assert kernel_regime([Conv(), AvgPool(2), Conv(), GlobalAvgPool()]) == ("full",) * 3


# ----------------------------------------------------------------------------- validation
GOOD = [Conv(), Activation("relu"), Flatten(), Dense()]
IMG = np.zeros((2, 4, 4, 1)) + 1.0


@pytest.mark.parametrize("kwargs,exc,word", [
    ({"filter": 0}, ValueError, "filter"), ({"filter": 2.5}, TypeError, "filter"),
    ({"padding": "full"}, ValueError, "padding"), ({"padding": 3}, ValueError, "padding"),
    ({"w_std": -1.0}, ValueError, "w_std"), ({"b_std": float("nan")}, ValueError, "b_std"),
    ({"w_std": "1"}, TypeError, "w_std")])
def test_conv_layer_validation(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        Conv(**kwargs)


def test_pool_and_activation_validation():
    with pytest.raises(ValueError, match="window"):
        AvgPool(0)
    with pytest.raises(ValueError, match="unknown|valid"):
        Activation("no_such_activation")
    # activations without a closed form run the series engine (tests/test_conv_series.py),
    # which refuses a discontinuous one next to them
    with pytest.raises(ValueError, match="discontinuous"):
        conv_kernels([Conv(), Activation("tanh"), Conv(), Activation("sign"), Flatten()], IMG)


@pytest.mark.parametrize("X,exc,word", [
    (np.zeros((2, 4, 4)), ValueError, "4-D"), (np.zeros((0, 4, 4, 1)), ValueError, "non-empty"),
    (np.full((2, 4, 4, 1), np.nan), ValueError, "NaN"),
    (np.zeros((2, 4, 4, 1), dtype=complex), TypeError, "real"),
    (np.array([[[["a"]]]]), TypeError, "real")])
def test_image_validation(X, exc, word):
    with pytest.raises(exc, match=word):
        conv_kernels(GOOD, X)
    with pytest.raises(exc, match=word):
        conv_kernels(GOOD, IMG, X)


def test_shape_mismatch_and_layer_lists():
    with pytest.raises(ValueError, match="same \\(H, W, C\\)"):
        conv_kernels(GOOD, IMG, np.ones((2, 4, 5, 1)))
    bad = [
        ([], ValueError, "empty"), ("relu", TypeError, "list"),
        ([Activation("relu"), Conv(), Flatten()], ValueError, "layers\\[0\\]"),
        ([Conv(), Activation("relu")], ValueError, "readout"),
        ([Conv(), Flatten(), GlobalAvgPool()], ValueError, "readout"),
        ([Conv(), Flatten(), Conv()], ValueError, "after the readout"),
        ([Conv(), Dense(), Flatten()], ValueError, "before the readout"),
        ([Conv(), 3, Flatten()], TypeError, "layers\\[1\\]"),
        ([Conv(5, "valid"), Flatten()], ValueError, "does not fit"),
        ([Conv(), AvgPool(5), Flatten()], ValueError, "window=5"),
    ]
    for layers, exc, word in bad:
        with pytest.raises(exc, match=word):
            conv_kernels(layers, IMG)


def test_circular_filter_larger_than_the_image_against_mpmath():
    """Circular padding wraps more than once when the filter exceeds the image."""
    desc = [conv(5, "circular", 1.5, 0.1), act("relu"), GAP, dense(1.5, 0.1)]
    X = np.random.default_rng(17).standard_normal((2, 3, 2, 1))
    ref_n, ref_t = mp_conv_kernels(desc, X, dps=30)
    nngp, ntk = conv_kernels(build(desc), X)
    assert rel_err_vs_max(nngp, ref_n) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(ntk, ref_t) <= CLOSED_FORM_RTOL


def test_standard_parameterization_needs_the_width():
    std = [Conv(3, "same", 1.5, 0.1, "standard"), Activation("relu"),
           Conv(3, "same", 1.5, 0.1, "standard"), Activation("relu"), GlobalAvgPool(),
           Dense(1.5, 0.1, "standard")]
    with pytest.raises(ValueError, match="width"):
        conv_kernels(std, IMG)
    with pytest.raises(ValueError, match="width"):
        infntk.Network(std)
    with pytest.raises(ValueError, match="parameterization"):
        Conv(3, parameterization="mup")
    with pytest.raises(ValueError, match="width"):
        conv_kernels(std, IMG, width=0)
    # only the first Conv standard: its fan-in is the images' channels, no width needed
    first = [Conv(3, "same", 1.5, 0.1, "standard"), Activation("relu"), Flatten(), Dense()]
    conv_kernels(first, IMG)
    X = np.random.default_rng(21).standard_normal((3, 4, 4, 2))
    net = infntk.Network(std, width=6)
    k = net.kernels(X)
    nngp, ntk = conv_kernels(std, X, width=6)
    assert np.array_equal(k.nngp, nngp) and np.array_equal(k.ntk, ntk)
    assert np.array_equal(net.diag(X).ntk, np.diag(ntk))


def test_standard_parameterization_keeps_the_nngp():
    """The standard parameterization changes the NTK only (docs/conventions.md)."""
    X = np.random.default_rng(22).standard_normal((4, 5, 5, 1))
    for readout in (Flatten(), GlobalAvgPool()):
        ntk_l = [Conv(3, "same", 1.5, 0.1), Activation("erf"), Conv(3, "same", 1.5, 0.1),
                 Activation("relu"), readout, Dense(1.5, 0.1)]
        std_l = [Conv(3, "same", 1.5, 0.1, "standard"), Activation("erf"),
                 Conv(3, "same", 1.5, 0.1, "standard"), Activation("relu"), readout,
                 Dense(1.5, 0.1, "standard")]
        a = conv_kernels(ntk_l, X)
        b = conv_kernels(std_l, X, width=8)
        assert np.array_equal(a[0], b[0])
        assert rel_err_vs_max(a[1], b[1]) > 0.1
