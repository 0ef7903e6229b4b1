"""Finite composed networks in pure NumPy: the network whose infinite-width limit is a Network.

:class:`FiniteNetwork` is the finite counterpart of :class:`infntk.Network`: the same layer
values (:mod:`infntk.layers`) with every hidden representation ``width`` units wide, iid
N(0, 1) parameters, a hand-written backward pass, and the empirical NNGP and NTK. As
``width`` grows its kernels approach ``Network(layers).kernels`` (docs/composed.md). Build it
with ``Network(layers).finite(width, seed)``.

=================  =======================================================================
layer              finite network (rows of ``H`` are samples, columns the units)
=================  =======================================================================
``Dense``          ``H <- s H W^T + beta b``; ``W`` of shape ``(n_out, n_in)``, ``n_in = d``
                   for the first Dense layer and ``width`` after, ``n_out = 1`` for the
                   readout (the last layer) and ``width`` otherwise. ``(s, beta)`` as in
                   :class:`infntk.empirical.MLP`: ``(w_std/sqrt(n_in), b_std)`` in ``"ntk"``,
                   ``(1, 1)`` in ``"standard"`` (where ``W ~ N(0, w_std^2/n_in)``,
                   ``b ~ N(0, b_std^2)``); no ``b`` when ``b_std is None``
``Activation``     ``H <- phi(H)`` elementwise (two in a row: applied in turn, i.e. composed)
``Residual``       ``H <- H + alpha * block(H)`` (the block maps ``width`` to ``width`` units)
``LayerNorm``      ``H <- H / r``, ``r = sqrt(mean_j H_j^2)`` per row over the units;
                   backward ``G <- (G - Y mean_j(Y_j G_j)) / r`` (its exact Jacobian); a
                   zero row stays zero and passes no gradient (the convention of the
                   infinite-width kernel, docs/composed.md)
=================  =======================================================================

The parameters are drawn in the order of the Dense layers (depth first through residual
blocks), ``W`` then ``b`` for each, so the homogeneous network
``[Dense, Activation] * L + [Dense]`` is exactly :class:`infntk.empirical.MLP` with the same
seed (same parameters, bitwise the same outputs and kernels).

The empirical NTK is computed by the layerwise factorization of the Jacobian Gram matrix
(Jacot et al. 2018), without forming the Jacobian:

.. math::

    \\hat\\Theta(x, y) = \\sum_{\\text{Dense } l} \\langle g^l(x), g^l(y)\\rangle
        \\left(s_l^2 \\langle a^l(x), a^l(y)\\rangle + \\beta_l^2\\right),

``a^l`` the input of Dense layer ``l`` and ``g^l = df/d(\\text{its output})`` the
backpropagated signal (through activations, LayerNorm Jacobians and both branches of every
residual block).

Example
-------
>>> import numpy as np
>>> import infntk
>>> net = infntk.Network([infntk.Dense(1.5, 0.1),
...                       infntk.Residual([infntk.Activation("erf"), infntk.Dense(1.0, 0.1)],
...                                       alpha=0.5),
...                       infntk.LayerNorm(), infntk.Activation("relu"), infntk.Dense(1.0)])
>>> fin = net.finite(64, seed=0)
>>> X = np.random.default_rng(0).standard_normal((4, 3))
>>> J = fin.jacobian(X)
>>> bool(np.allclose(fin.ntk(X), J @ J.T, rtol=1e-12, atol=1e-12))
True
"""
from __future__ import annotations

import copy as _copy
import math

import numpy as np

from ._validation import check_finite, check_matrix, check_pair, check_positive_int
from ._feature_ntk import (block_rows, blocked_ntk, check_dout, dense_features, dense_gradients,
                           dense_jacobian, feature_gram)
from .layers import Activation, Dense, LayerNorm, Residual

__all__ = ["FiniteNetwork"]

# operation codes of the forward plan
_DENSE, _ACT, _NORM, _PUSH, _POP = range(5)


