"""ICL sample semantics: the vectorized builder against a brute-force reading of the contract."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from recicl.data.samples import KIND_DUPLICATE, annotate_events, to_samples
from recicl.data.schema import EVENTS, SAMPLES
from tests.reference import reference_samples


def _events_table(events: list[dict]) -> pa.Table:
    return pa.table(
        {
            "user_id": [e["user_id"] for e in events],
            "item_id": [e["item_id"] for e in events],
            "rating": [e.get("rating") for e in events],
            "label": [e["label"] for e in events],
            "timestamp": [e["timestamp"] for e in events],
        },
        schema=EVENTS,
    )


def _build(events: list[dict], **params) -> tuple[dict[str, dict], pa.Table]:
    annotated = annotate_events(_events_table(events), **params)
    samples = to_samples(annotated, pa.array(np.zeros(annotated.num_rows, np.int16)))
    assert samples.schema == SAMPLES
    rows = {row["sample_id"]: row for row in samples.to_pylist()}
    for row in rows.values():
        row.pop("period")
    return rows, annotated


event_strategy = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["u1", "u2", "u:3", "ü4"]),
        "item_id": st.sampled_from(["a", "b", "c", "d", "10", "9"]),
        "timestamp": st.integers(1_000, 1_012),  # narrow range: many ties
        "label": st.integers(0, 1),
        "rating": st.one_of(st.none(), st.sampled_from([1.0, 3.5, 5.0])),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(event_strategy, max_size=60),
    num_demos=st.integers(0, 5),
    history_len=st.integers(0, 6),
    min_demos=st.integers(0, 4),
)
def test_matches_brute_force_reference(events, num_demos, history_len, min_demos):
    params = {"num_demos": num_demos, "history_len": history_len, "min_demos": min_demos}
    expected, duplicates = reference_samples(events, **params)
    got, annotated = _build(events, **params)
    assert got == expected
    dup_rows = annotated.filter(pa.compute.equal(annotated["kind"], KIND_DUPLICATE))
    assert dup_rows.num_rows == duplicates


@settings(max_examples=200, deadline=None)
@given(events=st.lists(event_strategy, min_size=1, max_size=60))
def test_no_information_from_the_target_or_later(events):
    got, _ = _build(events, num_demos=4, history_len=10, min_demos=1)
    for sample in got.values():
        target = (sample["timestamp"], sample["item_id"])
        for demo in sample["demos"]:
            assert (demo["timestamp"], demo["item_id"]) <= target
            # A demo's own history only holds items liked before the demo.
            assert len(demo["history"]) <= 10
        # Demos strictly precede the target in the user's order.
        positions = [int(sample["sample_id"].rsplit("#", 1)[1])]
        assert positions[0] >= len(sample["demos"])


def test_ties_are_ordered_by_item_id_and_demos_are_latest_earlier_events():
    events = [
        {"user_id": "u", "item_id": item, "timestamp": ts, "label": label, "rating": None}
        for item, ts, label in [
            ("z", 100, 1), ("b", 200, 0), ("a", 200, 1), ("c", 300, 1), ("d", 400, 0),
            ("e", 500, 1),
        ]
    ]  # fmt: skip
    got, _ = _build(events, num_demos=2, history_len=2, min_demos=1)
    # Order: z(100) a(200) b(200) c(300) d(400) e(500): "a" sorts before "b" at the same time.
    last = got["u#5"]
    assert last["item_id"] == "e"
    assert [d["item_id"] for d in last["demos"]] == ["c", "d"]
    assert last["history"] == ["a", "c"]  # latest two likes before e, oldest first
    assert last["demos"][0]["history"] == ["z", "a"]  # c's own history at its own position
    assert got["u#2"]["item_id"] == "b"
    assert [d["item_id"] for d in got["u#2"]["demos"]] == ["z", "a"]
    assert "u#0" not in got  # the first event has no earlier events


def test_exact_duplicates_are_flagged_not_sampled():
    base = {"user_id": "u", "item_id": "x", "timestamp": 5, "label": 1, "rating": 4.0}
    events = [base, dict(base), {**base, "item_id": "y", "timestamp": 6}]
    got, annotated = _build(events, num_demos=4, history_len=4, min_demos=1)
    assert list(got) == ["u#1"]
    assert got["u#1"]["demos"][0]["item_id"] == "x"
    assert len(got["u#1"]["demos"]) == 1  # the repeat is not a second demo
    kinds = annotated["kind"].to_pylist()
    assert kinds.count(KIND_DUPLICATE) == 1


def test_same_time_different_rating_is_not_a_duplicate():
    base = {"user_id": "u", "item_id": "x", "timestamp": 5, "label": 1, "rating": 4.0}
    events = [base, {**base, "rating": 5.0}, {**base, "item_id": "y", "timestamp": 9}]
    got, annotated = _build(events, num_demos=4, history_len=4, min_demos=1)
    assert KIND_DUPLICATE not in annotated["kind"].to_pylist()
    assert [d["item_id"] for d in got["u#2"]["demos"]] == ["x", "x"]
