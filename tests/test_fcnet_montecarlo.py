"""FCNet's NNGP against finite random networks (a statistical oracle independent of FCNet).

For each of S independently drawn networks of width m the network's output covariance given
its hidden layers is w^2 phi(h^L) . phi(h^L) / m + b^2 (the last layer is Gaussian given the
hidden features), so the seed average of that matrix is an unbiased estimate of
E[f(x) f(y)] up to the O(1/m) finite-width bias of deep layers. Its standard error is taken
from the spread over the S seeds; we require agreement within MC_SIGMAS standard errors
(plus 2/m for the finite-width bias, which is far below the standard error at m = 1024).
"""
import numpy as np
import pytest

import infntk
from infntk.activations import get_activation
from tolerances import MC_SIGMAS, tolerance

# The O(1/m) finite-width bias of the deep layers, as a multiple of |K| / m.
WIDTH_BIAS = tolerance(2.0, "O(1/m) bias constant of depth 2, relative to |K|: 2/m at m = 1024 "
                            "is far below the standard error")


def _hidden_output_cov(phi, X, width, depth, w_std, b_std, rng):
    """w^2 phi(h^L) phi(h^L)^T / m + b^2 of one random network (ntk parameterization)."""
    d = X.shape[1]
    h = w_std * X @ rng.standard_normal((d, width)) / np.sqrt(d) + b_std * rng.standard_normal(width)
    for _ in range(depth - 1):
        a = phi(h)
        h = w_std * a @ rng.standard_normal((width, width)) / np.sqrt(width) \
            + b_std * rng.standard_normal(width)
    a = phi(h)
    return w_std ** 2 * a @ a.T / width + b_std ** 2


@pytest.mark.parametrize("name", ["relu", "erf"])
def test_nngp_matches_finite_networks(name):
    rng = np.random.default_rng(12345)
    X = rng.standard_normal((4, 5))
    X[1] = X[0] + 0.1 * rng.standard_normal(5)   # a close pair as well as generic ones
    depth, w_std, b_std, width, seeds = 2, 1.4, 0.3, 1024, 24
    phi = get_activation(name).fn
    samples = np.stack([_hidden_output_cov(phi, X, width, depth, w_std, b_std, rng)
                        for _ in range(seeds)])
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / np.sqrt(seeds)
    K = infntk.FCNet(name, depth=depth, w_std=w_std, b_std=b_std).nngp(X)
    allowed = MC_SIGMAS * se + WIDTH_BIAS / width * np.abs(K)   # se: one per entry
    assert np.all(np.abs(mean - K) <= allowed), (mean - K) / se
    # and the test has power: a 5% change of w_std is detected
    K_wrong = infntk.FCNet(name, depth=depth, w_std=1.05 * w_std, b_std=b_std).nngp(X)
    assert np.any(np.abs(mean - K_wrong) > allowed)
