"""Finite composed networks (infntk.finite.FiniteNetwork, Network.finite).

* the factorized empirical NTK equals J J^T of the explicit Jacobian, and the Jacobian equals
  central differences of the forward pass (so forward, backprop and the NTK agree);
* the homogeneous network [Dense, Activation] * L + [Dense] is empirical.MLP bitwise;
* Monte Carlo: the seed mean of the empirical kernels of residual, LayerNorm and
  composed-activation networks agrees with the analytic kernels within the sample's standard
  error, at two widths, and the error shrinks like width^-1/2;
* validation errors.
"""
import numpy as np
import pytest

import infntk
import infntk.training
from infntk import Activation, Dense, LayerNorm, Network, Residual
from infntk.empirical import MLP
from infntk.finite import FiniteNetwork
from infntk.layers import compose_activations
from tolerances import CLOSED_FORM_RTOL, MC_SIGMAS, rel_err_vs_max, tolerance

RNG = np.random.default_rng(11)
X = RNG.standard_normal((5, 3))
X[4] = 0.5 * X[3]                   # parallel rows of different norms
Y = RNG.standard_normal((3, 3))

RESIDUAL = [Dense(1.0, 0.1), Residual([Activation("relu"), Dense(1.4, 0.1)], alpha=0.5),
            Residual([Activation("erf"), Dense(1.0, 0.0)], alpha=1.0),
            Activation("relu"), Dense(1.0, 0.2)]
LAYERNORM = [Dense(2.0, 0.3), LayerNorm(), Activation("sin"), Dense(1.0, 0.0),
             Activation("abs"), LayerNorm(), Dense(1.0, 0.5)]
NESTED = [Dense(1.2, 0.1),
          Residual([Activation("relu"), Dense(1.0, 0.1),
                    Residual([Activation("gaussian"), Dense(1.3, 0.0)], 0.7),
                    LayerNorm(), Dense(1.0, 0.0)], 0.8),
          Activation("erf"), Dense(1.0, 0.1)]
STANDARD = [Dense(1.3, 0.2, "standard"), Activation("relu"),
            Residual([Dense(1.1, None, "standard"), Activation("erf"),
                      Dense(1.0, 0.1, "standard")], 0.6),
            LayerNorm(), Dense(1.0, 0.0, "standard")]
# every layer kind, two activations in a row, mixed parameterizations and bias settings
EVERYTHING = [Dense(1.5, 0.1), Residual([Activation("erf"), Dense(1.2, 0.1)], 0.5), LayerNorm(),
              Activation("relu"), Activation("sin"),
              Residual([Activation("tanh"), Dense(1.0, None), LayerNorm(),
                         Dense(1.0, 0.0, "standard")], 0.7),
              Dense(0.9, 0.2, "standard")]

# relative rounding of a few hundred float64 operations per kernel entry
ROUNDING = tolerance(1e-13, "float64 rounding of the forward/backward passes, relative to max|K|")


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("layers", [RESIDUAL, LAYERNORM, NESTED, STANDARD, EVERYTHING],
                         ids=["residual", "layernorm", "nested", "standard", "everything"])
def test_factorized_ntk_is_jacobian_gram(layers):
    fin = FiniteNetwork(layers, 24, seed=3)
    J1, J2 = fin.jacobian(X), fin.jacobian(Y)
    assert J1.shape == (5, fin.num_params)
    assert rel_err_vs_max(fin.ntk(X), J1 @ J1.T) <= CLOSED_FORM_RTOL
    assert rel_err_vs_max(fin.ntk(X, Y), J1 @ J2.T) <= CLOSED_FORM_RTOL
    assert np.array_equal(fin.ntk(X), fin.ntk(X).T)
    # blocks of rows give the same kernel
    assert rel_err_vs_max(fin.ntk(X, Y, block_size=2), fin.ntk(X, Y)) <= CLOSED_FORM_RTOL
    # the gradient is J^T dout
    dout = RNG.standard_normal(5)
    g = np.concatenate([a.ravel() for a in fin.gradient(X, dout)])
    assert rel_err_vs_max(g, J1.T @ dout) <= CLOSED_FORM_RTOL


