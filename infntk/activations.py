"""The activation registry: one definition of every activation and its derivative.

Every other module (the compiled closed forms, the Hermite expansions, the finite networks)
takes its activations from here, so an activation is defined exactly once.

Each entry gives

* ``fn(x)`` / ``deriv(x)``: NumPy, elementwise, float64;
* ``mp_fn(x)`` / ``mp_deriv(x)``: the same in mpmath, for high-precision references;
* ``kinks``: points where ``fn`` or ``deriv`` is not smooth (split points for quadrature);
* ``family``: the compiled closed-form dual (:mod:`infntk._duals`) as a :class:`Family`
  ``(code, p0, p1)``, or ``None`` if the kernels come from the Hermite series. This is the
  only place that says which closed form an activation has.

Table (``ACTIVATIONS``)
-----------------------
=============  ================================  =====================  ============
name           phi(x)                            parameters             closed form
=============  ================================  =====================  ============
relu           max(0, x)                                                arc-cosine
leaky_relu     x if x > 0 else alpha x           alpha=0.01             arc-cosine
abs            abs(x)                                                   arc-cosine
identity       x                                                        arc-cosine
step           1 if x > 0 else 0  (phi' = 0)                            arc-cosine
sign           sign(x)            (phi' = 0)                            arc-cosine
arccos         max(0, x)**n                      n=1 (0, 1, 2, 3)       arc-cosine
erf            erf(x)                                                   yes
sin            sin(x)                                                   yes
cos            cos(x)                                                   yes
gaussian       exp(-x^2 / 2)                                            yes
gelu           x Phi(x)  (exact, Phi = normal cdf)                      yes
tanh           tanh(x)                                                  Hermite
sigmoid        1 / (1 + exp(-x))                                        Hermite
softplus       log(1 + exp(x))                                          Hermite
silu           x sigmoid(x)                                             Hermite
elu            x if x > 0 else alpha (exp(x) - 1)  alpha=1.0            Hermite
=============  ================================  =====================  ============

A Python callable is accepted anywhere a name is (``get_activation(f)``); its derivative is
then taken from ``deriv=`` when given, or by central differences otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import mpmath
import numpy as np
from scipy import special

from . import _numba_config  # noqa: F401  (cache dir and threading layer, before any compile)

__all__ = ["Activation", "ACTIVATIONS", "Family", "get_activation", "activation_names"]


class Family(NamedTuple):
    """A closed-form dual: the family ``code`` (``FAMILY_*`` below) and its two parameters.

    ABRELU ``(a, b)``: ``phi = b max(x, 0) + a min(x, 0)``; ABSTEP ``(a, b)``:
    ``phi = b 1(x > 0) + a 1(x < 0)``; ARCCOS ``(n, 0)``: ``max(x, 0)^n``; the smooth
    families (ERF, SIN, COS, GAUSSIAN, GELU) take ``(0, 0)``.
    """

    code: int
    p0: float = 0.0
    p1: float = 0.0


@dataclass(frozen=True)
class Activation:
    """One activation function with everything the kernels need about it."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    deriv: Callable[[np.ndarray], np.ndarray]
    mp_fn: Callable | None = None
    mp_deriv: Callable | None = None
    kinks: tuple = ()
    #: the compiled closed-form dual, or None (Hermite series)
    family: Family | None = None
    params: dict = field(default_factory=dict)

    def __call__(self, x):
        return self.fn(np.asarray(x, dtype=float))

    @property
    def degree(self):
        """Degree of positive homogeneity (``phi(c x) = c^degree phi(x)``, ``c > 0``) of the
        closed-form families that have one (ABRELU 1, ABSTEP 0, ARCCOS n), else ``None``."""
        if self.family is None:
            return None
        code = self.family.code
        if code == FAMILY_ABRELU:
            return 1
        if code == FAMILY_ABSTEP:
            return 0
        if code == FAMILY_ARCCOS:
            return int(self.family.p0)
        return None

    def deriv_at_zero(self):
        """``(phi'(0-), phi'(0+))``: the one-sided derivatives at 0 (kinks make them differ)."""
        dm, dp = (float(v) for v in self.deriv(np.array([-1e-300, 1e-300])))
        return dm, dp

    def __repr__(self):
        ps = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Activation({self.name}{', ' + ps if ps else ''})"


