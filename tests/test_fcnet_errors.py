"""Bad inputs raise errors that name the argument; nothing returns NaN silently."""
import numpy as np
import pytest

import infntk


@pytest.fixture
def net():
    return infntk.FCNet("relu", depth=2)


@pytest.mark.parametrize("X, exc, word", [
    (np.array([[np.nan, 1.0]]), ValueError, "NaN"),
    (np.array([[np.inf, 1.0]]), ValueError, "NaN or inf"),
    (np.ones(3), ValueError, "2-D"),
    (np.ones((2, 2, 2)), ValueError, "2-D"),
    (np.ones((0, 3)), ValueError, "non-empty"),
    (np.ones((3, 0)), ValueError, "non-empty"),
    (np.array([["a", "b"]]), TypeError, "numeric"),
    (np.ones((2, 2), dtype=complex), TypeError, "numeric"),
    (None, TypeError, "X1"),
])
def test_bad_X1(net, X, exc, word):
    with pytest.raises(exc, match=word) as info:
        net.kernels(X)
    assert "X1" in str(info.value)


def test_mismatched_widths(net):
    with pytest.raises(ValueError, match="X1 and X2 must have the same number of columns"):
        net.kernels(np.ones((2, 3)), np.ones((2, 4)))


def test_bad_X2_named(net):
    with pytest.raises(ValueError, match="X2"):
        net.kernels(np.ones((2, 3)), np.full((2, 3), np.nan))


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"w_std": -1.0}, ValueError, "w_std"),
    ({"b_std": -0.1}, ValueError, "b_std"),
    ({"w_std": np.nan}, ValueError, "w_std"),
    ({"w_std": None}, TypeError, "w_std"),
    ({"depth": -1}, ValueError, "depth"),
    ({"depth": 1.5}, TypeError, "depth"),
    ({"activation": "nope"}, ValueError, "unknown name 'nope'; valid names are"),
    ({"activation": 3}, TypeError, "activation"),
    ({"parameterization": "mup"}, ValueError, "parameterization"),
    ({"parameterization": "standard"}, ValueError, "width is required"),
    ({"parameterization": "standard", "width": 0}, ValueError, "width"),
    ({"activation": "leaky_relu", "alpha": "x"}, TypeError, "alpha"),
    ({"activation": "arccos", "n": 7}, ValueError, "n must be"),
    ({"activation": "relu", "alpha": 0.1}, TypeError, "relu"),
])
def test_bad_constructor_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        infntk.FCNet(**kwargs)


def test_int_and_fortran_inputs_accepted():
    net = infntk.FCNet("relu", depth=1)
    Xi = np.arange(6).reshape(3, 2)
    Xf = np.asfortranarray(Xi.astype(np.float32))
    np.testing.assert_array_equal(net.ntk(Xi), net.ntk(Xf))


def test_overflow_is_an_error_not_nan():
    # arccos(n=2) squares the variance at every layer: 100 layers overflow float64.
    net = infntk.FCNet("arccos", n=2, depth=100, w_std=2.0)
    with pytest.raises(OverflowError, match="overflows"):
        net.kernels(np.ones((2, 3)) * 10)


def test_out_arrays_checked_and_used():
    net = infntk.FCNet("erf", depth=2)
    X = np.random.default_rng(0).standard_normal((5, 3))
    o1, o2 = np.empty((5, 5)), np.empty((5, 5))
    k = net.kernels(X, out_nngp=o1, out_ntk=o2)
    assert k.nngp is o1 and k.ntk is o2
    with pytest.raises(ValueError, match="out_ntk"):
        net.kernels(X, out_nngp=o1, out_ntk=np.empty((4, 5)))
