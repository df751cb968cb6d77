"""Item statistics frozen at the end of the training periods: collaborative knowledge as text.

An LLM that reads a user's recent decisions learns the user's current like rate well, but not
which of a user's candidates are better than the others: a classical model learns that from a
weight per item id. This module computes what such a weight summarises, per item, from the
events of the *knowledge periods* only (``samples.item_stats_periods``, by default the
experiment's training periods): how many events the item had and how many were likes. The
prompt builder renders them next to the item's title ("72% of 140 viewers liked it"), so a model
tuned with them can rank a user's candidates by what other users thought of them.

Why frozen: RecICL's promise is "no update after tuning"; statistics refreshed from the
evaluated periods would be an update by another name (and, offline, a leak of the labels being
predicted). Every consumer checks that no evaluated period is among the knowledge periods
(:func:`check_no_leak`). Within the training periods a training row's own event is counted in
its item's statistics, exactly as a classical model's item weight is fitted on its own label;
the prompt shows a rate only from ``prompt.item_stats_min_count`` events on, rounded, so one
event moves what is shown by a few points at most.

The table is built with the samples (a Ray Data group-by, so it scales with the log), copied
into every model version tuned with it (the served version carries its frozen statistics), and
read by training, evaluation and serving through :func:`read_item_stats`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recicl.config import ITEM_STATS_META_KEY as STATS_META_KEY
from recicl.config import ConfigError, PromptConfig
from recicl.data.periods import assign_periods
from recicl.data.samples import KIND_DUPLICATE

if TYPE_CHECKING:
    import ray.data

ITEM_STATS_FILE = "item_stats.parquet"
ITEM_STATS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("events", pa.int64(), nullable=False),
        pa.field("likes", pa.int64(), nullable=False),
    ]
)


def item_stats_from_events(
    events: ray.data.Dataset, boundaries: np.ndarray, periods: list[int]
) -> pa.Table:
    """Events and likes per item over the events of ``periods`` (duplicates left out).

    ``events``: annotated events with ``item_id``, ``label``, ``kind`` and ``timestamp``;
    ``boundaries``: the build's period boundaries. A Ray Data filter + group-by: the per-item
    aggregate is the only thing gathered on the driver.
    """
    from ray.data.aggregate import Count, Sum

    wanted = pa.array(sorted(set(periods)), pa.int64())

    def keep(batch: pa.Table) -> pa.Table:
        period = pa.array(assign_periods(batch["timestamp"].to_numpy(), boundaries), pa.int64())
        mask = pc.and_(
            pc.is_in(period, wanted),
            pc.not_equal(batch["kind"], KIND_DUPLICATE),
        )
        chosen = batch.filter(mask)
        return pa.table({"item_id": chosen["item_id"], "label": chosen["label"].cast(pa.int64())})

    grouped = (
        events.map_batches(keep, batch_size=None, batch_format="pyarrow")
        .groupby("item_id")
        .aggregate(Count(alias_name="events"), Sum("label", alias_name="likes"))
    )
    parts = [
        pa.Table.from_pandas(b, preserve_index=False)
        for b in grouped.iter_batches(batch_format="pandas", batch_size=None)
    ]
    if not parts or not sum(p.num_rows for p in parts):
        return ITEM_STATS.empty_table()
    table = pa.concat_tables(parts, promote_options="permissive")
    table = pa.table(
        {
            "item_id": table["item_id"].cast(pa.string()),
            "events": table["events"].cast(pa.int64()),
            "likes": pc.fill_null(table["likes"], 0).cast(pa.int64()),
        },
        schema=ITEM_STATS,
    )
    return table.sort_by("item_id")


def write_item_stats(table: pa.Table, path: Path, meta: dict[str, Any]) -> None:
    """Write the table with ``meta`` (``until_ts``, ``until_period``) in its Parquet metadata:
    the file alone says which events it counted, also once copied into a model version."""
    table = table.cast(ITEM_STATS).replace_schema_metadata(
        {STATS_META_KEY: json.dumps(meta, sort_keys=True).encode()}
    )
    pq.write_table(table, path)


def item_stats_meta(table: pa.Table) -> dict[str, Any]:
    """{"until_ts": ..., "until_period": ...} of a statistics table ({} when absent)."""
    raw = (table.schema.metadata or {}).get(STATS_META_KEY)
    return json.loads(raw) if raw else {}


def read_item_stats(path: str | Path) -> pa.Table:
    """The statistics table at ``path``; a clear error naming the build command otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"prompt.item_stats is on but {path} does not exist: rebuild the samples with "
            "`recicl samples build` (it writes item_stats.parquet for "
            "samples.item_stats_periods), or set prompt.item_stats: false"
        )
    table = pq.read_table(path)
    missing = {"item_id", "events", "likes"} - set(table.column_names)
    if missing:
        raise ConfigError(f"{path} lacks columns {sorted(missing)}: rebuild the samples")
    return table


def check_no_leak(until_period: int | None, evaluated: list[int], what: str) -> None:
    """Refuse to score ``evaluated`` periods with item statistics that counted any of their
    events (every period up to ``until_period`` was counted)."""
    if until_period is None:
        return
    counted = sorted(p for p in set(evaluated) if p <= until_period)
    if counted:
        raise ConfigError(
            f"{what}: the item statistics in its prompts count every event up to period "
            f"{until_period}, so scoring periods {counted} would show the model their own "
            "answers; evaluate later periods only, or rebuild the samples with "
            "samples.item_stats_until set before the first evaluated period"
        )


def prompt_item_stats(prompt: PromptConfig, samples_root: str | Path) -> pa.Table | None:
    """The statistics a builder with ``prompt`` needs from a samples folder (None when the
    prompt shows none)."""
    if not prompt.item_stats:
        return None
    return read_item_stats(Path(samples_root) / ITEM_STATS_FILE)
