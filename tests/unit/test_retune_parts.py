"""The parts of `recicl retune` that need no cluster: paging the store's export, the periods
of the rebuilt samples, the served-events reader (timestamp units, catalog updates, bad files)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recicl.data.readers.served import (
    SERVED_EVENTS,
    add_served,
    merged_catalog,
    served_raw_events,
)
from recicl.data.schema import CATALOG, EVENTS, RAW_EVENTS
from recicl.data.validate import valid_events, validate_batch
from recicl.errors import DataError
from recicl.serve.store import Event, SQLiteStore
from recicl.updates.retune import RetuneError, read_new_events, retune_boundaries


@pytest.fixture
def store(tmp_path):
    with SQLiteStore(tmp_path / "events.db") as opened:
        yield opened


def test_export_pages_never_miss_or_repeat_events_that_share_a_timestamp(store):
    """Pages of 3 over timestamps with 4 events each: a page boundary inside a timestamp is
    read again, a whole page of one timestamp doubles the page; every event once, in order."""
    events = [Event(f"u{k}", f"i{t}", k % 2, t) for t in (10, 11, 12) for k in range(4)]
    events += [Event("late", "x", 1, 20)]
    store.append(events)
    got = read_new_events(store, 5, page=3)
    assert got == store.events_since(5, 1000)
    assert len(got) == len(events) == len(set(got))
    assert read_new_events(store, 11, page=3) == [e for e in got if e.timestamp > 11]
    assert read_new_events(store, 20, page=3) == []


def test_retune_periods_keep_the_log_cut_and_split_the_new_events():
    log = [100, 200]  # the champion's periods: ..100, 100..200, 200..
    times = list(range(301, 311))  # ten new events, one per second
    assert retune_boundaries(log, 300, times, 0.5) == [100, 200, 301, 306]
    assert retune_boundaries(log, 300, times, 0.2) == [100, 200, 301, 309]
    # the older part may not be empty: hold out from the next distinct time on
    assert retune_boundaries(log, 300, [301] * 5 + [302], 0.9) == [100, 200, 301, 302]
    with pytest.raises(RetuneError, match="share one timestamp"):
        retune_boundaries(log, 300, [305] * 4, 0.5)


def _events(**overrides) -> pa.Table:
    rows = {"user_id": ["u1", "u2"], "item_id": ["a", "b"], "rating": [None, 4.5],
            "label": [1, 0], "timestamp": [1_700_000_000, 1_700_000_100]}  # fmt: skip
    rows.update(overrides)
    return pa.table(rows, schema=EVENTS)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "iso"])
def test_served_events_validate_to_themselves_in_every_timestamp_unit(unit):
    """Text in the source's unit, explicit labels: the validator gives back the stored events
    (a click without a rating keeps its label; a rated event keeps label and rating)."""
    events = _events()
    raw = served_raw_events(events, unit, "served/events.parquet")
    assert raw.schema == RAW_EVENTS
    assert raw["line"].to_pylist() == [1, 2]
    validated = validate_batch(
        raw,
        catalog_ids=pa.array(["a", "b"]),
        like_threshold=4.0,
        rating_range=None,
        time_bounds=(0, 2_000_000_000),
        timestamp_unit=unit,
        has_labels=True,
    )
    assert validated["reason"].null_count == validated.num_rows  # nothing quarantined
    assert valid_events(validated).to_pylist() == events.to_pylist()


def test_served_catalog_items_replace_and_extend_the_source_catalog():
    attributes = pa.map_(pa.string(), pa.string())
    source = pa.table({"item_id": ["a", "b"], "title": ["Old A", "B"],
                       "attributes": pa.array([[], []], attributes)}, schema=CATALOG)  # fmt: skip
    served = pa.table({"item_id": ["a", "new"], "title": ["New A", "Brand new"],
                       "attributes": pa.array([[("genres", "Drama")], []], attributes)},
                      schema=CATALOG)  # fmt: skip
    merged = merged_catalog(source, served)
    assert dict(zip(merged["item_id"].to_pylist(), merged["title"].to_pylist(), strict=True)) == {
        "b": "B", "a": "New A", "new": "Brand new"}  # fmt: skip


def test_a_bad_served_folder_is_one_clear_error(tmp_path: Path):
    from recicl.data.readers.common import SourceData

    def source() -> SourceData:
        empty = pa.table({"item_id": pa.array([], pa.string())})
        return SourceData(
            events=None,  # type: ignore[arg-type]  # never read: the folder is refused first
            catalog=empty,
            catalog_rejects=empty,
            rating_range=None,
            timestamp_unit="s",
            has_labels=False,
            layout="x",
        )

    with pytest.raises(DataError, match=r"has no events.parquet: point it at the folder"):
        add_served(source(), tmp_path)
    pq.write_table(pa.table({"user_id": ["u"], "when": [1]}), tmp_path / SERVED_EVENTS)
    with pytest.raises(DataError, match=r"lacks the event columns \['item_id', 'rating'"):
        add_served(source(), tmp_path)
    (tmp_path / SERVED_EVENTS).write_bytes(b"not parquet")
    with pytest.raises(DataError, match="is not a readable Parquet file"):
        add_served(source(), tmp_path)
    pq.write_table(pa.table({"user_id": ["u"]}), tmp_path / SERVED_EVENTS)
    with pytest.raises(DataError, match="lacks the event columns"):
        add_served(source(), tmp_path)
