"""What every engine shares: the overflow check of the per-row recursion."""
from __future__ import annotations

import numpy as np

__all__ = ["check_rows_finite"]


def check_rows_finite(q, ntk, layer=None):
    """Raise ``OverflowError`` if a row's layer variances ``q`` or NTK diagonal overflowed.

    ``q``: ``(n, L + 1)`` variances (or ``(n,)`` of one ``layer``), ``ntk``: ``(n,)``.
    """
    qf = np.isfinite(q)
    if qf.ndim == 2:
        qf = qf.all(axis=1)
    ok = qf & np.isfinite(ntk)
    if ok.all():
        return
    bad = int(np.argmax(~ok))
    where = f"row {bad}" if layer is None else f"row {bad}, layer {layer}"
    vals = q[bad].tolist()[:5] if np.ndim(q) == 2 else q[bad]
    raise OverflowError(f"the kernel overflows float64 ({where}: variance(s) {vals!r}); "
                        "reduce depth, w_std or the input scale.")
