"""Finite fully-connected networks in pure NumPy, and their empirical NNGP and NTK kernels.

:class:`MLP` is exactly the network of docs/conventions.md, section 1 (``L = depth`` hidden
layers of ``width`` units, scalar output, iid N(0, 1) parameters) with a hand-written backward
pass. Its kernels are the finite-width, random counterparts of :class:`infntk.FCNet`'s analytic
ones, which they approach as ``width`` grows (see :mod:`infntk.convergence`).

The empirical NTK is computed by the layerwise factorization of the Jacobian Gram matrix,

.. math::

    \\hat\\Theta(x, y) = \\sum_{l=1}^{L+1} \\langle g^l(x), g^l(y)\\rangle
        \\left(s_l^2 \\langle a^{l-1}(x), a^{l-1}(y)\\rangle + \\beta_l^2\\right),

where ``a^0 = x``, ``a^l = phi(h^l)``, ``g^l = df/dh^l`` is the backpropagated signal,
``s_l`` the forward scale of the weights (``w_std/sqrt(n_{l-1})`` in the ``"ntk"``
parameterization, 1 in ``"standard"``) and ``beta_l`` that of the biases (``b_std``, resp. 1;
no term without biases). The ``n x P`` Jacobian is never formed, and rows are processed in
blocks, so the cost is ``O(n L width^2)`` for the features plus ``O(n1 n2 L width)`` for the
Grams, with memory bounded by ``block_size``.

Example
-------
>>> import numpy as np
>>> from infntk.empirical import MLP
>>> X = np.random.default_rng(0).standard_normal((5, 3))
>>> mlp = MLP(256, depth=2, activation="relu", seed=0)
>>> K = mlp.ntk(X)
>>> J = mlp.jacobian(X)
>>> bool(np.allclose(K, J @ J.T, rtol=1e-12, atol=1e-12))
True
"""
from __future__ import annotations

import copy as _copy
import functools
import math
import numbers
from dataclasses import dataclass, fields, is_dataclass

import numpy as np

from ._validation import (check_depth, check_finite, check_matrix, check_pair,
                          check_parameterization, check_positive_int, check_real_dtype, check_std)
from ._feature_ntk import (block_rows, blocked_ntk, check_dout, dense_features, dense_gradients,
                           dense_jacobian, feature_gram)
from .activations import get_activation

__all__ = ["MLP", "LayerKernels"]



@dataclass
class LayerKernels:
    """Per-layer empirical kernels of an :class:`MLP`, keyed by the layer index ``l``.

    Each entry is an ``(n1, n2)`` array, to be compared with the analytic quantity of
    docs/conventions.md, section 2, named below (NTK parameterization; in ``"standard"`` the
    NNGP-side quantities are the same and ``theta`` estimates the standard-parameterization recursion at this width).

    Attributes
    ----------
    sigma : dict ``l -> array`` for ``l = 1 .. L+1``
        ``w_std^2 <a^{l-1}(x), a^{l-1}(y)> / n_{l-1} + b_std^2`` (``a^0 = x``): the covariance
        of ``h^l`` given the layers below. Estimates ``Sigma^l``; exact for ``l = 1``.
        ``sigma[L+1]`` is :meth:`MLP.nngp`.
    sigma_dot : dict ``l -> array`` for ``l = 2 .. L+1``
        ``w_std^2 <phi'(h^{l-1}(x)), phi'(h^{l-1}(y))> / n_{l-1}``. Estimates ``Sdot^l``.
    theta : dict ``l -> array`` for ``l = 1 .. L+1``
        The exact empirical NTK (gradient Gram with respect to the parameters of layers
        ``1 .. l``) of unit ``i`` of ``h^l``, averaged over the units ``i`` in ``units`` (see
        :meth:`MLP.layer_kernels`). Every unit's NTK estimates ``Theta^l``; ``theta[L+1]`` is
        :meth:`MLP.ntk` (the output is the only unit), ``theta[1] = sigma[1]`` in ``"ntk"``.
    contribution : dict ``l -> array`` for ``l = 1 .. L+1``
        The Gram of the output's gradients with respect to the parameters of layer ``l`` alone;
        they sum to :meth:`MLP.ntk`. In ``"ntk"`` it estimates
        ``Sigma^l prod_{k=l+1}^{L+1} Sdot^k``.
    """

    sigma: dict
    sigma_dot: dict
    theta: dict
    contribution: dict


