"""Redis backend of the interaction store: for clusters, where replicas run on several machines."""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from collections.abc import Iterable
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
    redact_url,
)
from recicl.serve.store.feedback import (
    JOINED,
    FeedbackCounts,
    FeedbackRow,
    FeedbackSettings,
    ServedScore,
    checked_scores,
    decode_state,
    encode_state,
    join_events,
    served_counts,
)
from recicl.serve.store.items import CatalogItem, checked_items

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

# The feedback log's upkeep, atomic: close the attribution windows that passed, then apply
# retention and the row cap. Members of the two sorted sets are ``seq NUL user NUL item``; the row
# lives in the hash ``<ARGV[4]>user NUL item`` as fields ``seq`` (served JSON) and ``seq:s`` (the
# state, starting with its status). KEYS = time, pending, counters; ARGV = closed before (serve
# time), retained from (serve time), max rows, hash key prefix. The row hashes are not in KEYS:
# like the append script, this targets one Redis server, not Redis Cluster.
_FEEDBACK_UPKEEP_LUA = """
local function locate(member)
  local nul = string.find(member, '\\0', 1, true)
  return string.sub(member, 1, nul - 1), ARGV[4] .. string.sub(member, nul + 1)
end
local function bump(kind, key, seq)
  local served = cjson.decode(redis.call('HGET', key, seq))
  redis.call('HINCRBY', KEYS[3], kind .. '\\0' .. served[4] .. '\\0' .. served[5], 1)
end
local function is_pending(key, seq)
  local state = redis.call('HGET', key, seq .. ':s')
  return state and string.sub(state, 1, 8) == 'pending|', state
end
local closed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for _, member in ipairs(closed) do
  local seq, key = locate(member)
  local pending, state = is_pending(key, seq)
  if pending then
    redis.call('HSET', key, seq .. ':s', 'expired' .. string.sub(state, 8))
    bump('expired', key, seq)
  end
  redis.call('ZREM', KEYS[2], member)
end
local function drop(members)
  for _, member in ipairs(members) do
    local seq, key = locate(member)
    if is_pending(key, seq) then
      bump('evicted', key, seq)
    end
    redis.call('HDEL', key, seq, seq .. ':s')
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
  end
end
drop(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2]))
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  drop(redis.call('ZRANGE', KEYS[1], 0, excess - 1))
end
return #closed
"""

