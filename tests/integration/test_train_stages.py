"""LRGD's two-stage optimisation end to end on CPU: one Ray Train + DeepSpeed run whose second
stage tunes on perturbed twins (consistency loss) anchored to the first stage's weights, through
a fault and a restart. The data, tiny model and helpers are test_train.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration import test_train
from tests.integration.test_train import (
    RESTARTABLE_ZERO2,
    fault_once_at,
    load_adapter,
    make_config,
    metric_history,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

assets = test_train.assets  # the fixture: test_train.py's tiny model and samples folder


ROBUST_STAGE = {
    "name": "robust",
    "max_steps": 4,
    "lr": 2e-3,
    "perturb": {"share": 1.0, "label_flip": 0.5, "shuffle": True},
    "consistency_weight": 1.0,
    "anchor_weight": 0.1,
}


def _by_lora_name(tensors: dict[str, Any]) -> dict[str, np.ndarray]:
    """LoRA tensors keyed alike whether read from the module (``...lora_A.default.weight``) or
    from a saved adapter (``...lora_A.weight``)."""
    return {
        key.replace(".default", ""): np.asarray(value, dtype=np.float32)
        for key, value in tensors.items()
        if "lora_" in key
    }


def test_two_stages_one_run_the_second_from_the_firsts_weights(
    ray_local, assets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LRGD's two-stage optimisation in one run: 4 steps of plain tuning, then 4 robustness
    steps on perturbed twins (consistency loss) anchored to stage 1's weights; rank 0 dies at
    step 6 and the resumed attempt restores the anchor from the checkpoint. One run, one
    version, both stages and the loss's parts in its metrics."""
    import torch

    from recicl.train import train

    marker = fault_once_at(6, tmp_path, monkeypatch)
    cfg = make_config(
        tmp_path,
        assets,
        max_steps=4,
        stages=[ROBUST_STAGE],
        checkpoint_every_steps=1,
        **RESTARTABLE_ZERO2,
    )
    result = train(cfg)

    assert marker.is_file(), "the fault hook never fired"
    assert result.plan["total_steps"] == result.metrics["step"] == 8
    assert result.version == "1"
    stages = metric_history(cfg, result.run_id, "stage")
    assert stages == [(s, 0.0) for s in range(1, 5)] + [(s, 1.0) for s in range(5, 9)]
    # the LR: stage 1's warm-up (25% of 4 steps) and decay at 5e-3, then stage 2's own peak
    lrs = dict(metric_history(cfg, result.run_id, "lr"))
    assert lrs[1] == pytest.approx(5e-3) and lrs[5] == pytest.approx(2e-3)
    assert lrs[8] < lrs[5]
    consistency = metric_history(cfg, result.run_id, "loss_consistency")
    assert [s for s, _ in consistency] == [5, 6, 7, 8]
    assert all(0.0 <= v <= np.log(2) for _, v in consistency), consistency
    # the random model barely reads the (flipped) labels at first; it does once it has learned
    assert consistency[-1][1] > 1e-6, consistency
    anchor = dict(metric_history(cfg, result.run_id, "loss_anchor"))
    assert sorted(anchor) == [5, 6, 7, 8]
    # stage 2 starts from stage 1's weights: no distance at its first step, then it moves
    assert anchor[5] == 0.0 and all(anchor[s] > 0.0 for s in (6, 7, 8)), anchor
    assert len(metric_history(cfg, result.run_id, "loss_answer")) == 8

    root = Path(result.checkpoint_path).parent
    stage_one = _by_lora_name(load_adapter(root / "checkpoint_step0000004" / "adapter"))
    for step in (5, 8):  # the anchor in stage 2's checkpoints, before and after the restart
        held = torch.load(root / f"checkpoint_step{step:07d}" / "anchor.pt", weights_only=True)
        assert held["stage"] == 1
        anchor_weights = _by_lora_name({k: v.numpy() for k, v in held["tensors"].items()})
        assert sorted(anchor_weights) == sorted(stage_one)
        assert all(np.allclose(anchor_weights[k], stage_one[k], atol=1e-6) for k in stage_one)
    assert not (root / "checkpoint_step0000004" / "anchor.pt").exists()  # stage 1: no anchor
    final = _by_lora_name(load_adapter(root / "checkpoint_step0000008" / "adapter"))
    assert any(not np.allclose(final[k], stage_one[k]) for k in stage_one)
