"""The API's hardening (issue #26), over the routes of ``test_http_api`` and its fake backend.

What a client must not be able to do or see: make the replicas load a version the operator did
not list (``serve.selectable_models``), receive a score that is not a probability, read a
store's or a library's error text (hosts, paths, passwords in URLs), or write with a body that
is not declared JSON. The threat model these close is docs/threat-model.md.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from recicl.config import ConfigError, build_config, load_config, with_overrides
from recicl.serve.api.backend import (
    ModelError,
    ModelJob,
    ModelRef,
    ModelReply,
    ModelStatus,
    RegistryListing,
)
from recicl.serve.api.errors import STORE_RETRY_AFTER_SECONDS
from recicl.serve.api.routes import create_api
from recicl.serve.store import Event, StoreUnavailableError
from tests.unit.test_http_api import ADMIN_TOKEN, NAME, FakeBackend, _config

ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: What a store's error says (a Redis URL with its password, a host, a path): never for clients.
SECRET_CAUSE = (
    "Redis at redis://:hunter2@redis.internal:6379/0 is unavailable (ConnectionError: "
    "Error 111 connecting to /var/run/redis.sock)"
)


class LookupCountingBackend(FakeBackend):
    """Counts registry lookups: a refused model reference must not reach the registry."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.lookups: list[ModelRef] = []

    async def lookup_version(self, ref: ModelRef) -> str | None:
        self.lookups.append(ref)
        return {"challenger": "2"}.get(ref.alias or "") if ref.alias else ref.version


def _client(backend: FakeBackend, **serve: Any) -> TestClient:
    return TestClient(
        create_api(backend, _config(**serve), admin_token=ADMIN_TOKEN),
        raise_server_exceptions=False,  # a fault must come back as a response, checked here
    )


# -- serve.selectable_models ---------------------------------------------------------------------


def test_by_default_a_request_can_name_only_the_served_alias() -> None:
    assert build_config({}).serve.selectable_models == []
    backend = LookupCountingBackend()
    with _client(backend, selectable_models=[]) as http:
        for path, body in [
            ("/v1/score", {"user_id": "u", "candidates": ["i0"], "model": f"{NAME}/1"}),
            ("/v1/recommend", {"user_id": "u", "model": f"{NAME}@challenger"}),
        ]:
            reply = http.post(path, json=body)
            assert reply.status_code == 403, reply.text
            got = reply.json()
            assert got["error"] == "model_not_selectable" and got["field"] == "model"
            assert got["allowed"] == [f"{NAME}@champion"]
            assert got["detail"].startswith("model: ")
            assert "serve.selectable_models" in got["detail"]
        served = http.post(
            "/v1/score", json={"user_id": "u", "candidates": ["i0"], "model": f"{NAME}@champion"}
        )
    assert served.status_code == 200 and served.json()["arm"] == "champion"
    # refused before the registry was asked or a replica was given a version to load
    assert backend.lookups == [] and [version for _, version in backend.jobs] == [None]


def test_listed_aliases_and_versions_are_selectable_and_nothing_else() -> None:
    backend = LookupCountingBackend()
    with _client(backend, selectable_models=["challenger", 3]) as http:

        def score(model: str) -> Any:
            body = {"user_id": "u", "candidates": ["i0"], "model": model}
            return http.post("/v1/score", json=body)

        assert score(f"{NAME}@challenger").status_code == 200
        assert score(f"{NAME}/03").status_code == 200  # version numbers match as numbers
        refused = score(f"{NAME}/2")  # what the listed alias points at: not listed itself
    assert [version for _, version in backend.jobs] == ["2", "03"]
    assert refused.status_code == 403
    assert refused.json()["allowed"] == [f"{NAME}@champion", f"{NAME}@challenger", f"{NAME}/3"]


def test_a_malformed_allow_list_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"serve\.selectable_models.*without the model name"):
        build_config({"serve": {"selectable_models": [f"{NAME}@challenger"]}})


@pytest.mark.parametrize("name", ["local.yaml", "production.yaml"])
def test_the_shipped_serve_configs_let_no_client_pick_a_version(name: str) -> None:
    config = yaml.safe_load((ROOT / "serve_configs" / name).read_text())
    args = config["applications"][0]["args"]
    cfg = with_overrides(load_config(args["config"]), args["overrides"] or {})
    assert cfg.serve.selectable_models == []


# -- scores that are not probabilities --------------------------------------------------------


