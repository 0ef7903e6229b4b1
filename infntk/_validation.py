"""Input checks shared by every public function: validate once, then compute.

All messages name the offending argument and say what is wrong with it.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["check_matrix", "check_pair", "check_std", "check_depth", "check_positive_int",
           "check_parameterization", "check_real_dtype", "check_finite", "check_positive_real",
           "check_tol", "check_targets", "PARAMETERIZATIONS"]


def check_matrix(X, name="X"):
    """Return ``X`` as a C-contiguous float64 2-D array, or raise naming ``name``.

    Accepts any real float or integer dtype and any memory order. Rejects complex, object and
    boolean dtypes, rank other than 2, empty arrays and non-finite values.
    """
    if X is None:
        raise TypeError(f"{name} must be a 2-D array, got None.")
    arr = check_real_dtype(X, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (one row per point), got shape {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}.")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    step = max(1, (1 << 22) // arr.shape[1])     # rows per chunk: no large temporaries
    for r0 in range(0, arr.shape[0], step):
        chunk = arr[r0:r0 + step]
        if not np.isfinite(chunk).all():
            bad = np.argwhere(~np.isfinite(chunk))[0]
            raise ValueError(f"{name} contains NaN or inf (first at row {r0 + bad[0]}, "
                             f"column {bad[1]}).")
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


PARAMETERIZATIONS = ("ntk", "standard")


def check_parameterization(value, name="parameterization"):
    """``"ntk"`` or ``"standard"`` (see docs/conventions.md, section 1)."""
    if not isinstance(value, str) or value not in PARAMETERIZATIONS:
        raise ValueError(f"{name} must be one of {PARAMETERIZATIONS}, got {value!r}.")
    return value


def check_real_dtype(arr, name, allow_bool=False):
    """Return ``np.asarray(arr)`` if its dtype is a real float or integer, else ``TypeError``.

    Rejects object, complex, string and (unless ``allow_bool``) boolean dtypes.
    """
    arr = np.asarray(arr)
    ok = np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    if allow_bool and arr.dtype == bool:
        ok = True
    if arr.dtype == object or not ok:
        raise TypeError(f"{name} must be real numeric (float or int dtype), got dtype {arr.dtype}.")
    return arr


def check_finite(arr, name):
    """Raise ``ValueError`` naming ``name`` if ``arr`` holds NaN or inf."""
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf.")
    return arr


def check_positive_real(value, name, allow_zero=False, allow_inf=False):
    """A real number ``> 0`` (``>= 0`` with ``allow_zero``), finite unless ``allow_inf``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "non-negative" if allow_zero else "positive"
        raise TypeError(f"{name} must be a {kind} real number, got {value!r}.")
    value = float(value)
    bad = math.isnan(value) or value < 0 or (value == 0 and not allow_zero) or (
        math.isinf(value) and not allow_inf)
    if bad:
        bound = ">= 0" if allow_zero else "> 0"
        finite = "" if allow_inf else "finite and "
        raise ValueError(f"{name} must be {finite}{bound}, got {value!r}.")
    return value


def check_tol(value, name="tol"):
    """A relative tolerance in the open interval (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, 1), got {value!r}.")
    value = float(value)
    if not (0.0 < value < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}.")
    return value


def check_targets(y, n, name="y"):
    """Regression targets: a finite real array of shape ``(n,)`` or ``(n, k)``, as float64."""
    if y is None:
        raise TypeError(f"{name} must be an array of shape ({n},) or ({n}, k), got None.")
    arr = check_real_dtype(y, name, allow_bool=True)
    if arr.ndim not in (1, 2) or arr.shape[0] != n or (arr.ndim == 2 and arr.shape[1] == 0):
        raise ValueError(f"{name} must have shape ({n},) or ({n}, k) with n = {n} training "
                         f"points, got {arr.shape}.")
    return check_finite(np.asarray(arr, dtype=np.float64), name)
