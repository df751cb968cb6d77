"""Leak-free count signals of sample rows and the logistic model over them.

The features (:data:`SIGNAL_FEATURES`): the demonstrations' like rate and count, the user's and
the item's like rate and count. On a training row the user and item counts come from training
rows *strictly before that row's timestamp* (:func:`online_counts`), so a row never sees its own
label or a later one; on an evaluated or served row they are the counts frozen at the end of
the training periods (:class:`FrozenCounts`), never a later event.

Two users: the ``logistic`` and ``boosted-trees`` streaming baselines
(:mod:`recicl.evaluate.baselines`), and the blend a version can carry (``train.blend``): the
mean of this model's logit and the LLM's, fitted when the version is tuned, saved with it
(:meth:`SignalModel.save`; JSON and Parquet, no pickle) and scored from what a server has
(:meth:`SignalModel.score_context`). It lives here, below training, evaluation and serving,
because all three read it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recicl.errors import ReciclError

#: Pseudo-counts that pull a rate toward the training like rate when it rests on few events
#: (the same item smoothing as benchmarks/bench_ceiling.py).
ITEM_SMOOTHING = 5.0
USER_SMOOTHING = 2.0
DEMO_SMOOTHING = 1.0
#: Column order of :func:`signal_features`.
SIGNAL_FEATURES = (
    "demo rate",
    "demo count",
    "user rate",
    "user count",
    "item rate",
    "item count",
)


# -- reading sample rows --------------------------------------------------------------------


def _flat(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(length of each row's list, the lists' values flattened in row order)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    return lengths.astype(np.int64), pc.list_flatten(array)


def _strings(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=object)


def _demo_columns(samples: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(demos per row, their item ids, their labels), flattened oldest → newest per row."""
    lengths, values = _flat(samples["demos"])
    items = _strings(pc.struct_field(values, "item_id"))
    labels = pc.struct_field(values, "label").to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, items, labels


def _row_of(lengths: np.ndarray) -> np.ndarray:
    """The row index of every flattened value."""
    return np.repeat(np.arange(len(lengths)), lengths)


def _labels(table: pa.Table) -> np.ndarray:
    return table["label"].to_numpy().astype(np.int64)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Fit and score on one thread: the host trains LLMs beside it, and one thread makes the
    floating-point reductions (hence the scores) the same on every run."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


# -- counts and features --------------------------------------------------------------------


