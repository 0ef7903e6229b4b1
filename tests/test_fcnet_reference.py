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

# Known limitation (docs/closed_forms.md sec. 8): GELU's radial gap (perfectly correlated
# inputs of different scales, sqrt(k11 k22) - k(q1, q2, sqrt(q1 q2))) has no cancellation-free
# form yet: it is extrapolated (Richardson, ~1e-11 relative) for |log(r1/r2)| < 2e-3 and
# subtracted otherwise, which at large variance (GELU nearly homogeneous, gap ~ 5e-13 m at
# q ~ 1e7) loses up to 1e-4 of it. In the chaotic regime the recursion keeps that relative
# error of the carried gap (NTK: 1.8e-12 .. 2.2e-12 at depth 100 on nearly identical rows,
# 1.7e-12 at depth 10 and 3e-10 at depth 100 on parallel rows of norms 7e2, 1e3). Marked as
# expected failures, strictly: fixing them turns the test red until the mark goes.
_KNOWN = {
    "near-gelu-ntk-L100-w1.5-bNone", "near-gelu-ntk-L100-w1.5-b0.0",
    "near-gelu-ntk-L100-w1.5-b0.3", "norms-gelu-ntk-L10-w1.5-bNone",
    "norms-gelu-ntk-L100-w1.5-bNone", "norms-gelu-ntk-L10-w1.5-b0.0",
    "norms-gelu-ntk-L100-w1.5-b0.0", "norms-gelu-ntk-L100-w1.5-b0.3",
    "norms-gelu-standard512-L10-w1.5-bNone",
}


def _param(c):
    marks = [pytest.mark.xfail(strict=True, reason="GELU radial gap in the chaotic regime, see _KNOWN")
             ] if c["id"] in _KNOWN else []
    return pytest.param(c, id=c["id"], marks=marks)


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