@pytest.mark.parametrize("layers", [RESIDUAL, LAYERNORM, EVERYTHING],
                         ids=["residual", "layernorm", "everything"])
def test_jacobian_is_central_difference_of_forward(layers):
    """An independent check of backprop (LayerNorm's Jacobian, residual branches)."""
    fin = FiniteNetwork(layers, 8, seed=1)
    J = fin.jacobian(X)
    h = 1e-5
    worst = 0.0
    flat = [p.reshape(-1) for p in fin.params]
    col = 0
    for p in flat:
        for i in range(0, p.size, max(1, p.size // 7)):
            old = p[i]
            p[i] = old + h
            fp = fin.forward(X)
            p[i] = old - h
            fm = fin.forward(X)
            p[i] = old
            worst = max(worst, np.max(np.abs((fp - fm) / (2 * h) - J[:, col + i])))
        col += p.size
    # central difference: truncation h^2 |f'''| / 6 plus rounding eps |f| / h
    assert worst <= tolerance(1e-7 * np.abs(J).max(), "central difference, h = 1e-5")


@pytest.mark.parametrize("name,params", [("relu", {}), ("erf", {}), ("tanh", {}),
                                         ("leaky_relu", {"alpha": 0.2})])
@pytest.mark.parametrize("par,b", [("ntk", 0.1), ("ntk", 0.0), ("ntk", None),
                                   ("standard", 0.0), ("standard", None), ("standard", 0.3)])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_homogeneous_network_is_mlp_bitwise(name, params, par, b, depth):
    layers = [Dense(1.3, b, par), Activation(name, **params)] * depth + [Dense(1.3, b, par)]
    fin = Network(layers, width=16).finite(16, seed=5) if name != "tanh" else \
        FiniteNetwork(layers, 16, seed=5)
    mlp = MLP(16, depth, name, w_std=1.3, b_std=b, parameterization=par, seed=5, **params)
    dout = np.arange(5.0)
    pairs = [(fin.forward(X), mlp.forward(X)), (fin.ntk(X), mlp.ntk(X)),
             (fin.ntk(X, Y), mlp.ntk(X, Y)), (fin.nngp(X), mlp.nngp(X)),
             (fin.nngp(X, Y), mlp.nngp(X, Y)), (fin.jacobian(X), mlp.jacobian(X))]
    pairs += list(zip(fin.gradient(X, dout), mlp.gradient(X, dout)))
    pairs += list(zip(fin.params, mlp.params))
    assert all(np.array_equal(a, c) for a, c in pairs)
    assert fin.num_params == mlp.num_params


def test_float32_and_lazy_input_dim():
    fin = FiniteNetwork(RESIDUAL, 16, seed=0, dtype=np.float32)
    assert fin.ntk(X).dtype == np.float32 and fin.input_dim == 3
    same = FiniteNetwork(RESIDUAL, 16, seed=0, dtype=np.float32, input_dim=3)
    assert np.array_equal(fin.ntk(X), same.ntk(X))      # drawn at the first call: same draw
    ref = FiniteNetwork(RESIDUAL, 16, seed=0, input_dim=3)
    ref.set_params(fin.params)
    assert rel_err_vs_max(fin.ntk(X), ref.ntk(X)) <= tolerance(1e-5, "float32 rounding")


def test_two_activations_in_a_row_are_their_composition():
    inner, outer = Activation("erf").fn, Activation("sin").fn
    comp = Activation(compose_activations(inner, outer))
    a = FiniteNetwork([Dense(1.5, 0.1), Activation("erf"), Activation("sin"), Dense()], 32,
                      seed=2)
    b = FiniteNetwork([Dense(1.5, 0.1), comp, Dense()], 32, seed=2)
    assert np.array_equal(a.forward(X), b.forward(X))
    assert rel_err_vs_max(a.ntk(X), b.ntk(X)) <= ROUNDING


def test_copy_and_set_params_are_independent():
    fin = FiniteNetwork(NESTED, 8, seed=0, input_dim=3)
    other = fin.copy()
    other.params[0][...] += 1.0
    assert not np.array_equal(fin.forward(X), other.forward(X))
    fin.set_params(other.params)
    assert np.array_equal(fin.forward(X), other.forward(X))


def test_zero_representation_under_layernorm_stays_zero():
    """A zero input with bias-free layers: LayerNorm's 0/0 is 0 and passes no gradient."""
    fin = FiniteNetwork([Dense(1.0, None), LayerNorm(), Activation("relu"), Dense(1.0, 0.5)],
                        8, seed=0)
    Z = np.zeros((2, 3))
    assert np.array_equal(fin.forward(Z), np.zeros(2) + 0.5 * fin.params[-1][0])
    assert np.isfinite(fin.ntk(Z)).all()


def test_network_finite_matches_training_interface():
    fin = Network(RESIDUAL).finite(32, seed=0, input_dim=3)
    Xt = RNG.standard_normal((8, 3))
    rec = infntk.training.train(fin, Xt, np.sin(Xt[:, 0]), lr=0.5, steps=30)
    assert rec.loss[-1] < rec.loss[0]
    lin = infntk.training.LinearizedMLP(fin)
    assert rel_err_vs_max(lin.forward(Xt), fin.forward(Xt)) <= CLOSED_FORM_RTOL
    assert fin.network is not None and fin.params[0].shape == (32, 3)


# ----------------------------------------------------------------------------- Monte Carlo
def _mc(net, widths, seeds, ref_at):
    """Seed means of the empirical kernels at each width against the analytic kernels."""
    out = {}
    for m in widths:
        nngp_ref, ntk_ref = ref_at(m)
        ref = np.array([ntk_ref, nngp_ref])
        K = np.array([[(f := FiniteNetwork(net, m, seed=[s, m])).ntk(X), f.nngp(X)]
                      for s in range(seeds)])
        mean = K.mean(axis=0)
        se = K.std(axis=0, ddof=1) / np.sqrt(seeds)
        # entrywise within MC_SIGMAS standard errors (plus rounding, for the entries that
        # LayerNorm makes deterministic)
        bound = MC_SIGMAS * se + ROUNDING * np.abs(ref).max(axis=(1, 2), keepdims=True)
        assert (np.abs(mean - ref) <= bound).all(), (m, np.abs(mean - ref) / se)
        rel = np.linalg.norm(K - ref, axis=(2, 3)) / np.linalg.norm(ref, axis=(1, 2))
        out[m] = rel                                    # (seeds, 2): ntk, nngp
    return out


def _slope_check(errs, w1, w2):
    """The mean relative error shrinks like width^-1/2: slope within its standard error."""
    e1, e2 = errs[w1], errs[w2]
    S = e1.shape[0]
    slope = np.log(e2.mean(0) / e1.mean(0)) / np.log(w2 / w1)
    # delta method: se(log mean e) = sd(e) / (mean(e) sqrt(S))
    se = np.sqrt((e1.std(0, ddof=1) / e1.mean(0)) ** 2
                 + (e2.std(0, ddof=1) / e2.mean(0)) ** 2) / np.sqrt(S) / np.log(w2 / w1)
    assert (np.abs(slope + 0.5) <= MC_SIGMAS * se).all(), (slope, se)
    return slope


@pytest.mark.parametrize("layers", [RESIDUAL, LAYERNORM, NESTED],
                         ids=["residual", "layernorm", "nested"])
def test_monte_carlo_converges_to_network_kernels(layers):
    net = Network(layers)
    k = net.kernels(X)
    errs = _mc(net, (128, 512), 16, lambda m: (k.nngp, k.ntk))
    _slope_check(errs, 128, 512)


def test_monte_carlo_standard_parameterization_with_residual_and_layernorm():
    """The NTK of "standard" depends on the width: the reference is Network(width=m)."""
    def ref(m):
        k = Network(STANDARD, width=m).kernels(X)
        return k.nngp, k.ntk
    _mc(STANDARD, (64, 256), 16, ref)


def test_monte_carlo_composed_activations():
    """Two activations in a row: the analytic kernel is that of their composition (here
    through FCNet's certified Hermite series of the composed callable)."""
    comp = compose_activations(Activation("erf").fn, Activation("sin").fn)
    k = infntk.FCNet(comp, depth=1, w_std=1.5, b_std=0.1, tol=1e-7).kernels(X)
    # the certified series bound is negligible next to the Monte Carlo standard errors (~1e-2)
    assert k.error_bound <= tolerance(1e-5, "series bound far below the MC standard error")
    layers = [Dense(1.5, 0.1), Activation("erf"), Activation("sin"), Dense(1.5, 0.1)]
    errs = _mc(layers, (128, 512), 16, lambda m: (k.nngp, k.ntk))
    _slope_check(errs, 128, 512)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("layers,exc,match", [
    ([], ValueError, "non-empty"),
    ([Activation("relu"), Dense()], ValueError, "start with a Dense"),
    ([Dense(), Activation("relu")], ValueError, "end with one"),
    ([Dense(), "relu", Dense()], TypeError, r"layers\[1\]"),
    (3, TypeError, "sequence of layers"),
])
def test_bad_layers(layers, exc, match):
    with pytest.raises(exc, match=match):
        FiniteNetwork(layers, 8)


def test_bad_arguments():
    net = Network(RESIDUAL)
    with pytest.raises(ValueError, match="width"):
        net.finite(0)
    with pytest.raises(TypeError, match="width"):
        net.finite(2.5)
    with pytest.raises(TypeError, match="seed"):
        net.finite(8, seed="x")
    with pytest.raises(TypeError, match="dtype"):
        net.finite(8, dtype=np.int32)
    fin = net.finite(8)
    with pytest.raises(RuntimeError, match="input_dim"):
        fin.num_params
    with pytest.raises(ValueError, match="NaN"):
        fin.forward(np.full((2, 3), np.nan))
    fin.forward(X)
    with pytest.raises(ValueError, match="3 columns"):
        fin.ntk(np.ones((2, 4)))
    with pytest.raises(ValueError, match="dout"):
        fin.gradient(X, np.ones(4))
    with pytest.raises(ValueError, match=r"params\[0\]"):
        fin.set_params([np.ones((2, 2))] + fin.params[1:])
    with pytest.raises(ValueError, match="arrays"):
        fin.set_params(fin.params[:1])


# ----------------------------------------------------------------------------- the text form
@pytest.mark.parametrize("text,layers", [
    ("dense(1.5,0.1) relu dense erf dense",
     [Dense(1.5, 0.1), Activation("relu"), Dense(), Activation("erf"), Dense()]),
    ("dense(1.3, none, standard) leaky_relu(alpha=0.1) residual(0.5)[relu dense(1.4,0.1)] "
     "layernorm dense()",
     [Dense(1.3, None, "standard"), Activation("leaky_relu", alpha=0.1),
      Residual([Activation("relu"), Dense(1.4, 0.1)], 0.5), LayerNorm(), Dense()]),
    ("dense(w_std=2) residual[erf residual(alpha=0.3)[sin dense(1,0)] dense] arccos(n=2) dense",
     [Dense(2.0), Residual([Activation("erf"),
                            Residual([Activation("sin"), Dense(1.0, 0.0)], 0.3), Dense()]),
      Activation("arccos", n=2), Dense()]),
])
def test_parse_layers(text, layers):
    from infntk.layer_spec import parse_layers
    assert parse_layers(text) == layers


@pytest.mark.parametrize("text,match", [
    ("dense(1.5", "expected ',' or '\\)'"), ("dense relu]", "unmatched"),
    ("residual(0.5)[relu dense", "missing"), ("residual(0.5) relu dense", "brackets"),
    ("dense foo dense", "unknown name 'foo'"), ("dense leaky_relu(0.1) dense", "keywords"),
    ("dense(1,2,3,4)", "at most 3"), ("dense(x=1)", "no parameter 'x'"),
    ("dense(-1)", "w_std"), ("dense $ dense", "unexpected character"), ("", "at least one"),
    ("residual[relu] dense", "must end with a Dense"), ("dense(1,,2)", "expected a value"),
])
def test_parse_layers_errors(text, match):
    from infntk.layer_spec import parse_layers
    with pytest.raises(ValueError, match=match):
        parse_layers(text)


# ----------------------------------------------------------------------------- integrations
HOMOGENEOUS = [Dense(1.5, 0.1), Activation("relu")] * 2 + [Dense(1.5, 0.1)]
SPEC = "dense(1.5,0.1) residual(0.5)[relu dense(1.4,0.1)] layernorm erf dense"


def test_width_sweep_accepts_a_network():
    from infntk.convergence import width_sweep
    res = width_sweep(Network(HOMOGENEOUS), widths=[16, 32], seeds=2, progress=False)
    old = width_sweep("relu", depth=2, w_std=1.5, b_std=0.1, widths=[16, 32], seeds=2,
                      progress=False)
    for key, rec in res.records.items():       # the same networks (same seeds [s, m])
        assert np.array_equal(rec["kernels"]["nngp"], old.records[key]["kernels"]["nngp"])
        assert rel_err_vs_max(rec["kernels"]["ntk"], old.records[key]["kernels"]["ntk"]) \
            <= ROUNDING
    more = width_sweep(Network(STANDARD, width=8), widths=[16, 32, 64], seeds=2,
                       progress=False)
    assert sorted(more.metrics) == ["nngp.maxabs", "nngp.relfro", "ntk.maxabs", "ntk.relfro"]
    assert len(width_sweep(Network(STANDARD, width=8), widths=[16, 32, 64, 128], seeds=2,
                           progress=False, results=more).records) == 8


def test_kernel_regime_and_after_kernel_accept_a_network():
    from infntk.after_kernel import compare
    from infntk.training import kernel_regime
    Xt = RNG.standard_normal((6, 3))
    kr = kernel_regime(Xt, np.sin(Xt[:, 0]), Xt[:3], activation=Network(RESIDUAL),
                       widths=(32, 64), steps=5, seeds=(0,))
    assert kr.ntk_change.shape == (2, 1) and np.isfinite(kr.disc_analytic).all()
    t = compare("teacher", n_train=20, n_test=10, activation=Network(NESTED), width=16,
                steps=5, seeds=(0,))
    assert np.all(t.train_mse["booster"] <= t.train_mse["dnn"])
    with pytest.raises(TypeError, match="finite"):
        infntk.training.train(Network(RESIDUAL), Xt, np.zeros(6), lr=0.1, steps=1)


def test_sklearn_kernels_accept_a_network():
    pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel
    from infntk.layer_spec import parse_layers
    from infntk.sklearn import NNGP, NTK
    net = Network(parse_layers(SPEC))
    for k in (NTK(network=net), NTK(network=SPEC)):
        assert np.array_equal(k(X), net.ntk(X)) and np.array_equal(k(X, Y), net.ntk(X, Y))
        assert np.array_equal(k.diag(X), net.diag(X).ntk)
        assert clone(k) == k and k.theta.size == 0
        K, G = k(X, eval_gradient=True)
        assert G.shape == (5, 5, 0)
    assert np.array_equal(NNGP(network=SPEC)(X), net.nngp(X))
    gp = GaussianProcessRegressor(ConstantKernel() * NTK(network=net), alpha=1e-6)
    gp.fit(X, np.sin(X[:, 0]))
    assert gp.kernel_.k2.network is net
    with pytest.raises(TypeError, match="network"):
        NTK(network=3)(X)


def test_cli_layers(tmp_path):
    from infntk.cli import main
    np.save(tmp_path / "X.npy", X)
    out = tmp_path / "K.npz"
    assert main(["kernel", str(tmp_path / "X.npy"), "--layers", SPEC, "--out", str(out),
                 "--no-progress"]) == 0
    from infntk.layer_spec import parse_layers
    k = Network(parse_layers(SPEC)).kernels(X)
    with np.load(out) as z:
        assert np.array_equal(z["ntk"], k.ntk) and np.array_equal(z["nngp"], k.nngp)


@pytest.mark.parametrize("text,match", [("dense relu(", "layers: "),
                                        ("dense(1,0,standard) relu dense(1,0,standard)",
                                         "--layers: width is required")])
def test_cli_layers_errors(tmp_path, capsys, text, match):
    from infntk.cli import main
    np.save(tmp_path / "X.npy", X)
    assert main(["kernel", str(tmp_path / "X.npy"), "--layers", text, "--out",
                 str(tmp_path / "K.npz"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("infntk: error: ") and match in err and err.count("\n") == 1
