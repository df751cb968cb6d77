"""AUC / UAUC / LogLoss on hand-computed fixtures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recicl.evaluate.metrics import auc, logloss, metrics_by_period, uauc


def test_auc_hand_computed():
    # Positives {0.8, 0.4}, negatives {0.5, 0.1}: pairs won 3 of 4 → 0.75.
    assert auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.5, 0.1])) == pytest.approx(0.75)
    assert auc(np.array([1, 1]), np.array([0.2, 0.3])) is None  # one class: undefined


def test_uauc_skips_single_class_users_and_says_so():
    users = np.array(["a", "a", "a", "b", "b", "c", "c"])
    labels = np.array([1, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.95, 0.2, 0.8, 0.5, 0.6])
    value, counted, skipped = uauc(users, labels, scores)
    # a: positive 0.9 vs negatives 0.1 (win), 0.95 (loss) → 0.5; b: 0.2 vs 0.8 → 0.0
    assert value == pytest.approx(0.25)
    assert (counted, skipped) == (2, 1)


def test_logloss_hand_computed():
    expected = -(math.log(0.8) + math.log(1 - 0.4)) / 2
    assert logloss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(expected)
    assert np.isfinite(logloss(np.array([1]), np.array([0.0])))  # clipped, not inf


def test_metrics_by_period():
    periods = np.array([0, 0, 1, 1])
    users = np.array(["a", "a", "a", "a"])
    report = metrics_by_period(
        periods, users, np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.2, 0.7])
    )
    assert report["periods"]["0"]["auc"] == 1.0
    assert report["periods"]["1"]["auc"] == 0.0
    assert report["overall"]["count"] == 4
    assert report["periods"]["1"]["like_rate"] == 0.5
