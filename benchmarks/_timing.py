"""The one timing helper of the benchmarks (scripts in this folder import it by name)."""
import time


def best_of(f, repeats, warmup=False):
    """``(min seconds, last result)`` of ``repeats`` calls of ``f``; ``warmup``: one untimed
    call first (loads or compiles outside the timing)."""
    if warmup:
        f()
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out
