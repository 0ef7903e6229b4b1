"""Composed networks: :class:`Network`, the infinite-width kernels of a sequence of layers.

>>> import numpy as np, infntk
>>> net = infntk.Network([infntk.Dense(1.5, 0.1), infntk.Activation("relu"),
...                       infntk.Dense(1.5, 0.1), infntk.Activation("erf"),
...                       infntk.Dense(1.5, 0.1)])
>>> k = net.kernels(np.eye(3))
>>> k.ntk.shape
(3, 3)

A network of the homogeneous shape ``[Dense, Activation] * L + [Dense]`` (all Dense layers and
all activations equal) runs on the same engines as :class:`infntk.FCNet` and agrees with it
bitwise; every other network is compiled into a list of operations for the composed engine
(:mod:`infntk._backends.composed`). Derivations: docs/composed.md.
"""
from __future__ import annotations

import numpy as np

from . import _gram
from ._backends import select_engine
from ._backends.composed import (ACT, DENSE, INPUT_DENSE, NORM, POP, PUSH, SERIES,
                                 ComposedEngine, Op)
from ._gram import DEFAULT_BLOCK_ROWS
from ._layers import layer_setup
from ._validation import check_matrix, check_pair, check_positive_int, check_tol
from .finite import FiniteNetwork
from .layers import Activation, Dense, LayerNorm, Residual, compose_activations

_CONV_LAYERS = ("Conv", "AvgPool", "Flatten", "GlobalAvgPool")


def _is_conv_layer(layer):
    return type(layer).__module__ == "infntk.conv" and type(layer).__name__ in _CONV_LAYERS

__all__ = ["Network"]


