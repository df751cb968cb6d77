"""Validation: every rule names its reason; good rows come out typed."""

from __future__ import annotations

import pyarrow as pa

from recicl.data.schema import EVENTS, RAW_EVENTS
from recicl.data.validate import quarantined, valid_events, validate_batch

CATALOG = pa.array(["m1", "m2"])
BOUNDS = (631_152_000, 1_900_000_000)  # 1990-01-01 .. 2030


def _run(rows: list[dict], **kwargs) -> pa.Table:
    batch = pa.table({f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in RAW_EVENTS})
    params = {
        "catalog_ids": CATALOG,
        "rating_range": (0.5, 5.0),
        "like_threshold": 4.0,
        "time_bounds": BOUNDS,
        "timestamp_unit": "s",
        "has_labels": False,
    }
    params.update(kwargs)
    return validate_batch(batch, **params)


GOOD = {"user_id": "u1", "item_id": "m1", "rating": "4.5", "timestamp": "964982703"}


def test_good_row_is_typed_and_labelled():
    out = valid_events(_run([GOOD, {**GOOD, "rating": " 3.5 ", "user_id": " u2 "}]))
    assert out.schema == EVENTS
    assert out.to_pylist() == [
        {"user_id": "u1", "item_id": "m1", "rating": 4.5, "label": 1, "timestamp": 964982703},
        {"user_id": "u2", "item_id": "m1", "rating": 3.5, "label": 0, "timestamp": 964982703},
    ]


def test_each_rule_has_its_reason():
    cases = {
        "missing_user_id": {**GOOD, "user_id": " "},
        "missing_item_id": {**GOOD, "item_id": None},
        "missing_rating": {**GOOD, "rating": ""},
        "unparseable_rating": {**GOOD, "rating": "five"},
        "rating_out_of_range": {**GOOD, "rating": "7"},
        "missing_timestamp": {**GOOD, "timestamp": None},
        "unparseable_timestamp": {**GOOD, "timestamp": "yesterday"},
        "timestamp_out_of_range": {**GOOD, "timestamp": "12"},
        "item_not_in_catalog": {**GOOD, "item_id": "m999"},
        "malformed_line": {"reason": "malformed_line", "raw": "1,2", "file": "r.csv", "line": 7},
    }
    out = _run(list(cases.values()))
    assert out["reason"].to_pylist() == list(cases)
    bad = quarantined(out)
    assert bad.num_rows == len(cases)
    assert bad["rating"].to_pylist()[3] == "five"  # the source text is kept for inspection
    assert bad["raw"].to_pylist()[-1] == "1,2"
    assert bad.to_pylist()[-1]["file"] == "r.csv" and bad.to_pylist()[-1]["line"] == 7
    assert valid_events(out).num_rows == 0


def test_explicit_labels_win_and_bad_labels_are_quarantined():
    rows = [
        {**GOOD, "label": "yes", "rating": "1"},
        {**GOOD, "label": "0", "rating": "5"},
        {**GOOD, "label": None, "rating": "5"},  # falls back to the rating
        {**GOOD, "label": "maybe"},
    ]
    out = _run(rows, has_labels=True)
    assert out["reason"].to_pylist() == [None, None, None, "unparseable_label"]
    assert out["label"].to_pylist()[:3] == [1, 0, 1]


def test_millisecond_and_iso_timestamps():
    ms = _run([{**GOOD, "timestamp": "964982703123"}], timestamp_unit="ms")
    assert ms["timestamp"].to_pylist() == [964982703]
    iso = _run(
        [{**GOOD, "timestamp": "2000-07-30T18:45:03Z"}, {**GOOD, "timestamp": "30/07/2000"}],
        timestamp_unit="iso",
    )
    assert iso["timestamp"].to_pylist()[0] == 964982703
    assert iso["reason"].to_pylist() == [None, "unparseable_timestamp"]


def test_typed_columns_skip_text_parsing():
    batch = pa.table(
        {
            "user_id": pa.array(["u"]),
            "item_id": pa.array(["m2"]),
            "rating": pa.array([2.0]),
            "label": pa.nulls(1, pa.string()),
            "timestamp": pa.array([964982703000], pa.int64()),
            "reason": pa.nulls(1, pa.string()),
            "raw": pa.nulls(1, pa.string()),
            "file": pa.nulls(1, RAW_EVENTS.field("file").type),
            "line": pa.nulls(1, pa.int64()),
        }
    )
    out = validate_batch(
        batch, catalog_ids=CATALOG, rating_range=None, like_threshold=4.0,
        time_bounds=BOUNDS, timestamp_unit="ms", has_labels=False,
    )  # fmt: skip
    assert valid_events(out).to_pylist() == [
        {"user_id": "u", "item_id": "m2", "rating": 2.0, "label": 0, "timestamp": 964982703}
    ]


def test_typed_label_columns_are_read_as_labels_not_crashed_on():
    """A Parquet source with an integer, float or boolean label column (a generic source with
    `columns.label`): read as 1/0, a value other than 0/1 quarantined, never a crash."""
    for labels, expected, bad in (
        (pa.array([1, 0, 7], pa.int64()), [1, 0], 1),
        (pa.array([1.0, 0.0, 0.5]), [1, 0], 1),
        (pa.array([True, False, None]), [1, 0], 1),  # null without a rating: missing_rating
    ):
        n = len(labels)
        batch = pa.table(
            {
                "user_id": pa.array(["u"] * n),
                "item_id": pa.array(["m1"] * n),
                "rating": pa.nulls(n, pa.float64()),
                "label": labels,
                "timestamp": pa.array([964982703] * n, pa.int64()),
                "reason": pa.nulls(n, pa.string()),
                "raw": pa.nulls(n, pa.string()),
                "file": pa.nulls(n, RAW_EVENTS.field("file").type),
                "line": pa.nulls(n, pa.int64()),
            }
        )
        out = validate_batch(
            batch, catalog_ids=CATALOG, rating_range=None, like_threshold=4.0,
            time_bounds=BOUNDS, timestamp_unit="s", has_labels=True,
        )  # fmt: skip
        assert [row["label"] for row in valid_events(out).to_pylist()] == expected, labels
        assert quarantined(out).num_rows == bad, labels
