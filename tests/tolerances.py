"""The one tolerance policy of the test suite. A test that needs another tolerance says why.

* ``CLOSED_FORM_RTOL``: the accuracy contract (docs/conventions.md), float64 closed forms
  against a 50-digit reference, relative to ``max(|K|)`` of the Gram matrix.
* ``QUADRATURE_RTOL``: closed-form duals against 2-D numerical integration at 30+ digits.
* ``PSD_RTOL``: smallest eigenvalue >= -PSD_RTOL * largest (rounding of a symmetric eigensolver).
* ``MC_SIGMAS``: Monte Carlo comparisons pass within this many standard errors.
"""
CLOSED_FORM_RTOL = 1e-12
QUADRATURE_RTOL = 1e-12
PSD_RTOL = 1e-12
MC_SIGMAS = 4.0


def rel_err_vs_max(actual, expected):
    """max |actual - expected| / max |expected| (0 when both vanish)."""
    import numpy as np
    actual = np.asarray(actual, dtype=float)
    expected = np.asarray(expected, dtype=float)
    scale = np.max(np.abs(expected))
    diff = np.max(np.abs(actual - expected))
    if scale == 0:
        return float(diff)
    return float(diff / scale)


def tolerance(value, reason):
    """A tolerance other than the named policies above, with its justification.

    Every tolerance a test uses is either one of the constants of this module or goes
    through here, so that ``grep "tolerance("`` lists every exception together with why it
    is what it is (sample size, rounding count, quadrature order, a bound's slack, ...).

    >>> tolerance(1e-13, "row-block shape changes the BLAS rounding of X Y^T")
    1e-13
    """
    if not isinstance(reason, str) or len(reason.strip()) < 10:
        raise ValueError("tolerance() needs a reason: say why this value (>= 10 characters).")
    value = float(value)
    if not value > 0:
        raise ValueError(f"a tolerance must be > 0, got {value!r}.")
    return value


def mc_tolerance(std_error, sigmas=MC_SIGMAS):
    """Tolerance of a Monte Carlo comparison: ``sigmas`` standard errors of the estimate."""
    return float(sigmas) * float(std_error)
