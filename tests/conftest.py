"""Shared fixtures: one local Ray runtime for every integration test of the session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
#: Ray Train settings for the suite's Ray runtimes (this process's, inherited by the local raylet
#: and the controller actors it starts, and test_ray_job_submit's nodes). The controller looks at
#: its workers every 2 s by default, so a run returns up to ~5 s after its last step; the suite
#: runs dozens of few-step trainings, and a tighter poll costs nothing on a local runtime. The
#: preemption watcher (spot-node notices) is one more process per run with nothing to watch here.
RAY_TRAIN_TEST_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
for _key, _value in RAY_TRAIN_TEST_ENV.items():
    os.environ.setdefault(_key, _value)


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
