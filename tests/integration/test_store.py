"""The interaction store on real backends: a SQLite file and a real redis-server on 127.0.0.1.

Every test runs on both backends (they must be interchangeable behind ``open_store``). No Ray
needed. Processes are real subprocesses (like Ray Serve replicas): durability is checked by
reading from a new process after the writer died without closing, and for Redis after the server
itself was killed (-9) and restarted on the same data dir.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pytest

from recicl.data.samples import ORDER
from recicl.errors import ReciclError
from recicl.serve.store import (
    Event,
    InvalidEventError,
    StoreUnavailableError,
    StoreURLError,
    event_order_key,
    open_store,
)

REPO = Path(__file__).resolve().parents[2]
NO_REDIS = "redis-server not installed (CI installs it from Debian's packages)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server: loopback only, its own dir, AOF with fsync on every write."""

    def __init__(self, exe: str, folder: Path) -> None:
        self.exe, self.folder, self.port = exe, folder, _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir"]
        args += [str(self.folder), "--save", "", "--appendonly", "yes"]
        args += ["--appendfsync", "always", "--protected-mode", "yes", "--loglevel", "warning"]
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (kept by the process)
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = (self.folder / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{text}")
            time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        """SIGKILL: a crash, not a graceful shutdown that would rewrite/fsync the AOF."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def crash_and_restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def flush(self) -> None:
        import redis

        with redis.Redis(port=self.port) as client:
            client.flushall()


class Backend:
    def __init__(self, name: str, url: str, server: RedisServer | None = None) -> None:
        self.name, self.url, self.server = name, url, server

    def open(self, **kwargs):
        return open_store(self.url, **kwargs)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'work' / 'events.db'}")
    server = request.getfixturevalue("redis_server")
    server.flush()
    return Backend("redis", server.url, server)


@pytest.fixture
def store(backend):
    with backend.open() as opened:
        yield opened


def _run_python(code: str, *args: str, timeout: float = 30) -> str:
    """Run a snippet in a fresh interpreter (a new process, like another Serve replica)."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _training_order(events: list[Event]) -> list[Event]:
    """The order recicl.data.samples sorts a user's events in (Arrow sort_by on ORDER)."""
    table = pa.Table.from_pylist(
        [asdict(e) for e in events],
        schema=pa.schema(
            [
                ("user_id", pa.string()),
                ("item_id", pa.string()),
                ("label", pa.int8()),
                ("timestamp", pa.int64()),
                ("rating", pa.float64()),
            ]
        ),
    )
    return [Event(**row) for row in table.sort_by(ORDER).to_pylist()]


# ---------------------------------------------------------------------------------------------


def test_latest_is_training_order_with_ties(store):
    """Ties in timestamp are ordered by item_id, then rating (missing last), then label."""
    events = [
        Event("u1", "b", 1, 100),
        Event("u1", "a", 0, 100, 4.0),
        Event("u1", "a", 0, 100),  # same item and time, no rating → after the rated one
        Event("u1", "a", 1, 100, -1.5),
        Event("u1", "B", 1, 100),  # upper case sorts before lower case (byte order)
        Event("u1", "é", 0, 100),  # non-ASCII after ASCII
        Event("u1", "z", 1, 50),
        Event("u1", "a", 1, 200, 3.0),
        Event("u1", "c", 0, -5),  # before 1970 is allowed
        Event("u1", "a10", 1, 100),
        Event("u1", "a2", 1, 100),
    ]
    shuffled = events[:]
    random.Random(0).shuffle(shuffled)
    for start in range(0, len(shuffled), 3):  # several batches, arbitrary arrival order
        store.append(shuffled[start : start + 3])
    store.append([Event("u2", "x", 1, 150)])  # another user does not leak in

    expected = _training_order(events)
    assert expected == sorted(events, key=event_order_key)
    assert store.latest("u1", 100) == expected
    assert store.latest("u1", 4) == expected[-4:]
    assert store.latest("u1", 1) == [Event("u1", "a", 1, 200, 3.0)]
    assert store.latest("u1", 0) == []
    assert store.latest("nobody", 5) == []
    assert store.count("u1") == len(events)
    # Values come back with their types: int label/timestamp, float or None rating.
    first = store.latest("u1", 100)[0]
    assert (type(first.label), type(first.timestamp)) == (int, int)


def test_exact_repeats_are_stored_once(store):
    """Training drops exact duplicates; the store does too, so a retried POST is harmless."""
    event = Event("u", "i", 1, 10, 5.0)
    assert store.append([event, event]) == 1
    assert store.append(event) == 0  # a single Event is accepted too
    assert store.append([Event("u", "i", 1, 10, -0.0), Event("u", "i", 1, 10, 0.0)]) == 1
    # Same item at another time, or with another rating/label, is another event.
    assert store.append([Event("u", "i", 1, 11, 5.0), Event("u", "i", 0, 10, 5.0)]) == 2
    assert store.append([Event("u", "i", 1, 10)]) == 1
    assert store.count("u") == 5
    assert store.total_events() == 5


def test_cap_keeps_the_newest_per_user(backend):
    with backend.open(max_events_per_user=5) as store:
        events = [Event("u", f"i{t:02d}", t % 2, t) for t in range(12)]
        rng = random.Random(1)
        rng.shuffle(events)
        for start in range(0, 12, 4):
            store.append(events[start : start + 4])
            assert store.count("u") <= 5
        store.append([Event("v", "only", 1, 0)])
        kept = [Event("u", f"i{t:02d}", t % 2, t) for t in range(7, 12)]
        assert store.latest("u", 100) == kept
        assert store.count("u") == 5
        assert store.seen_items("u") == {e.item_id for e in kept}
        assert store.recent_items(0, 100) == sorted(
            [(e.item_id, 1) for e in kept] + [("only", 1)], key=lambda kv: kv[0]
        )
        assert store.total_events() == 6
        # An event older than everything kept is dropped in the same write.
        assert store.append([Event("u", "ancient", 1, -100)]) == 1
        assert store.latest("u", 100) == kept
        # Ties at the cap boundary go by the training order too.
        store.append([Event("u", "b", 1, 20), Event("u", "a", 1, 20), Event("u", "c", 1, 20)])
        assert [e.item_id for e in store.latest("u", 100)] == ["i10", "i11", "a", "b", "c"]

    with backend.open(max_events_per_user=None) as unbounded:
        unbounded.append([Event("w", f"i{t}", 1, t) for t in range(1500)])
        assert unbounded.count("w") == 1500

    with pytest.raises(StoreURLError, match="max_events_per_user"):
        backend.open(max_events_per_user=0)


def test_recent_items_counts_distinct_users_since(store):
    events = [
        Event("u1", "old", 1, 10),
        Event("u2", "old", 1, 10),
        Event("u3", "old", 1, 10),
        Event("u1", "hot", 1, 100),
        Event("u2", "hot", 0, 101),  # dislikes are interactions too
        Event("u3", "hot", 1, 102),
        Event("u1", "hot", 1, 103),  # the same user again: still one user
        Event("u1", "warm", 1, 100),
        Event("u2", "warm", 1, 100),
        Event("u1", "b-tie", 1, 100),
        Event("u1", "a-tie", 1, 100),
    ]
    store.append(events)
    assert store.recent_items(100, 10) == [("hot", 3), ("warm", 2), ("a-tie", 1), ("b-tie", 1)]
    assert store.recent_items(100, 2) == [("hot", 3), ("warm", 2)]
    assert store.recent_items(0, 1) == [("hot", 3)]
    assert store.recent_items(0, 10)[:2] == [("hot", 3), ("old", 3)]  # tie → item_id
    assert store.recent_items(103, 10) == [("hot", 1)]
    assert store.recent_items(104, 10) == []
    assert store.recent_items(0, 0) == []


def test_events_since_pages_every_kept_event_in_time_order(backend):
    """The re-tune's export: events strictly after a time, oldest first, ties by user then the
    training order, in pages that resume from the last timestamp; the cap's drops are gone."""
    store = backend.open(max_events_per_user=3)
    events = [
        Event("u2", "b", 1, 100, 4.5),
        Event("u1", "z", 0, 100),
        Event("u1", "a", 1, 100, None),
        Event("u1", "a", 0, 100, 2.0),  # same item and time, another rating: its own event
        Event("u3", "c", 1, 50),
        Event("u1", "late", 1, 200),  # u1 has 4 events: the cap drops its oldest
    ]
    store.append(events)
    kept = [e for e in events if e != Event("u1", "a", 0, 100, 2.0)]
    expected = sorted(kept, key=lambda e: (e.timestamp, e.user_id, event_order_key(e)))
    assert store.events_since(0, 100) == expected
    assert store.events_since(50, 100) == [e for e in expected if e.timestamp > 50]
    assert store.events_since(200, 100) == []
    assert store.events_since(0, 0) == []
    assert store.events_since(0, 2) == expected[:2]  # the limit keeps the oldest
    store.close()


def test_seen_items_users_and_counts(store):
    assert (store.users_seen(), store.total_events(), store.count("u")) == (0, 0, 0)
    assert store.seen_items("u") == set()
    store.append([Event("u", "a", 1, 1), Event("u", "b", 0, 2), Event("u", "a", 1, 3)])
    store.append([Event("v", "c", 1, 1)])
    assert store.seen_items("u") == {"a", "b"}
    assert store.seen_items("v") == {"c"}
    assert (store.users_seen(), store.total_events(), store.count("u")) == (2, 4, 3)
    assert store.health()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (Event("", "i", 1, 1), "user_id"),
        (Event(None, "i", 1, 1), "user_id"),  # type: ignore[arg-type]
        (Event("u", "", 1, 1), "item_id"),
        (Event(7, "i", 1, 1), "user_id"),  # type: ignore[arg-type]
        (Event("u\x00x", "i", 1, 1), "NUL"),
        (Event("u", "i", 2, 1), "label"),
        (Event("u", "i", -1, 1), "label"),
        (Event("u", "i", 1, 1.5), "timestamp"),  # type: ignore[arg-type]
        (Event("u", "i", 1, "1"), "timestamp"),  # type: ignore[arg-type]
        (Event("u", "i", 1, 10**17), "timestamp"),  # milliseconds by mistake ×1000 more
        (Event("u", "i", 1, 1, math.nan), "rating"),
        (Event("u", "i", 1, 1, math.inf), "rating"),
        (Event("u", "i", 1, 1, "good"), "rating"),  # type: ignore[arg-type]
        ({"user_id": "u"}, "Event"),
    ],
)
def test_invalid_records_are_refused_and_nothing_is_written(store, bad, match):
    good = Event("ok", "i", 1, 1)
    with pytest.raises(InvalidEventError, match=match) as info:
        store.append([good, bad])
    assert isinstance(info.value, ReciclError) and isinstance(info.value, ValueError)
    assert "event #1" in str(info.value)
    assert store.count("ok") == 0  # the batch is all or nothing
    assert store.total_events() == 0
    assert store.users_seen() == 0


