"""Metric logging (recicl.train.tracking): which steps get rows, and every (metric, step) stored
exactly once per run, across a crash and the resumed attempt."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from recicl.train.tracking import MetricRow, MetricsLogger, MLflowSink


class ListSink:
    """An MLflow run in memory: what was stored, in order."""

    def __init__(self) -> None:
        self.stored: list[MetricRow] = []
        self.tags: dict[str, str] = {}
        self.fail_next = False

    def log(self, rows: Sequence[MetricRow]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("tracking server away")
        self.stored.extend(rows)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def last_steps(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for row in self.stored:
            last[row.key] = max(last.get(row.key, row.step), row.step)
        return last

    def history(self, key: str) -> list[tuple[int, float]]:
        return [(row.step, row.value) for row in self.stored if row.key == key]


def train_steps(logger: MetricsLogger, steps: range, epoch_end: int | None = None) -> None:
    """What the recipe logs: a row per due step, epoch metrics at the epoch's last step."""
    for step in steps:
        if logger.is_due(step):
            logger.add(step, loss=1.0 / step, lr=0.1)
        if step == epoch_end:
            logger.add(step, epoch_padding_fraction=0.2, val_auc=0.7, val_logloss=None)


def test_is_due_every_n_steps() -> None:
    logger = MetricsLogger(ListSink(), every_steps=3)
    assert [s for s in range(1, 10) if logger.is_due(s)] == [3, 6, 9]


def test_each_step_once_and_rows_batched() -> None:
    sink = ListSink()
    logger = MetricsLogger(sink, flush_rows=4)
    logger.start_attempt(0, setup_seconds=1.5, resumed=False, tags={"sys.world_size": "2"})
    train_steps(logger, range(1, 9), epoch_end=8)
    # setup row flushed at once, step rows in batches of 4; the 2 epoch rows wait for a flush
    assert len(sink.stored) == 1 + 16
    logger.flush()
    assert len(sink.stored) == 1 + 16 + 2
    assert sink.history("loss") == [(s, 1.0 / s) for s in range(1, 9)]
    assert sink.history("val_auc") == [(8, 0.7)]
    assert sink.history("val_logloss") == []  # None values are left out
    assert sink.history("setup_seconds") == [(0, 1.5)]
    assert sink.history("resumed_from_step") == []
    assert sink.tags == {"sys.world_size": "2"}
    assert Counter((r.key, r.step) for r in sink.stored).most_common(1)[0][1] == 1


def test_resume_does_not_log_a_step_twice() -> None:
    """Attempt 1 flushes steps 1-6 (buffer full), checkpoints at 4 and dies at 7; attempt 2
    resumes at 4 and trains 5-8 again: MLflow has each step once, the crash once."""
    sink = ListSink()
    first = MetricsLogger(sink, flush_rows=4)
    first.start_attempt(0, setup_seconds=1.0, resumed=False)
    train_steps(first, range(1, 8))  # step 7's rows die with the process (never flushed)
    assert max(step for step, _ in sink.history("loss")) == 6

    second = MetricsLogger(sink, flush_rows=4)
    second.start_attempt(4, setup_seconds=2.0, resumed=True)
    train_steps(second, range(5, 9), epoch_end=8)
    second.flush()

    assert [step for step, _ in sink.history("loss")] == list(range(1, 9))
    assert [step for step, _ in sink.history("lr")] == list(range(1, 9))
    assert sink.history("val_auc") == [(8, 0.7)]
    assert sink.history("resumed_from_step") == [(4, 4.0)]
    assert sink.history("setup_seconds") == [(0, 1.0), (4, 2.0)]  # per attempt, not per step


def test_a_second_resume_from_the_same_checkpoint_is_recorded_again() -> None:
    sink = ListSink()
    for setup_seconds in (2.0, 3.0):
        MetricsLogger(sink).start_attempt(4, setup_seconds=setup_seconds, resumed=True)
    assert sink.history("resumed_from_step") == [(4, 4.0), (4, 4.0)]


def test_failed_write_keeps_rows_for_the_next_flush() -> None:
    sink = ListSink()
    logger = MetricsLogger(sink)
    logger.add(1, loss=0.5)
    sink.fail_next = True
    logger.flush()  # logged as a warning, not raised: metrics never stop training
    assert sink.stored == [] and len(logger.rows) == 1
    logger.flush()
    assert sink.history("loss") == [(1, 0.5)] and logger.rows == []


def test_without_a_sink_nothing_is_buffered() -> None:
    logger = MetricsLogger(None)
    logger.start_attempt(3, setup_seconds=1.0, resumed=True, tags={"a": "b"})
    logger.add(3, loss=1.0)
    logger.flush()
    assert not logger.enabled and logger.rows == []


def test_mlflow_sink_round_trip(tmp_path: Path) -> None:
    from recicl.registry import client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = client(uri)
    run_id = mlc.create_run(mlc.create_experiment("t", str(tmp_path / "art"))).info.run_id
    sink = MLflowSink(uri, run_id)
    assert sink.last_steps() == {}
    sink.log([MetricRow("loss", 0.9, 1), MetricRow("loss", 0.5, 3), MetricRow("lr", 0.1, 2)])
    sink.set_tags({"sys.gpu": "none"})
    assert sink.last_steps() == {"loss": 3, "lr": 2}
    assert mlc.get_run(run_id).data.tags["sys.gpu"] == "none"
    assert pytest.approx(mlc.get_run(run_id).data.metrics["loss"]) == 0.5


def test_a_training_run_logs_no_secret(tmp_path: Path) -> None:
    """The run's params (readable by anyone with registry access) carry the whole config, with
    the admin token, the store's password and the tracking server's password masked."""
    from recicl.config import build_config
    from recicl.registry import Workspace, client
    from recicl.train.trainer import _start_mlflow_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = build_config(
        {
            "workdir": str(tmp_path),
            "model": {"name_or_path": "some/model"},
            "mlflow": {"tracking_uri": uri},
            "serve": {"admin_token": "s3cret-token", "store_url": "redis://:hunter2@redis:6379/0"},
            "train": {"run_name": "r", "storage_path": str(tmp_path / "ray")},
        }
    )
    plan, periods = {"total_steps": 1}, {"train_periods": [0]}
    run_id = _start_mlflow_run(cfg, Workspace.of(cfg), plan, periods, "hash")
    params = client(uri).get_run(run_id).data.params
    logged = " ".join(params.values())
    assert "s3cret-token" not in logged and "hunter2" not in logged
    assert params["serve.admin_token"] == "***"
    assert params["serve.store_url"] == "redis://:***@redis:6379/0"
    assert params["model.name_or_path"] == "some/model"  # everything else as it was
