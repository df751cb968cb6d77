"""Perturbed in-context samples (recicl/data/perturb.py): each perturbation does what it says on
a hand-made sample, none ever shows the target or a later event, and the draws are seeded by the
sample id (the same in every run and batching, and not the rows training reads first)."""

from __future__ import annotations

from collections import Counter
from typing import Any, get_args

import numpy as np
import pyarrow as pa
import pytest

from recicl.config import PerturbationName, PerturbConfig, build_config
from recicl.data.perturb import PRESETS, perturb_row, perturb_table
from recicl.data.samples_folder import sample_keys
from recicl.data.schema import SAMPLES

T0 = 1_700_000_000


def _row(user: str, k: int, demos: int = 8, history: int = 10, ts: int | None = None) -> dict:
    ts = T0 + 1000 * k if ts is None else ts
    return {
        "sample_id": f"{user}#{k}",
        "user_id": user,
        "item_id": f"target-{user}-{k}",
        "timestamp": ts,
        "period": k % 3,
        "label": 1,
        "history": [f"h{j}" for j in range(history)],
        "demos": [
            {
                "item_id": f"{user}-d{j}",
                "label": j % 2,
                "timestamp": ts - 100 + j,
                "history": [f"h{j}"],
            }
            for j in range(demos)
        ],
    }


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _ids(row: dict[str, Any]) -> list[str]:
    return [d["item_id"] for d in row["demos"]]


def test_label_flip_flips_exactly_its_share_and_nothing_else() -> None:
    row = _row("u", 1)
    out = perturb_row(row, PerturbConfig(share=1, label_flip=0.25), _rng())
    changed = [a["label"] != b["label"] for a, b in zip(row["demos"], out["demos"], strict=True)]
    assert sum(changed) == 2  # 25 % of 8, exactly
    assert _ids(out) == _ids(row) and out["history"] == row["history"]
    assert row["demos"][0]["label"] == 0  # the input row is not changed in place
    assert [d["label"] for d in row["demos"]] == [j % 2 for j in range(8)]


def test_demo_dropout_keeps_the_rest_in_time_order() -> None:
    row = _row("u", 1)
    out = perturb_row(row, PerturbConfig(share=1, demo_dropout=0.5), _rng())
    kept = _ids(out)
    assert len(kept) == 4 and kept == [i for i in _ids(row) if i in kept]


def test_shuffle_reorders_the_same_demonstrations_with_their_labels() -> None:
    row = _row("u", 1)
    orders = {tuple(_ids(perturb_row(row, PerturbConfig(share=1, shuffle=True), _rng(s))))
              for s in range(5)}  # fmt: skip
    assert len(orders) > 1 and all(sorted(o) == sorted(_ids(row)) for o in orders)
    out = perturb_row(row, PerturbConfig(share=1, shuffle=True), _rng(1))
    labels = {d["item_id"]: d["label"] for d in row["demos"]}
    assert all(d["label"] == labels[d["item_id"]] for d in out["demos"])


def test_history_drop_keeps_a_subsequence() -> None:
    row = _row("u", 1)
    out = perturb_row(row, PerturbConfig(share=1, history_drop=0.3), _rng())
    assert len(out["history"]) == 7
    assert out["history"] == [h for h in row["history"] if h in out["history"]]
    assert out["demos"] == row["demos"]


def test_foreign_demonstrations_come_from_another_user_and_before_the_target() -> None:
    row = _row("me", 5)
    mine_too = _row("me", 9)  # same user: never a donor
    later = _row("late", 0, ts=row["timestamp"] + 10_000)  # every demo after my target
    mixed = _row("other", 0, ts=row["timestamp"] + 50)  # demos at ts-50..ts-43: before mine
    out = perturb_row(row, PerturbConfig(share=1, foreign_demos=1.0), _rng(),
                      donors=[mine_too, later, mixed])  # fmt: skip
    assert all(i.startswith("other-") for i in _ids(out)), _ids(out)
    assert all(d["timestamp"] < row["timestamp"] for d in out["demos"])
    assert len(out["demos"]) == len(row["demos"])
    # no donor with anything earlier: the sample keeps its own demonstrations
    alone = perturb_row(row, PerturbConfig(share=1, foreign_demos=1.0), _rng(),
                        donors=[mine_too, later])  # fmt: skip
    assert alone["demos"] == row["demos"]


def _table(users: int = 40, per_user: int = 10) -> pa.Table:
    rows = [_row(f"u{u}", k, ts=T0 + 1000 * k + u) for u in range(users) for k in range(per_user)]
    return pa.Table.from_pylist(rows, schema=SAMPLES)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_no_perturbation_shows_the_target_or_a_later_event(name: str) -> None:
    table = _table()
    out = perturb_table(table, PRESETS[name], seed=3)
    assert out.schema == table.schema and out["sample_id"] == table["sample_id"]
    assert out["label"] == table["label"] and out["item_id"] == table["item_id"]
    for before, after in zip(table.to_pylist(), out.to_pylist(), strict=True):
        assert all(d["timestamp"] < after["timestamp"] for d in after["demos"])
        assert after["item_id"] not in _ids(after)
        assert set(after["history"]) <= set(before["history"])


def test_the_share_is_drawn_by_sample_id_apart_from_the_training_order() -> None:
    table = _table(users=100)
    spec = PerturbConfig(share=0.3, label_flip=1.0)
    out = perturb_table(table, spec, seed=7)
    changed = np.array(
        [a["demos"] != b["demos"] for a, b in zip(table.to_pylist(), out.to_pylist(), strict=True)]
    )
    assert 0.25 < changed.mean() < 0.35
    # the same rows, perturbed the same way, in another run and in other batches
    assert perturb_table(table, spec, seed=7) == out
    halves = [perturb_table(table.slice(0, 500), spec, 7), perturb_table(table.slice(500), spec, 7)]
    assert pa.concat_tables(halves) == out
    assert perturb_table(table, spec, seed=8) != out
    # training reads rows by sample_keys(ids, seed): the perturbed ones are spread through it
    order = np.argsort(sample_keys(table["sample_id"].to_numpy(zero_copy_only=False), 7))
    ranks = np.empty(len(order), dtype=int)
    ranks[order] = np.arange(len(order))
    assert 0.4 < ranks[changed].mean() / len(order) < 0.6


def test_only_the_given_periods_are_perturbed() -> None:
    table = _table()
    out = perturb_table(table, PerturbConfig(share=1.0, label_flip=1.0), 0, periods=[0, 1])
    periods = Counter()
    for a, b in zip(table.to_pylist(), out.to_pylist(), strict=True):
        if a["demos"] != b["demos"]:
            periods[a["period"]] += 1
    assert set(periods) == {0, 1}


def test_the_config_is_off_by_default_and_active_only_with_a_share_and_a_change() -> None:
    assert not build_config({}).train.perturb.active
    assert not PerturbConfig(share=1.0).active
    assert not PerturbConfig(label_flip=0.5).active
    assert PerturbConfig(share=0.5, shuffle=True).active
    table = _table(users=3)
    assert perturb_table(table, PerturbConfig(label_flip=0.5), seed=0) is table
    chosen = build_config({"experiment": {"perturbations": ["flip25", "foreign"]}})
    assert chosen.experiment.perturbations == ["flip25", "foreign"]
    assert set(PRESETS) == set(get_args(PerturbationName))  # every name the config accepts
