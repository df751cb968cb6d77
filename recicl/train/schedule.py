"""The learning-rate schedule: linear warm-up, then linear decay or a constant peak.

Both strategies hand the same :func:`build_lr_scheduler` to their optimizer (DDP builds it directly,
DeepSpeed receives it as its ``lr_scheduler`` callable), so the schedule has one owner.

Why torch's ``LambdaLR`` with our own factor instead of transformers'
``get_linear_schedule_with_warmup``: that schedule's warm-up starts at factor ``0``, so the first
optimizer step has a learning rate of zero (a wasted step that still moves Adam's moment
estimates); ours starts at ``1 / warmup`` and reaches the peak *on* the last warm-up step. After
the warm-up both decay the same way, to ``1 / (total - warmup)`` at the last step. The factor is
a plain function (not a callable object) so that ``LambdaLR.state_dict`` stays the step counter
alone and checkpoints keep their contents.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from recicl.config import TrainConfig

SCHEDULES = ("linear", "constant")


def lr_lambda(
    total_steps: int, warmup_steps: int, schedule: str = "linear"
) -> Callable[[int], float]:
    """Factor of the peak LR at optimizer step ``s`` (0-based): linear warm-up over
    ``warmup_steps`` steps, then (``linear``) linear decay reaching 1/(total-warmup) at the last
    step (never a zero-LR step) or (``constant``) the peak LR to the end."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {schedule!r}; expected one of {SCHEDULES}")
    total_steps = max(1, total_steps)
    # at least one step after the warm-up, so the decay never divides by zero
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / (total_steps - warmup_steps))

    return factor


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length for ``train.warmup_ratio`` (rounded up: a ratio > 0 warms up >= 1 step)."""
    return math.ceil(total_steps * warmup_ratio) if warmup_ratio > 0 else 0


def stage_starts(tc: TrainConfig, total_steps: int) -> list[int]:
    """The optimizer step each stage starts at: ``[0]`` for one stage; with ``train.stages``,
    stage 1 takes what the later stages' ``max_steps`` leave of ``total_steps``."""
    starts = [0, total_steps - sum(stage.max_steps for stage in tc.stages)]
    for stage in tc.stages[:-1]:
        starts.append(starts[-1] + stage.max_steps)
    return starts[: len(tc.stages) + 1]


def staged_lr_lambda(tc: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Factor of ``train.lr`` at optimizer step ``s`` over every stage: each stage warms up
    and decays on its own (:func:`lr_lambda` over its own steps) to its own peak, so stage 2
    starts afresh instead of continuing stage 1's decay (one optimizer, one scheduler, one
    step counter: checkpoints and resume stay as they are)."""
    starts = stage_starts(tc, total_steps)
    ends = [*starts[1:], total_steps]
    peaks = [1.0, *(stage.lr / tc.lr for stage in tc.stages)]
    ratios = [tc.warmup_ratio, *(stage.warmup_ratio for stage in tc.stages)]
    factors = [
        lr_lambda(end - start, warmup_steps_for(end - start, ratio), tc.lr_schedule)
        for start, end, ratio in zip(starts, ends, ratios, strict=True)
    ]

    def factor(step: int) -> float:
        k = max(i for i, start in enumerate(starts) if start <= step or i == 0)
        return peaks[k] * factors[k](step - starts[k])

    return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, tc: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler both strategies step once per optimizer step (``train.lr_schedule``,
    ``train.warmup_ratio``, ``train.stages``) for a run of ``total_steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, staged_lr_lambda(tc, total_steps))
