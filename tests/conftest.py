"""Shared pytest configuration: hypothesis profiles.

``ci`` (the default) is derandomized so that CI is reproducible; ``dev`` explores more.
Select with ``HYPOTHESIS_PROFILE=dev pytest``.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.register_profile(
    "dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
