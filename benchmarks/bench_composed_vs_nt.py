"""Composed networks (Residual, LayerNorm, mixed activations): infntk against neural-tangents.

Optional benchmark, like ``bench_vs_neural_tangents.py`` (whose conventions it follows):
neural-tangents 0.6.5 runs in its own virtual environment (``--nt-python``, default
``$INFNTK_NT_PYTHON``), as a subprocess that reads the inputs from ``.npy`` files, times its
jitted ``kernel_fn`` (one warm-up call, best of ``--repeats``, float64, CPU) and writes its
kernels back; infntk is timed in this process right after each case (one warm-up call, best
of ``--repeats``). "agree" is ``max |K_infntk - K_nt| / max |K|`` over both kernels.

Networks (NTK parameterization, d = 100, standard normal inputs):

* ``resnet-relu``: ``Dense(1.5, 0.1)``, then ``L`` pre-activation blocks
  ``h + Dense(relu(h))`` (infntk ``Residual([Activation("relu"), Dense(1.5, 0.1)])``,
  neural-tangents ``FanOut(2), parallel(Identity(), serial(Relu(), Dense)), FanInSum()``),
  ``LayerNorm``, ``erf``, ``Dense``;
* ``resnet-mixed``: the same with blocks ``h + Dense(gelu(Dense(erf(h))))``, ending with relu.

Usage: python benchmarks/bench_composed_vs_nt.py [--repeats 2] [--quick] [--blocks 8]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import infntk
from _timing import best_of  # noqa: E402  (benchmarks/_timing.py)

NT_PYTHON = os.environ.get("INFNTK_NT_PYTHON", "nt-venv/bin/python")
W, B = 1.5, 0.1


def infntk_net(kind, blocks):
    D, A = infntk.Dense, infntk.Activation
    if kind == "resnet-relu":
        body = [infntk.Residual([A("relu"), D(W, B)])] * blocks
        head = [infntk.LayerNorm(), A("erf"), D(W, B)]
    else:
        body = [infntk.Residual([A("erf"), D(W, B), A("gelu"), D(W, B)])] * blocks
        head = [infntk.LayerNorm(), A("relu"), D(W, B)]
    return infntk.Network([D(W, B)] + body + head)


_NT_SCRIPT = r"""
import json, sys, time, os
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from neural_tangents import stax

cfg = json.load(open(sys.argv[1]))
W, B = cfg["w"], cfg["b"]
def dense():
    return stax.Dense(512, W_std=W, b_std=B)
res = []
for c in cfg["cases"]:
    if c["kind"] == "resnet-relu":
        block = stax.serial(stax.Relu(), dense())
        head = [stax.LayerNorm(), stax.Erf(), stax.Dense(1, W_std=W, b_std=B)]
    else:
        block = stax.serial(stax.Erf(), dense(), stax.Gelu(approximate=False), dense())
        head = [stax.LayerNorm(), stax.Relu(), stax.Dense(1, W_std=W, b_std=B)]
    res_block = stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), block), stax.FanInSum())
    _, _, kernel_fn = stax.serial(dense(), *([res_block] * c["blocks"]), *head)
    kfn = jax.jit(kernel_fn, static_argnames="get")
    x1 = jnp.asarray(np.load(c["x1"]))
    x2 = None if c["x2"] is None else jnp.asarray(np.load(c["x2"]))
    def run():
        k = kfn(x1, x2, get=("nngp", "ntk"))
        return k.nngp.block_until_ready(), k.ntk.block_until_ready()
    run()
    times = []
    for _ in range(cfg["repeats"]):
        t = time.perf_counter(); nngp, ntk = run(); times.append(time.perf_counter() - t)
    np.save(c["out"] + "_nngp.npy", np.asarray(nngp))
    np.save(c["out"] + "_ntk.npy", np.asarray(ntk))
    res.append({"time": min(times)})
print(json.dumps(res))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nt-python", default=NT_PYTHON)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="n / 4")
    ap.add_argument("--blocks", type=int, default=8)
    args = ap.parse_args()
    s = 4 if args.quick else 1
    rng = np.random.default_rng(0)
    X1 = rng.standard_normal((2000 // s, 100))
    X2 = rng.standard_normal((1000 // s, 100))
    shapes = [("sym", X1, None), ("cross", X1, X2)]
    import numba
    print(f"numba threads {numba.get_num_threads()}, load {os.getloadavg()[0]:.2f}, "
          f"{args.blocks} residual blocks, d 100")
    print(f"{'network':13s} {'shape':>10s} {'NT s':>8s} {'infntk s':>9s} {'vs NT':>7s} {'agree':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("resnet-relu", "resnet-mixed"):
            cases = []
            for tag, A, Bm in shapes:
                p1 = os.path.join(tmp, f"{kind}_{tag}_x1.npy")
                np.save(p1, A)
                p2 = None
                if Bm is not None:
                    p2 = os.path.join(tmp, f"{kind}_{tag}_x2.npy")
                    np.save(p2, Bm)
                cases.append({"kind": kind, "blocks": args.blocks, "x1": p1, "x2": p2,
                              "out": os.path.join(tmp, f"{kind}_{tag}")})
            cfg_path = os.path.join(tmp, "cfg.json")
            with open(cfg_path, "w") as fh:
                json.dump({"cases": cases, "repeats": args.repeats, "w": W, "b": B}, fh)
            proc = subprocess.run([args.nt_python, "-c", _NT_SCRIPT, cfg_path],
                                  capture_output=True, text=True,
                                  env=dict(os.environ, JAX_PLATFORMS="cpu",
                                           TF_CPP_MIN_LOG_LEVEL="3"))
            if proc.returncode:
                sys.exit("neural-tangents run failed:\n" + proc.stderr[-3000:])
            nt_times = json.loads(proc.stdout.strip().splitlines()[-1])
            net = infntk_net(kind, args.blocks)
            for (tag, A, Bm), c, r in zip(shapes, cases, nt_times):
                t, k = best_of(lambda: net.kernels(A, Bm), args.repeats, warmup=True)
                ref_n = np.load(c["out"] + "_nngp.npy")
                ref_t = np.load(c["out"] + "_ntk.npy")
                agree = max(np.max(np.abs(k.nngp - ref_n)) / np.max(np.abs(ref_n)),
                            np.max(np.abs(k.ntk - ref_t)) / np.max(np.abs(ref_t)))
                shape = f"{A.shape[0]} sym" if Bm is None else f"{A.shape[0]}x{Bm.shape[0]}"
                print(f"{kind:13s} {shape:>10s} {r['time']:8.3f} {t:9.3f} "
                      f"{r['time'] / t:6.1f}x {agree:9.1e}", flush=True)


if __name__ == "__main__":
    main()
