"""Shared fixtures: one local Ray runtime for every integration test of the session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 4 logical CPUs (see recicl.raycluster), shut down at the end."""
    import ray
    import ray.data

    from recicl.config import RayConfig
    from recicl.raycluster import ensure_ray

    ensure_ray(RayConfig(num_cpus=4))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    yield ray
    ray.shutdown()
