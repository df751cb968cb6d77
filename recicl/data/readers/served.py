"""What serving stored, added to the configured source (``data.served_dir``).

A re-tune (``recicl retune``) learns from the original log *plus* what users did while the
champion was serving: ``POST /v1/events`` writes those events to the interaction store, and
``POST /admin/items`` writes items that appeared after tuning. The re-tune exports both into a
folder (:data:`SERVED_EVENTS`, :data:`SERVED_CATALOG`) and points ``data.served_dir`` at it; this
module adds them to the source *before* validation, so they go through exactly the checks, the
quarantine, the de-duplication and the period cut of the logged events. No second pipeline.

Why the events become text in the *source's* timestamp unit: the validator parses one unit per
source (``timestamp_unit``), and the store holds unix seconds (the canonical unit). Why
``has_labels`` turns on: the store keeps the label each event was posted with (a click carries no
rating); logged rows without a label still fall back to ``rating >= like_threshold``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from recicl.data.readers.common import SourceData, raw_events
from recicl.data.schema import CATALOG, EVENTS
from recicl.errors import DataError

#: Events the store kept after the tuned log ended (EVENTS schema, unix seconds).
SERVED_EVENTS = "events.parquet"
#: Items added or changed while serving (CATALOG schema); they replace source rows of equal id.
SERVED_CATALOG = "catalog.parquet"

_UNIT_FACTOR = {"s": 1, "ms": 1_000, "us": 1_000_000}


def _read(path: Path, schema: pa.Schema, what: str) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise DataError(
            f"data.served_dir: {path} is not a readable Parquet file ({error})"
        ) from None
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise DataError(
            f"data.served_dir: {path} lacks the {what} columns {missing} (it holds "
            f"{table.column_names}); write it with `recicl retune` or set data.served_dir: null"
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise DataError(
            f"data.served_dir: {path} has columns of the wrong type ({error})"
        ) from None


def served_raw_events(events: pa.Table, timestamp_unit: str, file: str) -> pa.Table:
    """EVENTS rows → RAW_EVENTS text rows in ``timestamp_unit``, numbered by row (``line``)."""
    seconds = events["timestamp"].to_numpy().astype(np.int64)
    if timestamp_unit == "iso":
        stamps = pa.array(np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s"))
    else:
        stamps = pa.array(seconds * _UNIT_FACTOR[timestamp_unit]).cast(pa.string())
    n = events.num_rows
    columns = {
        "user_id": events["user_id"].combine_chunks(),
        "item_id": events["item_id"].combine_chunks(),
        "rating": pc.cast(events["rating"], pa.string()).combine_chunks(),
        "label": pc.cast(events["label"], pa.string()).combine_chunks(),
        "timestamp": stamps,
        "file": pa.array([file] * n, pa.string()),
        "line": pa.array(np.arange(1, n + 1, dtype=np.int64)),
    }
    return raw_events(columns, n)


def merged_catalog(source: pa.Table, served: pa.Table) -> pa.Table:
    """The source catalog with the served items added; a served item replaces the source row
    of the same id (``POST /admin/items`` updates as well as adds)."""
    replaced = pc.is_in(source["item_id"], value_set=served["item_id"].combine_chunks())
    return pa.concat_tables([source.filter(pc.invert(replaced)), served]).combine_chunks()


def add_served(data: SourceData, folder: Path) -> SourceData:
    """``data`` with the served events and items of ``folder`` added (DataError when the folder
    or its files are not what ``recicl retune`` writes)."""
    folder = folder.expanduser()
    events_path = folder / SERVED_EVENTS
    if not events_path.is_file():
        raise DataError(
            f"data.served_dir {folder} has no {SERVED_EVENTS}: point it at the folder "
            "`recicl retune` exported, or set data.served_dir: null"
        )
    events = _read(events_path, EVENTS, "event")
    if events.num_rows:
        raw = served_raw_events(events, data.timestamp_unit, str(events_path))
        data.events = data.events.union(ray.data.from_arrow(raw))
        data.has_labels = True
    catalog_path = folder / SERVED_CATALOG
    if catalog_path.is_file():
        data.catalog = merged_catalog(data.catalog, _read(catalog_path, CATALOG, "catalog"))
    data.layout += f"+served:{folder.name}"
    return data
