"""``logistic`` and ``boosted-trees``: leak-free signal models over sample rows.

A fitted ``logistic`` model can also be saved to a folder and loaded back
(:meth:`SignalModel.save`, :meth:`SignalModel.load`), and score what a server has instead of a
sample row (:meth:`SignalModel.score_context`: a user, candidate items, the labels of the
demonstrations the prompt shows). That is what a version needs to serve a blend of its LLM's
score with this model's (``benchmarks/bench_blend.py`` measures the blend offline).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recicl.errors import ReciclError
from recicl.evaluate.baselines.common import (
    DEMO_SMOOTHING,
    ITEM_SMOOTHING,
    SIGNAL_FEATURES,
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
    return _feature_matrix(prior, (lengths, demo_likes), user, item)


def _feature_matrix(
    prior: float,
    demos: tuple[np.ndarray, np.ndarray],
    user: tuple[np.ndarray, np.ndarray],
    item: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Rows of :data:`SIGNAL_FEATURES` from (count, likes) of each row's demonstrations, user
    and item: the one formula of sample rows and of served contexts."""
    lengths, demo_likes = demos
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

    def score_context(
        self, user_id: str, item_ids: Sequence[str], demo_labels: Sequence[int]
    ) -> np.ndarray:
        """P(like) of each of ``item_ids`` for ``user_id``, whose prompt shows demonstrations
        labelled ``demo_labels``: what a server knows, equal to :meth:`score` of sample rows
        with that user, item and demonstrations."""
        rows = len(item_ids)
        if rows == 0:
            return np.zeros(0)
        demos = (np.full(rows, len(demo_labels)), np.full(rows, float(sum(demo_labels))))
        users = self.users.lookup(np.full(rows, user_id, dtype=object))
        items = self.items.lookup(np.asarray(list(item_ids), dtype=object))
        features = _feature_matrix(self.prior, demos, users, items)
        with _one_thread():
            return np.asarray(self.model.predict_proba(features)[:, 1], np.float64)

    def save(self, folder: str | Path) -> Path:
        """Write this model to ``folder``: the prior and the linear weights as JSON, the frozen
        counts as Parquet. No pickle: a version folder is loaded by serving replicas, and
        reading JSON and Parquet runs no code. Only ``logistic`` (a linear model) is saved."""
        weights, intercept = _linear_weights(self.model)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": "logistic",
            "features": list(SIGNAL_FEATURES),
            "prior": self.prior,
            "weights": weights.tolist(),
            "intercept": intercept,
            "smoothing": {"demo": DEMO_SMOOTHING, "user": USER_SMOOTHING, "item": ITEM_SMOOTHING},
        }
        (folder / SIGNAL_MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for name, counts in ((USER_COUNTS_FILE, self.users), (ITEM_COUNTS_FILE, self.items)):
            _write_counts(counts, folder / name)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SignalModel:
        """A model written by :meth:`save`."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / SIGNAL_MODEL_FILE).read_text())
        except (OSError, ValueError) as error:
            raise SignalModelError(f"{folder}: no readable {SIGNAL_MODEL_FILE}: {error}") from error
        if meta.get("features") != list(SIGNAL_FEATURES) or meta.get("smoothing") != {
            "demo": DEMO_SMOOTHING,
            "user": USER_SMOOTHING,
            "item": ITEM_SMOOTHING,
        }:
            raise SignalModelError(
                f"{folder}: saved with other features or smoothing than this recicl computes "
                "(fit it again with this version)"
            )
        weights = np.asarray(meta["weights"], np.float64)
        return cls(
            float(meta["prior"]),
            _read_counts(folder / USER_COUNTS_FILE),
            _read_counts(folder / ITEM_COUNTS_FILE),
            LinearProbabilities(weights, float(meta["intercept"])),
        )


#: Files of a saved :class:`SignalModel` (:meth:`SignalModel.save`).
SIGNAL_MODEL_FILE = "signal_model.json"
USER_COUNTS_FILE = "user_counts.parquet"
ITEM_COUNTS_FILE = "item_counts.parquet"


class SignalModelError(ReciclError):
    """A signal model that cannot be saved or loaded; the message says why and what to do."""


@dataclass(frozen=True)
class LinearProbabilities:
    """A loaded ``logistic`` model: P(like) = sigmoid(features @ weights + intercept), with the
    standardisation of the fitted pipeline folded into ``weights`` and ``intercept``."""

    weights: np.ndarray
    intercept: float

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(features @ self.weights + self.intercept)))
        return np.column_stack([1.0 - p, p])


def _linear_weights(model: Any) -> tuple[np.ndarray, float]:
    """(weights, intercept) over the raw features of a fitted scaler + logistic pipeline, or of
    a loaded :class:`LinearProbabilities`."""
    if isinstance(model, LinearProbabilities):
        return model.weights, model.intercept
    steps = getattr(model, "named_steps", {})
    scaler, linear = steps.get("standardscaler"), steps.get("logisticregression")
    if scaler is None or linear is None:
        raise SignalModelError(
            f"only the logistic signal model can be saved, not {type(model).__name__} "
            "(boosted trees have no portable form here)"
        )
    weights = linear.coef_[0] / scaler.scale_
    intercept = float(linear.intercept_[0] - weights @ scaler.mean_)
    return np.asarray(weights, np.float64), intercept


def _write_counts(counts: FrozenCounts, path: Path) -> None:
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "key": pa.array(counts.keys.astype(str).tolist(), pa.string()),
            "events": pa.array(counts.events, pa.int64()),
            "likes": pa.array(counts.likes, pa.int64()),
        }
    )
    pq.write_table(table, path)


def _read_counts(path: Path) -> FrozenCounts:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise SignalModelError(f"{path}: frozen counts not readable: {error}") from error
    return FrozenCounts(
        pd.Index(_strings(table["key"])),
        table["events"].to_numpy().astype(np.int64),
        table["likes"].to_numpy().astype(np.int64),
    )


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
