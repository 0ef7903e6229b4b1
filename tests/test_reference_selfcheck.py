"""The 50-digit oracle (tests/oracles/mp_reference.py) checked against numerical integration.

Each closed-form dual ``E[phi(u) phi(v)]``, ``E[phi'(u) phi'(v)]`` of the oracle is compared with
a 2-D Gauss-Legendre quadrature (tests/oracles/mp_quadrature.py) of the registry's own mpmath
``phi``/``phi'`` (``mp_fn``, ``mp_deriv``), which shares nothing with the closed forms; at
``rho = +-1`` the integral is 1-D.
The (q1, q2, s) points include q1 != q2, negative s, nearly identical (``1 - rho = 1e-8``) and
nearly antipodal pairs. Also: the degenerate-row convention against its definition (independent
``u, v`` in the limit ``q -> 0+``), and the loader of the stored references.
"""
import math

import mpmath as mp
import numpy as np
import pytest

from infntk.activations import get_activation
from oracles.mp_quadrature import DPS, gauss_pieces, quad_expect
from oracles.mp_reference import (DEFAULT_DATA_PATH, load_reference_cases, mp_diag, mp_dual,
                                  mp_kernels, mp_kernels_depths)
from tolerances import QUADRATURE_RTOL, tolerance

# The oracle rounded to float64 against exactly known values: one rounding of the 50-digit
# result (0.5 ulp) plus that of the float64 reference expression (a few ulp).
ROUNDED_RTOL = tolerance(1e-15, "a 50-digit value rounded to float64 vs a float64 expression")
# pytest.approx's default absolute tolerance is 1e-12; these values are exact limits, so the
# absolute floor is switched off (effectively) by a tiny value.
QUAD_1D_ATOL = tolerance(1e-15, "1-D Gauss-Legendre at 20 digits, rounded: ~1 ulp of O(1)")
NO_ABS = tolerance(1e-300, "switch off pytest.approx's default absolute floor of 1e-12")

SMOOTH = {"erf", "sin", "cos", "gaussian", "gelu"}
CLOSED_FORMS = [
    ("relu", {}), ("leaky_relu", {"alpha": 0.1}), ("abs", {}), ("identity", {}), ("step", {}),
    ("sign", {}), ("arccos", {"n": 0}), ("arccos", {"n": 1}), ("arccos", {"n": 2}),
    ("arccos", {"n": 3}), ("erf", {}), ("sin", {}), ("cos", {}), ("gaussian", {}), ("gelu", {}),
]

# (q1, q2, rho): generic, q1 != q2 with negative correlation, nearly identical, nearly
# antipodal, exactly parallel (1-D).
POINTS = [(1.3, 0.7, 0.4), (0.5, 2.7, -0.6), (1.1, 1.1000001, 1 - 1e-8), (2.0, 0.9, -1 + 1e-8),
          (0.8, 1.9, 1.0)]


@pytest.mark.parametrize("name,params", [c for c in CLOSED_FORMS if c[0] != "arccos"
                                          or c[1]["n"] >= 2], ids=lambda v: str(v))
def test_duals_against_quadrature(name, params):
    act = get_activation(name, **params)
    worst = 0.0
    # the smooth duals are checked at the three hardest points only (time budget)
    points = POINTS[1:4] if name in SMOOTH else POINTS[1:]
    kinked = bool(act.kinks)      # identity and the smooth ones need no cuts
    with mp.workdps(DPS):
        for q1, q2, rho in points:
            q1, q2, rho = mp.mpf(q1), mp.mpf(q2), mp.mpf(rho)
            with mp.workdps(60):    # s exactly enough that rho = 1 gives theta ~ 1e-25
                s = rho * mp.sqrt(q1 * q2)
            F, G = mp_dual(name, q1, q2, s, **params)
            qF = quad_expect(act.mp_fn, act.mp_fn, q1, q2, rho, kinked)
            qG = quad_expect(act.mp_deriv, act.mp_deriv, q1, q2, rho, kinked)
            # scale: the Cauchy-Schwarz bound sqrt(E f(u)^2 E f(v)^2), so that a dual that is
            # nearly 0 (e.g. sign at rho ~ 0) is not held to a relative error of itself
            for val, ref, fn in ((F, qF, act.mp_fn), (G, qG, act.mp_deriv)):
                scale = mp.sqrt(quad_expect(fn, fn, q1, q1, mp.mpf(1))
                                * quad_expect(fn, fn, q2, q2, mp.mpf(1)))
                err = abs(val - ref) / scale if scale else abs(val - ref)
                worst = max(worst, float(err))
                assert err <= QUADRATURE_RTOL, (name, params, q1, q2, rho, val, ref)
    print(f"{name}{params}: worst error / scale {worst:.1e}")


@pytest.mark.parametrize("name,params,F0,G0", [
    ("relu", {}, 0.0, 0.25), ("leaky_relu", {"alpha": 0.1}, 0.0, 0.55 ** 2), ("abs", {}, 0.0, 0.0),
    ("identity", {}, 0.0, 1.0), ("step", {}, 0.25, 0.0), ("sign", {}, 0.0, 0.0),
    ("arccos", {"n": 2}, 0.0, 0.0), ("arccos", {"n": 3}, 0.0, 0.0), ("erf", {}, 0.0, 4 / math.pi),
    ("sin", {}, 0.0, 1.0), ("cos", {}, 1.0, 0.0), ("gaussian", {}, 1.0, 0.0),
    ("gelu", {}, 0.0, 0.25)])
