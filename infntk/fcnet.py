"""The public API for the infinite-width kernels of fully-connected networks: :class:`FCNet`.

A call reads top to bottom: validate the inputs (:mod:`infntk._validation`), build the
layer setup (:mod:`infntk._layers`) and the engine for the activation
(:func:`infntk._backends.select_engine`: closed form or Hermite series), and hand both to the
Gram driver (:mod:`infntk._gram`), which runs the per-row pass, the row blocks and the mirror.
"""
from __future__ import annotations

import math

import numpy as np

from . import _gram
from ._backends import select_engine
from ._gram import DEFAULT_BLOCK_ROWS, KernelDiag, Kernels
from ._layers import layer_coefficients, layer_setup
from ._validation import (check_depth, check_matrix, check_pair, check_parameterization,
                          check_positive_int, check_std, check_tol)
from .activations import get_activation

__all__ = ["FCNet", "Kernels", "KernelDiag", "layer_coefficients"]


class FCNet:
    """Infinite-width NNGP and NTK of a fully-connected network (docs/conventions.md, sections 1-2).

    Parameters
    ----------
    activation : str or callable
        A name from :data:`infntk.ACTIVATIONS` (parameters as keyword arguments) or a
        callable (kernels from the Hermite series).
    depth : int
        Number of hidden layers ``L >= 0``; ``0`` is the linear model.
    w_std, b_std : float
        Weight and bias standard deviations; ``b_std=None`` means no bias parameters
        (differs from ``0.0`` only in the standard parameterization's NTK).
    parameterization : {"ntk", "standard"}
    width : int, optional
        Finite hidden width; required by (and only used in) ``"standard"``.
    tol : float
        Activations without a closed form (tanh, sigmoid, softplus, silu, elu, callables):
        the truncation of the Hermite (Mehler) series is chosen so that the reported bound
        satisfies ``Kernels.error_bound <= tol * scale``, ``scale`` the largest diagonal entry
        of the NNGP and NTK (which bounds ``max |K|``); a ``RuntimeWarning`` says so when the
        order cap (400) cannot reach it. Ignored for closed forms.
    deriv : callable, optional
        For a callable activation only: its derivative.
    **activation_params
        E.g. ``alpha=0.1`` for ``leaky_relu``, ``n=2`` for ``arccos``.

    Notes
    -----
    Closed forms agree with a 50-digit evaluation of the same recursion to ``1e-12``
    relative to ``max |K|`` (docs/conventions.md, "Accuracy"), including nearly identical, nearly antipodal, parallel
    and zero rows. Cost: ``O(n1 n2 (d + L))``, memory: the outputs plus ``O((n1 + n2) L)``.

    Examples
    --------
    >>> import numpy as np, infntk
    >>> net = infntk.FCNet("erf", depth=3, w_std=1.5, b_std=0.1)
    >>> K = net.kernels(np.eye(3))
    >>> K.ntk.shape
    (3, 3)
    """

    def __init__(self, activation="relu", depth=1, w_std=1.0, b_std=0.0, parameterization="ntk",
                 width=None, tol=1e-10, deriv=None, **activation_params):
        self.activation = get_activation(activation, deriv=deriv, **activation_params)
        self.depth = check_depth(depth)
        self.w_std = check_std(w_std, "w_std")
        self.b_std = check_std(b_std, "b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization)
        if parameterization == "standard" and width is None:
            raise ValueError('width is required with parameterization="standard" '
                             "(the NTK depends on the finite hidden width there).")
        self.width = None if width is None else check_positive_int(width, "width")
        #: requested bound on the truncation error of Hermite-series activations
        self.tol = check_tol(tol)

    def __repr__(self):
        return (f"FCNet(activation={self.activation!r}, depth={self.depth}, w_std={self.w_std}, "
                f"b_std={self.b_std}, parameterization={self.parameterization!r}, "
                f"width={self.width})")

    # ------------------------------------------------------------------ internals
    def _engine(self, d):
        """The engine of this network for inputs of width ``d``."""
        setup = layer_setup(self.depth, d, self.w_std, self.b_std, self.parameterization,
                            self.width)
        return select_engine(self.activation, setup, self.tol)

    # ------------------------------------------------------------------ public API
    def kernels(self, X1, X2=None, *, out_nngp=None, out_ntk=None, block_rows=DEFAULT_BLOCK_ROWS):
        """NNGP and NTK Gram matrices.

        Parameters
        ----------
        X1 : (n1, d) array
        X2 : (n2, d) array, optional
            ``None`` means ``X1`` (the symmetric case: one triangle is computed).
        out_nngp, out_ntk : (n1, n2) float64 C-contiguous arrays, optional
            Written block by block (a ``np.memmap`` works for Gram matrices larger than RAM).
        block_rows : int
            Rows per block (work space ``block_rows * n2`` floats).

        Returns
        -------
        Kernels
            ``.nngp`` and ``.ntk``, each ``(n1, n2)``.
        """
        A, B, same = check_pair(X1, X2)
        return _gram.gram(self._engine(A.shape[1]), A, B, same, out_nngp, out_ntk, block_rows,
                          label=repr(self))

    def nngp(self, X1, X2=None):
        """The NNGP Gram matrix ``Sigma^{L+1}(X1, X2)``, ``(n1, n2)``."""
        return self.kernels(X1, X2).nngp

    def ntk(self, X1, X2=None):
        """The NTK Gram matrix ``Theta^{L+1}(X1, X2)``, ``(n1, n2)``."""
        return self.kernels(X1, X2).ntk

    def diag(self, X):
        """``k(x, x)`` for each row without the Gram matrix, by the exact diagonal formulas.

        Returns
        -------
        KernelDiag
            An ``(n,)`` array of the NTK diagonal, with ``.nngp`` and ``.ntk`` (both ``(n,)``).
        """
        X = check_matrix(X, "X")
        return _gram.diag(self._engine(X.shape[1]), X)

    def dot_product_fn(self, t):
        """NNGP and NTK as functions of ``t = <x, y>/d`` for inputs on the sphere ``|x|^2 = d``.

        Parameters
        ----------
        t : array_like, values in [-1, 1]

        Returns
        -------
        Kernels
            ``.nngp`` and ``.ntk`` with the shape of ``t``.
        """
        t = np.asarray(t, dtype=np.float64)
        if not np.isfinite(t).all() or (np.abs(t) > 1).any():
            raise ValueError("t must contain finite values in [-1, 1].")
        flat = t.ravel()
        x = np.array([[math.sqrt(2.0), 0.0]])
        Y = math.sqrt(2.0) * np.stack([flat, np.sqrt((1.0 - flat) * (1.0 + flat))], axis=1)
        if self.parameterization == "standard":
            raise ValueError("dot_product_fn: the standard parameterization's NTK depends on "
                             "the input dimension d through the first layer; use kernels().")
        k = self.kernels(x, Y)
        return Kernels(k.nngp[0].reshape(t.shape), k.ntk[0].reshape(t.shape))

