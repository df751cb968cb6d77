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
* **Invalid records are refused, not stored**: empty/non-string ids, ids with NUL characters, a
  label other than 0/1, a non-integer timestamp, a non-finite rating → :class:`InvalidEventError`
  (a ``ValueError``) and nothing of the batch is written. Field-level validation with friendly
  4xx messages stays in the API layer; this is the last line of defence.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import sqlite3
import struct
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from recicl.errors import ReciclError

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


def _checked_batch(events: Event | Iterable[Event]) -> list[Event]:
    if isinstance(events, Event):
        events = [events]
    return [_checked(event, i) for i, event in enumerate(events)]


def _check_cap(max_events_per_user: int | None) -> int | None:
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


def _redact(url: str) -> str:
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


# --------------------------------------------------------------------------------------------
# SQLite


_SQLITE_ORDER = "timestamp {d}, item_id {d}, rating IS NULL {d}, ifnull(rating, 0) {d}, label {d}"

# The unique index is both the dedup rule (exact repeats) and the read path of ``latest``: its
# columns are the training order, so "newest n of a user" is a backwards index range scan. It
# replaces an index on (user_id, timestamp, seq): arrival order (seq) deliberately plays no role.
_SQLITE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        rating REAL,
        label INTEGER NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_user_order ON events "
    "(user_id, timestamp, item_id, rating IS NULL, ifnull(rating, 0), label)",
    # Covering index for recent_items: a time range scan that never touches the table.
    "CREATE INDEX IF NOT EXISTS events_time ON events (timestamp, item_id, user_id)",
    # users_seen() in O(users) instead of a scan of every event.
    "CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY) WITHOUT ROWID",
]

#: Connections inherited through fork(): never closed in the child (closing another process's
#: SQLite connection can drop the POSIX locks of the child's own connections), just kept alive.
_FORK_ORPHANS: list[Any] = []


class _Conn:
    """Holder of one thread's connection: weak-referenceable, unlike sqlite3.Connection."""

    __slots__ = ("__weakref__", "db")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db