# Catalog items added while serving, atomic per call so that revisions are seen in order (a
# reader at revision r never misses an item written at r' <= a revision it has read).
# KEYS = counter, rows hash (item_id → JSON [title, attributes]), revisions (sorted set).
# Put: ARGV = n × (item_id, JSON); returns the new revision.
_PUT_ITEMS_LUA = """
local revision = redis.call('INCR', KEYS[1])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[3], revision, ARGV[i])
end
return revision
"""
# Read: ARGV[1] = revision already read; returns {id, revision, JSON, ...}, oldest first.
_ITEMS_SINCE_LUA = """
local found = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf', 'WITHSCORES')
local out = {}
for i = 1, #found, 2 do
  out[#out + 1] = found[i]
  out[#out + 1] = found[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], found[i])
end
return out
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


def _split_log_entry(entry: bytes) -> tuple[str, bytes]:
    user, member = entry.split(b"\x00", 1)
    return user.decode(), member


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
        feedback: FeedbackSettings | None = None,
    ) -> None:
        self.url = redact_url(url)
        self.max_events_per_user = check_cap(max_events_per_user)
        self.feedback = feedback or FeedbackSettings()
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
        self._fb = {
            part: f"{prefix}:fb:{part}" for part in ("seq", "time", "pending", "counters", "ui:")
        }
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
        self._upkeep_script = self._client.register_script(_FEEDBACK_UPKEEP_LUA)
        self._items_keys = [f"{prefix}:items:{part}" for part in ("revision", "rows", "order")]
        self._put_items_script = self._client.register_script(_PUT_ITEMS_LUA)
        self._items_since_script = self._client.register_script(_ITEMS_SINCE_LUA)
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
        except self._redis.exceptions.OutOfMemoryError as e:  # maxmemory with noeviction:
            # full, nothing evicted, nothing of this write applied (MULTI/EXEC refuses it whole)
            raise StoreUnavailableError(
                f"Redis at {self.url} is full (maxmemory): the write was refused and nothing "
                "stored was evicted; raise maxmemory or lower serve.max_events_per_user"
            ) from e
        except self._redis.RedisError as e:
            raise StoreError(f"Redis at {self.url} refused the operation: {e}") from e

    def append(self, events: Event | Iterable[Event]) -> int:
        batch = checked_batch(events)
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

    def events_since(self, since_ts: int, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        # Log members are "user NUL <per-user member>", so Redis's order of equal timestamps is
        # user, then the training order: the order SQLiteStore's query gives.
        entries = self._call(
            lambda: self._client.zrangebyscore(
                self._log_key, f"({int(since_ts)}", "+inf", start=0, num=int(limit)
            )
        )
        return [_event(*_split_log_entry(entry)) for entry in entries]

    def seen_items(self, user_id: str) -> set[str]:
        members = self._call(self._client.zrange, self._key(user_id), 0, -1)
        return {m.split(b"\x00", 1)[0].decode() for m in members}

    # -- the feedback log -----------------------------------------------------------------------
    # Rows: hash <prefix>:fb:ui:<user NUL item> with fields "<seq>" (served JSON) and "<seq>:s"
    # (encode_state); sorted sets <prefix>:fb:time and :fb:pending (score served_at, member
    # "<seq> NUL user NUL item"); counters in the hash <prefix>:fb:counters ("kind NUL version NUL
    # arm"). A join WATCHes the user-item hashes it reads: any concurrent change to them (another
    # join, a new score, the upkeep script) makes it read again, so no score is joined twice.

    def _row_key(self, user_id: str, item_id: str) -> bytes:
        return self._fb["ui:"].encode() + user_id.encode() + b"\x00" + item_id.encode()

    @staticmethod
    def _member(seq: int, user_id: str, item_id: str) -> bytes:
        return b"%d\x00%s\x00%s" % (seq, user_id.encode(), item_id.encode())

    @staticmethod
    def _rows_of_hash(fields: dict[bytes, bytes]) -> list[FeedbackRow]:
        rows = []
        for name, value in fields.items():
            if name.endswith(b":s"):
                continue
            served = ServedScore(*json.loads(value))
            rows.append(decode_state(int(name), served, fields[name + b":s"].decode()))
        return rows

    def _upkeep(self, now: int) -> None:
        fb = self.feedback
        keys = [self._fb["time"], self._fb["pending"], self._fb["counters"]]
        args: list[int | str] = [
            now - fb.attribution_window_s,
            now - fb.retention_s,
            fb.max_rows,
            self._fb["ui:"],
        ]
        self._call(lambda: self._upkeep_script(keys=keys, args=args))

    def _add_counts(self, pipe: Any, counts: FeedbackCounts) -> None:
        for key, n in counts.items():
            if n:
                pipe.hincrby(self._fb["counters"], "\x00".join(key).encode(), n)

    def record_served(self, scores: Iterable[ServedScore], now: int | None = None) -> int:
        batch = checked_scores(scores)
        now = int(time.time()) if now is None else int(now)
        if batch:
            last = int(self._call(self._client.incrby, self._fb["seq"], len(batch)))
            pipe = self._client.pipeline(transaction=True)
            for seq, s in enumerate(batch, start=last - len(batch) + 1):
                served = json.dumps(
                    [s.request_id, s.user_id, s.item_id, s.version, s.arm, s.policy, s.score,
                     s.served_at]
                )  # fmt: skip
                state = encode_state(FeedbackRow(seq, s))
                pipe.hset(
                    self._row_key(s.user_id, s.item_id), mapping={seq: served, f"{seq}:s": state}
                )
                member = self._member(seq, s.user_id, s.item_id)
                pipe.zadd(self._fb["time"], {member: s.served_at})
                pipe.zadd(self._fb["pending"], {member: s.served_at})
            self._add_counts(pipe, served_counts(batch))
            self._call(pipe.execute)
        self._upkeep(now)
        return len(batch)

    def record_outcomes(self, events: Iterable[Event], now: int | None = None) -> FeedbackCounts:
        batch = checked_batch(events)
        now = int(time.time()) if now is None else int(now)
        if not batch:
            return Counter()
        self._upkeep(now)
        window = self.feedback.attribution_window_s
        keys = list(dict.fromkeys(self._row_key(e.user_id, e.item_id) for e in batch))

        def attempt(pipe: Any) -> FeedbackCounts:
            pipe.watch(*keys)  # from here reads run at once; EXEC fails if these keys changed

            def rows_of(user_id: str, item_id: str) -> list[FeedbackRow]:
                return self._rows_of_hash(pipe.hgetall(self._row_key(user_id, item_id)))

            changed, counts = join_events(batch, rows_of, now, window)
            pipe.multi()
            for row in changed:
                s = row.served
                pipe.hset(self._row_key(s.user_id, s.item_id), f"{row.seq}:s", encode_state(row))
                if row.status == JOINED:
                    pipe.zrem(self._fb["pending"], self._member(row.seq, s.user_id, s.item_id))
            self._add_counts(pipe, counts)
            pipe.execute()
            return counts

        def join() -> FeedbackCounts:
            with self._client.pipeline() as pipe:
                while True:
                    try:
                        return attempt(pipe)
                    except self._redis.WatchError:
                        continue  # another writer was first: read again and decide again

        counts: FeedbackCounts = self._call(join)
        return counts

    def feedback_rows(self, since: int, now: int | None = None) -> list[FeedbackRow]:
        self._upkeep(int(time.time()) if now is None else int(now))
        members: list[bytes] = []
        while True:  # paged, as recent_items
            page = self._call(
                lambda o=len(members): self._client.zrangebyscore(
                    self._fb["time"], int(since), "+inf", start=o, num=self._PAGE
                )
            )
            members += page
            if len(page) < self._PAGE:
                break
        by_key: dict[bytes, list[bytes]] = {}
        for member in members:
            seq, rest = member.split(b"\x00", 1)
            by_key.setdefault(self._fb["ui:"].encode() + rest, []).append(seq)
        pipe = self._client.pipeline(transaction=False)
        for key, seqs in by_key.items():
            pipe.hmget(key, [f for seq in seqs for f in (seq, seq + b":s")])
        rows = []
        for seqs, values in zip(by_key.values(), self._call(pipe.execute), strict=True):
            for k, seq in enumerate(seqs):
                served, state = values[2 * k], values[2 * k + 1]
                if served is not None and state is not None:  # trimmed meanwhile
                    row = ServedScore(*json.loads(served))
                    rows.append(decode_state(int(seq), row, state.decode()))
        return sorted(rows, key=lambda r: (r.served.served_at, r.seq))

    def feedback_counters(self, now: int | None = None) -> FeedbackCounts:
        self._upkeep(int(time.time()) if now is None else int(now))
        found = self._call(self._client.hgetall, self._fb["counters"])
        counts: FeedbackCounts = Counter()
        for field, n in found.items():
            kind, version, arm = field.decode().split("\x00")
            counts[(kind, version, arm)] = int(n)
        return counts

    # -- catalog items added while serving -----------------------------------------------------

    def put_items(self, items: Iterable[CatalogItem]) -> int:
        batch = checked_items(items)
        if not batch:  # nothing to write: the revision as it stands
            return int(self._call(self._client.get, self._items_keys[0]) or 0)
        args: list[str] = []
        for item in batch:
            args += [item.item_id, json.dumps([item.title, item.attributes_json()])]
        keys = self._items_keys
        return int(self._call(lambda: self._put_items_script(keys=keys, args=args)))

    def items_since(self, revision: int) -> tuple[int, list[CatalogItem]]:
        keys = self._items_keys
        found = self._call(lambda: self._items_since_script(keys=keys, args=[int(revision)]))
        reached, items = int(revision), []
        for k in range(0, len(found), 3):
            title, attributes = json.loads(found[k + 2])
            items.append(CatalogItem.from_stored(found[k].decode(), title, attributes))
            reached = max(reached, int(float(found[k + 1])))
        return reached, items

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