# ----------------------------------------------------------------------------- helpers
def _heaviside(x):
    return (np.asarray(x) > 0).astype(float)


def _mp_heaviside(x):
    return mpmath.mpf(1) if x > 0 else mpmath.mpf(0)


def _mp_sign(x):
    return mpmath.mpf(int(mpmath.sign(x)))


def _sigmoid(x):
    return special.expit(x)


def _mp_sigmoid(x):
    return 1 / (1 + mpmath.exp(-x))


def _norm_cdf(x):
    return special.ndtr(x)


def _norm_pdf(x):
    return np.exp(-0.5 * np.asarray(x) ** 2) / math.sqrt(2 * math.pi)


def _mp_norm_cdf(x):
    return mpmath.ncdf(x)


def _mp_norm_pdf(x):
    return mpmath.npdf(x)


# Family codes of the compiled closed forms (infntk._duals). Kept here so that the registry
# is the single source of which activation uses which closed form.
FAMILY_ABRELU = 0      # phi = b max(x,0) + a min(x,0): relu, leaky_relu, abs, identity
FAMILY_ABSTEP = 1      # phi = b 1(x>0) + a 1(x<0): step (a=0,b=1), sign (a=-1,b=1)
FAMILY_ARCCOS = 2      # phi = max(0,x)^n, n >= 2
FAMILY_ERF = 3
FAMILY_SIN = 4
FAMILY_COS = 5
FAMILY_GAUSSIAN = 6
FAMILY_GELU = 7


def _abrelu_fn(x, a, b):
    """``b max(x, 0) + a min(x, 0)``; exact (one product and an exact zero per entry)."""
    if a == 0.0:
        out = np.maximum(x, 0.0)
        return out if b == 1.0 else b * out
    return b * np.maximum(x, 0.0) + a * np.minimum(x, 0.0)


def _abrelu(name, a, b, params):
    return Activation(
        name=name,
        # max/min instead of where: ~10x faster on the finite networks' (n, width) arrays
        fn=lambda x: _abrelu_fn(np.asarray(x, float), float(a), float(b)),
        deriv=lambda x: np.where(np.asarray(x) > 0, float(b), float(a)),
        mp_fn=lambda x: b * x if x > 0 else a * x,
        mp_deriv=lambda x: mpmath.mpf(b) if x > 0 else mpmath.mpf(a),
        kinks=(0.0,) if a != b else (),
        params=params,
        family=Family(FAMILY_ABRELU, float(a), float(b)),
    )


def _make_relu():
    return _abrelu("relu", 0.0, 1.0, {})


def _make_leaky_relu(alpha=0.01):
    alpha = _check_real("alpha", alpha)
    return _abrelu("leaky_relu", alpha, 1.0, {"alpha": alpha})


def _make_abs():
    return _abrelu("abs", -1.0, 1.0, {})


def _make_identity():
    return _abrelu("identity", 1.0, 1.0, {})


def _make_step():
    return Activation(
        name="step",
        fn=_heaviside,
        deriv=lambda x: np.zeros_like(np.asarray(x, dtype=float)),
        mp_fn=_mp_heaviside,
        mp_deriv=lambda x: mpmath.mpf(0),
        kinks=(0.0,),
        family=Family(FAMILY_ABSTEP, 0.0, 1.0),
    )


def _make_sign():
    return Activation(
        name="sign",
        fn=lambda x: np.sign(np.asarray(x, dtype=float)),
        deriv=lambda x: np.zeros_like(np.asarray(x, dtype=float)),
        mp_fn=_mp_sign,
        mp_deriv=lambda x: mpmath.mpf(0),
        kinks=(0.0,),
        family=Family(FAMILY_ABSTEP, -1.0, 1.0),
    )


_ARCCOS_MAX_N = 3


def _make_arccos(n=1):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= _ARCCOS_MAX_N:
        raise ValueError(
            f"arccos: n must be an integer from 0 to {_ARCCOS_MAX_N} (the degree of the rectified "
            f"monomial max(0, x)**n), got {n!r}.")
    n = int(n)
    if n == 0:
        act = _make_step()
    elif n == 1:
        act = _make_relu()
    else:
        act = Activation(
            name="arccos",
            fn=lambda x: np.maximum(np.asarray(x, dtype=float), 0.0) ** n,
            deriv=lambda x: n * np.maximum(np.asarray(x, dtype=float), 0.0) ** (n - 1),
            mp_fn=lambda x: x ** n if x > 0 else mpmath.mpf(0),
            mp_deriv=lambda x: n * x ** (n - 1) if x > 0 else mpmath.mpf(0),
            kinks=(0.0,),
            family=Family(FAMILY_ARCCOS, float(n), 0.0),
        )
    return Activation(**{**act.__dict__, "name": "arccos", "params": {"n": n}})


