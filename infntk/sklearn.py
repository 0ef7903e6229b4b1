"""scikit-learn kernels: the infinite-width NTK and NNGP as ``gaussian_process`` kernels.

:class:`NTK` and :class:`NNGP` follow scikit-learn's
:class:`sklearn.gaussian_process.kernels.Kernel` API (``k(X, Y=None, eval_gradient=False)``,
``k.diag(X)``, ``is_stationary()``, hyperparameters with bounds, ``clone``), so they work

* in :class:`~sklearn.gaussian_process.GaussianProcessRegressor` and
  :class:`~sklearn.gaussian_process.GaussianProcessClassifier`, alone or combined with other
  kernels (``ConstantKernel() * NTK() + WhiteKernel()``), with ``w_std`` and ``b_std``
  optimized by the marginal likelihood;
* as the ``kernel`` of :class:`~sklearn.kernel_ridge.KernelRidge` (scikit-learn's
  ``pairwise_kernels`` calls a ``Kernel`` object on whole matrices) and of
  :class:`~sklearn.svm.SVC` / :class:`~sklearn.svm.SVR` (a callable ``(X, Y) -> Gram``);
* or precomputed: ``SVC(kernel="precomputed").fit(NTK()(X), y)``.

The Gram matrices come from :class:`infntk.FCNet` (closed forms, accurate to rounding), or
from an :class:`infntk.Network` given as ``network=`` (an object or its text form,
``NTK(network="dense(1.5,0.1) relu dense erf dense")``).

Hyperparameters
---------------
``w_std`` and ``b_std`` are the tunable hyperparameters (scikit-learn optimizes their
logarithms inside ``*_bounds``). ``b_std`` is *fixed* (not optimized) when it is ``0`` or
``None``: its logarithm would be ``-inf``; start from a small positive value such as
``1e-3`` to let the optimizer choose it. ``activation``, ``depth``, ``parameterization``,
``width`` and ``activation_params`` are ordinary (fixed) parameters.

Gradients (``eval_gradient=True``) are taken with respect to ``log(w_std)`` and
``log(b_std)`` by a fourth-order central difference of step ``h = 2e-4`` in log space,
``(K(-2h) - 8 K(-h) + 8 K(h) - K(2h)) / (12 h)``: truncation ``h^4 |K^(5)| / 30`` plus
rounding ``~1.5 eps max|K| / h``. For bias-free ReLU, ``K ~ w_std^(2(L+1))``, so the
truncation is ``(2(L+1))^5 h^4 / 30`` relative to ``K``: ``5e-12`` at ``L = 4``, ``3e-10``
at ``L = 10``; the rounding is about ``1e-12``. ``tests/test_sklearn.py`` checks ``1e-10``
(relative to ``max |dK|``) against exact derivatives. Cost: four extra Gram evaluations per
free hyperparameter.

scikit-learn is an optional dependency: ``pip install 'infntk[sklearn]'``.

Example
-------
>>> import numpy as np
>>> from sklearn.gaussian_process import GaussianProcessRegressor
>>> from infntk.sklearn import NTK
>>> X = np.linspace(-1, 1, 20)[:, None] * [1.0, 0.5]
>>> y = np.sin(3 * X[:, 0])
>>> gp = GaussianProcessRegressor(NTK(depth=2, b_std=0.1), alpha=1e-6).fit(X, y)
>>> bool(np.allclose(gp.predict(X), y, atol=1e-3))
True

References
----------
.. [1] Jacot, Gabriel, Hongler, "Neural Tangent Kernel", NeurIPS 2018.
.. [2] Arora, Du, Li, Salakhutdinov, Wang, Yu, "Harnessing the power of infinitely wide
   deep nets on small-data tasks", ICLR 2020 (NTK-SVM on UCI data sets).
"""
from __future__ import annotations

import numpy as np

try:
    from sklearn.gaussian_process.kernels import Hyperparameter, Kernel
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "infntk.sklearn needs scikit-learn, which is not installed: "
        "pip install 'infntk[sklearn]' (or pip install scikit-learn)") from exc

