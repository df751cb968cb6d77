"""Live metrics: how each version and arm does on the scores it really served.

One function computes them from the feedback log (:func:`live_report`): ``GET /v1/metrics/live``
returns it, the ingress exports it as Prometheus gauges, and ``recicl models live`` logs the
server's answer to the version's MLflow run, so the three never disagree. The joined pairs of
a champion and its shadow (:func:`shadow_pairs`) are what ``recicl promote --live`` decides on.
AUC and LogLoss are the offline evaluation's own functions (:mod:`recicl.evaluate.metrics`), so a
live AUC and an offline AUC are the same statistic on different data.

Ray-free and light: the HTTP layer imports it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from recicl.errors import ReciclError
from recicl.evaluate.metrics import auc, logloss
from recicl.evaluate.paired import PairedEvidence, PairedScores
from recicl.serve.store.feedback import (
    ARM_CHAMPION,
    ARM_SHADOW,
    COUNTER_KINDS,
    EXPIRED,
    JOINED,
    PENDING,
    UNSCORED,
    FeedbackRow,
    FeedbackSettings,
)

if TYPE_CHECKING:
    from recicl.config import ReciclConfig
    from recicl.serve.store import InteractionStore

log = logging.getLogger(__name__)

#: Per (version, arm) figures of a window, in the order the API and the exporters list them.
WINDOW_FIGURES = (
    "served",
    "joined",
    "pending",
    "unjoined",
    "late",
    "duplicate",
    "like_rate",
    "auc",
    "logloss",
)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (2**63, version)


def arm_figures(rows: list[FeedbackRow]) -> dict[str, Any]:
    """The figures of one group of served scores (one version and arm; see :func:`live_report`)."""
    joined = [r for r in rows if r.status == JOINED]
    labels = np.array([r.label for r in joined], dtype=np.int64)
    scores = np.array([r.served.score for r in joined], dtype=np.float64)
    return {
        "served": len(rows),
        "joined": len(joined),
        "pending": sum(r.status == PENDING for r in rows),
        "unjoined": sum(r.status == EXPIRED for r in rows),
        "late": sum(r.late for r in rows),
        "duplicate": sum(r.duplicates for r in rows),
        "like_rate": float(labels.mean()) if len(labels) else None,
        "auc": auc(labels, scores),
        "logloss": logloss(labels, scores),
    }


def live_timeline(
    rows: list[FeedbackRow], bucket_s: int
) -> dict[str, list[tuple[float, float | None, int]]]:
    """Live AUC over serving time: per version and arm (``"v3 shadow"``), one point per
    ``bucket_s`` seconds of ``served_at`` (its start, in seconds since the first score), with
    the AUC and the number of joined scores in it (AUC None: fewer than both labels)."""
    if not rows:
        return {}
    start = min(row.served.served_at for row in rows)
    buckets: dict[tuple[str, int], list[FeedbackRow]] = defaultdict(list)
    for row in rows:
        name = f"v{row.served.version} {row.served.arm}"
        buckets[name, (row.served.served_at - start) // bucket_s].append(row)
    timeline: dict[str, list[tuple[float, float | None, int]]] = defaultdict(list)
    for (name, bucket), group in sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        figures = arm_figures(group)
        if figures["joined"]:
            timeline[name].append((float(bucket * bucket_s), figures["auc"], figures["joined"]))
    return dict(timeline)


def live_report(store: InteractionStore, window_s: int, now: int) -> dict[str, Any]:
    """Figures of the scores served in the last ``window_s`` seconds, per version and arm.

    Per group: ``served``, ``joined`` (scores with their outcome), ``pending`` (window still
    open), ``unjoined`` (window closed, no outcome), ``late`` / ``duplicate`` (events matched to
    those scores and not joined), and over the joined ones ``like_rate``, ``auc`` (null when
    only one class) and ``logloss``. ``totals`` are the store's counters since it was created
    (``unscored`` events have no version or arm, so they are only there).
    """
    rows = store.feedback_rows(now - window_s, now=now)
    counters = store.feedback_counters(now=now)
    groups: dict[tuple[str, str], list[FeedbackRow]] = defaultdict(list)
    for row in rows:
        groups[(row.served.version, row.served.arm)].append(row)
    arms = [
        {"version": version, "arm": arm, **arm_figures(groups[(version, arm)])}
        for version, arm in sorted(groups, key=lambda k: (_version_key(k[0]), k[1]))
    ]
    totals: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: dict.fromkeys((k for k in COUNTER_KINDS if k != UNSCORED), 0)
    )
    for (kind, version, arm), n in counters.items():
        if kind != UNSCORED and kind in COUNTER_KINDS:
            totals[(version, arm)][kind] += n
    return {
        "window_seconds": window_s,
        "since": now - window_s,
        "now": now,
        "attribution_window_seconds": store.feedback.attribution_window_s,
        "arms": arms,
        "totals": {
            "unscored": counters[(UNSCORED, "", "")],
            "arms": [
                {"version": version, "arm": arm, **totals[(version, arm)]}
                for version, arm in sorted(totals, key=lambda k: (_version_key(k[0]), k[1]))
            ],
        },
    }


# -- recicl models live -------------------------------------------------------------------------


def fetch_live_report(url: str, window_s: int | None, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """GET ``<url>/v1/metrics/live`` (the server's own figures), with ``$RECICL_ADMIN_TOKEN``
    when set (servers with ``serve.access.metrics_need_admin`` ask for it); errors as one
    line."""
    import os

    import httpx

    params = {} if window_s is None else {"window": window_s}
    address = url.rstrip("/") + "/v1/metrics/live"
    token = os.environ.get("RECICL_ADMIN_TOKEN")
    headers = {"Authorization": f"Bearer {token.split(',')[0]}"} if token else {}
    try:
        reply = httpx.get(address, params=params, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as error:
        raise ReciclError(
            f"cannot reach {address}: {error}; is `recicl serve` running there?"
        ) from None
    if reply.status_code != 200:
        try:
            detail = reply.json().get("detail", reply.text)
        except ValueError:
            detail = reply.text[:300]
        raise ReciclError(f"{address} answered {reply.status_code}: {detail}")
    report: dict[str, Any] = reply.json()
    return report


def live_metric_rows(report: dict[str, Any], version: str) -> list[tuple[str, float, int]]:
    """MLflow ``(key, value, step)`` rows of one version: ``live.<arm>.<window>s.<figure>``,
    step = the report's time (unix seconds), so repeated runs draw a curve. Null figures (AUC
    with one class, rates of nothing joined) are left out rather than logged as a number."""
    rows = []
    window, step = int(report["window_seconds"]), int(report["now"])
    for group in report["arms"]:
        if str(group["version"]) != str(version):
            continue
        for figure in WINDOW_FIGURES:
            value = group.get(figure)
            if value is not None:
                rows.append((f"live.{group['arm']}.{window}s.{figure}", float(value), step))
    return rows


def log_live_metrics(
    tracking_uri: str, name: str, version: str, url: str, window_s: int | None
) -> tuple[str, dict[str, Any], list[tuple[str, float, int]]]:
    """Fetch the server's live figures and log those of ``version`` to the version's run.

    Returns (run id, the report, the logged rows). Nothing is logged when the version served
    nothing in the window: an empty run history says more than a row of zeros.
    """
    from recicl.registry import client, log_metrics, model_version

    run_id = model_version(client(tracking_uri), name, str(version)).run_id
    if not run_id:
        raise ReciclError(f"{name} version {version} has no MLflow run to log to")
    report = fetch_live_report(url, window_s)
    rows = live_metric_rows(report, str(version))
    if not rows:
        served = sorted({str(g["version"]) for g in report["arms"]}) or "none"
        raise ReciclError(
            f"{name} version {version} served no scores in the last {report['window_seconds']} s "
            f"at {url} (versions that did: {served}); nothing logged"
        )
    log_metrics(tracking_uri, run_id, rows)
    log.info("logged %d live metrics of %s/%s to run %s", len(rows), name, version, run_id)
    return run_id, report, rows


# -- recicl promote --live --------------------------------------------------------------------


def shadow_pairs(rows: list[FeedbackRow]) -> dict[tuple[str, str], PairedScores]:
    """Joined pairs by (champion version, shadow version).

    A pair is the champion's and the shadow's score of the same request (id, user, time) and
    item, both joined with the same event (same outcome time and label): the same exposure
    scored by two versions, the pairing the shadow was built for. Pairing by user or by (user,
    item) across requests would compare scores made with different contexts at different times;
    split arms hold different users by design, so they give no pairs (their A/B read-out is
    ``GET /v1/metrics/live``).
    """

    def key(row: FeedbackRow) -> tuple[str, str, str, int]:
        s = row.served
        return (s.request_id, s.user_id, s.item_id, s.served_at)

    joined = [r for r in rows if r.status == JOINED]
    champion = {key(r): r for r in joined if r.served.arm == ARM_CHAMPION}
    found: dict[tuple[str, str], list[tuple[int, float, float, str]]] = defaultdict(list)
    for row in joined:
        if row.served.arm != ARM_SHADOW:
            continue
        twin = champion.get(key(row))
        if twin is None or (twin.label, twin.outcome_ts) != (row.label, row.outcome_ts):
            continue
        found[(twin.served.version, row.served.version)].append(
            (int(row.label or 0), twin.served.score, row.served.score, row.served.user_id)
        )
    return {
        versions: PairedScores(
            labels=np.array([p[0] for p in pairs], dtype=np.int64),
            champion=np.array([p[1] for p in pairs], dtype=np.float64),
            candidate=np.array([p[2] for p in pairs], dtype=np.float64),
            users=np.array([p[3] for p in pairs], dtype=object),
        )
        for versions, pairs in found.items()
    }


def read_live_evidence(
    cfg: ReciclConfig, window_s: int | None = None, now: int | None = None
) -> PairedEvidence:
    """The joined shadow pairs of the store the server writes (``serve.store_url``), served in
    the last ``window_s`` seconds (default ``evaluate.live.window_seconds``, else everything
    the store keeps)."""
    import time

    from recicl.serve.settings import resolve_store_url
    from recicl.serve.store import open_store
    from recicl.serve.store.base import redact_url

    feedback = cfg.serve.feedback
    window = window_s or cfg.evaluate.live.window_seconds or feedback.retention_seconds
    now = int(time.time()) if now is None else now
    url = resolve_store_url(cfg)
    with open_store(url, feedback=FeedbackSettings.from_config(feedback)) as store:
        rows = store.feedback_rows(now - window, now=now)
    return PairedEvidence(
        shadow_pairs(rows),
        f"joined shadow pairs served in the {window} s before {now} in {redact_url(url)}",
    )
