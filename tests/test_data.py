"""Samplers against their laws: exact norms and supports, Kolmogorov-Smirnov for Student t."""
import math

import numpy as np
import pytest
from scipy import stats

from infntk.data import SAMPLERS, sample, sampler
from tolerances import CLOSED_FORM_RTOL, mc_tolerance

#: KS test level: the seeds are fixed, so this fails only if the law is wrong
KS_LEVEL = 1e-3


def test_sphere_and_rademacher_have_norm_sqrt_d():
    for name in ("sphere", "rademacher"):
        X = sample(name, 200, 17, seed=0)
        np.testing.assert_allclose((X ** 2).sum(1), 17, rtol=CLOSED_FORM_RTOL)
    assert set(np.unique(sample("rademacher", 50, 5, seed=1))) == {-1.0, 1.0}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_unit_variance_coordinates(name):
    params = {"dof": 5.0} if name == "student_t" else {}   # dof 5: finite 4th moment -> SE
    X = sample(name, 4000, 10, seed=2, **params).ravel()
    se = np.std(X ** 2, ddof=1) / math.sqrt(X.size)
    assert abs(np.mean(X ** 2) - 1.0) <= mc_tolerance(se)
    assert abs(np.mean(X)) <= mc_tolerance(np.std(X) / math.sqrt(X.size))


def test_student_t_law():
    X = sample("student_t", 5000, 1, seed=3).ravel() / math.sqrt(1 / 3)
    assert stats.kstest(X, stats.t(3).cdf).pvalue > KS_LEVEL
    g = sample("gaussian", 5000, 1, seed=4).ravel()
    assert stats.kstest(g, stats.norm.cdf).pvalue > KS_LEVEL
    s = sample("sphere", 5000, 3, seed=5)[:, 0] / math.sqrt(3)   # on S^2: uniform in [-1, 1]
    assert stats.kstest(s, stats.uniform(-1, 2).cdf).pvalue > KS_LEVEL


def test_sampler_and_errors():
    draw = sampler("gaussian")
    np.testing.assert_array_equal(draw(3, 4, seed=7), sample("gaussian", 3, 4, seed=7))
    with pytest.raises(ValueError, match="distribution"):
        sample("cauchy", 3, 3)
    with pytest.raises(ValueError, match="dof"):
        sample("student_t", 3, 3, dof=2.0)
    with pytest.raises(TypeError, match="parameters"):
        sample("gaussian", 3, 3, dof=3)
    with pytest.raises(ValueError, match="n"):
        sample("gaussian", 0, 3)


def test_width_sweep_draws_its_points_from_a_sampler():
    """data= replaces the default points by data(8, 4, 0); the sweep then compares on them."""
    from infntk.convergence import width_sweep
    draw = sampler("rademacher")
    res = width_sweep("relu", depth=1, widths=[16], seeds=2, data=draw, progress=False)
    np.testing.assert_array_equal(np.array(res.config["X"]), sample("rademacher", 8, 4, seed=0))
    with pytest.raises(TypeError, match="data"):
        width_sweep("relu", depth=1, widths=[16], seeds=1, data=draw, X=np.ones((2, 4)))
    with pytest.raises(TypeError, match="data"):
        width_sweep("relu", depth=1, widths=[16], seeds=1, data="sphere")
