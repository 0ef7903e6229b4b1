"""The series engine's certificate checked against the independent 30-digit oracle.

Shared by the property tests of ``test_series_engine.py`` and ``test_series_certificate.py``:
run a callable through ``infntk.FCNet`` (so the Hermite-series engine computes it), compute the
same kernels with ``tests/oracles/mp_reference.py`` (which knows the callable's closed form by
``name``), and return what the certificate is judged by.
"""
import warnings

import numpy as np

import infntk
from oracles.mp_reference import mp_kernels


def certificate_check(case, X, depth, w, b, tol):
    """``(k, err, scale)``: the engine's kernels, ``max |K - reference|``, the reference scale.

    ``case = (name, params, f, df)``; ``scale`` is the largest reference diagonal entry. Any
    warning that ``tol`` is unreachable is silenced (the bound reports it).
    """
    name, params, f, df = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        k = infntk.FCNet(f, depth=depth, w_std=w, b_std=b, deriv=df, tol=tol).kernels(X)
    rn, rt = mp_kernels(name, X, None, depth, w, b, dps=30, **params)
    err = max(np.abs(k.nngp - rn).max(), np.abs(k.ntk - rt).max())
    scale = max(np.abs(np.diag(rn)).max(), np.abs(np.diag(rt)).max())
    return k, err, scale
