"""The durable interaction store: every user's events, read back newest-first at request time.

Serving builds each prompt from the user's newest stored events (the in-context demonstrations),
and ``POST /v1/events`` appends to the same store, so a user's new interests show up in the very
next request without retraining. Two backends behave identically (the integration tests run every
case on both):

* :class:`SQLiteStore` — the embedded default (``<workdir>/events.db``), one file shared by all
  threads and all processes of one machine (Ray Serve replicas are separate processes).
* :class:`RedisStore` — for clusters, where replicas run on several machines.

Decisions every caller may rely on:

* **Order = training order.** A user's events are ordered by ``(timestamp, item_id, rating,
  label)`` with a missing rating after any rating — exactly the total order of
  ``recicl.data.samples.ORDER`` (Arrow's ``sort_by``, nulls at end). Ties in timestamp are *not*
  ordered by arrival: the prompt built at serve time must be the one training would have built
  from the same events, whatever order they were posted in. :func:`event_order_key` is that order.
* **Exact repeats are stored once.** Training drops exact duplicates (same user, item, timestamp,
  rating, label); the store does the same at write time, which also makes a retried
  ``POST /v1/events`` idempotent. ``append`` returns the number of events that were new.
* **Per-user cap.** At most ``max_events_per_user`` events are kept per user (default
  :data:`DEFAULT_MAX_EVENTS_PER_USER`; ``None`` = unbounded); the oldest in the order above are
  dropped in the same atomic write that went over the cap. ``count``, ``seen_items`` and
  ``recent_items`` see only what is kept.
* **Atomic per call.** One ``append`` is one SQLite transaction / one Redis Lua script: readers see
  all of a batch or none of it.
* **Durability.** SQLite runs in WAL mode with ``synchronous=FULL`` by default: ``append`` returns
  only after the WAL is fsynced, so an acknowledged ``POST /v1/events`` survives a process crash
  *and* a power loss. ``sqlite:///…?synchronous=normal`` trades the last few commits on power loss
  (never on a process crash, never corruption) for fewer fsyncs. Redis durability is the server's
  configuration: run it with ``appendonly yes`` (``appendfsync everysec`` loses at most ~1 s on a
  machine crash, ``always`` nothing).
* **The feedback log** (served scores joined with the events that follow them) lives in the same
  store, with its own rules and bounds: see :mod:`recicl.serve.store.feedback`.
* **Catalog items added while serving** (``POST /admin/items``) live in the same store, so
  they survive a restart and reach every replica: see :mod:`recicl.serve.store.items`.
* **Invalid records are refused, not stored**: empty/non-string ids, ids with NUL characters, a
  label other than 0/1, a non-integer timestamp, a non-finite rating → :class:`InvalidEventError`
  (a ``ValueError``) and nothing of the batch is written. Field-level validation with friendly
  4xx messages stays in the API layer; this is the last line of defence.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from recicl.errors import ReciclError

if TYPE_CHECKING:  # feedback.py builds on this module's Event and errors
    from recicl.serve.store.feedback import (
        FeedbackCounts,
        FeedbackRow,
        FeedbackSettings,
        ServedScore,
    )
    from recicl.serve.store.items import CatalogItem

#: Events kept per user unless configured otherwise: far more than any prompt uses (a prompt holds
#: tens of demonstrations), small enough that one user's reads and trims stay sub-millisecond.
DEFAULT_MAX_EVENTS_PER_USER = 1000

#: Timestamps must be exactly representable as a float64 (Redis sorted-set scores), i.e. ±2**53
#: seconds — hundreds of millions of years either side of 1970.
MAX_ABS_TIMESTAMP = 2**53


class StoreError(ReciclError):
    """The interaction store cannot do what was asked; the message says how to fix it."""


class StoreURLError(StoreError, ValueError):
    """A store URL with an unknown scheme or an unusable path/option."""


class StoreUnavailableError(StoreError):
    """The backend cannot be reached or used (Redis down, SQLite file unwritable, store closed)."""


class InvalidEventError(StoreError, ValueError):
    """A record that must never be stored (empty user id, label not 0/1, …)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction, with the canonical-event field types of ARCHITECTURE.md."""

    user_id: str
    item_id: str
    label: int
    timestamp: int
    rating: float | None = None


def event_order_key(event: Event) -> tuple[int, str, bool, float, int]:
    """Sort key of the training order: (timestamp, item_id, rating with None last, label).

    Python compares ``str`` by code point, which is the UTF-8 byte order that Arrow, SQLite
    (BINARY collation) and Redis (memcmp of members) use, so all four agree.
    """
    rating = event.rating
    return (
        event.timestamp,
        event.item_id,
        rating is None,
        0.0 if rating is None else rating,
        event.label,
    )


def _check_id(value: Any, name: str, index: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidEventError(
            f"event #{index}: {name} must be a non-empty string (got {value!r}); "
            "send the id as text"
        )
    if "\x00" in value:
        raise InvalidEventError(f"event #{index}: {name} {value!r} contains a NUL character")
    return value


def _checked(event: Any, index: int) -> Event:
    """Validate and normalize one record; the normalized form is what both backends store."""
    if not isinstance(event, Event):
        raise InvalidEventError(
            f"event #{index}: expected recicl.serve.store.Event, got {type(event).__name__}"
        )
    user_id = _check_id(event.user_id, "user_id", index)
    item_id = _check_id(event.item_id, "item_id", index)
    label = event.label
    if isinstance(label, float) and label in (0.0, 1.0):
        label = int(label)
    if label not in (0, 1):
        raise InvalidEventError(f"event #{index}: label must be 0 or 1 (got {label!r})")
    try:
        if isinstance(event.timestamp, float):
            raise TypeError
        timestamp = operator.index(event.timestamp)
    except TypeError:
        raise InvalidEventError(
            f"event #{index}: timestamp must be an integer of unix seconds "
            f"(got {event.timestamp!r})"
        ) from None
    if abs(timestamp) > MAX_ABS_TIMESTAMP:
        raise InvalidEventError(
            f"event #{index}: timestamp {timestamp} is out of range; use unix *seconds*"
        )
    rating = event.rating
    if rating is not None:
        try:
            rating = float(rating)
        except (TypeError, ValueError):
            raise InvalidEventError(
                f"event #{index}: rating must be a number or null (got {rating!r})"
            ) from None
        if not math.isfinite(rating):
            raise InvalidEventError(f"event #{index}: rating must be finite (got {rating!r})")
        rating += 0.0  # -0.0 → 0.0: one event, one identity in both backends
    return Event(user_id, item_id, int(label), int(timestamp), rating)


def checked_batch(events: Event | Iterable[Event]) -> list[Event]:
    if isinstance(events, Event):
        events = [events]
    return [_checked(event, i) for i, event in enumerate(events)]


def check_cap(max_events_per_user: int | None) -> int | None:
    if max_events_per_user is not None and (
        isinstance(max_events_per_user, bool)
        or not isinstance(max_events_per_user, int)
        or max_events_per_user < 1
    ):
        raise StoreURLError(
            f"max_events_per_user must be a positive integer or null (unbounded), "
            f"got {max_events_per_user!r}"
        )
    return max_events_per_user


def redact_url(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class InteractionStore(ABC):
    """What serving needs from an event store; see the module docstring for the guarantees."""

    #: The URL this store was opened from (password redacted).
    url: str
    #: Events kept per user (oldest dropped first); None = unbounded.
    max_events_per_user: int | None
    #: Attribution window and retention of the feedback log.
    feedback: FeedbackSettings

    @abstractmethod
    def append(self, events: Event | Iterable[Event]) -> int:
        """Store a batch atomically; return how many were new (exact repeats are not)."""

    @abstractmethod
    def latest(self, user_id: str, n: int) -> list[Event]:
        """The user's newest ``n`` events, oldest → newest (the demonstration order)."""

    @abstractmethod
    def count(self, user_id: str) -> int:
        """Events kept for the user."""

    @abstractmethod
    def users_seen(self) -> int:
        """Distinct users with at least one stored event."""

    @abstractmethod
    def total_events(self) -> int:
        """Events kept across all users."""

    @abstractmethod
    def recent_items(self, since_ts: int, limit: int) -> list[tuple[str, int]]:
        """Items with events at ``timestamp >= since_ts``, by number of distinct users.

        The default candidate generator of ``/v1/recommend``: popular-right-now items. Sorted by
        count descending, then item_id. Liked or not, every kept event counts (an interaction is
        interest). Cost grows with the events in the window, so callers cache it for a while.
        """

    @abstractmethod
    def seen_items(self, user_id: str) -> set[str]:
        """Items among the user's kept events (to exclude from recommendations)."""

    @abstractmethod
    def events_since(self, since_ts: int, limit: int) -> list[Event]:
        """Kept events at ``timestamp > since_ts``, oldest first (ties: user, then the training
        order), at most ``limit`` of them: pass the last one's timestamp back to read on.

        What a re-tune reads (``recicl retune``): the events serving received after the log the
        champion was tuned on ended. Events the per-user cap dropped are gone, so the export is
        what serving kept, not everything it was sent."""

    # -- the feedback log (rules: recicl.serve.store.feedback) --------------------------------

    @abstractmethod
    def record_served(self, scores: Iterable[ServedScore], now: int | None = None) -> int:
        """Log served scores (pending their outcome); return how many were logged.

        The same write expires scores whose attribution window closed before ``now`` (server
        unix seconds, default the clock) and deletes what retention and the row cap drop.
        """

    @abstractmethod
    def record_outcomes(self, events: Iterable[Event], now: int | None = None) -> FeedbackCounts:
        """Join events (arrived at ``now``) with the scores they answer, atomically: counts of
        joined / late / duplicate per (version, arm) and unscored."""

    @abstractmethod
    def feedback_rows(self, since: int, now: int | None = None) -> list[FeedbackRow]:
        """Retained scores served at ``since <= served_at``, oldest first (expiry applied)."""

    @abstractmethod
    def feedback_counters(self, now: int | None = None) -> FeedbackCounts:
        """Totals since the store was created, by (kind, version, arm) (expiry applied)."""

    # -- catalog items added while serving (rules: recicl.serve.store.items) ------------------

    @abstractmethod
    def put_items(self, items: Iterable[CatalogItem]) -> int:
        """Add or replace catalog items in one atomic write; return the revision it made
        (every item of the batch carries it). Nothing is written when one item is invalid."""

    @abstractmethod
    def items_since(self, revision: int) -> tuple[int, list[CatalogItem]]:
        """``(revision reached, items written after revision)``, oldest write first: pass the
        first back next time to read only what is newer (``0``: every added item)."""

    @abstractmethod
    def health(self) -> bool:
        """True when the backend answers; never raises."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""

    def __enter__(self) -> InteractionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.url!r}, max_events_per_user={self.max_events_per_user})"
        )
