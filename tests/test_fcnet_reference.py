"""FCNet's closed forms against the stored 50-digit references (accuracy contract).

The references are computed by ``scripts/make_references.py`` with
``tests/oracles/mp_reference.py``, an independent mpmath implementation of the recursion and of
every closed-form dual (it shares no code with the compiled engine), on the hard geometries of
the accuracy contract (docs/conventions.md): nearly identical rows (relative distance
1e-2 .. 1e-10), a nearly antipodal row, parallel rows of norms 1e-3 to 1e3, zero rows; depths
up to 100; both parameterizations; with and without biases.
"""
import os

import numpy as np
import pytest

import infntk
from oracles.mp_reference import DEFAULT_DATA_PATH, load_reference_cases
from tolerances import CLOSED_FORM_RTOL, rel_err_vs_max

CASES = load_reference_cases()
# input norms 1e-100 / 1e100, even activations on nearly antipodal rows (w_std up to 3, depth
# up to 100), sin at small variance (scripts/make_references.py, extra_classes)
EXTRA = load_reference_cases(os.path.join(os.path.dirname(DEFAULT_DATA_PATH),
                                          "reference_kernels_extra.npz"))

def _param(c):
    return pytest.param(c, id=c["id"])


def _net(c):
    return infntk.FCNet(c["activation"], depth=c["depth"], w_std=c["w_std"], b_std=c["b_std"],
                        parameterization=c["parameterization"], width=c["width"], **c["params"])


def test_reference_file_covers_the_registry():
    names = {c["activation"] for c in CASES}
    closed = {n for n, f in infntk.ACTIVATIONS.items() if f().family is not None}
    assert closed <= names
    assert {c["depth"] for c in CASES} >= {0, 1, 3, 10, 100}
    assert {c["parameterization"] for c in CASES} == {"ntk", "standard"}


@pytest.mark.parametrize("c", [_param(c) for c in CASES])
def test_closed_form_matches_50_digit_reference(c):
    k = _net(c).kernels(c["X"])
    assert rel_err_vs_max(k.nngp, c["nngp"]) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(k.ntk, c["ntk"]) <= CLOSED_FORM_RTOL


@pytest.mark.parametrize("c", CASES[::7], ids=[c["id"] for c in CASES[::7]])
def test_diag_matches_reference_diagonal(c):
    dg = _net(c).diag(c["X"])
    assert rel_err_vs_max(dg.nngp, np.diag(c["nngp"])) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(dg.ntk, np.diag(c["ntk"])) <= CLOSED_FORM_RTOL


@pytest.mark.parametrize("c", EXTRA, ids=[c["id"] for c in EXTRA])
def test_closed_form_extra_classes(c):
    k = _net(c).kernels(c["X"])
    assert rel_err_vs_max(k.nngp, c["nngp"]) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(k.ntk, c["ntk"]) <= CLOSED_FORM_RTOL
