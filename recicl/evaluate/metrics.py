"""Ranking metrics with scikit-learn's implementations: AUC, UAUC and LogLoss, per period.

UAUC is the mean of per-user AUCs over users who have both a liked and a disliked event in the
slice; users with a single class have no defined AUC and are skipped *and counted*, because a UAUC
over 30 users means something different from one over 3,000.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Global ROC AUC; None when only one class is present (undefined)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def uauc(
    users: np.ndarray, labels: np.ndarray, scores: np.ndarray
) -> tuple[float | None, int, int]:
    """(mean per-user AUC, users counted, users skipped for having a single class)."""
    users = np.asarray(users)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    order = np.argsort(users, kind="stable")
    users, labels, scores = users[order], labels[order], scores[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    values: list[float] = []
    skipped = 0
    for start, end in zip(starts, ends, strict=True):
        user_labels = labels[start:end]
        if user_labels.min() == user_labels.max():
            skipped += 1
            continue
        values.append(float(roc_auc_score(user_labels, scores[start:end])))
    return (float(np.mean(values)) if values else None), len(values), skipped


def logloss(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Binary cross-entropy of P(Yes), clipped away from 0/1; None for an empty slice."""
    if len(labels) == 0:
        return None
    clipped = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)
    return float(log_loss(np.asarray(labels), clipped, labels=[0, 1]))


def slice_metrics(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """All metrics of one slice (a period, or everything)."""
    labels = np.asarray(labels).astype(np.int64)
    value, counted, skipped = uauc(users, labels, scores)
    return {
        "count": len(labels),
        "like_rate": float(labels.mean()) if len(labels) else None,
        "auc": auc(labels, scores),
        "uauc": value,
        "uauc_users": counted,
        "uauc_users_skipped": skipped,
        "logloss": logloss(labels, scores),
    }


def metrics_by_period(
    periods: np.ndarray, users: np.ndarray, labels: np.ndarray, scores: np.ndarray
) -> dict[str, Any]:
    """{"overall": {...}, "periods": {"6": {...}, ...}} with every slice's metrics."""
    periods = np.asarray(periods)
    report: dict[str, Any] = {"overall": slice_metrics(users, labels, scores), "periods": {}}
    for period in sorted(np.unique(periods).tolist()):
        mask = periods == period
        report["periods"][str(period)] = slice_metrics(users[mask], labels[mask], scores[mask])
    return report
