"""Per-step training metrics in MLflow, each ``(metric, step)`` written exactly once per run.

Why the workers log themselves: Ray Train V2 keeps only the metrics reported *with* a checkpoint,
so step curves (loss, LR, throughput) go to MLflow directly, from rank 0. Rows are buffered and
written in batches (one ``log_batch`` call per flush, not one request per value).

Why resumed attempts ask MLflow first: rows are flushed whenever the buffer fills, so a crashed
attempt may already have written steps past the checkpoint its successor resumes from. Those
steps are trained again (exactly, see :mod:`recicl.train.data`), and logging them a second time
would give MLflow two points per step. :meth:`MetricsLogger.start_attempt` therefore reads, per
metric, the last step already stored, and :meth:`MetricsLogger.add` skips rows up to it. The
attempt's own facts (``setup_seconds``, ``resumed_from_step``) are events, logged every attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from recicl.registry import client, log_metrics

log = logging.getLogger(__name__)

#: Buffered rows that trigger a write (a few steps' worth: curves stay live in the MLflow UI).
FLUSH_ROWS = 50


class MetricRow(NamedTuple):
    key: str
    value: float
    step: int


class MetricSink(Protocol):
    """Where rows go: MLflow in training (:class:`MLflowSink`), a list in unit tests."""

    def log(self, rows: Sequence[MetricRow]) -> None:
        """Store ``rows``; raise on failure (the logger keeps them for the next try)."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Attach ``tags`` to the run."""

    def last_steps(self) -> dict[str, int]:
        """For every metric already stored in the run, its highest step."""


class MLflowSink:
    """One MLflow run, addressed by tracking URI and run id (workers get both in the plan)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def log(self, rows: Sequence[MetricRow]) -> None:

        log_metrics(self.tracking_uri, self.run_id, rows)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(key, value) for key, value in tags.items()]
        client(self.tracking_uri).log_batch(self.run_id, tags=batch)

    def last_steps(self) -> dict[str, int]:

        mlc = client(self.tracking_uri)
        keys = mlc.get_run(self.run_id).data.metrics
        return {key: max(m.step for m in mlc.get_metric_history(self.run_id, key)) for key in keys}


class MetricsLogger:
    """Buffered metric rows for one training attempt; a no-op without a sink (ranks > 0, or no
    MLflow run). Failures are logged and never raised: metrics must not kill a multi-hour run.

    ``every_steps`` (``train.log_every_steps``) thins the per-step curves: see :meth:`is_due`.
    """

    def __init__(
        self, sink: MetricSink | None, *, every_steps: int = 1, flush_rows: int = FLUSH_ROWS
    ) -> None:
        self.sink = sink
        self.every_steps = every_steps
        self.flush_rows = flush_rows
        self.rows: list[MetricRow] = []
        self._stored_through: dict[str, int] = {}  # metric → last step an earlier attempt wrote

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    def start_attempt(
        self,
        step: int,
        *,
        setup_seconds: float,
        resumed: bool,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Record this attempt (tags, ``setup_seconds``, and ``resumed_from_step`` when it
        continues a checkpoint at ``step``) and, when resumed, learn which steps are stored."""
        if self.sink is None:
            return
        if resumed:
            try:
                self._stored_through = self.sink.last_steps()
            except Exception as error:
                log.warning("cannot read logged steps (%s); resumed steps may repeat", error)
        if tags:
            try:
                self.sink.set_tags(tags)
            except Exception as error:
                log.warning("MLflow tagging failed: %s", error)
        self.rows.append(MetricRow("setup_seconds", float(setup_seconds), step))
        if resumed:
            self.rows.append(MetricRow("resumed_from_step", float(step), step))
        self.flush()

    def is_due(self, step: int) -> bool:
        """Whether optimizer step ``step`` gets its per-step row (every ``every_steps``-th)."""
        return step % self.every_steps == 0

    def add(self, step: int, **metrics: float | None) -> None:
        """Buffer ``metrics`` at ``step`` (None values are left out), except those an earlier
        attempt already stored; flush once the buffer holds ``flush_rows`` rows."""
        if self.sink is None:
            return
        self.rows.extend(
            MetricRow(key, float(value), step)
            for key, value in metrics.items()
            if value is not None and step > self._stored_through.get(key, -1)
        )
        if len(self.rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows; on failure keep them for the next flush."""
        if self.sink is None or not self.rows:
            return
        try:
            self.sink.log(self.rows)
            self.rows = []
        except Exception as error:
            log.warning("MLflow logging failed (%s); keeping %d rows", error, len(self.rows))
