"""``serve.access`` enforced: the event-write credential, per-client rates, event quotas.

Why these three (docs/threat-model.md): anyone who reaches ``POST /v1/events`` can change a
user's next prompt and the live metrics that promotion and the monitor decide on (the write
credential); one client can take every replica's capacity (the client rate); forged events for
one user push the user's real history out of the store, whose per-user cap drops the oldest, and
new user ids grow the store without bound (the per-user and total event quotas).

Counting is the ``limits`` package's sliding-window counter: O(1) memory per key, no burst of
twice the limit at a window's edge. With a Redis interaction store the counters live in that
Redis (prefixed keys that expire), so every ingress replica shares them; otherwise in this
replica's memory. A counter backend that fails lets the request through (logged): the store it
shares with is then down too, and writes get their 503 from the store itself.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import Request

from recicl.config import AccessConfig
from recicl.serve.api.errors import ApiError

if TYPE_CHECKING:
    from limits import RateLimitItem

log = logging.getLogger("recicl.serve")

#: Routes never rate limited: orchestrators' probes must see a busy server as alive.
UNLIMITED_PATHS = frozenset({"/healthz"})


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None without one)."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def token_accepted(token: str, configured: str) -> bool:
    """Whether ``token`` is one of the ``,``-separated tokens of ``configured``: during a
    rotation both the old and the new token are set, callers move to the new one, then the old
    one is removed. Every candidate is compared in constant time, so the answer's timing does
    not say which one (or how much of one) matched."""
    candidates = [t.strip() for t in configured.split(",") if t.strip()]
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(token.encode(), candidate.encode())
    return matched


def counter_storage_uri(store_url: str) -> str:
    """Where the counters live: the store's Redis (shared by every ingress replica) or memory."""
    return store_url if store_url.startswith(("redis://", "rediss://")) else "memory://"


class AccessGuard:
    """The checks of ``serve.access`` for one ingress (see the module docstring)."""

    def __init__(self, access: AccessConfig, write_token: str | None, storage_uri: str) -> None:
        from limits import parse_many
        from limits.storage import storage_from_string
        from limits.strategies import SlidingWindowCounterRateLimiter

        self.access, self.write_token = access, write_token
        options: dict[str, Any] = {}
        if storage_uri != "memory://":
            options["key_prefix"] = "recicl:limits"  # beside the store's own keys
        self.storage = storage_from_string(storage_uri, **options)
        self.shared = storage_uri != "memory://"
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.client_rates = parse_many(access.client_rate) if access.client_rate else []
        self.user_quotas = parse_many(access.user_event_quota) if access.user_event_quota else []
        self.total_quotas = parse_many(access.total_event_quota) if access.total_event_quota else []

    # -- the write credential ------------------------------------------------------------------

    def check_write(self, authorization: str | None) -> None:
        """401 without ``Authorization: Bearer``, 403 with another token; nothing to check when
        no write token is configured (writes open: the local default)."""
        if not self.write_token:
            return
        token = bearer_token(authorization)
        if token is None:
            raise ApiError(
                401,
                "unauthorized",
                "Authorization: event writes need 'Authorization: Bearer <write token>' "
                "(serve.access.write_token / RECICL_WRITE_TOKEN of the server)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not token_accepted(token, self.write_token):
            raise ApiError(403, "forbidden", "Authorization: wrong write token")

    # -- rates and quotas ----------------------------------------------------------------------

    def client_of(self, request: Request) -> str:
        """The client a rate is counted for: the gateway's header, else the TCP peer. Of a list
        (X-Forwarded-For) the last address: the one the gateway itself added; those before it
        come from the client and could be anything. Capped in length: it is a counter key."""
        header = self.access.client_header
        if header:
            value = request.headers.get(header, "").split(",")[-1].strip()
            if value:
                return value[:128]
        return request.client.host if request.client else "unknown"

    async def limit_client(self, request: Request) -> None:
        """429 when the client is over ``client_rate`` (a FastAPI dependency of every route)."""
        path = request.url.path.rstrip("/")
        if not self.client_rates or any(path.endswith(p) for p in UNLIMITED_PATHS):
            return  # (ends with: behind serve.route_prefix the path carries the prefix)
        client = self.client_of(request)
        keys = ("client", client)
        await self._check(self.client_rates, keys, 1, f"client {client!r}", None)
        await self._run(self._hit_all, self.client_rates, keys, 1)

    async def take_events(self, user_ids: Sequence[str]) -> None:
        """Count a batch of events against the per-user and total quotas, all or nothing: 429
        naming the first user (or the total) over its quota, and then nothing is counted."""
        if not self.user_quotas and not self.total_quotas:
            return
        per_user = Counter(user_ids)
        wanted: list[tuple[list[RateLimitItem], tuple[str, ...], int, str, str | None]] = [
            (self.user_quotas, ("user", user), n, f"user_id {user!r}", "user_id")
            for user, n in per_user.items()
        ]
        wanted.append((self.total_quotas, ("events",), len(user_ids), "all clients", None))
        for items, keys, cost, who, field in wanted:  # check all first: a refused batch is
            await self._check(items, keys, cost, who, field)  # not counted
        for items, keys, cost, _, _ in wanted:
            await self._run(self._hit_all, items, keys, cost)

    async def _check(
        self,
        items: list[RateLimitItem],
        keys: tuple[str, ...],
        cost: int,
        who: str,
        field: str | None,
    ) -> None:
        too_many = next((item for item in items if cost > item.amount), None)
        if too_many is not None:  # never allowed, however long the client waits
            raise ApiError(
                422,
                "validation_error",
                f"body: {cost} events for {who} in one request; the quota is "
                f"{too_many.amount} per {_window(too_many)}: send at most that many at once",
                fields=[{"field": "body", "message": f"over the quota {too_many}"}],
            )
        over = await self._run(self._first_over, items, keys, cost)
        if over is None:
            return
        item, retry_after = over
        extra = {"field": field} if field else {}
        what = "events" if keys[0] in ("user", "events") else "requests"
        raise ApiError(
            429,
            "too_many_requests",
            f"{who}: over the limit of {item.amount} {what} per {_window(item)}"
            f"{f' (this request: {cost})' if cost > 1 else ''}; retry after {retry_after} s",
            headers={"Retry-After": str(retry_after)},
            limit=str(item),
            **extra,
        )

    def _first_over(
        self, items: list[RateLimitItem], keys: tuple[str, ...], cost: int
    ) -> tuple[RateLimitItem, int] | None:
        for item in items:
            if not self.limiter.test(item, *keys, cost=cost):
                reset = self.limiter.get_window_stats(item, *keys).reset_time
                return item, max(1, math.ceil(reset - time.time()))
        return None

    def _hit_all(self, items: list[RateLimitItem], keys: tuple[str, ...], cost: int) -> None:
        for item in items:
            self.limiter.hit(item, *keys, cost=cost)

    async def _run(self, call: Any, *args: Any) -> Any:
        """``call`` off the event loop when the counters are in Redis (network IO); a counter
        backend that fails lets the request through (module docstring)."""
        try:
            if self.shared:
                return await asyncio.to_thread(call, *args)
            return call(*args)
        except Exception as error:
            log.warning("rate limit not counted: %s: %s", type(error).__name__, error)
            return None


def _window(item: RateLimitItem) -> str:
    """``10 per 1 hour`` → ``hour``; ``10 per 2 minute`` → ``2 minutes``."""
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"
