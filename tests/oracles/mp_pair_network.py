r"""Pairs through a deep network by 2-D mpmath quadrature, for activations without a closed form.

``mp_pair_kernels(f, df, x, y, depth, w_std, b_std, dps)`` is the NNGP and NTK of the pair of
rows ``x, y`` (NTK parameterization, docs/conventions.md) with every layer's
``E[f(u) f(v)]``, ``E[f'(u) f'(v)]`` by nested Gauss-Legendre quadrature in mpmath at ``dps``
digits, written apart from the package's rules:

* outer variable ``z1`` (``u = a z1``) on ``[-HALF, HALF]``, pieces cut at 0 and graded
  geometrically towards 0 down to ``1 / (4 max(a, b))`` (tanh-like ``f(a z1)`` has its poles at
  ``z1 = +-i pi / (2 a)``), the whole rule taken with ``NODES`` points per piece;
* inner variable ``w`` = ``v`` itself (not ``z2``): ``E[f(v) | z1]`` is the integral of
  ``f(w)`` against the normal density of mean ``b rho z1`` and deviation ``sig = b sqrt(1 -
  rho^2)``, taken over ``mean +- HALF sig`` with pieces cut at ``w = 0``, graded towards it
  down to ``1/4`` (the poles of tanh at ``w = +-i pi/2``) and at unit steps to ``|w| = 8``,
  and at ``mean +- j sig``;
* ``|rho| = 1``: the 1-D integral ``E[f(a z) f(+-b z)]`` on the outer rule.

Each value is accepted only if the same integral with half as many nodes per piece (12 and
24; 24 and 48 with ``check=True``) agrees to ``AGREE`` (relative to ``sqrt(E[f^2] E[f^2])``);
otherwise ``ArithmeticError``. (tanh at variance 1e2, ``rho = 0.9999``: the 24- and 48-node
values differ by 1e-31.) Slow (tens of
seconds per layer at variance 1e2): used to make the stored references of
``tests/test_series_quadrature.py``.
"""
import mpmath as mp
from mpmath.calculus.quadrature import GaussLegendre

__all__ = ["HALF", "mp_expect", "mp_pair_kernels"]

HALF = 10          # [-10, 10] standard deviations: Gaussian mass outside 1.5e-23
AGREE = 1e-17
_CACHE = {}


def _nodes(n, dps):
    key = (n, dps)
    if key not in _CACHE:
        with mp.workdps(dps + 10):
            gl = GaussLegendre(mp.mp)
            # calc_nodes(degree) gives 3 * 2^(degree - 1) nodes; pick by count
            deg = {12: 3, 24: 4, 48: 5}[n]
            _CACHE[key] = gl.calc_nodes(deg, mp.mp.prec)
    return _CACHE[key]


def _pieces(h, cuts, n, dps):
    cuts = sorted(set(cuts))
    tot = mp.mpf(0)
    nodes = _nodes(n, dps)
    for a, b in zip(cuts[:-1], cuts[1:]):
        m, r = (a + b) / 2, (b - a) / 2
        tot += r * mp.fsum(w * h(m + r * x) for x, w in nodes)
    return tot


def _graded(lo_scale, centre, lo, hi):
    """Cuts at centre, centre +- lo_scale 2^j up to 1, then unit steps to +-8, inside [lo, hi]."""
    cuts = {lo, hi}
    if lo < centre < hi:
        cuts.add(centre)
    x = lo_scale
    while x < 1:
        for c in (centre - x, centre + x):
            if lo < c < hi:
                cuts.add(c)
        x *= 2
    for k in range(1, 9):
        for c in (centre - k, centre + k):
            if lo < c < hi:
                cuts.add(c)
    return cuts


def mp_expect(f, g, q1, q2, rho, n=24, dps=30):
    """``E[f(u) g(v)]``, variances ``q1, q2``, correlation ``rho`` (see the module notes)."""
    with mp.workdps(dps):
        q1, q2, rho = mp.mpf(q1), mp.mpf(q2), mp.mpf(rho)
        a, b = mp.sqrt(q1), mp.sqrt(q2)
        H = mp.mpf(HALF)
        top = max(a, b, mp.mpf(1))
        oc = _graded(1 / (4 * top), mp.mpf(0), -H, H)
        oc.update(mp.mpf(k) for k in range(-HALF + 1, HALF))
        if abs(rho) == 1 or b == 0:
            return _pieces(lambda z: f(a * z) * g(rho * b * z) * mp.npdf(z), oc, n, dps)
        sig = b * mp.sqrt((1 - rho) * (1 + rho))

        def inner(z1):
            mean = b * rho * z1
            lo, hi = mean - H * sig, mean + H * sig
            cuts = _graded(mp.mpf(1) / 4, mp.mpf(0), lo, hi)
            cuts.update(mean + k * sig for k in range(-HALF + 1, HALF))
            return _pieces(lambda w: g(w) * mp.npdf(w, mean, sig), cuts, n, dps)

        return _pieces(lambda z: f(a * z) * inner(z) * mp.npdf(z), oc, n, dps)


def _checked(f, g, q1, q2, rho, dps, norm, check):
    v1 = mp_expect(f, g, q1, q2, rho, 12 if not check else 24, dps)
    v2 = mp_expect(f, g, q1, q2, rho, 24 if not check else 48, dps)
    if abs(v1 - v2) > AGREE * norm:
        raise ArithmeticError(f"quadrature not converged: {v1} vs {v2}")
    return v2


def mp_pair_kernels(f, df, x, y, depth, w_std=1.0, b_std=None, dps=25, check=False):
    """``(nngp, ntk)`` of rows ``x, y`` (mpf), and the same for ``(x, x)``, ``(y, y)``.

    Returns ``((k12, t12), (k11, t11), (k22, t22))``.
    """
    with mp.workdps(dps):
        w2 = mp.mpf(w_std) ** 2
        b2 = mp.mpf(0) if b_std is None else mp.mpf(b_std) ** 2
        xs = [mp.mpf(float(v)) for v in x]
        ys = [mp.mpf(float(v)) for v in y]
        d = len(xs)
        g11 = mp.fsum(v * v for v in xs) / d
        g22 = mp.fsum(v * v for v in ys) / d
        g12 = mp.fsum(u * v for u, v in zip(xs, ys)) / d
        q1, q2, s = w2 * g11 + b2, w2 * g22 + b2, w2 * g12 + b2
        t1, t2, t12 = q1, q2, s
        for _ in range(depth):
            rho = s / mp.sqrt(q1 * q2)
            rho = max(-1, min(1, rho))
            e1 = _checked(f, f, q1, q1, 1, dps, 1, check)
            e2 = _checked(f, f, q2, q2, 1, dps, 1, check)
            ed1 = _checked(df, df, q1, q1, 1, dps, 1, check)
            ed2 = _checked(df, df, q2, q2, 1, dps, 1, check)
            k12 = _checked(f, f, q1, q2, rho, dps, mp.sqrt(e1 * e2), check)
            kd12 = _checked(df, df, q1, q2, rho, dps, mp.sqrt(ed1 * ed2), check)
            t1, t2, t12 = ed1 * t1, ed2 * t2, kd12 * t12
            q1, q2, s = w2 * e1 + b2, w2 * e2 + b2, w2 * k12 + b2
            t1, t2, t12 = q1 + w2 * t1, q2 + w2 * t2, s + w2 * t12
        return (s, t12), (q1, t1), (q2, t2)
