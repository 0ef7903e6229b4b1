r"""Input samplers: the data distributions the theorems are stated for, and heavier tails.

Every sampler returns ``(n, d)`` float64 rows with (about) ``E|x|^2 = d``, so that a
first-layer pre-activation ``<w, x>/sqrt(d)`` with ``w ~ N(0, I)`` has unit variance, as in
the NTK parameterization (docs/conventions.md, section 1):

==============  =======================================================  ====================
name            law                                                      tails
==============  =======================================================  ====================
``gaussian``    iid N(0, 1)                                              sub-Gaussian
``sphere``      uniform on the sphere of radius ``sqrt(d)``              bounded, ``|x| = sqrt(d)``
``rademacher``  iid uniform on {-1, +1}                                  bounded, ``|x| = sqrt(d)``
``student_t``   iid Student t, ``dof`` degrees of freedom (default 3),   heavy (moments of order
                scaled to unit variance (needs ``dof > 2``)              ``< dof`` only)
==============  =======================================================  ====================

Examples
--------
>>> X = sample("sphere", 4, 9, seed=0)
>>> X.shape, bool(np.allclose((X ** 2).sum(1), 9))
((4, 9), True)
"""
from __future__ import annotations

import math

import numpy as np

from ._validation import check_positive_int, check_positive_real

__all__ = ["sample", "SAMPLERS", "sampler"]


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _gaussian(rng, n, d):
    return rng.standard_normal((n, d))


def _sphere(rng, n, d):
    X = rng.standard_normal((n, d))
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / norms * math.sqrt(d)


def _rademacher(rng, n, d):
    return rng.choice(np.array([-1.0, 1.0]), size=(n, d))


def _student_t(rng, n, d, dof=3.0):
    dof = check_positive_real(dof, "dof")
    if dof <= 2:
        raise ValueError(f"dof must be > 2 (finite variance), got {dof!r}.")
    return rng.standard_t(dof, size=(n, d)) * math.sqrt((dof - 2.0) / dof)


#: name -> sampler ``f(rng, n, d, **params)``
SAMPLERS = {"gaussian": _gaussian, "sphere": _sphere, "rademacher": _rademacher,
            "student_t": _student_t}


def sample(distribution, n, d, seed=None, **params):
    """Draw ``n`` points in ``R^d`` from a registered distribution (see the module table).

    Parameters
    ----------
    distribution : str
        One of ``SAMPLERS`` (``"gaussian"``, ``"sphere"``, ``"rademacher"``, ``"student_t"``).
    n, d : int >= 1
    seed : int, numpy Generator or None
    **params
        ``dof`` for ``"student_t"``.

    Returns
    -------
    ndarray (n, d), float64

    Notes
    -----
    Cost: ``O(n d)``.
    """
    if not isinstance(distribution, str) or distribution not in SAMPLERS:
        raise ValueError(f"distribution must be one of {sorted(SAMPLERS)}, got "
                         f"{distribution!r}.")
    n = check_positive_int(n, "n")
    d = check_positive_int(d, "d")
    fn = SAMPLERS[distribution]
    if params and distribution != "student_t":
        raise TypeError(f"distribution {distribution!r} takes no parameters, got "
                        f"{sorted(params)}.")
    return fn(_rng(seed), n, d, **params)


def sampler(distribution, **params):
    """A function ``(n, d, seed) -> X`` for :func:`sample` with fixed ``distribution``.

    The shape the convergence experiments take as a data argument.

    >>> draw = sampler("student_t", dof=5)
    >>> draw(3, 2, seed=1).shape
    (3, 2)
    """
    if not isinstance(distribution, str) or distribution not in SAMPLERS:
        raise ValueError(f"distribution must be one of {sorted(SAMPLERS)}, got "
                         f"{distribution!r}.")

    def draw(n, d, seed=None):
        return sample(distribution, n, d, seed=seed, **params)

    draw.__name__ = f"sample_{distribution}"
    return draw
