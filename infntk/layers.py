"""Layers as values: one description for the infinite-width kernels and the finite network.

A network is a sequence of layer values; :class:`infntk.Network` turns it into kernels
(infinite width) and, through ``Network.finite(width, seed)``, into a finite NumPy network of
the same layers. The values here only describe and validate; they compute nothing.

=================  =======================================================================
layer              meaning (per sample, hidden representation ``h``)
=================  =======================================================================
``Dense``          ``h <- (w_std / sqrt(n_in)) W h + b_std b`` (``"ntk"``), or the same
                   forward distribution with the scale in the initialization
                   (``"standard"``); ``W, b`` iid N(0, 1); ``b_std=None``: no bias parameters
``Activation``     ``h <- phi(h)`` elementwise; any registered name (with its parameters) or
                   a callable with ``deriv=``; two in a row compose into one activation
``Residual``       ``h <- h + alpha * block(h)``; the block must end with a ``Dense`` layer
``LayerNorm``      ``h <- h / sqrt(mean_j h_j^2)`` over the hidden units (no centring)
=================  =======================================================================

Conventions (kernels, parameterizations, degenerate rows): docs/conventions.md; the
composed-network recursions: docs/composed.md.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from . import activations as _act
from ._validation import check_parameterization, check_std

__all__ = ["Dense", "Activation", "Residual", "LayerNorm", "Layer", "compose_activations"]


@dataclass(frozen=True)
class Dense:
    """A fully-connected layer (see the module table).

    Parameters
    ----------
    w_std : float, >= 0
    b_std : float >= 0 or None
        ``None``: the layer has no bias parameters (differs from ``0.0`` only in the
        standard parameterization's NTK).
    parameterization : {"ntk", "standard"}
    """

    w_std: float = 1.0
    b_std: float | None = 0.0
    parameterization: str = "ntk"

    def __post_init__(self):
        object.__setattr__(self, "w_std", check_std(self.w_std, "Dense: w_std"))
        object.__setattr__(self, "b_std", check_std(self.b_std, "Dense: b_std", allow_none=True))
        check_parameterization(self.parameterization, "Dense: parameterization")

    def __repr__(self):
        p = "" if self.parameterization == "ntk" else f", parameterization={self.parameterization!r}"
        return f"Dense({self.w_std:g}, {self.b_std if self.b_std is None else format(self.b_std, 'g')}{p})"


class Activation:
    """An elementwise activation layer.

    Parameters
    ----------
    activation : str, callable or infntk.activations.Activation
        A registered name (see :data:`infntk.ACTIVATIONS`) or a callable.
    deriv : callable, optional
        For a callable: its derivative.
    **params
        The activation's parameters, e.g. ``alpha=0.1`` for ``leaky_relu``.
    """

    __slots__ = ("fn",)

    def __init__(self, activation, deriv=None, **params):
        object.__setattr__(self, "fn", _act.get_activation(activation, deriv=deriv, **params))

    def __setattr__(self, name, value):
        raise AttributeError("Activation layers are immutable.")

    def __copy__(self):          # immutable: a copy is the layer itself
        return self

    def __deepcopy__(self, memo):
        return self

    def __eq__(self, other):
        return isinstance(other, Activation) and _same_activation(self.fn, other.fn)

    def __hash__(self):
        return hash((self.fn.name, tuple(sorted((k, repr(v)) for k, v in self.fn.params.items()))))

    def __repr__(self):
        ps = ", ".join(f"{k}={v!r}" for k, v in self.fn.params.items() if k != "callable")
        return f"Activation({self.fn.name!r}{', ' + ps if ps else ''})"


@dataclass(frozen=True)
class Residual:
    """``h + alpha * block(h)`` (neural-tangents' ``FanOut``, block, ``FanInSum``).

    The block's output must come from a ``Dense`` layer (fresh zero-mean weights), so that it
    is uncorrelated with ``h`` and the kernels add: ``K = K_h + alpha^2 K_block``.
    """

    layers: tuple
    alpha: float = 1.0

    def __post_init__(self):
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("Residual: layers must be a non-empty sequence of layers.")
        for i, layer in enumerate(layers):
            if not isinstance(layer, _LAYER_TYPES):
                raise TypeError(f"Residual: layers[{i}] must be a layer (Dense, Activation, "
                                f"Residual, LayerNorm), got {type(layer).__name__}.")
        if not isinstance(layers[-1], Dense):
            raise ValueError("Residual: the block must end with a Dense layer (its output is then "
                             "uncorrelated with the skip connection); got "
                             f"{type(layers[-1]).__name__} last.")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real) \
                or not math.isfinite(self.alpha):
            raise TypeError(f"Residual: alpha must be a finite real number, got {self.alpha!r}.")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "alpha", float(self.alpha))


@dataclass(frozen=True)
class LayerNorm:
    """Per-sample normalisation over the hidden units, ``h / sqrt(mean_j h_j^2)``.

    At infinite width the normaliser is deterministic, so the kernels become
    ``K_ab / sqrt(K_aa K_bb)`` and ``Theta_ab / sqrt(K_aa K_bb)`` (as in neural-tangents).
    No centring and no learned scale.
    """


_LAYER_TYPES = (Dense, Activation, Residual, LayerNorm)
Layer = Dense | Activation | Residual | LayerNorm


def _same_activation(a, b):
    """Same registry activation: same name and parameters (a callable: the same object)."""
    return a is b or (a.name == b.name and a.family == b.family and a.params == b.params)


def _preimages(f, level, lo=-60.0, hi=60.0, n=24001):
    """Points ``x`` in ``[lo, hi]`` with ``f(x) = level`` (sign changes on a grid, refined)."""
    x = np.linspace(lo, hi, n)
    with np.errstate(all="ignore"):
        g = np.asarray(f(x), dtype=float) - level
    out = []
    exact = x[g == 0.0]
    out.extend(exact.tolist())
    s = np.sign(g)
    idx = np.flatnonzero(s[:-1] * s[1:] < 0)
    for i in idx:
        out.append(optimize.brentq(lambda t: float(f(np.array([t]))[0]) - level, x[i], x[i + 1],
                                   xtol=1e-15, rtol=4 * np.finfo(float).eps))
    return out


def compose_activations(inner, outer):
    """The activation ``outer(inner(x))`` of a Gaussian ``x``, as one registry activation.

    Two activations in a row act on one Gaussian pre-activation, so their kernels are those of
    the composition (which in general has no closed form: the Hermite series is used).
    Derivative by the chain rule; kinks: those of ``inner`` and the preimages under ``inner``
    of the kinks of ``outer`` (found on ``[-60, 60]``).
    """
    f1, d1, f2, d2 = inner.fn, inner.deriv, outer.fn, outer.deriv

    def fn(x):
        return np.asarray(f2(np.asarray(f1(x), dtype=float)), dtype=float)

    def deriv(x):
        x = np.asarray(x, dtype=float)
        return np.asarray(d2(np.asarray(f1(x), dtype=float)), dtype=float) * \
            np.asarray(d1(x), dtype=float)

    kinks = set(float(k) for k in inner.kinks)
    for k in outer.kinks:
        kinks.update(float(t) for t in _preimages(f1, k))
    mp_fn = mp_deriv = None
    if inner.mp_fn is not None and outer.mp_fn is not None:
        m1, m2, md1, md2 = inner.mp_fn, outer.mp_fn, inner.mp_deriv, outer.mp_deriv

        def mp_fn(x):
            return m2(m1(x))

        def mp_deriv(x):
            return md2(m1(x)) * md1(x)
    return _act.Activation(name=f"{outer.name}({inner.name})", fn=fn, deriv=deriv,
                           mp_fn=mp_fn, mp_deriv=mp_deriv, kinks=tuple(sorted(kinks)),
                           params={"inner": inner, "outer": outer})
