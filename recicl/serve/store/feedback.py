"""The feedback log: every served score, joined exactly once with what the user did next.

Why it exists: offline AUC says how a version did on last month's users; only scores that were
really served, joined with the events that followed them, say how it does on live traffic. The
log is the raw material of ``GET /v1/metrics/live`` (and later of live promotion and the monitor),
so its rules are fixed here, once, and both backends apply them through :func:`join_events`:

* **What is logged.** One :class:`ServedScore` per item a response showed: request id, user,
  item, the version that scored it, its *arm* (how the request was routed: ``champion``,
  ``explicit``, or the traffic arms ``candidate`` and ``shadow``), the context *policy* of that
  version and the score, at ``served_at`` (server clock, unix seconds).
* **The join.** An event (user, item, timestamp ``t``) is matched, separately in each arm, with
  that arm's newest score for the same user and item served at or before ``t`` (last touch).
  It is *joined* — the score takes the event's label — when ``t`` is within the attribution
  window after the score and the window had not closed (server clock) when the event arrived.
  A score takes at most one outcome, ever: the join is one SQLite transaction / one Redis
  MULTI under WATCH, so two concurrent deliveries of an event cannot both join.
* **Everything else is counted, never guessed.** *late*: the matched score's window had passed
  (by the event's time or by its arrival); *duplicate*: the matched score already has its
  outcome (a retried POST, or a second event for the same exposure); *unscored*: no arm scored
  the item for the user before the event (never, or only after it, or so long ago that the score
  was deleted); *expired*: a score whose window closed without an outcome; *evicted*: a score
  deleted by the row cap while its window was still open. Counters are per (version, arm), except
  ``unscored`` (an event with no score has neither).
* **Bounded.** Scores older than ``retention_s`` are deleted, and at most ``max_rows`` are kept
  (oldest first), in the same write that adds new ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from recicl.serve.store.base import MAX_ABS_TIMESTAMP, Event, StoreError

if TYPE_CHECKING:
    from recicl.config import FeedbackConfig

#: Arms: how a request was routed to the version that answered. ``champion``: the served alias;
#: ``explicit``: the request named a model (``model`` field); ``candidate``: a split sent the user
#: to a candidate version; ``shadow``: a candidate scored the request beside the champion without
#: answering it (:mod:`recicl.serve.traffic`).
ARM_CHAMPION = "champion"
ARM_EXPLICIT = "explicit"
ARM_CANDIDATE = "candidate"
ARM_SHADOW = "shadow"

#: Status of a served score.
PENDING, JOINED, EXPIRED = "pending", "joined", "expired"
#: Counter kinds (see the module docstring). Event outcomes are JOINED, LATE, DUPLICATE, UNSCORED.
SERVED, LATE, DUPLICATE, UNSCORED, EVICTED = "served", "late", "duplicate", "unscored", "evicted"
COUNTER_KINDS = (SERVED, JOINED, LATE, DUPLICATE, UNSCORED, EXPIRED, EVICTED)

#: (kind, version, arm) → count; ``unscored`` is keyed ("unscored", "", "").
FeedbackCounts = Counter[tuple[str, str, str]]


class InvalidScoreError(StoreError, ValueError):
    """A served score that must never be logged (empty ids, a score outside [0, 1], ...)."""


@dataclass(frozen=True, slots=True)
class FeedbackSettings:
    """How long scores wait for their outcome and how many are kept (``serve.feedback``)."""

    attribution_window_s: int = 86_400
    retention_s: int = 7 * 86_400
    max_rows: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("attribution_window_s", "retention_s", "max_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StoreError(f"feedback {name} must be a positive integer, got {value!r}")
        if self.retention_s < self.attribution_window_s:
            raise StoreError(
                f"feedback retention_s ({self.retention_s}) must be at least the attribution "
                f"window ({self.attribution_window_s}): a score deleted before its window "
                "closes could never be joined"
            )

    @classmethod
    def from_config(cls, fb: FeedbackConfig) -> FeedbackSettings:
        """The settings of ``serve.feedback``."""
        return cls(fb.attribution_window_seconds, fb.retention_seconds, fb.max_rows)


@dataclass(frozen=True, slots=True)
class ServedScore:
    """One score a response showed (see the module docstring for the fields)."""

    request_id: str
    user_id: str
    item_id: str
    version: str
    arm: str
    policy: str
    score: float
    served_at: int


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """A logged score and what became of it. ``seq`` orders scores logged in the same second."""

    seq: int
    served: ServedScore
    status: str = PENDING
    label: int | None = None
    outcome_ts: int | None = None  # the joined event's timestamp
    joined_at: int | None = None  # server time of the join
    late: int = 0  # late events matched to this score
    duplicates: int = 0  # events matched after it was joined


@dataclass(frozen=True, slots=True)
class Decision:
    """What one event did to one arm's matched score (``row`` is None for unscored)."""

    kind: str
    row: FeedbackRow | None


def _text(value: Any, name: str, index: int) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidScoreError(
            f"served score #{index}: {name} must be a non-empty string without NUL (got {value!r})"
        )
    return value


