"""Registry lookups of replicas: a model replica's alias poll stays bounded by
serve.registry_timeout_seconds, while a replica that is *starting* (model replica or ingress)
waits longer for its first answers, since Serve sends it no traffic until its start returns
(recicl.serve.registry_cache.START_LOOKUP_TIMEOUT_SECONDS)."""

from __future__ import annotations

import asyncio
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_http_api import NAME


def test_a_replicas_alias_poll_is_bounded_and_keeps_one_lookup_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung MLflow used to hold the replica's reload lock (every later poll and
    /admin/reload) for as long as its connection hung; now each refresh waits at most
    serve.registry_timeout_seconds, the version served stays, and a poll while the lookup
    still hangs joins it instead of starting another thread. Once MLflow answers, the next
    refresh takes its answer."""
    from recicl.config import build_config
    from recicl.serve import model_deployment
    from recicl.serve.settings import resolve_settings

    release = threading.Event()
    calls: list[str] = []

    def hung_then_answering(uri: str, name: str, alias: str) -> str:
        calls.append(alias)
        release.wait(10)
        return "7"

    monkeypatch.setattr(model_deployment, "resolve_version", hung_then_answering)
    cfg = build_config(
        {
            "workdir": str(tmp_path),
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "serve": {"registry_timeout_seconds": 0.3},
        }
    )
    replica = model_deployment.ModelServer(resolve_settings(cfg))
    loaded: list[str] = []

    def load(version: str) -> Any:  # what a replica loads, reduced to what refresh reads
        loaded.append(version)
        return types.SimpleNamespace(version=version, label=f"{NAME}/{version}")

    monkeypatch.setattr(replica, "_load", load)

    async def scenario() -> dict[str, Any]:
        waits = []
        for _ in range(2):
            started = time.perf_counter()
            with pytest.raises(asyncio.TimeoutError):
                await replica.refresh()
            waits.append(time.perf_counter() - started)
        async with replica._reload_lock:  # free again: a reload is not stuck behind MLflow
            pass
        release.set()
        answered = await replica.refresh()
        return {"waits": waits, "answered": answered}

    try:
        got = asyncio.run(scenario())
    finally:
        release.set()
        replica.store.close()
    assert all(0.25 <= wait < 1.0 for wait in got["waits"]), got["waits"]
    assert calls == ["champion"]  # the second poll joined the hung lookup
    assert got["answered"]["model_version"] == "7" and loaded == ["7"]


def test_a_starting_replica_waits_for_a_slow_registry_instead_of_answering_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scale-up on a busy machine (CI) answered a request 503 model_unavailable: the new
    replica's first alias lookup (a fresh process's first MLflow call) took longer than
    serve.registry_timeout_seconds, so it started with nothing loaded and Serve sent it traffic.
    Serve routes nothing to a replica until its first reconfigure returns, so that lookup may
    take longer (START_LOOKUP_TIMEOUT_SECONDS); later polls stay bounded by the setting."""
    from recicl.config import build_config
    from recicl.serve import model_deployment
    from recicl.serve.settings import resolve_settings

    slow_s, timeout_s = 1.0, 0.2

    def slow_lookup(uri: str, name: str, alias: str) -> str:
        time.sleep(slow_s)
        return "7"

    monkeypatch.setattr(model_deployment, "resolve_version", slow_lookup)
    cfg = build_config(
        {
            "workdir": str(tmp_path),
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "serve": {"registry_timeout_seconds": timeout_s},
        }
    )
    replica = model_deployment.ModelServer(resolve_settings(cfg))
    monkeypatch.setattr(
        replica, "_load", lambda version: types.SimpleNamespace(version=version, label=version)
    )

    async def scenario() -> tuple[Any, type[BaseException] | None]:
        await replica.reconfigure({"alias_poll_seconds": 3600})  # how Serve starts a replica
        started_with = replica.current
        try:
            await replica.refresh()  # a poll: bounded by registry_timeout_seconds
            polled = None
        except asyncio.TimeoutError as error:
            polled = type(error)
        replica._poller.cancel()
        return started_with, polled

    try:
        started_with, polled = asyncio.run(scenario())
    finally:
        replica.store.close()
    assert started_with is not None and started_with.version == "7", replica.last_error
    assert replica.last_error is None
    assert polled is asyncio.TimeoutError  # the poll did not wait the slow lookup out


def test_an_ingress_reads_the_traffic_tag_before_it_takes_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ingress started on a busy machine timed its first traffic-tag read out and routed by
    serve.traffic (no split) until the next read. Its app's lifespan startup, which Serve runs
    before the replica takes traffic, now waits for that read (RegistryCache.prime); requests
    stay bounded by serve.registry_timeout_seconds."""
    from recicl.config import TrafficConfig, build_config
    from recicl.serve import ingress
    from recicl.serve.settings import resolve_settings
    from recicl.serve.traffic import encode_override

    split = TrafficConfig.model_validate({"split": {"version": 2, "share": 0.3}})
    reads: list[str] = []

    def slow_tag(uri: str, name: str, tag: str) -> str:
        reads.append(tag)
        time.sleep(1.0)
        return encode_override(split, 0)

    monkeypatch.setattr(ingress, "read_model_tag", slow_tag)
    cfg = build_config(
        {
            "workdir": str(tmp_path),
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "serve": {"registry_timeout_seconds": 0.2},
        }
    )

    async def first_request(started: bool) -> TrafficConfig | None:
        backend = ingress.IngressBackend(None, resolve_settings(cfg))
        app = backend.__serve_build_asgi_app__()
        try:
            if not started:  # what a request met before: the first read, bounded
                return await backend.traffic_override()
            async with app.router.lifespan_context(app):  # as Serve starts the replica
                return await backend.traffic_override()
        finally:
            backend.store.close()

    assert asyncio.run(first_request(started=False)) is None  # timed out: serve.traffic
    assert asyncio.run(first_request(started=True)) == split
    assert len(reads) == 2  # one read each: the request joined the start's answer
