"""Few-shot training subsets (train.max_train_samples): seeded, nested, per-period aware."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recicl.train.data import choose_train_subset, train_subset_size


@pytest.fixture()
def samples(tmp_path: Path) -> Path:
    for period in range(3):
        folder = tmp_path / "samples" / f"period={period}"
        folder.mkdir(parents=True)
        ids = [f"u{u}#{period * 100 + k}" for u in range(10) for k in range(10)]
        pq.write_table(pa.table({"sample_id": ids}), folder / "part-0.parquet")
    return tmp_path


def test_subset_size() -> None:
    assert train_subset_size(None, 500) == 500
    assert train_subset_size(16, 500) == 16
    assert train_subset_size(1000, 500) == 500
    assert train_subset_size(0.1, 500) == 50
    assert train_subset_size(0.001, 500) == 1  # never an empty training set


def test_subsets_are_seeded_nested_and_from_the_training_periods(samples: Path) -> None:
    small = choose_train_subset(samples, [0, 1], 16, seed=3)
    large = choose_train_subset(samples, [0, 1], 64, seed=3)
    assert small is not None and large is not None
    assert len(small) == 16 and len(large) == 64 and len(set(large)) == 64
    assert set(small) <= set(large)  # TALLRec's 16 ⊂ 64 ⊂ 256: a learning curve, not noise
    np.testing.assert_array_equal(small, choose_train_subset(samples, [0, 1], 16, seed=3))
    assert set(small) != set(choose_train_subset(samples, [0, 1], 16, seed=4))
    periods = {int(s.split("#")[1]) // 100 for s in large}
    assert periods <= {0, 1} and len(periods) == 2  # drawn across the training periods
    assert len(choose_train_subset(samples, [0, 1], 0.1, seed=0)) == 20
    assert choose_train_subset(samples, [0, 1], None, seed=0) is None
    assert choose_train_subset(samples, [2], 500, seed=0) is None  # asks for more than there is


def test_few_shot_rows_are_named_by_count_or_share():
    from recicl.experiments.streaming import few_shot_name

    assert few_shot_name("recicl", 16) == "recicl@16"
    assert few_shot_name("recicl", 0.1) == "recicl@10%"
    assert few_shot_name("tallrec", 0.125) == "tallrec@12.5%"
    assert few_shot_name("recicl", 256.0) == "recicl@256"  # a whole float is a count
