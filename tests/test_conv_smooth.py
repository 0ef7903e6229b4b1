"""The smooth closed forms (erf, GELU, sin, cos, Gaussian) in convolutional networks, against the
independent mpmath recursion (tests/oracles/mp_conv.py), on the pairs where their duals are
hardest: nearly identical and antipodal images, a shifted copy, small and large pixel scales.

The convolutional engines carry the covariance ``s`` of each pair of positions and form the
gaps ``m -+ s`` from it; inside the plain forms' range (variances below ``1e75``) they take the
smooth families' plain route (``infntk._duals.smooth_plain``'s forms, in vectorized loops),
whose ``k`` and ``kd`` are accurate to a few ulp of ``sqrt(k11 k22)``, as the carried covariance
is; beyond it ``infntk._duals.smooth_kkd``, whose forms neither over- nor underflow. These tests
check both end to end, the second at the boundary and far beyond it (variances ``1e75`` to
``1e200`` at the first activation).
"""
import zlib

import numpy as np
import pytest

from infntk.conv import conv_kernels
from oracles.mp_conv import mp_conv_kernels
from tolerances import CLOSED_FORM_RTOL, rel_err_vs_max

FAMILIES = ("erf", "gelu", "sin", "cos", "gaussian")
GAP = {"layer": "gap"}
FLAT = {"layer": "flatten"}


def _desc(name, readout, padding):
    conv = [{"layer": "conv", "filter": 3, "padding": padding, "w_std": 1.4, "b_std": 0.2},
            {"layer": "activation", "name": name}]
    return conv * 2 + [readout, {"layer": "dense", "w_std": 1.3, "b_std": 0.1}]


def _images(name, scale):
    rng = np.random.default_rng(zlib.crc32(f"{name}{scale}".encode()))
    X = rng.standard_normal((4, 3, 3, 1)) * scale
    X[1] = X[0] * (1.0 + 1e-9)                  # nearly identical
    X[2] = -X[0]                                # antipodal
    X[3] = np.roll(X[0], 1, axis=1)             # shifted
    return X


@pytest.mark.parametrize("scale", [0.05, 3.0])
@pytest.mark.parametrize("readout,padding", [(GAP, "same"), (FLAT, "circular")],
                         ids=["gap", "flatten"])
@pytest.mark.parametrize("name", FAMILIES)
def test_smooth_families_against_mpmath(name, readout, padding, scale):
    from test_conv import build
    desc = _desc(name, readout, padding)
    X = _images(name, scale)
    ref_n, ref_t = mp_conv_kernels(desc, X, dps=30)
    nngp, ntk = conv_kernels(build(desc), X)
    assert rel_err_vs_max(nngp, ref_n) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(ntk, ref_t) <= CLOSED_FORM_RTOL




def _wide_images(name, scale):
    """A random image and a shifted copy. (No nearly parallel or antipodal pair: at ``q ~
    1e100`` their kernels are ill-conditioned in float64 itself, e.g. sin's ``k(x, -x)`` at a
    self pair of positions is ``-e^-q sinh(q - 2 b^2)``, ``q = S + b^2``, and ``S - b^2``
    rounds to ``S + b^2``: the bias is below an ulp of the covariance.)"""
    rng = np.random.default_rng(zlib.crc32(f"wide{name}{scale}".encode()))
    X = rng.standard_normal((2, 3, 3, 1)) * scale
    X[1] = np.roll(X[0], 1, axis=1)
    return X


@pytest.mark.parametrize("scale,readout,padding",
                         [(2e37, GAP, "same"), (1e100, FLAT, "circular")],
                         ids=["q~1e75-gap", "q~1e200-flatten"])
@pytest.mark.parametrize("name", FAMILIES)
def test_smooth_families_beyond_the_plain_range(name, scale, readout, padding):
    """Pixels of ``scale``: the first activation's variances are ``~2 scale^2`` (``2e37``: on
    both sides of ``1e75``, where the plain forms would overflow; the edge positions have
    fewer taps), ``1e100``: ``~1e200``. The mpmath recursion needs ``~log10(q)`` digits more
    than at unit scale: at a self pair of positions erf's ``(1 + 2 q)^2 - 4 q^2 = 1 + 4 q`` is
    formed from numbers of size ``q^2``."""
    from test_conv import build
    desc = _desc(name, readout, padding)
    X = _wide_images(name, scale)
    ref_n, ref_t = mp_conv_kernels(desc, X, dps=int(40 + 2 * np.log10(scale)))
    nngp, ntk = conv_kernels(build(desc), X)
    assert np.isfinite(nngp).all() and np.isfinite(ntk).all()
    assert rel_err_vs_max(nngp, ref_n) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(ntk, ref_t) <= CLOSED_FORM_RTOL