class BrokenScoresBackend(FakeBackend):
    """Version ``broken`` answers NaN for i1 and +inf for i2; other versions answer as usual."""

    def __init__(self, broken: str | None, **kw: Any) -> None:
        super().__init__(**kw)
        self.broken = broken

    async def score(self, job: ModelJob, version: str | None) -> ModelReply | ModelError:
        reply = await super().score(job, None)
        chosen = version or "1"
        if isinstance(reply, ModelError) or chosen != self.broken:
            return reply
        faulty = {"i1": math.nan, "i2": math.inf}
        scores = tuple((item, faulty.get(item, score)) for item, score in reply.scores)
        return dataclasses.replace(reply, model_version=chosen, scores=scores)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/score", {"user_id": "u", "candidates": ["i0", "i1"]}),
        ("/v1/recommend", {"user_id": "u", "k": 1, "candidates": ["i0", "i2"]}),
    ],
)
def test_a_non_finite_score_is_a_503_naming_the_version_and_is_never_logged(
    path: str, body: dict[str, Any]
) -> None:
    backend = BrokenScoresBackend("1")
    with _client(backend) as http:
        reply = http.post(path, json=body)
    assert reply.status_code == 503, reply.text
    got = reply.json()
    assert got["error"] == "invalid_scores" and got["model_version"] == "1"
    assert "model version 1" in got["detail"] and "scores" not in got and "items" not in got
    assert backend.store.feedback_rows(0, now=2**40) == []  # nothing served, nothing logged


def test_a_split_candidate_with_non_finite_scores_falls_back_to_the_champion() -> None:
    backend = BrokenScoresBackend("3")
    with _client(backend, traffic={"split": {"version": 3, "share": 1.0}}) as http:
        reply = http.post("/v1/score", json={"user_id": "u", "candidates": ["i0", "i1"]})
        counts = http.get("/v1/models").json()["traffic"]["counts"]
    assert reply.status_code == 200, reply.text
    assert (reply.json()["arm"], reply.json()["model_version"]) == ("champion", "1")
    assert all(math.isfinite(s["score"]) for s in reply.json()["scores"])
    assert counts["candidate_fallback"] == 1


# -- the interaction store down -----------------------------------------------------------------


class StoreDownBackend(FakeBackend):
    """Every read and write of the interaction store fails as a real backend's does."""

    async def latest_events(self, user_id: str) -> list[Event]:
        raise StoreUnavailableError(SECRET_CAUSE)

    async def append_events(self, events: list[Event]) -> int:
        raise StoreUnavailableError(SECRET_CAUSE)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/events", {"user_id": "u", "item_id": "i0", "label": 1}),  # a write
        ("/v1/score", {"user_id": "u", "candidates": ["i0"]}),  # reading the context
        ("/v1/recommend", {"user_id": "u", "k": 2}),
    ],
)
def test_a_store_outage_is_a_503_with_retry_after_and_no_internals(
    path: str, body: dict[str, Any]
) -> None:
    with _client(StoreDownBackend()) as http:
        reply = http.post(path, json=body)
    assert reply.status_code == 503, reply.text
    assert reply.headers["Retry-After"] == str(STORE_RETRY_AFTER_SECONDS)
    assert reply.json()["error"] == "store_unavailable"
    assert f"retry after {STORE_RETRY_AFTER_SECONDS} seconds" in reply.json()["detail"]
    for internal in ("hunter2", "redis.internal", "6379", "/var/run", "ConnectionError", "Redis"):
        assert internal not in reply.text


def test_an_unexpected_fault_is_a_500_without_the_exception_text() -> None:
    class FaultyBackend(FakeBackend):
        async def latest_events(self, user_id: str) -> list[Event]:
            raise RuntimeError(f"cannot open /srv/secret/events.db ({SECRET_CAUSE})")

    with _client(FaultyBackend()) as http:
        reply = http.post("/v1/score", json={"user_id": "u", "candidates": ["i0"]})
    assert reply.status_code == 500 and reply.json()["error"] == "internal_error"
    assert "X-Request-ID" in reply.json()["detail"]
    for internal in ("/srv/secret", "hunter2", "RuntimeError"):
        assert internal not in reply.text


# -- Content-Type ---------------------------------------------------------------------------------


