"""SQLite backend of the interaction store: one WAL file shared by every process of one machine."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recicl.serve.store.base import (
    DEFAULT_MAX_EVENTS_PER_USER,
    Event,
    InteractionStore,
    StoreError,
    StoreUnavailableError,
    StoreURLError,
    check_cap,
    checked_batch,
)
from recicl.serve.store.feedback import (
    EVICTED,
    EXPIRED,
    FeedbackCounts,
    FeedbackRow,
    FeedbackSettings,
    ServedScore,
    checked_scores,
    join_events,
    served_counts,
)
from recicl.serve.store.items import CatalogItem, checked_items

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
    # The feedback log (recicl.serve.store.feedback): one row per served score. seq grows with
    # every insert and rows leave only from the old end, so max(seq) - min(seq) bounds the count.
    """CREATE TABLE IF NOT EXISTS feedback (
        seq INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        version TEXT NOT NULL,
        arm TEXT NOT NULL,
        policy TEXT NOT NULL,
        score REAL NOT NULL,
        served_at INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        label INTEGER,
        outcome_ts INTEGER,
        joined_at INTEGER,
        late INTEGER NOT NULL DEFAULT 0,
        duplicates INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_user_item ON feedback (user_id, item_id)",
    "CREATE INDEX IF NOT EXISTS feedback_time ON feedback (served_at)",
    # Expiry scans only the scores still waiting for their outcome.
    "CREATE INDEX IF NOT EXISTS feedback_pending ON feedback (served_at) WHERE status = 'pending'",
    """CREATE TABLE IF NOT EXISTS feedback_counters (
        kind TEXT NOT NULL,
        version TEXT NOT NULL,
        arm TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (kind, version, arm)
    ) WITHOUT ROWID""",
    # Catalog items added while serving (recicl.serve.store.items); revision: the put that
    # wrote the row last, indexed so a replica's catch-up reads only what is newer.
    """CREATE TABLE IF NOT EXISTS catalog_items (
        item_id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        attributes TEXT NOT NULL,
        revision INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS catalog_items_revision ON catalog_items (revision)",
]

_FEEDBACK_COLUMNS = (
    "seq, request_id, user_id, item_id, version, arm, policy, score, served_at, status, label, "
    "outcome_ts, joined_at, late, duplicates"
)


def _feedback_row(row: tuple[Any, ...]) -> FeedbackRow:
    seq, *served, status, label, outcome_ts, joined_at, late, duplicates = row
    return FeedbackRow(
        seq, ServedScore(*served), status, label, outcome_ts, joined_at, late, duplicates
    )


def _clock(now: int | None) -> int:
    return int(time.time()) if now is None else int(now)


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
        feedback: FeedbackSettings | None = None,
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        self.url = "sqlite:///" + str(self.path)
        self.max_events_per_user = check_cap(max_events_per_user)
        self.feedback = feedback or FeedbackSettings()
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
        batch = checked_batch(events)
        if not batch:
            return 0
        rows = [(e.user_id, e.item_id, e.timestamp, e.rating, e.label) for e in batch]
        users = list(dict.fromkeys(e.user_id for e in batch))
        cap = self.max_events_per_user
        trim = (
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE user_id = ? "  # nosec B608: module constants; values bound with ?
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
            "SELECT item_id, label, timestamp, rating FROM events WHERE user_id = ? "  # nosec B608: module constants; values bound with ?
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

    def events_since(self, since_ts: int, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        rows = self._read(
            "SELECT user_id, item_id, label, timestamp, rating FROM events WHERE timestamp > ? "  # nosec B608: module constants; values bound with ?
            f"ORDER BY timestamp, user_id, {_SQLITE_ORDER.format(d='ASC')} LIMIT ?",
            (int(since_ts), int(limit)),
        )
        return [Event(user, item, label, ts, rating) for user, item, label, ts, rating in rows]

    def seen_items(self, user_id: str) -> set[str]:
        rows = self._read("SELECT DISTINCT item_id FROM events WHERE user_id = ?", (user_id,))
        return {item for (item,) in rows}

    # -- the feedback log -----------------------------------------------------------------------

    def _add_counts(self, cur: sqlite3.Cursor, counts: FeedbackCounts) -> None:
        cur.executemany(
            "INSERT INTO feedback_counters (kind, version, arm, count) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (kind, version, arm) DO UPDATE SET count = count + excluded.count",
            [(*key, n) for key, n in counts.items() if n],
        )

    def _expire_and_trim(self, cur: sqlite3.Cursor, now: int) -> None:
        """Close the windows that passed (expired), then apply retention and the row cap
        (scores dropped while still pending are counted as evicted)."""
        counts: FeedbackCounts = Counter()

        def pending(where: str, value: int, kind: str) -> None:
            for version, arm, n in cur.execute(
                "SELECT version, arm, COUNT(*) FROM feedback WHERE status = 'pending' AND "  # nosec B608: module constants; values bound with ?
                f"{where} GROUP BY version, arm",
                (value,),
            ).fetchall():
                counts[(kind, version, arm)] += n

        closed = now - self.feedback.attribution_window_s  # open while served_at + window >= now
        pending("served_at < ?", closed, EXPIRED)
        cur.execute(
            "UPDATE feedback SET status = 'expired' WHERE status = 'pending' AND served_at < ?",
            (closed,),
        )
        drops = [("served_at < ?", now - self.feedback.retention_s)]
        low, high = cur.execute("SELECT min(seq), max(seq) FROM feedback").fetchone()
        if high is not None and high - low + 1 > self.feedback.max_rows:
            drops.append(("seq <= ?", high - self.feedback.max_rows))
        for where, value in drops:
            pending(where, value, EVICTED)
            cur.execute(f"DELETE FROM feedback WHERE {where}", (value,))  # nosec B608: module constants; values bound with ?
        self._add_counts(cur, counts)

    def record_served(self, scores: Iterable[ServedScore], now: int | None = None) -> int:
        batch = checked_scores(scores)
        now = _clock(now)

        def body(cur: sqlite3.Cursor) -> int:
            cur.executemany(
                "INSERT INTO feedback (request_id, user_id, item_id, version, arm, policy, score, "
                "served_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (s.request_id, s.user_id, s.item_id, s.version, s.arm, s.policy, s.score,
                     s.served_at)
                    for s in batch
                ],
            )  # fmt: skip
            self._add_counts(cur, served_counts(batch))
            self._expire_and_trim(cur, now)
            return len(batch)

        return self._write(body)

    def record_outcomes(self, events: Iterable[Event], now: int | None = None) -> FeedbackCounts:
        batch = checked_batch(events)
        now = _clock(now)

        def body(cur: sqlite3.Cursor) -> FeedbackCounts:
            self._expire_and_trim(cur, now)

            def rows_of(user_id: str, item_id: str) -> list[FeedbackRow]:
                found = cur.execute(
                    f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE user_id = ? AND item_id = ?",  # nosec B608: module constants; values bound with ?
                    (user_id, item_id),
                ).fetchall()
                return [_feedback_row(r) for r in found]

            window = self.feedback.attribution_window_s
            changed, counts = join_events(batch, rows_of, now, window)
            cur.executemany(
                "UPDATE feedback SET status = ?, label = ?, outcome_ts = ?, joined_at = ?, "
                "late = ?, duplicates = ? WHERE seq = ?",
                [
                    (r.status, r.label, r.outcome_ts, r.joined_at, r.late, r.duplicates, r.seq)
                    for r in changed
                ],
            )
            self._add_counts(cur, counts)
            return counts

        return self._write(body) if batch else Counter()

    def feedback_rows(self, since: int, now: int | None = None) -> list[FeedbackRow]:
        now = _clock(now)
        self._write(lambda cur: self._expire_and_trim(cur, now))
        found = self._read(
            f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE served_at >= ? "  # nosec B608: module constants; values bound with ?
            "ORDER BY served_at, seq",
            (int(since),),
        )
        return [_feedback_row(r) for r in found]

    def feedback_counters(self, now: int | None = None) -> FeedbackCounts:
        now = _clock(now)
        self._write(lambda cur: self._expire_and_trim(cur, now))
        found = self._read("SELECT kind, version, arm, count FROM feedback_counters", ())
        return Counter({(kind, version, arm): n for kind, version, arm, n in found})

    # -- catalog items added while serving -----------------------------------------------------

    def put_items(self, items: Iterable[CatalogItem]) -> int:
        batch = checked_items(items)

        def body(cur: sqlite3.Cursor) -> int:
            # inside BEGIN IMMEDIATE: no other writer can take the same revision
            revision = int(
                cur.execute("SELECT ifnull(max(revision), 0) + 1 FROM catalog_items").fetchone()[0]
            )
            cur.executemany(
                "INSERT INTO catalog_items (item_id, title, attributes, revision) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (item_id) DO UPDATE SET title = excluded.title, "
                "attributes = excluded.attributes, revision = excluded.revision",
                [(i.item_id, i.title, i.attributes_json(), revision) for i in batch],
            )
            return revision

        if not batch:  # nothing to write: the revision as it stands
            return int(self._read("SELECT ifnull(max(revision), 0) FROM catalog_items", ())[0][0])
        return int(self._write(body))

    def items_since(self, revision: int) -> tuple[int, list[CatalogItem]]:
        rows = self._read(
            "SELECT item_id, title, attributes, revision FROM catalog_items WHERE revision > ? "
            "ORDER BY revision, item_id",
            (int(revision),),
        )
        if not rows:
            return int(revision), []
        return int(rows[-1][3]), [CatalogItem.from_stored(i, t, a) for i, t, a, _ in rows]

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