def test_lenient_types_are_normalized(store):
    """numpy-ish ints and bool/float labels from the API layer are stored as plain ints."""
    import numpy as np

    store.append([Event("u", "i", True, np.int64(5), np.float32(2.5)), Event("u", "j", 0.0, 6)])  # type: ignore[arg-type]
    assert store.latest("u", 5) == [Event("u", "i", 1, 5, 2.5), Event("u", "j", 0, 6)]


_WRITER = """
import os, sys
from recicl.serve.store import Event, open_store
store = open_store(sys.argv[1])
store.append([Event("u", "crash", 0, 500, 1.0), Event("w", "x", 1, 7)])
os._exit(0)  # a replica that dies without closing anything
"""

_READER = """
import json, sys
from dataclasses import asdict
from recicl.serve.store import open_store
with open_store(sys.argv[1]) as store:
    print(json.dumps({
        "latest": [asdict(e) for e in store.latest("u", 100)],
        "users": store.users_seen(),
        "total": store.total_events(),
        "recent": store.recent_items(0, 10),
    }))
"""


def test_events_survive_close_crash_and_reopen_in_new_process(backend):
    first = [Event("u", f"i{k}", k % 2, 100 + k, None if k % 3 else k / 2) for k in range(20)]
    with backend.open() as store:
        assert store.append(first) == 20
    _run_python(_WRITER, backend.url)
    if backend.server is not None:
        backend.server.crash_and_restart()  # kill -9, then start on the same AOF dir
    got = json.loads(_run_python(_READER, backend.url))
    expected = sorted([*first, Event("u", "crash", 0, 500, 1.0)], key=event_order_key)
    assert [Event(**e) for e in got["latest"]] == expected
    assert (got["users"], got["total"]) == (2, 22)
    assert got["recent"][:3] == [["crash", 1], ["i0", 1], ["i1", 1]]