def _make_erf():
    c = 2.0 / math.sqrt(math.pi)
    return Activation(
        name="erf",
        fn=special.erf,
        deriv=lambda x: c * np.exp(-np.asarray(x, dtype=float) ** 2),
        mp_fn=mpmath.erf,
        mp_deriv=lambda x: 2 / mpmath.sqrt(mpmath.pi) * mpmath.exp(-x * x),
        family=Family(FAMILY_ERF, 0.0, 0.0),
    )


def _make_sin():
    return Activation(name="sin", fn=np.sin, deriv=np.cos, mp_fn=mpmath.sin, mp_deriv=mpmath.cos,
                      family=Family(FAMILY_SIN, 0.0, 0.0))


def _make_cos():
    return Activation(name="cos", fn=np.cos, deriv=lambda x: -np.sin(x), mp_fn=mpmath.cos,
                      mp_deriv=lambda x: -mpmath.sin(x),
                      family=Family(FAMILY_COS, 0.0, 0.0))


def _make_gaussian():
    return Activation(
        name="gaussian",
        fn=lambda x: np.exp(-0.5 * np.asarray(x, dtype=float) ** 2),
        deriv=lambda x: -np.asarray(x, dtype=float) * np.exp(-0.5 * np.asarray(x, dtype=float) ** 2),
        mp_fn=lambda x: mpmath.exp(-x * x / 2),
        mp_deriv=lambda x: -x * mpmath.exp(-x * x / 2),
        family=Family(FAMILY_GAUSSIAN, 0.0, 0.0),
    )


def _make_gelu():
    return Activation(
        name="gelu",
        fn=lambda x: np.asarray(x, dtype=float) * _norm_cdf(x),
        deriv=lambda x: _norm_cdf(x) + np.asarray(x, dtype=float) * _norm_pdf(x),
        mp_fn=lambda x: x * _mp_norm_cdf(x),
        mp_deriv=lambda x: _mp_norm_cdf(x) + x * _mp_norm_pdf(x),
        family=Family(FAMILY_GELU, 0.0, 0.0),
    )


def _make_tanh():
    return Activation(name="tanh", fn=np.tanh, deriv=lambda x: 1.0 - np.tanh(x) ** 2,
                      mp_fn=mpmath.tanh, mp_deriv=lambda x: mpmath.sech(x) ** 2)


def _make_sigmoid():
    return Activation(
        name="sigmoid",
        fn=_sigmoid,
        deriv=lambda x: _sigmoid(x) * _sigmoid(-np.asarray(x, dtype=float)),
        mp_fn=_mp_sigmoid,
        mp_deriv=lambda x: _mp_sigmoid(x) * _mp_sigmoid(-x),
    )


def _make_softplus():
    return Activation(
        name="softplus",
        fn=lambda x: np.logaddexp(0.0, x),
        deriv=_sigmoid,
        mp_fn=lambda x: mpmath.log1p(mpmath.exp(x)),
        mp_deriv=_mp_sigmoid,
    )


def _make_silu():
    return Activation(
        name="silu",
        fn=lambda x: np.asarray(x, dtype=float) * _sigmoid(x),
        deriv=lambda x: _sigmoid(x) * (1.0 + np.asarray(x, dtype=float) * _sigmoid(-np.asarray(x, dtype=float))),
        mp_fn=lambda x: x * _mp_sigmoid(x),
        mp_deriv=lambda x: _mp_sigmoid(x) * (1 + x * _mp_sigmoid(-x)),
    )


