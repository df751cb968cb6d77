"""Serve-time prompt context from a user's stored events, with the training semantics.

At serve time the query ("will the user like X, now?") comes after every stored event, so its
demonstrations and history are what :func:`recicl.data.samples.annotate_events` would compute for
a target event placed after all of them:

* events are ordered by ``(timestamp, item_id, rating with missing last, label)``
  (:func:`recicl.serve.store.event_order_key`, the same total order as ``samples.ORDER``), and
  exact repeats count once;
* ``history`` = the ``history_len`` latest *liked* item ids, oldest → newest;
* ``demos`` = the ``num_demos`` latest events, oldest → newest, each with its own history
  computed at its own position (the liked items strictly before it).

With retrieval policies (``samples.demo_policy`` semantic/mixed, ``history_policy`` semantic,
see :mod:`recicl.data.retrieval`) the context depends on the candidate: :func:`contexts_for` makes
one per candidate with the same selection function and the same vectors as the sample builder.

The unit tests compare these functions with ``annotate_events`` on the same events, so that the
prompts served are the prompts trained on (no train/serve skew). One difference is inherent:
serving reads only the newest ``serve.context_events`` events of a user, so the histories of the
oldest demonstrations may be shorter than training would have made them when a user has very
many events and few likes among the newest ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from recicl.data.retrieval import recent_slots, select_similar
from recicl.data.samples import Selection
from recicl.serve.store import Event, event_order_key

Context = tuple[list[str], list[dict[str, Any]]]


def _identity(event: Event) -> tuple[Any, ...]:
    return (event.item_id, event.timestamp, event.rating, event.label)


def _ordered_unique(events: Iterable[Event]) -> list[Event]:
    """One user's events in the total order, exact repeats once."""
    kept: list[Event] = []
    for event in sorted(events, key=event_order_key):  # exact repeats are adjacent now
        if kept and _identity(kept[-1]) == _identity(event):
            continue
        kept.append(event)
    return kept


def _demo(event: Event, history: list[str]) -> dict[str, Any]:
    return {
        "item_id": event.item_id,
        "label": int(event.label),
        "timestamp": int(event.timestamp),
        "history": history,
    }


def context_from_events(events: Iterable[Event], num_demos: int, history_len: int) -> Context:
    """``(history, demos)`` of a query placed after all ``events`` (one user's, any order),
    with the recent policies.

    ``demos`` are mappings ``{item_id, label, timestamp, history}`` as
    :class:`~recicl.prompts.PromptBuilder` takes them.
    """
    if num_demos < 0 or history_len < 0:
        raise ValueError("num_demos and history_len must be >= 0")
    kept = _ordered_unique(events)

    def likes_before(position: int) -> list[str]:
        if history_len == 0:
            return []
        out: list[str] = []
        for event in reversed(kept[:position]):
            if event.label == 1:
                out.append(event.item_id)
                if len(out) == history_len:
                    break
        return out[::-1]

    first_demo = max(0, len(kept) - num_demos)
    demos = [
        _demo(kept[position], likes_before(position)) for position in range(first_demo, len(kept))
    ]
    return likes_before(len(kept)), demos


def contexts_for(
    events: Iterable[Event],
    candidates: Sequence[str],
    num_demos: int,
    history_len: int,
    selection: Selection,
) -> list[Context]:
    """``(history, demos)`` of a query about each candidate, placed after all ``events``.

    With the recent policies every candidate gets the same context (one object, so callers can
    share its prefix); with retrieval policies each is chosen for its candidate, exactly as
    :func:`recicl.data.samples.annotate_events` chooses for a target item.
    """
    if selection.demo_policy == "recent" and selection.history_policy == "recent":
        shared = context_from_events(events, num_demos, history_len)
        return [shared] * len(candidates)
    if num_demos < 0 or history_len < 0:
        raise ValueError("num_demos and history_len must be >= 0")
    kept = _ordered_unique(events)
    n, count = len(kept), len(candidates)
    if selection.embeddings is None:
        raise ValueError("retrieval policies need the served version's item embeddings")
    vectors = selection.vectors_of_ids([e.item_id for e in kept])
    queries = selection.vectors_of_ids(list(candidates))
    liked = np.flatnonzero([e.label == 1 for e in kept])
    likes_before = np.searchsorted(liked, np.arange(n + 1))  # likes strictly before position
    window = selection.window

    def histories(targets: np.ndarray, positions: np.ndarray) -> list[list[str]]:
        if selection.history_policy == "recent":
            counts = np.minimum(likes_before[positions], history_len)
            return [
                [kept[j].item_id for j in liked[e - c : e]]
                for e, c in zip(likes_before[positions], counts, strict=True)
            ]
        ends = likes_before[positions]
        offsets, chosen = select_similar(
            targets, vectors[liked], ends, np.minimum(ends, window), k=history_len, recent=0
        )
        items = [kept[j].item_id for j in liked[chosen]]
        return [items[offsets[i] : offsets[i + 1]] for i in range(len(positions))]

    own_history = histories(vectors, np.arange(n))  # each event's history, at its own position
    query_history = histories(queries, np.full(count, n))
    if selection.demo_policy == "recent":
        start = max(0, n - num_demos)
        picked = [list(range(start, n))] * count
    else:
        labels = np.array([e.label for e in kept], dtype=np.int8)
        offsets, chosen = select_similar(
            queries,
            vectors,
            np.full(count, n),
            np.full(count, min(n, window)),
            k=num_demos,
            recent=recent_slots(selection.demo_policy, num_demos, selection.recent_share),
            **selection.quality_args(selection.demo_policy, labels),
        )
        picked = [chosen[offsets[i] : offsets[i + 1]].tolist() for i in range(count)]
    return [
        (query_history[i], [_demo(kept[p], own_history[p]) for p in picked[i]])
        for i in range(count)
    ]