_CONCURRENT_WRITER = """
import sys
from recicl.serve.store import Event, open_store
url, proc, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = open_store(url)   # several processes open a brand-new SQLite file at once
print("ready", flush=True)
sys.stdin.readline()      # wait for "go" so that all writers overlap
for k in range(n):
    user = "shared" if k % 5 == 0 else f"p{proc}"
    store.append([Event(user, f"p{proc}-{k}", k % 2, 1000 + k)])
store.close()
print("done", flush=True)
"""


def test_concurrent_processes_and_threads_lose_nothing(backend):
    procs_n, per_proc, threads_n, per_thread = 4, 250, 4, 100
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_WRITER, backend.url, str(p), str(per_proc)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(procs_n)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        store = backend.open()
        errors: list[BaseException] = []
        gate = threading.Barrier(threads_n + 1)

        def write(t: int) -> None:
            try:
                gate.wait(10)
                for k in range(per_thread):
                    # Threads share one store object; reads interleave with writes.
                    store.append([Event(f"t{t}", f"t{t}-{k}", 1, 2000 + k)])
                    if k % 10 == 0:
                        assert store.count(f"t{t}") == k + 1
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        gate.wait(10)
        for thread in threads:
            thread.join(60)
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    elapsed = time.monotonic() - started

    assert not errors, errors
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and out.strip() == "done", err
        assert "locked" not in err
    shared = procs_n * per_proc // 5
    for p in range(procs_n):
        assert store.count(f"p{p}") == per_proc - per_proc // 5
    for t in range(threads_n):
        assert store.count(f"t{t}") == per_thread
    assert store.count("shared") == shared
    assert store.total_events() == procs_n * per_proc + threads_n * per_thread
    assert store.users_seen() == procs_n + threads_n + 1
    latest = store.latest("shared", shared)
    assert latest == sorted(latest, key=event_order_key)
    store.close()
    assert elapsed < 25, f"{procs_n}x{per_proc} + {threads_n}x{per_thread} took {elapsed:.1f}s"


