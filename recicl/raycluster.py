"""Connecting to Ray: one place decides between a cluster address and an embedded runtime."""

from __future__ import annotations

import logging
import os

import ray

from recicl.config import RayConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Connect to ``cfg.address`` / ``$RAY_ADDRESS``, or start a local runtime once.

    Locally we advertise at least 4 logical CPUs even on a 2-core machine: Ray Train's workers
    each hold a CPU for the whole run, and with only 2 logical CPUs the Ray Data tasks feeding
    them could never be scheduled (the run hangs). Oversubscribing logical CPUs is harmless.

    Idle worker processes are kept for 5 minutes instead of Ray's default of one second: each
    stage of a job (read+validate, shuffle, write, ...) otherwise starts on freshly spawned
    workers that import pyarrow/torch again, which measured at 2-3 s per stage on a 2-core
    machine (1M-event sample build: 18.6 s → 7.0 s once warm).

    The dashboard runs (on loopback only) because Ray Train's placement-group cleaner asks the
    State API, served by the dashboard, whether the train controller is alive; without it the
    cleaner logs a failure every second and, with another Ray instance on the same machine, can
    end up asking that one.
    """
    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    num_cpus = cfg.num_cpus or max(4, os.cpu_count() or 1)
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        _system_config={"idle_worker_killing_time_threshold_ms": 300_000},
        dashboard_host="127.0.0.1",
        configure_logging=True,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}}
        if not _has_gpu()
        else None,
    )


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
