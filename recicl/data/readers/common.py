"""Building blocks shared by every reader: line splitting, raw event tables, catalog checks.

Functions named ``parse_*`` run inside Ray Data tasks; they live at module level so that they
pickle cheaply.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from recicl.data.schema import CATALOG, RAW_EVENTS
from recicl.errors import DataError

#: Rejected catalog rows: what we could extract, the raw line, and why.
CATALOG_REJECTS = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("raw", pa.string()),
        ("reason", pa.string()),
    ]
)


@dataclass
class SourceData:
    """What a reader hands to validation: lazy raw events, the catalog, and the source's rules."""

    events: ray.data.Dataset
    catalog: pa.Table
    catalog_rejects: pa.Table
    rating_range: tuple[float, float] | None
    timestamp_unit: str
    has_labels: bool
    layout: str


def split_lines(
    lines: pa.Array, sep: str, names: Sequence[str | None], min_fields: int | None = None
) -> tuple[pa.Table, pa.Array, pa.Array]:
    """Split text lines on ``sep`` into named string columns.

    Returns (good rows as a table of ``names`` that are not None, the good lines, the bad lines).
    A line is good when it has exactly ``len(names)`` fields (or at least ``min_fields``).
    """
    parts = pc.split_pattern(lines, sep)
    counts = pc.list_value_length(parts)
    good = (
        pc.equal(counts, len(names)) if min_fields is None else pc.greater_equal(counts, min_fields)
    )
    good_parts = parts.filter(good)
    columns = {
        name: pc.utf8_trim_whitespace(pc.list_element(good_parts, index))
        for index, name in enumerate(names)
        if name is not None
    }
    return pa.table(columns), lines.filter(good), lines.filter(pc.invert(good))


def raw_events(columns: dict[str, pa.Array], length: int, keep_types: bool = False) -> pa.Table:
    """Assemble a RAW_EVENTS table from whichever canonical columns a source provides.

    With ``keep_types`` numeric rating/label/timestamp columns stay numeric (typed sources skip
    the text round trip; the validator accepts both).
    """
    nulls = pa.nulls(length, pa.string())
    arrays = []
    for field in RAW_EVENTS:
        values = columns.get(field.name, nulls)
        numeric = pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
        arrays.append(values if keep_types and numeric else values.cast(pa.string()))
    return pa.table(arrays, names=RAW_EVENTS.names)


def _malformed(lines: pa.Array, reason: str = "malformed_line") -> pa.Table:
    return raw_events(
        {"raw": lines, "reason": pa.array([reason] * len(lines), pa.string())}, len(lines)
    )


def parse_event_lines(
    batch: pa.Table, *, sep: str, names: Sequence[str | None], header: str | None = None
) -> pa.Table:
    """Ray Data UDF: a batch of ``text`` lines → RAW_EVENTS (bad lines kept with a reason)."""
    lines = batch["text"].combine_chunks()
    if header is not None:
        lines = lines.filter(pc.not_equal(pc.utf8_trim_whitespace(lines), header))
    good, _, bad = split_lines(lines, sep, names)
    events = raw_events({name: good[name] for name in good.column_names}, good.num_rows)
    return pa.concat_tables([events, _malformed(bad)])


def attributes_map(**columns: pa.Array | None) -> pa.Array:
    """Build a map<string,string> column from named string columns (nulls/empties skipped)."""
    present = {k: v.cast(pa.string()) for k, v in columns.items() if v is not None}
    length = len(next(iter(present.values()))) if present else 0
    keys: list[list[str]] = [[] for _ in range(length)]
    values: list[list[str]] = [[] for _ in range(length)]
    for key, column in present.items():
        for row, value in enumerate(column.to_pylist()):
            if value:
                keys[row].append(key)
                values[row].append(value)
    offsets = np.zeros(length + 1, dtype=np.int32)
    np.cumsum([len(k) for k in keys], out=offsets[1:])
    flat_keys = pa.array([k for row in keys for k in row], pa.string())
    flat_values = pa.array([v for row in values for v in row], pa.string())
    return pa.MapArray.from_arrays(pa.array(offsets), flat_keys, flat_values)


def finish_catalog(
    item_ids: pa.Array, titles: pa.Array, attributes: pa.Array, rejects: list[pa.Table]
) -> tuple[pa.Table, pa.Table]:
    """Drop catalog rows without an id and repeated ids (first wins), recording each as a reject."""
    item_ids = pc.utf8_trim_whitespace(item_ids.cast(pa.string()))
    titles = pc.utf8_trim_whitespace(titles.cast(pa.string()))
    table = pa.table([item_ids, titles, attributes], schema=CATALOG)
    missing = pc.or_kleene(pc.is_null(item_ids), pc.equal(item_ids, "")).fill_null(True)
    if pc.any(missing).as_py():
        rejects.append(catalog_reject_rows(table.filter(missing), "missing_item_id"))
        table = table.filter(pc.invert(missing))
    ids = table["item_id"].to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    keep = np.zeros(len(ids), dtype=bool)
    keep[first] = True
    if not keep.all():
        rejects.append(catalog_reject_rows(table.filter(pa.array(~keep)), "duplicate_item_id"))
        table = table.filter(pa.array(keep))
    reject_table = pa.concat_tables(rejects) if rejects else CATALOG_REJECTS.empty_table()
    return table.combine_chunks(), reject_table


def catalog_reject_rows(table: pa.Table, reason: str, raw: pa.Array | None = None) -> pa.Table:
    n = table.num_rows
    return pa.table(
        [
            table["item_id"] if "item_id" in table.column_names else pa.nulls(n, pa.string()),
            table["title"] if "title" in table.column_names else pa.nulls(n, pa.string()),
            raw if raw is not None else pa.nulls(n, pa.string()),
            pa.array([reason] * n, pa.string()),
        ],
        schema=CATALOG_REJECTS,
    )


def collect_table(ds: ray.data.Dataset) -> pa.Table:
    """Materialize a (small) dataset on the driver as one Arrow table."""
    tables = [t for t in (ray.get(ref) for ref in ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def read_lines_catalog(
    path: Path, sep: str, names: Sequence[str | None], encoding: str, min_fields: int | None
) -> tuple[pa.Table, list[pa.Table]]:
    """Read a small line-oriented catalog file; lines with too few fields become rejects."""
    lines = collect_table(ray.data.read_text(str(path), encoding=encoding))
    text = lines["text"].combine_chunks() if lines.num_rows else pa.array([], pa.string())
    good, _, bad = split_lines(text, sep, names, min_fields)
    reject = catalog_reject_rows(pa.table({"raw": bad}), "malformed_line", bad)
    return good.combine_chunks(), [reject] if len(bad) else []


def first_line(path: Path, encoding: str = "utf-8") -> str:
    """The first line of a (possibly gzipped) file: layouts and versions are detected from it
    before any Ray work starts, so a wrong folder fails in a second with a DataError."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding=encoding, errors="replace") as handle:
            return handle.readline().strip()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from None
