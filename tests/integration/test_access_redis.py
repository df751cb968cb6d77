"""``serve.access`` and the store against a real redis-server (issue #26).

* The rates and quotas of two ingress replicas (two :class:`AccessGuard` on the same Redis URL,
  as :class:`~recicl.serve.ingress.IngressBackend` builds them) are one count: a user's quota is
  not doubled by a second replica.
* A Redis at its ``maxmemory`` with ``noeviction`` (what infra/k8s/redis.yaml runs) refuses a
  write as "store unavailable" (the API's 503 with Retry-After), applies none of it, and keeps
  every event stored before.
"""

from __future__ import annotations

import asyncio

import pytest

from recicl.config import build_config
from recicl.serve.api.access import AccessGuard, counter_storage_uri
from recicl.serve.api.errors import ApiError
from recicl.serve.store import Event, StoreUnavailableError, open_store

pytestmark = pytest.mark.integration


def test_two_ingress_replicas_share_one_count_in_redis(redis_server) -> None:
    redis_server.flush()
    access = build_config({"serve": {"access": {"user_event_quota": "5/hour"}}}).serve.access
    uri = counter_storage_uri(redis_server.url)
    assert uri == redis_server.url
    first, second = AccessGuard(access, None, uri), AccessGuard(access, None, uri)
    asyncio.run(first.take_events(["u1"] * 3))
    with pytest.raises(ApiError) as refused:  # 3 + 3 > 5, although the second saw only 3
        asyncio.run(second.take_events(["u1"] * 3))
    assert refused.value.status == 429 and refused.value.extra["field"] == "user_id"
    asyncio.run(second.take_events(["u1"] * 2))  # the remaining 2 of the shared quota
    with pytest.raises(ApiError):
        asyncio.run(first.take_events(["u1"]))
    # the counters sit under their own prefix, beside (not among) the store's keys
    import redis

    keys = redis.Redis.from_url(redis_server.url).keys("*")
    assert keys and all(k.startswith(b"recicl:limits") for k in keys), keys


def test_a_full_redis_refuses_the_write_whole_and_keeps_what_it_stored(redis_server) -> None:
    import redis

    redis_server.flush()
    admin = redis.Redis.from_url(redis_server.url)
    store = open_store(redis_server.url, max_events_per_user=None)
    try:
        stored = [Event("u0", f"i{k}", 1, 1_700_000_000 + k) for k in range(20)]
        assert store.append(stored) == 20
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", str(used + 256 * 1024))
        big = [Event(f"user{k}", "i" + "x" * 200, 1, 1_700_000_000 + k) for k in range(5000)]
        batches = [big[start : start + 100] for start in range(0, len(big), 100)]
        accepted = 0
        with pytest.raises(StoreUnavailableError, match="full"):
            for batch in batches:
                store.append(batch)
                accepted += 1
        assert 1 <= accepted < len(batches) - 1  # refused on the way, not at once or never
        admin.config_set("maxmemory", "0")  # room again: what is stored can be read back
        assert [e.item_id for e in store.latest("u0", 100)] == [e.item_id for e in stored]
        # the refused batch left no partial trace; the accepted ones are all there
        assert all(store.count(e.user_id) == 0 for e in batches[accepted])
        assert all(store.count(e.user_id) == 1 for e in batches[accepted - 1])
    finally:
        admin.config_set("maxmemory", "0")
        store.close()
