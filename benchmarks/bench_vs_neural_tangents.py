"""infntk against neural-tangents, side by side on the same inputs (optional benchmark).

neural-tangents is not a dependency of infntk: it runs in its own virtual environment
(``--nt-python``, default ``$INFNTK_NT_PYTHON`` or ``nt-venv/bin/python``; install there with
``pip install "neural-tangents==0.6.5" "jax==0.4.23" "jaxlib==0.4.23" "numpy==1.26.4"
"scipy==1.11.4" "tensorflow==2.15.1" "tf2jax==0.3.5"``), as a subprocess running a small
inline script that reads the inputs from ``.npy`` files and prints its timings as JSON. This
script runs under infntk's environment and prints one table.

Every case: float64 (``jax_enable_x64``), ``w_std`` 1.5 (relu: sqrt 2), ``b_std`` 0.1,
``d`` = 100, standard normal inputs, NNGP and NTK together; neural-tangents' ``kernel_fn``
jitted, one warm-up call, then the best of ``--repeats`` calls (``block_until_ready``);
infntk likewise (one warm-up call, which also loads the compiled code, then the best of
``--repeats``), right after neural-tangents' run of the same case (one subprocess per case),
so that both sides see the same load of a shared machine (the last column: load average). The networks are ``[Dense, act] * L + [Dense]`` in the NTK parameterization
(``infntk.FCNet(act, depth=L)``). The column "agree" is ``max |K_infntk - K_nt| / max |K|``
over both kernels (neural-tangents' ``ElementwiseNumerical`` is a degree-25 quadrature, so
tanh agrees only to its accuracy). Last, the empirical NTK of a width-1024, depth-3 relu MLP
on n = 256 points (neural-tangents ``STRUCTURED_DERIVATIVES``; different random weights, so
only the times compare).

With ``--baseline-tree DIR`` (another checkout of infntk, e.g. ``git worktree add``), that
checkout is timed on the same inputs right after, in its own process (columns "base s" and
"speed-up" = base / infntk).

Usage: python benchmarks/bench_vs_neural_tangents.py [--repeats 2] [--quick] [--only erf,relu]
       [--baseline-tree DIR]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import infntk
from infntk.empirical import MLP
from _timing import best_of  # noqa: E402  (benchmarks/_timing.py)

#: the neural-tangents venv's interpreter (its own venv: see the module docstring)
NT_PYTHON = os.environ.get("INFNTK_NT_PYTHON", "nt-venv/bin/python")
SQRT2 = math.sqrt(2.0)

# name, infntk activation, neural-tangents layer (an expression in `stax`), extra infntk
# arguments. Smooth and kinked closed forms first, then the series (tanh).
_NT_LAYERS = {
    "relu": "stax.Relu()", "erf": "stax.Erf()", "gelu": "stax.Gelu(approximate=False)",
    "sin": "stax.Sin()", "cos": "stax.Cos()", "gaussian": "stax.Gaussian(a=1.0, b=-0.5)",
    "abs": "stax.Abs()", "leaky_relu": "stax.LeakyRelu(0.01)",
    "step": "stax.RectifiedMonomial(0)",
    "tanh": "stax.ElementwiseNumerical(jnp.tanh, deg=25)",
}


def cases(quick):
    """(label, activation, depth, n1, n2 or None, w_std) of every row of the table."""
    s = 4 if quick else 1
    out = [("relu", "relu", 10, 4000 // s, None, SQRT2),
           ("relu", "relu", 10, 2000 // s, 1000 // s, SQRT2),
           ("erf", "erf", 10, 2000 // s, None, 1.5),
           ("erf", "erf", 10, 2000 // s, 1000 // s, 1.5)]
    for act in ("gelu", "sin", "cos", "gaussian", "abs", "leaky_relu", "step"):
        out.append((act, act, 10, 2000 // s, None, 1.5))
        out.append((act, act, 10, 2000 // s, 1000 // s, 1.5))
    out.append(("tanh", "tanh", 3, 1000 // s, None, 1.5))
    return out


_NT_SCRIPT = r"""
import json, sys, time, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import neural_tangents as nt
from neural_tangents import stax

