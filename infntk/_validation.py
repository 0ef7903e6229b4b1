"""Input checks shared by every public function: validate once, then compute.

All messages name the offending argument and say what is wrong with it.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["check_matrix", "check_pair", "check_std", "check_depth", "check_positive_int"]


def check_matrix(X, name="X"):
    """Return ``X`` as a C-contiguous float64 2-D array, or raise naming ``name``.

    Accepts any real float or integer dtype and any memory order. Rejects complex, object and
    boolean dtypes, rank other than 2, empty arrays and non-finite values.
    """
    if X is None:
        raise TypeError(f"{name} must be a 2-D array, got None.")
    arr = np.asarray(X)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)
                                   or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array (float or int dtype), "
                        f"got dtype {arr.dtype}.")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (one row per point), got shape {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}.")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name} contains NaN or inf (first at row {bad[0]}, column {bad[1]}).")
    return arr


def check_pair(X1, X2=None, name1="X1", name2="X2"):
    """Validate ``X1`` and optional ``X2``; return ``(X1, X2, same)``, ``same`` if X2 is None."""
    A = check_matrix(X1, name1)
    if X2 is None:
        return A, A, True
    B = check_matrix(X2, name2)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"{name1} and {name2} must have the same number of columns, got "
                         f"{name1}.shape={A.shape} and {name2}.shape={B.shape}.")
    return A, B, False


def check_std(value, name, allow_none=False):
    """A finite, non-negative standard deviation (``None`` allowed when ``allow_none``)."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a non-negative real number, got None.")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a non-negative real number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}.")
    return value


def check_positive_int(value, name, minimum=1):
    """An integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return value


def check_depth(depth):
    """The number of hidden layers, an integer >= 0."""
    return check_positive_int(depth, "depth", minimum=0)