class _DenseSpec:
    """A Dense layer of the finite network: sizes, forward scales, parameter positions."""

    __slots__ = ("layer", "n_in", "n_out", "has_bias", "s", "beta", "std", "iW", "ib")

    def __init__(self, layer, n_in, n_out):
        self.layer, self.n_in, self.n_out = layer, n_in, n_out
        self.has_bias = layer.b_std is not None
        self.std = layer.parameterization == "standard"
        if self.std:
            self.s, self.beta = 1.0, (1.0 if self.has_bias else 0.0)
        else:
            self.s = layer.w_std / math.sqrt(n_in)
            self.beta = layer.b_std if self.has_bias else 0.0
        self.iW = self.ib = None


def _check_layers(layers):
    """The layer tuple of a finite network (the structural rules only: these define the
    network at any width; the rules about Gaussian inputs concern the infinite-width kernel
    and are checked by :class:`infntk.Network`)."""
    if hasattr(layers, "layers") and not isinstance(layers, Residual):
        layers = layers.layers                    # an infntk.Network
    try:
        layers = tuple(layers)
    except TypeError:
        raise TypeError(f"layers must be an infntk.Network or a sequence of layers, got "
                        f"{type(layers).__name__}.") from None
    if not layers:
        raise ValueError("layers must be a non-empty sequence of layers.")
    for i, layer in enumerate(layers):
        if not isinstance(layer, (Dense, Activation, Residual, LayerNorm)):
            raise TypeError(f"layers[{i}] must be a layer (infntk.Dense, Activation, Residual, "
                            f"LayerNorm), got {type(layer).__name__}.")
    if not isinstance(layers[0], Dense) or not isinstance(layers[-1], Dense):
        raise ValueError("layers must start with a Dense layer (from the inputs to the hidden "
                         "width) and end with one (the scalar readout), got "
                         f"{type(layers[0]).__name__} first and {type(layers[-1]).__name__} "
                         "last.")
    return layers


def _plan(layers, d, width):
    """``(ops, denses)``: the flat forward plan and the Dense layers in parameter order."""
    ops, denses = [], []

    def walk(seq, top):
        for i, layer in enumerate(seq):
            if isinstance(layer, Dense):
                n_in = d if not denses else width
                n_out = 1 if (top and i == len(seq) - 1) else width
                ops.append((_DENSE, len(denses)))
                denses.append(_DenseSpec(layer, n_in, n_out))
            elif isinstance(layer, Activation):
                ops.append((_ACT, layer.fn))
            elif isinstance(layer, LayerNorm):
                ops.append((_NORM,))
            else:
                ops.append((_PUSH,))
                walk(layer.layers, False)
                ops.append((_POP, layer.alpha))
    walk(layers, True)
    return ops, denses


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"seed must be None, an int, a sequence of ints or a numpy Generator, "
                        f"got {seed!r} ({exc}).") from None


def _dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be np.float64 or np.float32, got {dtype!r}.") from None
    if dt not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise TypeError(f"dtype must be np.float64 or np.float32, got {dtype!r}.")
    return dt


