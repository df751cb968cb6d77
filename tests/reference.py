"""Brute-force, obviously-correct reference for ICL sample semantics (tests only).

Written from the contract's words, one event at a time, so that the vectorized implementation is
checked against an independent reading of the spec rather than against itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any


def _key(event: dict[str, Any]) -> tuple:
    rating = event.get("rating")
    return (
        event["timestamp"],
        event["item_id"],
        float("inf") if rating is None else rating,  # nulls sort last
        event["label"],
    )


def _pick(
    candidates: list[tuple[int, str]],
    target: str,
    k: int,
    *,
    policy: str,
    recent_share: float,
    window: int,
    similarity: Callable[[str, str], float] | None,
) -> list[int]:
    """Positions chosen among ``candidates`` ((position, item) oldest first), ascending.

    The policies in words: consider only the ``window`` latest candidates; recent takes the k
    latest; semantic the k most similar to ``target`` (more recent first on equal similarity);
    mixed the round(k * recent_share) latest, then the most similar of the others."""
    candidates = candidates[-window:] if policy != "recent" else candidates
    if policy == "recent" or len(candidates) <= k:
        return [position for position, _ in candidates[-k:]] if k else []
    recent = {"semantic": 0, "mixed": int(k * recent_share + 0.5)}[policy]
    recent = min(recent, k)
    forced = candidates[len(candidates) - recent :] if recent else []
    others = candidates[: len(candidates) - recent]
    assert similarity is not None
    ranked = sorted(others, key=lambda c: (-similarity(target, c[1]), -c[0]))
    return sorted([p for p, _ in forced] + [p for p, _ in ranked[: k - recent]])


def reference_samples(
    events: list[dict[str, Any]],
    *,
    num_demos: int,
    history_len: int,
    min_demos: int,
    demo_policy: str = "recent",
    history_policy: str = "recent",
    recent_share: float = 0.5,
    window: int = 200,
    similarity: Callable[[str, str], float] | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """(samples keyed by sample_id, number of exact duplicates removed).

    ``similarity(item_a, item_b)``: what the semantic and mixed policies rank by."""
    rules = {"recent_share": recent_share, "window": window, "similarity": similarity}
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
            liked = [(p, e["item_id"]) for p, e in enumerate(unique[:position]) if e["label"] == 1]
            target = unique[position]["item_id"]
            chosen = _pick(liked, target, history_len, policy=history_policy, **rules)
            return [unique[p]["item_id"] for p in chosen]

        for position, event in enumerate(unique):
            if position < min_demos:
                continue
            demos = []
            earlier = [(p, e["item_id"]) for p, e in enumerate(unique[:position])]
            chosen = _pick(earlier, event["item_id"], num_demos, policy=demo_policy, **rules)
            for demo_position in chosen:
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
