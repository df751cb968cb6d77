"""Names, shared row readers and the leak-free online/frozen counts of the non-LLM baselines."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recicl.config import ConfigError

if TYPE_CHECKING:
    pass


#: The baseline names, in the order tables list them (each is a streaming variant).
BASELINES: tuple[str, ...] = ("logistic", "boosted-trees", "mf", "sasrec", "din")
RETRAINED_SUFFIX = "-retrained"
#: ``<name>-retrained``: the baseline refitted on every period before each evaluated period.
RETRAINED_BASELINES: tuple[str, ...] = tuple(f"{name}{RETRAINED_SUFFIX}" for name in BASELINES)

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


class Baseline(Protocol):
    """A fitted baseline: P(like) of each sample, from the sample row and frozen state only."""

    def score(self, samples: pa.Table, catalog: pa.Table) -> np.ndarray: ...


# -- reading sample rows ---------------------------------------------------------------------


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


def _check_training(name: str, train: pa.Table) -> None:
    if train.num_rows == 0:
        raise ConfigError(
            f"baseline {name!r}: no training samples (experiment.train_periods holds no rows)"
        )
    if len(np.unique(_labels(train))) < 2:
        raise ConfigError(
            f"baseline {name!r}: every training sample has the same label; a classifier needs "
            "likes and dislikes (experiment.train_periods)"
        )


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


# -- leak-free signals (logistic, boosted-trees) ---------------------------------------------


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
