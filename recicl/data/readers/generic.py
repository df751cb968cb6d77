"""Generic Parquet / CSV files (events and catalog) with a configurable column mapping."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray.data

from recicl.config import DataConfig
from recicl.data.readers.common import SourceData, attributes_map, finish_catalog, raw_events
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
    available: Sequence[str], wanted: dict[str, str | None], where: str, setting: str
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


def read_generic(folder: Path, cfg: DataConfig) -> SourceData:
    """Parquet or CSV files with a configurable column mapping (``data.columns``)."""
    suffix = ".parquet" if cfg.source == "parquet" else ".csv"
    event_files = _generic_files(folder, cfg.events_glob, suffix, "event", "data.events_glob")
    catalog_files = _generic_files(folder, cfg.catalog_glob, suffix, "catalog", "data.catalog_glob")
    mapping = cfg.columns.model_dump()
    wanted = [c for c in mapping.values() if c is not None]
    if suffix == ".parquet":
        schema = pq.read_schema(event_files[0])
        _check_columns(schema.names, mapping, event_files[0], "data.columns")
        timestamp_type = schema.field(cfg.columns.timestamp).type
        events = ray.data.read_parquet(event_files, columns=wanted)
        catalog_table = pa.concat_tables(
            [pq.read_table(f) for f in catalog_files], promote_options="permissive"
        )
    else:
        header = pacsv.open_csv(event_files[0]).schema.names
        _check_columns(header, mapping, event_files[0], "data.columns")
        timestamp_type = pa.string()
        events = ray.data.read_csv(
            event_files,
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(wanted, pa.string()), include_columns=wanted
            ),
        )
        catalog_table = pa.concat_tables(
            [
                pacsv.read_csv(
                    f,
                    convert_options=pacsv.ConvertOptions(
                        column_types=dict.fromkeys(pacsv.open_csv(f).schema.names, pa.string())
                    ),
                )
                for f in catalog_files
            ],
        )
    unit = cfg.timestamp_unit
    if pa.types.is_timestamp(timestamp_type) or pa.types.is_date(timestamp_type):
        unit = "s"
    events = events.map_batches(
        partial(_to_raw_generic, mapping=mapping), batch_size=None, batch_format="pyarrow"
    )
    cat_map = cfg.catalog_columns
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
        [],
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
