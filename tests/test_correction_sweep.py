"""convergence.correction_sweep: measured 1/width corrections (Monte Carlo over seeds) approach
the predictions of infntk.finite_width, within Monte Carlo standard errors."""
import numpy as np
import pytest

import infntk
from infntk.convergence import correction_sweep
from tolerances import MC_SIGMAS, tolerance


def test_relu_critical_single_input_variance_and_bias():
    # ReLU at criticality, one input, no bias: n Var[K]/K^2 -> 5 L and no bias at leading order
    net = infntk.FCNet("relu", depth=2, w_std=2 ** 0.5, b_std=None)
    X = np.array([[1.0, 0.5, -0.3]])
    res = correction_sweep(net, X, widths=(128, 512), seeds=400)
    K = res.nngp[0, 0]
    np.testing.assert_allclose(res.predicted_nngp_var[:, 0, 0] / K ** 2, 10.0, rtol=1e-10)
    # next order: (1 + 5/n)^2 - 1 = 10/n + 25/n^2, i.e. a relative 2.5/n of the leading term
    sub = tolerance(2.5 / 128 * 1.5, "the O(1/width) next order of the exact ReLU law at width 128")
    for name in ("nngp_var", "ntk_var", "nngp_bias", "ntk_bias"):
        m = getattr(res, name)[:, 0, 0]
        se = getattr(res, name + "_se")[:, 0, 0]
        p = getattr(res, "predicted_" + name)[:, 0, 0]
        scale = max(abs(p).max(), K ** 2)
        assert np.all(np.abs(m - p) <= MC_SIGMAS * se + sub * scale), (name, m, p, se)


def test_two_inputs_erf_with_bias_within_standard_errors():
    net = infntk.FCNet("erf", depth=2, w_std=1.5, b_std=0.2)
    X = np.array([[1.0, 0.0], [0.6, 0.8]])
    res = correction_sweep(net, X, widths=(256,), seeds=300)
    for name in ("nngp_var", "ntk_var"):
        z = res.z_scores(name)
        # 2 x 2 symmetric entries: 3 distinct; the next order is O(1/256) relative
        p = np.abs(getattr(res, "predicted_" + name)).max()
        slack = tolerance(0.02, "O(depth/width) next order at width 256, relative") * p
        m, pr, se = getattr(res, name), getattr(res, "predicted_" + name), getattr(res, name + "_se")
        assert np.all(np.abs(m - pr) <= MC_SIGMAS * se + slack), (name, z)
    assert "CorrectionSweep(" in repr(res) and len(repr(res)) < 200


def test_correction_sweep_validates():
    net = infntk.FCNet("relu", depth=1)
    with pytest.raises(ValueError, match="seeds"):
        correction_sweep(net, np.ones((2, 2)), widths=(8,), seeds=1)
    with pytest.raises(ValueError, match="widths"):
        correction_sweep(net, np.ones((2, 2)), widths=(), seeds=4)
    with pytest.raises(TypeError, match="net"):
        correction_sweep("relu", np.ones((2, 2)), widths=(8,), seeds=4)
