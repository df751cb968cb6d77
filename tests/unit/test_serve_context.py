"""Serve-time context == training-time context: `context_from_events` against `annotate_events`.

The served prompt's demonstrations and history must be exactly what sample construction makes for
a target placed after all of the user's events (same order, same tie-breaking, same dedup).
"""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recicl.data.samples import KIND_SAMPLE, annotate_events
from recicl.data.schema import EVENTS
from recicl.serve.context import context_from_events
from recicl.serve.store import Event

TARGET_ITEM = "zz-target"


def training_context(
    events: list[Event], num_demos: int, history_len: int
) -> tuple[list[str], list[dict]]:
    """What training would build for a target event right after ``events``."""
    last = max((e.timestamp for e in events), default=0)
    rows = [*events, Event("u", TARGET_ITEM, 1, last + 1, None)]
    table = pa.table(
        {
            "user_id": ["u"] * len(rows),
            "item_id": [e.item_id for e in rows],
            "rating": [e.rating for e in rows],
            "label": [e.label for e in rows],
            "timestamp": [e.timestamp for e in rows],
        },
        schema=EVENTS,
    )
    annotated = annotate_events(table, num_demos=num_demos, history_len=history_len, min_demos=0)
    target = [
        r
        for r in annotated.to_pylist()
        if r["item_id"] == TARGET_ITEM and r["timestamp"] == last + 1 and r["kind"] == KIND_SAMPLE
    ]
    assert len(target) == 1
    return target[0]["history"], target[0]["demos"]


event_strategy = st.builds(
    Event,
    user_id=st.just("u"),
    item_id=st.sampled_from(["a", "b", "c", "B", "é", "a10", "a9"]),
    label=st.sampled_from([0, 1]),
    timestamp=st.integers(0, 4),  # narrow: many timestamp ties
    rating=st.one_of(st.none(), st.sampled_from([1.0, 3.5, 4.0, 5.0])),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(event_strategy, max_size=25),
    num_demos=st.integers(0, 6),
    history_len=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_context_matches_training_semantics(events, num_demos, history_len, seed):
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)  # arrival order must not matter
    # exact repeats (the store drops them; a request's `history` may contain them)
    shuffled += shuffled[: seed % 3]
    history, demos = context_from_events(shuffled, num_demos, history_len)
    want_history, want_demos = training_context(shuffled, num_demos, history_len)
    assert history == want_history
    assert demos == want_demos


def test_context_example_by_hand():
    events = [
        Event("u", "m1", 1, 10),
        Event("u", "m2", 0, 20),
        Event("u", "m3", 1, 30),
        Event("u", "m4", 1, 30),  # same time as m3: item id breaks the tie
        Event("u", "m5", 0, 40),
    ]
    history, demos = context_from_events(reversed(events), num_demos=3, history_len=2)
    assert history == ["m3", "m4"]
    assert [d["item_id"] for d in demos] == ["m3", "m4", "m5"]
    assert [d["history"] for d in demos] == [["m1"], ["m1", "m3"], ["m3", "m4"]]
    assert [d["label"] for d in demos] == [1, 1, 0]
    assert [d["timestamp"] for d in demos] == [30, 30, 40]


def test_cold_start_is_empty():
    assert context_from_events([], 4, 10) == ([], [])


def test_negative_sizes_are_refused():
    with pytest.raises(ValueError):
        context_from_events([], -1, 10)
