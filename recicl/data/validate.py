"""Validation: raw text events → canonical typed events, or a quarantine row with a reason.

One vectorized function judges every source, so "what is a valid event" has one definition. The
first failing check names the row's ``reason``; checks run in this order:

==========================  =====================================================================
reason                      meaning
==========================  =====================================================================
invalid_utf8                the line is not valid UTF-8; ``raw`` shows the bad bytes as ``\\xNN``
malformed_line / _json      the reader could not split the line into fields (set by the reader)
missing_user_id             empty or null user id
missing_item_id             empty or null item id
missing_rating              no rating (and no explicit label)
unparseable_rating          rating is not a number
rating_out_of_range         rating outside the source's scale (``data.rating_range``)
unparseable_label           explicit label is not one of 0/1/true/false/yes/no
missing_timestamp           no timestamp
unparseable_timestamp       timestamp is not a number (or ISO date for ``timestamp_unit: iso``)
timestamp_out_of_range      before ``data.min_date`` or after ``data.max_date`` (default tomorrow)
item_not_in_catalog         the item id has no catalog row
duplicate_event             exact repeat of an earlier event (decided per user in samples.py)
==========================  =====================================================================
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recicl.data.schema import EVENTS, QUARANTINE, RAW_EVENTS

NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
INTEGER = r"^\s*[-+]?\d+(\.0*)?\s*$"
TRUE_WORDS = ["1", "true", "yes", "y", "1.0"]
FALSE_WORDS = ["0", "false", "no", "n", "0.0"]
_UNIT_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000}

#: Where a row came from: carried from RAW_EVENTS to QUARANTINE as they are.
_ORIGIN = ["file", "line"]
#: The source text kept for the quarantine, as ``raw_<name>`` in VALIDATED.
_TEXT = [f.name for f in QUARANTINE if f.name not in ("reason", *_ORIGIN)]

#: Columns of the validated table: canonical fields + the raw text and origin (for quarantine) +
#: reason.
VALIDATED = pa.schema(
    [
        *EVENTS,
        *[pa.field(f"raw_{name}", pa.string()) for name in _TEXT],
        *[RAW_EVENTS.field(name) for name in _ORIGIN],
        pa.field("reason", pa.string()),
    ]
)


def _blank(values: pa.Array) -> pa.Array:
    """True where a text value is null or only whitespace (a typed value: where null)."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return pc.is_null(values).fill_null(True)
    trimmed = pc.utf8_trim_whitespace(values)
    return pc.or_kleene(pc.is_null(trimmed), pc.equal(trimmed, "")).fill_null(True)


def _parse_number(values: pa.Array, pattern: str) -> tuple[pa.Array, pa.Array]:
    """(float64 values with nulls where unparseable, mask of present-but-unparseable).

    Typed (numeric) columns from Parquet/JSON skip the text round trip.
    """
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        numbers = pc.cast(values, pa.float64())
        return numbers, pa.array(np.zeros(len(values), dtype=bool))
    if pa.types.is_null(values.type):
        values = values.cast(pa.string())
    present = pc.invert(_blank(values))
    ok = pc.and_(present, pc.match_substring_regex(values, pattern).fill_null(False))
    cleaned = pc.if_else(ok, pc.utf8_trim_whitespace(values), pa.scalar(None, pa.string()))
    return pc.cast(cleaned, pa.float64()), pc.and_(present, pc.invert(ok))


def _parse_timestamp(values: pa.Array, unit: str) -> tuple[pa.Array, pa.Array]:
    """(int64 unix seconds with nulls, mask of present-but-unparseable)."""
    if pa.types.is_integer(values.type) and unit != "iso":
        seconds = pc.divide(values.cast(pa.int64()), _UNIT_DIVISOR[unit])  # integer division
        return seconds, pa.array(np.zeros(len(values), dtype=bool))
    if unit == "iso":
        values = values.cast(pa.string())
        trimmed = pc.utf8_trim_whitespace(values)
        seconds = np.full(len(values), np.iinfo(np.int64).min, dtype=np.int64)
        bad = np.zeros(len(values), dtype=bool)
        for index, text in enumerate(trimmed.to_pylist()):
            if text:
                try:
                    seconds[index] = np.datetime64(text.replace("Z", ""), "s").astype(np.int64)
                except ValueError:
                    bad[index] = True
        parsed = pa.array(seconds, mask=(seconds == np.iinfo(np.int64).min))
        return parsed, pa.array(bad)
    numbers, bad = _parse_number(values, NUMBER)
    seconds = pc.floor(pc.divide(numbers, float(_UNIT_DIVISOR[unit])))
    finite = pc.and_(
        pc.is_finite(seconds).fill_null(False), pc.less(pc.abs(seconds), 1e15).fill_null(False)
    )
    seconds = pc.if_else(finite, seconds, pa.scalar(None, pa.float64()))
    return pc.cast(seconds, pa.int64()), pc.or_(
        bad, pc.and_(pc.is_valid(numbers), pc.invert(finite))
    )