cfg = json.load(open(sys.argv[1]))
res = []
for c in cfg["cases"]:
    layer = eval(c["nt"])
    layers = []
    for _ in range(c["depth"]):
        layers += [stax.Dense(512, W_std=c["w_std"], b_std=c["b_std"]), layer]
    layers += [stax.Dense(1, W_std=c["w_std"], b_std=c["b_std"])]
    _, _, kernel_fn = stax.serial(*layers)
    kfn = jax.jit(kernel_fn, static_argnames="get")
    x1 = jnp.asarray(np.load(c["x1"]))
    x2 = None if c["x2"] is None else jnp.asarray(np.load(c["x2"]))
    def run():
        k = kfn(x1, x2, get=("nngp", "ntk"))
        return k.nngp.block_until_ready(), k.ntk.block_until_ready()
    t = time.perf_counter(); run(); warm = time.perf_counter() - t
    times = []
    for _ in range(cfg["repeats"]):
        t = time.perf_counter(); nngp, ntk = run(); times.append(time.perf_counter() - t)
    np.save(c["out"] + "_nngp.npy", np.asarray(nngp))
    np.save(c["out"] + "_ntk.npy", np.asarray(ntk))
    res.append({"time": min(times), "first": warm})
    print(json.dumps(res[-1]), file=sys.stderr, flush=True)
e = cfg["empirical"]
if e:
    init_fn, apply_fn, _ = stax.serial(*([stax.Dense(e["width"], W_std=1.5, b_std=0.1),
                                          stax.Relu()] * e["depth"]
                                         + [stax.Dense(1, W_std=1.5, b_std=0.1)]))
    x = jnp.asarray(np.load(e["x"]))
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0,
                 implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES))
    fn(x, None, params).block_until_ready()
    times = []
    for _ in range(cfg["repeats"]):
        t = time.perf_counter(); fn(x, None, params).block_until_ready()
        times.append(time.perf_counter() - t)
    res.append({"time": min(times)})
print(json.dumps(res))
"""


_BASELINE_SCRIPT = r"""
import json, sys, time
import numpy as np
import infntk
c = json.load(open(sys.argv[1]))
X1 = np.load(c["x1"])
X2 = None if c["x2"] is None else np.load(c["x2"])
net = infntk.FCNet(c["act"], depth=c["depth"], w_std=c["w_std"], b_std=c["b_std"], **c["kw"])
net.kernels(X1, X2)
times = []
for _ in range(c["repeats"]):
    t = time.perf_counter(); net.kernels(X1, X2); times.append(time.perf_counter() - t)
print(json.dumps({"time": min(times)}))
"""


def run_baseline(tree, tmp, cfg):
    """infntk's time for one case from another checkout ``tree`` (its own process)."""
    cfg_path = os.path.join(tmp, "baseline.json")
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    # cwd = tmp: ``python -c`` puts the working directory first on sys.path, which would
    # shadow the baseline with the checkout the benchmark is run from
    proc = subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT, cfg_path],
                          capture_output=True, text=True, env=env, cwd=tmp)
    if proc.returncode:
        sys.exit("baseline run failed:\n" + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])["time"]


def _save(tmp, name, X):
    path = os.path.join(tmp, f"{name}.npy")
    np.save(path, X)
    return path


def run_nt(args, tmp, cfg):
    """neural-tangents' timings for ``cfg`` (a JSON list), from its own interpreter."""
    cfg_path = os.path.join(tmp, "cfg.json")
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    proc = subprocess.run([args.nt_python, "-c", _NT_SCRIPT, cfg_path], capture_output=True,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu",
                                              TF_CPP_MIN_LOG_LEVEL="3"))
    if proc.returncode:
        sys.exit("neural-tangents run failed:\n" + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])