class SQLiteStore(InteractionStore):
    """Events in one SQLite file, safe for many threads and many processes on one machine.

    Why one connection per thread: a sqlite3 connection must not run two statements at once, and
    a lock around one shared connection would serialize readers that WAL lets run in parallel.
    Connections die with their thread (thread-local) and are re-created after a fork. Writers in
    other threads/processes are waited for (``busy_timeout``) rather than failing with "database
    is locked"; every write takes the write lock up front (``BEGIN IMMEDIATE``), which is what
    makes that wait reliable (a deferred transaction that upgrades to a writer cannot wait).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_events_per_user: int | None = DEFAULT_MAX_EVENTS_PER_USER,
        synchronous: str = "FULL",
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        self.url = "sqlite:///" + str(self.path)
        self.max_events_per_user = _check_cap(max_events_per_user)
        synchronous = synchronous.upper()
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise StoreURLError(
                f"synchronous={synchronous!r} for {self.url}: use FULL (default: survives power "
                "loss), NORMAL (may lose the last commits on power loss) or EXTRA"
            )
        self.synchronous = synchronous
        self.busy_timeout_s = float(busy_timeout_s)
        self._closed = False
        self._pid = os.getpid()
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Conn] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailableError(
                f"cannot create the folder of the events database {self.path}: {e}; "
                "choose a writable workdir or store URL"
            ) from e
        self._init_schema()

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,  # explicit BEGIN/COMMIT only
                # Only the owner thread uses it, but close() may come from another thread.
                check_same_thread=False,
            )
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            db.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as e:
            raise StoreUnavailableError(
                f"cannot open the events database {self.path}: {e}; check that the file is a "
                "SQLite database on a local disk and writable (set the store URL to move it)"
            ) from e
        return db

    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailableError(f"the interaction store {self.url} is closed")
        if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
            _FORK_ORPHANS.extend(list(self._conns))
            self._pid = os.getpid()
            self._local = threading.local()
            self._conns = weakref.WeakSet()
            self._conns_lock = threading.Lock()
        holder = getattr(self._local, "conn", None)
        if holder is None:
            holder = _Conn(self._connect())
            self._local.conn = holder
            with self._conns_lock:
                self._conns.add(holder)
        return holder.db

    def _init_schema(self) -> None:
        """WAL + tables, tolerant of several processes opening a brand-new file at once.

        Switching to WAL needs an exclusive lock and SQLite does not always call the busy handler
        for it, so that one step is retried here until the busy timeout.
        """
        db = self._db()
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.Error as e:
                transient = "locked" in str(e) or "busy" in str(e)
                if not transient or time.monotonic() > deadline:
                    raise self._error("set WAL mode on", e) from e
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise StoreUnavailableError(
                f"the events database {self.path} cannot use WAL mode (journal_mode={mode}); "
                "put it on a local filesystem (not NFS/SMB)"
            )
        self._write(lambda cur: [cur.execute(statement) for statement in _SQLITE_SCHEMA])

    def _error(self, doing: str, e: Exception) -> StoreError:
        return StoreUnavailableError(
            f"could not {doing} the events database {self.path}: {e}; if another process holds "
            "it for longer than the busy timeout, raise busy_timeout_s or use Redis"
        )

    def _write(self, body: Any) -> Any:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self._error("write to", e) from e
        try:
            result = body(db.cursor())
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise self._error("write to", e) from e
            raise
        return result

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._error("read from", e) from e

    # -- the interface ------------------------------------------------------------------------

    def append(self, events: Event | Iterable[Event]) -> int:
        batch = _checked_batch(events)
        if not batch:
            return 0
        rows = [(e.user_id, e.item_id, e.timestamp, e.rating, e.label) for e in batch]
        users = list(dict.fromkeys(e.user_id for e in batch))
        cap = self.max_events_per_user
        trim = (
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE user_id = ? "
            f"ORDER BY {_SQLITE_ORDER.format(d='DESC')} LIMIT -1 OFFSET ?)"
        )

        def body(cur: sqlite3.Cursor) -> int:
            cur.executemany(
                "INSERT OR IGNORE INTO events (user_id, item_id, timestamp, rating, label) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            added = cur.rowcount
            cur.executemany(
                "INSERT OR IGNORE INTO users (user_id) VALUES (?)", [(u,) for u in users]
            )
            if cap is not None:
                cur.executemany(trim, [(u, cap) for u in users])
            return added

        return self._write(body)

    def latest(self, user_id: str, n: int) -> list[Event]:
        if n <= 0:
            return []
        rows = self._read(
            "SELECT item_id, label, timestamp, rating FROM events WHERE user_id = ? "
            f"ORDER BY {_SQLITE_ORDER.format(d='DESC')} LIMIT ?",
            (user_id, int(n)),
        )
        return [Event(user_id, item, label, ts, rating) for item, label, ts, rating in rows[::-1]]

    def count(self, user_id: str) -> int:
        return self._read("SELECT COUNT(*) FROM events WHERE user_id = ?", (user_id,))[0][0]

    def users_seen(self) -> int:
        return self._read("SELECT COUNT(*) FROM users", ())[0][0]

    def total_events(self) -> int:
        return self._read("SELECT COUNT(*) FROM events", ())[0][0]

    def recent_items(self, since_ts: int, limit: int) -> list[tuple[str, int]]:
        if limit <= 0:
            return []
        rows = self._read(
            "SELECT item_id, COUNT(DISTINCT user_id) AS users FROM events WHERE timestamp >= ? "
            "GROUP BY item_id ORDER BY users DESC, item_id ASC LIMIT ?",
            (int(since_ts), int(limit)),
        )
        return [(item, int(users)) for item, users in rows]

    def seen_items(self, user_id: str) -> set[str]:
        rows = self._read("SELECT DISTINCT item_id FROM events WHERE user_id = ?", (user_id,))
        return {item for (item,) in rows}

    def health(self) -> bool:
        if self._closed:
            return False
        try:
            return self._db().execute("SELECT 1").fetchone() == (1,)
        except Exception:
            return False

    def close(self) -> None:
        self._closed = True
        if self._pid != os.getpid():
            return
        with self._conns_lock:
            holders = list(self._conns)
            self._conns = weakref.WeakSet()
        for holder in holders:
            with contextlib.suppress(sqlite3.Error):
                holder.db.close()


# --------------------------------------------------------------------------------------------
# Redis

# One script = one atomic append of a whole batch, across users.
# KEYS[1] = global log (score = timestamp, member = user_id NUL event-member),
# KEYS[2] = set of user ids, KEYS[3..] = one per-user sorted set per user in the batch.
# ARGV[1] = cap (0 = none); then per user: user_id, n, then n × (score, member).
_APPEND_LUA = """
local cap = tonumber(ARGV[1])
local pos = 2
local added = 0
for k = 3, #KEYS do
  local key = KEYS[k]
  local user = ARGV[pos]
  local n = tonumber(ARGV[pos + 1])
  pos = pos + 2
  for i = 1, n do
    local score, member = ARGV[pos], ARGV[pos + 1]
    pos = pos + 2
    if redis.call('ZADD', key, 'NX', score, member) == 1 then
      redis.call('ZADD', KEYS[1], score, user .. '\\0' .. member)
      added = added + 1
    end
  end
  redis.call('SADD', KEYS[2], user)
  if cap > 0 then
    local excess = redis.call('ZCARD', key) - cap
    if excess > 0 then
      local old = redis.call('ZRANGE', key, 0, excess - 1)
      for _, m in ipairs(old) do
        redis.call('ZREM', KEYS[1], user .. '\\0' .. m)
      end
      redis.call('ZREMRANGEBYRANK', key, 0, excess - 1)
    end
  end
