"""Statistical tests: finite networks' empirical kernels converge to FCNet's analytic kernels.

Every tolerance is derived in the test from the number of independent networks (seeds), with a
family-wise false-alarm rate stated next to it; the seeds are fixed, so the outcome is
reproducible. An independent, private ReLU recursion (arc-cosine closed form, a few lines
below) checks FCNet on the same points and supplies ``Sdot^l``, which FCNet does not expose.
"""
import math

import numpy as np
import pytest
from scipy import stats

import infntk
from infntk.convergence import (SweepResult, arora_bound, default_points,
                                depth_width_variance, uniform_bound, width_sweep)
from infntk.empirical import MLP

from tolerances import mc_tolerance, tolerance

# Family-wise false-alarm probability of each multi-entry statistical test (Bonferroni).
FAMILY_ALPHA = 1e-3
# The private reference clips arccos near the diagonal, an absolute error ~ sqrt(eps) of max|K|.
PRIVATE_RECURSION_TOL = tolerance(1e-7, "the private relu recursion clips arccos near the "
                                        "diagonal: error ~ sqrt(eps) = 1.5e-8 of max|K|")
# Two evaluations of the same quantity in float64 by different operation orders.
REORDER_RTOL = tolerance(1e-12, "same float64 quantity, different operation order: ~100 ulp")
# The band for fitted width exponents: -1/2 +- 0.1.
SLOPE_BAND = tolerance(0.1, "the issue's band: fitted width exponent in [-0.6, -0.4]")
# pytest.approx's default relative tolerance, written out (the statistics below are recomputed
# from the same numbers by numpy, so ~1e-14 would do; the default was kept, not tightened).
APPROX_DEFAULT_RTOL = tolerance(1e-6, "pytest.approx default, kept from the original test")


# --------------------------------------------------------------------------- private reference
def _relu_layers(X, depth, w_std, b_std, parameterization="ntk", width=None):
    """Sigma^l, Sdot^l, Theta^l (l = 1..depth+1) of a ReLU network, arc-cosine closed form."""
    n, d = X.shape
    b2 = 0.0 if b_std is None else b_std ** 2
    one = 0.0 if b_std is None else 1.0
    K = X @ X.T / d
    S = w_std ** 2 * K + b2
    T = S.copy() if parameterization == "ntk" else d * K + one
    sig, sdot, th = {1: S}, {}, {1: T}
    for l in range(2, depth + 2):
        q = np.sqrt(np.diag(S))
        c = np.clip(S / np.outer(q, q), -1.0, 1.0)
        a = np.arccos(c)
        E = np.outer(q, q) * (np.sin(a) + (np.pi - a) * c) / (2 * np.pi)
        Ed = w_std ** 2 * (np.pi - a) / (2 * np.pi)
        if parameterization == "ntk":
            T = w_std ** 2 * E + b2 + Ed * T
        else:
            T = width * E + one + Ed * T
        S = w_std ** 2 * E + b2
        sig[l], sdot[l], th[l] = S, Ed, T
    return sig, sdot, th


def _private_reference(w_std=1.0, b_std=0.0, parameterization="ntk"):
    """``reference(depth, X, width)`` for width_sweep from the private ReLU recursion."""
    def ref(depth, X, width):
        sig, _, th = _relu_layers(X, depth, w_std, b_std, parameterization, width)
        return sig[depth + 1], th[depth + 1]
    return ref


def test_fcnet_matches_private_relu_recursion():
    X = default_points()
    for par, b in [("ntk", 0.0), ("ntk", 0.3), ("standard", 0.3), ("standard", None)]:
        sig, _, th = _relu_layers(X, 3, 1.3, b, par, width=64)
        net = infntk.FCNet("relu", depth=3, w_std=1.3, b_std=b, parameterization=par, width=64)
        k = net.kernels(X)
        # the private recursion clips arccos near the diagonal: ~sqrt(eps) absolute
        np.testing.assert_allclose(k.nngp, sig[4], rtol=0,
                                   atol=PRIVATE_RECURSION_TOL * np.abs(sig[4]).max())
        np.testing.assert_allclose(k.ntk, th[4], rtol=0,
                                   atol=PRIVATE_RECURSION_TOL * np.abs(th[4]).max())


# --------------------------------------------------------------------------- seed averages
def _t_test_entries(samples, expected, n_tests):
    """max over entries of |mean - expected| / (sd / sqrt(S)), and the Bonferroni t threshold
    at family-wise level FAMILY_ALPHA for ``n_tests`` tests with S - 1 degrees of freedom."""
    S = samples.shape[0]
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / math.sqrt(S)
    iu = np.triu_indices(expected.shape[0])
    z = np.abs(mean - expected)[iu] / np.maximum(se[iu], 1e-300)
    crit = stats.t.ppf(1 - FAMILY_ALPHA / (2 * n_tests), S - 1)
    return float(np.max(z)), float(crit), float(np.max(se[iu]) / np.max(np.abs(expected)))