def validate_batch(
    batch: pa.Table,
    *,
    catalog_ids: pa.Array,
    rating_range: tuple[float, float] | None,
    like_threshold: float,
    time_bounds: tuple[int, int],
    timestamp_unit: str,
    has_labels: bool,
) -> pa.Table:
    """Ray Data UDF: RAW_EVENTS batch → VALIDATED (``reason`` null for good rows)."""
    n = batch.num_rows
    column = {name: batch[name].combine_chunks() for name in batch.column_names}
    user = pc.utf8_trim_whitespace(column["user_id"])
    item = pc.utf8_trim_whitespace(column["item_id"])
    rating, bad_rating = _parse_number(column["rating"], NUMBER)
    timestamp, bad_timestamp = _parse_timestamp(column["timestamp"], timestamp_unit)

    label = pc.cast(pc.greater_equal(rating, like_threshold), pa.int64())
    bad_label = pa.array(np.zeros(n, dtype=bool))
    if has_labels:  # explicit labels win; a row without one falls back to its rating
        # typed sources keep a numeric or boolean label column (1, 0.0, true): as its text
        words = pc.utf8_lower(pc.utf8_trim_whitespace(column["label"].cast(pa.string())))
        is_true = pc.is_in(words, pa.array(TRUE_WORDS)).fill_null(False)
        is_false = pc.is_in(words, pa.array(FALSE_WORDS)).fill_null(False)
        explicit = pc.if_else(is_true, 1, pc.if_else(is_false, 0, pa.scalar(None, pa.int64())))
        bad_label = pc.and_(pc.invert(_blank(column["label"])), pc.is_null(explicit))
        label = pc.coalesce(explicit, label)
    has_answer = pc.or_(pc.is_valid(rating), pc.is_valid(label))

    checks: list[tuple[str, pa.Array]] = [
        ("missing_user_id", _blank(user)),
        ("missing_item_id", _blank(item)),
        ("missing_rating", pc.and_(pc.invert(has_answer), pc.invert(bad_rating))),
        ("unparseable_rating", bad_rating),
    ]
    if rating_range is not None:
        low, high = rating_range
        outside = pc.or_(pc.less(rating, low), pc.greater(rating, high)).fill_null(False)
        checks.append(("rating_out_of_range", outside))
    checks += [
        ("unparseable_label", bad_label),
        ("missing_timestamp", _blank(column["timestamp"])),
        ("unparseable_timestamp", bad_timestamp),
        (
            "timestamp_out_of_range",
            pc.or_(
                pc.less(timestamp, time_bounds[0]), pc.greater_equal(timestamp, time_bounds[1])
            ).fill_null(False),
        ),
        ("item_not_in_catalog", pc.invert(pc.is_in(item, value_set=catalog_ids)).fill_null(True)),
    ]
    reason = column["reason"]
    for name, failed in checks:
        reason = pc.if_else(pc.and_(pc.is_null(reason), failed), name, reason)

    return pa.table(
        [
            user,
            item,
            rating,
            pc.cast(label, pa.int8()),
            timestamp,
            column["user_id"],
            column["item_id"],
            column["rating"],
            column["label"],
            column["timestamp"],
            column["raw"],
            column["file"],
            column["line"],
            reason,
        ],
        schema=VALIDATED,
    )


def valid_events(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: the good rows of a VALIDATED batch, as canonical EVENTS."""
    return batch.filter(pc.is_null(batch["reason"])).select(EVENTS.names).cast(EVENTS)


def quarantined(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: the bad rows of a VALIDATED batch, as QUARANTINE rows (source text kept)."""
    bad = batch.filter(pc.is_valid(batch["reason"]))
    columns = [bad[f"raw_{f.name}"] if f.name in _TEXT else bad[f.name] for f in QUARANTINE]
    return pa.table(
        [c.cast(f.type) for c, f in zip(columns, QUARANTINE, strict=True)], schema=QUARANTINE
    )
