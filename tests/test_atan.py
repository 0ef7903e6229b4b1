"""The libm-free arctan of the compiled engine: within 2 ulp of numpy on 10^6 points."""
import mpmath
import numpy as np
from numba import njit

from infntk._duals import atan_unit
from tolerances import tolerance

# The engine's documented accuracy of its own arctan (no libm call inside compiled code).
ATAN_ULPS = tolerance(2.0, "the compiled atan_unit's documented accuracy: 2 ulp")


@njit(cache=True)
def _atan_all(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = atan_unit(x[i])
    return out


def test_atan_unit_within_2_ulp():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.random(900_000),
        np.geomspace(1e-300, 1.0, 100_000),
        [0.0, 5e-324, 1e-308, 1.0, np.nextafter(1.0, 0.0),
         np.tan(np.pi / 16), np.tan(3 * np.pi / 16), np.nextafter(np.tan(np.pi / 16), 1)],
    ])
    got = _atan_all(x)
    ref = np.arctan(x)
    ulp = np.spacing(np.maximum(ref, np.finfo(float).tiny))
    err = np.abs(got - ref) / ulp
    assert err.max() <= ATAN_ULPS
    assert got[x == 0.0][0] == 0.0 and got[x == 1.0][0] == np.pi / 4
    # numpy's own arctan is not the reference of record: check the worst points with mpmath
    worst = np.argsort(err)[-10:]
    with mpmath.workdps(40):
        for i in worst:
            exact = mpmath.atan(mpmath.mpf(float(x[i])))
            assert abs(mpmath.mpf(float(got[i])) - exact) <= ATAN_ULPS * ulp[i]
