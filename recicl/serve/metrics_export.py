"""Live metrics as Prometheus metrics, through Ray Serve's metrics API.

Why Ray's API and not a ``/metrics`` route of our own: Ray already runs a metrics agent on every
node and Prometheus already scrapes it (Ray documents the scrape config, and KubeRay sets it up);
``ray.serve.metrics`` adds the deployment, replica and application tags, so recicl's figures sit
next to Serve's own latency and queue metrics with no second endpoint to secure and scrape.

What is exported (Ray prefixes every custom metric with ``ray_``):

* ``recicl_live_<figure>{version, arm, window}`` gauges: the figures of
  :func:`recicl.serve.live_metrics.live_report` for a window (``auc``, ``logloss``, ``like_rate``,
  ``joined``, ``served``, ``pending``, ``unjoined``, ``late``, ``duplicate``); an undefined figure
  (AUC of one class) is NaN, so a stale value never lingers.
* ``recicl_feedback_store_total{kind, version, arm}`` gauges: the store's counters since it was
  created (the same on every replica: read them with ``max``).
* ``recicl_feedback{kind, version, arm}`` counter: what *this* replica logged and joined
  (``served``, ``joined``, ``late``, ``duplicate``, ``unscored``): sum it across replicas and
  take ``rate()`` of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from recicl.serve.live_metrics import WINDOW_FIGURES
from recicl.serve.store.feedback import FeedbackCounts

_FIGURE_DOCS = {
    "served": "Scores served in the window",
    "joined": "Served scores joined with the user's event for that item",
    "pending": "Served scores whose attribution window is still open",
    "unjoined": "Served scores whose attribution window closed without an event",
    "late": "Events matched to the window's scores after their attribution window",
    "duplicate": "Events matched to the window's scores after their join",
    "like_rate": "Share of joined scores that were liked",
    "auc": "ROC AUC of the joined scores (NaN with one class)",
    "logloss": "LogLoss of the joined scores",
}


class LiveMetricsExporter:
    """Publishes live reports and feedback counts as Ray metrics (see the module docstring).

    ``gauge`` and ``counter`` are the metric classes (default ``ray.serve.metrics.Gauge`` and
    ``Counter``); tests pass recording stand-ins.
    """

    def __init__(
        self, gauge: Callable[..., Any] | None = None, counter: Callable[..., Any] | None = None
    ) -> None:
        if gauge is None or counter is None:
            from ray.serve import metrics

            gauge, counter = gauge or metrics.Gauge, counter or metrics.Counter
        # typed loosely: Ray annotates tag_keys as a 1-tuple although it takes any length
        make_gauge: Callable[..., Any] = gauge
        make_counter: Callable[..., Any] = counter
        self.figures = {
            figure: make_gauge(
                f"recicl_live_{figure}",
                description=f"{_FIGURE_DOCS[figure]} (recicl feedback log).",
                tag_keys=("version", "arm", "window"),
            )
            for figure in WINDOW_FIGURES
        }
        self.totals = make_gauge(
            "recicl_feedback_store_total",
            description="Feedback log counters since the store was created, by kind.",
            tag_keys=("kind", "version", "arm"),
        )
        self.counts = make_counter(
            "recicl_feedback",
            description="Served scores and event outcomes logged by this replica, by kind.",
            tag_keys=("kind", "version", "arm"),
        )

    def publish(self, report: dict[str, Any]) -> None:
        """Set the gauges from one :func:`~recicl.serve.live_metrics.live_report`."""
        window = str(report["window_seconds"])
        for group in report["arms"]:
            tags = {"version": str(group["version"]), "arm": str(group["arm"]), "window": window}
            for figure, gauge in self.figures.items():
                value = group[figure]
                gauge.set(math.nan if value is None else float(value), tags=tags)
        totals = report["totals"]
        self.totals.set(
            float(totals["unscored"]), tags={"kind": "unscored", "version": "", "arm": ""}
        )
        for group in totals["arms"]:
            for kind, value in group.items():
                if kind not in ("version", "arm"):
                    tags = {"kind": kind, "version": str(group["version"]), "arm": group["arm"]}
                    self.totals.set(float(value), tags=tags)

    def count(self, counts: FeedbackCounts) -> None:
        """Add what this replica just logged or joined to the counter."""
        for (kind, version, arm), n in counts.items():
            if n:
                self.counts.inc(n, tags={"kind": kind, "version": version, "arm": arm})