def test_closed_store_refuses_work(backend):
    store = backend.open()
    store.append([Event("u", "i", 1, 1)])
    assert store.health()
    store.close()
    assert not store.health()
    with pytest.raises(StoreUnavailableError, match="closed"):
        store.latest("u", 1)
    with backend.open() as again:  # the data is still there for others
        assert again.count("u") == 1


def test_bad_urls_fail_clearly(backend, tmp_path):
    with pytest.raises(StoreURLError, match=r"unknown interaction store URL 'mysql://h/db'.*"):
        open_store("mysql://h/db")
    with pytest.raises(StoreURLError, match="sqlite:////"):
        open_store("events.db")
    if backend.name == "sqlite":
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        with pytest.raises(StoreUnavailableError, match=re.escape(str(blocker))):
            open_store(f"sqlite:///{blocker}/events.db")
        not_a_db = tmp_path / "junk.db"
        not_a_db.write_bytes(b"definitely not sqlite" * 100)
        with pytest.raises(StoreUnavailableError, match=re.escape(str(not_a_db))):
            open_store(f"sqlite:///{not_a_db}")
        with pytest.raises(StoreURLError, match="names no file"):
            open_store("sqlite:///:memory:")
        with pytest.raises(StoreURLError, match="synchronous"):
            open_store(f"sqlite:///{tmp_path}/e.db?synchronous=sometimes")
        with pytest.raises(StoreURLError, match="unknown option"):
            open_store(f"sqlite:///{tmp_path}/e.db?journal=off")
        with open_store(f"sqlite:///{tmp_path}/e.db?synchronous=normal") as relaxed:
            assert relaxed.synchronous == "NORMAL" and relaxed.health()
    else:
        port = _free_port()
        url = f"redis://:hunter2@127.0.0.1:{port}/0"
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as info:
            open_store(url)
        message = str(info.value)
        assert f"127.0.0.1:{port}" in message and "start the server" in message
        assert "hunter2" not in message
        assert time.monotonic() - started < 10
        # A server that dies after opening: a clear error, and health() says False.
        store = backend.open()
        backend.server.kill()
        try:
            assert not store.health()
            with pytest.raises(StoreUnavailableError, match=re.escape(backend.url)):
                store.append([Event("u", "i", 1, 1)])
        finally:
            backend.server.start()
            store.close()