class Network:
    """Infinite-width NNGP and NTK of a composed network of layers.

    Parameters
    ----------
    layers : sequence of Dense, Activation, Residual, LayerNorm
        Must start with a ``Dense`` layer (the inputs are not Gaussian) and end with one
        (the scalar readout). Two activations in a row act as their composition.
    width : int, optional
        The finite hidden width, required when a ``Dense`` layer other than the first uses
        the ``"standard"`` parameterization (its NTK depends on the fan-in there).
    tol : float
        Activations without a closed form (tanh, callables, two activations in a row): the
        series orders are chosen so that ``Kernels.error_bound <= tol * scale`` (``scale`` the
        largest diagonal entry of both kernels); a ``RuntimeWarning`` says when they cannot.

    Convolutional networks (``infntk.Conv``, ``AvgPool``, ``Flatten``, ``GlobalAvgPool``, then
    ``Dense``/``Activation`` layers) take images ``(n, H, W, C)`` and run the convolutional
    engine (:func:`infntk.conv.conv_kernels`; docs/conv.md).

    Notes
    -----
    Closed forms meet the accuracy contract of :class:`infntk.FCNet` (docs/conventions.md).
    Activations without a closed form (tanh, callables, compositions of two activations) run
    the Mehler series; ``Kernels.error_bound`` then bounds ``|computed - exact|`` for every
    entry, propagated through every layer kind (docs/composed.md, "Certified bound").
    """

    def __init__(self, layers, width=None, tol=1e-10):
        layers = tuple(layers)
        if not layers:
            raise ValueError("layers must be a non-empty sequence of layers.")
        self._conv = any(_is_conv_layer(l) for l in layers)
        if self._conv:                      # images (n, H, W, C): the convolutional engine
            from . import conv
            conv.kernel_regime(layers)      # validates the layer list
            self.width = None if width is None else check_positive_int(width, "width")
            if conv.needs_width(layers) and self.width is None:
                raise ValueError('width is required: a layer after the first Conv uses '
                                 'parameterization="standard" (the hidden width).')
            self.layers, self.tol = layers, check_tol(tol)
            self._homogeneous = None
            # closed forms only: the Gram driver, block by block (conv.ConvEngine); a series
            # activation: the whole matrix with its certified bound (conv_kernels_bounded)
            self._conv_series = conv._has_series(layers)
            return
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Dense, Activation, Residual, LayerNorm)):
                raise TypeError(f"layers[{i}] must be a layer (infntk.Dense, Activation, "
                                f"Residual, LayerNorm), got {type(layer).__name__}.")
        if not isinstance(layers[0], Dense):
            raise ValueError("layers[0] must be a Dense layer: the kernels are defined for "
                             "Gaussian pre-activations, which the first Dense layer makes; got "
                             f"{type(layers[0]).__name__}.")
        if not isinstance(layers[-1], Dense):
            raise ValueError("the last layer must be a Dense layer (the scalar readout), got "
                             f"{type(layers[-1]).__name__}.")
        self.layers = layers
        self.width = None if width is None else check_positive_int(width, "width")
        self.tol = check_tol(tol)
        self._homogeneous = _homogeneous_shape(layers)
        if self._needs_width() and self.width is None:
            raise ValueError('width is required: a Dense layer after the first uses '
                             'parameterization="standard", whose NTK depends on its fan-in '
                             "(the hidden width).")
        _compile(layers, 1, self.width)     # validate the composition rules now

    def __repr__(self):
        w = "" if self.width is None else f", width={self.width}"
        return f"Network([{', '.join(map(repr, self.layers))}]{w})"

    # ------------------------------------------------------------------ internals
    def _needs_width(self):
        return any(isinstance(l, Dense) and l.parameterization == "standard"
                   for l in _flatten(self.layers)[1:])

    @property
    def blockwise(self):
        """Whether the Gram matrices are made block by block by the Gram driver (memory-mapped
        outputs written in place, resumable command-line writes): every network except a
        convolutional one with a series activation (whose certified bound is planned over the
        whole matrix)."""
        return not (self._conv and self._conv_series)

    def _check_inputs(self, X1, X2=None, names=("X1", "X2")):
        """``(A, B, same)``: validated rows, or images for a convolutional network."""
        if self._conv:
            from .conv import check_image_pair
            return check_image_pair(X1, X2)
        return check_pair(X1, X2, *names)

    def _gram_engine(self, A):
        """The Gram driver's engine for validated inputs ``A`` (rows or images)."""
        if self._conv:
            from .conv import ConvEngine
            return ConvEngine(self.layers, A.shape[1:], self.width)
        return self._engine(A.shape[1])

    def _engine(self, d):
        if self._homogeneous is not None:
            dense, act, depth = self._homogeneous
            setup = layer_setup(depth, d, dense.w_std, dense.b_std, dense.parameterization,
                                self.width)
            return select_engine(act.fn, setup, self.tol)
        return ComposedEngine(_compile(self.layers, d, self.width), d, self.tol)

    # ------------------------------------------------------------------ public API
    def kernels(self, X1, X2=None, *, out_nngp=None, out_ntk=None, block_rows=DEFAULT_BLOCK_ROWS):
        """NNGP and NTK Gram matrices.

        Parameters
        ----------
        X1 : (n1, d) array (images ``(n1, H, W, C)`` for convolutional networks)
        X2 : (n2, d) array, optional
            ``None`` means ``X1`` (the symmetric case: one triangle is computed).
        out_nngp, out_ntk : (n1, n2) float64 C-contiguous arrays, optional
            Written block by block (a ``np.memmap`` works for Gram matrices larger than RAM).
        block_rows : int
            Rows per block (work space ``block_rows * n2`` floats).

        Returns
        -------
        Kernels
            ``.nngp`` and ``.ntk``, each ``(n1, n2)``; ``.error_bound`` for series layers.
        """
        if self._conv and not self._conv_series:
            A, B, same = self._check_inputs(X1, X2)
            return _gram.gram(self._gram_engine(A), A, B, same, out_nngp, out_ntk, block_rows,
                              label=repr(self))
        if self._conv:
            from . import conv
            nngp, ntk, bound, orders = conv.conv_kernels_bounded(self.layers, X1, X2,
                                                                 width=self.width, tol=self.tol)
            if out_nngp is None and out_ntk is None:
                return _gram.Kernels(nngp, ntk, bound, orders)
            out = _copy_into(nngp, ntk, out_nngp, out_ntk)
            out.error_bound, out.orders = bound, orders
            return out
        A, B, same = check_pair(X1, X2)
        return _gram.gram(self._engine(A.shape[1]), A, B, same, out_nngp, out_ntk, block_rows,
                          label=repr(self))

    def nngp(self, X1, X2=None):
        """The NNGP Gram matrix, ``(n1, n2)``."""
        return self.kernels(X1, X2).nngp

    def ntk(self, X1, X2=None):
        """The NTK Gram matrix, ``(n1, n2)``."""
        return self.kernels(X1, X2).ntk

    def diag(self, X):
        """``k(x, x)`` for each row without the Gram matrix, by the exact diagonal recursion.

        Returns
        -------
        KernelDiag
            An ``(n,)`` array of the NTK diagonal, with ``.nngp`` and ``.ntk`` (both ``(n,)``).
        """
        if self._conv:
            from . import conv
            return _gram.KernelDiag(*conv.conv_diag(self.layers, X, width=self.width,
                                                    tol=self.tol))
        X = check_matrix(X, "X")
        return _gram.diag(self._engine(X.shape[1]), X)

    def finite(self, width, seed=0, dtype=np.float64, input_dim=None):
        """The finite network of the same layers, ``width`` units per hidden representation.

        Returns an :class:`infntk.finite.FiniteNetwork` (NumPy: ``forward``, ``gradient``,
        ``jacobian``, the empirical ``ntk`` and ``nngp``), whose kernels approach this
        network's as ``width`` grows; see :mod:`infntk.finite` for the layer-by-layer
        definition. For a homogeneous network it is :class:`infntk.empirical.MLP` with the
        same seed.

        >>> import infntk
        >>> net = infntk.Network([infntk.Dense(1.5, 0.1), infntk.Activation("erf"),
        ...                       infntk.Dense(1.5, 0.1)])
        >>> net.finite(128, seed=0, input_dim=3).num_params     # 128*3 + 128 + 128 + 1
        641
        """
        return FiniteNetwork(self, width, seed=seed, dtype=dtype, input_dim=input_dim)


