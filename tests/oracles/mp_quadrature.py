r"""2-D Gauss-Legendre quadrature of Gaussian expectations in mpmath (a test oracle).

``quad_expect(f, g, q1, q2, rho, kinked=True)`` is ``E[f(u) g(v)]`` for a centred Gaussian pair
with variances ``q1, q2`` and correlation ``rho``, integrated piecewise on ``[-HALF, HALF]^2``
with ``3 * 2**(DEGREE - 1)`` nodes per piece at ``DPS`` digits. It uses only the integrands it is
given (the activation registry's mpmath ``phi``/``phi'``), so it shares nothing with the closed
forms it checks. ``gauss_pieces(h, cuts)`` is the underlying 1-D rule of ``\int h(z) dz``.
"""
import mpmath as mp
from mpmath.calculus.quadrature import GaussLegendre

__all__ = ["DPS", "HALF", "DEGREE", "quad_expect", "gauss_pieces"]

DPS = 20          # quadrature working precision (the rule below is accurate to ~1e-16)
HALF = 9          # integrate z over [-9, 9]: the Gaussian tail beyond is < 1e-18
DEGREE = 5        # 3 * 2**(DEGREE - 1) = 48 Gauss-Legendre nodes per piece

_NODES = {}


def _nodes():
    if DPS not in _NODES:
        with mp.workdps(DPS):
            _NODES[DPS] = GaussLegendre(mp.mp).calc_nodes(DEGREE, mp.mp.prec)
    return _NODES[DPS]


def _gl(h, a, b):
    m, r = (a + b) / 2, (b - a) / 2
    return r * mp.fsum(w * h(m + r * x) for x, w in _nodes())


def gauss_pieces(h, cuts):
    """Integral of ``h`` over ``[-HALF, HALF]``, one Gauss-Legendre rule per piece between cuts."""
    pts = [mp.mpf(-HALF)] + sorted(c for c in cuts if -HALF < c < HALF) + [mp.mpf(HALF)]
    return mp.fsum(_gl(h, pts[i], pts[i + 1]) for i in range(len(pts) - 1))


def quad_expect(f, g, q1, q2, rho, kinked=True):
    """E[f(u) g(v)] by quadrature, u = sqrt(q1) z1, v = sqrt(q2) (rho z1 + sqrt(1-rho^2) z2).

    ``kinked``: f, g have a kink or jump at 0; the pieces are then cut there (in z1) and at
    the kink of the inner integrand (in z2), so that Gauss-Legendre sees smooth pieces.
    """
    a, b = mp.sqrt(q1), mp.sqrt(q2)
    if abs(rho) == 1:
        return gauss_pieces(lambda z: f(a * z) * g(rho * b * z) * mp.npdf(z), [mp.mpf(0)])
    sig = mp.sqrt(1 - rho * rho)
    if not kinked:
        # fixed inner rule on [-HALF, 0], [0, HALF] with the Gaussian weight folded in
        r = mp.mpf(HALF) / 2
        rule = [(m + r * x, r * w * mp.npdf(m + r * x)) for m in (-r, r) for x, w in _nodes()]

        def outer(z1):
            return f(a * z1) * mp.npdf(z1) * mp.fsum(
                w * g(b * (rho * z1 + sig * z2)) for z2, w in rule)
        return gauss_pieces(outer, [mp.mpf(0)])

    def outer(z1):
        fu = f(a * z1)
        if fu == 0:
            return mp.mpf(0)
        inner = gauss_pieces(lambda z2: g(b * (rho * z1 + sig * z2)) * mp.npdf(z2),
                             [-rho * z1 / sig])
        return fu * inner * mp.npdf(z1)
    # the inner kink z2 = -rho z1 / sig enters [-HALF, HALF] for |z1| < HALF sig / |rho|: cut
    # there too, so that every outer piece is smooth (matters for rho -> +-1)
    w = HALF * sig / abs(rho) if rho != 0 else mp.mpf(2 * HALF)
    return gauss_pieces(outer, [mp.mpf(0), -w, w])