def online_counts(
    keys: np.ndarray, timestamps: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(events, likes) of each row's key among the rows *strictly before* the row's timestamp.

    Rows that share a key and a timestamp see the same counts (none of each other): the sample
    order breaks ties by item id, which says nothing about which event came first."""
    codes = pd.factorize(pd.Series(keys, dtype=object))[0]
    order = np.lexsort((timestamps, codes))
    k, t, y = codes[order], np.asarray(timestamps)[order], np.asarray(labels)[order]
    index = np.arange(len(k))
    new_key = np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)
    new_run = new_key | (np.r_[True, t[1:] != t[:-1]] if len(k) else new_key)
    key_start = np.maximum.accumulate(np.where(new_key, index, 0))
    run_start = np.maximum.accumulate(np.where(new_run, index, 0))
    likes_before = np.cumsum(y) - y  # likes of every earlier row in this order
    events = (index - key_start)[run_start]
    likes = (likes_before - likes_before[key_start])[run_start]
    out_events, out_likes = np.empty_like(events), np.empty_like(likes)
    out_events[order], out_likes[order] = events, likes
    return out_events, out_likes


@dataclass(frozen=True)
class FrozenCounts:
    """Events and likes per key (user or item) over every training row: the state a model
    fitted at the end of the training periods knows, frozen for every evaluated row."""

    keys: pd.Index
    events: np.ndarray
    likes: np.ndarray

    @classmethod
    def of(cls, keys: np.ndarray, labels: np.ndarray) -> FrozenCounts:
        frame = pd.DataFrame({"key": keys, "y": labels}).groupby("key", sort=True)["y"]
        sums = frame.agg(["size", "sum"])
        return cls(
            pd.Index(sums.index), sums["size"].to_numpy(np.int64), sums["sum"].to_numpy(np.int64)
        )

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(events, likes) of each key; 0, 0 for a key never seen in training."""
        at = self.keys.get_indexer(pd.Index(keys, dtype=object))
        known = at >= 0
        events = np.where(known, self.events[np.maximum(at, 0)], 0)
        likes = np.where(known, self.likes[np.maximum(at, 0)], 0)
        return events, likes


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


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
        return self._predict(self.features(samples))

    def _predict(self, features: np.ndarray) -> np.ndarray:
        """P(like) of feature rows. A fitted scikit-learn model runs on one thread
        (:func:`_one_thread`); a loaded one (:class:`LinearProbabilities`, what evaluation and
        serving hold) is one small matrix product and skips that: it runs in the serving
        replica's model thread, whose torch thread count must not be reset per request."""
        if isinstance(self.model, LinearProbabilities):
            return self.model.predict_proba(features)[:, 1]
        with _one_thread():
            return np.asarray(self.model.predict_proba(features)[:, 1], np.float64)

    def score_context(
        self, user_id: str, item_ids: Sequence[str], demo_labels: Sequence[int]
    ) -> np.ndarray:
        """P(like) of each of ``item_ids`` for ``user_id``, whose prompt shows demonstrations
        labelled ``demo_labels``: what a server knows (:meth:`score_demos` with one context)."""
        return self.score_demos([user_id] * len(item_ids), item_ids, [demo_labels] * len(item_ids))

    def score_demos(
        self,
        user_ids: Sequence[str] | np.ndarray,
        item_ids: Sequence[str] | np.ndarray,
        demo_labels: Sequence[Sequence[int]],
    ) -> np.ndarray:
        """P(like) of each (user, item) whose prompt shows demonstrations labelled
        ``demo_labels`` (one sequence per row): equal to :meth:`score` of sample rows with those
        users, items and demonstrations, from plain values (a scoring batch, a served request)."""
        rows = len(item_ids)
        if rows == 0:
            return np.zeros(0)
        counts = np.fromiter((len(labels) for labels in demo_labels), np.int64, rows)
        likes = np.fromiter((float(sum(labels)) for labels in demo_labels), np.float64, rows)
        users = self.users.lookup(np.asarray(list(user_ids), dtype=object))
        items = self.items.lookup(np.asarray(list(item_ids), dtype=object))
        return self._predict(_feature_matrix(self.prior, (counts, likes), users, items))

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


def fit_signal_model(name: str, train: pa.Table, seed: int) -> SignalModel:
    """``logistic`` (standardised features, logistic regression) or ``boosted-trees`` fitted on
    every row of ``train``, each row's features from the rows strictly before it; the counts
    frozen over all of them."""
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


#: A blend's logits are clipped here: a probability of exactly 0 or 1 (float rounding of a very
#: sure model) would otherwise make the mean infinite whatever the other model says.
BLEND_CLIP = 1e-6


def blend_scores(llm: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """The blend of two P(like) scores: the sigmoid of the mean of their logits. No weight is
    fitted (nothing to tune on an evaluated period); the two models' confidences add up."""

    def logit(p: np.ndarray) -> np.ndarray:
        clipped = np.clip(np.asarray(p, np.float64), BLEND_CLIP, 1 - BLEND_CLIP)
        return np.log(clipped / (1 - clipped))

    return 1.0 / (1.0 + np.exp(-(logit(llm) + logit(signal)) / 2))


def demo_labels(demos: Any) -> list[int]:
    """The labels of one row's demonstrations (a list of ``{item_id, label, ...}`` mappings as a
    sample row or a served context holds them; None: none)."""
    return [] if demos is None else [int(demo["label"]) for demo in demos]


def blend_with(
    model: SignalModel | None,
    llm: np.ndarray,
    user_ids: Sequence[str] | np.ndarray,
    item_ids: Sequence[str] | np.ndarray,
    labels: Sequence[Sequence[int]],
) -> np.ndarray:
    """``llm`` (P(like) of each user and item, whose prompt showed demonstrations labelled
    ``labels``) blended with ``model`` (a version's ``train.blend``); as it is without one. The
    one place evaluation and serving blend, so that a version scores the same in both."""
    if model is None:
        return np.asarray(llm, np.float64)
    return blend_scores(llm, model.score_demos(user_ids, item_ids, labels))
