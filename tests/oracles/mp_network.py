"""Independent 50-digit evaluation of composed networks (Dense, activations, residual, LayerNorm).

Shares no code with the package's engines: each pair's 2x2 covariance and NTK are pushed through
the layers in mpmath, with the closed-form duals of the 50-digit reference oracle. A layer is
given as a tuple: ``("dense", w_std, b_std)`` (NTK parameterization), ``("act", name, params)``,
``("norm",)``, ``("res", alpha, [layers])``.
"""
import mpmath as mp

from oracles.mp_reference import mp_dual


def _pair(state, layers, dps):
    q1, q2, s, t1, t2, t12 = state
    for layer in layers:
        kind = layer[0]
        if kind == "dense":
            w2 = mp.mpf(layer[1]) ** 2
            b2 = mp.mpf(0) if layer[2] is None else mp.mpf(layer[2]) ** 2
            # Theta <- Sigma' + w^2 Theta with Sigma' = w^2 K + b^2 (NTK parameterization)
            q1, q2, s = w2 * q1 + b2, w2 * q2 + b2, w2 * s + b2
            t1, t2, t12 = q1 + w2 * t1, q2 + w2 * t2, s + w2 * t12
        elif kind == "act":
            name, params = layer[1], layer[2]
            k11, kd11 = mp_dual(name, q1, q1, q1, same=True, dps=dps, **params)
            k22, kd22 = mp_dual(name, q2, q2, q2, same=True, dps=dps, **params)
            k12, kd12 = mp_dual(name, q1, q2, s, dps=dps, **params)
            q1, q2, s = k11, k22, k12
            t1, t2, t12 = kd11 * t1, kd22 * t2, kd12 * t12
        elif kind == "norm":
            n1, n2 = mp.sqrt(q1), mp.sqrt(q2)
            s, t12 = s / (n1 * n2), t12 / (n1 * n2)
            t1, t2 = t1 / q1, t2 / q2
            q1, q2 = mp.mpf(1), mp.mpf(1)
        elif kind == "res":
            a2 = mp.mpf(layer[1]) ** 2
            b = _pair((q1, q2, s, t1, t2, t12), layer[2], dps)
            q1, q2, s = q1 + a2 * b[0], q2 + a2 * b[1], s + a2 * b[2]
            t1, t2, t12 = t1 + a2 * b[3], t2 + a2 * b[4], t12 + a2 * b[5]
        else:
            raise ValueError(f"unknown layer {layer!r}")
    return q1, q2, s, t1, t2, t12


def mp_network_kernels(layers, X1, X2, dps=50):
    """``(nngp, ntk)`` as lists of lists of mpf; the first layer must be ``dense``."""
    with mp.workdps(dps):
        d = len(X1[0])
        out_k, out_t = [], []
        for x in X1:
            rk, rt = [], []
            for y in X2:
                xs = [mp.mpf(float(v)) for v in x]
                ys = [mp.mpf(float(v)) for v in y]
                g11 = mp.fsum(a * a for a in xs) / d
                g22 = mp.fsum(a * a for a in ys) / d
                g12 = mp.fsum(a * b for a, b in zip(xs, ys)) / d
                same = list(x) == list(y)
                state = (g11, g22, g11 if same else g12, mp.mpf(0), mp.mpf(0), mp.mpf(0))
                q1, q2, s, t1, t2, t12 = _pair(state, layers, dps)
                rk.append(s)
                rt.append(t12)
            out_k.append(rk)
            out_t.append(rt)
        return out_k, out_t
