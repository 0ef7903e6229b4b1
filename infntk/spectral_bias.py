r"""Spectral bias in time: the residual of kernel gradient descent along each harmonic.

With a fixed kernel (the infinite-width limit, docs/conventions.md, eq. 7.4), full-batch gradient
descent with step :math:`\eta` on :math:`\sum_i (f(x_i) - y_i)^2/(2n)` maps the training
residual :math:`r = f(X) - y` to :math:`(I - \eta K/n)\, r`. For inputs uniform on the sphere
:math:`S^{d-1}` (radius :math:`\sqrt d`) and a dot-product kernel, :math:`K/n` has the
spherical harmonics of degree ``k`` as (approximate, for ``n`` samples) eigenvectors with
eigenvalue :math:`\mu_k` (the Mercer eigenvalue of :func:`infntk.spectrum.sphere_eigenvalues`),
so the component of the residual along degree ``k`` decays as

.. math:: a_k(s) = a_k(0)\,(1 - \eta\mu_k)^s \;\approx\; a_k(0)\, e^{-\eta \mu_k s}
          \quad\text{(gradient flow at time } t = s),

and the number of steps needed to reduce it by a factor ``threshold`` is

.. math:: s_k = \frac{\log(\text{threshold})}{\log|1 - \eta\mu_k|}
          \;\approx\; \frac{\log(1/\text{threshold})}{\eta\mu_k}.

Since :math:`\mu_k` falls with ``k`` (like :math:`k^{-d}` for relu networks, Bietti and Mairal
2019), low frequencies are fitted first: the spectral bias of Rahaman et al. (2019), quantified
by Basri et al. (2019, 2020). :func:`spectral_bias` makes this prediction from the spectrum alone
and measures it on a finite network (:class:`infntk.empirical.MLP` trained by
:func:`infntk.training.train`) or on the exact kernel dynamics (:mod:`infntk.dynamics`).

References
----------
.. [1] Rahaman, Baratin, Arpit, Draxler, Lin, Hamprecht, Bengio, Courville, "On the spectral
   bias of neural networks", ICML 2019.
.. [2] Basri, Jacobs, Kasten, Kritchman, "The convergence rate of neural networks for learned
   functions of different frequencies", NeurIPS 2019.
.. [3] Bietti, Mairal, "On the inductive bias of neural tangent kernels", NeurIPS 2019.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import dynamics
from ._validation import check_positive_int, check_positive_real, check_tol
from .data import sample
from .empirical import MLP
from .spectrum import legendre_d, multiplicity, sphere_eigenvalues
from .training import LinearizedMLP, train

__all__ = ["SpectralBias", "spectral_bias", "fit_steps", "sphere_inputs", "zonal_harmonics"]


def _check_ks(ks):
    arr = np.atleast_1d(np.asarray(ks))
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ks must be a non-empty 1-D sequence of integers (degrees), got {ks!r}.")
    if (arr < 0).any():
        raise ValueError(f"ks must be >= 0, got a minimum of {int(arr.min())}.")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"ks must not repeat a degree, got {arr.tolist()}.")
    return arr.astype(np.int64)


def fit_steps(eigenvalues, lr, threshold=0.1):
    r"""Steps of gradient descent that reduce a residual component by ``threshold``.

    :math:`s = \log(\text{threshold}) / \log|1 - \eta\lambda|` for each eigenvalue
    :math:`\lambda` of :math:`K/n` (``inf`` where :math:`\lambda = 0`, ``nan`` where
    :math:`|1 - \eta\lambda| \ge 1`, i.e. the component does not decay).

    Parameters
    ----------
    eigenvalues : array_like (k,)
        Eigenvalues :math:`\lambda \ge 0` of ``K / n`` (Mercer eigenvalues for large ``n``).
    lr : float > 0
    threshold : float in (0, 1)

    Returns
    -------
    ndarray (k,)
        Real-valued step counts (the discrete step is their ceiling).

    Examples
    --------
    >>> fit_steps([0.5, 0.05], lr=1.0, threshold=0.25).round(6).tolist()   # 2 steps; 27.03
    [2.0, 27.026815]
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    lr = check_positive_real(lr, "lr")
    threshold = check_tol(threshold, "threshold")
    if not np.isfinite(lam).all() or (lam < 0).any():
        raise ValueError("eigenvalues must be finite and >= 0.")
    factor = np.abs(1.0 - lr * lam)
    out = np.full(lam.shape, np.nan)
    ok = factor < 1
    with np.errstate(divide="ignore"):
        out[ok] = math.log(threshold) / np.log(factor[ok])
    out[lam == 0] = np.inf
    return out


