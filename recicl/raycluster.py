"""Connecting to Ray: one place decides between a cluster address and an embedded runtime."""

from __future__ import annotations

import logging
import os

import ray

from recicl.config import RayConfig

log = logging.getLogger(__name__)

#: Ray Data's knob for the footer-reader actors of its Parquet listing (read by the driver each
#: time ``read_parquet`` builds a plan).
FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
CPUS_PER_FOOTER_ACTOR = 16
MAX_FOOTER_ACTORS = 32
_footer_actors_set: str | None = None  # the value this module put in the environment
#: Real cores of the machine when this process started an oversubscribed local runtime (see
#: :func:`local_core_limit`); None when connected to a cluster or not started here.
_local_cores: int | None = None


def ensure_ray(cfg: RayConfig | None = None, *, dashboard: bool = True) -> None:
    """Connect to ``cfg.address`` / ``$RAY_ADDRESS``, or start a local runtime once; then size
    Ray Data's Parquet listing for the cluster (:func:`size_parquet_listing`).

    Locally we advertise at least 4 logical CPUs even on a 2-core machine: Ray Train's workers
    each hold a CPU for the whole run, and with only 2 logical CPUs the Ray Data tasks feeding
    them could never be scheduled (the run hangs). Oversubscribing logical CPUs is harmless.

    Idle worker processes are kept for 5 minutes instead of Ray's default of one second: each
    stage of a job (read+validate, shuffle, write, ...) otherwise starts on freshly spawned
    workers that import pyarrow/torch again, a fixed cost per stage that dominates a small job
    on a small machine (measured: docs/performance.md).

    The dashboard runs (on loopback only) because Ray Train's placement-group cleaner asks the
    State API, served by the dashboard, whether the train controller is alive; without it the
    cleaner logs a failure every second and, with another Ray instance on the same machine, can
    end up asking that one. A process that never trains (``recicl samples build``) passes
    ``dashboard=False``: Ray then starts only a minimal head API process instead of the
    dashboard and its nine module processes, whose start-up a short command would pay for
    nothing (measured: docs/performance.md). Only the first call of a process decides; the flag
    changes nothing on a cluster.

    Settings that local workers need (``DS_ACCELERATOR``) are put in this process's environment,
    which the local raylet and its workers inherit, not in a job-level ``runtime_env``: a job
    runtime env makes the workers Ray prestarts during ``ray.init`` unusable for the job's tasks,
    so every task and actor waited for a fresh process instead.
    """
    cfg = cfg or RayConfig()
    if not ray.is_initialized():
        _connect(cfg, dashboard=dashboard)
    size_parquet_listing(cfg)


def local_core_limit() -> int | None:
    """The machine's real cores when this process started a local runtime that advertises more
    logical CPUs (see :func:`ensure_ray`), else None (a cluster: its CPUs are real).

    Jobs that need no Train workers (the sample build) bound their Ray Data concurrency by it:
    4 concurrent tasks on 2 cores only start twice the worker processes (each importing Ray,
    pyarrow and pandas, which spends the very CPU the tasks need) and contend for the same cores.
    """
    if _local_cores is None or not ray.is_initialized():
        return None
    logical = int(ray.cluster_resources().get("CPU", 0))
    return _local_cores if _local_cores < logical else None


def size_parquet_listing(cfg: RayConfig) -> int:
    """Size the actor pool Ray Data's Parquet reader starts on every read to list files.

    Ray 2.60's reader (DataSource V2) reads each file's footer on a pool of
    ``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`` actors, 32 by default, started afresh for every
    ``read_parquet`` execution: 32 new Python processes importing pyarrow and Ray. On a small
    machine their start-up, not the data, sets the time of a read (measured: docs/performance.md),
    and every sample build, tokenization and evaluation pays it. The pool only pays off when there
    are thousands of remote files to list, which comes with a large cluster, so it is sized by the
    cluster: ``ray.parquet_footer_actors``, else one actor per 16 CPUs, 1 to 32. A value the user
    put in the environment is left alone. Returns the size in force.
    """
    global _footer_actors_set
    current = os.environ.get(FOOTER_ACTORS_ENV)
    if current is not None and current != _footer_actors_set:
        return int(current)  # the user's own setting
    if cfg.parquet_footer_actors is not None:
        actors = cfg.parquet_footer_actors
    else:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        actors = max(1, min(MAX_FOOTER_ACTORS, cpus // CPUS_PER_FOOTER_ACTOR))
    _footer_actors_set = os.environ[FOOTER_ACTORS_ENV] = str(actors)
    return actors


def _connect(cfg: RayConfig, *, dashboard: bool) -> None:
    global _local_cores
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    cores = os.cpu_count() or 1
    num_cpus = cfg.num_cpus or max(4, cores)
    if not _has_gpu():
        # inherited by the local raylet and every worker it starts (see ensure_ray)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=dashboard,
        _system_config={"idle_worker_killing_time_threshold_ms": 300_000},
        dashboard_host="127.0.0.1",
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    _local_cores = cores


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
