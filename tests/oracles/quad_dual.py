"""Duals ``(E[f(u) f(v)], E[f'(u) f'(v)])`` of a smooth activation by 2-D Gauss-Legendre quadrature.

For the convolutional oracle (``oracles.mp_conv.mp_conv_kernels(..., dual=quad_dual(f, df))``)
on networks whose activations have no closed form. Written apart from the package's Hermite
series: a composite Gauss-Legendre product rule (nodes and weights from mpmath at 40 digits)
in the standard variables ``u = a z1``, ``v = b (rho z1 + sqrt(1 - rho^2) z2)`` on
``[-HALF, HALF]^2`` (Gaussian mass outside 1.5e-23), pieces of width 1 with ``NODES`` nodes
each; the integrand in float64 (NumPy), the sums by BLAS matrix-vector products, so a value is
accurate to a few 1e-16 of ``sqrt(E E')``. ``tanh(a z)`` has its poles at ``|Im z| = pi / (2
a)``, >= 1 for ``a <= 1.5``: on a piece of half-width 1/2 the Gauss-Legendre error then decays
like ``5^(-2 n)`` (below 1e-22 at 16 nodes). Every value is taken with ``NODES`` and
``NODES_CHECK`` nodes per piece and accepted only if the two agree to ``AGREE`` relative to
``sqrt(E E')`` (else ``ArithmeticError``).
"""
import mpmath as mp
import numpy as np

__all__ = ["quad_dual", "HALF", "NODES", "NODES_CHECK", "AGREE"]

HALF = 10
NODES = 16
NODES_CHECK = 12
AGREE = 1e-14
_RULES = {}


def _rule(n):
    """Composite rule on [-HALF, HALF] with unit pieces, weights times the normal density."""
    if n not in _RULES:
        with mp.workdps(40):
            X, W = mp.gauss_quadrature(n, "legendre")
            x = np.array([float(v) for v in X])
            w = np.array([float(v) for v in W])
        z = np.concatenate([c + 0.5 + 0.5 * x for c in range(-HALF, HALF)])
        wz = np.concatenate([0.5 * w for _ in range(-HALF, HALF)])
        _RULES[n] = (z, wz * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi))
    return _RULES[n]


def _expect(f, df, a, b, rho, n):
    z, w = _rule(n)
    if rho == 1.0:
        u = a * z
        return float(w @ (f(u) ** 2)), float(w @ (df(u) ** 2))
    sig = np.sqrt((1.0 - rho) * (1.0 + rho))
    v = b * (rho * z[:, None] + sig * z[None, :])
    fu, dfu = f(a * z), df(a * z)
    return float(w @ (fu * (f(v) @ w))), float(w @ (dfu * (df(v) @ w)))


def quad_dual(f, df):
    """The ``dual(name, q1, q2, s, same, dps, **params) -> (k, kd)`` (mpf) of ``f``, ``f'``
    (NumPy callables) for :func:`oracles.mp_conv.mp_conv_kernels`; ``name`` is ignored."""
    def dual(name, q1, q2, s, same=False, dps=30, **params):
        q1, q2, s = float(q1), float(q2), float(s)
        a, b = np.sqrt(q1), np.sqrt(q2)
        rho = 1.0 if same else (0.0 if a * b == 0 else max(-1.0, min(1.0, s / (a * b))))
        k1, kd1 = _expect(f, df, a, b, rho, NODES_CHECK)
        k2, kd2 = _expect(f, df, a, b, rho, NODES)
        E = _expect(f, df, a, a, 1.0, NODES)
        E2 = _expect(f, df, b, b, 1.0, NODES)
        if abs(k1 - k2) > AGREE * np.sqrt(E[0] * E2[0]) or \
                abs(kd1 - kd2) > AGREE * np.sqrt(E[1] * E2[1]):
            raise ArithmeticError(f"quadrature not converged at q1={q1}, q2={q2}, rho={rho}")
        return mp.mpf(k2), mp.mpf(kd2)
    return dual
