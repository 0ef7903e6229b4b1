"""The public surface: reachable submodules, one argument order, typed results, short reprs,
deprecated names that still work (and say what replaces them)."""
import inspect
import pathlib
import sys

import numpy as np
import pytest

import infntk
from infntk import convergence, hermite
from infntk.empirical import MLP
from infntk.quadrature import DualQuadrature, dual_quadrature
from tolerances import CLOSED_FORM_RTOL

_PUBLIC = sorted(p.stem for p in pathlib.Path(infntk.__file__).parent.glob("*.py")
                 if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", _PUBLIC)
def test_every_public_module_is_an_attribute(name):
    try:
        mod = getattr(infntk, name)
    except ImportError as exc:          # an optional dependency (sklearn, dask) is missing
        pytest.skip(f"infntk.{name} needs an optional dependency: {exc}")
    assert mod is sys.modules[f"infntk.{name}"]
    assert name in dir(infntk)


def test_shared_argument_order():
    """activation, depth, w_std, b_std in that relative order wherever they appear."""
    from infntk.after_kernel import compare
    from infntk.sklearn import NTK
    from infntk.training import kernel_regime
    order = ["activation", "depth", "w_std", "b_std"]
    for fn in (infntk.FCNet, convergence.width_sweep, kernel_regime, compare, NTK):
        names = list(inspect.signature(fn).parameters)
        assert [n for n in names if n in order] == order, fn
    # MLP keeps its positional order (width first), with FCNet's keyword names
    assert list(inspect.signature(MLP).parameters)[:7] == [
        "width", "depth", "activation", "w_std", "b_std", "parameterization", "seed"]


def test_mlp_num_params_before_the_first_call():
    X = np.random.default_rng(0).standard_normal((3, 5))
    for b_std in (0.0, None):
        mlp = MLP(7, 3, "tanh", 1.2, b_std, "ntk", 0, input_dim=5)
        before = mlp.num_params
        assert before == sum(p.size for p in mlp.params) == mlp.jacobian(X).shape[1]
        assert before == (7 * 5 + 7 * 7 * 2 + 7) + (3 * 7 + 1 if b_std is not None else 0)
    lazy = MLP(7, 3, "tanh", seed=0)
    with pytest.raises(RuntimeError, match="input_dim"):
        lazy.num_params
    lazy.forward(X)
    assert lazy.num_params == MLP(7, 3, "tanh", seed=0, input_dim=5).num_params


def test_sweep_repr_is_one_short_line():
    res = convergence.width_sweep("relu", 1, widths=[8, 16], seeds=2, progress=False)
    text = repr(res)
    assert "\n" not in text and len(text) < 300, text
    assert "widths=[8, 16]" in text and "runs=4" in text
    fit = res.fit_exponent("ntk.relfro")
    assert len(repr(fit)) < 300


def test_depth_width_variance_seeds_and_deprecated_n_seeds():
    kw = dict(depths=(1,), widths=(8,), progress=False)
    new = convergence.depth_width_variance("relu", seeds=3, **kw)
    with pytest.warns(DeprecationWarning, match="seeds"):
        old = convergence.depth_width_variance("relu", n_seeds=3, **kw)
    np.testing.assert_array_equal(new.mean, old.mean)
    assert new.seeds == 3
    with pytest.warns(DeprecationWarning, match="seeds"):
        assert new.n_seeds == 3
    explicit = convergence.depth_width_variance("relu", seeds=[0, 1, 2], **kw)
    np.testing.assert_array_equal(explicit.var, new.var)
    assert "\n" not in repr(new) and len(repr(new)) < 300
    with pytest.raises(ValueError, match="seeds"):
        convergence.depth_width_variance("relu", seeds=1, **kw)


def test_gamma_ntk_is_a_named_tuple():
    g = hermite.gamma_ntk("tanh", 0.5)
    gamma, err = g
    assert isinstance(g, hermite.GammaNTK) and (g.gamma, g.error) == (gamma, err)
    assert repr(g).startswith("GammaNTK(gamma=")


def test_dual_series_and_quadrature_share_the_correlation_convention():
    q1, q2, rho = 0.7, 1.3, np.linspace(-0.9, 0.9, 5)
    ser = hermite.dual_series("erf", q1, q2, rho, 80)
    quad = dual_quadrature("erf", q1, q2, rho=rho, order=120)
    assert isinstance(quad, DualQuadrature)
    # erf at q <= 1.3: the 120-point rule is exact to rounding (module notes)
    assert np.all(np.abs(quad.nngp - ser.nngp) <= ser.nngp_bound + CLOSED_FORM_RTOL)
    assert len(repr(ser)) < 200 and len(repr(quad)) < 200
    # the former covariance convention: positional s, or s=, still works and warns
    s = rho * np.sqrt(q1 * q2)
    with pytest.warns(DeprecationWarning, match="rho="):
        old = dual_quadrature("erf", q1, q2, s, 120)
    with pytest.warns(DeprecationWarning, match="rho="):
        kw = dual_quadrature("erf", q1, q2, s=s, order=120)
    np.testing.assert_allclose(old.nngp, quad.nngp, rtol=CLOSED_FORM_RTOL, atol=0)
    np.testing.assert_array_equal(old.dot, kw.dot)
    with pytest.raises(TypeError, match="rho"):
        dual_quadrature("erf", q1, q2)


def test_sklearn_kernels_take_activation_parameters_as_keywords():
    pytest.importorskip("sklearn")
    from sklearn.base import clone

    from infntk.sklearn import NTK
    X = np.random.default_rng(1).standard_normal((4, 3))
    k = NTK("leaky_relu", depth=2, alpha=0.2)
    assert k.activation_params == {"alpha": 0.2}
    expected = infntk.FCNet("leaky_relu", depth=2, alpha=0.2).ntk(X)
    np.testing.assert_array_equal(k(X), expected)
    np.testing.assert_array_equal(clone(k)(X), expected)
