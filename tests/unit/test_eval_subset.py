"""The capped evaluation subset (evaluate.max_samples, experiment.max_eval_samples): drawn by
sample id, so every build, row order and demonstration policy meets the same samples."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recicl.data.samples_folder import sample_keys
from recicl.evaluate.batch import subsample_per_period, subset_name


def _table(order: np.ndarray) -> pa.Table:
    periods = np.repeat([6, 7, 8], 40)
    ids = np.array([f"u{i % 13}:{i}:{p}" for i, p in enumerate(periods)], dtype=object)
    return pa.table({"sample_id": ids[order], "period": periods[order], "row": order})


def test_the_draw_depends_on_ids_not_on_row_order() -> None:
    written = _table(np.arange(120))
    reordered = _table(np.random.default_rng(5).permutation(120))
    first = subsample_per_period(written, 10, seed=3)
    second = subsample_per_period(reordered, 10, seed=3)
    assert set(first["sample_id"].to_pylist()) == set(second["sample_id"].to_pylist())
    for table in (first, second):
        counts = np.unique(table["period"].to_numpy(), return_counts=True)[1]
        assert counts.tolist() == [10, 10, 10]
    # chosen rows keep the order they had in the input
    assert second["row"].to_pylist() == [
        r for r in reordered["row"].to_pylist() if r in set(second["row"].to_pylist())
    ]


def test_the_draw_is_the_smallest_keys_of_each_period_and_the_seed_matters() -> None:
    table = _table(np.arange(120))
    ids = np.asarray(table["sample_id"].to_pylist(), dtype=object)
    periods = table["period"].to_numpy()
    keys = sample_keys(ids, 3)
    expected = set()
    for period in (6, 7, 8):
        rows = np.flatnonzero(periods == period)
        expected |= set(ids[rows[np.argsort(keys[rows])[:10]]])
    assert set(subsample_per_period(table, 10, seed=3)["sample_id"].to_pylist()) == expected
    other = set(subsample_per_period(table, 10, seed=4)["sample_id"].to_pylist())
    assert other != expected
    # a cap at or above a period's size keeps it whole; no cap keeps everything
    assert subsample_per_period(table, 40, seed=3).num_rows == 120
    assert subsample_per_period(table, None, seed=3) is table


def test_subset_names_never_match_the_positional_draw() -> None:
    """Evaluations cached in MLflow from the old draw by row position were tagged ``capN``: the
    promotion gate must not compare those with this draw's numbers."""
    assert subset_name(9) == "cap9-ids" and subset_name(None) == "all"
