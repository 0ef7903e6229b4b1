"""Shared pytest configuration: hypothesis profiles, and ``tests/`` on ``sys.path``.

``ci`` (the default) is derandomized so that CI is reproducible; ``dev`` explores more.
Select with ``HYPOTHESIS_PROFILE=dev pytest``.

The shared helpers (``tolerances``, ``strategies``) and the oracles package (``oracles``) are
imported by absolute name from the test modules; pytest's default ``prepend`` import mode puts
``tests/`` on ``sys.path`` already, and the insertion below makes the same imports work under
``--import-mode=importlib`` too.
"""
import os
import sys

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.register_profile(
    "dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
