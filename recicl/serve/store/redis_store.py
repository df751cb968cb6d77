"""Redis backend of the interaction store: for clusters, where replicas run on several machines."""

from __future__ import annotations

import struct
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
        self.url = redact_url(url)
        self.max_events_per_user = check_cap(max_events_per_user)
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
