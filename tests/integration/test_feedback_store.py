"""The feedback log on real backends (a SQLite file, a private redis-server on 127.0.0.1).

Every case runs on both backends with explicit clocks (``now``), so windows, retention and the
row cap are exact. The reference for each expected count is written out in the test from the
rules of :mod:`recicl.serve.store.feedback`, not computed by the code under test.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from recicl.serve.store import Event, open_store
from recicl.serve.store.base import StoreError
from recicl.serve.store.feedback import (
    ARM_CHAMPION,
    ARM_EXPLICIT,
    EXPIRED,
    JOINED,
    PENDING,
    FeedbackSettings,
    InvalidScoreError,
    ServedScore,
)

WINDOW, RETENTION = 100, 1000
T0 = 1_700_000_000


def _open(url: str, **settings):
    fb = {"attribution_window_s": WINDOW, "retention_s": RETENTION, **settings}
    return open_store(url, feedback=FeedbackSettings(**fb))


@pytest.fixture
def store(url):
    with _open(url) as opened:
        yield opened


def _score(item: str, at: int, *, user: str = "u", score: float = 0.5, **kw) -> ServedScore:
    fields = {"request_id": f"r-{at}-{item}", "version": "1", "arm": ARM_CHAMPION, "policy": "p"}
    fields.update(kw)
    return ServedScore(
        fields["request_id"], user, item, fields["version"], fields["arm"], fields["policy"],
        score, at,
    )  # fmt: skip


def _event(item: str, ts: int, label: int = 1, user: str = "u") -> Event:
    return Event(user, item, label, ts)


def _only(counts: Counter) -> dict:
    return {key: n for key, n in counts.items() if n}


def test_a_score_is_joined_once_and_later_deliveries_are_duplicates(store):
    assert store.record_served([_score("a", T0, score=0.8)], now=T0) == 1
    joined = store.record_outcomes([_event("a", T0 + 10)], now=T0 + 10)
    assert _only(joined) == {(JOINED, "1", ARM_CHAMPION): 1}
    # the same event again (a retried POST) and another event for the same exposure
    again = store.record_outcomes([_event("a", T0 + 10), _event("a", T0 + 20, 0)], now=T0 + 20)
    assert _only(again) == {("duplicate", "1", ARM_CHAMPION): 2}
    [row] = store.feedback_rows(T0, now=T0 + 20)
    assert (row.status, row.label, row.outcome_ts, row.joined_at) == (JOINED, 1, T0 + 10, T0 + 10)
    assert (row.duplicates, row.late, row.served.score) == (2, 0, 0.8)
    assert _only(store.feedback_counters(now=T0 + 20)) == {
        ("served", "1", ARM_CHAMPION): 1,
        (JOINED, "1", ARM_CHAMPION): 1,
        ("duplicate", "1", ARM_CHAMPION): 2,
    }


def test_one_batch_sees_its_own_joins(store):
    store.record_served([_score("a", T0)], now=T0)
    counts = store.record_outcomes([_event("a", T0 + 1), _event("a", T0 + 2)], now=T0 + 2)
    assert _only(counts) == {(JOINED, "1", ARM_CHAMPION): 1, ("duplicate", "1", ARM_CHAMPION): 1}


def test_window_edges_late_by_event_time_and_by_arrival(store):
    store.record_served([_score(i, T0) for i in "abc"], now=T0)
    on_edge = store.record_outcomes([_event("a", T0 + WINDOW)], now=T0 + WINDOW)
    assert _only(on_edge) == {(JOINED, "1", ARM_CHAMPION): 1}  # the window's last second counts
    stamped_late = store.record_outcomes([_event("b", T0 + WINDOW + 1)], now=T0 + WINDOW)
    assert _only(stamped_late) == {("late", "1", ARM_CHAMPION): 1}
    arrived_late = store.record_outcomes([_event("c", T0 + 5)], now=T0 + WINDOW + 1)
    assert _only(arrived_late) == {("late", "1", ARM_CHAMPION): 1}
    rows = {r.served.item_id: r for r in store.feedback_rows(T0, now=T0 + WINDOW + 1)}
    assert rows["a"].status == JOINED
    assert (rows["b"].status, rows["b"].late) == (EXPIRED, 1)  # closed at T0 + WINDOW + 1
    assert (rows["c"].status, rows["c"].late, rows["c"].label) == (EXPIRED, 1, None)
    counters = store.feedback_counters(now=T0 + WINDOW + 1)
    assert counters[(EXPIRED, "1", ARM_CHAMPION)] == 2
    assert counters[("late", "1", ARM_CHAMPION)] == 2


def test_pending_until_the_window_closes_then_expired_once(store):
    store.record_served([_score("a", T0)], now=T0)
    assert store.feedback_rows(T0, now=T0 + WINDOW)[0].status == PENDING
    for now in (T0 + WINDOW + 1, T0 + WINDOW + 50):  # expiry is counted once, whenever seen
        assert store.feedback_counters(now=now)[(EXPIRED, "1", ARM_CHAMPION)] == 1
    assert store.feedback_rows(T0, now=T0 + WINDOW + 50)[0].status == EXPIRED


def test_unscored_events(store):
    store.record_served([_score("a", T0)], now=T0)
    counts = store.record_outcomes(
        [
            _event("never-scored", T0 + 1),
            _event("a", T0 - 1),  # before the score: not a reaction to it
            _event("a", T0 + 1, user="someone-else"),
        ],
        now=T0 + 1,
    )
    assert _only(counts) == {("unscored", "", ""): 3}
    assert store.feedback_rows(T0, now=T0 + 1)[0].status == PENDING


def test_last_touch_and_arms(store):
    """An event answers the newest score of each arm served at or before it."""
    store.record_served([_score("a", T0, score=0.1), _score("a", T0 + 50, score=0.9)], now=T0 + 50)
    store.record_served(
        [_score("a", T0 + 40, version="2", arm=ARM_EXPLICIT, score=0.3)], now=T0 + 50
    )
    store.record_served([_score("a", T0 + 80, score=0.7)], now=T0 + 80)  # after the event
    counts = store.record_outcomes([_event("a", T0 + 60, 0)], now=T0 + 90)
    assert _only(counts) == {(JOINED, "1", ARM_CHAMPION): 1, (JOINED, "2", ARM_EXPLICIT): 1}
    rows = store.feedback_rows(T0, now=T0 + 90)
    assert [(r.served.served_at, r.served.arm, r.status, r.label) for r in rows] == [
        (T0, ARM_CHAMPION, PENDING, None),
        (T0 + 40, ARM_EXPLICIT, JOINED, 0),
        (T0 + 50, ARM_CHAMPION, JOINED, 0),
        (T0 + 80, ARM_CHAMPION, PENDING, None),
    ]
    assert [r.served.score for r in rows] == [0.1, 0.3, 0.9, 0.7]
    assert [r.served.request_id for r in rows][1] == f"r-{T0 + 40}-a"


def test_retention_and_row_cap(url):
    with _open(url, max_rows=3) as store:
        store.record_served([_score("old", T0)], now=T0)
        store.record_outcomes([_event("old", T0 + 1)], now=T0 + 1)
        store.record_served([_score("x", T0 + RETENTION)], now=T0 + RETENTION)
        assert [r.served.item_id for r in store.feedback_rows(0, now=T0 + RETENTION)] == [
            "old", "x"
        ]  # fmt: skip
        # one second later "old" is past retention: deleted in the next write, not counted evicted
        store.record_served([_score(i, T0 + RETENTION + 1) for i in "yz"], now=T0 + RETENTION + 1)
        assert [r.served.item_id for r in store.feedback_rows(0, now=T0 + RETENTION + 1)] == [
            "x", "y", "z"
        ]  # fmt: skip
        # over the cap of 3: the oldest, still pending, is evicted and counted
        store.record_served([_score("w", T0 + RETENTION + 2)], now=T0 + RETENTION + 2)
        assert [r.served.item_id for r in store.feedback_rows(0, now=T0 + RETENTION + 2)] == [
            "y", "z", "w"
        ]  # fmt: skip
        counters = store.feedback_counters(now=T0 + RETENTION + 2)
        assert counters[("evicted", "1", ARM_CHAMPION)] == 1
        assert counters[("served", "1", ARM_CHAMPION)] == 5
        assert counters[(EXPIRED, "1", ARM_CHAMPION)] == 0  # "old" was joined, "x" evicted
        # an event for a deleted score finds nothing to answer
        gone = store.record_outcomes([_event("x", T0 + RETENTION + 2)], now=T0 + RETENTION + 2)
        assert _only(gone) == {("unscored", "", ""): 1}


def test_concurrent_deliveries_join_exactly_once(url):
    """Eight connections deliver the same event at once: one join, seven duplicates."""
    with _open(url) as store:
        store.record_served([_score("a", T0)], now=T0)
    stores = [_open(url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    results: list[Counter] = []
    lock = threading.Lock()

    def deliver(s) -> None:
        barrier.wait()
        counts = s.record_outcomes([_event("a", T0 + 5)], now=T0 + 5)
        with lock:
            results.append(counts)

    threads = [threading.Thread(target=deliver, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    total = sum(results, Counter())
    assert _only(total) == {(JOINED, "1", ARM_CHAMPION): 1, ("duplicate", "1", ARM_CHAMPION): 7}
    with _open(url) as reopened:  # and it is durable: a new connection sees the same
        [row] = reopened.feedback_rows(T0, now=T0 + 5)
        assert (row.status, row.label, row.duplicates) == (JOINED, 1, 7)
        assert reopened.feedback_counters(now=T0 + 5)[(JOINED, "1", ARM_CHAMPION)] == 1
    for s in stores:
        s.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"score": 1.5}, "not in"),
        ({"score": float("nan")}, "not in"),
        ({"request_id": ""}, "request_id"),
        ({"arm": "a\x00b"}, "arm"),
        ({"served_at": 1.5}, "served_at"),
    ],
)
def test_invalid_scores_are_refused_whole(store, change, message):
    good = _score("a", T0)
    bad = ServedScore(**{**{f: getattr(good, f) for f in good.__slots__}, **change})
    with pytest.raises(InvalidScoreError, match=message):
        store.record_served([good, bad], now=T0)
    assert store.feedback_rows(0, now=T0) == []
    assert store.feedback_counters(now=T0) == Counter()


def test_settings_are_checked():
    with pytest.raises(StoreError, match="retention_s"):
        FeedbackSettings(attribution_window_s=100, retention_s=50)
    with pytest.raises(StoreError, match="max_rows"):
        FeedbackSettings(max_rows=0)
