"""Serve-time context == training-time context: `context_from_events` against `annotate_events`.

The served prompt's demonstrations and history must be exactly what sample construction makes for
a target placed after all of the user's events (same order, same tie-breaking, same dedup).
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recicl.data.item_embeddings import ItemEmbeddings, unit_rows
from recicl.data.retrieval import DemoQuality
from recicl.data.samples import KIND_SAMPLE, Selection, annotate_events
from recicl.data.schema import EVENTS
from recicl.serve.context import context_from_events, contexts_for
from recicl.serve.store import Event

TARGET_ITEM = "zz-target"


def training_context(
    events: list[Event],
    num_demos: int,
    history_len: int,
    target_item: str = TARGET_ITEM,
    selection: Selection | None = None,
) -> tuple[list[str], list[dict]]:
    """What training would build for a target event right after ``events``."""
    last = max((e.timestamp for e in events), default=0)
    rows = [*events, Event("u", target_item, 1, last + 1, None)]
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
    annotated = annotate_events(
        table, num_demos=num_demos, history_len=history_len, min_demos=0, selection=selection
    )
    target = [
        r
        for r in annotated.to_pylist()
        if r["item_id"] == target_item and r["timestamp"] == last + 1 and r["kind"] == KIND_SAMPLE
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


ITEMS = ["a", "b", "c", "B", "é", "a10", "a9"]


def _vectors(seed: int) -> ItemEmbeddings:
    """Vectors for every item but "a9"; "b" and "B" tie exactly (recency must decide)."""
    rng = np.random.default_rng(seed)
    ids = ITEMS[:-1]
    matrix = rng.normal(size=(len(ids), 6))
    matrix[ids.index("B")] = matrix[ids.index("b")]
    return ItemEmbeddings(tuple(ids), unit_rows(matrix))


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(event_strategy, max_size=25),
    num_demos=st.integers(0, 5),
    history_len=st.integers(0, 5),
    demo_policy=st.sampled_from(["recent", "semantic", "mixed", "quality"]),
    history_policy=st.sampled_from(["recent", "semantic"]),
    window_extra=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_retrieval_contexts_match_training_for_every_candidate(
    events, num_demos, history_len, demo_policy, history_policy, window_extra, seed
):
    """Offline and online prompts are identical for the same user state, whatever the
    policies: the served context of each candidate equals the sample built for that item."""
    selection = Selection(
        demo_policy, history_policy, recent_share=0.5,
        window=max(1, num_demos, history_len) + window_extra, embeddings=_vectors(seed % 4),
        quality=DemoQuality((0.7, -0.3 * (seed % 3), 0.2, -0.4)),
    )  # fmt: skip
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    candidates = ["a", "B", "a9", "zz-new"]  # a9 and zz-new have no vector
    got = contexts_for(shuffled, candidates, num_demos, history_len, selection)
    assert len(got) == len(candidates)
    for candidate, (history, demos) in zip(candidates, got, strict=True):
        want = training_context(shuffled, num_demos, history_len, candidate, selection)
        assert (history, demos) == want


def test_recent_contexts_are_one_shared_context():
    events = [Event("u", "a", 1, 1), Event("u", "b", 0, 2)]
    got = contexts_for(events, ["c", "a10"], 2, 2, Selection())
    assert got[0] is got[1]  # one prefix for every candidate
    assert got[0] == context_from_events(events, 2, 2)
