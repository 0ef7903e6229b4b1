r"""Finite-width corrections: the leading ``1/width`` bias and variance of the empirical kernels.

At hidden width ``n`` the empirical NNGP ``K_hat`` (:meth:`infntk.empirical.MLP.nngp`) and the
empirical NTK ``Theta_hat`` (:meth:`infntk.empirical.MLP.ntk`) of a randomly initialized
network fluctuate around their infinite-width limits ``K`` and ``Theta``:

.. math::

    E[\hat K_{ab}] = K_{ab} + \frac{1}{n} K^{\{1\}}_{ab} + O(n^{-2}), \qquad
    \mathrm{Cov}(\hat K_{ab}, \hat K_{cd}) = \frac{1}{n} V_{(ab)(cd)} + O(n^{-2}),

and likewise for the NTK. :func:`corrections` returns the coefficients ``K^{1}`` (``nngp_bias``),
``V_{(ab)(ab)}`` (``nngp_var``), their NTK counterparts (``ntk_bias``, ``ntk_var``) and the
four-point vertex ``V`` of the output pre-activations (``vertex``), from layer recursions
(Roberts, Yaida and Hanin, *The Principles of Deep Learning Theory* (PDLT), ch. 4 and ch. 8).
Every recursion is derived in ``docs/finite_width.md``; the conventions of the finite network
are those of :class:`infntk.empirical.MLP` (``docs/conventions.md``, section 1): every hidden
layer has ``width`` units, the readout is one unit, both parameterizations, with or without
biases.

Gaussian expectations
---------------------
All layer maps are Gaussian expectations at up to two inputs (the ``(n, n)`` outputs) or four
inputs (the vertex). Derivatives of an expectation with respect to the covariance are turned
into expectations of the activation alone times Hermite polynomials of ``y = G^{-1} z``
(Gaussian integration by parts), so only ``phi`` and ``phi'`` of the activation registry are
used.

* One or two inputs: a polar rule in the Cholesky coordinates ``z = L xi``. The angular
  integral is split at the rays where ``z_a`` or ``z_b`` vanishes (the kinks of relu-like
  activations) and integrated by Gauss-Legendre on each arc; the radial integral by the Gauss
  rule of the weight ``r e^{-r^2/2}``. For positively homogeneous activations (relu, leaky
  relu, abs, identity, step, sign, arccos) the radial integrand is a polynomial and the rule
  is exact, the angular one converges geometrically: the results are exact to rounding
  (checked against the closed forms). For smooth activations the error is below ``1e-12``
  relative at the default orders for variances up to ``~10`` (measured by doubling the order,
  ``tests/test_finite_width.py``).
* Three or four distinct inputs (only for ``vertex``): nested one-dimensional Gauss-Legendre
  rules on ``[-10, 10]`` in the Cholesky coordinates, split at the kink of each coordinate
  (Gauss-Hermite for smooth activations), ``vertex_order`` points per piece (default 16
  per piece between kinks, 32 for smooth activations): measured ``6e-8`` (relu) and
  ``2e-5`` (erf, tanh) relative to ``max |V|``.

Cost
----
``n`` inputs, ``L`` hidden layers: the ``(n, n)`` quantities take ``O(L n^2 J)`` activation
evaluations (``J ~ 10^3`` for homogeneous, ``~6 10^3`` for smooth activations), i.e. well
under a second per layer at ``n = 64``. The vertex is an ``n^4`` tensor per layer
(``C(n + 3, 4)`` distinct four-point functions, each a 4-D integral of
``(2 vertex_order)^4`` points): about ``10^5`` four-point functions per second, so minutes at
``n = 16`` and impractical beyond; it is computed only when the attribute is first read.
``n > 64`` is refused.

Example
-------
>>> import numpy as np, infntk
>>> from infntk.finite_width import corrections
>>> net = infntk.FCNet("relu", depth=3, w_std=2 ** 0.5, b_std=None)
>>> c = corrections(net, np.array([[1.0, 0.0]]), width=256)
>>> round(float(c.nngp_var[0, 0] / c.nngp[0, 0] ** 2), 10)   # 5 L at criticality
15.0
>>> round(float(c.nngp_bias[0, 0]), 12)
0.0
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import mpmath
import numpy as np

from ._validation import check_matrix, check_parameterization, check_positive_int, check_std
from .activations import Activation, get_activation
from .layers import Activation as ActivationLayer, Dense, compose_activations

__all__ = ["corrections", "FiniteWidthCorrections", "MAX_INPUTS", "layer_list", "network_layer_list"]

#: largest number of inputs accepted (the vertex holds n^4 numbers per layer)
MAX_INPUTS = 64
_T = 10.0            # half-width of the nested rules (Gaussian mass beyond: 1.5e-23)
_CHUNK_NODES = 600_000


# ----------------------------------------------------------------------------- rules
@functools.lru_cache(maxsize=None)
def _radial_rule(npts, k):
    r"""Gauss rule for ``int_0^inf f(r) r^k e^{-r^2/2} dr``, normalized to total weight 1.

    Recurrence coefficients by the Chebyshev algorithm from the exact moments
    ``int r^(j+k) e^{-r^2/2} = 2^((j+k-1)/2) Gamma((j+k+1)/2)`` in 40 + 2 npts digits, then
    Golub-Welsch in double precision.
    """
    with mpmath.workdps(40 + 2 * npts):
        mu = [mpmath.mpf(2) ** (mpmath.mpf(j + k - 1) / 2) * mpmath.gamma(mpmath.mpf(j + k + 1) / 2)
              for j in range(2 * npts)]
        alpha, beta = [mpmath.mpf(0)] * npts, [mpmath.mpf(0)] * npts
        sig_prev = [mpmath.mpf(0)] * (2 * npts)
        sig = list(mu)
        alpha[0], beta[0] = mu[1] / mu[0], mu[0]
        for kk in range(1, npts):
            new = [mpmath.mpf(0)] * (2 * npts)
            for l in range(kk, 2 * npts - kk):
                new[l] = sig[l + 1] - alpha[kk - 1] * sig[l] - beta[kk - 1] * sig_prev[l]
            alpha[kk] = new[kk + 1] / new[kk] - sig[kk] / sig[kk - 1]
            beta[kk] = new[kk] / sig[kk - 1]
            sig_prev, sig = sig, new
        a = np.array([float(x) for x in alpha])
        b = np.array([float(mpmath.sqrt(x)) for x in beta[1:]])
    J = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
    x, v = np.linalg.eigh(J)
    w = v[0] ** 2
    return x, w / w.sum()


@functools.lru_cache(maxsize=None)
def _legendre(npts):
    return np.polynomial.legendre.leggauss(npts)


@functools.lru_cache(maxsize=None)
def _hermite(npts):
    x, w = np.polynomial.hermite_e.hermegauss(npts)
    return x, w / w.sum()


def _is_homogeneous(act):
    return act.degree is not None and all(k == 0.0 for k in act.kinks)


def _default_orders(act):
    """(radial points, angular points per arc) of the one/two-input rule."""
    return (12, 24) if _is_homogeneous(act) else (48, 40)


def _pair_rule(G, orders):
    """Nodes of the Gaussian ``N(0, G)`` for a batch of 1x1 or 2x2 covariances.

    Returns ``z (P, J, m)``, ``y = G^{-1} z (P, J, m)``, weights ``(P, J)`` (summing to 1) and
    ``Ginv (P, m, m)``.
    """
    P, m, _ = G.shape
    nr, nt = orders
    if m == 1:
        r, wr = _radial_rule(nr, 0)
        xi = np.concatenate([r, -r])
        w = np.concatenate([wr, wr]) / 2
        L = np.sqrt(G[:, 0, 0])
        z = L[:, None, None] * xi[None, :, None]
        y = (xi[None, :] / L[:, None])[:, :, None]
        return z, y, np.broadcast_to(w, (P, w.size)), 1.0 / G
    l00 = np.sqrt(G[:, 0, 0])
    l10 = G[:, 0, 1] / l00
    l11 = np.sqrt(np.maximum(G[:, 1, 1] - l10 ** 2, 0.0))
    r, wr = _radial_rule(nr, 1)
    x, wx = _legendre(nt)
    t0 = np.mod(np.arctan2(-l10, l11), np.pi)
    brk = np.sort(np.stack([np.full(P, 0.5 * np.pi), np.full(P, 1.5 * np.pi), t0, t0 + np.pi],
                           axis=1), axis=1)
    lo = brk
    hi = np.concatenate([brk[:, 1:], brk[:, :1] + 2 * np.pi], axis=1)
    half, mid = (hi - lo) / 2, (hi + lo) / 2                                  # (P, 4)
    t = (mid[:, :, None] + half[:, :, None] * x).reshape(P, -1)              # (P, 4 nt)
    wt = (half[:, :, None] * wx).reshape(P, -1) / (2 * np.pi)
    c, s = np.cos(t), np.sin(t)
    xi0 = (r[None, :, None] * c[:, None, :]).reshape(P, -1)
    xi1 = (r[None, :, None] * s[:, None, :]).reshape(P, -1)
    w = (wr[None, :, None] * wt[:, None, :]).reshape(P, -1)
    z = np.stack([l00[:, None] * xi0, l10[:, None] * xi0 + l11[:, None] * xi1], axis=-1)
    y1 = xi1 / l11[:, None]
    y0 = (xi0 - l10[:, None] * y1) / l00[:, None]
    det = G[:, 0, 0] * G[:, 1, 1] - G[:, 0, 1] ** 2
    Ginv = np.stack([np.stack([G[:, 1, 1], -G[:, 0, 1]], -1),
                     np.stack([-G[:, 0, 1], G[:, 0, 0]], -1)], -2) / det[:, None, None]
    return z, np.stack([y0, y1], axis=-1), w, Ginv


def _entries(m):
    return [(c, d) for c in range(m) for d in range(c, m)]


def _pair_moments(act, G, orders):
    """All one/two-input Gaussian expectations the recursions need, for a batch of pairs.

    ``G``: (P, m, m). Entries ``e = (c, d)``, ``c <= d``, in the order of :func:`_entries`.
    Derivatives with respect to the covariance entry ``G_f`` treat ``G_cd = G_dc`` as one
    variable (Price's theorem: ``d<F>/dG_cd = <d_c d_d F>`` for ``c != d``, half that for
    ``c = d``), computed as ``<F (y_c y_d - Ginv_cd)>`` and the fourth-order Hermite weight.
    """
    z, y, w, Ginv = _pair_rule(G, orders)
    m = G.shape[1]
    ent = _entries(m)
    s = np.asarray(act.fn(z), dtype=np.float64)
    d = np.asarray(act.deriv(z), dtype=np.float64)
    ci = [c for c, _ in ent]
    di = [dd for _, dd in ent]
    cfac = np.array([0.5 if c == dd else 1.0 for c, dd in ent])
    S = s[:, :, ci] * s[:, :, di]
    D = d[:, :, ci] * d[:, :, di]
    h2 = y[:, :, :, None] * y[:, :, None, :] - Ginv[:, None, :, :]             # (P, J, m, m)
    pw = h2[:, :, ci, di] * cfac
    yy = y[:, :, :, None] * y[:, :, None, :]
    E = len(ent)
    h4 = np.empty(S.shape + (E,))
    for i, (a, b) in enumerate(ent):
        for j, (c, e) in enumerate(ent):
            P_ = Ginv[:, None]
            v = (yy[:, :, a, b] * yy[:, :, c, e]
                 - (P_[..., a, b] * yy[:, :, c, e] + P_[..., a, c] * yy[:, :, b, e]
                    + P_[..., a, e] * yy[:, :, b, c] + P_[..., b, c] * yy[:, :, a, e]
                    + P_[..., b, e] * yy[:, :, a, c] + P_[..., c, e] * yy[:, :, a, b])
                 + (P_[..., a, b] * P_[..., c, e] + P_[..., a, c] * P_[..., b, e]
                    + P_[..., a, e] * P_[..., b, c]))
            h4[:, :, i, j] = v * cfac[i] * cfac[j]
    ein = np.einsum
    return dict(
        Phi=ein("pj,pje->pe", w, S), Psi=ein("pj,pje->pe", w, D),
        dPhi=ein("pj,pje,pjf->pef", w, S, pw), dPsi=ein("pj,pje,pjf->pef", w, D, pw),
        d2Phi=ein("pj,pje,pjfg->pefg", w, S, h4), d2Psi=ein("pj,pje,pjfg->pefg", w, D, h4),
        Qss=ein("pj,pje,pjf->pef", w, S, S), Qds=ein("pj,pje,pjf->pef", w, D, S),
        Qdd=ein("pj,pje,pjf->pef", w, D, D),
        R1=ein("pj,pjc,pja,pjg->pcag", w, s, d, y),
        R2=ein("pj,pje,pjcg->pecg", w, D, h2),
    )


# ----------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class _Layer:
    """One Dense layer: ``h = (w_std/sqrt(fan_in)) W phi(h_prev) + b_std b`` (``phi`` the
    activation applied to the previous layer, ``None`` for the first)."""

    w_std: float
    b_std: float | None
    activation: Activation | None


def layer_list(net):
    """The Dense layers of ``net`` as ``[(w_std, b_std, activation), ...]`` (``L + 1`` entries).

    ``activation`` is the one applied to the previous layer's pre-activations (``None`` for the
    first layer). For an :class:`infntk.FCNet` it reads ``net.depth``, ``net.w_std``,
    ``net.b_std``, ``net.activation``; for an :class:`infntk.Network` it reads its layers (see
    :func:`network_layer_list`).

    Parameters
    ----------
    net : FCNet or Network

    Returns
    -------
    list of tuple
    """
    return _layers_of(net)[0]


def network_layer_list(layers):
    """``(layer list, parameterization)`` of a fully-connected layer sequence.

    ``layers`` must be ``Dense``, then any number of ``[Activation ..., Dense]`` groups: one or
    more activations between two Dense layers (two in a row act on one Gaussian
    pre-activation and compose, as in :class:`infntk.Network`), none meaning the identity. The
    last layer is the Dense readout. Every Dense layer must have the same parameterization (the
    recursions take one). Residual, LayerNorm and convolutional layers are refused.
    """
    layers = list(layers)
    out, act = [], None
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense):
            if out and act is None:
                act = get_activation("identity")     # Dense after Dense: a linear layer between
            out.append((layer, act))
            act = None
        elif isinstance(layer, ActivationLayer):
            if not out:
                raise ValueError("net.layers[0] must be a Dense layer (an Activation needs a "
                                 f"Gaussian input), got {layer!r}.")
            act = layer.fn if act is None else compose_activations(act, layer.fn)
        else:
            raise TypeError(f"net.layers[{i}] is {type(layer).__name__}; corrections() takes "
                            "fully-connected networks only (Dense and Activation layers; the "
                            "layer recursions of Roberts, Yaida and Hanin are for MLPs).")
    if not out or act is not None:
        raise ValueError("net.layers must end with a Dense layer (the readout), got "
                         f"{layers[-1]!r} last." if layers else "net.layers is empty.")
    pars = sorted({d.parameterization for d, _ in out})
    if len(pars) > 1:
        raise ValueError("every Dense layer of net must have the same parameterization for "
                         f"corrections(), got {pars}.")
    return [(d.w_std, d.b_std, a) for d, a in out], pars[0]


def _layers_of(net):
    """``(layer list, parameterization)`` of an FCNet or a fully-connected Network."""
    if not hasattr(net, "depth") and hasattr(net, "layers"):
        if getattr(net, "_conv", False):
            raise TypeError("net is a convolutional Network; corrections() takes "
                            "fully-connected networks only (Dense and Activation layers).")
        return network_layer_list(net.layers)
    for attr in ("depth", "w_std", "b_std", "activation"):
        if not hasattr(net, attr):
            raise TypeError(f"net must be an infntk.FCNet or a fully-connected infntk.Network "
                            f"(no attribute {attr!r}), got {type(net).__name__}.")
    act = get_activation(net.activation) if not isinstance(net.activation, Activation) \
        else net.activation
    return ([(net.w_std, net.b_std, None)] + [(net.w_std, net.b_std, act)] * net.depth,
            getattr(net, "parameterization", "ntk"))


# ----------------------------------------------------------------------------- recursion
def _coeffs(layer, parameterization, fan_in):
    """(Cw, Cb, lambda_W, lambda_b) of one Dense layer (docs/finite_width.md, section 2)."""
    w, b = layer.w_std, layer.b_std
    Cw, Cb = w * w, (0.0 if b is None else b * b)
    if parameterization == "ntk":
        return Cw, Cb, Cw, Cb
    return Cw, Cb, float(fan_in), (0.0 if b is None else 1.0)


def _pair_recursion(layers, gram, d, parameterization, width, orders_of):
    """Leading-order corrections for a batch of pairs (all with the same m = 1 or 2).

    ``gram``: (P, m, m) input Gram ``<x_c, x_d> / d``. Returns a dict of per-pair arrays of the
    output and the per-layer Jacobians (for the vertex).
    """
    P, m, _ = gram.shape
    ent = _entries(m)
    E = len(ent)
    eidx = np.zeros((m, m), dtype=int)
    for i, (c, e) in enumerate(ent):
        eidx[c, e] = eidx[e, c] = i
    ci = np.array([c for c, _ in ent])
    di = np.array([d for _, d in ent])
    g = gram[:, ci, di]
    Cw, Cb, lW, lb = _coeffs(layers[0], parameterization, d)
    K = Cb + Cw * g
    H = lb + lW * g
    K1 = np.zeros((P, E))
    H1 = np.zeros((P, E))
    C = np.zeros((P, 2 * E, 2 * E))
    F = np.zeros((P, m, m, m, m))
    B = np.zeros((P, m, m, m, m))
    Aeps = np.zeros((P, E, E))
    jac = []
    I = np.eye(E)
    for l in range(1, len(layers)):
        layer = layers[l]
        act = layer.activation
        Gm = np.empty((P, m, m))
        Gm[:, ci, di] = K
        Gm[:, di, ci] = K
        mom = _pair_moments(act, Gm, orders_of(act))
        Cw, Cb, lW, lb = _coeffs(layer, parameterization, width)
        Phi, Psi = mom["Phi"], mom["Psi"]
        dPhi, dPsi = mom["dPhi"], mom["dPsi"]
        jac.append((K.copy(), Cw * Phi + Cb, Cw * dPhi))
        # ---- collective (conditional-mean) map and its Jacobian
        Jm = np.zeros((P, 2 * E, 2 * E))
        Jm[:, :E, :E] = Cw * dPhi
        Jm[:, E:, :E] = lW * dPhi + Cw * H[:, :, None] * dPsi
        Jm[:, E:, E:] = Cw * Psi[:, :, None] * I
        # ---- conditional covariance of (S, Htilde), n x, then of (G, T)
        SS = mom["Qss"] - Phi[:, :, None] * Phi[:, None, :]
        SH = Cw * H[:, None, :] * (np.swapaxes(mom["Qds"], 1, 2) - Phi[:, :, None] * Psi[:, None, :])
        HH = Cw ** 2 * H[:, :, None] * H[:, None, :] * (mom["Qdd"] - Psi[:, :, None] * Psi[:, None, :])
        cov = np.zeros((P, 2 * E, 2 * E))
        cov[:, :E, :E], cov[:, :E, E:], cov[:, E:, :E], cov[:, E:, E:] = SS, SH, np.swapaxes(SH, 1, 2), HH
        A = np.zeros((2 * E, 2 * E))
        A[:E, :E] = Cw * I
        A[E:, :E] = lW * I
        A[E:, E:] = I
        Cnew = A @ cov @ A.T + Jm @ C @ np.swapaxes(Jm, 1, 2)
        # ---- means
        CGG, CGT = C[:, :E, :E], C[:, :E, E:]
        meanS1 = np.einsum("pef,pf->pe", dPhi, K1) + 0.5 * np.einsum("pefg,pfg->pe", mom["d2Phi"], CGG)
        Neps = 0.5 * (F + np.swapaxes(F, 3, 4))                         # [a, b, c, d]
        Neps_e = Neps[:, ci, di]                                         # (P, E, m, m)
        eps_term = np.einsum("pecd,pecd->pe", Neps_e, mom["R2"])
        dPsiK1 = np.einsum("pef,pf->pe", dPsi, K1)
        d2PsiC = 0.5 * np.einsum("pefg,pfg->pe", mom["d2Psi"], CGG)
        cross = np.einsum("pfe,pef->pe", CGT, dPsi)
        K1new = Cw * meanS1
        H1new = lW * meanS1 + Cw * ((dPsiK1 + d2PsiC) * H + Psi * H1 + cross + eps_term)
        # ---- per-unit NTK noise: F (with the unit's own z), B (between units)
        Qds_full = mom["Qds"][:, eidx[:, :, None, None], eidx[None, None, :, :]]  # [ab, cd]
        Hf = H[:, eidx]                                                   # (P, m, m)
        R1 = mom["R1"]                                                    # [c, a, g]
        Fnew = Cw ** 2 * (Qds_full * Hf[:, :, :, None, None]
                          + np.einsum("pcag,pdbh,pabgh->pabcd", R1, R1, F))
        Qdd_full = mom["Qdd"][:, eidx[:, :, None, None], eidx[None, None, :, :]]
        Psif = Psi[:, eidx]                                               # (P, m, m)
        BB = np.einsum("pac,pbd,pabcd->pabcd", Psif, Psif, B)
        Bnew = Cw ** 2 * (Qdd_full * Hf[:, :, :, None, None] * Hf[:, None, None, :, :] + BB)
        if l == len(layers) - 1:
            BBs = np.einsum("pad,pbc,pabdc->pabcd", Psif, Psif, B)
            full = Cw ** 2 * (2 * Qdd_full * Hf[:, :, :, None, None] * Hf[:, None, None, :, :]
                              + BB + BBs)
            Aeps = full[:, ci, di][:, :, ci, di]
        K = Cb + Cw * Phi
        H = lb + lW * Phi + Cw * Psi * H
        K1, H1, C, F, B = K1new, H1new, Cnew, Fnew, Bnew
    return dict(K=K, H=H, K1=K1, H1=H1, V=C[:, :E, :E], CT=C[:, E:, E:], Aeps=Aeps, jac=jac,
                ent=ent)


# ----------------------------------------------------------------------------- four-point functions
def _polar_power_expect(act, G, powers, orders):
    """``E[prod_i phi(z_i)^p_i]``, ``z ~ N(0, G)``, for one or two distinct inputs (batch)."""
    z, _, w, _ = _pair_rule(G, orders)
    f = np.ones(w.shape)
    s = np.asarray(act.fn(z), dtype=np.float64)
    for i, p in enumerate(powers):
        f = f * s[:, :, i] ** p
    return np.einsum("pj,pj->p", w, f)


def _nested_power_expect(act, G, powers, order):
    """``E[prod_i phi(z_i)^p_i]`` for ``m`` distinct inputs by nested 1-D rules (batch).

    ``z = L xi`` with ``L`` the Cholesky factor; coordinate ``k`` is integrated with the outer
    ones fixed, on ``[-T, T]`` split where ``z_k`` crosses a kink of ``phi`` (Gauss-Legendre,
    ``order`` points per piece), or by ``order``-point Gauss-Hermite if ``phi`` is smooth. The
    inner integrals are smooth functions of the outer coordinates, so each level converges
    geometrically.
    """
    Bn, m, _ = G.shape
    L = np.linalg.cholesky(G)
    kinks = tuple(act.kinks)
    s = np.zeros((Bn, 1, m))
    acc = np.ones((Bn, 1))
    xl, wl = _legendre(order)
    for k in range(m):
        Pn = s.shape[1]
        if not kinks:
            xh, wh = _hermite(order)
            xi = np.broadcast_to(xh, (Bn, Pn, order))
            wk = np.broadcast_to(wh, (Bn, Pn, order))
        else:
            lkk = L[:, k, k][:, None, None]
            bps = np.clip((np.array(kinks)[None, None, :] - s[:, :, k:k + 1]) / lkk, -_T, _T)
            bps = np.sort(bps, axis=-1)
            edges = np.concatenate([np.full((Bn, Pn, 1), -_T), bps, np.full((Bn, Pn, 1), _T)], -1)
            lo, hi = edges[..., :-1], edges[..., 1:]
            half, mid = (hi - lo) / 2, (hi + lo) / 2
            xi = (mid[..., None] + half[..., None] * xl).reshape(Bn, Pn, -1)
            wk = (half[..., None] * wl).reshape(Bn, Pn, -1) * np.exp(-0.5 * xi ** 2) / math.sqrt(2 * math.pi)
        snew = s[:, :, None, :] + xi[..., None] * L[:, None, None, :, k]
        zk = snew[..., k]
        fac = np.asarray(act.fn(zk), dtype=np.float64) ** powers[k] if powers[k] else 1.0
        acc = (acc[:, :, None] * wk * fac).reshape(Bn, -1)
        s = snew.reshape(Bn, -1, m)
    return acc.sum(axis=1)


def _four_point(act, K, vertex_order, orders):
    """``Q[a, b, c, d] = E[phi(z_a) phi(z_b) phi(z_c) phi(z_d)]``, ``z ~ N(0, K)``, all n^4."""
    import itertools
    n = K.shape[0]
    Q = np.empty((n, n, n, n))
    groups = {}
    for t in itertools.combinations_with_replacement(range(n), 4):
        pts = sorted(set(t))
        powers = tuple(t.count(p) for p in pts)
        groups.setdefault((len(pts), powers), []).append((t, pts))
    for (m, powers), items in groups.items():
        idx = np.array([pts for _, pts in items])
        G = K[idx[:, :, None], idx[:, None, :]]
        if m <= 2:
            vals = _polar_power_expect(act, G, powers, orders)
        else:
            per = (len(act.kinks) + 1) * vertex_order if act.kinks else vertex_order
            chunk = max(1, _CHUNK_NODES // per ** m)
            vals = np.concatenate([_nested_power_expect(act, G[i:i + chunk], powers, vertex_order)
                                   for i in range(0, len(items), chunk)])
        for (t, _), v in zip(items, vals):
            for p in set(itertools.permutations(t)):
                Q[p] = v
    return Q


def _apply_jacobian(V, alpha, gamma, alpha2):
    """``(J V)[a, b, ...] = alpha_ab V[a, a, ...] + gamma_ab V[a, b, ...] + alpha2_ab V[b, b, ...]``."""
    n = V.shape[0]
    r = np.arange(n)
    Vd = V[r, r]                                        # [a, c, d]
    return (alpha[:, :, None, None] * Vd[:, None] + gamma[:, :, None, None] * V
            + alpha2[:, :, None, None] * Vd[None, :])


# ----------------------------------------------------------------------------- public API
@dataclass
class FiniteWidthCorrections:
    """Leading ``1/width`` corrections of a network's empirical kernels at inputs ``X``.

    All arrays are ``(n, n)`` float64 (``vertex``: ``(n, n, n, n)``), for the network's output
    (``docs/finite_width.md``). With ``n_w = width``:

    Attributes
    ----------
    nngp, ntk : ndarray
        The infinite-width kernels ``K`` and ``Theta`` these corrections refer to (in the
        standard parameterization ``Theta`` is the NTK at this ``width``).
    nngp_bias : ndarray
        ``n_w (E[K_hat] - K)`` at leading order (``K^{1}`` of PDLT ch. 4).
    nngp_var : ndarray
        ``n_w Var[K_hat_ab]`` at leading order; equals ``vertex[a, b, a, b]``.
    ntk_bias, ntk_var : ndarray
        The same for the empirical NTK ``Theta_hat``.
    width : int
    vertex : ndarray, (n, n, n, n)
        ``V_{(ab)(cd)} = n_w Cov(K_hat_ab, K_hat_cd)``, the four-point vertex of the output
        pre-activations (their connected four-point function is ``V / n_w``). Computed on
        first access (cost in the module docstring).
    """

    nngp: np.ndarray
    ntk: np.ndarray
    nngp_bias: np.ndarray
    nngp_var: np.ndarray
    ntk_bias: np.ndarray
    ntk_var: np.ndarray
    width: int
    _vertex_data: tuple = field(repr=False, default=None)
    _vertex: np.ndarray = field(repr=False, default=None)

    @property
    def vertex(self):
        if self._vertex is None:
            self._vertex = _vertex_from(*self._vertex_data)
        return self._vertex


def _vertex_from(layers, per_layer, n, vertex_order, orders_of):
    V = np.zeros((n, n, n, n))
    for layer, (Kmat, Phimat, alpha, gamma, alpha2) in zip(layers[1:], per_layer):
        Cw = layer.w_std ** 2
        act = layer.activation
        order = vertex_order if vertex_order is not None else (16 if act.kinks else 32)
        Q = _four_point(act, Kmat, order, orders_of(act))
        JV = _apply_jacobian(V, alpha, gamma, alpha2)
        JVJ = np.transpose(_apply_jacobian(np.transpose(JV, (2, 3, 0, 1)), alpha, gamma, alpha2),
                           (2, 3, 0, 1))
        V = Cw ** 2 * (Q - Phimat[:, :, None, None] * Phimat[None, None, :, :]) + JVJ
    return V


def corrections(net, X, width, *, orders=None, vertex_order=None):
    r"""Leading-order finite-width bias and variance of the empirical NNGP and NTK.

    Parameters
    ----------
    net : FCNet or Network
        The architecture (activation, depth, w_std, b_std, parameterization); every hidden
        layer has ``width`` units, the readout one (as :class:`infntk.empirical.MLP`). A
        :class:`infntk.Network` of Dense and Activation layers may change ``w_std``,
        ``b_std`` and the activation from layer to layer (one parameterization for all; see
        :func:`network_layer_list`); its finite counterpart is ``net.finite(width, seed)``.
    X : array_like, shape (n, d), n <= 64
        Inputs (no zero row when the first layer has no bias: the recursions divide by the
        variance of each input).
    width : int
        The hidden width ``n_w``; it enters the results only through the standard
        parameterization's NTK (``lambda_W = n_w``).
    orders : (int, int), optional
        Radial points and angular points per arc of the one/two-input rule (default
        ``(12, 24)`` for homogeneous activations, exact to rounding; ``(48, 40)`` otherwise).
    vertex_order : int, optional
        Points per piece of the nested rule of the three- and four-input functions (default
        16 per piece between kinks, 32 Gauss-Hermite points for smooth activations).

    Returns
    -------
    FiniteWidthCorrections

    Notes
    -----
    Recursions (derived in ``docs/finite_width.md``; layer ``l`` of width ``n``):

    .. math::

        V^{l+1} = C_W^2 (\langle\sigma\sigma\sigma\sigma\rangle - \langle\sigma\sigma\rangle
        \langle\sigma\sigma\rangle) + J V^l J^T, \qquad
        K^{\{1\}l+1} = J K^{\{1\}l} + \tfrac{1}{2} \partial^2 \Phi : V^l,

    ``J = C_W d<sigma sigma>/dK``; the NTK carries in addition the covariance of its collective
    part with the kernel (PDLT's ``D``, ``A``) and the per-unit tensors ``F`` and ``B``.
    Cost ``O(L n^2)`` quadratures of ``~10^3`` nodes (the vertex: see the module docstring).

    References
    ----------
    D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory* (2022),
    ch. 4 and 8. B. Hanin, M. Nica, *Finite depth and width corrections to the neural
    tangent kernel*, ICLR 2020.

    Examples
    --------
    >>> import numpy as np, infntk
    >>> net = infntk.FCNet("relu", depth=1, w_std=2 ** 0.5, b_std=None)
    >>> c = corrections(net, np.array([[1.0, 0.0]]), width=128)
    >>> K = c.nngp[0, 0]
    >>> [round(float(v), 10) for v in (c.ntk[0, 0] / K, c.ntk_var[0, 0] / K ** 2)]
    [2.0, 12.0]
    """
    spec, parameterization = _layers_of(net)
    layers = [_Layer(float(w), None if b is None else float(b), a) for (w, b, a) in spec]
    return _corrections_layers(layers, X, width, parameterization,
                               orders=orders, vertex_order=vertex_order)


def _corrections_layers(layers, X, width, parameterization, *, orders=None, vertex_order=None):
    X = check_matrix(X, "X")
    n, d = X.shape
    if n > MAX_INPUTS:
        raise ValueError(f"X has {n} rows; corrections() accepts at most {MAX_INPUTS} inputs "
                         f"(the four-point vertex holds n^4 numbers per layer). Split X into "
                         f"subsets of at most {MAX_INPUTS} rows.")
    width = check_positive_int(width, "width")
    parameterization = check_parameterization(parameterization)
    if vertex_order is not None:
        vertex_order = check_positive_int(vertex_order, "vertex_order", minimum=2)
    for w, b, _ in [(l.w_std, l.b_std, l.activation) for l in layers]:
        check_std(w, "w_std")
        check_std(b, "b_std", allow_none=True)
    if orders is not None:
        orders = (check_positive_int(orders[0], "orders[0]"), check_positive_int(orders[1], "orders[1]"))

    def orders_of(act):
        return orders if orders is not None else _default_orders(act)

    gram = X @ X.T / d
    q1 = layers[0].w_std ** 2 * np.diag(gram) + (0.0 if layers[0].b_std is None else layers[0].b_std ** 2)
    if np.any(q1 <= 0):
        raise ValueError(f"X row {int(np.argmin(q1))} has zero first-layer variance (a zero row "
                         "and no bias); its pre-activations vanish identically, drop it.")
    out = {k: np.zeros((n, n)) for k in ("K", "H", "K1", "H1", "Vd", "Td")}
    L = len(layers) - 1
    per_layer = [[np.zeros((n, n)) for _ in range(5)] for _ in range(L)]
    for m, pairs in ((1, [(a, a) for a in range(n)]),
                     (2, [(a, b) for a in range(n) for b in range(a + 1, n)])):
        if not pairs:
            continue
        pa = np.array(pairs)
        idx = pa[:, :m]
        G = gram[idx[:, :, None], idx[:, None, :]]
        chunk = 64
        for i in range(0, len(pairs), chunk):
            res = _pair_recursion(layers, G[i:i + chunk], d, parameterization, width, orders_of)
            e = 0 if m == 1 else 1
            a, b = pa[i:i + chunk, 0], pa[i:i + chunk, 1]
            for key, val in (("K", res["K"][:, e]), ("H", res["H"][:, e]), ("K1", res["K1"][:, e]),
                             ("H1", res["H1"][:, e]), ("Vd", res["V"][:, e, e]),
                             ("Td", res["CT"][:, e, e] + res["Aeps"][:, e, e])):
                out[key][a, b] = val
                out[key][b, a] = val
            for l, (Kp, Phip, dPhip) in enumerate(res["jac"]):
                Cw = layers[l + 1].w_std ** 2
                Km, Phm, al, ga, al2 = per_layer[l]
                Km[a, b] = Km[b, a] = Kp[:, e]
                Phm[a, b] = Phm[b, a] = (Phip[:, e] - (0.0 if layers[l + 1].b_std is None
                                                       else layers[l + 1].b_std ** 2)) / Cw if Cw else 0.0
                if m == 1:
                    al[a, a] = dPhip[:, 0, 0]
                else:
                    al[a, b], ga[a, b], al2[a, b] = dPhip[:, 1, 0], dPhip[:, 1, 1], dPhip[:, 1, 2]
                    al2[b, a], ga[b, a], al[b, a] = dPhip[:, 1, 0], dPhip[:, 1, 1], dPhip[:, 1, 2]
    return FiniteWidthCorrections(
        nngp=out["K"], ntk=out["H"], nngp_bias=out["K1"], nngp_var=out["Vd"],
        ntk_bias=out["H1"], ntk_var=out["Td"], width=width,
        _vertex_data=(layers, per_layer, n, vertex_order, orders_of))
