"""Strong non-LLM baselines as streaming variants, so an LLM's AUC is read against what the
recommender literature would field on the same samples.

Every baseline is fitted on every sample of the training periods and then scores evaluated
samples from two things only: what the sample row holds (its ``history`` and ``demos``, the
user's events strictly before the target) and what was frozen at the end of the training
periods (fitted weights, per-user and per-item counts). Nothing is updated afterwards: the same
"no update" promise the tuned LLM variants keep, so the table compares like with like.

* ``logistic`` / ``boosted-trees``: the leak-free signal models of
  ``benchmarks/bench_ceiling.py``, computed from sample rows: the demonstrations' like rate and
  count, the user's like rate and count over the training rows, the item's like rate and count.
  On a training row the user and item counts come from training rows *strictly before that row's
  timestamp* (online), so a row never sees its own label or a later one; on an evaluated row they
  are the counts frozen at the end of the training periods, never an event of an evaluated period.
* ``mf``: matrix factorization (user and item vectors and biases, logistic loss): the classic
  collaborative model. A user or item unseen in training has no vector and no bias, so an unseen
  user is scored on the item bias alone. :meth:`MatrixFactorization.item_vectors` exposes the
  fitted vectors (binary codes for prompts are built from them).
* ``sasrec``: SASRec's causal self-attention over the user's recent events (the sample's demos,
  each item with its label as an added embedding), adapted to this CTR protocol: the newest
  position's output is matched to the target item (a dot product, as SASRec ranks items) and
  read by a linear head (the user's current propensity to like), trained with binary
  cross-entropy on the label.
* ``din``: DIN, ReLLa's main baseline: target attention over the behaviours (the history's liked
  items and the demos' items with their labels), an MLP over the pooled interest and the target.

Items are represented by an id embedding plus the mean embedding of their catalog genres, so an
item that first appears after the training periods still has its genres; its id embedding (and
bias) is zero, as it was never fitted. The torch models are small and run on one thread with a
fixed seed: scores are deterministic for a fixed seed, and fitting takes seconds on the bundled
MovieLens (docs/baselines.md lists the measured times).

``<name>-retrained`` (:func:`retrained_scores`) refits a baseline on every period before each
evaluated period and scores that period with it: what regular retraining would buy, the row
RecICL's no-update promise is measured against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from recicl.config import ConfigError
from recicl.evaluate.baselines.common import (
    BASELINES,
    DEMO_SMOOTHING,
    ITEM_SMOOTHING,
    RETRAINED_BASELINES,
    RETRAINED_SUFFIX,
    SIGNAL_FEATURES,
    USER_SMOOTHING,
    Baseline,
    FrozenCounts,
    _check_training,
    online_counts,
)
from recicl.evaluate.baselines.neural import (
    DISLIKED,
    HISTORY,
    LIKED,
    Encoded,
    ItemSpace,
    MatrixFactorization,
    MFSettings,
    SequenceModel,
    SequenceSettings,
    encode,
    fit_mf,
    fit_sequence,
)
from recicl.modeling.signals import (
    SignalModel,
    SignalModelError,
    fit_signal_model,
    signal_features,
    training_signal_features,
)

__all__ = [
    "BASELINES",
    "DEMO_SMOOTHING",
    "DISLIKED",
    "HISTORY",
    "ITEM_SMOOTHING",
    "LIKED",
    "RETRAINED_BASELINES",
    "RETRAINED_SUFFIX",
    "SIGNAL_FEATURES",
    "USER_SMOOTHING",
    "Baseline",
    "Encoded",
    "FrozenCounts",
    "ItemSpace",
    "MFSettings",
    "MatrixFactorization",
    "SequenceModel",
    "SequenceSettings",
    "SignalModel",
    "SignalModelError",
    "encode",
    "fit_baseline",
    "fit_mf",
    "fit_sequence",
    "online_counts",
    "retrained_scores",
    "signal_features",
    "training_signal_features",
]


# -- the entry points ------------------------------------------------------------------------


def fit_baseline(name: str, train: pa.Table, catalog: pa.Table, *, seed: int) -> Baseline:
    """Fit baseline ``name`` (one of :data:`BASELINES`) on every row of ``train``.

    ``train`` holds the samples of the training periods only: whatever the result knows about
    users and items is frozen there. Deterministic for a fixed ``seed``."""
    if name not in BASELINES:
        raise ConfigError(
            f"experiment.variants: unknown baseline {name!r}; allowed: {', '.join(BASELINES)}"
        )
    _check_training(name, train)
    if name in ("logistic", "boosted-trees"):
        return fit_signal_model(name, train, seed)
    if name == "mf":
        return fit_mf(train, seed=seed)
    return fit_sequence(name, train, catalog, seed=seed)


def retrained_scores(
    name: str,
    read_periods: Callable[[list[int]], pa.Table],
    available: list[int],
    evaluated: pa.Table,
    catalog: pa.Table,
    *,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Scores of ``<name>-retrained`` (or ``name``) on ``evaluated``: for each of its periods,
    the baseline refitted on the samples of every ``available`` period before it.

    Returns the scores (aligned with ``evaluated``'s rows) and facts per evaluated period:
    training rows, fitting seconds (wall clock) and fitting CPU seconds (this process's, which
    a busy host does not inflate)."""
    base = name.removesuffix(RETRAINED_SUFFIX)
    periods = evaluated["period"].to_numpy()
    scores = np.zeros(evaluated.num_rows)
    facts: dict[str, Any] = {"train_rows": {}, "fit_seconds": {}, "fit_cpu_seconds": {}}
    for period in sorted(np.unique(periods).tolist()):
        train = read_periods([p for p in available if p < period])
        started, cpu = time.perf_counter(), time.process_time()
        model = fit_baseline(base, train, catalog, seed=seed)
        facts["train_rows"][str(period)] = train.num_rows
        facts["fit_seconds"][str(period)] = round(time.perf_counter() - started, 1)
        facts["fit_cpu_seconds"][str(period)] = round(time.process_time() - cpu, 1)
        mask = periods == period
        scores[mask] = model.score(evaluated.filter(pa.array(mask)), catalog)
    return scores, facts
