"""The LR schedule (recicl.train.schedule): warm-up and decay factors at specific steps, and the
torch scheduler both strategies build from it, including its checkpoint round trip."""

from __future__ import annotations

import itertools

import pytest
import torch

from recicl.config import build_config
from recicl.train.schedule import build_lr_scheduler, lr_lambda, warmup_steps_for


def test_warmup_length_rounds_up_and_zero_ratio_means_none() -> None:
    assert warmup_steps_for(16, 0.25) == 4
    assert warmup_steps_for(10, 0.05) == 1  # 0.5 steps → one warm-up step, not none
    assert warmup_steps_for(10, 0.0) == 0


def test_linear_warms_up_from_a_nonzero_lr_then_decays_without_a_zero_step() -> None:
    factor = lr_lambda(total_steps=16, warmup_steps=4)
    assert [factor(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]  # peak on warm-up's end
    assert factor(5) == pytest.approx(11 / 12)  # (16 - 5) / (16 - 4)
    assert factor(15) == pytest.approx(1 / 12)  # the last step still learns
    decay = [factor(s) for s in range(4, 16)]
    assert all(a > b for a, b in itertools.pairwise(decay))


def test_constant_keeps_the_peak_after_warmup() -> None:
    factor = lr_lambda(10, 2, "constant")
    assert [factor(s) for s in range(10)] == [0.5] + [1.0] * 9


def test_degenerate_lengths() -> None:
    assert lr_lambda(5, 0)(0) == 1.0  # no warm-up: the peak from the first step
    assert lr_lambda(3, 10)(2) == 1.0  # warm-up capped at total - 1: one step at the peak
    assert lr_lambda(0, 0)(0) == 1.0  # an empty plan divides by nothing
    with pytest.raises(ValueError, match="schedule"):
        lr_lambda(10, 2, "cosine")


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_scheduler_sets_the_lr_each_optimizer_step_uses() -> None:
    tc = build_config({"train": {"lr": 5e-3, "warmup_ratio": 0.25}}).train
    optimizer = _optimizer(tc.lr)
    scheduler = build_lr_scheduler(optimizer, 16, tc)
    used = []
    for _ in range(16):
        used.append(optimizer.param_groups[0]["lr"] / tc.lr)
        optimizer.step()
        scheduler.step()
    assert used == pytest.approx([lr_lambda(16, 4)(s) for s in range(16)])
    assert used[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_scheduler_state_is_the_step_counter_and_resumes_exactly() -> None:
    tc = build_config({"train": {"lr": 1e-3, "warmup_ratio": 0.2, "lr_schedule": "linear"}}).train
    optimizer = _optimizer(tc.lr)
    scheduler = build_lr_scheduler(optimizer, 10, tc)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [None]  # a plain function: checkpoints hold no schedule copy

    resumed_optimizer = _optimizer(tc.lr)
    resumed = build_lr_scheduler(resumed_optimizer, 10, tc)
    resumed_optimizer.load_state_dict(optimizer.state_dict())  # what a checkpoint restores
    resumed.load_state_dict(state)
    for _ in range(6):
        assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(
            optimizer.param_groups[0]["lr"]
        )
        for opt, sched in ((optimizer, scheduler), (resumed_optimizer, resumed)):
            opt.step()
            sched.step()
