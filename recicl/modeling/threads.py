"""How many threads torch runs the model with, wherever it runs: set from the CPUs the actor holds.

Ray starts every actor with ``OMP_NUM_THREADS`` set to its CPU request rounded down (at least 1),
and torch takes its intra-op thread count from that variable: a Serve replica with
``num_cpus: 0.5`` ran Gemma on **one** thread on any machine (issue "The real model at the speed
of the hardware"). So each place that runs a model (Serve replica, scoring actor, Ray Train
worker, embedding actor) calls :func:`apply_torch_threads` once, with its allotment — the CPUs it
asked Ray for, or, when Ray assigned it none, the machine's cores — unless ``model.num_threads``
says otherwise, and logs the choice, so that a slow model is one log line away from its cause.
"""

from __future__ import annotations

import logging
import math
import os

log = logging.getLogger(__name__)


def assigned_cpus() -> float | None:
    """The CPUs Ray assigned to the current worker or actor (None outside Ray, or none)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # outside a worker the context has no resources
        return None
    return float(cpus) if cpus else None


def torch_threads(configured: int | None, allotment: float | None) -> int:
    """``configured`` when set; else the allotment rounded up (a replica holding 1.5 CPUs
    runs 2 threads: a fractional request is how a model replica is packed beside a light,
    mostly idle ingress, not a wish for fewer threads); else the machine's cores (an actor that
    asked Ray for no CPUs, e.g. a GPU replica, still has the host's cores for its CPU work)."""
    if configured:
        return int(configured)
    if allotment:
        return max(1, math.ceil(allotment - 1e-9))
    return max(1, os.cpu_count() or 1)


def apply_torch_threads(
    where: str, configured: int | None = None, allotment: float | None = None
) -> int:
    """Set torch's intra-op threads for the model running ``where`` and log it; returns the
    count. ``allotment``: the CPUs this process may use (None: those Ray assigned it)."""
    import torch

    if allotment is None:
        allotment = assigned_cpus()
    threads = torch_threads(configured, allotment)
    torch.set_num_threads(threads)
    source = "model.num_threads" if configured else f"CPU allotment {allotment}"
    log.info("%s: torch runs the model on %d threads (%s)", where, threads, source)
    print(f"[recicl] {where}: torch threads {threads} ({source})", flush=True)
    return threads
