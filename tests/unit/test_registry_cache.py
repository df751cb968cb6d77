"""The registry off the request path (issue #26): :mod:`recicl.serve.registry_cache` and its use.

A loader under the test's control (answers, fails, hangs; counts its calls) drives the cache: a
held answer is served while it is revalidated, a hung registry costs a caller at most the timeout
and only on a key's first lookup, a failure keeps the last known answer, unknown references are
held for the shorter TTL, and a key has one call in flight whatever happens. Then the same with
a real ``MlflowClient`` on a SQLite registry that goes away, the ingress's own backend over it,
and the routes (``/healthz``, ``/v1/models``, a request naming a model) with the registry down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from recicl.serve.api.backend import ModelRef, RegistryListing
from recicl.serve.api.routes import create_api
from recicl.serve.registry_cache import (
    REGISTRY_RETRY_AFTER_SECONDS,
    RegistryCache,
    RegistryStatus,
    RegistryUnavailableError,
    read_version,
    read_versions,
)
from tests.unit.test_http_api import ADMIN_TOKEN, NAME, FakeBackend, _config

T = TypeVar("T")
TTL, NEGATIVE_TTL, TIMEOUT = 10.0, 2.0, 0.2
#: What MLflow's error says (its URL, a host): never for clients.
SECRET_CAUSE = "API request to http://mlflow.internal:5000/api/2.0/... failed (ConnectionError)"


class Clock:
    """Monotonic seconds the test steps (TTLs), apart from the real time timeouts use."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """A registry read under the test's control: answers ``answer``, raises ``error``, or
    hangs while ``gate`` is closed (for at most 10 s, so no test can hang)."""

    def __init__(self, answer: Any = "1") -> None:
        self.answer, self.error = answer, None
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self) -> Any:
        self.calls += 1
        self.gate.wait(10)
        if self.error is not None:
            raise self.error
        return self.answer


def _run(make: Callable[[RegistryCache, Clock], Awaitable[T]], **options: Any) -> T:
    """Run ``make(cache, clock)`` on a fresh loop, closing the cache whatever happens."""
    clock = Clock()
    cache = RegistryCache(
        TTL, timeout_s=TIMEOUT, negative_ttl_s=NEGATIVE_TTL, clock=clock, **options
    )

    async def main() -> T:
        try:
            return await make(cache, clock)
        finally:
            cache.close()

    return asyncio.run(main())


# -- the cache, with a loader under control --------------------------------------------------------


def test_a_held_answer_is_served_and_revalidated_in_the_background() -> None:
    registry = Loader("1")

    async def scenario(cache: RegistryCache, clock: Clock) -> list[Any]:
        seen = [await cache.get("k", registry), await cache.get("k", registry)]
        calls_fresh = registry.calls
        clock.now += TTL  # stale: served as held, one refresh starts
        registry.answer = "2"
        seen.append(await cache.get("k", registry))
        await cache.drain()
        seen.append(await cache.get("k", registry))
        return [*seen, calls_fresh, registry.calls, cache.age("k")]

    assert _run(scenario) == ["1", "1", "1", "2", 1, 2, 0.0]


def test_a_hung_registry_costs_a_caller_the_timeout_once_and_the_held_answer_is_served() -> None:
    registry = Loader("1")

    async def scenario(cache: RegistryCache, clock: Clock) -> dict[str, Any]:
        await cache.get("k", registry)
        registry.gate.clear()  # MLflow stops answering
        registry.answer = "2"
        clock.now += TTL + 1
        started = time.perf_counter()
        stale = await cache.get("k", registry)  # no wait at all: the refresh runs behind
        stale_wait = time.perf_counter() - started
        await cache.drain()  # the refresh gives up after TIMEOUT
        during = cache.status()
        started = time.perf_counter()
        with pytest.raises(RegistryUnavailableError):
            await cache.get("never-asked", registry)  # a first lookup: waits, bounded
        first_wait = time.perf_counter() - started
        clock.now += 1
        registry.gate.set()  # the late answer arrives after its timeout: taken all the same
        for _ in range(200):
            if await cache.get("k", registry) == "2":
                break
            await asyncio.sleep(0.01)
        return {
            "stale": stale,
            "stale_wait": stale_wait,
            "during": during,
            "first_wait": first_wait,
            "late": await cache.get("k", registry),
            "after": cache.status().state,
        }

    got = _run(scenario)
    assert got["stale"] == "1" and got["stale_wait"] < TIMEOUT / 2
    assert got["during"].state == "unreachable"
    assert got["during"].last_answer_s == pytest.approx(TTL + 1)
    assert TIMEOUT * 0.9 <= got["first_wait"] < TIMEOUT + 1.0
    assert got["late"] == "2" and got["after"] == "ok"


def test_one_call_in_flight_per_key_even_past_its_timeout() -> None:
    """Concurrent first lookups share one call; a retry while that call still hangs waits for
    it again instead of starting another thread (hung calls cannot pile up)."""
    registry = Loader("7")
    registry.gate.clear()

    async def scenario(cache: RegistryCache, clock: Clock) -> tuple[Any, ...]:
        results = await asyncio.gather(
            *(cache.get("k", registry) for _ in range(10)), return_exceptions=True
        )
        for _ in range(3):  # retries are due, the first call is still stuck
            clock.now += NEGATIVE_TTL
            with pytest.raises(RegistryUnavailableError):
                await cache.get("k", registry)  # refused at once now: it failed before
            await cache.drain()
        calls_while_hung = registry.calls
        registry.gate.set()
        for _ in range(200):
            if cache.age("k") is not None:
                break
            await asyncio.sleep(0.01)
        return results, calls_while_hung, await cache.get("k", registry), registry.calls

    results, calls_while_hung, value, calls = _run(scenario)
    assert all(isinstance(r, RegistryUnavailableError) for r in results)
    assert calls_while_hung == 1 and (value, calls) == ("7", 1)


def test_a_failing_registry_keeps_the_last_answer_and_records_when_it_last_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Loader("3")

    async def scenario(cache: RegistryCache, clock: Clock) -> tuple[Any, ...]:
        before = cache.status()
        await cache.get("k", registry)
        registry.error = ConnectionError(SECRET_CAUSE)
        clock.now += TTL + 5
        held = await cache.get("k", registry)
        await cache.drain()
        calls = registry.calls
        again = await cache.get("k", registry)  # failed just now: next try after a TTL
        return before, held, again, cache.status(), calls, registry.calls

    with caplog.at_level(logging.WARNING, logger="recicl.serve"):
        before, held, again, status, calls, calls_after = _run(scenario)
    assert before == RegistryStatus("unknown", None)
    assert held == again == "3" and calls == calls_after == 2
    assert status == RegistryStatus("unreachable", TTL + 5)
    assert status.to_json() == {"registry": "unreachable", "registry_last_answer_s": TTL + 5}
    assert "ConnectionError" in caplog.text and "serving its answer of 15 s ago" in caplog.text


def test_unknown_references_are_held_for_the_shorter_ttl() -> None:
    registry = Loader(None)  # no such alias
    tag = Loader(None)  # no traffic tag: the usual case, held a whole TTL

    async def scenario(cache: RegistryCache, clock: Clock) -> list[int]:
        for _ in range(5):
            assert await cache.get("alias:nope", registry) is None
            assert await cache.get("tag", tag, none_ttl_s=TTL) is None
        counts = [registry.calls, tag.calls]
        clock.now += NEGATIVE_TTL
        await cache.get("alias:nope", registry)
        await cache.get("tag", tag, none_ttl_s=TTL)
        await cache.drain()
        return [*counts, registry.calls, tag.calls, int(cache.status().state == "ok")]

    assert _run(scenario) == [1, 1, 2, 1, 1]


def test_the_registry_answering_again_recovers_a_key_it_never_answered() -> None:
    registry = Loader("5")
    registry.error = ConnectionError(SECRET_CAUSE)

    async def scenario(cache: RegistryCache, clock: Clock) -> tuple[Any, ...]:
        refusals = 0
        for _ in range(3):  # the first fails after the call; the others at once, no call
            try:
                await cache.get("k", registry)
            except RegistryUnavailableError as error:
                refusals += 1
                assert "ConnectionError" in str(error)  # for the log, never the client
        calls_refused = registry.calls
        registry.error = None  # MLflow is back
        clock.now += NEGATIVE_TTL
        with pytest.raises(RegistryUnavailableError):
            await cache.get("k", registry)  # refused at once; the retry starts behind it
        await cache.drain()
        return refusals, calls_refused, await cache.get("k", registry), cache.status().state

    assert _run(scenario) == (3, 1, "5", "ok")


def test_expire_revalidates_but_keeps_serving_what_is_held() -> None:
    registry = Loader("1")

    async def scenario(cache: RegistryCache, clock: Clock) -> list[Any]:
        await cache.get("k", registry)
        cache.put("tag", "set-by-admin", none_ttl_s=TTL)
        registry.answer, registry.error = "2", ConnectionError(SECRET_CAUSE)
        cache.expire()
        held = await cache.get("k", registry)
        await cache.drain()
        after_failure = await cache.get("k", registry)
        registry.error = None
        cache.expire()
        await cache.get("k", registry)
        await cache.drain()
        return [held, after_failure, await cache.get("k", registry), registry.calls]

    assert _run(scenario) == ["1", "1", "2", 3]


def test_a_value_written_meanwhile_wins_over_a_read_that_began_before_it() -> None:
    registry = Loader(None)  # the tag as it was before the admin's write

    async def scenario(cache: RegistryCache, clock: Clock) -> list[Any]:
        await cache.get("tag", registry, none_ttl_s=TTL)
        registry.gate.clear()
        clock.now += TTL
        await cache.get("tag", registry, none_ttl_s=TTL)  # a re-read starts, then hangs
        while registry.calls < 2:  # it has asked the registry (a read begun after the write
            await asyncio.sleep(0.01)  # would find the written value there)
        cache.put("tag", "written", none_ttl_s=TTL)  # PUT /admin/traffic wrote it meanwhile
        registry.gate.set()  # the re-read returns the value from before the write
        await cache.drain()
        await asyncio.sleep(0.05)  # let the late answer's callback run
        return [await cache.get("tag", registry, none_ttl_s=TTL), registry.calls]

    assert _run(scenario) == ["written", 2]


# -- a real MlflowClient on a registry that goes away ----------------------------------------------


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite registry: ``recicl`` version 1 behind ``champion`` and ``challenger``."""
    from recicl.registry import client

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlc = client(uri)
    mlc.create_registered_model(NAME)
    mlc.create_model_version(NAME, (root / "version").as_uri())
    for alias in ("champion", "challenger"):
        mlc.set_registered_model_alias(NAME, alias, "1")
    return uri


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once closed