@pytest.mark.parametrize("parameterization, b_std", [("ntk", 0.2), ("standard", 0.2)])
def test_seed_average_converges_per_layer(parameterization, b_std):
    """Mean over S = 32 networks of width m = 1024 of every per-layer kernel equals the
    analytic one within a Bonferroni-corrected t-test (the entries of an empirical kernel are
    sums over m units, hence close to Gaussian). The 1/m bias is sqrt(S/m) = 0.18 standard
    errors per unit of (bias constant / fluctuation constant): negligible at this threshold."""
    m, S, L = 1024, 32, 2
    X = default_points(6, 3, seed=1)
    sig, sdot, th = _relu_layers(X, L, 1.2, b_std, parameterization, width=m)
    runs = {}
    for s in range(S):
        mlp = MLP(m, L, "relu", w_std=1.2, b_std=b_std, parameterization=parameterization,
                  seed=[s, m, 7])
        lk = mlp.layer_kernels(X)
        for name, dct in (("sigma", lk.sigma), ("sigma_dot", lk.sigma_dot), ("theta", lk.theta)):
            for l, K in dct.items():
                runs.setdefault((name, l), []).append(K)
        runs.setdefault(("ntk", 0), []).append(mlp.ntk(X))
        runs.setdefault(("nngp", 0), []).append(mlp.nngp(X))
    expected = {("sigma", l): sig[l] for l in sig} | {("theta", l): th[l] for l in th} | \
        {("sigma_dot", l): sdot[l] for l in sdot} | {("ntk", 0): th[L + 1], ("nngp", 0): sig[L + 1]}
    # FCNet gives Sigma^l and Theta^l as the depth l-1 network's kernels
    for l in range(1, L + 2):
        k = infntk.FCNet("relu", depth=l - 1, w_std=1.2, b_std=b_std,
                         parameterization=parameterization, width=m).kernels(X)
        expected["sigma", l], expected["theta", l] = k.nngp, k.ntk
    n_tests = len(expected) * X.shape[0] * (X.shape[0] + 1) // 2
    for key, K in expected.items():
        if key in (("sigma", 1), ("theta", 1)):
            # exact at every width (no randomness below layer 1)
            np.testing.assert_allclose(np.mean(runs[key], axis=0), K, rtol=REORDER_RTOL)
            continue
        zmax, crit, rel_se = _t_test_entries(np.asarray(runs[key]), K, n_tests)
        assert zmax < crit, f"{key}: max |z| = {zmax:.2f} >= {crit:.2f}"
        print(key, f"max|z| = {zmax:.2f} < {crit:.2f}, se/max|K| = {rel_se:.4f}")
        # the test has power: one standard error is a small fraction of the kernel
        assert rel_se < tolerance(0.02, "power: se of a mean of 32 width-1024 kernels is "
                                        "~1/sqrt(32 * 1024) ~ 0.6% of max|K|; 2% bounds it"), key


# --------------------------------------------------------------------------- width sweep
@pytest.fixture(scope="module")
def relu_sweep():
    """relu, depth 2, NTK parameterization, widths 2^7 .. 2^12, 8 seeds (FCNet reference)."""
    return width_sweep("relu", depth=2, widths=[128, 256, 512, 1024, 2048, 4096], seeds=8,
                       progress=False)


def test_mean_of_8_seeds_at_width_4096_within_2_percent(relu_sweep):
    """Issue requirement: relative-Frobenius error of the mean over 8 seeds < 2%. Expected
    size: E||mean - Theta||_F^2 = E||Theta-hat - Theta||_F^2 / 8 + bias^2, i.e. about the
    per-seed RMS error / sqrt(8); checked to be consistent within a factor 2."""
    err = relu_sweep.mean_kernel_error("ntk", "relfro")[4096]
    assert err < tolerance(0.02, "the issue's requirement: 2% relative Frobenius error")
    per_seed = relu_sweep.errors("ntk.relfro")[4096]
    predicted = math.sqrt(np.mean(per_seed ** 2) / per_seed.size)
    factor = tolerance(2.0, "consistency of one error with its predicted size (8 seeds)")
    assert predicted / factor < err < factor * predicted


