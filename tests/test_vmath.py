"""The branch-free elementary functions of infntk._vmath against mpmath (exp, expm1, atan2 for
x > 0), at random and at the switch points of their reductions, and a check that a loop over
them really compiles to vector instructions (the reason they exist)."""
import math

import mpmath
import numpy as np
import pytest
from numba import njit

from infntk import _vmath
from tolerances import tolerance

# the documented accuracy: reduction in two parts, Taylor polynomial, one scaling
EXP_ULPS = tolerance(2.0, "exp/expm1: Cody-Waite reduction, degree-13 polynomial, exact scaling")
ATAN2_ULPS = tolerance(3.0, "atan2_pos: one division, atan_ratio's few ulp, pi/2 - t")


@njit(cache=True)
def _exp_all(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _vmath.exp(x[i])
    return out


@njit(cache=True)
def _expm1_all(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _vmath.expm1(x[i])
    return out


@njit(cache=True)
def _atan2_all(y, x):
    out = np.empty_like(y)
    for i in range(y.shape[0]):
        out[i] = _vmath.atan2_pos(y[i], x[i])
    return out


def _ulps(got, exact):
    """|got - exact| in units of the spacing at the exact value (subnormal spacing below)."""
    out = np.empty(len(got))
    for i, (g, e) in enumerate(zip(got, exact)):
        ef = float(e)
        sp = np.spacing(max(abs(ef), np.finfo(float).tiny))
        out[i] = float(abs(mpmath.mpf(float(g)) - e)) / sp
    return out


def _points(rng):
    ln2 = math.log(2.0)
    switch = np.array([(k + 0.5) * ln2 for k in range(-1076, 1024, 37)])
    return np.concatenate([
        rng.uniform(-745.0, 709.0, 3000),
        rng.uniform(-2.0, 2.0, 2000),
        -np.geomspace(1e-300, 1.0, 500), np.geomspace(1e-300, 1.0, 500),
        switch, np.nextafter(switch, 0.0), np.nextafter(switch, np.inf),
        [0.0, -0.0, 5e-324, -5e-324, -708.3, -708.4, -740.0, -744.9, 709.7, 0.5 * ln2,
         -0.5 * ln2, np.nextafter(0.5 * ln2, 1.0), np.nextafter(-0.5 * ln2, -1.0)],
    ])


def test_exp_within_2_ulp():
    x = _points(np.random.default_rng(0))
    got = _exp_all(x)
    with mpmath.workdps(40):
        err = _ulps(got, [mpmath.exp(mpmath.mpf(float(v))) for v in x])
    assert err.max() <= EXP_ULPS, x[np.argmax(err)]


def test_expm1_within_2_ulp_relative_to_itself():
    x = _points(np.random.default_rng(1))
    got = _expm1_all(x)
    with mpmath.workdps(40):
        err = _ulps(got, [mpmath.expm1(mpmath.mpf(float(v))) for v in x])
    assert err.max() <= EXP_ULPS, x[np.argmax(err)]
    assert _expm1_all(np.array([0.0]))[0] == 0.0


def test_exp_limits_as_ieee():
    x = np.array([-746.0, -800.0, -np.inf, 710.0, 800.0, np.inf, np.nan, 0.0])
    got = _exp_all(x)
    assert np.array_equal(got[:3], [0.0, 0.0, 0.0])
    assert np.all(np.isinf(got[3:6])) and np.isnan(got[6]) and got[7] == 1.0
    m1 = _expm1_all(x)
    assert np.array_equal(m1[:3], [-1.0, -1.0, -1.0]) and np.isnan(m1[6])
    # the subnormal range is reached gradually, as libm does
    xs = np.linspace(-745.0, -708.0, 2001)
    np.testing.assert_array_equal(_exp_all(xs) > 0.0, np.exp(xs) > 0.0)


def test_atan2_pos_against_mpmath():
    rng = np.random.default_rng(2)
    n = 4000
    x = 10.0 ** rng.uniform(-150, 150, n)
    y = x * 10.0 ** rng.uniform(-20, 20, n) * rng.choice([-1.0, 1.0], n)
    # both sides of the |y| = x switch and of atan_ratio's reduction centres
    t = np.tan(np.arange(1, 16) * np.pi / 32)
    x = np.concatenate([x, np.ones(3 * len(t)), [1.0, 1.0, 2.0, 1.0]])
    y = np.concatenate([y, t, np.nextafter(t, 0.0), -np.nextafter(t, 2.0), [1.0, -1.0, 0.0, -0.0]])
    got = _atan2_all(y, x)
    with mpmath.workdps(40):
        err = _ulps(got, [mpmath.atan2(mpmath.mpf(float(a)), mpmath.mpf(float(b)))
                          for a, b in zip(y, x)])
    assert err.max() <= ATAN2_ULPS, (y[np.argmax(err)], x[np.argmax(err)])
    assert got[-2] == 0.0 and got[-4] == np.pi / 4 and got[-3] == -np.pi / 4


@pytest.mark.parametrize("fn", [_exp_all, _expm1_all])
def test_loops_vectorize(fn):
    """No libm call and vector arithmetic in the compiled loop (AVX2 or wider on x86).

    Compiled afresh without the cache: code loaded from Numba's cache cannot be inspected."""
    fresh = njit(fn.py_func)
    fresh(np.zeros(4))
    llvm = next(iter(fresh.inspect_llvm().values()))
    assert "@exp" not in llvm and "@expm1" not in llvm
    assert "x double>" in llvm
