"""benchmarks/bench_blend.py: the fixed logit blend of two rows' per-sample scores."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from benchmarks.bench_blend import blend_report


def _rows(scores: np.ndarray, labels: np.ndarray, ids: list[str] | None = None) -> pa.Table:
    n = len(scores)
    return pa.table(
        {
            "sample_id": ids or [f"s{k:03d}" for k in range(n)],
            "period": np.repeat([6, 7], n // 2),
            "user_id": [f"u{k % 5}" for k in range(n)],
            "label": labels,
            "score": scores,
        }
    )


def test_two_rows_that_know_different_things_blend_above_both() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    half = labels.astype(float) - 0.5
    # each row sees the label through its own independent noise
    first = 1 / (1 + np.exp(-(half + rng.normal(0, 1.0, 400))))
    second = 1 / (1 + np.exp(-(half + rng.normal(0, 1.0, 400))))
    report = blend_report(_rows(first, labels), _rows(second, labels))
    for period in ("6", "7"):
        best = max(
            report["first"]["periods"][period]["auc"], report["second"]["periods"][period]["auc"]
        )
        assert report["blend"]["periods"][period]["auc"] > best


def test_a_row_blended_with_itself_ranks_as_it_did() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 100)
    scores = rng.random(100)
    report = blend_report(_rows(scores, labels), _rows(scores, labels))
    assert report["blend"]["overall"]["auc"] == pytest.approx(report["first"]["overall"]["auc"])


def test_rows_of_different_draws_are_refused() -> None:
    labels = np.array([0, 1, 0, 1])
    other = ["a", "b", "c", "d"]
    with pytest.raises(SystemExit, match="different samples"):
        blend_report(_rows(np.full(4, 0.5), labels), _rows(np.full(4, 0.5), labels, other))


def test_a_blended_row_keeps_the_llm_scores_as_its_no_blend_row(tmp_path) -> None:
    """The streaming run keeps a train.blend variant's served (blended) scores as
    ``<variant>.parquet`` and the same model's own as ``<variant>~no-blend.parquet``, which
    bench_blend.py then reads like any row (e.g. ``--rows recicl~no-blend,logistic``)."""
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from benchmarks.bench_blend import find_scores
    from recicl.experiments.streaming import StreamingExperiment

    rng = np.random.default_rng(1)
    table = _rows(rng.random(20), rng.integers(0, 2, 20)).append_column(
        "llm_score", pa.array(rng.random(20))
    )
    shuffled = table.take(list(range(19, -1, -1)))
    StreamingExperiment._keep_scores(SimpleNamespace(output=tmp_path), "recicl", shuffled)
    kept = pq.read_table(find_scores(tmp_path, "recicl"))
    alone = pq.read_table(find_scores(tmp_path, "recicl~no-blend"))
    assert kept["sample_id"] == table["sample_id"] == alone["sample_id"]  # sorted by sample
    np.testing.assert_array_equal(kept["score"].to_numpy(), table["score"].to_numpy())
    np.testing.assert_array_equal(alone["score"].to_numpy(), table["llm_score"].to_numpy())
    assert alone.column_names == kept.column_names  # period, user and label beside each
