"""infntk.bounds: the three theorem bounds under their own names, and their deprecated aliases.

Oracles: the bounds' formulas evaluated directly on the stored kernels of a sweep (Arora et al.
2019a, Xu & Zhu 2024) and the closed form of H^inf in NumPy (Arora et al. 2019b), none of
which goes through infntk.bounds.
"""
import math
import subprocess
import sys

import numpy as np
import pytest

from infntk import bounds, convergence, dynamics
from infntk.convergence import default_points, width_sweep
from tolerances import CLOSED_FORM_RTOL, rel_err_vs_max, tolerance

# The bounds reuse the sweep's stored kernels: quantiles, maxima and powers of them agree to
# a few roundings.
_ARITH = tolerance(1e-13, "a handful of float64 operations (quantile, 4th power, log)")


@pytest.fixture(scope="module")
def sweep():
    d = 4
    X = default_points(5, d, seed=3) * math.sqrt(d / 2)    # unit vectors in Arora's scaling
    return width_sweep("relu", 2, math.sqrt(2), None, widths=[32, 64, 128], seeds=4, X=X,
                       progress=False)


def test_ntk_convergence_bound_equals_direct_evaluation(sweep):
    delta, C, L = 0.25, 2.0, 2
    b = bounds.ntk_convergence_bound(sweep, delta=delta, C=C)
    log_term = L ** 6 * math.log(L / delta)
    for i, w in enumerate(sweep.widths):
        errs = [np.max(np.abs(sweep.records[w, s]["kernels"]["ntk"] - sweep.reference[w]["ntk"]))
                for s in range(4)]
        eps = np.quantile(errs, 1 - delta) / (L + 1)
        assert b.eps_measured[i] == pytest.approx(eps, rel=_ARITH)
        assert b.eps_bound[i] == pytest.approx((C * log_term / w) ** 0.25, rel=_ARITH)
        assert b.C_tight[i] == pytest.approx(w * eps ** 4 / log_term, rel=_ARITH)
    assert b.C_cover == np.max(b.C_tight)
    assert (b.seeds, b.depth, b.delta) == (4, 2, delta)
    assert b.width.tolist() == [32, 64, 128]


def test_ntk_convergence_width_inverts_eps():
    m = bounds.ntk_convergence_width(0.3, depth=3, delta=0.05, C=1.5)
    assert m == pytest.approx(1.5 * 3 ** 6 * math.log(3 / 0.05) / 0.3 ** 4, rel=_ARITH)
    assert (1.5 * 3 ** 6 * math.log(3 / 0.05) / m) ** 0.25 == pytest.approx(0.3, rel=_ARITH)
    with pytest.raises(ValueError, match="delta"):
        bounds.ntk_convergence_width(0.3, depth=3, delta=1.5)


def test_uniform_convergence_bound_equals_direct_evaluation(sweep):
    u = bounds.uniform_convergence_bound(sweep, C3=[1.0, 2.0])
    d, L = 4, 2
    for i, c3 in enumerate(u.C3):
        for j, l in enumerate(u.layers):
            errs = sweep.errors(f"theta[{l}].maxabs")
            ratios = [np.max(e) / (c3 ** L / w ** (1 / 6) + math.sqrt(d * L * math.log(w) / w))
                      for w, e in errs.items()]
            assert u.C2_min[i, j] == pytest.approx(max(ratios), rel=_ARITH)
    assert u.max_width == 128 and u.layers.tolist() == [1, 2, 3]


def _h_inf(X):
    """H^inf by its closed form x.y (pi - arccos(x.y)) / (2 pi), unit rows (NumPy only)."""
    G = np.clip(X @ X.T, -1.0, 1.0)
    return G * (np.pi - np.arccos(G)) / (2 * np.pi)


def test_generalization_bound_equals_closed_form():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((12, 4))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.sign(rng.standard_normal(12))
    H = _h_inf(X)
    # arccos loses ~sqrt(eps) on the diagonal of the oracle (x.x = 1 - O(eps)): compare to 1e-7
    assert rel_err_vs_max(bounds.arora_gram(X), H) < tolerance(
        1e-7, "float64 arccos near 1 in the oracle's diagonal errs by ~sqrt(eps)")
    complexity = float(y @ np.linalg.solve(bounds.arora_gram(X), y))
    g = bounds.generalization_bound(X, y)
    assert g.complexity == pytest.approx(complexity, rel=tolerance(
        1e-10, "eigh vs LU solve of a 12 x 12 Gram with condition number ~1e2"))
    assert float(g) == g.bound == pytest.approx(math.sqrt(2 * complexity / 12), rel=tolerance(
        1e-10, "as the complexity"))
    assert g.n == 12 and g.lambda_min == pytest.approx(np.linalg.eigvalsh(H)[0], rel=tolerance(
        1e-6, "the oracle's diagonal errs by ~sqrt(eps) relative to lambda_min ~ 0.1"))
    assert bounds.generalization_bound(np.eye(2), [1.0, -1.0]).bound == pytest.approx(
        2.0, rel=CLOSED_FORM_RTOL)


def test_deprecated_aliases_warn_name_the_new_function_and_keep_old_results(sweep):
    with pytest.warns(DeprecationWarning, match="bounds.ntk_convergence_bound"):
        old = convergence.arora_bound(sweep, delta=0.25)
    new = bounds.ntk_convergence_bound(sweep, delta=0.25)
    assert isinstance(old, dict)
    assert set(old) == {"width", "eps_measured", "eps_bound", "ratio", "C_tight", "C_cover",
                        "n_seeds", "L", "delta"}
    np.testing.assert_array_equal(old["eps_measured"], new.eps_measured)
    assert (old["C_cover"], old["n_seeds"], old["L"]) == (new.C_cover, new.seeds, new.depth)

    with pytest.warns(DeprecationWarning, match="bounds.uniform_convergence_bound"):
        old = convergence.uniform_bound(sweep, C3=1.5)
    np.testing.assert_array_equal(old["C2_min"],
                                  bounds.uniform_convergence_bound(sweep, C3=1.5).C2_min)

    X = np.eye(3)
    y = [1.0, -1.0, 1.0]
    with pytest.warns(DeprecationWarning, match="bounds.generalization_bound"):
        old = dynamics.arora_bound(X, y)
    assert isinstance(old, float) and old == bounds.generalization_bound(X, y).bound
    with pytest.warns(DeprecationWarning, match="bounds.arora_gram"):
        np.testing.assert_array_equal(dynamics.arora_gram(X), bounds.arora_gram(X))
    from infntk.convergence import arora_bound          # from-imports still work
    assert callable(arora_bound)
    with pytest.raises(AttributeError):
        dynamics.no_such_name


def test_reprs_are_one_short_line(sweep):
    for r in (bounds.ntk_convergence_bound(sweep), bounds.uniform_convergence_bound(sweep),
              bounds.generalization_bound(np.eye(2), [1.0, 1.0])):
        text = repr(r)
        assert "\n" not in text and len(text) < 300, text
        assert text.startswith(type(r).__name__ + "(")


def test_inapplicable_sweep_is_refused():
    res = width_sweep("relu", 1, 1.0, 0.3, widths=[8, 16], seeds=2, progress=False)
    with pytest.raises(ValueError, match="does not apply.*b_std"):
        bounds.ntk_convergence_bound(res)
    with pytest.raises(TypeError, match="SweepResult"):
        bounds.ntk_convergence_bound({"config": {}})


def test_dynamics_does_not_import_fcnet():
    code = ("import sys, infntk.dynamics; "
            "assert 'infntk.fcnet' not in sys.modules, sorted(sys.modules); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
