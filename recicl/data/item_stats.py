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

The same table carries each item's **taste code** (``prompt.item_codes``, BinLLM's idea of
collaborative knowledge as text): the like/dislike matrix of the knowledge periods (+1 / −1,
users × items) is factorised by a truncated SVD (PureSVD, a matrix factorisation with no
training loop: deterministic, seconds on a log this size), and each item's factor vector is cut
at the per-factor median into bits. Items liked by the same users share bits, so a model can
relate a candidate to the demonstrations its user liked. BinLLM learns a hashing layer jointly
with the CF model; the sign of a centred factor is the untrained form of the same hash, and it
needs no model to be shipped with the version, only the codes. Items with fewer than
``samples.item_code_min_events`` counted events get no code: their factor is noise, and the
fewer the events, the more a training question's own answer moves its item's code.

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
        pa.field("code", pa.string()),  # taste code bits ("1011..."); null: too few events
    ]
)


def _knowledge_events(boundaries: np.ndarray, periods: list[int], columns: list[str]) -> Any:
    """A ``map_batches`` function keeping the events of ``periods`` (duplicates left out), with
    ``columns`` and an int64 ``label``."""
    wanted = pa.array(sorted(set(periods)), pa.int64())

    def keep(batch: pa.Table) -> pa.Table:
        period = pa.array(assign_periods(batch["timestamp"].to_numpy(), boundaries), pa.int64())
        mask = pc.and_(
            pc.is_in(period, wanted),
            pc.not_equal(batch["kind"], KIND_DUPLICATE),
        )
        chosen = batch.filter(mask)
        return pa.table(
            {**{c: chosen[c] for c in columns}, "label": chosen["label"].cast(pa.int64())}
        )

    return keep


def item_stats_from_events(
    events: ray.data.Dataset, boundaries: np.ndarray, periods: list[int]
) -> pa.Table:
    """Events and likes per item over the events of ``periods`` (duplicates left out).

    ``events``: annotated events with ``item_id``, ``label``, ``kind`` and ``timestamp``;
    ``boundaries``: the build's period boundaries. A Ray Data filter + group-by: the per-item
    aggregate is the only thing gathered on the driver.
    """
    from ray.data.aggregate import Count, Sum

    keep = _knowledge_events(boundaries, periods, ["item_id"])
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
            "code": pa.nulls(table.num_rows, pa.string()),
        },
        schema=ITEM_STATS,
    )
    return table.sort_by("item_id")


def item_codes_from_events(
    events: ray.data.Dataset,
    boundaries: np.ndarray,
    periods: list[int],
    bits: int,
    min_events: int,
) -> tuple[dict[str, str], int]:
    """Taste codes of the items with ``min_events`` or more events in ``periods``, and the
    number of bits they have (fewer than ``bits`` when the matrix is smaller than that).

    The (user, item, label) triples are gathered on the driver: the SVD needs the whole sparse
    matrix (12 bytes an event), which is what bounds this step, not the group-by."""
    import ray

    keep = _knowledge_events(boundaries, periods, ["user_id", "item_id"])
    refs = events.map_batches(keep, batch_size=None, batch_format="pyarrow").to_arrow_refs()
    parts = [part for part in ray.get(refs) if part.num_rows]
    if not parts:
        return {}, 0
    triples = pa.concat_tables(parts)
    return item_codes(
        triples["user_id"].to_numpy(zero_copy_only=False),
        triples["item_id"].to_numpy(zero_copy_only=False),
        triples["label"].to_numpy(),
        bits,
        min_events,
    )


def item_codes(
    users: np.ndarray, items: np.ndarray, labels: np.ndarray, bits: int, min_events: int
) -> tuple[dict[str, str], int]:
    """{item id: "1011…"} from like (1) / dislike (0) events: the signs of each item's truncated
    SVD factors of the ±1 user × item matrix, centred at each factor's median over the coded
    items (balanced bits: each splits the coded items in half). Deterministic: ids are sorted
    before the matrix is built and the SVD is seeded."""
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD

    user_ids, user_index = np.unique(users.astype(str), return_inverse=True)
    item_ids, item_index = np.unique(items.astype(str), return_inverse=True)
    rank = min(bits, len(user_ids) - 1, len(item_ids) - 1)
    counts = np.bincount(item_index, minlength=len(item_ids))
    coded = counts >= min_events
    if rank < 1 or coded.sum() < 2:
        return {}, 0
    signs = sparse.coo_matrix(
        (2.0 * labels.astype(np.float64) - 1.0, (user_index, item_index)),
        shape=(len(user_ids), len(item_ids)),
    ).tocsr()  # a pair rated twice sums; its sign is what the user mostly did
    signs.data = np.sign(signs.data)
    factors = TruncatedSVD(rank, algorithm="randomized", n_iter=7, random_state=0).fit(signs)
    vectors = factors.components_.T[coded]
    bit_rows = vectors > np.median(vectors, axis=0)
    codes = {
        str(item): "".join("1" if b else "0" for b in row)
        for item, row in zip(item_ids[coded], bit_rows, strict=True)
    }
    return codes, rank


def with_item_codes(table: pa.Table, codes: dict[str, str]) -> pa.Table:
    """The statistics table with its ``code`` column set from ``codes`` (null elsewhere)."""
    column = pa.array([codes.get(item) for item in table["item_id"].to_pylist()], pa.string())
    index = table.schema.get_field_index("code")
    return table.set_column(index, ITEM_STATS.field("code"), column)


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
            f"prompt.item_stats or item_codes is on but {path} does not exist: rebuild the "
            "samples with "
            "`recicl samples build` (it writes item_stats.parquet for "
            "samples.item_stats_periods), or set prompt.item_stats: false"
        )
    table = pq.read_table(path)
    missing = {"item_id", "events", "likes"} - set(table.column_names)
    if missing:
        raise ConfigError(f"{path} lacks columns {sorted(missing)}: rebuild the samples")
    if "code" not in table.column_names:  # built before taste codes existed
        table = table.append_column(
            ITEM_STATS.field("code"), pa.nulls(table.num_rows, pa.string())
        ).replace_schema_metadata(table.schema.metadata)
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
    """The statistics (and taste codes) a builder with ``prompt`` needs from a samples folder
    (None when the prompt shows neither)."""
    if not prompt.shows_item_knowledge:
        return None
    return read_item_stats(Path(samples_root) / ITEM_STATS_FILE)