@pytest.fixture()
def mlflow_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """An HTTP URI whose server accepts connections and never answers (a hung MLflow)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_real_reads_tell_no_such_reference_from_no_answer(
    registry_uri: str, mlflow_fails_fast: None
) -> None:
    assert read_version(registry_uri, NAME, alias="champion") == "1"
    assert read_version(registry_uri, NAME, version="1") == "1"
    assert read_version(registry_uri, NAME, alias="nope") is None
    assert read_version(registry_uri, NAME, version="9") is None
    assert read_version(registry_uri, "unregistered", alias="champion") is None
    [row] = read_versions(registry_uri, NAME)
    assert (row["version"], row["aliases"]) == ("1", ["challenger", "champion"])
    assert read_versions(registry_uri, "unregistered") == []
    down = f"http://127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    with pytest.raises(Exception, match=r"Connection|connect") as raised:
        read_version(down, NAME, alias="nope")  # before: None, i.e. a 404 for an outage
    assert time.perf_counter() - started < 5
    assert not isinstance(raised.value, RegistryUnavailableError)


def test_a_hung_real_registry_is_bounded_by_the_timeout(
    silent_server: str, mlflow_fails_fast: None
) -> None:
    async def scenario(cache: RegistryCache, clock: Clock) -> float:
        started = time.perf_counter()
        with pytest.raises(RegistryUnavailableError):
            await cache.get("alias:x", lambda: read_version(silent_server, NAME, alias="x"))
        return time.perf_counter() - started

    waited = _run(scenario)  # MLflow's own HTTP timeout (2 s) ends the thread later
    assert TIMEOUT * 0.9 <= waited < 1.5


def test_the_ingress_serves_the_last_known_versions_while_mlflow_is_down(
    registry_uri: str, mlflow_fails_fast: None, tmp_path: Path
) -> None:
    """The Serve ingress's own backend (no Serve needed to construct it) over the real registry,
    which then goes away: what it knew is served, what it never knew is a RegistryUnavailable
    (503), not a None (404), and the status says when MLflow last answered."""
    from recicl.config import build_config
    from recicl.serve.ingress import IngressBackend
    from recicl.serve.settings import resolve_settings

    cfg = build_config(
        {
            "workdir": str(tmp_path),
            "mlflow": {"tracking_uri": registry_uri},
            "serve": {"alias_poll_seconds": 30},
        }
    )
    backend = IngressBackend(None, resolve_settings(cfg))

    async def run() -> dict[str, Any]:
        known = await backend.lookup_version(ModelRef(NAME, alias="challenger"))
        unknown = await backend.lookup_version(ModelRef(NAME, version="9"))
        listing = await backend.registry_versions()
        traffic = await backend.traffic_override()  # no tag: serve.traffic applies
        up = (await backend.registry_status()).state
        down = f"http://127.0.0.1:{_closed_port()}"
        backend.settings = dataclasses.replace(backend.settings, tracking_uri=down)
        backend._registry.expire()  # as POST /admin/reload does: revalidate everything
        held = await backend.lookup_version(ModelRef(NAME, alias="challenger"))
        held_listing = await backend.registry_versions()
        await backend._registry.drain()
        with pytest.raises(RegistryUnavailableError):
            await backend.lookup_version(ModelRef(NAME, version="1"))  # never asked before
        still = await backend.lookup_version(ModelRef(NAME, alias="challenger"))
        status = await backend.registry_status()
        backend._registry.close()
        return {
            "answers": (known, unknown, [r["version"] for r in listing.versions], traffic),
            "up": up,
            "held": (held, [r["version"] for r in held_listing.versions], still),
            "status": status.state,
        }

    try:
        got = asyncio.run(run())
    finally:
        backend.store.close()
    assert got["answers"] == ("1", None, ["1"], None)
    assert got["up"] == "ok"
    assert got["held"] == ("1", ["1"], "1")
    assert got["status"] == "unreachable"


# -- the routes with the registry down ---------------------------------------------------------


class RegistryDownBackend(FakeBackend):
    """MLflow unreachable: the listing of two minutes ago is held (``listing``, None: never
    answered), and references it never answered are unavailable."""

    def __init__(self, listing: RegistryListing | None = None) -> None:
        super().__init__()
        self.listing = listing

    async def lookup_version(self, ref: ModelRef) -> str | None:
        raise RegistryUnavailableError(ref.text, SECRET_CAUSE)

    async def registry_versions(self) -> RegistryListing:
        if self.listing is None:
            raise RegistryUnavailableError("versions", SECRET_CAUSE)
        return self.listing

    async def registry_status(self) -> RegistryStatus:
        return RegistryStatus("unreachable", 120.0)


def _http(backend: FakeBackend) -> TestClient:
    return TestClient(
        create_api(backend, _config(), admin_token=ADMIN_TOKEN), raise_server_exceptions=False
    )


def test_healthz_reports_the_registry_and_stays_200_while_it_is_down() -> None:
    with _http(FakeBackend()) as http:
        up = http.get("/healthz")
    with _http(RegistryDownBackend()) as http:
        down = http.get("/healthz")
    assert up.status_code == 200 and up.json()["registry"] == "ok"
    assert down.status_code == 200, down.text  # reported, not fatal: serving goes on
    body = down.json()
    assert body["status"] == "ok" and body["model_version"] == "1"
    assert (body["registry"], body["registry_last_answer_s"]) == ("unreachable", 120.0)
    assert "mlflow.internal" not in down.text


def test_models_shows_the_held_listing_with_its_age_while_the_registry_is_down() -> None:
    held = RegistryListing([{"version": "1", "aliases": ["champion"]}], 120.0)
    with _http(RegistryDownBackend(held)) as http:
        stale = http.get("/v1/models")
    with _http(RegistryDownBackend(None)) as http:
        never = http.get("/v1/models")
    assert stale.status_code == 200, stale.text
    got = stale.json()
    assert got["versions"] == held.versions and got["versions_age_s"] == 120.0
    assert (got["registry"], got["registry_last_answer_s"]) == ("unreachable", 120.0)
    assert got["model_version"] == "1"  # the served part comes from the replica, as always
    assert never.status_code == 200, never.text
    assert never.json()["versions"] is None and never.json()["versions_age_s"] is None
    for reply in (stale, never):
        assert "mlflow.internal" not in reply.text and "error" not in reply.json()


def test_a_model_the_down_registry_never_resolved_is_a_503_with_retry_after() -> None:
    with _http(RegistryDownBackend()) as http:
        named = http.post(
            "/v1/score", json={"user_id": "u", "candidates": ["i0"], "model": f"{NAME}@challenger"}
        )
        served = http.post("/v1/score", json={"user_id": "u", "candidates": ["i0"]})
    assert named.status_code == 503, named.text
    assert named.headers["Retry-After"] == str(REGISTRY_RETRY_AFTER_SECONDS)
    assert named.json()["error"] == "registry_unavailable"
    assert named.json()["detail"].startswith("model: ")
    for internal in ("mlflow.internal", "5000", "ConnectionError", "api/2.0"):
        assert internal not in named.text
    assert served.status_code == 200, served.text  # the served alias needs no registry