def _make_elu(alpha=1.0):
    alpha = _check_real("alpha", alpha)
    return Activation(
        name="elu",
        fn=lambda x: np.where(np.asarray(x) > 0, np.asarray(x, float), alpha * np.expm1(np.minimum(x, 0.0))),
        deriv=lambda x: np.where(np.asarray(x) > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0))),
        mp_fn=lambda x: x if x > 0 else alpha * mpmath.expm1(x),
        mp_deriv=lambda x: mpmath.mpf(1) if x > 0 else alpha * mpmath.exp(x),
        kinks=(0.0,),
        params={"alpha": alpha},
    )


def _check_real(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"activation parameter {name!r} must be a real number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"activation parameter {name!r} must be finite, got {value!r}.")
    return value


#: name -> factory taking the activation's keyword parameters.
ACTIVATIONS: dict[str, Callable[..., Activation]] = {
    "relu": _make_relu,
    "leaky_relu": _make_leaky_relu,
    "abs": _make_abs,
    "identity": _make_identity,
    "step": _make_step,
    "sign": _make_sign,
    "arccos": _make_arccos,
    "erf": _make_erf,
    "sin": _make_sin,
    "cos": _make_cos,
    "gaussian": _make_gaussian,
    "gelu": _make_gelu,
    "tanh": _make_tanh,
    "sigmoid": _make_sigmoid,
    "softplus": _make_softplus,
    "silu": _make_silu,
    "elu": _make_elu,
}


def activation_names():
    """The registered activation names, sorted."""
    return sorted(ACTIVATIONS)


def _finite_difference_derivative(f):
    def deriv(x):
        x = np.asarray(x, dtype=float)
        h = 1e-5 * np.maximum(1.0, np.abs(x))
        return (np.asarray(f(x + h), float) - np.asarray(f(x - h), float)) / (2 * h)
    return deriv


def _real_values(values, name):
    """``values`` as a float array; ``TypeError`` if the callable returned complex values
    (casting would silently drop the imaginary part)."""
    arr = np.asarray(values)
    if np.iscomplexobj(arr):
        raise TypeError(f"{name}: the callable returned complex values (dtype {arr.dtype}); "
                        "activations must be real-valued.")
    return np.asarray(arr, dtype=float)


def get_activation(activation, deriv=None, **params) -> Activation:
    """Return the :class:`Activation` for a registered name, a callable, or an Activation.

    Parameters
    ----------
    activation : str, callable or Activation
        A name from :data:`ACTIVATIONS` (parameters as keyword arguments, e.g.
        ``get_activation("leaky_relu", alpha=0.1)``), or a callable ``phi`` acting elementwise
        on float64 arrays.
    deriv : callable, optional
        For a callable ``phi`` only: its derivative. Without it, the derivative is taken by
        central differences (accurate to about 1e-10 for smooth ``phi``).

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid names) or bad parameter.
    TypeError
        Parameters given for an activation that takes none, or an object that is neither a
        name nor a callable.
    """
    if isinstance(activation, Activation):
        if params or deriv is not None:
            raise TypeError("activation: parameters cannot be added to an Activation object.")
        return activation
    if isinstance(activation, str):
        key = activation.lower()
        if key not in ACTIVATIONS:
            raise ValueError(
                f"activation: unknown name {activation!r}; valid names are "
                f"{', '.join(activation_names())}, or pass a callable.")
        if deriv is not None:
            raise TypeError(f"activation: deriv= is only for callables, not for {activation!r}.")
        try:
            return ACTIVATIONS[key](**params)
        except TypeError as exc:
            raise TypeError(f"activation {activation!r}: bad parameters {params!r} ({exc}).") from None
    if callable(activation):
        if params:
            raise TypeError(f"activation: keyword parameters {sorted(params)} are only for named "
                            "activations; bind them into the callable instead.")
        fn = activation
        name = getattr(fn, "__name__", "callable")
        if deriv is not None and not callable(deriv):
            raise TypeError(f"deriv must be a callable (the derivative of the activation), "
                            f"got {deriv!r}.")

        def np_fn(x, _f=fn):
            return _real_values(_f(np.asarray(x, dtype=float)), "activation")

        d = deriv if deriv is not None else _finite_difference_derivative(np_fn)

        def np_deriv(x, _d=d):
            return _real_values(_d(np.asarray(x, dtype=float)), "deriv")

        return Activation(name=name, fn=np_fn, deriv=np_deriv, mp_fn=None, mp_deriv=None,
                          params={"callable": fn})
    raise TypeError(f"activation must be a name (str) or a callable, got {type(activation).__name__}.")
