"""Arrow schemas of the data contracts in ARCHITECTURE.md.

Everything downstream (prompts, training, evaluation, serving) reads these exact columns, so they
live in one place and every writer casts to them before writing.
"""

from __future__ import annotations

import pyarrow as pa

#: Where a text source's row came from: its file (dictionary-encoded: one path repeats on every
#: row of a block) and 1-based line. Null for sources without lines (Parquet).
SOURCE_FILE = pa.dictionary(pa.int32(), pa.string())

#: What readers emit before validation: every field as text, so that one vectorized validator
#: can parse and judge all sources alike. ``reason`` is set when the reader itself already knows
#: the row is bad (e.g. a line with the wrong number of fields); ``raw`` then holds the line.
RAW_EVENTS = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.string()),
        ("label", pa.string()),
        ("timestamp", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("file", SOURCE_FILE),
        ("line", pa.int64()),
    ]
)

#: Canonical events after validation.
EVENTS = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.float64()),
        ("label", pa.int8()),
        ("timestamp", pa.int64()),
    ]
)

#: Rows that failed validation, with the source's text values, why they failed and where they
#: came from (``file``, ``line``: added last, so readers of older quarantine files still work;
#: null where unknown: Parquet sources and duplicates, which are judged after the read).
QUARANTINE = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.string()),
        ("label", pa.string()),
        ("timestamp", pa.string()),
        ("raw", pa.string()),
        ("reason", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
    ]
)

#: Item catalog. ``attributes`` holds source-specific facts (genres, year, author, category).
CATALOG = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("attributes", pa.map_(pa.string(), pa.string())),
    ]
)

DEMO = pa.struct(
    [
        ("item_id", pa.string()),
        ("label", pa.int8()),
        ("timestamp", pa.int64()),
        ("history", pa.list_(pa.string())),
    ]
)

#: One ICL sample per target event. Ids only: text is rendered from the catalog by prompts.py.
SAMPLES = pa.schema(
    [
        ("sample_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("period", pa.int16()),
        ("label", pa.int8()),
        ("history", pa.list_(pa.string())),
        ("demos", pa.list_(DEMO)),
    ]
)
