"""The per-entry certificate of the convolutional series engine against independent references.

``Kernels.error_bound`` of a convolutional network with a series activation bounds
``|computed - exact|`` for every entry; each entry's Mehler tails are weighted by
``|rho|^(K+1)`` (docs/conv.md, "Activations without a closed form"), so the orders are low and
the truncation error is a large part of the bound. The references did not come from the
series engine:

* the closed-form convolutional kernels (``infntk._duals``: erf, relu) against erf given as a
  Python callable (no family: the series path), at loose ``tol`` so that the truncation errors
  are far above the closed forms' own accuracy and the bound is really tested;
* the 2-D Gauss-Legendre dual of the whole recursion (``oracles.quad_dual`` through
  ``oracles.mp_conv``) for tanh on 3 x 3 images.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from infntk import Activation, Dense
from infntk.conv import (AvgPool, Conv, Flatten, GlobalAvgPool, conv_kernels,
                         conv_kernels_bounded)
from oracles.mp_conv import mp_conv_kernels
from oracles.quad_dual import quad_dual
from tolerances import CLOSED_FORM_RTOL, tolerance

ERF = Activation(lambda x: special.erf(x),
                 deriv=lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x))
# the closed-form kernels' own error (their accuracy contract, relative to max |K|)
REF_RTOL = CLOSED_FORM_RTOL
# what the quadrature oracle may be off by, relative to the kernel scale (float64 integrand,
# ~1e-15 per layer), allowed on top of the certified bound
ORACLE_OWN = tolerance(1e-14, "float64 quadrature duals, ~1e-15 per layer, through 3 layers")


def _swap(layers):
    return [Activation("erf") if L is ERF else L for L in layers]


def _diff_and_scale(got, ref):
    scale = max(np.abs(ref[0]).max(), np.abs(ref[1]).max())
    return max(np.abs(got[0] - ref[0]).max(), np.abs(got[1] - ref[1]).max()), scale


@st.composite
def networks(draw):
    size = draw(st.integers(2, 3))
    depth = draw(st.integers(1, 2))
    layers = []
    for i in range(depth):
        q = draw(st.integers(1, 3))
        pad = draw(st.sampled_from(["same", "circular"]))
        w = draw(st.floats(0.5, 2.0))
        b = draw(st.sampled_from([None, 0.0, 0.3]))
        # relu (kinked, algebraic tails) only as the last activation: its closed-form kernel
        # is the reference, and the bound must hold for it too
        kinked = i == depth - 1 and draw(st.booleans())
        layers += [Conv(q, pad, w, b), Activation("relu") if kinked else ERF]
    if not any(L is ERF for L in layers):
        layers = [Conv(1, "same", 1.2, 0.1), ERF] + layers
    tail = draw(st.sampled_from(["flatten", "gap", "pool"]))
    if tail == "pool":
        layers += [AvgPool(2), draw(st.sampled_from([Flatten(), GlobalAvgPool()]))]
    else:
        layers.append(Flatten() if tail == "flatten" else GlobalAvgPool())
    layers.append(Dense(draw(st.floats(0.5, 1.5)), draw(st.sampled_from([0.0, 0.2]))))
    scale = draw(st.floats(0.2, 2.5))
    seed = draw(st.integers(0, 2 ** 16))
    X = scale * np.random.default_rng(seed).standard_normal((3, size, size, 1))
    if draw(st.booleans()):                      # a near-duplicate: |rho| close to 1
        X[2] = X[0] + 1e-3 * X[1]
    tol = draw(st.sampled_from([1e-3, 1e-5, 1e-8]))
    cross = draw(st.booleans())
    return layers, X, tol, cross


@settings(max_examples=12, deadline=None)
@given(networks())
def test_certificate_is_never_exceeded(case):
    layers, X, tol, cross = case
    args = (X[:2], X[1:]) if cross else (X, None)      # cross: one pair at rho = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)    # tol may be out of reach (relu)
        nngp, ntk, bound, _ = conv_kernels_bounded(layers, *args, tol=tol)
    diff, scale = _diff_and_scale((nngp, ntk), conv_kernels(_swap(layers), *args))
    assert diff <= bound + REF_RTOL * scale, (diff, bound)


@pytest.mark.parametrize("readout", [Flatten, GlobalAvgPool])
def test_loose_tol_truncation_is_covered(readout):
    # low orders: the truncation error is ~the bound's size, far above the reference's
    # accuracy, so the comparison tests the bound itself
    X = 1.5 * np.random.default_rng(7).standard_normal((4, 3, 3, 1))
    layers = [Conv(3, "same", 1.6, 0.1), ERF, Conv(2, "circular", 1.3, 0.1), ERF, readout(),
              Dense(1.0, 0.1)]
    for tol in (1e-2, 1e-4, 1e-6):
        nngp, ntk, bound, orders = conv_kernels_bounded(layers, X, tol=tol)
        diff, scale = _diff_and_scale((nngp, ntk), conv_kernels(_swap(layers), X))
        assert diff <= bound + REF_RTOL * scale
        assert bound <= tol * max(np.diag(nngp).max(), np.diag(ntk).max())
    assert diff > 10 * REF_RTOL * scale or min(orders) > 0   # the series was truncated


def test_distinct_images_meet_a_tight_tol_with_relu():
    # relu converges algebraically at |rho| = 1, but distinct images' entries have |rho| < 1:
    # their tails are damped by |rho|^(K+1) and tol = 1e-12 is met; against the closed form
    X = np.random.default_rng(3).standard_normal((3, 4, 4, 2))
    layers = [Conv(3, "same", 1.4, 0.1), ERF, Conv(3, "same", 1.2, 0.1), Activation("relu"),
              Flatten(), Dense(1.0, 0.0)]
    nngp, ntk, bound, orders = conv_kernels_bounded(layers, X, tol=1e-12)
    diff, scale = _diff_and_scale((nngp, ntk), conv_kernels(_swap(layers), X))
    assert bound <= 1e-12 * max(np.diag(nngp).max(), np.diag(ntk).max())
    assert diff <= bound + REF_RTOL * scale
    assert max(orders) < 400


def _tanh_ref(dicts, X):
    return mp_conv_kernels(dicts, X, dps=30,
                           dual=quad_dual(np.tanh, lambda x: 1.0 - np.tanh(x) ** 2))


@pytest.mark.parametrize("readout", ["flatten", "gap"])
def test_tanh_loose_tol_against_quadrature(readout):
    X = 0.9 * np.random.default_rng(12).standard_normal((2, 3, 3, 1))
    tanh = Activation("tanh")
    layers = [Conv(3, "same", 1.3, 0.1), tanh, Conv(3, "circular", 1.2, 0.1), tanh,
              Flatten() if readout == "flatten" else GlobalAvgPool(), Dense(1.0, 0.1)]
    dicts = [{"layer": "conv", "filter": 3, "padding": "same", "w_std": 1.3, "b_std": 0.1},
             {"layer": "activation", "name": "tanh"},
             {"layer": "conv", "filter": 3, "padding": "circular", "w_std": 1.2, "b_std": 0.1},
             {"layer": "activation", "name": "tanh"}, {"layer": readout},
             {"layer": "dense", "w_std": 1.0, "b_std": 0.1}]
    ref = _tanh_ref(dicts, X)
    for tol in (1e-4, 1e-7):
        nngp, ntk, bound, _ = conv_kernels_bounded(layers, X, tol=tol)
        diff, scale = _diff_and_scale((nngp, ntk), ref)
        assert diff <= bound + ORACLE_OWN * scale
        assert bound <= tol * max(np.diag(nngp).max(), np.diag(ntk).max())


def test_low_correlation_estimate_keeps_a_valid_bound(monkeypatch):
    # without the sample of pairs a Flatten network's correlation estimate is 0 (its self runs
    # only have exact diagonal entries): the orders come out too low for tol, and the
    # certificate, computed per entry in the pair loop, must still hold and say so
    from infntk._backends import conv_series
    monkeypatch.setattr(conv_series, "_PARTNERS", 0)
    X = 1.5 * np.random.default_rng(8).standard_normal((3, 3, 3, 1))
    X[2] = X[0] + 1e-2 * X[1]
    layers = [Conv(3, "same", 1.5, 0.1), ERF, Flatten(), Dense(1.0, 0.0)]
    with pytest.warns(RuntimeWarning, match="was not met"):
        nngp, ntk, bound, _ = conv_kernels_bounded(layers, X, tol=1e-10)
    diff, scale = _diff_and_scale((nngp, ntk), conv_kernels(_swap(layers), X))
    assert bound > 1e-10 * max(np.diag(nngp).max(), np.diag(ntk).max())
    assert diff <= bound + REF_RTOL * scale
