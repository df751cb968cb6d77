"""Perturbed in-context samples: the contexts a robust recommender must not be thrown by.

LRGD reads an LLM's in-context recommendation as gradient descent on a dual model whose
training set is the demonstrations; a model tuned on clean, well-chosen demonstrations only can
then be derailed by the contexts serving actually sees: fewer events, events out of order,
clicks that contradict the user's taste, another person on a shared account. These functions make
such contexts from a sample's own fields, for two uses:

* **tuning** (``train.perturb``): a seeded share of the training samples is perturbed, so the
  model learns to weigh its demonstrations instead of copying them;
* **robustness evaluation** (``experiment.perturbations``): every evaluated sample is scored again
  under one named perturbation (:data:`PRESETS`), beside its clean score.

What each does, on a sample's ``demos`` (time order, oldest first) and ``history``:
drop a share of the demonstrations (``demo_dropout``), put them in a random order (``shuffle``),
flip a share of their labels (``label_flip``), replace them by another user's
(``foreign_demos``: a probability per sample), drop a share of the history items
(``history_drop``). Shares are exact counts (``round(share * n)``), so 25 % of 8 labels is always
2 flips. The replaced demonstrations come from another row of the same batch and only those
older than the sample's own target: no perturbation ever shows the target or a later event.
Every draw is seeded by the sample id (:func:`~recicl.data.samples_folder.sample_keys`): the
same sample is perturbed the same way in every run, on any number of workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from recicl.config import PerturbConfig
from recicl.data.samples_folder import sample_keys

#: The test-time perturbations of ``experiment.perturbations`` (issue 25's robustness protocol).
PRESETS: dict[str, PerturbConfig] = {
    "flip25": PerturbConfig(share=1.0, label_flip=0.25),
    "shuffle": PerturbConfig(share=1.0, shuffle=True),
    "drop-half": PerturbConfig(share=1.0, demo_dropout=0.5),
    "foreign": PerturbConfig(share=1.0, foreign_demos=1.0),
}


#: Mixed into the seed of the perturbation draws (see :func:`perturb_table`).
_SALT = 0x9E3779B97F4A7C15


def _count(share: float, n: int) -> int:
    return min(n, round(share * n))


def perturb_row(
    row: dict[str, Any],
    spec: PerturbConfig,
    rng: np.random.Generator,
    donors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``row`` (a SAMPLES row as a dict) with its context perturbed as ``spec`` says; the row
    itself is not changed. ``donors``: other rows whose demonstrations ``foreign_demos`` may
    take (only another user's, only those before this row's target)."""
    demos = [dict(demo) for demo in row.get("demos") or []]
    history = list(row.get("history") or [])
    if spec.foreign_demos and donors and rng.random() < spec.foreign_demos:
        for index in rng.permutation(len(donors)):
            donor = donors[int(index)]
            if donor["user_id"] == row["user_id"]:
                continue
            earlier = [
                dict(d) for d in donor.get("demos") or [] if d["timestamp"] < row["timestamp"]
            ]
            if earlier:
                demos = earlier[-len(demos) :] if demos else earlier
                break
    if spec.demo_dropout and demos:
        dropped = set(rng.choice(len(demos), _count(spec.demo_dropout, len(demos)), False))
        demos = [demo for k, demo in enumerate(demos) if k not in dropped]
    if spec.label_flip and demos:
        for k in rng.choice(len(demos), _count(spec.label_flip, len(demos)), replace=False):
            demos[int(k)]["label"] = 1 - int(demos[int(k)]["label"])
    if spec.shuffle and len(demos) > 1:
        demos = [demos[int(k)] for k in rng.permutation(len(demos))]
    if spec.history_drop and history:
        dropped = set(rng.choice(len(history), _count(spec.history_drop, len(history)), False))
        history = [item for k, item in enumerate(history) if k not in dropped]
    return {**row, "demos": demos, "history": history}


def _chosen(table: pa.Table, spec: PerturbConfig, seed: int, periods: list[int] | None) -> Any:
    """(keys, mask): the seeded per-row keys and which rows ``spec.share`` perturbs."""
    # keys of their own: the training order sorts by sample_keys(ids, seed), and the perturbed
    # rows must not be the first ones trained on
    keys = sample_keys(table["sample_id"].to_numpy(zero_copy_only=False), seed ^ _SALT)
    if spec.share >= 1.0:
        chosen = np.ones(table.num_rows, dtype=bool)
    else:
        chosen = keys < np.uint64(min(int(spec.share * 2.0**64), 2**64 - 1))
    if periods is not None:
        chosen &= np.isin(table["period"].to_numpy(), periods)
    return keys, chosen


def perturb_table(
    table: pa.Table,
    spec: PerturbConfig,
    seed: int,
    periods: list[int] | None = None,
) -> pa.Table:
    """``table`` (SAMPLES rows) with the contexts of a seeded ``spec.share`` of its rows (of
    ``periods`` only, when given) perturbed; the schema and row order are kept. A row is chosen
    and perturbed by its sample id alone, so the result does not depend on how rows are batched,
    except which other rows a ``foreign_demos`` replacement can come from."""
    if not spec.active or table.num_rows == 0:
        return table
    rows = table.to_pylist()
    keys, chosen = _chosen(table, spec, seed, periods)
    out = [
        perturb_row(row, spec, np.random.default_rng([seed, int(key)]), rows) if pick else row
        for row, key, pick in zip(rows, keys, chosen, strict=True)
    ]
    return pa.Table.from_pylist(out, schema=table.schema)


def with_twins(
    table: pa.Table,
    spec: PerturbConfig,
    seed: int,
    periods: list[int] | None = None,
) -> pa.Table:
    """``table`` with each row's perturbed **twin** context beside its clean one:
    ``twin_demos``/``twin_history`` (what :func:`perturb_table` makes of the row) and
    ``has_twin`` (whether the row was chosen; if not, the twin columns repeat the clean ones).
    The Ray Data UDF of ``train.perturb`` (``batch_format="pyarrow"``): training encodes both,
    and each stage reads the clean context, the twin instead of it, or both (the consistency
    loss)."""
    perturbed = perturb_table(table, spec, seed, periods)
    _, chosen = _chosen(table, spec, seed, periods)
    if not spec.active:
        chosen = np.zeros(table.num_rows, dtype=bool)
    return (
        table.append_column("twin_demos", perturbed["demos"])
        .append_column("twin_history", perturbed["history"])
        .append_column("has_twin", pa.array(chosen, type=pa.bool_()))
    )