from .fcnet import FCNet
from .layer_spec import parse_layers
from .network import Network

__all__ = ["NTK", "NNGP"]

#: Step in log space of the fourth-order central difference used by ``eval_gradient``.
FD_STEP = 2e-4
_FD_OFFSETS = (-2.0, -1.0, 1.0, 2.0)
_FD_WEIGHTS = (1.0, -8.0, 8.0, -1.0)  # divided by 12 h


class _FCNetKernel(Kernel):
    """Shared implementation; subclasses set ``_which`` to ``"ntk"`` or ``"nngp"``."""

    _which = "ntk"

    def __init__(self, activation="relu", depth=1, w_std=1.0, b_std=0.0,
                 parameterization="ntk", width=None, activation_params=None,
                 w_std_bounds=(1e-2, 1e2), b_std_bounds=(1e-5, 1e2), network=None,
                 **activation_kwargs):
        if activation_kwargs:            # NTK("leaky_relu", alpha=0.1), as FCNet accepts it
            activation_params = {**(activation_params or {}), **activation_kwargs}
        self.activation = activation
        self.depth = depth
        self.w_std = w_std
        self.b_std = b_std
        self.parameterization = parameterization
        self.width = width
        self.activation_params = activation_params
        self.w_std_bounds = w_std_bounds
        self.b_std_bounds = b_std_bounds
        self.network = network

    def __sklearn_clone__(self):
        """A clone that shares ``network`` (an immutable description) and deep-copies the
        rest, as :func:`sklearn.base.clone` does."""
        import copy
        params = self.get_params(deep=False)
        network = params.pop("network")
        return type(self)(network=network, **copy.deepcopy(params))

    # ------------------------------------------------------------------ hyperparameters
    @property
    def hyperparameter_w_std(self):
        return Hyperparameter("w_std", "numeric",
                              "fixed" if self.network is not None else self.w_std_bounds)

    @property
    def hyperparameter_b_std(self):
        fixed = self.b_std is None or self.b_std == 0 or self.network is not None
        return Hyperparameter("b_std", "numeric", "fixed" if fixed else self.b_std_bounds)

    # ------------------------------------------------------------------ kernel API
    def _net(self, w_std=None, b_std=None):
        if self.network is not None:
            if isinstance(self.network, Network):
                return self.network
            if isinstance(self.network, str):
                return Network(parse_layers(self.network), width=self.width)
            raise TypeError(f"network must be an infntk.Network or a layer string such as "
                            f"'dense(1.5,0.1) relu dense', got {type(self.network).__name__}.")
        params = dict(self.activation_params or {})
        return FCNet(self.activation, depth=self.depth,
                     w_std=self.w_std if w_std is None else w_std,
                     b_std=self.b_std if b_std is None else b_std,
                     parameterization=self.parameterization, width=self.width, **params)

    def _gram(self, net, X, Y=None):
        return getattr(net.kernels(X, Y), self._which)

    def __call__(self, X, Y=None, eval_gradient=False):
        """The Gram matrix ``k(X, Y)``, and optionally its gradient in log-hyperparameters.

        Parameters
        ----------
        X : (n1, d) array
        Y : (n2, d) array, optional
            ``None`` means ``X``.
        eval_gradient : bool
            Also return ``dK/dlog(theta)`` (only with ``Y=None``, as in scikit-learn).

        Returns
        -------
        K : (n1, n2) ndarray
        K_gradient : (n1, n1, n_free) ndarray, only if ``eval_gradient``
            One slice per free hyperparameter, in the order of ``self.theta`` (``b_std``
            before ``w_std``; fixed ones omitted).
        """
        if eval_gradient and Y is not None:
            raise ValueError("eval_gradient can only be evaluated when Y is None.")
        K = self._gram(self._net(), X, Y)
        if not eval_gradient:
            return K
        grads = []
        for hp in self.hyperparameters:
            if hp.fixed:
                continue
            value = getattr(self, hp.name)
            acc = np.zeros_like(K)
            for off, wt in zip(_FD_OFFSETS, _FD_WEIGHTS):
                shifted = value * np.exp(off * FD_STEP)
                acc += wt * self._gram(self._net(**{hp.name: shifted}), X)
            grads.append(acc / (12.0 * FD_STEP))
        if grads:
            return K, np.stack(grads, axis=2)
        return K, np.empty((K.shape[0], K.shape[1], 0))

    def diag(self, X):
        """``k(x, x)`` for each row of ``X``, ``(n,)``, without forming the Gram matrix."""
        return np.asarray(getattr(self._net().diag(X), self._which))

    def is_stationary(self):
        """``False``: the kernels depend on the norms and the angle of the inputs."""
        return False

    @property
    def requires_vector_input(self):
        return True

    def __repr__(self):
        if self.network is not None:
            return f"{type(self).__name__}(network={self.network!r})"
        extra = ""
        if self.parameterization != "ntk":
            extra += f", parameterization={self.parameterization!r}, width={self.width}"
        if self.activation_params:
            extra += f", activation_params={self.activation_params!r}"
        return (f"{type(self).__name__}(activation={self.activation!r}, depth={self.depth}, "
                f"w_std={self.w_std:.4g}, b_std={self.b_std if self.b_std is None else format(self.b_std, '.4g')}"
                f"{extra})")