def _best_of_warm(f, repeats):
    """Best of ``repeats`` calls after one untimed call (which loads the compiled code)."""
    return best_of(f, repeats, warmup=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nt-python", default=NT_PYTHON)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="n / 4 everywhere")
    ap.add_argument("--only", help="comma-separated activations (default: all)")
    ap.add_argument("--no-empirical", action="store_true")
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--baseline-tree", help="another checkout of infntk (its root directory) "
                    "to time on the same inputs, right after this one (column 'base s')")
    args = ap.parse_args()
    if not os.path.exists(args.nt_python):
        sys.exit(f"neural-tangents' python {args.nt_python!r} not found (see --help)")
    import numba
    print(f"infntk {infntk.__version__}, numba {numba.__version__}, threads "
          f"{numba.get_num_threads()}, {os.cpu_count()} cpus, load average "
          f"{os.getloadavg()[0]:.2f} at the start")
    todo = cases(args.quick)
    if args.only:
        keep = set(args.only.split(","))
        todo = [c for c in todo if c[1] in keep]
    b_std = 0.1
    rng = np.random.default_rng(0)
    base_col = f" {'base s':>8} {'speed-up':>8}" if args.baseline_tree else ""
    print(f"\n{'activation':10} {'L':>2} {'shape':>11} {'NT s':>8} {'infntk s':>9} "
          f"{'ratio':>7} {'infntk pair-layers/s':>20} {'agree':>9}{base_col} {'load':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, act, depth, n1, n2, w_std) in enumerate(todo):
            X1 = rng.standard_normal((n1, args.d))
            X2 = None if n2 is None else rng.standard_normal((n2, args.d))
            case = {"nt": _NT_LAYERS[act], "depth": depth, "w_std": w_std, "b_std": b_std,
                    "x1": _save(tmp, "x1", X1), "x2": None if X2 is None else _save(tmp, "x2", X2),
                    "out": os.path.join(tmp, "k")}
            # neural-tangents right before infntk, so that both see the same machine load
            t_nt = run_nt(args, tmp, {"repeats": args.repeats, "cases": [case],
                                      "empirical": None})[0]["time"]
            kw = {"tol": 1e-10} if act == "tanh" else {}
            net = infntk.FCNet(act, depth=depth, w_std=w_std, b_std=b_std, **kw)
            t_inf, k = _best_of_warm(lambda: net.kernels(X1, X2), args.repeats)
            nt_nngp, nt_ntk = np.load(case["out"] + "_nngp.npy"), np.load(case["out"] + "_ntk.npy")
            scale = max(np.abs(k.nngp).max(), np.abs(k.ntk).max())
            agree = max(np.abs(k.nngp - nt_nngp).max(), np.abs(k.ntk - nt_ntk).max()) / scale
            m = n2 if n2 is not None else n1
            shape = f"{n1}x{m}" + ("" if n2 is not None else " s")
            base = ""
            if args.baseline_tree:
                t_base = run_baseline(args.baseline_tree, tmp, {
                    "act": act, "depth": depth, "w_std": w_std, "b_std": b_std, "kw": kw,
                    "x1": case["x1"], "x2": case["x2"], "repeats": args.repeats})
                base = f" {t_base:8.3f} {t_base / t_inf:7.1f}x"
            print(f"{label:10} {depth:2d} {shape:>11} {t_nt:8.3f} {t_inf:9.3f} "
                  f"{t_nt / t_inf:6.1f}x {n1 * m * depth / t_inf:20.3g} {agree:9.1e}{base} "
                  f"{os.getloadavg()[0]:5.1f}", flush=True)
            del k, nt_nngp, nt_ntk
        if not args.no_empirical:
            n_emp, width_emp, depth_emp = (64 if args.quick else 256), 1024, 3
            Xe = rng.standard_normal((n_emp, args.d))
            emp = {"x": _save(tmp, "xe", Xe), "width": width_emp, "depth": depth_emp}
            t_nt = run_nt(args, tmp, {"repeats": args.repeats, "cases": [],
                                      "empirical": emp})[-1]["time"]
            mlp = MLP(width_emp, depth_emp, "relu", seed=0, input_dim=args.d)
            t_inf, _ = _best_of_warm(lambda: mlp.ntk(Xe), args.repeats)
            print(f"{'empirical':10} {depth_emp:2d} {f'{n_emp}x{n_emp}':>11} {t_nt:8.3f} "
                  f"{t_inf:9.3f} {t_nt / t_inf:6.1f}x {'(width ' + str(width_emp) + ')':>20}"
                  f" {'':9} {os.getloadavg()[0]:5.1f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end ('s' = symmetric X2 = None)")


if __name__ == "__main__":
    main()