end
return added
"""

_NO_RATING = b"~"  # sorts after every hex digit: a missing rating comes last, as in training


def _rating_key(rating: float | None) -> bytes:
    """Fixed-width hex whose byte order is the numeric order of finite doubles."""
    if rating is None:
        return _NO_RATING
    (bits,) = struct.unpack(">Q", struct.pack(">d", rating))
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
    return b"%016X" % bits


def _rating_from_key(key: bytes) -> float | None:
    if key == _NO_RATING:
        return None
    bits = int(key, 16)
    bits = bits & ~(1 << 63) if bits >> 63 else bits ^ 0xFFFFFFFFFFFFFFFF
    return struct.unpack(">d", struct.pack(">Q", bits))[0]


def _member(event: Event) -> bytes:
    """Per-user sorted-set member: ``item NUL rating-key NUL label NUL timestamp``.

    Redis orders equal scores (timestamps) by member bytes, so item_id, rating (missing last)
    and label come first and reproduce the training tie order; the timestamp at the end only
    makes the member unique per event (the same item can recur at another time).
    """
    return b"\x00".join(
        (
            event.item_id.encode(),
            _rating_key(event.rating),
            b"%d" % event.label,
            b"%d" % event.timestamp,
        )
    )


def _event(user_id: str, member: bytes) -> Event:
    item, rating, label, timestamp = member.split(b"\x00")
    return Event(user_id, item.decode(), int(label), int(timestamp), _rating_from_key(rating))


class RedisStore(InteractionStore):
    """Events in Redis: one sorted set per user (``<prefix>:events:<user_id>``).

    Score = timestamp; members encode the rest of the event so that Redis's own order of equal
    scores is the training tie order (see :func:`_member`) and an exact repeat is the same member
    (stored once). A global log sorted set (``<prefix>:log``) serves ``recent_items`` and a set
    (``<prefix>:users``) ``users_seen``; the Lua append script keeps all three consistent,
    trimming included. Targets one Redis server (with replicas/Sentinel as you like), not Redis
    Cluster sharding: a batch's keys are written by one script.
    """

    _PAGE = 20_000

    def __init__(
        self,
        url: str,
        *,
        max_events_per_user: int | None = DEFAULT_MAX_EVENTS_PER_USER,
        prefix: str = "recicl",
        timeout_s: float = 5.0,
    ) -> None:
        self.url = _redact(url)
        self.max_events_per_user = _check_cap(max_events_per_user)
        try:
            import redis
        except ImportError as e:
            raise StoreError(
                f"store URL {self.url} needs the redis client: pip install 'recicl[redis]'"
            ) from e
        self._redis = redis
        self._closed = False
        self._prefix = prefix
        self._log_key = f"{prefix}:log"
        self._users_key = f"{prefix}:users"
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                health_check_interval=30,
            )
        except ValueError as e:
            raise StoreURLError(f"invalid Redis URL {self.url}: {e}") from e
        self._append_script = self._client.register_script(_APPEND_LUA)
        try:
            self._client.ping()
        except redis.RedisError as e:
            self._client.close()
            raise self._unavailable(e) from e

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}:events:{user_id}"

    def _unavailable(self, e: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Redis at {self.url} is unavailable ({type(e).__name__}: {e}); start the server "
            "or fix the store URL (redis://host:port/db; sqlite:///<path> for the embedded store)"
        )

    def _call(self, fn: Any, *args: Any) -> Any:
        if self._closed:  # redis-py would silently reconnect; keep SQLiteStore's behaviour
            raise StoreUnavailableError(f"the interaction store {self.url} is closed")
        try:
            return fn(*args)
        except (self._redis.ConnectionError, self._redis.TimeoutError) as e:
            raise self._unavailable(e) from e
        except self._redis.RedisError as e:
            raise StoreError(f"Redis at {self.url} refused the operation: {e}") from e

    def append(self, events: Event | Iterable[Event]) -> int:
        batch = _checked_batch(events)
        if not batch:
            return 0
        by_user: dict[str, list[Event]] = {}
        for event in batch:
            by_user.setdefault(event.user_id, []).append(event)
        keys = [self._log_key, self._users_key]
        args: list[Any] = [self.max_events_per_user or 0]
        for user_id, user_events in by_user.items():
            keys.append(self._key(user_id))
            args += [user_id, len(user_events)]
            for event in user_events:
                args += [event.timestamp, _member(event)]
        return int(self._call(lambda: self._append_script(keys=keys, args=args)))

    def latest(self, user_id: str, n: int) -> list[Event]:
        if n <= 0:
            return []
        members = self._call(self._client.zrange, self._key(user_id), -int(n), -1)
        return [_event(user_id, m) for m in members]

    def count(self, user_id: str) -> int:
        return int(self._call(self._client.zcard, self._key(user_id)))

    def users_seen(self) -> int:
        return int(self._call(self._client.scard, self._users_key))

    def total_events(self) -> int:
        return int(self._call(self._client.zcard, self._log_key))

    def recent_items(self, since_ts: int, limit: int) -> list[tuple[str, int]]:
        if limit <= 0:
            return []
        pairs: set[tuple[bytes, bytes]] = set()
        offset = 0
        while True:  # paged so one huge window does not block Redis in a single reply
            page = self._call(
                lambda o=offset: self._client.zrangebyscore(
                    self._log_key, int(since_ts), "+inf", start=o, num=self._PAGE
                )
            )
            for entry in page:
                user, item, _ = entry.split(b"\x00", 2)
                pairs.add((item, user))
            if len(page) < self._PAGE:
                break
            offset += len(page)
        counts = Counter(item.decode() for item, _ in pairs)
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: int(limit)]

    def seen_items(self, user_id: str) -> set[str]:
        members = self._call(self._client.zrange, self._key(user_id), 0, -1)
        return {m.split(b"\x00", 1)[0].decode() for m in members}

    def health(self) -> bool:
        if self._closed:
            return False
        try:
            return bool(self._client.ping())
        except Exception:
            return False

    def close(self) -> None:
        self._closed = True
        self._client.close()


# --------------------------------------------------------------------------------------------


def open_store(
    url: str, *, max_events_per_user: int | None = DEFAULT_MAX_EVENTS_PER_USER
) -> InteractionStore:
    """Open the store a URL names.

    * ``sqlite:///<path>`` — SQLAlchemy/MLflow convention: ``sqlite:////abs/events.db`` (four
      slashes) is absolute, ``sqlite:///events.db`` relative to the working directory. Option:
      ``?synchronous=full|normal`` (see the module docstring).
    * ``redis://[:password@]host:port/db`` or ``rediss://…`` (TLS) — needs ``recicl[redis]``;
      the server is pinged here so a wrong address fails at startup, not on the first request.
    """
    if not isinstance(url, str):
        raise StoreURLError(f"store URL must be a string, got {url!r}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise StoreURLError(
                f"store URL {url!r}: write sqlite:///<path> (sqlite:////abs/path/events.db)"
            )
        path, _, query = url[len("sqlite:///") :].partition("?")
        if not path or path == ":memory:":
            raise StoreURLError(
                f"store URL {url!r} names no file; the store must be shared between processes, "
                "so give a path: sqlite:////abs/path/events.db"
            )
        options = {k.lower(): v[-1] for k, v in parse_qs(query).items()}
        unknown = sorted(set(options) - {"synchronous"})
        if unknown:
            raise StoreURLError(
                f"store URL {url!r}: unknown option(s) {unknown}; the only one is synchronous"
            )
        return SQLiteStore(
            path,
            max_events_per_user=max_events_per_user,
            synchronous=options.get("synchronous", "FULL"),
        )
    if scheme in ("redis", "rediss"):
        return RedisStore(url, max_events_per_user=max_events_per_user)
    raise StoreURLError(
        f"unknown interaction store URL {_redact(url)!r}: use sqlite:////path/to/events.db "
        "(embedded, one machine) or redis://host:6379/0 (cluster)"
    )