def test_fitted_exponent_relu_depth2(relu_sweep):
    """Errors decay like width^(-1/2): the fitted slope lies in [-0.6, -0.4] (issue), and its
    99% confidence interval contains -1/2; the same holds per layer and for the NNGP."""
    for metric in ("ntk.relfro", "nngp.relfro", "ntk.maxabs", "theta[2].relfro",
                   "sigma[2].relfro", "sigma[3].maxabs"):
        fit = relu_sweep.fit_exponent(metric, confidence=0.99)
        assert abs(fit.slope + 0.5) <= SLOPE_BAND, str(fit)
        assert fit.ci[0] < -0.5 < fit.ci[1], str(fit)
    # layer 1 is exact: zero error at every width
    assert all(np.all(e == 0) for e in relu_sweep.errors("theta[1].maxabs").values())


def test_summary_statistics(relu_sweep):
    s = relu_sweep.summary("ntk.relfro", confidence=0.95, quantile=0.9)
    e = relu_sweep.errors("ntk.relfro")
    for i, w in enumerate(s["width"]):
        assert s["n"][i] == 8
        assert s["mean"][i] == pytest.approx(e[w].mean(), rel=APPROX_DEFAULT_RTOL)
        half = stats.t.ppf(0.975, 7) * e[w].std(ddof=1) / math.sqrt(8)
        assert s["ci_high"][i] - s["mean"][i] == pytest.approx(half, rel=APPROX_DEFAULT_RTOL)
        assert s["quantile"][i] == pytest.approx(np.quantile(e[w], 0.9), rel=APPROX_DEFAULT_RTOL)
    # the error is decreasing in width on average: the widest CI lies below the narrowest
    assert s["ci_high"][-1] < s["ci_low"][0]


def test_standard_parameterization_sweep():
    """Standard parameterization, compared with FCNet at the same width: same m^(-1/2) decay.
    Fewer runs, so the band is the fit's own 99% CI, required to contain -1/2."""
    res = width_sweep("relu", depth=1, widths=[64, 256, 1024], seeds=6, b_std=0.1,
                      parameterization="standard", progress=False)
    fit = res.fit_exponent("ntk.relfro", confidence=0.99)
    assert fit.ci[0] < -0.5 < fit.ci[1], str(fit)
    # informative: the CI is narrower than the slope itself is from 0
    assert fit.ci[1] - fit.ci[0] < tolerance(0.6, "an informative 99% CI from 3 widths x 6 seeds")
    ref = res.reference
    # width-dependent reference (numpy's default allclose tolerances, written out)
    assert not np.allclose(ref[64]["ntk"], ref[1024]["ntk"],
                           rtol=tolerance(1e-5, "np.allclose default: the 1/width change is "
                                                "~1e-2, far above it"),
                           atol=tolerance(1e-8, "np.allclose default atol"))


# --------------------------------------------------------------------------- resume
def test_interrupt_and_resume(tmp_path):
    X = default_points(4, 3)
    def ref(depth, X_, width):
        k = infntk.FCNet("relu", depth=depth).kernels(X_)
        return k.nngp, k.ntk

    full = width_sweep("relu", depth=1, widths=[16, 32], seeds=3, X=X, progress=False)

    def flaky(depth, X_, width):
        if width == 32:
            raise KeyboardInterrupt
        return ref(depth, X_, width)

    with pytest.warns(RuntimeWarning, match="interrupted"):
        part = width_sweep("relu", depth=1, widths=[16, 32], seeds=3, X=X, progress=False,
                           reference=flaky)
    assert not part.complete and sorted(part.records) == [(16, 0), (16, 1), (16, 2)]
    path = tmp_path / "sweep.json"
    part.save(path)
    resumed = width_sweep("relu", depth=1, widths=[16, 32], seeds=3, X=X, progress=False,
                          results=SweepResult.load(path))
    assert resumed.complete and sorted(resumed.records) == sorted(full.records)
    for key in full.records:
        for metric, v in full.records[key]["errors"].items():
            assert resumed.records[key]["errors"][metric] == pytest.approx(
                v, rel=REORDER_RTOL, abs=tolerance(1e-15, "errors near 0: a few ulp of O(1)"))
    with pytest.raises(ValueError, match="depth"):
        width_sweep("relu", depth=2, widths=[16], seeds=1, X=X, progress=False, results=full)


def test_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        width_sweep(widths=[0], progress=False)
    with pytest.raises(ValueError, match="seeds"):
        width_sweep(widths=[8], seeds=[], progress=False)
    with pytest.raises(ValueError, match="X"):
        width_sweep(widths=[8], X=np.ones((2, 2, 2)), progress=False)
    with pytest.raises(ValueError, match="parameterization"):
        width_sweep(widths=[8], parameterization="mup", progress=False)
    res = width_sweep("relu", depth=1, widths=[8, 16], seeds=2, b_std=0.3, progress=False)
    with pytest.raises(ValueError, match="metric"):
        res.errors("ntk.l2")
    with pytest.raises(ValueError, match="does not apply"):
        arora_bound(res)
    with pytest.raises(ValueError, match="confidence"):
        res.summary(confidence=1.5)
    with pytest.raises(ValueError, match="C3"):
        uniform_bound(res, C3=-1.0)


