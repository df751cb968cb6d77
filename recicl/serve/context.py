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

The unit tests compare this function with ``annotate_events`` on the same events, so that the
prompts served are the prompts trained on (no train/serve skew). One difference is inherent:
serving reads only the newest ``serve.context_events`` events of a user, so the histories of the
oldest demonstrations may be shorter than training would have made them when a user has very
many events and few likes among the newest ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from recicl.serve.store import Event, event_order_key


def _identity(event: Event) -> tuple[Any, ...]:
    return (event.item_id, event.timestamp, event.rating, event.label)


def context_from_events(
    events: Iterable[Event], num_demos: int, history_len: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """``(history, demos)`` of a query placed after all ``events`` (one user's, any order).

    ``demos`` are mappings ``{item_id, label, timestamp, history}`` as
    :class:`~recicl.prompts.PromptBuilder` takes them.
    """
    if num_demos < 0 or history_len < 0:
        raise ValueError("num_demos and history_len must be >= 0")
    ordered = sorted(events, key=event_order_key)
    kept: list[Event] = []
    for event in ordered:  # exact repeats are adjacent after the total sort
        if kept and _identity(kept[-1]) == _identity(event):
            continue
        kept.append(event)

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
        {
            "item_id": kept[position].item_id,
            "label": int(kept[position].label),
            "timestamp": int(kept[position].timestamp),
            "history": likes_before(position),
        }
        for position in range(first_demo, len(kept))
    ]
    return likes_before(len(kept)), demos
