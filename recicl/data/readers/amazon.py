"""Amazon reviews (2018 and 2023 releases): JSON lines, optionally gzipped, with meta files."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from recicl.data.readers.common import (
    SourceData,
    attributes_map,
    finish_catalog,
    first_line,
    parsed_rows,
    raw_events,
    read_catalog_rows,
    rejected_lines,
)
from recicl.data.readers.lines import read_lines
from recicl.errors import DataError

_JSON_FIELDS = {
    # version: (user, item, rating, timestamp, timestamp type)
    "2018": ("reviewerID", "asin", "overall", "unixReviewTime"),
    "2023": ("user_id", "parent_asin", "rating", "timestamp"),
}


def parse_amazon_lines(batch: pa.Table, *, version: str) -> pa.Table:
    """Ray Data UDF: JSON lines → RAW_EVENTS.

    Fast path: Arrow's JSON reader on the whole batch with the few fields we need. If any line in
    the batch is not valid JSON or has an unexpected type, fall back to per-line parsing for that
    batch only, so the bad lines can be quarantined individually. Lines the line reader flagged
    (``invalid_utf8``) are never parsed.
    """
    keys = _JSON_FIELDS[version]
    names = ["user_id", "item_id", "rating", "timestamp"]
    flagged = pc.is_valid(batch["reason"])
    lines = batch.filter(pc.invert(flagged))
    rejected = rejected_lines(batch.filter(flagged), "malformed_json")
    schema = pa.schema(
        [
            (keys[0], pa.string()),
            (keys[1], pa.string()),
            (keys[2], pa.float64()),
            (keys[3], pa.int64()),
        ]
    )
    text = lines["text"].combine_chunks()
    whole = pa.ListArray.from_arrays(pa.array([0, len(text)], pa.int32()), text)
    try:
        table = pajson.read_json(
            pa.BufferReader(pc.binary_join(whole, "\n")[0].as_buffer()),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowInvalid:
        table = None
    if table is not None and table.num_rows == len(text):
        columns = {n: c.combine_chunks() for n, c in zip(names, table.columns, strict=True)}
        good = pa.table(columns | {"file": lines["file"], "line": lines["line"]})
        rows = parsed_rows(good, rejected)
        return raw_events(
            {c: rows[c].combine_chunks() for c in rows.column_names}, rows.num_rows, keep_types=True
        )
    values: dict[str, list[str | None]] = {name: [] for name in [*names, "reason", "raw"]}
    for line in text.to_pylist():
        record = _json_object(line)
        for name, key in zip(names, keys, strict=True):
            value = None if record is None else record.get(key)
            values[name].append(None if value is None else str(value))
        values["reason"].append(None if record is not None else "malformed_json")
        values["raw"].append(None if record is not None else line)
    columns = {k: pa.array(v, pa.string()) for k, v in values.items()}
    rows = parsed_rows(pa.table(columns | {"file": lines["file"], "line": lines["line"]}), rejected)
    return raw_events({c: rows[c].combine_chunks() for c in rows.column_names}, rows.num_rows)


def _json_object(line: str) -> dict | None:
    """The JSON object on ``line``, or None when it is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


_JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def _json_files(folder: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_JSON_SUFFIXES))
    meta = [p for p in files if p.name.startswith("meta")]
    reviews = [p for p in files if not p.name.startswith("meta")]
    return reviews, meta


def detect_amazon_version(first_review: dict) -> str:
    if {"reviewerID", "asin", "overall", "unixReviewTime"} <= first_review.keys():
        return "2018"
    if {"user_id", "parent_asin", "rating", "timestamp"} <= first_review.keys():
        return "2023"
    raise DataError(
        "the first review line has keys "
        f"{sorted(first_review)[:12]}; expected Amazon 2018 (reviewerID, asin, overall, "
        "unixReviewTime) or Amazon 2023 (user_id, parent_asin, rating, timestamp)"
    )


def _meta_rows(batch: pa.Table, *, version: str) -> pa.Table:
    """Ray Data UDF: meta JSON lines → parsed rows of item_id, title and category."""
    item_key = "asin" if version == "2018" else "parent_asin"
    flagged = pc.is_valid(batch["reason"])
    lines = batch.filter(pc.invert(flagged))
    out: dict[str, list[str | None]] = {
        "item_id": [],
        "title": [],
        "category": [],
        "raw": [],
        "reason": [],
    }
    for line in lines["text"].to_pylist():
        record = _json_object(line)
        if record is None:
            for column in ("item_id", "title", "category"):
                out[column].append(None)
            out["raw"].append(line)
            out["reason"].append("malformed_json")
            continue
        if version == "2018":
            category = record.get("category") or []
            category = "|".join(map(str, category)) if isinstance(category, list) else category
        else:
            category = record.get("main_category")
        item = record.get(item_key)
        out["item_id"].append(None if item is None else str(item))
        out["title"].append(None if record.get("title") is None else str(record["title"]))
        out["category"].append(None if category is None else str(category))
        out["raw"].append(None)
        out["reason"].append(None)
    columns = {k: pa.array(v, pa.string()) for k, v in out.items()}
    good = pa.table(columns | {"file": lines["file"], "line": lines["line"]})
    return parsed_rows(good, rejected_lines(batch.filter(flagged), "malformed_json"))


def read_amazon(folder: Path) -> SourceData:
    """Amazon reviews 2018 (seconds) or 2023 (milliseconds) with their meta files."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; expected Amazon review + meta JSON lines")
    reviews, meta = _json_files(folder)
    if not reviews or not meta:
        raise DataError(
            f"{folder} must hold review files (*.json[l][.gz]) and meta files (meta_*.json[l]"
            f"[.gz]); found reviews={[p.name for p in reviews]}, meta={[p.name for p in meta]}"
        )
    first = first_line(reviews[0])
    try:
        version = detect_amazon_version(json.loads(first))
    except ValueError:
        raise DataError(f"{reviews[0]}: the first line is not JSON: {first[:120]!r}") from None
    events = read_lines([str(p.resolve()) for p in reviews]).map_batches(
        partial(parse_amazon_lines, version=version), batch_size=None, batch_format="pyarrow"
    )
    good, rejects = read_catalog_rows(
        [p.resolve() for p in meta],
        partial(_meta_rows, version=version),
        ["item_id", "title", "category"],
    )
    catalog, catalog_rejects = finish_catalog(
        good["item_id"].combine_chunks(),
        good["title"].combine_chunks(),
        attributes_map(category=good["category"].combine_chunks()),
        rejects,
        origin=good,
    )
    return SourceData(
        events=events,
        catalog=catalog,
        catalog_rejects=catalog_rejects,
        rating_range=(1.0, 5.0),
        timestamp_unit="s" if version == "2018" else "ms",
        has_labels=False,
        layout=f"amazon:{version}",
    )