def sphere_inputs(n, d, seed=None):
    r"""Training inputs on the sphere of radius :math:`\sqrt d` used by :func:`spectral_bias`.

    ``d = 2``: the ``n`` equispaced points :math:`\sqrt 2(\cos\theta_j, \sin\theta_j)`,
    :math:`\theta_j = 2\pi j/n`; there the Gram matrix of a dot-product kernel is circulant and
    :math:`\cos k\theta` is an exact eigenvector (``seed`` is ignored). ``d > 2``: ``n`` iid
    uniform points (:func:`infntk.data.sample`), for which the harmonics are eigenvectors up
    to :math:`O(n^{-1/2})`.

    Returns
    -------
    ndarray (n, d)
    """
    n = check_positive_int(n, "n")
    d = check_positive_int(d, "d", minimum=2)
    if d == 2:
        theta = 2.0 * math.pi * np.arange(n) / n
        return math.sqrt(2.0) * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return sample("sphere", n, d, seed=seed)


def zonal_harmonics(X, ks):
    r"""Unit-power zonal harmonics :math:`\sqrt{N(d,k)}\, P^{(d)}_k(x_1/\sqrt d)`, one column per k.

    :math:`E[(\sqrt{N(d,k)} P_k(s))^2] = 1` for ``x`` uniform on the sphere of radius
    :math:`\sqrt d` (``P_k`` the Legendre polynomial of dimension ``d``,
    :func:`infntk.spectrum.legendre_d`). For ``d = 2`` this is :math:`\sqrt 2\cos k\theta`.

    Parameters
    ----------
    X : (n, d) array, rows on the sphere of radius ``sqrt(d)``
    ks : sequence of int >= 0

    Returns
    -------
    ndarray (n, len(ks))

    Examples
    --------
    >>> import numpy as np
    >>> Y = zonal_harmonics(sphere_inputs(8, 2), [0, 3])
    >>> bool(np.allclose(Y[:, 1], np.sqrt(2) * np.cos(3 * 2 * np.pi * np.arange(8) / 8)))
    True
    """
    X = np.asarray(X, dtype=np.float64)
    ks = _check_ks(ks)
    d = X.shape[1]
    s = np.clip(X[:, 0] / math.sqrt(d), -1.0, 1.0)
    P = legendre_d(s, d, int(ks.max()))[:, ks]
    return P * np.sqrt(multiplicity(d, int(ks.max()))[ks])


@dataclass
class SpectralBias:
    r"""Result of :func:`spectral_bias`: predicted and measured decay of each frequency.

    Attributes
    ----------
    ks : ndarray (K,)
        Degrees (frequencies on the circle).
    eigenvalues, eigenvalue_error : ndarray (K,)
        Mercer eigenvalues :math:`\mu_k` and their quadrature error estimate.
    lr, threshold : float
    steps : ndarray (S,)
        Recorded step counts (``0`` first).
    predicted : ndarray (K, S)
        :math:`(1 - \eta\mu_k)^s`: the residual along degree ``k`` relative to its initial value.
    predicted_flow : ndarray (K, S)
        :math:`e^{-\eta\mu_k s}`: the same for gradient flow at time ``t = s``.
    measured : ndarray (K, S)
        :math:`a_k(s)/a_k(0)`, :math:`a_k(s) = \langle f_s(X) - y, u_k\rangle` with :math:`u_k`
        the normalized degree-``k`` harmonic on the training inputs.
    predicted_fit : ndarray (K,)
        :func:`fit_steps` of ``eigenvalues``.
    measured_fit : ndarray (K,)
        First (real-valued) step at which :math:`|a_k(s)/a_k(0)|` reaches ``threshold``: log-linear
        interpolation between recorded steps; ``nan`` if not reached within ``steps[-1]``.
    width : int or None
        Width of the trained network (``None``: the exact infinite-width kernel dynamics).
    train_loss : ndarray (S,)
        Training loss at the recorded steps.
    """

    ks: np.ndarray
    eigenvalues: np.ndarray
    eigenvalue_error: np.ndarray
    lr: float
    threshold: float
    steps: np.ndarray
    predicted: np.ndarray
    predicted_flow: np.ndarray
    measured: np.ndarray
    predicted_fit: np.ndarray
    measured_fit: np.ndarray
    width: int | None
    train_loss: np.ndarray

    @property
    def fit_ratio(self):
        """``(K,)``: ``measured_fit / predicted_fit`` (1 in the kernel regime, large n)."""
        return self.measured_fit / self.predicted_fit

    def table(self):
        """One line per degree: eigenvalue, predicted and measured steps to fit, their ratio."""
        lines = ["    k        mu_k   predicted steps   measured steps   ratio"]
        for i, k in enumerate(self.ks):
            lines.append(f"{int(k):5d}  {self.eigenvalues[i]:10.4e}  {self.predicted_fit[i]:16.1f}"
                         f"  {self.measured_fit[i]:15.1f}  {self.fit_ratio[i]:6.3f}")
        return "\n".join(lines)