def _is_int_seed(seed):
    """``None``, a non-negative integer or a non-empty sequence of them (not floats, not bools:
    ``default_rng`` would truncate or accept them silently)."""
    def ok(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0
    if seed is None or ok(seed):
        return True
    if isinstance(seed, np.random.SeedSequence):
        return True
    if isinstance(seed, (list, tuple, np.ndarray)):
        items = list(np.asarray(seed).ravel()) if isinstance(seed, np.ndarray) else list(seed)
        if isinstance(seed, np.ndarray) and seed.dtype.kind not in "iu":
            return False
        return bool(items) and all(ok(v) for v in items)
    return False


def _arrays(value):
    """Every ndarray inside ``value`` (arrays, lists/tuples/dicts of them, dataclasses)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _arrays(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v)
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            yield from _arrays(getattr(value, f.name))


def _checked(method):
    """Run ``method`` without floating-point warnings and refuse a non-finite result.

    Overflow raises ``OverflowError`` naming the network's settings, as :class:`infntk.FCNet`
    does; a NaN from finite values (an activation undefined somewhere) raises ``ValueError``.
    """
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out = method(self, *args, **kwargs)
        for arr in _arrays(out):
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                self._raise_nonfinite(f"{method.__name__}()", arr)
        return out
    return wrapper


class MLP:
    """A finite fully-connected network with scalar output (docs/conventions.md, section 1).

    Parameters
    ----------
    width : int
        Number of units ``m`` of every hidden layer, ``>= 1``.
    depth : int
        Number of hidden layers ``L >= 0``; ``depth=0`` is the linear model
        ``f = (w_std/sqrt(d)) W x + b_std b``.
    activation : str, callable or Activation
        Passed with ``activation_params`` to :func:`infntk.activations.get_activation`, the one
        registry of activations and their derivatives.
    w_std, b_std : float
        Weight and bias standard deviations. ``b_std=None``: no bias parameters at all
        (``b_std=0.0`` keeps zero-initialized biases, which count in the standard NTK).
    parameterization : {"ntk", "standard"}
        ``"ntk"``: parameters ``~ N(0, 1)``, scales ``w_std/sqrt(fan_in)`` and ``b_std`` in the
        forward pass. ``"standard"``: ``W ~ N(0, w_std^2/fan_in)``, ``b ~ N(0, b_std^2)``,
        ``h = W a + b``. Same function at initialization, different gradients.
    seed : None, int, sequence of int or numpy.random.Generator
        Seed of the initialization (``numpy.random.default_rng(seed)``).
    dtype : numpy float dtype
        ``np.float64`` (default) or ``np.float32``; parameters, activations and kernels use it.
    input_dim : int, optional
        Input dimension ``d``. When omitted it is fixed by the first call (``forward``, ``ntk``,
        ...); the parameters are drawn then, from the same generator, so the network is the
        same as with ``input_dim`` given. Give it to use :attr:`num_params`, :attr:`params`
        and :attr:`layer_sizes` before the first call.
    **activation_params
        Parameters of a named activation (e.g. ``alpha=0.1`` for ``leaky_relu``).

    Attributes
    ----------
    params : list of ndarray
        ``[W1, b1, W2, b2, ..., W_{L+1}, b_{L+1}]`` (no ``b`` arrays when ``b_std is None``),
        ``W_l`` of shape ``(n_l, n_{l-1})``, ``b_l`` of shape ``(n_l,)``, ``n_0 = d``,
        ``n_{L+1} = 1``.

    Notes
    -----
    Forward pass, rows of ``X`` as points: ``H^l = s_l A^{l-1} W_l^T + beta_l b_l``,
    ``A^l = phi(H^l)``, ``f = H^{L+1}[:, 0]``; ``(s_l, beta_l) = (w_std/sqrt(n_{l-1}), b_std)``
    in ``"ntk"`` and ``(1, 1)`` in ``"standard"``.

    Examples
    --------
    >>> import numpy as np
    >>> mlp = MLP(512, depth=1, activation="erf", w_std=1.5, b_std=0.1, seed=1, input_dim=2)
    >>> mlp.forward(np.ones((3, 2))).shape
    (3,)
    >>> [p.shape for p in mlp.params]
    [(512, 2), (512,), (1, 512), (1,)]
    """

    def __init__(self, width, depth, activation, w_std=1.0, b_std=0.0, parameterization="ntk",
                 seed=None, dtype=np.float64, input_dim=None, **activation_params):
        self.width = check_positive_int(width, "width")
        self.depth = check_depth(depth)
        self.activation = get_activation(activation, **activation_params)
        self.w_std = check_std(w_std, "w_std")
        self.b_std = check_std(b_std, "b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be np.float64 or np.float32, got {dtype!r}.") from None
        if self.dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise TypeError(f"dtype must be np.float64 or np.float32, got {dtype!r}.")
        if isinstance(seed, np.random.Generator):
            self._rng = seed
        elif not _is_int_seed(seed):
            raise TypeError(f"seed must be None, a non-negative int, a sequence of them or a "
                            f"numpy Generator, got {seed!r}.")
        else:
            try:
                self._rng = np.random.default_rng(seed)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"seed must be None, an int, a sequence of ints or a "
                                f"numpy Generator, got {seed!r} ({exc}).") from None
        self.input_dim = None
        self._params = None
        if input_dim is not None:
            self._init_params(check_positive_int(input_dim, "input_dim"))

    # ------------------------------------------------------------------ parameters
    @property
    def has_bias(self):
        """False when ``b_std is None`` (no bias parameters)."""
        return self.b_std is not None

    @property
    def layer_sizes(self):
        """``[n_0 = d, n_1, ..., n_L, n_{L+1} = 1]`` (needs the input dimension)."""
        self._require_init("layer_sizes")
        return [self.input_dim] + [self.width] * self.depth + [1]

    @property
    def num_params(self):
        """The number ``P`` of scalar parameters, from the layer sizes (no parameters drawn).

        ``P = sum_l n_l (n_{l-1} + [biases])`` over ``l = 1 .. L+1``. It depends on the input
        dimension ``d``: known before the first call when ``input_dim=`` was given to the
        constructor; otherwise this raises a ``RuntimeError`` saying so (the parameters are
        only drawn once ``d`` is known).

        Examples
        --------
        >>> MLP(8, depth=1, activation="relu", input_dim=3).num_params   # 8*3 + 8 + 8 + 1
        41
        """
        if self.input_dim is None:
            raise RuntimeError("num_params: the number of parameters depends on the input "
                               "dimension d, which is not known before the first call; pass "
                               "input_dim=d to MLP(...) (or call forward/ntk on data first).")
        sizes = [self.input_dim] + [self.width] * self.depth + [1]
        bias = 1 if self.has_bias else 0
        return int(sum(n_out * (n_in + bias) for n_in, n_out in zip(sizes[:-1], sizes[1:])))

    def _init_params(self, d):
        self.input_dim = d
        sizes = [d] + [self.width] * self.depth + [1]
        std = self.parameterization == "standard"
        params = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            W = self._rng.standard_normal((n_out, n_in), dtype=self.dtype)
            if std:
                W *= self.dtype.type(self.w_std / math.sqrt(n_in))
            params.append(W)
            if self.has_bias:
                b = self._rng.standard_normal(n_out, dtype=self.dtype)
                if std:
                    b *= self.dtype.type(self.b_std)
                params.append(b)
        self._params = params

    def _require_init(self, what):
        if self._params is None:
            raise RuntimeError(f"{what}: the input dimension is not fixed yet; pass input_dim= "
                               "to MLP(...) or call forward/ntk on data first.")

    @property
    def params(self):
        """The parameter arrays (live references: modifying them modifies the network)."""
        self._require_init("params")
        return self._params

    def set_params(self, params):
        """Replace the parameters by copies of ``params`` (same shapes, cast to ``dtype``).

        Parameters
        ----------
        params : list of array_like
            Same length and shapes as :attr:`params`. If the input dimension is not fixed yet,
            it is taken from ``params[0].shape[1]``.
        """
        if not isinstance(params, (list, tuple)):
            raise TypeError(f"params must be a list of arrays, got {type(params).__name__}.")
        if self._params is None:
            if not params or np.ndim(params[0]) != 2:
                raise ValueError("params: the first entry must be the 2-D weight matrix W1.")
            expected_d = np.shape(params[0])[1]
        else:
            expected_d = self.input_dim
        sizes = [expected_d] + [self.width] * self.depth + [1]
        shapes = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            shapes.append((n_out, n_in))
            if self.has_bias:
                shapes.append((n_out,))
        if len(params) != len(shapes):
            raise ValueError(f"params must have {len(shapes)} arrays, got {len(params)}.")
        new = []
        for i, (p, shape) in enumerate(zip(params, shapes)):
            arr = np.array(check_real_dtype(p, f"params[{i}]"), dtype=self.dtype, copy=True)
            if arr.shape != shape:
                raise ValueError(f"params[{i}] must have shape {shape}, got {arr.shape}.")
            new.append(check_finite(arr, f"params[{i}]"))
        self.input_dim = expected_d
        self._params = new

    def copy(self):
        """An independent copy (parameters copied; the random generator is copied too)."""
        other = _copy.copy(self)
        other._rng = _copy.deepcopy(self._rng)
        other._params = None if self._params is None else [p.copy() for p in self._params]
        return other

    def _layers(self):
        """``[(W, b or None, s, beta), ...]`` for layers 1 .. L+1."""
        step = 2 if self.has_bias else 1
        sizes = self.layer_sizes
        out = []
        for l in range(self.depth + 1):
            W = self._params[step * l]
            b = self._params[step * l + 1] if self.has_bias else None
            if self.parameterization == "ntk":
                s, beta = self.w_std / math.sqrt(sizes[l]), (self.b_std if self.has_bias else 0.0)
            else:
                s, beta = 1.0, (1.0 if self.has_bias else 0.0)
            out.append((W, b, s, beta))
        return out

    # ------------------------------------------------------------------ forward / backward
    def _check_X(self, X, name="X"):
        X = check_matrix(X, name)
        if self._params is None:
            self._init_params(X.shape[1])
        elif X.shape[1] != self.input_dim:
            raise ValueError(f"{name} must have {self.input_dim} columns (the network's input "
                             f"dimension), got shape {X.shape}.")
        return X.astype(self.dtype, copy=False)

    def _raise_nonfinite(self, where, arr):
        if np.isinf(arr).any():
            raise OverflowError(
                f"{where}: the finite network overflows {self.dtype.name} (width={self.width}, "
                f"depth={self.depth}, w_std={self.w_std}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}); reduce w_std, depth or the "
                "input scale.")
        raise ValueError(f"{where}: NaN in the finite network ({self.activation!r}, "
                         f"w_std={self.w_std}, depth={self.depth}): the activation or its "
                         "derivative is not finite on these pre-activations.")

    def _phi(self, H):
        return np.asarray(self.activation.fn(H), dtype=self.dtype)

    def _dphi(self, H):
        return np.asarray(self.activation.deriv(H), dtype=self.dtype)

    def _forward_cache(self, X):
        """Pre-activations ``H^1..H^{L+1}`` and inputs ``A^0..A^L`` of every layer."""
        A = [X]
        Hs = []
        layers = self._layers()
        for l, (W, b, s, beta) in enumerate(layers):
            H = A[-1] @ W.T
            if s != 1.0:
                H *= self.dtype.type(s)
            if b is not None and beta != 0.0:
                H += self.dtype.type(beta) * b
            if not np.isfinite(H).all():
                self._raise_nonfinite(f"layer {l + 1} pre-activations", H)
            Hs.append(H)
            if l < self.depth:
                A.append(self._phi(H))
                if not np.isfinite(A[-1]).all():
                    self._raise_nonfinite(f"layer {l + 1} activations", A[-1])
        return A, Hs

    @_checked
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
        return self._forward_cache(X)[1][-1][:, 0].copy()

    __call__ = forward

    def _backward(self, Hs, top):
        """Backpropagated signals ``G^l = d(out)/dH^l`` for l = 1 .. L+1 given ``G^{L+1} = top``.

        ``top`` has shape ``(n, 1)``, or ``(n, k, 1)`` for ``k`` outputs at once.
        """
        layers = self._layers()
        G = [None] * (self.depth + 1)
        G[-1] = top
        for l in range(self.depth, 0, -1):
            W, _, s, _ = layers[l]
            g = G[l] @ W
            if s != 1.0:
                g *= self.dtype.type(s)
            g *= self._dphi(Hs[l - 1]) if g.ndim == 2 else self._dphi(Hs[l - 1])[:, None, :]
            G[l - 1] = g
        return G

    @_checked
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

    @_checked
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
        """``[(a, g, s, beta, has_bias)]`` per layer for the rows of ``X`` and output seed ``top``."""
        A, Hs = self._forward_cache(X)
        G = self._backward(Hs, top)
        return [(a, g, s, beta, b is not None)
                for (W, b, s, beta), a, g in zip(self._layers(), A, G)]

    def _features(self, X):
        """Per layer l = 1..L+1: (s_l A^{l-1}, G^l) for the rows of X (already checked)."""
        return dense_features(self._dense_terms(X, np.ones((X.shape[0], 1), dtype=self.dtype)),
                              self.dtype)

    def _gram_from_features(self, F1, F2):
        return feature_gram(F1, F2, [beta for (_, _, _, beta) in self._layers()], self.dtype)

    def _feature_bytes_per_row(self):
        return self.dtype.itemsize * (2 * self.depth * self.width + self.input_dim + 1)

    def _default_block(self, block_size):
        return block_rows(block_size, self._feature_bytes_per_row())

    @_checked
    def ntk(self, X1, X2=None, block_size=None):
        """The empirical NTK ``Theta-hat(x, y) = <df(x)/dtheta, df(y)/dtheta>``.

        Computed by the layerwise factorization (module docstring), never forming the
        Jacobian, over row blocks of ``block_size`` (default: about 256 MB of features per
        block). Estimates ``Theta^{L+1}`` of docs/conventions.md, section 2 (``"ntk"``), or the
        standard-parameterization NTK at this width.

        Parameters
        ----------
        X1 : array_like, shape (n1, d)
        X2 : array_like, shape (n2, d), optional
            ``None`` means ``X1`` (the result is then exactly symmetric).
        block_size : int, optional
            Rows per block.

        Returns
        -------
        ndarray, shape (n1, n2), dtype of the network

        Notes
        -----
        Cost ``O((n1 + n2) L width^2 + n1 n2 (L + 1) width)``. Memory: the output plus the
        features (``2 L width + d`` numbers per row) of one block of ``X1`` and of all of ``X2``
        if those total under 2 GB; otherwise the blocks of ``X2`` are recomputed for every
        block of ``X1`` (time grows, memory stays at two blocks).
        """
        X1, X2, same = self._check_pair(X1, X2)
        return blocked_ntk(self._features, X1, X2, same, self._default_block(block_size),
                           self._feature_bytes_per_row(),
                           [beta for (_, _, _, beta) in self._layers()], self.dtype)

    def _check_pair(self, X1, X2):
        X1, X2, same = check_pair(X1, X2)
        X1 = self._check_X(X1, "X1")
        X2 = X1 if same else self._check_X(X2, "X2")
        return X1, X2, same

    @_checked
    def nngp(self, X1, X2=None):
        """The empirical NNGP: ``w_std^2 <phi(h^L(x)), phi(h^L(y))> / width + b_std^2``.

        The covariance of the output given the last hidden layer; estimates ``Sigma^{L+1}``
        of docs/conventions.md, section 2, in both parameterizations (``b_std=None`` counts as
        0). For ``depth=0`` it is exactly ``Sigma^1 = w_std^2 <x, y>/d + b_std^2``.

        Parameters
        ----------
        X1 : array_like, shape (n1, d)
        X2 : array_like, shape (n2, d), optional

        Returns
        -------
        ndarray, shape (n1, n2)
        """
        X1, X2, same = self._check_pair(X1, X2)
        a1 = self._forward_cache(X1)[0][-1]
        a2 = a1 if same else self._forward_cache(X2)[0][-1]
        return self._sigma_hat(a1, a2, a1.shape[1])

    def _sigma_hat(self, a1, a2, n_in):
        K = (a1 @ a2.T) * self.dtype.type(self.w_std ** 2 / n_in)
        if self.has_bias:
            K += self.dtype.type(self.b_std ** 2)
        return K

    @_checked
    def layer_kernels(self, X1, X2=None, units=1):
        """Empirical per-layer kernels, to compare layer by layer with the analytic recursion.

        Parameters
        ----------
        X1 : array_like, shape (n1, d)
        X2 : array_like, shape (n2, d), optional
        units : int
            ``theta[l]`` for hidden layers averages the exact NTKs of the first ``units`` units
            of ``h^l`` (capped at ``width``): one backward pass per unit. Averaging over more
            units lowers the variance, not the bias.

        Returns
        -------
        LayerKernels
            ``sigma``, ``sigma_dot``, ``theta``, ``contribution`` dicts keyed by the layer
            ``l`` (see :class:`LayerKernels` for what each estimates).

        Notes
        -----
        Unit ``i`` of ``h^l`` is the output of a ``depth = l - 1`` network whose output
        weights are row ``i`` of ``W_l``, so its exact NTK estimates ``Theta^l``, with
        fluctuations of the same order as the full network's; in ``"standard"`` it estimates
        ``FCNet(depth=l-1, parameterization="standard", width=width).ntk``.
        For small ``n`` only (no blocking).
        """
        X1, X2, same = self._check_pair(X1, X2)
        units = check_positive_int(units, "units")
        k = min(units, self.width)
        L = self.depth
        A1, H1 = self._forward_cache(X1)
        A2, H2 = (A1, H1) if same else self._forward_cache(X2)
        sizes = self.layer_sizes
        layers = self._layers()
        betas = [beta for (_, _, _, beta) in layers]
        scales = [s for (_, _, s, _) in layers]
        sigma, sigma_dot, theta, contribution = {}, {}, {}, {}
        # Grams of the (scaled) inputs of each layer: s_l^2 <a, a'> + beta_l^2
        in_gram = []
        for l in range(1, L + 2):
            a1, a2 = A1[l - 1], A2[l - 1]
            sigma[l] = self._sigma_hat(a1, a2, sizes[l - 1])
            g = (a1 @ a2.T) * self.dtype.type(scales[l - 1] ** 2)
            if self.has_bias:
                g += self.dtype.type(betas[l - 1] ** 2)
            in_gram.append(g)
            if l >= 2:
                d1 = self._dphi(H1[l - 2])
                d2 = d1 if same else self._dphi(H2[l - 2])
                sigma_dot[l] = (d1 @ d2.T) * self.dtype.type(self.w_std ** 2 / sizes[l - 1])
        # contributions of each layer's parameters to the output's NTK
        n1, n2 = X1.shape[0], X2.shape[0]
        G1 = self._backward(H1, np.ones((n1, 1), dtype=self.dtype))
        G2 = G1 if same else self._backward(H2, np.ones((n2, 1), dtype=self.dtype))
        for l in range(1, L + 2):
            contribution[l] = (G1[l - 1] @ G2[l - 1].T) * in_gram[l - 1]
        theta[L + 1] = sum(contribution[l] for l in range(1, L + 2))
        # per-unit NTKs of the hidden layers: backprop from units 0..k-1 of h^l
        for l in range(1, L + 1):
            sub1 = self._backward_partial(H1, l, k)
            sub2 = sub1 if same else self._backward_partial(H2, l, k)
            T = np.zeros((n1, n2), dtype=self.dtype)
            for j in range(1, l + 1):
                g1, g2 = sub1[j - 1], sub2[j - 1]          # (n, k, n_j)
                gg = np.einsum("akm,bkm->ab", g1, g2) / self.dtype.type(k)
                T += gg * in_gram[j - 1]
            theta[l] = T
        return LayerKernels(sigma=sigma, sigma_dot=sigma_dot, theta=theta,
                            contribution=contribution)

    def _backward_partial(self, Hs, l, k):
        """``d h^l_i / d H^j`` for units i < k of layer l, j = 1..l: list of (n, k, n_j)."""
        layers = self._layers()
        n = Hs[0].shape[0]
        top = np.zeros((n, k, self.width), dtype=self.dtype)
        top[:, np.arange(k), np.arange(k)] = 1.0
        G = [None] * l
        G[l - 1] = top
        for j in range(l - 1, 0, -1):
            W, _, s, _ = layers[j]
            g = G[j] @ W
            if s != 1.0:
                g *= self.dtype.type(s)
            g *= self._dphi(Hs[j - 1])[:, None, :]
            G[j - 1] = g
        return G

    def __repr__(self):
        act = self.activation.name
        return (f"MLP(width={self.width}, depth={self.depth}, activation={act!r}, "
                f"w_std={self.w_std}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}, input_dim={self.input_dim})")
