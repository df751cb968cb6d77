"""ICL sample semantics: the vectorized builder against a brute-force reading of the contract."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recicl.data.item_embeddings import ItemEmbeddings, unit_rows
from recicl.data.retrieval import DemoQuality
from recicl.data.samples import (
    AUGMENTED_PREFIX,
    KIND_DUPLICATE,
    Selection,
    annotate_events,
    to_samples,
)
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


# -- demonstration and history policies (recicl.data.retrieval) -------------------------------

ITEMS = ["a", "b", "c", "d", "10", "9"]


def _embeddings(seed: int) -> ItemEmbeddings:
    """Vectors for all test items but "9" (no vector: similarity 0 with everything); "b" and
    "c" share a vector, so their similarities tie exactly and recency must decide."""
    rng = np.random.default_rng(seed)
    ids = ["a", "b", "c", "d", "10"]
    matrix = rng.normal(size=(len(ids), 8))
    matrix[2] = matrix[1]
    return ItemEmbeddings(tuple(ids), unit_rows(matrix))


def _similarity(embeddings: ItemEmbeddings):
    def similarity(a: str, b: str) -> float:
        va, vb = embeddings.vectors([a])[0], embeddings.vectors([b])[0]
        return sum(float(x) * float(y) for x, y in zip(va, vb, strict=True))  # exact: grid

    return similarity


policy_strategy = st.sampled_from(["recent", "semantic", "mixed", "quality"])
#: quality estimators: similarity-led, recency-led (negative age weight), label-led
WEIGHTS = [(1.0, -0.5, 0.25, 0.5), (0.1, -2.0, 0.0, 0.0), (0.3, 0.0, -1.0, 0.7)]


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(event_strategy, max_size=60),
    num_demos=st.integers(0, 5),
    history_len=st.integers(0, 6),
    min_demos=st.integers(0, 3),
    demo_policy=policy_strategy,
    history_policy=st.sampled_from(["recent", "semantic"]),
    recent_share=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    window_extra=st.integers(0, 8),
    seed=st.integers(0, 3),
    weights=st.sampled_from(WEIGHTS),
)
def test_policies_match_brute_force_reference(
    events, num_demos, history_len, min_demos, demo_policy, history_policy, recent_share,
    window_extra, seed, weights,
):  # fmt: skip
    embeddings = _embeddings(seed)
    window = max(1, num_demos, history_len) + window_extra
    rules = {
        "demo_policy": demo_policy,
        "history_policy": history_policy,
        "recent_share": recent_share,
        "window": window,
    }
    params = {"num_demos": num_demos, "history_len": history_len, "min_demos": min_demos}
    expected, _ = reference_samples(
        events, **params, **rules, similarity=_similarity(embeddings), quality=weights
    )
    selection = Selection(**rules, embeddings=embeddings, quality=DemoQuality(weights))
    got, _ = _build(events, **params, selection=selection)
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(event_strategy, max_size=50),
    demo_policy=st.sampled_from(["recent", "semantic"]),
    history_policy=st.sampled_from(["recent", "semantic"]),
    copy_policy=st.sampled_from(["recent", "semantic"]),
    replaces=st.sampled_from(["demos", "history", "both"]),
    seed=st.integers(0, 3),
)
def test_an_augmented_copy_is_the_build_of_its_policies(
    events, demo_policy, history_policy, copy_policy, replaces, seed
):
    """A copy of policy P with augment_replaces R equals a main build whose demos (R demos or
    both) and histories (R history or both: ReLLa's ReiT) are chosen by P, the rest as the main
    policies say; a copy that would equal the main samples is not written."""
    embeddings = _embeddings(seed)
    params = {"num_demos": 3, "history_len": 2, "min_demos": 1}
    rules = {"recent_share": 0.5, "window": 6}
    selection = Selection(
        demo_policy, history_policy, **rules, augment=(copy_policy,), augment_replaces=replaces,
        embeddings=embeddings,
    )  # fmt: skip
    annotated = annotate_events(_events_table(events), **params, selection=selection)
    expected, _ = reference_samples(
        events,
        **params,
        **rules,
        demo_policy=copy_policy if replaces in ("demos", "both") else demo_policy,
        history_policy=copy_policy if replaces in ("history", "both") else history_policy,
        similarity=_similarity(embeddings),
    )
    if copy_policy not in selection.extra_policies:
        main, _ = _build(events, **params, selection=selection)
        assert main == expected  # the copy would be the main samples: none is written
        assert not any("@" in name for name in annotated.column_names)
        return
    periods = pa.array(np.zeros(annotated.num_rows, np.int16))
    copy = to_samples(annotated, periods, policy=copy_policy)
    assert copy.schema == SAMPLES
    rows = {row["sample_id"]: row for row in copy.to_pylist()}
    for row in rows.values():
        row.pop("period")
    assert rows == expected


def test_history_copies_differ_from_the_originals_exactly_in_their_histories():
    """ReLLa's ReiT: a copy whose histories are retrieved by similarity keeps every sample's
    target, label and demonstrations (items, labels, times); only histories change, and some do."""
    events = [
        {"user_id": u, "item_id": item, "timestamp": ts, "label": int(ts % 3 != 1), "rating": None}
        for u in ("u1", "u2")
        for ts, item in enumerate(["a", "b", "c", "d", "10", "9", "a", "c", "b", "d"])
    ]
    selection = Selection(
        augment=("semantic",), augment_replaces="history", embeddings=_embeddings(1)
    )
    annotated = annotate_events(
        _events_table(events), num_demos=3, history_len=2, min_demos=1, selection=selection
    )
    periods = pa.array(np.zeros(annotated.num_rows, np.int16))
    main = to_samples(annotated, periods).to_pylist()
    copy = to_samples(annotated, periods, policy="semantic").to_pylist()
    assert len(main) == len(copy) > 0
    changed = 0
    for original, twin in zip(main, copy, strict=True):
        same = ("sample_id", "user_id", "item_id", "timestamp", "label", "period")
        assert {k: original[k] for k in same} == {k: twin[k] for k in same}
        strip = [{k: v for k, v in d.items() if k != "history"} for d in original["demos"]]
        assert strip == [{k: v for k, v in d.items() if k != "history"} for d in twin["demos"]]
        changed += original["history"] != twin["history"]
        changed += any(
            a["history"] != b["history"]
            for a, b in zip(original["demos"], twin["demos"], strict=True)
        )
    assert changed > 0


@settings(max_examples=200, deadline=None)
@given(events=st.lists(event_strategy, min_size=1, max_size=60), policy=policy_strategy)
def test_no_policy_uses_the_target_or_later_events(events, policy):
    """Whatever the policy: every demo and every history item is an event of the same user
    strictly before the target in the total order (position), likes only in histories."""
    selection = Selection(
        policy, "semantic", 0.5, 6, embeddings=_embeddings(0), quality=DemoQuality(WEIGHTS[0])
    )
    got, _ = _build(events, num_demos=3, history_len=3, min_demos=1, selection=selection)
    ordered: dict[str, list] = {}
    for sample in got.values():
        ordered.setdefault(sample["user_id"], [])
    for sample in got.values():
        position = int(sample["sample_id"].rsplit("#", 1)[1])
        target = (sample["timestamp"], sample["item_id"])
        assert len(sample["demos"]) == min(position, 3)
        for demo in sample["demos"]:
            assert (demo["timestamp"], demo["item_id"]) <= target
            assert len(demo["history"]) <= 3
        user_events = [e for e in events if e["user_id"] == sample["user_id"] and e["label"] == 1]
        for item in sample["history"]:
            assert any(
                (e["timestamp"], e["item_id"]) <= target and e["item_id"] == item
                for e in user_events
            )
        stamps = [(d["timestamp"], d["item_id"]) for d in sample["demos"]]
        assert stamps == sorted(stamps)  # shown oldest first, whatever the policy


def test_semantic_demos_pick_the_most_similar_and_mixed_keeps_the_latest():
    """A hand-checked case: the target is most similar to an old event; semantic brings it
    back, mixed keeps the latest slot and retrieves the other."""
    ids = ("target", "twin", "far1", "far2", "far3")
    matrix = np.array([[1, 0], [0.99, 0.1], [0, 1], [-0.1, 1], [0.1, -1]], dtype=float)
    embeddings = ItemEmbeddings(ids, unit_rows(matrix))
    events = [
        {"user_id": "u", "item_id": item, "timestamp": ts, "label": 1, "rating": None}
        for item, ts in [("twin", 1), ("far1", 2), ("far2", 3), ("far3", 4), ("target", 5)]
    ]
    semantic = Selection("semantic", "semantic", embeddings=embeddings)
    got, _ = _build(events, num_demos=2, history_len=1, min_demos=1, selection=semantic)
    sample = got["u#4"]
    assert [d["item_id"] for d in sample["demos"]] == ["twin", "far3"]  # far3: 0.1 > -0.1, 0
    assert sample["history"] == ["twin"]
    mixed = Selection("mixed", "recent", recent_share=0.5, embeddings=embeddings)
    got, _ = _build(events, num_demos=2, history_len=1, min_demos=1, selection=mixed)
    assert [d["item_id"] for d in got["u#4"]["demos"]] == ["twin", "far3"]
    recent = Selection("recent", "recent")
    got, _ = _build(events, num_demos=2, history_len=1, min_demos=1, selection=recent)
    assert [d["item_id"] for d in got["u#4"]["demos"]] == ["far2", "far3"]


def test_augmented_policies_are_extra_demo_columns_with_the_same_samples():
    events = [
        {"user_id": u, "item_id": item, "timestamp": ts, "label": ts % 2, "rating": None}
        for u in ("u1", "u2")
        for ts, item in enumerate(["a", "b", "c", "d", "10", "9", "a", "c"])
    ]
    selection = Selection(augment=("recent", "semantic"), embeddings=_embeddings(1))
    annotated = annotate_events(
        _events_table(events), num_demos=3, history_len=2, min_demos=1, selection=selection
    )
    assert AUGMENTED_PREFIX + "semantic" in annotated.column_names
    assert AUGMENTED_PREFIX + "recent" not in annotated.column_names  # the main policy
    periods = pa.array(np.zeros(annotated.num_rows, np.int16))
    main = to_samples(annotated, periods)
    extra = to_samples(annotated, periods, policy="semantic")
    assert extra.schema == SAMPLES
    assert main["sample_id"].to_pylist() == extra["sample_id"].to_pylist()
    semantic_only = Selection("semantic", embeddings=_embeddings(1))
    alone = to_samples(
        annotate_events(
            _events_table(events), num_demos=3, history_len=2, min_demos=1,
            selection=semantic_only,
        ),
        periods,
    )  # fmt: skip
    assert extra["demos"].to_pylist() == alone["demos"].to_pylist()
    assert extra["demos"].to_pylist() != main["demos"].to_pylist()


def test_semantic_policy_without_embeddings_is_a_clear_error():
    events = [
        {"user_id": "u", "item_id": i, "timestamp": t, "label": 1, "rating": None}
        for t, i in enumerate("abc")
    ]
    with pytest.raises(ValueError, match=r"samples\.embeddings"):
        _build(events, num_demos=2, history_len=2, min_demos=1, selection=Selection("semantic"))


def test_quality_policy_ranks_by_the_estimated_help():
    """By hand: with weight only on `liked`, the quality policy picks the liked events (newest
    first among equals); with a negative age weight it degenerates to recency."""
    events = [
        {"user_id": "u", "item_id": i, "timestamp": t, "label": lab, "rating": None}
        for t, (i, lab) in enumerate([("a", 1), ("b", 0), ("c", 1), ("d", 0), ("10", 0), ("9", 1)])
    ]
    likes = Selection("quality", embeddings=_embeddings(0), quality=DemoQuality((0, 0, 1, 0)))
    got, _ = _build(events, num_demos=2, history_len=0, min_demos=1, selection=likes)
    assert [d["item_id"] for d in got["u#5"]["demos"]] == ["a", "c"]
    newest = Selection("quality", embeddings=_embeddings(0), quality=DemoQuality((0, -1, 0, 0)))
    got, _ = _build(events, num_demos=2, history_len=0, min_demos=1, selection=newest)
    assert [d["item_id"] for d in got["u#5"]["demos"]] == ["d", "10"]
    with pytest.raises(ValueError, match="4 expected"):
        DemoQuality((1.0, 2.0))
    with pytest.raises(ValueError, match="fit it again"):
        DemoQuality.from_json({"features": ["similarity"], "weights": [1.0]})
    assert likes.quality is not None
    assert DemoQuality.from_json(likes.quality.to_json()) == likes.quality
