"""The vectorizable helpers of the series engine's pair loop (infntk._backends.series).

The pair loop evaluates the bound's per-pair factors in branch-free loops over a chunk of
columns: the level of the graded sums from the bits of ``1 - r`` (``_level_start`` and the
upward search) instead of ``frexp``, the Horner rounding factor without its branch
(``_rounding_fast``), and ``a^(K+1)`` by repeated squaring with a rounding allowance
(``_powers``). Each is checked against its reference: ``_level`` and ``_rounding`` bit for
bit (the level must be the smallest grid index at or above ``r``, an exact property), and
the powers against 40-digit mpmath values (they must never be below the exact power).
"""
import math

import mpmath as mp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from infntk._backends import series as se

_EPS = float(np.finfo(float).eps)


def _correlations():
    """Correlations in [0, 1] concentrated where the grid's levels are: near 1 at every
    octave of 1 - r, the levels themselves and their neighbours, and the ends."""
    rng = np.random.default_rng(7)
    near_one = 1.0 - 2.0 ** -rng.uniform(0.0, 53.0, 4000)
    grid = se.GRID
    around = np.concatenate([grid, np.nextafter(grid, 0.0), np.nextafter(grid, 2.0)])
    r = np.concatenate([rng.uniform(0.0, 1.0, 4000), near_one, around,
                        [0.0, 5e-324, 1e-300, 0.5, 1.0 - _EPS / 2, 1.0]])
    return r[(r >= 0.0) & (r <= 1.0)]


def _level_fast(r):
    bits = np.array([1.0 - r]).view(np.int64)[0]
    m = se._level_start(bits, r, se.GRID.size)
    while se.GRID[m] < r:
        m += 1
    return m


def test_level_start_then_search_is_level():
    grid = se.GRID
    for r in _correlations():
        r = float(r)
        m = _level_fast(r)
        assert m == se._level(r, grid), r
        # the defining property: the smallest index whose level is >= r
        assert grid[m] >= r and (m == 0 or grid[m - 1] < r), r


@given(st.floats(0.0, 1.0), st.integers(0, se.K_MAX))
@settings(max_examples=300, deadline=None)
def test_rounding_fast_is_rounding(a, K):
    got = se._rounding_fast(a, 2.0 * K + 3.0, math.sqrt(K + 1.0))
    assert got == se._rounding(a, K)


def test_rounding_fast_at_one_and_zero():
    for K in (0, 1, 52, se.K_MAX):
        for a in (0.0, 1.0, 1.0 - _EPS / 2):
            assert se._rounding_fast(a, 2.0 * K + 3.0, math.sqrt(K + 1.0)) == se._rounding(a, K)


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40), st.integers(1, se.K_MAX + 1))
@settings(max_examples=200, deadline=None)
def test_powers_bound_the_exact_power(values, n):
    a = np.array(values)
    b = a[::-1].copy()
    nj = a.size
    FA, FB, PA, PB = (np.empty(nj) for _ in range(4))
    safety = 1.0 + 2.0 * (n + 1.0) * _EPS
    se._powers(a, b, FA, FB, PA, PB, nj, n, safety)
    with mp.workdps(40):
        for x, f in zip(np.concatenate([a, b]), np.concatenate([FA, FB])):
            exact = mp.mpf(float(x)) ** n
            assert mp.mpf(float(f)) >= exact or exact < mp.mpf(2) ** -1000, (x, n)
            # and not loose: within the allowance of the exact power
            if exact > mp.mpf(2) ** -1000:
                assert mp.mpf(float(f)) <= exact * (1 + mp.mpf(4 * (n + 2)) * mp.mpf(_EPS))