# --------------------------------------------------------------------------- bounds
def test_arora_bound_constants_and_normalization():
    """C_cover makes the bound hold at every width with equality at one; the conversion to
    Arora et al.'s normalization is exact (ReLU homogeneity): rescaling inputs and w_std with
    the same seeds gives the same eps_measured."""
    d = 4
    X = default_points(5, d, seed=3)
    a = width_sweep("relu", depth=2, widths=[64, 128, 256], seeds=5, X=X * math.sqrt(d / 2),
                    w_std=math.sqrt(2), b_std=None, progress=False)
    b = width_sweep("relu", depth=2, widths=[64, 128, 256], seeds=5,
                    X=X * np.array([[0.5], [2.0], [1.0], [3.0], [0.7]]), w_std=1.1, b_std=None,
                    progress=False)
    ra, rb = arora_bound(a, delta=0.2), arora_bound(b, delta=0.2)
    # homogeneity is exact up to rounding in both the network and FCNet
    np.testing.assert_allclose(ra["eps_measured"], rb["eps_measured"], rtol=tolerance(
        1e-9, "relu homogeneity is exact; rescaled inputs round differently through 2 layers "
              "of width 256 and an 0.8-quantile of max-abs errors ~1e-3 of |K|"))
    # inputs already Arora-normalized unit vectors with w_std = sqrt 2: no rescaling at all
    direct = [np.quantile([np.max(np.abs(a.records[w, s]["kernels"]["ntk"]
                                          - a.reference[w]["ntk"])) for s in range(5)], 0.8) / 3
              for w in a.widths]
    np.testing.assert_allclose(ra["eps_measured"], direct, rtol=REORDER_RTOL)
    tight = arora_bound(a, delta=0.2, C=ra["C_cover"])
    assert np.all(tight["eps_bound"] >= tight["eps_measured"] * (1 - REORDER_RTOL))
    assert np.min(tight["ratio"]) == pytest.approx(1.0, rel=REORDER_RTOL)
    # eps(m) = (C L^6 log(L/delta) / m)^(1/4)
    assert ra["eps_bound"][0] == pytest.approx((64 * math.log(10) / 64) ** 0.25,
                                              rel=APPROX_DEFAULT_RTOL)


def test_uniform_bound_covers_data(relu_sweep):
    ub = uniform_bound(relu_sweep, C3=[1.0, 2.0])
    d = 4
    for i, c3 in enumerate(ub["C3"]):
        for j, l in enumerate(ub["layers"]):
            errs = relu_sweep.errors(f"theta[{l}].maxabs")
            ratios = [np.max(e) / (c3 ** 2 / w ** (1 / 6) + math.sqrt(d * 2 * math.log(w) / w))
                      for w, e in errs.items()]
            assert ub["C2_min"][i, j] == pytest.approx(max(ratios), rel=REORDER_RTOL)
    assert np.all(ub["C2_min"][:, 0] == 0)                    # Theta^1 is exact
    assert np.all(ub["looseness_at_max_width"][:, 1:] >= 1)
    np.testing.assert_allclose(ub["measured_slope"][1:], -0.5, rtol=tolerance(
        1e-7, "assert_allclose's default rtol, kept (negligible next to atol)"), atol=SLOPE_BAND)


# --------------------------------------------------------------------------- depth vs width
def test_relative_variance_grows_with_depth_over_width():
    """Hanin & Nica: the fluctuations of Theta-hat(x, x) are governed by L/m. With 200 seeds
    the chi-square 95% intervals of the relative variance at L/m = 1/64 and 3/8 are disjoint,
    and along the grid the relative variance increases with L/m at fixed m and decreases
    with m at fixed L."""
    r = depth_width_variance("relu", depths=(1, 3), widths=(8, 64), n_seeds=200,
                             progress=False)
    lo, hi = r.rel_var_ci
    assert hi[0, 1] < lo[1, 0]                      # (L=1, m=64) vs (L=3, m=8)
    assert r.rel_var[1, 0] > r.rel_var[0, 0] and r.rel_var[1, 0] > r.rel_var[1, 1]
    assert r.fit_c > 0
    # depth 1: h^1 is exactly Gaussian, so E[Theta-hat(x, x)] = Theta(x, x) (no 1/m bias)
    x = default_points()[:1]
    th = infntk.FCNet("relu", depth=1, w_std=math.sqrt(2), b_std=None).ntk(x)[0, 0]
    assert abs(r.mean[0, 1] - th) < mc_tolerance(math.sqrt(r.var[0, 1] / 200))