def test_degenerate_rows_are_independent_limits(name, params, F0, G0):
    """Degenerate rows (docs/conventions.md): a zero-variance row has correlation 0 with every
    row, itself included.

    Expected values: ``E[phi(u)] E[phi(v)]`` and ``E[phi'(u)] E[phi'(v)]`` in the limit
    ``q -> 0+`` (e.g. relu: ``E[1(u > 0)] = 1/2``, so ``G = 1/4``; leaky: ``(1 + 0.1)/2``).
    """
    for q2, same in ((0.0, True), (1.7, False)):
        F, G = mp_dual(name, 0, q2, 0, same=same, **params)
        if q2 == 0:
            assert float(F) == pytest.approx(F0, rel=ROUNDED_RTOL, abs=NO_ABS)
            assert float(G) == pytest.approx(G0, rel=ROUNDED_RTOL, abs=NO_ABS)
        else:
            # independent: F = E phi(0 limit) E phi(v); a zero-variance u with these
            # activations has E phi(u) = 0 except step (1/2), cos and gaussian (1)
            act = get_activation(name, **params)
            with mp.workdps(DPS):
                Ev = gauss_pieces(lambda z: act.mp_fn(mp.sqrt(q2) * z) * mp.npdf(z), [mp.mpf(0)])
                Edv = gauss_pieces(lambda z: act.mp_deriv(mp.sqrt(q2) * z) * mp.npdf(z), [mp.mpf(0)])
            Eu = {"step": 0.5, "cos": 1.0, "gaussian": 1.0}.get(name, 0.0)
            Edu = math.sqrt(G0) if G0 > 0 else 0.0
            if name == "identity":
                Edu = 1.0
            assert float(F) == pytest.approx(Eu * float(Ev), abs=QUAD_1D_ATOL)
            assert float(G) == pytest.approx(Edu * float(Edv), abs=QUAD_1D_ATOL)


def test_arccos_0_and_1_are_step_and_relu():
    for n, other in ((0, "step"), (1, "relu")):
        for q1, q2, rho in POINTS:
            s = rho * math.sqrt(q1 * q2)
            assert mp_dual("arccos", q1, q2, s, n=n) == mp_dual(other, q1, q2, s)


def test_recursion_special_values():
    """Known closed values: relu with w_std^2 = 2 and no bias keeps the NNGP diagonal at
    q = |x|^2/d and has NTK diagonal 2 (L + 1) q ... the standard parameterization at L = 0 is
    <x, y> + 1, and a zero row gets 0 (relu)."""
    X = np.array([[1.0, -2.0, 0.5], [0.3, 0.1, -0.7], [0.0, 0.0, 0.0]])
    q = (X ** 2).sum(1) / 3 * 2.0
    for L in (0, 1, 4):
        n, t = mp_kernels("relu", X, depth=L, w_std=math.sqrt(2), b_std=None)
        np.testing.assert_allclose(np.diag(n), q, rtol=ROUNDED_RTOL)
        np.testing.assert_allclose(np.diag(t), (L + 1) * q, rtol=ROUNDED_RTOL)
    n, t = mp_kernels("relu", X, depth=0, w_std=1.0, b_std=0.0, parameterization="standard",
                      width=7)
    np.testing.assert_allclose(t, X @ X.T + 1, rtol=ROUNDED_RTOL)
    # depth-list evaluation equals single-depth evaluation, diag equals the Gram's diagonal
    many = mp_kernels_depths("erf", X, None, (1, 3), 1.5, 0.3, "standard", 64)
    one = mp_kernels("erf", X, depth=3, w_std=1.5, b_std=0.3, parameterization="standard",
                     width=64)
    np.testing.assert_array_equal(many[3][1], one[1])
    d = mp_diag("erf", X, depth=3, w_std=1.5, b_std=0.3, parameterization="standard", width=64)
    np.testing.assert_array_equal(d[1], np.diag(one[1]))
    # a cross Gram equals the symmetric one
    c = mp_kernels("gelu", X, X[::-1].copy(), depth=2, w_std=1.2, b_std=0.1)
    s = mp_kernels("gelu", X, depth=2, w_std=1.2, b_std=0.1)
    np.testing.assert_allclose(c[1], s[1][:, ::-1], rtol=ROUNDED_RTOL)


def test_stored_references_load_and_cover_the_registry():
    cases = load_reference_cases(DEFAULT_DATA_PATH)
    assert len(cases) > 1000
    names = {(c["activation"], tuple(sorted(c["params"].items()))) for c in cases}
    assert names == {(n, tuple(sorted(p.items()))) for n, p in CLOSED_FORMS}
    assert {c["depth"] for c in cases} >= {0, 1, 2, 3, 10, 100}
    assert {c["parameterization"] for c in cases} == {"ntk", "standard"}
    assert {c["b_std"] for c in cases} == {None, 0.0, 0.3}
    for c in cases:
        assert np.all(np.isfinite(c["nngp"])) and np.all(np.isfinite(c["ntk"]))
        assert c["nngp"].shape == (len(c["X"]),) * 2
    # spot check: a stored case is reproduced by the oracle bit for bit
    c = next(c for c in cases if c["activation"] == "sign" and c["depth"] == 10
             and c["geometry"] == "near" and c["parameterization"] == "standard")
    n, t = mp_kernels(c["activation"], c["X"], depth=c["depth"], w_std=c["w_std"],
                      b_std=c["b_std"], parameterization=c["parameterization"],
                      width=c["width"], **c["params"])
    np.testing.assert_array_equal(n, c["nngp"])
    np.testing.assert_array_equal(t, c["ntk"])
