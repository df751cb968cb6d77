"""Robust in-context tuning (LRGD): the consistency loss, the anchor penalty, the stages' LR
schedule and config, and the perturbed twins training encodes beside the clean contexts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from recicl.config import ConfigError, PerturbConfig, build_config
from recicl.data.perturb import perturb_table, with_twins
from recicl.data.schema import SAMPLES
from recicl.train.data import _encode_twins
from recicl.train.loss import StageObjective, anchor_penalty, consistency_divergence
from recicl.train.schedule import lr_lambda, stage_starts, staged_lr_lambda, warmup_steps_for
from tests.unit.test_perturb import _row

FLIPS = PerturbConfig(share=0.5, label_flip=0.5)
ROBUST = {
    "max_steps": 10,
    "lr": 1e-4,
    "perturb": {"share": 0.5, "label_flip": 0.5},
    "consistency_weight": 1.0,
    "anchor_weight": 0.01,
}


# -- the loss's parts -----------------------------------------------------------------------------


def test_consistency_is_zero_for_the_same_prediction_and_grows_with_disagreement() -> None:
    clean = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    assert float(consistency_divergence(clean, clean.clone())) == pytest.approx(0.0, abs=1e-7)
    near = consistency_divergence(clean, clean + torch.tensor([[0.0, 0.5], [0.0, -0.5]]))
    far = consistency_divergence(clean, clean + torch.tensor([[0.0, 3.0], [0.0, -3.0]]))
    assert 0.0 < float(near) < float(far) <= math.log(2)
    # opposite certainties: the bound ln 2, where KL would have grown without limit
    certain = torch.tensor([[-30.0, 30.0]])
    assert float(consistency_divergence(certain, -certain)) == pytest.approx(math.log(2), rel=1e-4)
    assert float(consistency_divergence(clean[:0], clean[:0])) == 0.0


def test_consistency_pulls_the_twin_and_leaves_the_clean_prediction_alone() -> None:
    clean = torch.tensor([[0.0, 1.0]], requires_grad=True)
    twin = torch.tensor([[1.0, 0.0]], requires_grad=True)
    consistency_divergence(clean, twin).backward()
    assert clean.grad is None  # the clean context is the target
    assert twin.grad is not None and float(twin.grad[0, 1] - twin.grad[0, 0]) < 0  # towards Yes


def test_the_anchor_penalty_pulls_each_weight_back_by_its_change() -> None:
    params = [torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.zeros(4))]
    start = [p.detach().float().clone() for p in params]
    assert float(anchor_penalty(params, start).detach()) == 0.0
    with torch.no_grad():
        params[0][0, 0] += 0.5
        params[1][2] -= 2.0
    penalty = anchor_penalty(params, start)
    assert float(penalty.detach()) == pytest.approx(0.5 * (0.25 + 4.0))
    penalty.backward()
    assert float(params[0].grad[0, 0]) == pytest.approx(0.5)  # w - w0, whatever the size
    assert float(params[1].grad[2]) == pytest.approx(-2.0)
    assert float(params[0].grad.abs().sum()) == pytest.approx(0.5)  # unchanged weights: 0


def test_the_anchor_pull_reaches_bf16_weights_in_their_dtype() -> None:
    weight = torch.nn.Parameter(torch.full((3,), 1.0, dtype=torch.bfloat16))
    start = [weight.detach().float().clone() + torch.tensor([0.0, 0.25, -0.5])]
    anchor_penalty([weight], start).backward()
    assert weight.grad is not None and weight.grad.dtype == torch.bfloat16
    assert weight.grad.float().tolist() == [0.0, -0.25, 0.5]


# -- stages: schedule and config -----------------------------------------------------------------


def test_one_stage_keeps_the_schedule_it_always_had() -> None:
    tc = build_config({"train": {"warmup_ratio": 0.1, "max_steps": 50}}).train
    before = lr_lambda(50, warmup_steps_for(50, 0.1))
    assert stage_starts(tc, 50) == [0]
    assert [staged_lr_lambda(tc, 50)(s) for s in range(50)] == [before(s) for s in range(50)]


def test_each_stage_warms_up_and_decays_to_its_own_peak() -> None:
    tc = build_config(
        {
            "train": {
                "lr": 1e-3,
                "warmup_ratio": 0.25,
                "max_steps": 8,
                "stages": [{**ROBUST, "warmup_ratio": 0.5, "max_steps": 4}],
            }
        }
    ).train
    assert stage_starts(tc, 12) == [0, 8]
    factor = staged_lr_lambda(tc, 12)
    first = [factor(s) for s in range(8)]
    second = [factor(s) * 1e-3 for s in range(8, 12)]
    assert first[:2] == [0.5, 1.0] and first[-1] < first[2]  # stage 1: its own warm-up, decay
    assert second[0] == pytest.approx(0.5e-4) and second[1] == pytest.approx(1e-4)  # 2 warm-up
    assert second[2] > second[3] > 0  # then its own decay, never to zero


@pytest.mark.parametrize(
    ("train", "match"),
    [
        (
            {"perturb": {"share": 0.5, "shuffle": True}, "stages": [ROBUST]},
            "same `perturb` settings",
        ),
        ({"consistency_weight": 1.0}, r"train.consistency_weight is set but train.perturb"),
        (
            {"stages": [{**ROBUST, "perturb": {"share": 0.5}}]},
            r"train.stages\[0\].consistency_weight is set but train.stages\[0\].perturb",
        ),
        ({"zero_stage": 3, "stages": [ROBUST]}, r"stages\[0\].anchor_weight needs whole weights"),
        ({"instructions": "train.json", "stages": [ROBUST]}, "no in-context samples"),
        ({"stages": [{**ROBUST, "name": "Robust Stage!"}]}, "name"),
        ({"stages": [{"max_steps": 5}]}, "lr"),
        ({"stages": [ROBUST, ROBUST]}, r"names \['robust', 'robust'\] repeat"),
    ],
)
def test_stage_settings_that_cannot_work_are_refused(train: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_config({"train": train})


def test_the_stage_objectives() -> None:
    tc = build_config(
        {"train": {"perturb": {"share": 0.5, "label_flip": 0.5}, "stages": [ROBUST]}}
    ).train
    first, robust = StageObjective.of(tc)
    assert (first.name, first.replaces, first.pairs) == ("tune", True, False)  # as before
    assert (robust.name, robust.replaces, robust.pairs) == ("robust", False, True)
    assert tc.perturbation == FLIPS
    assert build_config({}).train.perturbation is None


# -- twins ----------------------------------------------------------------------------------------


def _table() -> pa.Table:
    rows = [_row(f"u{u}", k) for u in range(20) for k in range(6)]
    return pa.Table.from_pylist(rows, schema=SAMPLES)


def test_twins_are_the_perturbed_contexts_beside_the_clean_ones() -> None:
    table = _table()
    out = with_twins(table, FLIPS, seed=5, periods=[0, 1])
    assert out.select(table.column_names) == table  # the clean contexts, untouched
    perturbed = perturb_table(table, FLIPS, seed=5, periods=[0, 1])
    assert out["twin_demos"] == perturbed["demos"] and out["twin_history"] == perturbed["history"]
    has_twin = out["has_twin"].to_numpy(zero_copy_only=False)
    changed = np.array(
        [
            a != b
            for a, b in zip(table["demos"].to_pylist(), perturbed["demos"].to_pylist(), strict=True)
        ]
    )
    assert np.array_equal(has_twin, changed)  # every chosen row's flips change its demos
    assert 0.25 < has_twin.mean() < 0.55  # half of periods 0 and 1 (2/3 of the rows)
    assert not has_twin[table["period"].to_numpy() == 2].any()  # not asked for: no twin
    off = with_twins(table, PerturbConfig(), seed=5)
    assert not off["has_twin"].to_numpy(zero_copy_only=False).any()


class _CountingBuilder:
    """Encodes a row as its demonstration labels (enough to tell a twin from its clean row)."""

    def encode_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.empty(len(batch["demos"]), dtype=object)
        answers = np.empty(len(batch["demos"]), dtype=object)
        for row, demos in enumerate(batch["demos"]):
            ids[row] = np.asarray([2 + d["label"] for d in demos], dtype=np.int32)
            answers[row] = np.arange(len(demos), dtype=np.int32)
        return {
            "input_ids": ids,
            "demo_answers": answers,
            "length": np.array([len(i) for i in ids]),
        }


def test_encoded_twins_line_up_with_their_rows_and_rows_without_one_are_empty() -> None:
    table = with_twins(_table(), FLIPS, seed=5)
    batch = {name: np.asarray(table[name].to_pylist(), dtype=object) for name in table.column_names}
    batch["has_twin"] = table["has_twin"].to_numpy(zero_copy_only=False)
    out = _encode_twins(_CountingBuilder(), batch)
    for row in range(table.num_rows):
        if batch["has_twin"][row]:
            expected = [2 + d["label"] for d in batch["twin_demos"][row]]
            assert out["twin_input_ids"][row].tolist() == expected
            assert out["twin_length"][row] == len(expected) == 8
        else:
            assert out["twin_length"][row] == 0 and len(out["twin_input_ids"][row]) == 0
            assert len(out["twin_demo_answers"][row]) == 0
