"""ICL sample construction: a user's ordered events → one sample per eligible target event.

Semantics (the contract every later stage relies on):

* A user's events are ordered by ``(timestamp, item_id)`` (then rating, label, so the order is
  total); "before" means earlier in that order. Exact repeats of an event are flagged as
  duplicates and take no part in anything below.
* ``history`` of an event = the user's ``history_len`` latest *liked* events strictly before it,
  oldest → newest.
* ``demos`` of a sample = the user's ``num_demos`` latest events strictly before the target,
  oldest → newest, each with its own ``history`` (computed at the demo's own position).
* A sample exists for every event with at least ``min_demos`` earlier events.

Those are the ``recent`` policies. With a :class:`Selection` of other policies
(:mod:`recicl.data.retrieval`), demos and histories are chosen among the same earlier events by
similarity to the event's item instead. An augmented copy (``augment``) is an extra column
``demos@<policy>``; where the copy also replaces histories (``augment_replaces`` history or
both), a ``history@<policy>`` column too, and the demonstrations in ``demos@<policy>`` carry
those histories.

Why one vectorized function over *many* users at once: the Ray Data path calls it once per
hash partition of users (whole users per partition), the single-process reference in the
benchmark calls it once on the whole table, and both must agree by construction. Everything is
index arithmetic on NumPy arrays plus Arrow ``take``: no per-row Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recicl.data.item_embeddings import ItemEmbeddings
from recicl.data.retrieval import DemoQuality, recent_slots, select_similar
from recicl.data.schema import DEMO, SAMPLES

KIND_SAMPLE, KIND_CONTEXT_ONLY, KIND_DUPLICATE = 0, 1, 2
ORDER = [
    ("user_id", "ascending"),
    ("timestamp", "ascending"),
    ("item_id", "ascending"),
    ("rating", "ascending"),
    ("label", "ascending"),
]

#: Output of the per-user stage: every event, annotated. ``kind`` says whether the event is a
#: sample (0), only context for later samples (1: too few earlier events) or a duplicate (2);
#: only samples' history/demos are read (context-only rows carry no demos, duplicates nulls).
#: ``period`` is filled in later, once the period boundaries are known.
ANNOTATED = pa.schema(
    [
        ("sample_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("label", pa.int8()),
        ("rating", pa.float64()),
        ("kind", pa.int8()),
        ("history", pa.list_(pa.string())),
        ("demos", pa.list_(DEMO)),
    ]
)


AUGMENTED_PREFIX = "demos@"
AUGMENTED_HISTORY_PREFIX = "history@"


@dataclass(frozen=True)
class Selection:
    """Which earlier events a build puts into prompts (``samples.*_policy``, see
    :mod:`recicl.data.retrieval`). The default is the recent policies, which need no vectors."""

    demo_policy: str = "recent"
    history_policy: str = "recent"
    recent_share: float = 0.5
    window: int = 200
    augment: tuple[str, ...] = ()
    augment_replaces: str = "demos"
    embeddings: ItemEmbeddings | None = field(default=None, compare=False)
    quality: DemoQuality | None = None

    @property
    def extra_policies(self) -> tuple[str, ...]:
        """Augmentation policies whose copy differs from the main samples (each an extra
        demos column, and a history column where the copies replace histories)."""
        demos = self.augment_replaces in ("demos", "both")
        history = self.augment_replaces in ("history", "both")
        return tuple(
            p
            for p in self.augment
            if (demos and p != self.demo_policy) or (history and p != self.history_policy)
        )

    @property
    def replaces_history(self) -> bool:
        """Whether the augmented copies choose their histories by their own policy."""
        return self.augment_replaces != "demos"

    def quality_args(self, policy: str, labels: np.ndarray) -> dict[str, Any]:
        """Extra arguments of ``select_similar`` for ``policy`` (the estimator for quality)."""
        if policy != "quality":
            return {}
        if self.quality is None:
            raise ValueError(
                "the quality policy needs a fitted estimator: set samples.demo_quality "
                "(`recicl samples demo-quality` writes one)"
            )
        return {"quality": self.quality, "liked": labels, "window": self.window}

    def vectors_of(self, items: pa.Array) -> np.ndarray:
        """Vectors of ``items`` (zero rows for items without one)."""
        return self.vectors_of_ids(items.to_pylist())

    def vectors_of_ids(self, items: list[str]) -> np.ndarray:
        """Vectors of the item ids ``items`` (zero rows for items without one)."""
        if self.embeddings is None:
            raise ValueError(
                "semantic/mixed policies need item embeddings: set samples.embeddings or let "
                "the build embed the catalog"
            )
        return self.embeddings.vectors(items)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``[start, start + length)`` ranges: (int32 list offsets, int64 indices)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    indices = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - starts, lengths)
    return offsets.astype(np.int32), indices


def _list(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def annotate_events(
    events: pa.Table,
    *,
    num_demos: int,
    history_len: int,
    min_demos: int,
    selection: Selection | None = None,
) -> pa.Table:
    """Canonical events of one or more users → ANNOTATED rows (see module docstring), plus a
    ``demos@<policy>`` column per augmentation policy of ``selection``."""
    selection = selection or Selection()
    table = events.select(["user_id", "item_id", "timestamp", "label", "rating"]).sort_by(ORDER)
    n = table.num_rows
    if n == 0:
        return _with_augmented_columns(ANNOTATED.empty_table(), selection)
    table = table.combine_chunks()
    user = table["user_id"].chunk(0)
    item = table["item_id"].chunk(0)
    timestamp = table["timestamp"].to_numpy()
    label = table["label"].to_numpy()
    rating = table["rating"].chunk(0)

    same = _exact_duplicates(user, item, timestamp, label, rating)
    keep = np.flatnonzero(~same)
    m = len(keep)
    k_user = user.take(pa.array(keep))
    k_item = item.take(pa.array(keep))
    k_time = timestamp[keep]
    k_label = label[keep].astype(np.int8)

    # Position of each kept event within its user.
    new_user = np.ones(m, dtype=bool)
    if m > 1:
        new_user[1:] = pc.not_equal(k_user[1:], k_user[:-1]).to_numpy(zero_copy_only=False)
    start = np.maximum.accumulate(np.where(new_user, np.arange(m), 0))
    position = np.arange(m) - start

    # Histories of every kept event: the latest liked events of the same user strictly before.
    liked = k_label == 1
    likes_before = np.concatenate([[0], np.cumsum(liked)[:-1]])  # global, exclusive
    user_likes_before = likes_before - likes_before[start]
    liked_rows = np.flatnonzero(liked)
    vectors = None
    if {selection.history_policy, selection.demo_policy, *selection.extra_policies} != {"recent"}:
        vectors = selection.vectors_of(k_item)

    def history_list(policy: str) -> pa.ListArray:
        if policy == "recent":
            history_count = np.minimum(user_likes_before, history_len)
            hist_offsets, hist_pos = _ranges(likes_before - history_count, history_count)
        else:
            assert vectors is not None
            hist_offsets, hist_pos = select_similar(
                vectors,
                vectors[liked_rows],
                likes_before,
                np.minimum(user_likes_before, selection.window),
                k=history_len,
                recent=recent_slots(policy, history_len, selection.recent_share),
            )
        return _list(hist_offsets, k_item.take(pa.array(liked_rows[hist_pos])))

    history_all = history_list(selection.history_policy)

    # Demos: earlier events of the same user (none for context-only rows, whose history/demos
    # are never read: to_samples keeps only kind == sample).
    is_sample = position >= min_demos

    def demo_list(policy: str, histories: pa.ListArray) -> pa.ListArray:
        if policy == "recent":
            demo_count = np.where(is_sample, np.minimum(position, num_demos), 0)
            demo_offsets, demo_rows = _ranges(np.arange(m) - demo_count, demo_count)
        else:
            assert vectors is not None
            demo_offsets, demo_rows = select_similar(
                vectors,
                vectors,
                np.arange(m),
                np.where(is_sample, np.minimum(position, selection.window), 0),
                k=num_demos,
                recent=recent_slots(policy, num_demos, selection.recent_share),
                **selection.quality_args(policy, k_label),
            )
        demo_take = pa.array(demo_rows)
        demo_struct = pa.StructArray.from_arrays(
            [
                k_item.take(demo_take),
                pa.array(k_label[demo_rows]),
                pa.array(k_time[demo_rows]),
                histories.take(demo_take),
            ],
            fields=list(DEMO),
        )
        return _list(demo_offsets, demo_struct)

    sample_id = pc.binary_join_element_wise(k_user, pa.array(position).cast(pa.string()), "#")
    kept = pa.table(
        [
            sample_id,
            k_user,
            k_item,
            pa.array(k_time),
            pa.array(k_label),
            rating.take(pa.array(keep)),
            pa.array(np.where(is_sample, KIND_SAMPLE, KIND_CONTEXT_ONLY).astype(np.int8)),
            history_all,
            demo_list(selection.demo_policy, history_all),
        ],
        schema=ANNOTATED,
    )
    kept = _with_copies(kept, selection, history_all, history_list, demo_list)
    if m == n:
        return kept
    duplicates = _duplicate_rows(table.take(pa.array(np.flatnonzero(same))))
    return pa.concat_tables([kept, _with_augmented_columns(duplicates, selection)])


def _with_copies(
    kept: pa.Table,
    selection: Selection,
    history_all: pa.ListArray,
    history_list: Callable[[str], pa.ListArray],
    demo_list: Callable[[str, pa.ListArray], pa.ListArray],
) -> pa.Table:
    """``kept`` with the columns of every augmented copy (``demos@<policy>``, and
    ``history@<policy>`` where copies replace histories), built by the given list makers;
    ``history_all`` are the main histories, which copies that keep them reuse."""
    for policy in selection.extra_policies:
        histories = history_list(policy) if selection.replaces_history else history_all
        demo_policy = selection.demo_policy if selection.augment_replaces == "history" else policy
        kept = kept.append_column(
            pa.field(AUGMENTED_PREFIX + policy, ANNOTATED.field("demos").type),
            demo_list(demo_policy, histories),
        )
        if selection.replaces_history:
            kept = kept.append_column(
                pa.field(AUGMENTED_HISTORY_PREFIX + policy, ANNOTATED.field("history").type),
                histories,
            )
    return kept


def _exact_duplicates(
    user: pa.Array, item: pa.Array, timestamp: np.ndarray, label: np.ndarray, rating: pa.Array
) -> np.ndarray:
    """True for every event equal to the one before it (exact duplicates are adjacent after
    the total sort). Ratings are finite, so -inf can stand in for "no rating" and two missing
    ratings compare equal."""
    n = len(timestamp)
    rating_values = rating.fill_null(-np.inf).to_numpy()
    same = np.zeros(n, dtype=bool)
    if n > 1:
        same[1:] = (
            pc.equal(user[1:], user[:-1]).to_numpy(zero_copy_only=False)
            & pc.equal(item[1:], item[:-1]).to_numpy(zero_copy_only=False)
            & (timestamp[1:] == timestamp[:-1])
            & (label[1:] == label[:-1])
            & (rating_values[1:] == rating_values[:-1])
        )
    return same


def _duplicate_rows(dropped: pa.Table) -> pa.Table:
    """ANNOTATED rows of kind duplicate for the dropped events (no sample id, history or
    demos: they are quarantined, never read as samples)."""
    nd = dropped.num_rows
    return pa.table(
        [
            pa.nulls(nd, pa.string()),
            dropped["user_id"],
            dropped["item_id"],
            dropped["timestamp"],
            dropped["label"].cast(pa.int8()),
            dropped["rating"],
            pa.array(np.full(nd, KIND_DUPLICATE, dtype=np.int8)),
            pa.nulls(nd, ANNOTATED.field("history").type),
            pa.nulls(nd, ANNOTATED.field("demos").type),
        ],
        schema=ANNOTATED,
    )


def _with_augmented_columns(table: pa.Table, selection: Selection) -> pa.Table:
    """``table`` with null augmentation columns (``demos@<policy>``, and ``history@<policy>``
    where copies replace histories) in :func:`annotate_events`' order (rows that have no demos:
    duplicates, empty partitions), so every block has the same schema."""
    demos_type, history_type = ANNOTATED.field("demos").type, ANNOTATED.field("history").type
    for policy in selection.extra_policies:
        table = table.append_column(
            pa.field(AUGMENTED_PREFIX + policy, demos_type), pa.nulls(table.num_rows, demos_type)
        )
        if selection.replaces_history:
            table = table.append_column(
                pa.field(AUGMENTED_HISTORY_PREFIX + policy, history_type),
                pa.nulls(table.num_rows, history_type),
            )
    return table


def to_samples(annotated: pa.Table, periods: pa.Array, policy: str | None = None) -> pa.Table:
    """Sample rows of an annotated table with their period, in the SAMPLES schema; with
    ``policy``, the copy of that augmentation policy (column ``demos@<policy>``, and
    ``history@<policy>`` where the build replaced histories)."""
    with_period = annotated.append_column("period", periods.cast(pa.int16()))
    chosen = with_period.filter(pc.equal(with_period["kind"], KIND_SAMPLE))
    if policy is not None:
        for column, prefix in (("demos", AUGMENTED_PREFIX), ("history", AUGMENTED_HISTORY_PREFIX)):
            if prefix + policy in chosen.column_names:
                index = chosen.schema.get_field_index(column)
                chosen = chosen.set_column(index, column, chosen[prefix + policy])
    return chosen.select(SAMPLES.names).cast(SAMPLES)