def checked_scores(scores: Iterable[ServedScore]) -> list[ServedScore]:
    """Validated copies (the last line of defence; the API builds them from a model reply)."""
    out = []
    for index, s in enumerate(scores):
        if not isinstance(s, ServedScore):
            raise InvalidScoreError(f"served score #{index}: expected ServedScore, got {s!r}")
        names = ("request_id", "user_id", "item_id", "version", "arm", "policy")
        texts = [_text(getattr(s, name), name, index) for name in names]
        score = s.score
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise InvalidScoreError(f"served score #{index}: score must be a number ({score!r})")
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise InvalidScoreError(f"served score #{index}: score {score!r} is not in [0, 1]")
        served_at = s.served_at
        if isinstance(served_at, bool) or not isinstance(served_at, int):
            raise InvalidScoreError(
                f"served score #{index}: served_at must be integer unix seconds ({served_at!r})"
            )
        if abs(served_at) > MAX_ABS_TIMESTAMP:
            raise InvalidScoreError(f"served score #{index}: served_at {served_at} out of range")
        request_id, user_id, item_id, version, arm, policy = texts
        out.append(
            ServedScore(request_id, user_id, item_id, version, arm, policy, float(score), served_at)
        )
    return out


def decide(rows: Sequence[FeedbackRow], event: Event, now: int, window: int) -> list[Decision]:
    """The outcome of ``event`` (arriving at server time ``now``) in every arm that scored it.

    ``rows`` are the retained scores of the event's user and item, all arms. Pure: the backends
    call it inside their transaction on what they just read, and again if that read was stale.
    """
    newest: dict[str, FeedbackRow] = {}
    for row in rows:
        if row.served.served_at > event.timestamp:
            continue  # served after the event happened: not what the user reacted to
        best = newest.get(row.served.arm)
        if best is None or (row.served.served_at, row.seq) > (best.served.served_at, best.seq):
            newest[row.served.arm] = row
    if not newest:
        return [Decision(UNSCORED, None)]
    decisions = []
    for arm in sorted(newest):
        row = newest[arm]
        closes = row.served.served_at + window
        if event.timestamp > closes or row.status == EXPIRED or now > closes:
            kind = LATE
        elif row.status == JOINED:
            kind = DUPLICATE
        else:
            kind = JOINED
        decisions.append(Decision(kind, row))
    return decisions


def counter_key(kind: str, row: FeedbackRow | None) -> tuple[str, str, str]:
    return (kind, "", "") if row is None else (kind, row.served.version, row.served.arm)


def join_events(
    events: Sequence[Event],
    rows_of: Callable[[str, str], list[FeedbackRow]],
    now: int,
    window: int,
) -> tuple[list[FeedbackRow], FeedbackCounts]:
    """Apply :func:`decide` to a batch in order: (changed rows, counts by kind/version/arm).

    ``rows_of(user, item)`` reads the stored rows; several events of the batch for the same user
    and item see each other's effect (the second delivery of an event is a duplicate even within
    one batch). Nothing is written here: the backend writes the changed rows and the counts in
    the same transaction it read them in.
    """
    cache: dict[tuple[str, str], dict[int, FeedbackRow]] = {}
    changed: dict[int, FeedbackRow] = {}
    counts: FeedbackCounts = Counter()
    for event in events:
        key = (event.user_id, event.item_id)
        if key not in cache:
            cache[key] = {row.seq: row for row in rows_of(*key)}
        rows = cache[key]
        for decision in decide(list(rows.values()), event, now, window):
            counts[counter_key(decision.kind, decision.row)] += 1
            row = decision.row
            if row is None:
                continue
            if decision.kind == JOINED:
                row = replace(
                    row, status=JOINED, label=event.label, outcome_ts=event.timestamp, joined_at=now
                )
            elif decision.kind == LATE:
                row = replace(row, late=row.late + 1)
            else:
                row = replace(row, duplicates=row.duplicates + 1)
            rows[row.seq] = changed[row.seq] = row
    return list(changed.values()), counts


def served_counts(scores: Iterable[ServedScore]) -> FeedbackCounts:
    return Counter((SERVED, s.version, s.arm) for s in scores)


# -- compact encodings shared by the Redis backend (and its tests) ---------------------------------


def encode_state(row: FeedbackRow) -> str:
    """``status|label|outcome_ts|joined_at|late|duplicates``; the status comes first so that the
    Redis expiry script can flip ``pending`` to ``expired`` without parsing the rest."""
    parts = [row.label, row.outcome_ts, row.joined_at]
    return "|".join(
        [
            row.status,
            *("" if p is None else str(p) for p in parts),
            str(row.late),
            str(row.duplicates),
        ]
    )


def decode_state(seq: int, served: ServedScore, text: str) -> FeedbackRow:
    status, label, outcome_ts, joined_at, late, duplicates = text.split("|")

    def number(value: str) -> int | None:
        return None if value == "" else int(value)

    return FeedbackRow(
        seq,
        served,
        status,
        number(label),
        number(outcome_ts),
        number(joined_at),
        int(late),
        int(duplicates),
    )
