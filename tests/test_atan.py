"""The libm-free arctans of the compiled engine: atan_unit within 2 ulp of numpy on 10^6
points, small_angle (the pair angle of the kinked families) within 3 ulp of mpmath."""
import mpmath
import numpy as np
from numba import njit

from infntk._duals import atan_unit, small_angle
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


# small_angle: two square roots, one division and the reduced series (docstring: a few ulp).
SMALL_ANGLE_ULPS = tolerance(3.0, "small_angle: sqrt, sqrt, one division, then atan_unit's 2 ulp")


@njit(cache=True)
def _small_angle_all(A, B):
    t = np.empty_like(A)
    s = np.empty_like(A)
    for i in range(A.shape[0]):
        t[i], s[i] = small_angle(A[i], B[i])
    return t, s


def test_small_angle_against_mpmath():
    rng = np.random.default_rng(1)
    n = 6000
    A = 10.0 ** rng.uniform(-260, 260, n)
    B = A * 10.0 ** rng.uniform(-40, 40, n)
    B[: n // 3] = A[: n // 3] * (1.0 + rng.uniform(-0.9, 0.9, n // 3))   # angles near pi/2
    # the reduction's switch points: lo / hi = tan((2k + 1) pi / 32) and its neighbours
    cuts = np.tan((2 * np.arange(4) + 1) * np.pi / 32) ** 2
    A = np.concatenate([A, cuts, np.nextafter(cuts, 0.0), np.nextafter(cuts, 1.0), [1.0, 3.0]])
    B = np.concatenate([B, np.ones(12), [1.0, 3.0]])
    t, s = _small_angle_all(A, B)
    with mpmath.workdps(40):
        for a, b, ti, si in zip(A, B, t, s):
            lo, hi = min(a, b), max(a, b)
            exact = 2 * mpmath.atan(mpmath.sqrt(mpmath.mpf(float(lo)) / mpmath.mpf(float(hi))))
            assert abs(mpmath.mpf(float(ti)) - exact) <= SMALL_ANGLE_ULPS * np.spacing(float(exact))
            assert si == np.sqrt(a) * np.sqrt(b)
    assert t[-1] == t[-2] == np.pi / 2
    # degenerate and exactly parallel pairs: angle 0 (the callers map A = B = 0 to pi/2)
    assert _small_angle_all(np.array([0.0, 0.0, 2.0]), np.array([0.0, 1.0, 0.0]))[0].tolist() == [0.0] * 3
