"""How many threads torch runs the model with, wherever it runs: set from the CPUs the actor holds.

Ray starts every actor with ``OMP_NUM_THREADS`` set to its CPU request rounded down (at least 1),
and torch takes its intra-op thread count from that variable: a Serve replica with
``num_cpus: 0.5`` ran Gemma on **one** thread on any machine (issue "The real model at the speed
of the hardware"). So each place that runs a model (Serve replica, scoring actor, Ray Train
worker, embedding actor) calls :func:`apply_torch_threads` once, with its allotment — the CPUs it
asked Ray for, or, when Ray assigned it none, the machine's cores — unless ``model.num_threads``
says otherwise, and logs the choice, so that a slow model is one log line away from its cause.

A process that serves a model from asyncio (the Serve replica) runs every model call in one
thread, :class:`ModelThread`: each OS thread that starts torch's parallel work gets an OpenMP
team of its own, and the count set in one thread does not hold in another.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

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


def use_torch_threads(threads: int) -> None:
    """Run torch on ``threads`` in the calling thread: OpenMP keeps the count per OS thread, and
    a thread started later begins at the process's ``OMP_NUM_THREADS`` (Ray sets it to an
    actor's whole CPUs: 1 for a replica holding 1.5), whatever ``torch.get_num_threads()`` says
    there."""
    import torch

    torch.set_num_threads(threads)


class ModelThread:
    """The one thread an asyncio process runs its model in, with torch's threads set there;
    loads run in a thread of their own that ends with them.

    Why one thread: every OS thread that starts torch's parallel work gets an OpenMP team of
    its own, and once the teams' threads outnumber the cores, libgomp stops spin-waiting
    between parallel regions, in every team. ``asyncio.to_thread`` hands calls to whichever of
    its pool's threads is free, and they live on. Measured on Gemma 3 270M, 2 cores, 20
    candidates and 24 events: 395 ms a request from one thread; 650 ms from every thread once a
    second thread had scored; 395 ms again when that thread ended. The served model took twice
    its in-process time (docs/performance.md). Why loads elsewhere: a version swap must not
    hold the requests scored meanwhile; its thread ends afterwards, and its team with it.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = self._thread("recicl-model")
        #: the threads torch work gets in that thread (OpenMP's count there): what to report
        self.threads_in_use = self._pool.submit(threads_in_use).result()

    def _thread(self, name: str) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            1, thread_name_prefix=name, initializer=use_torch_threads, initargs=(self.threads,)
        )

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in the model thread (calls queue: one runs at a time)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, call, *args)

    async def run_apart(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` (a load) in a thread of its own, which ends once it returns."""
        pool = self._thread("recicl-load")
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, call, *args)
        finally:
            pool.shutdown(wait=False)


def openmp_threads() -> int | None:
    """The OpenMP thread count that parallel work started from the calling thread gets (what
    oneDNN's matmuls use): the figure to report, where ``torch.get_num_threads()`` shows the
    process-wide setting. None where torch loaded no libgomp (macOS, or a build without it)."""
    omp = _libgomp()
    return int(omp.omp_get_max_threads()) if omp is not None else None


def threads_in_use() -> int:
    """The threads the calling thread's torch work gets: OpenMP's count where it can be read,
    else torch's setting."""
    import torch

    return openmp_threads() or torch.get_num_threads()


@functools.cache
def _libgomp() -> Any:
    import torch  # noqa: F401  (loads the libgomp torch ships)

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line), None)
    except OSError:
        return None
    return ctypes.CDLL(path) if path else None
