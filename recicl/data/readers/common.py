"""Building blocks shared by every reader: field splitting, raw event tables, catalog checks.

Functions named ``parse_*`` and ``*_fields`` run inside Ray Data tasks; they live at module level
so that they pickle cheaply. They turn :data:`~recicl.data.readers.lines.LINES` blocks into
*parsed rows*: the named fields as text, the line's ``file`` and ``line``, and for a rejected line
its ``raw`` text and ``reason`` (null for a good row). A line is never dropped: it is a good row or
a rejected one.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import ray.data

from recicl.data.readers.lines import Encoding, parse_csv_lines, read_lines
from recicl.data.schema import CATALOG, RAW_EVENTS
from recicl.errors import DataError

#: Rejected catalog rows: what we could extract, the raw line, why, and where it came from.
CATALOG_REJECTS = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("raw", pa.string()),
        ("reason", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
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


def rejected_lines(lines: pa.Table, reason: str) -> pa.Table:
    """Lines → rejected parsed rows: their text as ``raw``, ``reason`` unless the line reader
    already gave one (``invalid_utf8``: its fields were never split)."""
    return pa.table(
        {
            "raw": lines["text"],
            "file": lines["file"],
            "line": lines["line"],
            "reason": pc.coalesce(lines["reason"], pa.scalar(reason, pa.string())),
        }
    )


def parsed_rows(good: pa.Table, rejected: pa.Table) -> pa.Table:
    """Good rows (fields, file, line) and rejected ones (raw, reason, file, line) in one table;
    the columns one side lacks are null."""
    return pa.concat_tables([good, rejected], promote_options="default")


def split_fields(
    batch: pa.Table, *, sep: str, names: Sequence[str | None], min_fields: int | None = None
) -> pa.Table:
    """Ray Data UDF: lines with fields separated by ``sep`` (no quoting) → parsed rows.

    A line is good when it has exactly ``len(names)`` fields (or at least ``min_fields``);
    fields named None are dropped, the rest trimmed.
    """
    flagged = pc.is_valid(batch["reason"])
    parts = pc.split_pattern(batch["text"].combine_chunks(), sep)
    counts = pc.list_value_length(parts)
    fits = (
        pc.equal(counts, len(names)) if min_fields is None else pc.greater_equal(counts, min_fields)
    )
    good = pc.and_(pc.invert(flagged), fits)
    good_parts = parts.filter(good)
    columns = {
        name: pc.utf8_trim_whitespace(pc.list_element(good_parts, index))
        for index, name in enumerate(names)
        if name is not None
    }
    kept = batch.filter(good)
    columns |= {"file": kept["file"], "line": kept["line"]}
    return parsed_rows(
        pa.table(columns), rejected_lines(batch.filter(pc.invert(good)), "malformed_line")
    )


def csv_fields(
    batch: pa.Table, *, headers: dict[str, list[str]], columns: Sequence[str]
) -> pa.Table:
    """Ray Data UDF: lines of CSV files → parsed rows of ``columns`` (quoting as in RFC 4180).

    The first line of each file is its header: ``headers`` holds each file's column names, read
    on the driver (:func:`csv_header`), so that a file without a wanted column fails before any
    work starts. A record is one line: a quoted value cannot hold a line break (such a record is
    rejected line by line, never merged). Empty lines and ragged ones (too many or too few
    fields) are ``malformed_line``.
    """
    files = batch["file"].combine_chunks().cast(pa.string())
    none = batch.slice(0, 0)  # the columns of every part, even when the batch is empty
    names = {name: pa.array([], pa.string()) for name in columns}
    parts = [pa.table(names | {"file": none["file"], "line": none["line"]})]
    parts.append(rejected_lines(none, "malformed_line"))
    for path in pc.unique(files).to_pylist():
        lines = batch.filter(pc.and_(pc.equal(files, path), pc.not_equal(batch["line"], 1)))
        flagged = pc.or_(pc.is_valid(lines["reason"]), pc.equal(lines["text"], ""))
        clean = lines.filter(pc.invert(flagged))
        table, ragged = parse_csv_lines(clean["text"].combine_chunks(), headers[path])
        good = np.ones(clean.num_rows, dtype=bool)
        good[ragged] = False
        kept = clean.filter(pa.array(good))
        fields = {name: table[name] for name in columns}
        parts.append(pa.table(fields | {"file": kept["file"], "line": kept["line"]}))
        bad = pa.concat_tables([lines.filter(flagged), clean.filter(pa.array(~good))])
        parts.append(rejected_lines(bad, "malformed_line"))
    return pa.concat_tables(parts, promote_options="default")


def csv_header(path: Path) -> list[str]:
    """The column names in the first line of a CSV file, quoting honoured."""
    header = first_line(path)
    try:
        return pacsv.read_csv(pa.BufferReader(header.encode() + b"\n")).column_names
    except pa.ArrowInvalid:
        raise DataError(
            f"{path} starts with {header[:120]!r}, not a CSV header; its first line must name "
            "the columns (e.g. user_id,item_id,rating,timestamp)"
        ) from None


def raw_events(columns: dict[str, pa.Array], length: int, keep_types: bool = False) -> pa.Table:
    """Assemble a RAW_EVENTS table from whichever canonical columns a source provides.

    With ``keep_types`` numeric rating/label/timestamp columns stay numeric (typed sources skip
    the text round trip; the validator accepts both).
    """
    arrays = []
    for field in RAW_EVENTS:
        values = columns.get(field.name, pa.nulls(length, field.type))
        numeric = pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
        arrays.append(values if keep_types and numeric else values.cast(field.type))
    return pa.table(arrays, names=RAW_EVENTS.names)


def parse_event_lines(batch: pa.Table, *, sep: str, names: Sequence[str | None]) -> pa.Table:
    """Ray Data UDF: lines with separated fields → RAW_EVENTS (bad lines kept with a reason)."""
    rows = split_fields(batch, sep=sep, names=names)
    return _events(rows, {name: name for name in names if name is not None})


def parse_csv_events(
    batch: pa.Table, *, headers: dict[str, list[str]], mapping: Mapping[str, str | None]
) -> pa.Table:
    """Ray Data UDF: lines of CSV files → RAW_EVENTS; ``mapping``: canonical name → column."""
    wanted = {name: column for name, column in mapping.items() if column is not None}
    rows = csv_fields(batch, headers=headers, columns=list(dict.fromkeys(wanted.values())))
    return _events(rows, wanted)


def _events(rows: pa.Table, mapping: dict[str, str]) -> pa.Table:
    """Parsed rows → RAW_EVENTS; ``mapping``: canonical name → column of ``rows``."""
    columns = {name: rows[column].combine_chunks() for name, column in mapping.items()}
    for name in ("raw", "reason", "file", "line"):
        columns[name] = rows[name].combine_chunks()
    return raw_events(columns, rows.num_rows)


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
    item_ids: pa.Array,
    titles: pa.Array,
    attributes: pa.Array,
    rejects: list[pa.Table],
    origin: pa.Table | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Drop catalog rows without an id and repeated ids (first wins), recording each as a reject
    (with its ``file`` and ``line`` when ``origin`` holds them, one row per catalog row)."""
    item_ids = pc.utf8_trim_whitespace(item_ids.cast(pa.string()))
    titles = pc.utf8_trim_whitespace(titles.cast(pa.string()))
    table = pa.table([item_ids, titles, attributes], schema=CATALOG)
    if origin is not None:
        table = table.append_column("file", origin["file"]).append_column("line", origin["line"])
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
    return table.select(CATALOG.names).combine_chunks(), reject_table


