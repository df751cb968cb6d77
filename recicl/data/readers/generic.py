"""Generic Parquet / CSV files (events and catalog) with a configurable column mapping."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from recicl.config import DataConfig
from recicl.data.readers.common import (
    SourceData,
    attributes_map,
    csv_fields,
    csv_header,
    finish_catalog,
    parse_csv_events,
    raw_events,
    read_catalog_rows,
)
from recicl.data.readers.lines import read_lines
from recicl.errors import DataError


def _generic_files(folder: Path, pattern: str, suffix: str, what: str, setting: str) -> list[str]:
    matches = sorted(folder.glob(pattern)) if folder.is_dir() else []
    files: list[str] = []
    for match in matches:
        if match.is_dir():
            files.extend(str(p) for p in sorted(match.rglob(f"*{suffix}")))
        elif match.name.endswith(suffix):
            files.append(str(match))
    if not files:
        raise DataError(
            f"no {what} {suffix} files matching {pattern!r} in {folder}; put them there or set "
            f"{setting} to their name pattern"
        )
    return files


def _check_columns(
    available: Sequence[str], wanted: Mapping[str, str | None], where: str, setting: str
) -> None:
    for canonical, column in wanted.items():
        if column is not None and column not in available:
            raise DataError(
                f"column {column!r} ({setting}.{canonical}) not found in {where}; its columns are "
                f"{list(available)[:30]}. Set {setting}.{canonical} to the right column name."
            )


def _to_raw_generic(batch: pa.Table, *, mapping: dict[str, str | None]) -> pa.Table:
    """Ray Data UDF: rename mapped columns to canonical names, everything as text."""
    columns = {}
    for canonical, column in mapping.items():
        if column is None:
            continue
        values = batch[column].combine_chunks()
        if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
            values = pc.cast(values, pa.timestamp("s"), safe=False).cast(pa.int64())
        columns[canonical] = values
    return raw_events(columns, batch.num_rows, keep_types=True)


def _csv_headers(
    files: Sequence[str], wanted: Mapping[str, str | None], setting: str
) -> dict[str, list[str]]:
    """Each CSV file's column names (its first line), checked for the ``wanted`` columns."""
    headers = {}
    for name in files:
        path = Path(name).resolve()
        headers[str(path)] = csv_header(path)
        _check_columns(headers[str(path)], wanted, str(path), setting)
    return headers


def _read_generic_csv(
    event_files: list[str], catalog_files: list[str], cfg: DataConfig
) -> tuple[ray.data.Dataset, pa.Table, list[pa.Table]]:
    """CSV events (lazy), the catalog rows (with ``file`` and ``line``) and its rejects.

    Every file's header is read first: a file without a mapped column fails here, naming it.
    Catalog attributes are the listed ones that every catalog file has.
    """
    mapping = cfg.columns.model_dump()
    headers = _csv_headers(event_files, mapping, "data.columns")
    events = read_lines(list(headers)).map_batches(
        partial(parse_csv_events, headers=headers, mapping=mapping),
        batch_size=None,
        batch_format="pyarrow",
    )
    cat_map = cfg.catalog_columns
    wanted = {"item_id": cat_map.item_id, "title": cat_map.title}
    catalog_headers = _csv_headers(catalog_files, wanted, "data.catalog_columns")
    shared = set.intersection(*(set(h) for h in catalog_headers.values()))
    columns = [cat_map.item_id, cat_map.title, *(a for a in cat_map.attributes if a in shared)]
    columns = list(dict.fromkeys(columns))
    rows, rejects = read_catalog_rows(
        [Path(p) for p in catalog_headers],
        partial(csv_fields, headers=catalog_headers, columns=columns),
        columns,
    )
    return events, rows, rejects


def read_generic(folder: Path, cfg: DataConfig) -> SourceData:
    """Parquet or CSV files with a configurable column mapping (``data.columns``)."""
    suffix = ".parquet" if cfg.source == "parquet" else ".csv"
    event_files = _generic_files(folder, cfg.events_glob, suffix, "event", "data.events_glob")
    catalog_files = _generic_files(folder, cfg.catalog_glob, suffix, "catalog", "data.catalog_glob")
    mapping = cfg.columns.model_dump()
    cat_map = cfg.catalog_columns
    rejects: list[pa.Table] = []
    origin: pa.Table | None = None  # where each catalog row was read: CSV only
    if suffix == ".parquet":
        schema = pq.read_schema(event_files[0])
        _check_columns(schema.names, mapping, event_files[0], "data.columns")
        timestamp_type = schema.field(cfg.columns.timestamp).type
        events = ray.data.read_parquet(
            event_files, columns=[c for c in mapping.values() if c is not None]
        ).map_batches(
            partial(_to_raw_generic, mapping=mapping), batch_size=None, batch_format="pyarrow"
        )
        catalog_table = pa.concat_tables(
            [pq.read_table(f) for f in catalog_files], promote_options="permissive"
        )
    else:
        timestamp_type = pa.string()
        events, catalog_table, rejects = _read_generic_csv(event_files, catalog_files, cfg)
        origin = catalog_table
    unit = cfg.timestamp_unit
    if pa.types.is_timestamp(timestamp_type) or pa.types.is_date(timestamp_type):
        unit = "s"
    _check_columns(
        catalog_table.column_names,
        {"item_id": cat_map.item_id, "title": cat_map.title},
        catalog_files[0],
        "data.catalog_columns",
    )
    attributes = {}
    for name in cat_map.attributes:
        if name in catalog_table.column_names:
            column = catalog_table[name].combine_chunks()
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                column = pc.binary_join(column.cast(pa.list_(pa.string())), "|")
            attributes[name] = column
    catalog, catalog_rejects = finish_catalog(
        catalog_table[cat_map.item_id].combine_chunks(),
        catalog_table[cat_map.title].combine_chunks(),
        attributes_map(**attributes)
        if attributes
        else pa.MapArray.from_arrays(
            pa.array(np.zeros(catalog_table.num_rows + 1, dtype=np.int32)),
            pa.array([], pa.string()),
            pa.array([], pa.string()),
        ),
        rejects,
        origin=origin,
    )
    return SourceData(
        events=events,
        catalog=catalog,
        catalog_rejects=catalog_rejects,
        rating_range=cfg.rating_range,
        timestamp_unit=unit,
        has_labels=cfg.columns.label is not None,
        layout=f"{cfg.source}:{folder.name}",
    )