def test_sqlite_file_is_wal_with_the_order_index(backend):
    """The embedded file's settings are what the module docstring promises."""
    if backend.name != "sqlite":
        with backend.open() as store:  # Redis: the per-user key layout other tools may read
            store.append([Event("u", "i", 1, 1)])
            import redis

            with redis.Redis.from_url(backend.url) as client:
                assert client.zcard("recicl:events:u") == 1
                assert client.type("recicl:events:u") == b"zset"
        return
    import sqlite3

    with backend.open() as store:
        store.append([Event("u", "i", 1, 1)])
        assert store.synchronous == "FULL"
        path = store.path
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT item_id FROM events WHERE user_id = ? ORDER BY "
            "timestamp DESC, item_id DESC, rating IS NULL DESC, ifnull(rating, 0) DESC, "
            "label DESC LIMIT 5",
            ("u",),
        ).fetchall()
        text = " ".join(str(row[-1]) for row in plan)
        assert "events_user_order" in text and "TEMP B-TREE" not in text
    finally:
        db.close()
    assert os.path.exists(path)


def _append_in_child(store, k: int, parent_db) -> None:
    store.append([Event("forked", f"c{k}", 1, k)])
    if parent_db is not None:  # SQLite: the child must not have reused the parent's connection
        assert store._db() is not parent_db
    assert store.count("forked") >= 1


def test_store_object_is_usable_after_fork(backend):
    """A store opened before fork() (multiprocessing's default on Linux) works in the children.

    SQLite connections must not cross a fork; the store notices the new pid and reconnects.
    """
    import multiprocessing

    store = backend.open()
    store.append([Event("forked", "parent", 1, 0)])
    parent_db = store._db() if backend.name == "sqlite" else None
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_append_in_child, args=(store, k + 1, parent_db)) for k in range(3)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
    assert [child.exitcode for child in children] == [0, 0, 0]
    store.append([Event("forked", "parent-again", 1, 10)])  # the parent's connection still works
    assert [e.item_id for e in store.latest("forked", 10)] == [
        "parent",
        "c1",
        "c2",
        "c3",
        "parent-again",
    ]
    store.close()