class FiniteNetwork:
    """A finite network of composed layers (see the module table), scalar output.

    Parameters
    ----------
    layers : infntk.Network or sequence of layers
        Must start and end with a ``Dense`` layer. Usually built by
        ``Network(layers).finite(width, seed)``.
    width : int
        Units of every hidden representation, ``>= 1``.
    seed : None, int, sequence of int or numpy.random.Generator
        Seed of the initialization (``numpy.random.default_rng(seed)``).
    dtype : np.float64 (default) or np.float32
    input_dim : int, optional
        Input dimension ``d``; when omitted it is fixed by the first call (the parameters are
        then drawn from the same generator, so the network is the same).

    Attributes
    ----------
    layers : tuple of layers
    network : infntk.Network or None
        The network this one was built from (``Network.finite``), else None.
    width : int
    params : list of ndarray
        ``[W, b, W, b, ...]`` in the order of the Dense layers (depth first through residual
        blocks; no ``b`` for a layer with ``b_std=None``); ``W`` of shape ``(n_out, n_in)``.

    Notes
    -----
    The empirical kernels estimate ``Network(layers, width=width).kernels`` (the width
    matters only for the standard parameterization's NTK); their fluctuations are
    ``O(width^-1/2)``, the bias of their mean ``O(1/width)``.
    Cost: ``O(n D width^2)`` for ``D`` Dense layers (forward and backward), plus
    ``O(n1 n2 D width)`` for the kernel Grams.

    Examples
    --------
    >>> import numpy as np, infntk
    >>> net = infntk.Network([infntk.Dense(1.5, 0.1), infntk.Activation("relu"),
    ...                       infntk.Dense(1.5, 0.1)])
    >>> fin = net.finite(512, seed=1, input_dim=2)
    >>> [p.shape for p in fin.params]
    [(512, 2), (512,), (1, 512), (1,)]
    >>> fin.forward(np.ones((3, 2))).shape
    (3,)
    """

    def __init__(self, layers, width, seed=None, dtype=np.float64, input_dim=None):
        self.network = layers if hasattr(layers, "kernels") else None
        self.layers = _check_layers(layers)
        self.width = check_positive_int(width, "width")
        self.dtype = _dtype(dtype)
        self._rng = _rng(seed)
        self.input_dim = None
        self._params = None
        self._ops = self._denses = None
        if input_dim is not None:
            self._init_params(check_positive_int(input_dim, "input_dim"))

    def __repr__(self):
        return (f"FiniteNetwork([{', '.join(map(repr, self.layers))}], width={self.width}, "
                f"input_dim={self.input_dim})")

    # ------------------------------------------------------------------ parameters
    def _init_params(self, d):
        ops, denses = _plan(self.layers, d, self.width)
        params = []
        for spec in denses:
            W = self._rng.standard_normal((spec.n_out, spec.n_in), dtype=self.dtype)
            if spec.std:
                W *= self.dtype.type(spec.layer.w_std / math.sqrt(spec.n_in))
            spec.iW = len(params)
            params.append(W)
            if spec.has_bias:
                b = self._rng.standard_normal(spec.n_out, dtype=self.dtype)
                if spec.std:
                    b *= self.dtype.type(spec.layer.b_std)
                spec.ib = len(params)
                params.append(b)
        self.input_dim, self._ops, self._denses, self._params = d, ops, denses, params

    def _require_init(self, what):
        if self._params is None:
            raise RuntimeError(f"{what}: the input dimension is not fixed yet; pass input_dim= "
                               "to finite(...) or call forward/ntk on data first.")

    @property
    def num_params(self):
        """The number ``P`` of scalar parameters, ``sum n_out (n_in + [biases])``."""
        self._require_init("num_params")
        return int(sum(s.n_out * (s.n_in + s.has_bias) for s in self._denses))

    @property
    def params(self):
        """The parameter arrays (live references: modifying them modifies the network)."""
        self._require_init("params")
        return self._params

    def set_params(self, params):
        """Replace the parameters by copies of ``params`` (same shapes, cast to ``dtype``)."""
        self._require_init("set_params")
        if not isinstance(params, (list, tuple)):
            raise TypeError(f"params must be a list of arrays, got {type(params).__name__}.")
        if len(params) != len(self._params):
            raise ValueError(f"params must have {len(self._params)} arrays, got {len(params)}.")
        new = []
        for i, (p, ref) in enumerate(zip(params, self._params)):
            arr = np.array(p, dtype=self.dtype, copy=True)
            if arr.shape != ref.shape:
                raise ValueError(f"params[{i}] must have shape {ref.shape}, got {arr.shape}.")
            new.append(check_finite(arr, f"params[{i}]"))
        self._params = new

    def copy(self):
        """An independent copy (parameters and random generator copied; layers shared)."""
        other = _copy.copy(self)
        other._rng = _copy.deepcopy(self._rng)
        other._params = None if self._params is None else [p.copy() for p in self._params]
        return other

    def _dense(self, j):
        spec = self._denses[j]
        W = self._params[spec.iW]
        b = None if spec.ib is None else self._params[spec.ib]
        return W, b, spec.s, spec.beta

    # ------------------------------------------------------------------ forward / backward
    def _check_X(self, X, name="X"):
        X = check_matrix(X, name)
        if self._params is None:
            self._init_params(X.shape[1])
        elif X.shape[1] != self.input_dim:
            raise ValueError(f"{name} must have {self.input_dim} columns (the network's input "
                             f"dimension), got shape {X.shape}.")
        return X.astype(self.dtype, copy=False)

    def _forward_cache(self, X):
        """``(cache, out)``: per operation what the backward pass needs, and the output."""
        t = self.dtype.type
        h, stack, cache = X, [], [None] * len(self._ops)
        for k, op in enumerate(self._ops):
            kind = op[0]
            if kind == _DENSE:
                W, b, s, beta = self._dense(op[1])
                cache[k] = h
                h = h @ W.T
                if s != 1.0:
                    h *= t(s)
                if b is not None and beta != 0.0:
                    h += t(beta) * b
            elif kind == _ACT:
                cache[k] = h
                h = np.asarray(op[1].fn(h), dtype=self.dtype)
            elif kind == _NORM:
                r = np.sqrt(np.mean(h * h, axis=1, keepdims=True))
                pos = r > 0
                h = np.where(pos, h / np.where(pos, r, 1), 0).astype(self.dtype, copy=False)
                cache[k] = (h, r, pos)
            elif kind == _PUSH:
                stack.append(h)
            else:
                h = stack.pop() + t(op[1]) * h
        return cache, h

    def _backward(self, cache, top):
        """``G[j] = d(out)/d(output of Dense j)`` for every Dense layer, given ``top``."""
        t = self.dtype.type
        G = [None] * len(self._denses)
        g, stack = top, []
        for k in range(len(self._ops) - 1, -1, -1):
            op = self._ops[k]
            kind = op[0]
            if kind == _DENSE:
                G[op[1]] = g
                if op[1] == 0:
                    break
                W, _, s, _ = self._dense(op[1])
                g = g @ W
                if s != 1.0:
                    g *= t(s)
            elif kind == _ACT:
                g = g * np.asarray(op[1].deriv(cache[k]), dtype=self.dtype)
            elif kind == _NORM:
                y, r, pos = cache[k]
                g = np.where(pos, (g - y * np.mean(y * g, axis=1, keepdims=True))
                             / np.where(pos, r, 1), 0).astype(self.dtype, copy=False)
            elif kind == _POP:
                stack.append(g)
                g = t(op[1]) * g
            else:
                g = g + stack.pop()
        return G

    def forward(self, X):
        """The network outputs ``f(x_i)``.

        Parameters
        ----------
        X : array_like, shape (n, d)

        Returns
        -------
        ndarray, shape (n,)
        """
        X = self._check_X(X)
        return self._forward_cache(X)[1][:, 0].copy()

    __call__ = forward

    def _dense_inputs(self, cache):
        return [cache[k] for k, op in enumerate(self._ops) if op[0] == _DENSE]

    def gradient(self, X, dout):
        """Gradient of ``sum_i dout[i] f(x_i)`` with respect to every parameter (backprop).

        Parameters
        ----------
        X : array_like, shape (n, d)
        dout : array_like, shape (n,)

        Returns
        -------
        list of ndarray
            Same layout and shapes as :attr:`params`.
        """
        X = self._check_X(X)
        dout = check_dout(dout, X.shape[0])
        return dense_gradients(self._dense_terms(X, dout.astype(self.dtype)[:, None]),
                               self.dtype)

    def jacobian(self, X):
        """The Jacobian ``J[i, p] = df(x_i)/dtheta_p`` (small networks only: ``n x P`` memory).

        Parameters are flattened in the order of :attr:`params`, each row-major.

        Parameters
        ----------
        X : array_like, shape (n, d)

        Returns
        -------
        ndarray, shape (n, P)
        """
        X = self._check_X(X)
        return dense_jacobian(self._dense_terms(X, np.ones((X.shape[0], 1), dtype=self.dtype)),
                              self.dtype)

    # ------------------------------------------------------------------ kernels
    def _dense_terms(self, X, top):
        """``[(a, g, s, beta, has_bias)]`` per Dense layer for the rows of ``X`` and seed ``top``."""
        cache, _ = self._forward_cache(X)
        G = self._backward(cache, top)
        return [(a, g, spec.s, spec.beta, spec.has_bias)
                for spec, a, g in zip(self._denses, self._dense_inputs(cache), G)]

    def _features(self, X):
        """Per Dense layer: ``(s a, g)`` for the rows of ``X`` (already checked)."""
        return dense_features(self._dense_terms(X, np.ones((X.shape[0], 1), dtype=self.dtype)),
                              self.dtype)

    def _biases(self):
        return [spec.beta if spec.has_bias else 0.0 for spec in self._denses]

    def _gram_from_features(self, F1, F2):
        return feature_gram(F1, F2, self._biases(), self.dtype)

    def _check_pair(self, X1, X2):
        X1, X2, same = check_pair(X1, X2)
        X1 = self._check_X(X1, "X1")
        X2 = X1 if same else self._check_X(X2, "X2")
        return X1, X2, same

    def ntk(self, X1, X2=None, block_size=None):
        """The empirical NTK ``Theta-hat(x, y) = <df(x)/dtheta, df(y)/dtheta>``.

        By the layerwise factorization (module docstring), never forming the Jacobian, over
        row blocks as :meth:`infntk.empirical.MLP.ntk` (same blocks, so the homogeneous
        network gives the same floats).

        Parameters
        ----------
        X1 : array_like, shape (n1, d)
        X2 : array_like, shape (n2, d), optional
            ``None`` means ``X1`` (the result is then exactly symmetric).
        block_size : int, optional
            Rows per block (default: about 256 MB of features per block).

        Returns
        -------
        ndarray, shape (n1, n2), dtype of the network
        """
        X1, X2, same = self._check_pair(X1, X2)
        per_row = self.dtype.itemsize * sum(s.n_in + s.n_out for s in self._denses)
        return blocked_ntk(self._features, X1, X2, same, block_rows(block_size, per_row),
                           per_row, self._biases(), self.dtype)

    def nngp(self, X1, X2=None):
        """The empirical NNGP: ``w_std^2 <a(x), a(y)> / n_in + b_std^2`` of the readout.

        ``a`` is the readout's input (``n_in`` units) and ``w_std, b_std`` its settings
        (``b_std=None`` counts as 0), as :meth:`infntk.empirical.MLP.nngp`: the covariance of
        the output given the layers below; it estimates ``Network(layers).nngp``.

        Parameters
        ----------
        X1 : array_like, shape (n1, d)
        X2 : array_like, shape (n2, d), optional

        Returns
        -------
        ndarray, shape (n1, n2)
        """
        X1, X2, same = self._check_pair(X1, X2)
        a1 = self._dense_inputs(self._forward_cache(X1)[0])[-1]
        a2 = a1 if same else self._dense_inputs(self._forward_cache(X2)[0])[-1]
        spec = self._denses[-1]
        K = (a1 @ a2.T) * self.dtype.type(spec.layer.w_std ** 2 / spec.n_in)
        if spec.has_bias:
            K += self.dtype.type(spec.layer.b_std ** 2)
        return K