def catalog_reject_rows(table: pa.Table, reason: str) -> pa.Table:
    """CATALOG_REJECTS rows from whichever of its columns ``table`` has; ``reason`` where the
    table gives none."""
    n = table.num_rows
    columns = {}
    for field in CATALOG_REJECTS:
        values = table[field.name] if field.name in table.column_names else pa.nulls(n, field.type)
        columns[field.name] = values.cast(field.type)
    columns["reason"] = pc.coalesce(columns["reason"], pa.scalar(reason, pa.string()))
    return pa.table(columns, schema=CATALOG_REJECTS)


def collect_table(ds: ray.data.Dataset) -> pa.Table:
    """Materialize a (small) dataset on the driver as one Arrow table."""
    tables = [t for t in (ray.get(ref) for ref in ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def read_catalog_rows(
    paths: Sequence[Path],
    parse: Callable[[pa.Table], pa.Table],
    columns: Sequence[str],
    encoding: Encoding = "utf-8",
) -> tuple[pa.Table, list[pa.Table]]:
    """Read (small) catalog files on Ray Data with ``parse`` (a parsed-rows UDF): (the good rows:
    ``columns``, ``file`` and ``line``; the rejected ones as CATALOG_REJECTS tables)."""
    rows = collect_table(
        read_lines([str(p) for p in paths], encoding).map_batches(
            parse, batch_size=None, batch_format="pyarrow"
        )
    )
    if not rows.num_rows:
        empty = {name: pa.array([], pa.string()) for name in columns}
        return pa.table(
            empty | {"file": pa.array([], pa.string()), "line": pa.array([], pa.int64())}
        ), []
    bad = pc.is_valid(rows["reason"])
    rejects = [catalog_reject_rows(rows.filter(bad), "malformed_line")]
    return rows.filter(pc.invert(bad)), rejects if pc.any(bad).as_py() else []


def first_line(path: Path, encoding: Encoding = "utf-8") -> str:
    """The first line of a (possibly gzipped) file: layouts and versions are detected from it
    before any Ray work starts, so a wrong folder fails in a second with a DataError. Read as
    bytes, so that the line ends at ``\\n`` as in :mod:`~recicl.data.readers.lines`."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            line = handle.readline()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from None
    return line.decode(encoding, errors="replace").strip()
