"""Write tests/data/nt_conv_references.npz: neural-tangents' kernels of small convolutional nets.

Runs ONLY under a Python environment with neural-tangents installed (0.6.5 with jax 0.4.23,
CPU, float64 enabled below); infntk is not imported. From the repository root::

    /path/to/nt-venv/bin/python scripts/make_nt_references.py     # about two minutes on one core

Contents
--------
Two input sets, float64, stored exactly: ``X1`` (4 images 5 x 5, 2 channels) and ``X2``
(3 images 5 x 5, 2 channels), plus a non-square set ``Y1`` (3 images 6 x 4, 3 channels).
For every architecture ``a`` (index in ``names``):

* ``nngp_a``/``ntk_a``: the symmetric Gram of the first set (``X1`` or ``Y1``), (n, n);
* ``nngp_cross_a``/``ntk_cross_a``: the cross Gram, ``X1`` vs ``X2`` (square inputs only;
  for ``Y1`` it is ``Y1[:2]`` vs ``Y1[1:]``).

``layers`` is a JSON list (one entry per architecture) of ``{"name", "inputs", "layers",
"width"}``, each layer a dict: ``{"layer": "conv", "filter", "padding", "w_std", "b_std",
"parameterization"}``, ``{"layer": "activation", "name", "params"}``, ``{"layer": "avgpool",
"window"}``, ``{"layer": "flatten"}``, ``{"layer": "gap"}``, ``{"layer": "dense", "w_std",
"b_std", "parameterization"}``; ``width`` (``None`` for 1) is the channels of every Conv and
the units of every Dense, which the standard parameterization's NTK depends on.

neural-tangents layers used: ``stax.Conv(width, (q, q), padding=P, W_std, b_std,
parameterization)`` (fan-in q^2 C, shared bias), ``stax.AvgPool((w, w), strides=(w, w),
padding="VALID")``, ``stax.Flatten()``, ``stax.GlobalAvgPool()``, ``stax.Dense(width, W_std,
b_std, parameterization)`` and the activations ``Relu, LeakyRelu(alpha), Abs, Erf,
Gelu(approximate=False), Sin, Sign``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "data",
                   "nt_conv_references.npz")

S2 = math.sqrt(2.0)


def conv(q, padding, w, b, parameterization="ntk"):
    return {"layer": "conv", "filter": q, "padding": padding, "w_std": w, "b_std": b,
            "parameterization": parameterization}


def act(name, **params):
    return {"layer": "activation", "name": name, "params": params}


def dense(w, b, parameterization="ntk"):
    return {"layer": "dense", "w_std": w, "b_std": b, "parameterization": parameterization}


FLAT = {"layer": "flatten"}
GAP = {"layer": "gap"}


def pool(w):
    return {"layer": "avgpool", "window": w}


ARCHS = [
    ("relu_same_flatten", "X", [conv(3, "same", 1.5, 0.1), act("relu")] * 3
     + [FLAT, dense(1.5, 0.1)]),
    ("relu_same_gap", "X", [conv(3, "same", S2, 0.0), act("relu")] * 3 + [GAP, dense(S2, 0.0)]),
    ("relu_same_gap_bias", "X", [conv(3, "same", 1.5, 0.1), act("relu")] * 3
     + [GAP, dense(1.5, 0.1)]),
    ("erf_valid_flatten", "X", [conv(3, "valid", 1.5, 0.1), act("erf")] * 2
     + [FLAT, dense(1.5, 0.1)]),
    ("relu_circular_gap_head", "X", [conv(3, "circular", 1.5, 0.1), act("relu")] * 2
     + [GAP, dense(1.5, 0.1), act("relu"), dense(1.5, 0.1)]),
    ("erf_avgpool_flatten", "X", [conv(3, "same", 1.5, 0.1), act("erf"), pool(2),
                                  conv(3, "same", 1.5, 0.1), act("erf"), FLAT, dense(1.5, 0.1)]),
    ("relu_avgpool_gap", "X", [conv(3, "same", S2, 0.0), act("relu"), conv(3, "same", S2, 0.0),
                               act("relu"), pool(2), conv(3, "same", S2, 0.0), act("relu"), GAP,
                               dense(S2, 0.0)]),
    ("filter2_same_circular", "X", [conv(2, "same", 1.5, 0.1), act("relu"),
                                    conv(2, "circular", 1.5, 0.1), act("erf"), GAP,
                                    dense(1.5, 0.1)]),
    ("filter5_circular_gelu", "X", [conv(5, "circular", 1.5, 0.1), act("gelu"),
                                    conv(1, "same", 1.5, 0.1), act("gelu"), FLAT,
                                    dense(1.5, 0.1)]),
    ("mixed_activations", "X", [conv(3, "same", 1.5, 0.1), act("leaky_relu", alpha=0.1),
                                conv(3, "same", 1.5, 0.1), act("abs"), conv(3, "same", 1.2, 0.2),
                                act("sin"), conv(3, "same", 1.0, 0.1), act("sign"), FLAT,
                                dense(1.5, 0.1)]),
    ("linear_flatten", "X", [conv(3, "same", 1.5, 0.1), FLAT, dense(1.5, 0.1)]),
    ("linear_gap", "X", [conv(3, "same", 1.5, 0.1), GAP, dense(1.5, 0.1)]),
    ("relu_deep_gap", "X", [conv(3, "same", S2, 0.05), act("relu")] * 6 + [GAP, dense(S2, 0.0)]),
    ("nonsquare_relu_same_gap", "Y", [conv(3, "same", 1.5, 0.1), act("relu")] * 2
     + [GAP, dense(1.5, 0.1)]),
    ("nonsquare_erf_valid_flatten", "Y", [conv(3, "valid", 1.5, 0.1), act("erf"),
                                          conv(2, "circular", 1.5, 0.1), act("erf"), FLAT,
                                          dense(1.5, 0.1)]),
    ("nonsquare_avgpool_gap", "Y", [conv(3, "circular", 1.5, 0.0), act("relu"), pool(2),
                                    conv(3, "circular", 1.5, 0.0), act("relu"), GAP,
                                    dense(1.5, 0.0)]),
]
STD = "standard"
# the standard parameterization (architecture, inputs, layers, hidden width)
ARCHS_STANDARD = [
    ("standard_relu_same_gap", "X", [conv(3, "same", 1.5, 0.1, STD), act("relu")] * 3
     + [GAP, dense(1.5, 0.1, STD)], 7),
    ("standard_flatten_head_no_bias", "X", [conv(3, "valid", 1.3, 0.2, STD), act("erf"),
                                            conv(2, "circular", 1.2, None, STD), act("relu"),
                                            FLAT, dense(1.5, 0.1, STD), act("relu"),
                                            dense(1.0, None, STD)], 5),
    ("standard_mixed_avgpool", "Y", [conv(3, "same", 1.5, 0.1, STD), act("relu"), pool(2),
                                     conv(3, "same", 1.5, 0.1), act("gelu"), GAP,
                                     dense(1.5, 0.1, STD)], 3),
    ("standard_first_conv_only", "X", [conv(3, "circular", S2, 0.0, STD), act("relu"),
                                       conv(3, "circular", S2, 0.0), act("relu"), GAP,
                                       dense(S2, 0.0)], None),
    ("standard_deep_gap_no_bias", "X", [conv(3, "same", S2, None, STD), act("relu")] * 5
     + [GAP, dense(S2, None, STD)], 4),
]


def to_stax(layers, width=None):
    from neural_tangents import stax
    acts = {"relu": lambda p: stax.Relu(), "erf": lambda p: stax.Erf(),
            "leaky_relu": lambda p: stax.LeakyRelu(p["alpha"]), "abs": lambda p: stax.Abs(),
            "gelu": lambda p: stax.Gelu(approximate=False), "sin": lambda p: stax.Sin(),
            "sign": lambda p: stax.Sign()}
    out = []
    n = 1 if width is None else width
    for L in layers:
        kind = L["layer"]
        if kind == "conv":
            q = L["filter"]
            out.append(stax.Conv(n, (q, q), padding=L["padding"].upper(), W_std=L["w_std"],
                                 b_std=L["b_std"],
                                 parameterization=L.get("parameterization", "ntk")))
        elif kind == "activation":
            out.append(acts[L["name"]](L["params"]))
        elif kind == "avgpool":
            w = L["window"]
            out.append(stax.AvgPool((w, w), strides=(w, w), padding="VALID"))
        elif kind == "flatten":
            out.append(stax.Flatten())
        elif kind == "gap":
            out.append(stax.GlobalAvgPool())
        elif kind == "dense":
            out.append(stax.Dense(n, W_std=L["w_std"], b_std=L["b_std"],
                                  parameterization=L.get("parameterization", "ntk")))
        else:
            raise ValueError(kind)
    return stax.serial(*out)


def main():
    try:
        import jax
    except ImportError:
        sys.exit("run this script with the Python of an environment that has neural-tangents")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    rng = np.random.default_rng(20190426)
    X1 = rng.standard_normal((4, 5, 5, 2))
    X2 = rng.standard_normal((3, 5, 5, 2))
    Y1 = rng.standard_normal((3, 6, 4, 3))
    data = {"X1": X1, "X2": X2, "Y1": Y1}
    meta = []
    t0 = time.time()
    archs = [a + (None,) for a in ARCHS] + ARCHS_STANDARD
    for a, (name, inputs, layers, width) in enumerate(archs):
        _, _, kernel_fn = to_stax(layers, width)
        if inputs == "X":
            A, B, C = X1, X1, X2
        else:
            A, B, C = Y1, Y1[:2], Y1[1:]
        k = kernel_fn(jnp.asarray(A), None, ("nngp", "ntk"))
        data[f"nngp_{a}"] = np.asarray(k.nngp, dtype=np.float64)
        data[f"ntk_{a}"] = np.asarray(k.ntk, dtype=np.float64)
        kx = kernel_fn(jnp.asarray(B), jnp.asarray(C), ("nngp", "ntk"))
        data[f"nngp_cross_{a}"] = np.asarray(kx.nngp, dtype=np.float64)
        data[f"ntk_cross_{a}"] = np.asarray(kx.ntk, dtype=np.float64)
        for arr in (k.nngp, k.ntk, kx.nngp, kx.ntk):
            if arr.dtype != jnp.float64:
                raise RuntimeError(f"{name}: neural-tangents returned {arr.dtype}, not float64")
        meta.append({"name": name, "inputs": inputs, "layers": layers, "width": width})
        print(f"{name:32s} max|ntk| = {np.abs(data[f'ntk_{a}']).max():.4g}")
    data["layers"] = np.array(json.dumps(meta))
    import neural_tangents
    data["versions"] = np.array(json.dumps({"neural_tangents": neural_tangents.__version__,
                                            "jax": jax.__version__}))
    tmp = OUT + ".tmp.npz"
    with open(tmp, "wb") as fh:
        np.savez(fh, **data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, OUT)
    print(f"wrote {os.path.normpath(OUT)} ({len(archs)} architectures, {time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
