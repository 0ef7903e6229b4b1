"""infntk._vmath.atan2_pos_recip (atan2(y, x) and 1 / x from one division, x > 0) against
mpmath, at random and at the switch points of the argument reduction."""
import math

import mpmath
import numpy as np
from numba import njit

from infntk import _vmath
from tolerances import tolerance

# atan2_pos' reduction with z = num (x r), r = 1 / (den x): two roundings more in z
ATAN2_RECIP_ULPS = tolerance(5.0, "atan2_pos_recip: atan2_pos' few ulp plus two roundings in z")
RECIP_ULPS = tolerance(2.0, "atan2_pos_recip's 1/x = den r: three roundings")


@njit(cache=True)
def _recip_all(y, x):
    a = np.empty_like(y)
    ix = np.empty_like(y)
    for i in range(y.shape[0]):
        a[i], ix[i] = _vmath.atan2_pos_recip(y[i], x[i])
    return a, ix


def _ulps(got, exact):
    """|got - exact| in units of the spacing at the exact value."""
    return np.array([float(abs(mpmath.mpf(float(g)) - e))
                     / np.spacing(max(abs(float(e)), np.finfo(float).tiny))
                     for g, e in zip(got, exact)])


def _points():
    rng = np.random.default_rng(7)
    n = 3000
    x = 10.0 ** rng.uniform(-60, 60, n)
    y = x * 10.0 ** rng.uniform(-20, 20, n) * rng.choice([-1.0, 1.0], n)
    t = np.tan(np.arange(1, 16) * np.pi / 32)        # both sides of the reduction's switches
    x = np.concatenate([x, np.ones(3 * len(t)), 3.0 * np.ones(len(t)), [1.0, 1.0, 2.0, 1.0]])
    y = np.concatenate([y, t, np.nextafter(t, 0.0), -np.nextafter(t, 2.0), 3.0 / t,
                        [1.0, -1.0, 0.0, -0.0]])
    return y, x


def test_atan2_pos_recip_against_mpmath():
    y, x = _points()
    a, ix = _recip_all(y, x)
    with mpmath.workdps(40):
        err_a = _ulps(a, [mpmath.atan2(mpmath.mpf(float(u)), mpmath.mpf(float(v)))
                          for u, v in zip(y, x)])
        err_r = _ulps(ix, [1 / mpmath.mpf(float(v)) for v in x])
    assert err_a.max() <= ATAN2_RECIP_ULPS, (y[np.argmax(err_a)], x[np.argmax(err_a)])
    assert err_r.max() <= RECIP_ULPS, x[np.argmax(err_r)]
    assert a[-2] == 0.0 and abs(a[-4] - math.pi / 4) <= np.spacing(math.pi / 4)

