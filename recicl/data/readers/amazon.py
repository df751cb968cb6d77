"""Amazon reviews (2018 and 2023 releases): JSON lines, optionally gzipped, with meta files."""

from __future__ import annotations

import io
import json
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import ray.data

from recicl.data.readers.common import (
    SourceData,
    attributes_map,
    catalog_reject_rows,
    collect_table,
    finish_catalog,
    first_line,
    raw_events,
)
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
    batch only, so the bad lines can be quarantined individually.
    """
    user_key, item_key, rating_key, time_key = _JSON_FIELDS[version]
    lines = batch["text"].combine_chunks()
    names = ["user_id", "item_id", "rating", "timestamp"]
    schema = pa.schema(
        [
            (user_key, pa.string()),
            (item_key, pa.string()),
            (rating_key, pa.float64()),
            (time_key, pa.int64()),
        ]
    )
    try:
        table = pajson.read_json(
            io.BytesIO("\n".join(lines.to_pylist()).encode()),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
        if table.num_rows == len(lines):
            columns = {n: c.combine_chunks() for n, c in zip(names, table.columns, strict=True)}
            return raw_events(columns, table.num_rows, keep_types=True)
    except (pa.ArrowInvalid, UnicodeError):
        pass
    rows: dict[str, list[str | None]] = {name: [] for name in [*names, "reason", "raw"]}
    for line in lines.to_pylist():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        ok = isinstance(record, dict)
        for name, key in zip(names, (user_key, item_key, rating_key, time_key), strict=True):
            value = record.get(key) if ok else None
            rows[name].append(None if value is None else str(value))
        rows["reason"].append(None if ok else "malformed_json")
        rows["raw"].append(None if ok else line)
    return raw_events({k: pa.array(v, pa.string()) for k, v in rows.items()}, len(lines))


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
    """Ray Data UDF: meta JSON lines → item_id, title, category (strings), or a reject reason."""
    item_key = "asin" if version == "2018" else "parent_asin"
    out: dict[str, list[str | None]] = {
        "item_id": [],
        "title": [],
        "category": [],
        "raw": [],
        "reason": [],
    }
    for line in batch["text"].to_pylist():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
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
    return pa.table({k: pa.array(v, pa.string()) for k, v in out.items()})


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
    events = ray.data.read_text([str(p) for p in reviews]).map_batches(
        partial(parse_amazon_lines, version=version), batch_size=None, batch_format="pyarrow"
    )
    meta_rows = collect_table(
        ray.data.read_text([str(p) for p in meta]).map_batches(
            partial(_meta_rows, version=version), batch_size=None, batch_format="pyarrow"
        )
    )
    bad = pc.is_valid(meta_rows["reason"])
    rejects = (
        [catalog_reject_rows(meta_rows.filter(bad), "malformed_json", meta_rows.filter(bad)["raw"])]
        if pc.any(bad).as_py()
        else []
    )
    good = meta_rows.filter(pc.invert(bad))
    catalog, catalog_rejects = finish_catalog(
        good["item_id"].combine_chunks(),
        good["title"].combine_chunks(),
        attributes_map(category=good["category"].combine_chunks()),
        rejects,
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
