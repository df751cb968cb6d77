"""``logistic`` and ``boosted-trees``: leak-free signal models over sample rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    pass

from recicl.evaluate.baselines.common import (
    DEMO_SMOOTHING,
    ITEM_SMOOTHING,
    USER_SMOOTHING,
    FrozenCounts,
    _demo_columns,
    _labels,
    _logit,
    _one_thread,
    _row_of,
    _strings,
    online_counts,
)


def signal_features(
    samples: pa.Table,
    prior: float,
    user: tuple[np.ndarray, np.ndarray],
    item: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """The :data:`SIGNAL_FEATURES` matrix: rates as smoothed logits, counts as log1p.

    ``user`` and ``item`` are the (events, likes) each row may know: online counts for training
    rows, frozen ones for evaluated rows (the caller decides; this function reads no label)."""
    lengths, _, demo_labels = _demo_columns(samples)
    demo_likes = np.bincount(_row_of(lengths), weights=demo_labels, minlength=len(lengths))
    demo_rate = (demo_likes + DEMO_SMOOTHING * prior) / (lengths + DEMO_SMOOTHING)
    user_rate = (user[1] + USER_SMOOTHING * prior) / (user[0] + USER_SMOOTHING)
    item_rate = (item[1] + ITEM_SMOOTHING * prior) / (item[0] + ITEM_SMOOTHING)
    return np.column_stack(
        [
            _logit(demo_rate),
            np.log1p(lengths),
            _logit(user_rate),
            np.log1p(user[0]),
            _logit(item_rate),
            np.log1p(item[0]),
        ]
    ).astype(np.float64)


def training_signal_features(train: pa.Table, prior: float) -> np.ndarray:
    """Features of training rows, each from training rows strictly before its own timestamp."""
    timestamps = train["timestamp"].to_numpy()
    labels = _labels(train)
    user = online_counts(_strings(train["user_id"]), timestamps, labels)
    item = online_counts(_strings(train["item_id"]), timestamps, labels)
    return signal_features(train, prior, user, item)


@dataclass
class SignalModel:
    """A classifier over :data:`SIGNAL_FEATURES` and the counts frozen at the end of training."""

    prior: float
    users: FrozenCounts
    items: FrozenCounts
    model: Any  # a fitted scikit-learn classifier

    def features(self, samples: pa.Table) -> np.ndarray:
        """Features of evaluated rows: the sample's demos + the frozen user and item counts."""
        return signal_features(
            samples,
            self.prior,
            self.users.lookup(_strings(samples["user_id"])),
            self.items.lookup(_strings(samples["item_id"])),
        )

    def score(self, samples: pa.Table, catalog: pa.Table) -> np.ndarray:
        if samples.num_rows == 0:
            return np.zeros(0)
        with _one_thread():
            return np.asarray(self.model.predict_proba(self.features(samples))[:, 1], np.float64)


def _fit_signal_model(name: str, train: pa.Table, seed: int) -> SignalModel:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = _labels(train)
    prior = float(labels.mean())
    model: Any
    if name == "logistic":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    else:
        model = HistGradientBoostingClassifier(max_iter=200, random_state=seed)
    with _one_thread():
        model.fit(training_signal_features(train, prior), labels)
    return SignalModel(
        prior,
        FrozenCounts.of(_strings(train["user_id"]), labels),
        FrozenCounts.of(_strings(train["item_id"]), labels),
        model,
    )


# -- torch models: shared encoding and training ----------------------------------------------
