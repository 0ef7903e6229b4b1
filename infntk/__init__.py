"""infntk: exact, fast, checkable kernels of infinitely wide fully-connected networks.

>>> import numpy as np, infntk
>>> net = infntk.FCNet("relu", depth=2, w_std=2 ** 0.5, b_std=None)
>>> X = np.array([[1.0, 0.0], [0.0, 2.0]])
>>> k = net.kernels(X)
>>> bool(np.allclose(np.diag(k.nngp), (X ** 2).sum(1)))   # relu, w_std^2 = 2: q is preserved
True

Every public submodule is reachable as an attribute and imported on first use:
``infntk.fcnet``, ``infntk.activations``, ``infntk.hermite``, ``infntk.quadrature``,
``infntk.spectrum``, ``infntk.empirical``, ``infntk.convergence``, ``infntk.bounds``,
``infntk.dynamics``, ``infntk.training``, ``infntk.after_kernel``, ``infntk.layers``,
``infntk.network``, ``infntk.conv``, ``infntk.finite_width``, ``infntk.learning_curves``,
``infntk.memorization``, ``infntk.sensitivity``, ``infntk.data``, ``infntk.sklearn`` (needs
scikit-learn), ``infntk.distributed`` (needs dask) and ``infntk.cli``. Conventions:
docs/conventions.md.
"""
from __future__ import annotations

import importlib

from . import _numba_config  # noqa: F401  (Numba cache dir and threading layer, first)
from .activations import ACTIVATIONS, get_activation

__version__ = "0.1.0"

_LAZY_SUBMODULES = {"activations", "after_kernel", "bounds", "cli", "conv", "convergence", "data",
                    "distributed", "dynamics", "empirical", "fcnet", "finite", "finite_width",
                    "hermite", "layer_spec", "layers", "learning_curves", "memorization",
                    "network", "quadrature", "sensitivity", "sklearn", "spectral_bias", "spectrum",
                    "training"}
#: public names -> the module that defines them. ``infntk.Activation`` is the activation
#: *layer* (:class:`infntk.layers.Activation`); the registry record is
#: :class:`infntk.activations.Activation`.
_LAZY_NAMES = {"FCNet": "fcnet", "Kernels": "fcnet", "Network": "network", "Dense": "layers",
               "Activation": "layers", "Residual": "layers", "LayerNorm": "layers",
               "Conv": "conv", "AvgPool": "conv", "Flatten": "conv", "GlobalAvgPool": "conv",
               "warmup": "_warmup"}

__all__ = ["FCNet", "Kernels", "Network", "Dense", "Activation", "Residual", "LayerNorm",
           "Conv", "AvgPool", "Flatten", "GlobalAvgPool", "warmup",
           "ACTIVATIONS", "get_activation", "__version__"]


def __getattr__(name):
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'infntk' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LAZY_SUBMODULES | set(_LAZY_NAMES))
