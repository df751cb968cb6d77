"""Shadow and split: which version answers a request, and which requests a candidate also scores.

A new version should meet live users gradually and measurably, never all at once:

* **Shadow** (``serve.traffic.shadow``): on a share of the requests the champion answers, the
  candidate scores the same items with the same context *after* the answer is computed, in a
  task the response never waits for. It never answers; its scores go to the feedback log under
  arm ``shadow`` and the candidate's version. Both scores of a request are joined with the same
  event, so they form the *pairs* that ``recicl promote --live`` compares.
* **Split** (``serve.traffic.split``): a fixed share of *users* is answered by the candidate (arm
  ``candidate``), the rest by the served alias (arm ``champion``); ``/v1/metrics/live`` then
  reads the A/B result per arm.

Why a hash of the user id and not a random draw: a user must see one version throughout (a
ranking that flips between versions on every request is a worse experience, and a user seen by
both arms belongs to neither), on every ingress replica and after a restart. Why sha256 and not
Python's ``hash()``: ``hash(str)`` is salted per process (``PYTHONHASHSEED``), so replicas would
disagree and a restart would move users. The salt (``serve.traffic.salt``) draws another set of
users when changed; a larger share only *adds* users to the candidate (the hash is compared with
the share), so widening a split never moves anyone back.

``PUT /admin/traffic`` sets the same fields at run time. The setting is kept as a tag of the
registered model (:data:`TRAFFIC_TAG`), so every ingress replica follows it within one alias poll
and it survives a restart; ``DELETE /admin/traffic`` returns to the config. Ray-free.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from recicl.config import ConfigError, TrafficConfig
from recicl.serve.store.feedback import ARM_CANDIDATE, ARM_CHAMPION, ARM_SHADOW

if TYPE_CHECKING:
    from recicl.serve.api.backend import ServedVersion

#: Registered-model tag holding the admin setting of one alias: ``recicl.traffic.<alias>``.
TRAFFIC_TAG = "recicl.traffic"


def unit_hash(domain: str, salt: str, key: str) -> float:
    """A stable number in [0, 1) for ``key``: sha256 of (domain, salt, key), first 8 bytes.

    ``domain`` keeps the split's user draw and the shadow's request draw independent."""
    digest = hashlib.sha256(f"{domain}\x00{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_route(traffic: TrafficConfig, user_id: str) -> tuple[str | None, str]:
    """(version, arm) of a request for the served alias: the split's candidate for the users the
    hash puts below the share, else the alias's version (None)."""
    split = traffic.split
    if split.version is not None and unit_hash("split", traffic.salt, user_id) < split.share:
        return str(split.version), ARM_CANDIDATE
    return None, ARM_CHAMPION


def shadow_sampled(traffic: TrafficConfig, request_id: str, answered_by: str) -> str | None:
    """The shadow version to score a champion answer of ``answered_by`` with, or None (no
    shadow, not sampled, or the shadow is the champion itself, e.g. right after a promotion)."""
    shadow = traffic.shadow
    if shadow.version is None or str(shadow.version) == answered_by:
        return None
    if unit_hash("shadow", traffic.salt, request_id) >= shadow.share:
        return None
    return str(shadow.version)


def traffic_view(
    traffic: TrafficConfig, source: str, champion: str | None, stats: dict[str, int]
) -> dict[str, Any]:
    """``/v1/models``'s ``traffic``: each arm with its version and share, and what decides it."""
    split, shadow = traffic.split, traffic.shadow
    split_share = split.share if split.version is not None else 0.0
    arms: list[dict[str, Any]] = [
        {"arm": ARM_CHAMPION, "version": champion, "share": 1.0 - split_share, "of": "users",
         "answers": True},
    ]  # fmt: skip
    if split.version is not None:
        arms.append(
            {"arm": ARM_CANDIDATE, "version": str(split.version), "share": split_share,
             "of": "users", "answers": True}
        )  # fmt: skip
    if shadow.version is not None:
        arms.append(
            {"arm": ARM_SHADOW, "version": str(shadow.version), "share": shadow.share,
             "of": "champion requests", "answers": False, "max_in_flight": shadow.max_in_flight}
        )  # fmt: skip
    return {"source": source, "salt": traffic.salt, "arms": arms, "counts": dict(stats)}


def check_traffic_versions(
    traffic: TrafficConfig, versions: set[str], served: ServedVersion | None = None
) -> list[tuple[str, str]]:
    """Problems of a traffic setting: ``(field, message)`` for a version not among the
    registry's ``versions``, or one that is the served version itself; empty when it applies."""
    problems = []
    for field, version in (
        ("shadow.version", traffic.shadow.version),
        ("split.version", traffic.split.version),
    ):
        if version is None:
            continue
        if str(version) not in versions:
            problems.append(
                (field, f"no version {version} in the registry (`recicl models list` shows them)")
            )
        elif served is not None and str(version) == served.version:
            problems.append(
                (field, f"version {version} is the champion itself (the served alias); "
                 "name a candidate version")
            )  # fmt: skip
    return problems


def encode_override(traffic: TrafficConfig, set_at: int) -> str:
    return json.dumps({**traffic.model_dump(mode="json"), "set_at": set_at})


def decode_override(text: str | None) -> TrafficConfig | None:
    """The admin setting stored in the tag; None when unset or unreadable (edited by hand: the
    config applies rather than a guess)."""
    if not text:
        return None
    try:
        raw = json.loads(text)
        raw.pop("set_at", None)
        return TrafficConfig.model_validate(raw)
    except (ValueError, TypeError, AttributeError, ValidationError):
        return None


def check_configured_traffic(traffic: TrafficConfig, tracking_uri: str, name: str) -> None:
    """Refuse to start with ``serve.traffic`` naming a version the registry lacks: a typo would
    otherwise surface only as failing shadow scorings or split users falling back."""
    if traffic.shadow.version is None and traffic.split.version is None:
        return
    from recicl.registry import client

    found = client(tracking_uri).search_model_versions(f"name='{name}'")
    problems = check_traffic_versions(traffic, {str(v.version) for v in found})
    if problems:
        raise ConfigError(
            "; ".join(f"serve.traffic.{field}: {name} has {message}" for field, message in problems)
        )