def _copy_into(nngp, ntk, out_nngp, out_ntk):
    outs = []
    for arr, out, name in ((nngp, out_nngp, "out_nngp"), (ntk, out_ntk, "out_ntk")):
        out = _gram.check_out(out, arr.shape, name)
        out[...] = arr
        outs.append(out)
    return _gram.Kernels(*outs)


def _flatten(layers):
    out = []
    for layer in layers:
        if isinstance(layer, Residual):
            out.extend(_flatten(layer.layers))
        else:
            out.append(layer)
    return out


def _homogeneous_shape(layers):
    """``(dense, activation, depth)`` if ``layers == [dense, act] * depth + [dense]``."""
    if len(layers) % 2 == 0:
        return None
    dense = layers[0]
    act = layers[1] if len(layers) > 1 else None
    for i, layer in enumerate(layers):
        want = dense if i % 2 == 0 else act
        if type(layer) is not type(want) or layer != want:
            return None
    if act is None:
        act = Activation("identity")
    return dense, act, (len(layers) - 1) // 2


def _dense_op(layer, first, d, width):
    w2 = layer.w_std ** 2
    b2 = 0.0 if layer.b_std is None else layer.b_std ** 2
    if layer.parameterization == "ntk":
        cK, cb = layer.w_std * layer.w_std, b2
    else:
        cK = float(d) if first else float(width)
        cb = 0.0 if layer.b_std is None else 1.0
    return Op(INPUT_DENSE if first else DENSE, w2=w2, b2=b2, cK=cK, cb=cb)


def _compile(layers, d, width):
    """The list of :class:`Op` of a validated layer sequence (see the module notes)."""
    ops = []
    # 'gauss': the representation is a Gaussian process (after Dense, residual, LayerNorm
    # of one); 'act': the last layer was an activation (a following one composes with it)
    state = {"gauss": False, "act": None}

    def emit_act(fn):
        if fn.family is None:            # Hermite series, with the certified bound
            ops.append(Op(SERIES, act=fn))
            return
        ops.append(Op(ACT, family=int(fn.family.code), p0=float(fn.family.p0),
                      p1=float(fn.family.p1)))

    def walk(seq):
        for layer in seq:
            if isinstance(layer, Dense):
                ops.append(_dense_op(layer, not ops, d, width))
                state.update(gauss=True, act=None)
            elif isinstance(layer, Activation):
                if state["act"] is not None:       # phi2(phi1(u)): one activation of u
                    ops.pop()
                    fn = compose_activations(state["act"], layer.fn)
                    emit_act(fn)
                    state["act"] = fn
                elif state["gauss"]:
                    emit_act(layer.fn)
                    state.update(gauss=False, act=layer.fn)
                else:
                    raise ValueError(
                        "an Activation needs a Gaussian input (after a Dense layer, a residual "
                        "block of one, or a LayerNorm of one); insert a Dense layer before it.")
            elif isinstance(layer, LayerNorm):
                ops.append(Op(NORM))
                state["act"] = None
            else:
                gauss_in = state["gauss"]
                ops.append(Op(PUSH))
                walk(layer.layers)
                ops.append(Op(POP, a2=layer.alpha * layer.alpha))
                state.update(gauss=gauss_in, act=None)
    walk(layers)
    return ops