class NTK(_FCNetKernel):
    """The infinite-width neural tangent kernel ``Theta^{L+1}`` as a scikit-learn kernel.

    Parameters
    ----------
    activation : str or callable
        A name of :data:`infntk.ACTIVATIONS` (fixed parameter).
    depth : int
        Number of hidden layers ``L >= 0`` (fixed parameter).
    w_std, b_std : float
        Weight and bias standard deviations (hyperparameters; ``b_std`` is fixed when it
        is 0 or None).
    parameterization : {"ntk", "standard"}
    width : int, optional
        Finite hidden width, required by ``parameterization="standard"``.
    activation_params : dict, optional
        Keyword parameters of the activation, e.g. ``{"alpha": 0.1}`` for ``leaky_relu``.
    w_std_bounds, b_std_bounds : pair of floats or "fixed"
        Bounds of the hyperparameters for the optimizer.
    network : infntk.Network or str, optional
        A composed network instead of the fully-connected one: an :class:`infntk.Network`,
        or its text form (:func:`infntk.layer_spec.parse_layers`, e.g.
        ``"dense(1.5,0.1) relu dense erf dense"``; built with ``width=`` for the standard
        parameterization). Then ``activation``, ``depth``, ``w_std``, ``b_std``,
        ``parameterization`` and ``activation_params`` are not used and the kernel has no
        free hyperparameters (the stds sit in the layers; multiply by a ``ConstantKernel``
        for a learned amplitude). ``clone`` shares the network (layers are immutable).
    **activation_kwargs
        The activation's parameters may also be given as keyword arguments, as for
        :class:`infntk.FCNet`: ``NTK("leaky_relu", alpha=0.1)`` is
        ``NTK("leaky_relu", activation_params={"alpha": 0.1})`` (they are stored in
        ``activation_params``, so ``clone`` and ``get_params`` keep them).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.svm import SVC
    >>> from infntk.sklearn import NTK
    >>> X = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
    >>> SVC(kernel=NTK(depth=3)).fit(X, [0, 1, 0, 1]).score(X, [0, 1, 0, 1])
    1.0
    """

    _which = "ntk"


class NNGP(_FCNetKernel):
    """The infinite-width NNGP kernel ``Sigma^{L+1}`` as a scikit-learn kernel.

    Same parameters as :class:`NTK`. The NNGP is the prior covariance of the network's output
    at initialization, so ``GaussianProcessRegressor(NNGP(...))`` is exact Bayesian inference
    with an infinitely wide network (Lee et al. 2018).

    Examples
    --------
    >>> import numpy as np
    >>> from infntk.sklearn import NNGP
    >>> k = NNGP(depth=2, w_std=2 ** 0.5, b_std=None)
    >>> bool(np.allclose(k.diag(np.eye(2)), 1.0))   # relu, w_std^2 = 2 keeps |x|^2/d * 2
    True
    """

    _which = "nngp"
