"""Layer setup: the per-layer coefficients of the kernel recursion, defined once.

For Dense layers ``l = 0..L`` (``L = depth`` hidden layers, the readout is ``l = L``), with
``K_l`` the input kernel of Dense layer ``l`` (``K_0 = <x, y>/d``)::

    Sigma^{l+1} = w2 K_l + b2
    Theta^{l+1} = cK[l] K_l + w2 kd_l Theta^l + cb[l]          (Theta^0 = 0)

``"ntk"`` parameterization: ``cK = w_std^2``, ``cb = b_std^2``. ``"standard"``
(Sohl-Dickstein et al. 2020): ``cK = n_in`` (``d`` for the first Dense layer, ``width``
after), ``cb = 1`` if the layers have biases (``b_std`` not None) else 0. See
docs/conventions.md, section 1.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["LayerSetup", "layer_setup", "layer_coefficients"]


class LayerSetup(NamedTuple):
    """What every engine needs of a homogeneous fully-connected network at input width ``d``."""

    depth: int
    d: int
    w2: float
    b2: float
    cK: np.ndarray   # (depth + 1,)
    cb: np.ndarray   # (depth + 1,)


def layer_coefficients(depth, d, w_std, b_std, parameterization, width):
    """Coefficients ``cK[l], cb[l]`` of ``Theta^{l+1} = cK K_l + w^2 kd Theta^l + cb``."""
    w2 = w_std * w_std
    b2 = 0.0 if b_std is None else b_std * b_std
    if parameterization == "ntk":
        cK = np.full(depth + 1, w2)
        cb = np.full(depth + 1, b2)
    else:
        cK = np.full(depth + 1, float(width))
        cK[0] = float(d)
        cb = np.full(depth + 1, 0.0 if b_std is None else 1.0)
    return cK, cb


def layer_setup(depth, d, w_std, b_std, parameterization, width):
    """The :class:`LayerSetup` of a validated network description at input width ``d``."""
    for name, value in (("w_std", w_std), ("b_std", b_std)):
        if value is not None and not np.isfinite(float(value) * float(value)):
            raise OverflowError(f"{name}={value!r}: its square overflows float64; the kernels "
                                f"scale like {name}^2 per layer, use a smaller {name}.")
    cK, cb = layer_coefficients(depth, d, w_std, b_std, parameterization, width)
    w2 = w_std ** 2
    b2 = 0.0 if b_std is None else b_std ** 2
    return LayerSetup(int(depth), int(d), float(w2), float(b2),
                      np.ascontiguousarray(cK, dtype=np.float64),
                      np.ascontiguousarray(cb, dtype=np.float64))
