"""The contract between the training driver and its Ray Train workers.

The driver (:mod:`recicl.train.trainer`) computes a :class:`TrainPlan`; every worker runs a
:class:`recicl.train.recipe.TrainRecipe` against it; checkpoints carry a :class:`TrainerState`.
These pieces sit in their own module, below both the entry point (:mod:`recicl.train.loop`) and
the recipe, so that the recipe can use them without importing the module that imports it. It
stays free of torch and Ray imports so that the driver (and the CLI) import it cheaply.

Test-only fault hook: with ``RECICL_FAULT_AT_STEP=N`` (and ``RECICL_FAULT_MARKER=<file>``) rank 0
exits hard after optimizer step N (``RECICL_FAULT_DELAY_S`` later; by default 2.5 Ray Train
controller polls, at least 1 s), once: the marker file records that the fault happened, so the
restarted attempt runs through.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FAULT_STEP_ENV = "RECICL_FAULT_AT_STEP"
FAULT_MARKER_ENV = "RECICL_FAULT_MARKER"
FAULT_DELAY_ENV = "RECICL_FAULT_DELAY_S"
TRAINER_STATE_FILE = "trainer_state.json"
TRAIN_DATASET, VAL_DATASET = "train", "val"


@dataclass
class TrainPlan:
    """What the driver computed for the workers (same on every rank)."""

    total_steps: int
    steps_per_epoch: int
    micro_batches_per_epoch: int  # per rank, a multiple of grad_accum
    train_rows: int
    val_rows: int
    tracking_uri: str | None
    run_id: str | None
    run_name: str


@dataclass
class TrainerState:
    """Progress saved in every checkpoint (rank 0's copy is authoritative)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    micro_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    samples_seen: int = 0  # per rank
    best_val_auc: float | None = None
    last_val_auc: float | None = None


def maybe_fault(step: int, rank: int, run_name: str) -> None:
    """Test hook: die hard once at optimizer step N (see module docstring)."""
    target = os.environ.get(FAULT_STEP_ENV)
    if not target or rank != 0 or step != int(target):
        return
    marker = Path(
        os.environ.get(FAULT_MARKER_ENV) or Path(tempfile.gettempdir()) / f"recicl-fault-{run_name}"
    )
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"fault injected at step {step}\n")
    # Ray Train registers a reported checkpoint only when its controller next polls the workers
    # (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default): a worker dying right after
    # `report` can take that checkpoint with it. Wait past a few polls (5 s at the default), as a
    # crash some time after a checkpoint would.
    poll_seconds = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S") or 2.0)
    delay = float(os.environ.get(FAULT_DELAY_ENV) or max(1.0, 2.5 * poll_seconds))
    print(f"[recicl] {FAULT_STEP_ENV}: killing rank 0 at step {step} in {delay:g}s", flush=True)
    time.sleep(delay)
    os._exit(17)
