"""Names and the training check of the non-LLM baselines; the sample-row readers and the
leak-free counts they share live in :mod:`recicl.modeling.signals` (re-exported here)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa

from recicl.config import ConfigError
from recicl.modeling.signals import (
    DEMO_SMOOTHING,
    ITEM_SMOOTHING,
    SIGNAL_FEATURES,
    USER_SMOOTHING,
    FrozenCounts,
    _demo_columns,
    _flat,
    _labels,
    _logit,
    _one_thread,
    _row_of,
    _strings,
    online_counts,
)

__all__ = [
    "BASELINES",
    "DEMO_SMOOTHING",
    "ITEM_SMOOTHING",
    "RETRAINED_BASELINES",
    "RETRAINED_SUFFIX",
    "SIGNAL_FEATURES",
    "USER_SMOOTHING",
    "Baseline",
    "FrozenCounts",
    "_check_training",
    "_demo_columns",
    "_flat",
    "_labels",
    "_logit",
    "_one_thread",
    "_row_of",
    "_strings",
    "online_counts",
]


#: The baseline names, in the order tables list them (each is a streaming variant).
BASELINES: tuple[str, ...] = ("logistic", "boosted-trees", "mf", "sasrec", "din")
RETRAINED_SUFFIX = "-retrained"
#: ``<name>-retrained``: the baseline refitted on every period before each evaluated period.
RETRAINED_BASELINES: tuple[str, ...] = tuple(f"{name}{RETRAINED_SUFFIX}" for name in BASELINES)


class Baseline(Protocol):
    """A fitted baseline: P(like) of each sample, from the sample row and frozen state only."""

    def score(self, samples: pa.Table, catalog: pa.Table) -> np.ndarray: ...


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
