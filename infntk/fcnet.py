"""The public API for the infinite-width kernels of fully-connected networks: :class:`FCNet`.

Validates once, then dispatches to the compiled engine (:mod:`infntk._engine`) for
activations with a closed-form dual, or to the Hermite-series engine for the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _engine
from ._validation import check_depth, check_matrix, check_pair, check_positive_int, check_std
from .activations import get_activation

__all__ = ["FCNet", "Kernels", "KernelDiag", "layer_coefficients"]

_PARAMETERIZATIONS = ("ntk", "standard")
_BLOCK_ROWS = 256


@dataclass
class Kernels:
    """NNGP and NTK Gram matrices of one network, ``(n1, n2)`` float64 each.

    ``error_bound`` is ``None`` for closed forms (accurate to rounding, see SPEC 6); for
    Hermite-series activations it is one absolute bound on ``|computed - exact|`` covering
    every entry of both matrices, and ``orders`` gives the series truncation order used at
    each layer. Unpacks as ``nngp, ntk = net.kernels(X)``.
    """

    nngp: np.ndarray
    ntk: np.ndarray
    error_bound: float | None = None
    orders: tuple | None = None

    def __iter__(self):
        return iter((self.nngp, self.ntk))


class KernelDiag(np.ndarray):
    """The NTK diagonal ``Theta(x, x)`` as an array, with ``.nngp`` and ``.ntk`` attributes."""

    def __new__(cls, nngp, ntk):
        obj = np.asarray(ntk, dtype=np.float64).view(cls)
        obj.nngp = np.asarray(nngp, dtype=np.float64)
        obj.ntk = np.asarray(ntk, dtype=np.float64)
        return obj

    def __array_finalize__(self, obj):
        if obj is None:
            return
        self.nngp = getattr(obj, "nngp", None)
        self.ntk = getattr(obj, "ntk", None)


def layer_coefficients(depth, d, w_std, b_std, parameterization, width):
    """Coefficients ``cK[l], cb[l]`` of ``Theta^{l+1} = cK K_l + w^2 kd Theta^l + cb``.

    ``"ntk"``: ``cK = w_std^2``, ``cb = b_std^2``. ``"standard"`` (Sohl-Dickstein et al. 2020):
    ``cK = n_in`` (``d`` for the first Dense layer, ``width`` after), ``cb = 1`` if the layers
    have biases (``b_std`` not None) else 0.
    """
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


class FCNet:
    """Infinite-width NNGP and NTK of a fully-connected network (SPEC sections 1-2).

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
    relative to ``max |K|`` (SPEC 6), including nearly identical, nearly antipodal, parallel
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
        if parameterization not in _PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {_PARAMETERIZATIONS}, "
                             f"got {parameterization!r}.")
        self.parameterization = parameterization
        if parameterization == "standard":
            if width is None:
                raise ValueError('width is required with parameterization="standard" '
                                 "(the NTK depends on the finite hidden width there).")
            width = check_positive_int(width, "width")
        elif width is not None:
            width = check_positive_int(width, "width")
        self.width = width
        tol = float(tol)
        if not (0.0 < tol < 1.0):
            raise ValueError(f"tol must be in (0, 1), got {tol!r}.")
        #: requested bound on the truncation error of Hermite-series activations
        self.tol = tol

    def __repr__(self):
        return (f"FCNet(activation={self.activation!r}, depth={self.depth}, w_std={self.w_std}, "
                f"b_std={self.b_std}, parameterization={self.parameterization!r}, "
                f"width={self.width})")

    # ------------------------------------------------------------------ internals
    def _setup(self, d):
        family, p0, p1 = self.activation.dual_params
        cK, cb = layer_coefficients(self.depth, d, self.w_std, self.b_std,
                                    self.parameterization, self.width)
        w2 = self.w_std ** 2
        b2 = 0.0 if self.b_std is None else self.b_std ** 2
        return int(family), float(p0), float(p1), w2, b2, cK, cb

    def _rows(self, X, setup):
        family, p0, p1, w2, b2, cK, cb = setup
        nsq = np.einsum("ij,ij->i", X, X)
        q, sk, ntk = _engine.row_statistics(X, nsq, family, p0, p1, self.depth, w2, b2, cK, cb)
        if not (np.isfinite(q).all() and np.isfinite(ntk).all()):
            bad = int(np.argmax(~np.isfinite(q).all(axis=1) | ~np.isfinite(ntk)))
            raise OverflowError(
                f"the kernel overflows float64 (row {bad}: layer variances "
                f"{q[bad, :].tolist()[:5]}...); reduce depth, w_std or the input scale.")
        return nsq, q, sk, ntk

    def _check_out(self, out, shape, name):
        if out is None:
            return np.empty(shape, dtype=np.float64)
        if not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != shape:
            raise ValueError(f"{name} must be a float64 array of shape {shape}, got "
                             f"{getattr(out, 'dtype', type(out).__name__)} "
                             f"{getattr(out, 'shape', '')}.")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"{name} must be C-contiguous and writeable.")
        return out

    # ------------------------------------------------------------------ public API
    def kernels(self, X1, X2=None, *, out_nngp=None, out_ntk=None, block_rows=_BLOCK_ROWS):
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
        block_rows = check_positive_int(block_rows, "block_rows")
        n1, n2 = A.shape[0], B.shape[0]
        out_nngp = self._check_out(out_nngp, (n1, n2), "out_nngp")
        out_ntk = self._check_out(out_ntk, (n1, n2), "out_ntk")
        if self.activation.closed_form is None:
            from . import _series_engine
            return _series_engine.series_kernels(self, A, B, same, out_nngp, out_ntk, block_rows)
        setup = self._setup(A.shape[1])
        family, p0, p1, w2, b2, cK, cb = setup
        nsq1, q1, sk1, _ = self._rows(A, setup)
        if same:
            nsq2, q2, sk2 = nsq1, q1, sk1
        else:
            nsq2, q2, sk2, _ = self._rows(B, setup)
        rq1 = np.sqrt(q1)
        q2T = np.ascontiguousarray(q2.T)
        rq2T = np.sqrt(q2T)
        sk2T = np.ascontiguousarray(sk2.T)
        for r0 in range(0, n1, block_rows):
            r1 = min(r0 + block_rows, n1)
            cols = r1 if same else n2
            G = A[r0:r1] @ B[:cols].T
            nb = out_nngp[r0:r1]
            tb = out_ntk[r0:r1]
            _engine.gram_block(A, B, G, nsq1, nsq2, q1, q2T, rq1, rq2T, sk1, sk2T, r0, same,
                               family, p0, p1, self.depth, w2, b2, cK, cb, nb, tb)
        if same:
            _mirror_lower_to_upper(out_nngp, block_rows)
            _mirror_lower_to_upper(out_ntk, block_rows)
        return Kernels(out_nngp, out_ntk)

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
        if self.activation.closed_form is None:
            from . import _series_engine
            return _series_engine.series_diag(self, X)
        setup = self._setup(X.shape[1])
        _, q, _, ntk = self._rows(X, setup)
        return KernelDiag(q[:, -1].copy(), ntk)

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


def _mirror_lower_to_upper(M, block_rows):
    """Copy the strict lower triangle of a square matrix onto the upper one, by blocks."""
    n = M.shape[0]
    for r0 in range(0, n, block_rows):
        r1 = min(r0 + block_rows, n)
        # rows r0:r1, columns > row: from column block r0:r1 of the rows below
        for i in range(r0, r1):
            M[i, i + 1:r1] = M[i + 1:r1, i]
        if r1 < n:
            M[r0:r1, r1:] = M[r1:, r0:r1].T
