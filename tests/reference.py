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
    candidates: list[tuple[int, str, int]],
    target: str,
    k: int,
    *,
    policy: str,
    recent_share: float,
    window: int,
    similarity: Callable[[str, str], float] | None,
    quality: tuple[float, ...] | None = None,
    target_position: int | None = None,
) -> list[int]:
    """Positions chosen among ``candidates`` ((position, item, label) oldest first), ascending.

    The policies in words: consider only the ``window`` latest candidates; recent takes the k
    latest; semantic the k most similar to ``target`` (more recent first on equal similarity);
    mixed the round(k * recent_share) latest, then the most similar of the others; quality the
    k of highest w . (similarity, age / window, liked, similarity * liked), where age counts the
    events between the candidate and the target."""
    candidates = candidates[-window:] if policy != "recent" else candidates
    if policy == "recent" or len(candidates) <= k:
        return [c[0] for c in candidates[-k:]] if k else []
    recent = {"semantic": 0, "quality": 0, "mixed": int(k * recent_share + 0.5)}[policy]
    recent = min(recent, k)
    forced = candidates[len(candidates) - recent :] if recent else []
    others = candidates[: len(candidates) - recent]
    assert similarity is not None
    if policy == "quality":
        assert quality is not None and target_position is not None
        w = quality

        def value(c: tuple[int, str, int]) -> float:
            sim, liked = similarity(target, c[1]), float(c[2])
            age = (target_position - 1 - c[0]) / float(window)
            return w[0] * sim + w[1] * age + w[2] * liked + w[3] * (sim * liked)
    else:

        def value(c: tuple[int, str, int]) -> float:
            return similarity(target, c[1])

    ranked = sorted(others, key=lambda c: (-value(c), -c[0]))
    return sorted([c[0] for c in forced] + [c[0] for c in ranked[: k - recent]])


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
    quality: tuple[float, ...] | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """(samples keyed by sample_id, number of exact duplicates removed).

    ``similarity(item_a, item_b)``: what the semantic and mixed policies rank by; ``quality``:
    the quality policy's weights."""
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
            liked = [
                (p, e["item_id"], 1) for p, e in enumerate(unique[:position]) if e["label"] == 1
            ]
            target = unique[position]["item_id"]
            chosen = _pick(liked, target, history_len, policy=history_policy, **rules)
            return [unique[p]["item_id"] for p in chosen]

        for position, event in enumerate(unique):
            if position < min_demos:
                continue
            demos = []
            earlier = [(p, e["item_id"], e["label"]) for p, e in enumerate(unique[:position])]
            chosen = _pick(
                earlier, event["item_id"], num_demos, policy=demo_policy, **rules,
                quality=quality, target_position=position,
            )  # fmt: skip
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