def _crossing(steps, ratio, threshold):
    """First real step where ``|ratio|`` falls to ``threshold`` (log-linear interpolation)."""
    a = np.abs(ratio)
    below = np.flatnonzero(a <= threshold)
    if below.size == 0:
        return np.nan
    j = int(below[0])
    if j == 0:
        return float(steps[0])
    a0, a1 = a[j - 1], a[j]
    if a1 <= 0:
        return float(steps[j])
    w = (math.log(a0) - math.log(threshold)) / (math.log(a0) - math.log(a1))
    return float(steps[j - 1] + w * (steps[j] - steps[j - 1]))


def spectral_bias(net, ks, d=2, n=64, width=None, lr=None, steps=None, threshold=0.1, seed=0,
                  record=None, amplitude=1.0, centered=True, linearized=False):
    r"""Predicted and measured time to fit each frequency ``k`` of a zonal target.

    The target is the sum of the unit-power zonal harmonics of the degrees ``ks``
    (:func:`zonal_harmonics`; on the circle, :math:`\sqrt2\sum_k\cos k\theta`) on ``n``
    training inputs (:func:`sphere_inputs`). The prediction uses only the Mercer eigenvalues
    :math:`\mu_k` of the network's NTK on the sphere (:func:`infntk.spectrum.sphere_eigenvalues`):
    the residual along degree ``k`` decays as :math:`(1 - \eta\mu_k)^s` (module notes). The
    measurement trains either the finite network of ``net``'s settings at ``width`` by
    full-batch gradient descent, or (``width=None``) the exact gradient descent with the
    analytic NTK Gram (:func:`infntk.dynamics.gradient_descent`), and projects the residual
    on each normalized harmonic.

    Parameters
    ----------
    net : infntk.FCNet
        Network in the NTK parameterization (its ``activation``, ``depth``, ``w_std``,
        ``b_std`` also define the finite network).
    ks : sequence of int >= 0, distinct
        Degrees; ``n > 2 max(ks)`` is required on the circle (no aliasing of the harmonics).
    d : int >= 2
        Input dimension (``d = 2``: the circle and an equispaced grid).
    n : int
        Training points.
    width : int or None
        Hidden width of the trained network; ``None`` for the infinite-width kernel dynamics.
    lr : float, optional
        Step size; default ``n / lambda_max(K)`` with ``K`` the analytic NTK Gram on the
        training inputs (half the largest stable step, :func:`infntk.dynamics.max_learning_rate`).
    steps : int, optional
        Training steps; default the last of ``record``, or ``1.5`` times the largest predicted
        fit time (at most 10^6).
    threshold : float in (0, 1)
        A frequency is "fitted" when its residual has fallen by this factor.
    seed : int
        Seed of the network's initialization (and of the inputs when ``d > 2``).
    record : sequence of int, optional
        Steps at which the residual is recorded (default: 80 steps spaced geometrically).
    amplitude : float > 0
        Scale of the target (each harmonic has power ``amplitude^2``). The kernel dynamics are
        linear in it; a finite network's kernel moves in proportion to it.
    centered : bool
        Finite network only: train on ``y + f_0(X)`` (``f_0`` the network at initialization),
        so that ``f - f_0`` starts at 0 and the residual along each harmonic starts at exactly
        ``-y`` (as for the infinite-width mean predictor) instead of carrying the random
        initial function.
    linearized : bool
        Finite network only: train its linearization at initialization
        (:class:`infntk.training.LinearizedMLP`): the fixed empirical NTK, isolating its
        fluctuation at initialization from its change during training.

    Returns
    -------
    SpectralBias

    Notes
    -----
    *Where the prediction is exact.* For ``width=None`` on the circle the Gram matrix is
    circulant, :math:`\cos k\theta` is an exact eigenvector of :math:`K/n` and its eigenvalue is
    the trapezoidal rule of the Funk-Hecke integral: :math:`\mu_k` plus the aliases
    :math:`\mu_{jn \pm k}`, ``j >= 1`` (relative size :math:`\sim (k/n)^d` for relu networks).
    For ``d > 2`` the ``n`` random points perturb the eigenvectors by :math:`O(n^{-1/2})`. A
    finite network adds the fluctuation of its NTK at initialization
    (:math:`O(\text{width}^{-1/2})`) and its change during training. The latter matters for
    the slow directions: the displacement of the parameters needed to fit degree ``k`` grows
    like :math:`\mu_k^{-1/2}` while the eigenvalue it perturbs is :math:`\mu_k`, so a trained
    relu network of width 2048 fits ``k >= 4`` on the circle up to ~2x slower than predicted
    while its linearization matches (``notebooks/10_spectral_bias.ipynb``).

    Cost: the analytic Gram once (``O(n^2)`` kernel evaluations) and the spectrum (two 1-D
    quadratures); then ``steps`` forward/backward passes of the network on ``n`` points
    (``O(steps n width^2 depth)``), or one ``n x n`` eigendecomposition for ``width=None``.

    References
    ----------
    Rahaman et al. (2019); Basri et al. (2019); Bietti and Mairal (2019).

    Examples
    --------
    >>> import infntk
    >>> res = spectral_bias(infntk.FCNet("relu", depth=1, b_std=0.5), ks=[1, 4], n=32)
    >>> bool(res.predicted_fit[0] < res.predicted_fit[1])      # low frequencies first
    True
    >>> bool(np.allclose(res.fit_ratio, 1, atol=0.05))         # exact kernel dynamics
    True
    """
    if not hasattr(net, "dot_product_fn"):
        raise TypeError(f"net must be an infntk.FCNet, got {type(net).__name__}.")
    if getattr(net, "parameterization", "ntk") != "ntk":
        raise ValueError("net must use the NTK parameterization (its kernel on the sphere "
                         "depends on <x, y>/d only).")
    ks = _check_ks(ks)
    d = check_positive_int(d, "d", minimum=2)
    n = check_positive_int(n, "n", minimum=2)
    if d == 2 and n <= 2 * int(ks.max()):
        raise ValueError(f"n must exceed 2 max(ks) = {2 * int(ks.max())} on the circle (the "
                         f"grid cannot resolve higher frequencies), got n={n}.")
    if width is not None:
        width = check_positive_int(width, "width")
    threshold = check_tol(threshold, "threshold")
    amplitude = check_positive_real(amplitude, "amplitude")
    spec = sphere_eigenvalues(net, d, int(ks.max()))
    mu, mu_err = np.maximum(spec.mu[ks], 0.0), spec.error[ks]

    X = sphere_inputs(n, d, seed=seed)
    H = zonal_harmonics(X, ks)
    y = amplitude * H.sum(axis=1)
    U = H / np.linalg.norm(H, axis=0)
    K = net.ntk(X)
    if lr is None:
        lr = 0.5 * dynamics.max_learning_rate(K)
    lr = check_positive_real(lr, "lr")
    pred_fit = fit_steps(mu, lr, threshold)
    if steps is None and record is not None:
        steps = int(np.max(record))
    if steps is None:
        finite = pred_fit[np.isfinite(pred_fit)]
        steps = int(min(1e6, math.ceil(1.5 * finite.max()))) if finite.size else 1000
    steps = check_positive_int(steps, "steps")
    if record is None:
        record = np.unique(np.r_[0, np.geomspace(1, steps, 80).astype(np.int64), steps])
    rec = np.unique(np.atleast_1d(np.asarray(record)))
    if (not np.issubdtype(rec.dtype, np.integer) or rec.min() < 0 or rec.max() > steps):
        raise ValueError(f"record must hold integer steps in [0, steps={steps}].")
    if rec[0] != 0:
        rec = np.r_[0, rec]

    if width is None:
        f = dynamics.gradient_descent(K, None, y, steps=rec, lr=lr).train     # (S, n)
    else:
        model = MLP(width, net.depth, net.activation, w_std=net.w_std, b_std=net.b_std,
                    seed=seed, input_dim=d)
        if linearized:
            model = LinearizedMLP(model)
        f0 = model.forward(X) if centered else 0.0
        f = train(model, X, y + f0, lr, steps, record=rec).train - f0
    resid = f - y                                                             # (S, n)
    loss = 0.5 * np.sum(resid ** 2, axis=1) / n
    a = resid @ U                                                             # (S, K)
    measured = (a / a[0]).T
    s = rec.astype(np.float64)
    with np.errstate(invalid="ignore"):
        predicted = np.sign(1.0 - lr * mu)[:, None] ** rec * np.abs(1.0 - lr * mu)[:, None] ** s
    predicted_flow = np.exp(-lr * mu[:, None] * s)
    meas_fit = np.array([_crossing(s, measured[i], threshold) for i in range(ks.size)])
    return SpectralBias(ks=ks, eigenvalues=mu, eigenvalue_error=mu_err, lr=float(lr),
                        threshold=threshold, steps=rec, predicted=predicted,
                        predicted_flow=predicted_flow, measured=measured,
                        predicted_fit=pred_fit, measured_fit=meas_fit, width=width,
                        train_loss=loss)