def test_a_body_without_a_json_content_type_is_a_415_naming_the_header() -> None:
    event = b'{"user_id": "u", "item_id": "i0", "label": 1}'
    traffic = b'{"split": {"version": 2, "share": 0.5}}'
    backend = FakeBackend()
    with _client(backend) as http:
        replies = [
            (http.post("/v1/events", content=event), "none was sent"),
            (http.put("/admin/traffic", content=traffic, headers=ADMIN), "none was sent"),
            (
                http.post(
                    "/v1/events", content=event, headers={"Content-Type": "application/x+json"}
                ),
                "got 'application/x+json'",
            ),
        ]
        refused_stored = list(backend.events)
        without_body = http.post("/admin/reload", headers=ADMIN)  # nothing to declare
        with_charset = http.post(
            "/v1/events",
            content=event,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
    for reply, got in replies:
        assert reply.status_code == 415, reply.text
        assert reply.json()["error"] == "unsupported_media_type"
        detail = reply.json()["detail"]
        assert detail.startswith("Content-Type:") and "application/json" in detail and got in detail
    assert refused_stored == [] and backend.traffic is None
    assert without_body.status_code == 200, without_body.text
    assert with_charset.status_code == 200 and len(backend.events) == 1


# -- what the public status routes show ------------------------------------------------------


class DetailedBackend(FakeBackend):
    """A replica and a registry with the operator's details: a path, a load error naming a
    host, run ids and tags (what a real ingress gets from its replica and MLflow)."""

    async def model_status(self) -> ModelStatus:
        version = "1" if self.loaded else None
        details = {
            "alias": "champion",
            "model": f"{NAME}/1" if self.loaded else None,
            "catalog_path": "/srv/recicl/samples/catalog.parquet",
            "last_error": None if self.loaded else SECRET_CAUSE,
            "torch_threads": 2,
        }
        return ModelStatus(version, details)

    async def registry_versions(self) -> RegistryListing:
        row = {"version": "1", "aliases": ["champion"], "run_id": "abc123", "tags": {"k": "v"}}
        return RegistryListing([row], 1.0)


@pytest.mark.parametrize("loaded", [True, False])
def test_paths_errors_and_run_ids_are_shown_to_the_operator_only(loaded: bool) -> None:
    with _client(DetailedBackend(loaded=loaded)) as http:
        public = http.get("/v1/models").json()
        operator = http.get("/v1/models", headers=ADMIN).json()
        wrong = http.get("/v1/models", headers={"Authorization": "Bearer nope"}).json()
        health = http.get("/healthz")
        operator_health = http.get("/healthz", headers=ADMIN)
    for body in (public, wrong):  # a wrong token is no token: no 403, no details
        assert "catalog_path" not in body["served"] and "last_error" not in body["served"]
        assert body["versions"] == [{"version": "1", "aliases": ["champion"]}]
        assert body["served"]["torch_threads"] == 2  # the rest stays public
        assert "hunter2" not in str(body) and "/srv/" not in str(body)
    assert operator["served"]["catalog_path"] == "/srv/recicl/samples/catalog.parquet"
    assert operator["versions"][0]["run_id"] == "abc123"
    if loaded:
        assert health.status_code == 200
        return
    assert health.status_code == operator_health.status_code == 503
    assert "redis.internal" not in health.text and "admin token" in health.json()["detail"]
    assert "redis.internal" in operator_health.json()["detail"]


# -- load shedding ---------------------------------------------------------------------------


class OverloadedBackend(FakeBackend):
    """Every scoring refused as the ingress refuses it when Serve's queue is full."""

    async def score(self, job: ModelJob, version: str | None) -> ModelReply | ModelError:
        return ModelError(503, "overloaded", "busy", retry_after=1)


def test_full_queues_are_a_503_with_retry_after_not_a_500() -> None:
    with _client(OverloadedBackend()) as http:
        reply = http.post("/v1/score", json={"user_id": "u", "candidates": ["i0"]})
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"] == "overloaded" and reply.headers["Retry-After"] == "1"


def test_the_ingress_turns_serve_back_pressure_into_the_overloaded_refusal(
    tmp_path: Path,
) -> None:
    import asyncio

    from ray.serve.exceptions import BackPressureError

    from recicl.serve.ingress import IngressBackend
    from recicl.serve.settings import resolve_settings

    class FullQueue:
        """A model handle whose queue is full (what Serve raises past max_queued_requests)."""

        def __init__(self) -> None:
            self.score = self

        def options(self, **_: Any) -> FullQueue:
            return self

        async def remote(self, job: ModelJob) -> ModelReply:
            raise BackPressureError(num_queued_requests=256, max_queued_requests=256)

    cfg = build_config({"workdir": str(tmp_path)})
    backend = IngressBackend(FullQueue(), resolve_settings(cfg))
    job = ModelJob("u", (), ("i0",))
    for version in (None, "2"):
        reply = asyncio.run(backend.score(job, version))
        assert isinstance(reply, ModelError), reply
        assert (reply.status, reply.code, reply.retry_after) == (503, "overloaded", 1)
        assert reply.model_version == version
