"""Brute-force, obviously-correct reference for ICL sample semantics (tests only).

Written from the contract's words, one event at a time, so that the vectorized implementation is
checked against an independent reading of the spec rather than against itself.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def _key(event: dict[str, Any]) -> tuple:
    rating = event.get("rating")
    return (
        event["timestamp"],
        event["item_id"],
        float("inf") if rating is None else rating,  # nulls sort last
        event["label"],
    )


def reference_samples(
    events: list[dict[str, Any]], *, num_demos: int, history_len: int, min_demos: int
) -> tuple[dict[str, dict[str, Any]], int]:
    """(samples keyed by sample_id, number of exact duplicates removed)."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_user[event["user_id"]].append(event)
    samples: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for user, user_events in by_user.items():
        ordered = sorted(user_events, key=_key)
        unique: list[dict[str, Any]] = []
        for event in ordered:
            fields = (event["item_id"], event["timestamp"], event.get("rating"), event["label"])
            if unique and fields == (
                unique[-1]["item_id"],
                unique[-1]["timestamp"],
                unique[-1].get("rating"),
                unique[-1]["label"],
            ):
                duplicates += 1
                continue
            unique.append(event)

        def history_at(position: int, unique: list = unique) -> list[str]:
            liked = [e["item_id"] for e in unique[:position] if e["label"] == 1]
            return liked[-history_len:] if history_len else []

        for position, event in enumerate(unique):
            if position < min_demos:
                continue
            demos = []
            for demo_position in range(max(0, position - num_demos), position):
                demo = unique[demo_position]
                demos.append(
                    {
                        "item_id": demo["item_id"],
                        "label": demo["label"],
                        "timestamp": demo["timestamp"],
                        "history": history_at(demo_position),
                    }
                )
            sample_id = f"{user}#{position}"
            samples[sample_id] = {
                "sample_id": sample_id,
                "user_id": user,
                "item_id": event["item_id"],
                "timestamp": event["timestamp"],
                "label": event["label"],
                "history": history_at(position),
                "demos": demos,
            }
    return samples, duplicates
