"""The HTTP API without Ray: FastAPI's TestClient against the real routes and a small backend.

The fake backend stands in for the model deployment, the store and the registry (a catalog of
ten items, a rating scale, version 1 behind ``champion``); every 4xx path of the API is asserted
here on its status code, error code and the field its detail names. The live-Serve tests
(``tests/integration/test_serve.py``) keep what needs Serve: real scoring, hot swap,
multiplexing, durability.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from recicl.config import TrafficConfig, build_config
from recicl.data.manifest import SamplesManifest
from recicl.serve.api.backend import (
    ModelError,
    ModelJob,
    ModelRef,
    ModelReply,
    ModelStatus,
    RegistryListing,
    ServedVersion,
)
from recicl.serve.api.parsing import duplicates
from recicl.serve.api.routes import create_api
from recicl.serve.live_metrics import live_report
from recicl.serve.registry_cache import RegistryStatus
from recicl.serve.store import CatalogItem, Event, InteractionStore, SQLiteStore
from recicl.serve.store.feedback import FeedbackCounts, ServedScore

ADMIN_TOKEN = "test-admin-token"
NAME = "recicl"
ITEMS = [f"i{k}" for k in range(10)]
SCALE = (0.5, 5.0)


class FakeBackend:
    """In-memory :class:`~recicl.serve.api.backend.ApiBackend`: scores = 1 / (1 + position).

    The feedback log is a real SQLite store (``store``, default: one in a temporary folder), so
    the HTTP feedback tests check the joins the store really makes."""

    def __init__(
        self,
        *,
        loaded: bool = True,
        scale: tuple[float, float] | None = SCALE,
        store: InteractionStore | None = None,
    ) -> None:
        self.loaded = loaded
        self.scale = scale
        self.events: list[Event] = []
        self.jobs: list[tuple[ModelJob, str | None]] = []
        self.traffic: TrafficConfig | None = None  # PUT /admin/traffic
        if store is None:
            self._folder = tempfile.TemporaryDirectory()
            store = SQLiteStore(f"{self._folder.name}/events.db")
        self.store = store

    @property
    def model_name(self) -> str:
        return NAME

    @property
    def last_version(self) -> str | None:
        return "1" if self.loaded else None

    async def served_version(self, refresh_items: bool = False) -> ServedVersion | None:
        return ServedVersion("1", frozenset(ITEMS), self.scale) if self.loaded else None

    async def add_items(self, items: list[CatalogItem]) -> dict[str, Any]:
        return {"items_revision": self.store.put_items(items), "served": None}

    async def lookup_version(self, ref: ModelRef) -> str | None:
        known = {"challenger": "1"}
        return known.get(ref.alias or "") if ref.alias else ("1" if ref.version == "1" else None)

    async def score(self, job: ModelJob, version: str | None) -> ModelReply | ModelError:
        self.jobs.append((job, version))
        if not self.loaded:
            return ModelError(503, "model_unavailable", "no version of recicl is loaded")
        candidates = job.candidates if job.candidates is not None else job.pool[: job.pool_size]
        unknown = [c for c in candidates if c not in ITEMS]
        if unknown and not job.allow_unknown:
            return ModelError(
                422, "unknown_items", f"candidates: {unknown}", "candidates", tuple(unknown)
            )
        scores = tuple((c, 1 / (1 + k)) for k, c in enumerate(candidates))
        return ModelReply("1", f"{NAME}/1", "catalog.parquet", scores, len(job.events), SCALE)

    async def latest_events(self, user_id: str) -> list[Event]:
        return [e for e in self.events if e.user_id == user_id]

    async def append_events(self, events: list[Event]) -> int:
        self.events += events
        return len(events)

    async def seen_items(self, user_id: str) -> set[str]:
        return {e.item_id for e in self.events if e.user_id == user_id}

    async def recent_items(self) -> list[str]:
        return list(ITEMS)

    async def model_status(self) -> ModelStatus:
        version = "1" if self.loaded else None
        return ModelStatus(version, {"alias": "champion", "model": f"{NAME}/1"})

    async def registry_versions(self) -> RegistryListing:
        return RegistryListing([{"version": "1", "aliases": ["champion"]}], 1.0)

    async def registry_status(self) -> RegistryStatus:
        return RegistryStatus("ok", 1.0)

    async def store_healthy(self) -> bool:
        return True

    async def reload(self, force: bool) -> dict[str, Any] | ModelError:
        return {"model_version": "1", "previous_version": "1", "changed": False}

    async def record_served(self, scores: list[ServedScore], now: int) -> None:
        self.store.record_served(scores, now)

    async def record_outcomes(self, events: list[Event], now: int) -> FeedbackCounts:
        return self.store.record_outcomes(events, now)

    async def live_metrics(self, window_s: int, now: int) -> dict[str, Any]:
        return live_report(self.store, window_s, now)

    async def traffic_override(self) -> TrafficConfig | None:
        return self.traffic

    async def set_traffic_override(self, traffic: TrafficConfig | None) -> None:
        self.traffic = traffic


def _config(**serve: Any) -> Any:
    limits = {
        "max_candidates": 50,
        "max_events_per_request": 100,
        "max_history_events": 20,
        "max_body_bytes": 65_536,
        "max_string_length": 64,
        "candidate_pool_size": 5,
        # the versions and aliases these tests name (the allow-list: test_http_hardening.py)
        "selectable_models": ["1", "2", "3", "99", "challenger", "nope"],
    }
    return build_config({"serve": {**limits, **serve}})


def _client(backend: FakeBackend | None = None, admin_token: str | None = ADMIN_TOKEN) -> Any:
    backend = backend or FakeBackend()
    return TestClient(create_api(backend, _config(), admin_token=admin_token))


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture()
def http(backend: FakeBackend) -> Any:
    with _client(backend) as client:
        yield client


def _cases() -> list[tuple[str, str, dict[str, Any], int, str, str]]:
    """(name, path, request kwargs, status, error code, text the detail must contain)."""
    item = ITEMS[0]
    ok = {"user_id": "u", "candidates": [item]}
    ev = {"user_id": "u", "item_id": item, "label": 1}
    js = {"Content-Type": "application/json"}
    too_many = [f"x{k}" for k in range(51)]
    return [
        ("malformed json", "/v1/score", {"content": b'{"user_id": ', "headers": js}, 400,
         "invalid_json", "body"),
        ("json list instead of object", "/v1/score", {"json": []}, 422, "validation_error", "body"),
        ("empty body", "/v1/score", {"content": b"", "headers": js}, 422, "validation_error",
         "body"),
        ("missing user_id", "/v1/score", {"json": {"candidates": [item]}}, 422,
         "validation_error", "user_id"),
        ("missing candidates", "/v1/score", {"json": {"user_id": "u"}}, 422, "validation_error",
         "candidates"),
        ("empty candidates", "/v1/score", {"json": {**ok, "candidates": []}}, 422,
         "validation_error", "candidates"),
        ("too many candidates", "/v1/score", {"json": {**ok, "candidates": too_many}}, 422,
         "validation_error", "candidates"),
        ("candidates not a list", "/v1/score", {"json": {**ok, "candidates": item}}, 422,
         "validation_error", "candidates"),
        ("candidate ids not strings", "/v1/score", {"json": {**ok, "candidates": [1, 2]}}, 422,
         "validation_error", "candidates[0]"),
        ("user_id wrong type", "/v1/score", {"json": {**ok, "user_id": 5}}, 422,
         "validation_error", "user_id"),
        ("user_id empty", "/v1/score", {"json": {**ok, "user_id": ""}}, 422, "validation_error",
         "user_id"),
        ("user_id huge", "/v1/score", {"json": {**ok, "user_id": "u" * 5000}}, 422,
         "validation_error", "user_id"),
        ("user_id control character", "/v1/score", {"json": {**ok, "user_id": "a\nb"}}, 422,
         "validation_error", "user_id"),
        ("body over the size limit", "/v1/score", {"json": {**ok, "pad": "x" * 100_000}}, 413,
         "body_too_large", "body"),
        ("unknown candidate items", "/v1/score",
         {"json": {**ok, "candidates": [item, "no-such-item"]}}, 422, "unknown_items",
         "candidates"),
        ("duplicate candidates", "/v1/score", {"json": {**ok, "candidates": [item, item]}}, 422,
         "validation_error", "candidates"),
        ("unknown field", "/v1/score", {"json": {**ok, "userid": "u"}}, 422, "validation_error",
         "userid"),
        ("history not a list", "/v1/score", {"json": {**ok, "history": {"item_id": item}}}, 422,
         "validation_error", "history"),
        ("history event without label or rating", "/v1/score",
         {"json": {**ok, "history": [{"item_id": item}]}}, 422, "validation_error", "history[0]"),
        ("history label out of range", "/v1/score",
         {"json": {**ok, "history": [{"item_id": item, "label": 2}]}}, 422, "validation_error",
         "history[0].label"),
        ("history label a string", "/v1/score",
         {"json": {**ok, "history": [{"item_id": item, "label": "yes"}]}}, 422,
         "validation_error", "history[0].label"),
        ("history too long", "/v1/score",
         {"json": {**ok, "history": [{"item_id": item, "label": 1}] * 21}}, 422,
         "validation_error", "history"),
        ("history unknown item", "/v1/score",
         {"json": {**ok, "history": [{"item_id": "ghost", "label": 1}]}}, 422, "unknown_items",
         "history"),
        ("history timestamp in the future", "/v1/score",
         {"json": {**ok, "history": [{"item_id": item, "label": 1,
                                      "timestamp": int(time.time()) + 10 * 86_400}]}}, 422,
         "validation_error", "history[0].timestamp"),
        ("model reference malformed", "/v1/score", {"json": {**ok, "model": "recicl"}}, 422,
         "validation_error", "model"),
        ("model version unknown", "/v1/score", {"json": {**ok, "model": f"{NAME}/99"}}, 404,
         "model_not_found", "model"),
        ("model alias unknown", "/v1/score", {"json": {**ok, "model": f"{NAME}@nope"}}, 404,
         "model_not_found", "model"),
        ("model name unknown", "/v1/score", {"json": {**ok, "model": "other@champion"}}, 404,
         "model_not_found", "model"),
        ("wrong content type", "/v1/score",
         {"content": json.dumps(ok).encode(), "headers": {"Content-Type": "text/plain"}}, 415,
         "unsupported_media_type", "Content-Type"),
        ("form encoded", "/v1/score", {"data": {"user_id": "u"}}, 415, "unsupported_media_type",
         "Content-Type"),
        ("k negative", "/v1/recommend", {"json": {"user_id": "u", "k": -1}}, 422,
         "validation_error", "k"),
        ("k zero", "/v1/recommend", {"json": {"user_id": "u", "k": 0}}, 422, "validation_error",
         "k"),
        ("k over the limit", "/v1/recommend", {"json": {"user_id": "u", "k": 51}}, 422,
         "validation_error", "k"),
        ("k a string", "/v1/recommend", {"json": {"user_id": "u", "k": "5"}}, 422,
         "validation_error", "k"),
        ("recommend empty candidates", "/v1/recommend",
         {"json": {"user_id": "u", "k": 1, "candidates": []}}, 422, "validation_error",
         "candidates"),
        ("recommend duplicate candidates", "/v1/recommend",
         {"json": {"user_id": "u", "k": 1, "candidates": [item, item]}}, 422,
         "validation_error", "candidates"),
        ("recommend unknown candidates", "/v1/recommend",
         {"json": {"user_id": "u", "k": 1, "candidates": ["nope"]}}, 422, "unknown_items",
         "candidates"),
        ("recommend unknown model", "/v1/recommend",
         {"json": {"user_id": "u", "model": f"{NAME}/99"}}, 404, "model_not_found", "model"),
        ("events empty list", "/v1/events", {"json": []}, 422, "validation_error", "body"),
        ("events empty body", "/v1/events", {"content": b"", "headers": js}, 422,
         "validation_error", "body"),
        ("events malformed json", "/v1/events", {"content": b"[{", "headers": js}, 400,
         "invalid_json", "body"),
        ("events over the limit", "/v1/events", {"json": [ev] * 101}, 422, "validation_error",
         "body"),
        ("event missing item_id", "/v1/events", {"json": {"user_id": "u", "label": 1}}, 422,
         "validation_error", "item_id"),
        ("event without label or rating", "/v1/events",
         {"json": {"user_id": "u", "item_id": item}}, 422, "validation_error", "label"),
        ("event rating NaN", "/v1/events",
         {"content": b'{"user_id": "u", "item_id": "%s", "rating": NaN}' % item.encode(),
          "headers": js}, 422, "validation_error", "rating"),
        ("event rating a string", "/v1/events", {"json": {**ev, "rating": "high"}}, 422,
         "validation_error", "rating"),
        ("event timestamp a float", "/v1/events", {"json": {**ev, "timestamp": 1.5}}, 422,
         "validation_error", "timestamp"),
        ("event timestamp negative", "/v1/events", {"json": {**ev, "timestamp": -5}}, 422,
         "validation_error", "timestamp"),
        ("event timestamp in the future", "/v1/events",
         {"json": {**ev, "timestamp": int(time.time()) + 10 * 86_400}}, 422, "validation_error",
         "timestamp"),
        ("event unknown item", "/v1/events", {"json": {**ev, "item_id": "ghost"}}, 422,
         "unknown_items", "item_id"),
        ("one bad event in a batch", "/v1/events",
         {"json": [ev, {**ev, "user_id": 7}, ev]}, 422, "validation_error", "[1].user_id"),
        ("event body not JSON object or list", "/v1/events", {"json": "hello"}, 422,
         "validation_error", "body"),
        ("event unknown field", "/v1/events", {"json": {**ev, "score": 1}}, 422,
         "validation_error", "score"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "code", "field"),
    [case[1:] for case in _cases()],
    ids=[case[0] for case in _cases()],
)
def test_bad_input_is_a_4xx_naming_the_field(
    http: Any, backend: FakeBackend, path: str, kwargs: dict, status: int, code: str, field: str
) -> None:
    reply = http.post(path, **kwargs)
    body = reply.json()
    assert reply.status_code == status, body
    assert body["error"] == code and field in body["detail"], body
    assert backend.events == []  # nothing of a refused request is stored


def test_error_bodies_list_fields_and_unknown_ids(http: Any) -> None:
    reply = http.post("/v1/score", json={"user_id": "", "candidates": []})
    body = reply.json()
    assert {f["field"] for f in body["fields"]} == {"user_id", "candidates"}
    unknown = http.post("/v1/events", json={"user_id": "u", "item_id": "ghost", "label": 1})
    assert unknown.json()["unknown"] == ["ghost"] and unknown.json()["field"] == "item_id"


@pytest.mark.parametrize("rating", [-1e9, 0.0, 5.5, 1e9])
def test_event_rating_outside_the_served_scale_is_422(http: Any, backend: FakeBackend, rating):
    one = http.post("/v1/events", json={"user_id": "u", "item_id": ITEMS[0], "rating": rating})
    assert one.status_code == 422, one.text
    body = one.json()
    assert body["error"] == "validation_error"
    assert body["fields"][0]["field"] == "rating"
    assert "[0.5, 5.0]" in body["detail"] and body["detail"].startswith("rating:")
    many = [
        {"user_id": "u", "item_id": ITEMS[0], "rating": 4.0},
        {"user_id": "u", "item_id": ITEMS[1], "rating": rating},
    ]
    listed = http.post("/v1/events", json=many)
    assert listed.status_code == 422 and listed.json()["fields"][0]["field"] == "[1].rating"
    assert backend.events == []


def test_history_rating_outside_the_served_scale_is_422(http: Any) -> None:
    history = [{"item_id": ITEMS[1], "label": 1}, {"item_id": ITEMS[2], "rating": -1e9}]
    reply = http.post(
        "/v1/score", json={"user_id": "u", "candidates": [ITEMS[0]], "history": history}
    )
    assert reply.status_code == 422, reply.text
    assert reply.json()["fields"][0]["field"] == "history[1].rating"
    assert "[0.5, 5.0]" in reply.json()["detail"]


def test_ratings_on_the_scale_are_stored_with_their_label(http: Any, backend: FakeBackend):
    edges = [
        {"user_id": "u", "item_id": i, "rating": r}
        for i, r in zip(ITEMS[:3], (0.5, 4.0, 5.0), strict=True)
    ]
    reply = http.post("/v1/events", json=edges)
    assert reply.status_code == 200, reply.text
    assert [(e.rating, e.label) for e in backend.events] == [(0.5, 0), (4.0, 1), (5.0, 1)]


def test_unchecked_scale_accepts_any_finite_rating() -> None:
    backend = FakeBackend(scale=None)  # a generic source without data.rating_range
    with _client(backend) as client:
        reply = client.post("/v1/events", json={"user_id": "u", "item_id": "i0", "rating": -1e9})
    assert reply.status_code == 200 and backend.events[0].rating == -1e9


def test_body_guard_checks_the_declared_and_the_streamed_size(http: Any, backend: FakeBackend):
    """Content-Length that is not a number is a 400; a body sent without one (chunked) is cut
    off at the limit with a 413, before the backend sees anything."""
    ok = json.dumps({"user_id": "u", "candidates": [ITEMS[0]]}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": "lots"}
    reply = http.post("/v1/score", content=ok, headers=headers)
    assert reply.status_code == 400 and reply.json()["error"] == "bad_request"
    assert "Content-Length" in reply.json()["detail"]

    def chunks() -> Any:
        yield b'{"user_id": "u", "pad": "'
        for _ in range(100):  # 100 kB against the 64 kB limit
            yield b"x" * 1_000
        yield b'"}'

    calls = len(backend.jobs)
    streamed = http.post(
        "/v1/score", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.request.headers.get("content-length") is None  # really streamed
    assert streamed.status_code == 413 and streamed.json()["error"] == "body_too_large"
    assert "65536" in streamed.json()["detail"]
    assert len(backend.jobs) == calls


def test_routes_and_methods(http: Any) -> None:
    for reply, status, code, field in [
        (http.get("/nope"), 404, "not_found", "path"),
        (http.get("/v1/score"), 405, "method_not_allowed", "method"),
        (http.put("/v1/events", json={}), 405, "method_not_allowed", "method"),
    ]:
        body = reply.json()
        assert (reply.status_code, body["error"]) == (status, code) and field in body["detail"]


def test_admin_auth(http: Any) -> None:
    for headers, status, code in [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer nope"}, 403, "forbidden"),
        ({"Authorization": f"Basic {ADMIN_TOKEN}"}, 401, "unauthorized"),
    ]:
        reply = http.post("/admin/reload", headers=headers)
        assert (reply.status_code, reply.json()["error"]) == (status, code)
        assert "Authorization" in reply.json()["detail"]
    ok = http.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200 and ok.json()["model_version"] == "1"
    bad_flag = http.post(
        "/admin/reload?force=maybe", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert bad_flag.status_code == 422 and "force" in bad_flag.json()["detail"]


def test_admin_disabled_without_token() -> None:
    with _client(admin_token=None) as client:
        reply = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert reply.status_code == 404 and reply.json()["error"] == "admin_disabled"
    assert "RECICL_ADMIN_TOKEN" in reply.json()["detail"]


def test_no_model_loaded_is_503_not_4xx() -> None:
    backend = FakeBackend(loaded=False)
    with _client(backend) as client:
        score = client.post("/v1/score", json={"user_id": "u", "candidates": ["anything"]})
        health = client.get("/healthz")
    assert score.status_code == 503 and score.json()["error"] == "model_unavailable"
    assert health.status_code == 503 and health.json()["status"] == "unavailable"


def test_good_requests_reach_the_backend_typed(http: Any, backend: FakeBackend) -> None:
    posted = http.post(
        "/v1/events",
        json=[{"user_id": "u", "item_id": "i1", "label": 1, "timestamp": 1_600_000_000}],
    )
    assert posted.json() == {"accepted": 1, "new": 1, "model_version": "1"}
    scored = http.post(
        "/v1/score", json={"user_id": "u", "candidates": ["i2", "i3"], "model": f"{NAME}/1"}
    )
    assert scored.status_code == 200, scored.text
    assert scored.json()["context_events"] == 1
    job, version = backend.jobs[-1]
    assert version == "1" and job.candidates == ("i2", "i3")
    assert job.events == (Event("u", "i1", 1, 1_600_000_000),)
    served_alias = http.post(
        "/v1/score", json={"user_id": "u", "candidates": ["i2"], "model": f"{NAME}@champion"}
    )
    assert served_alias.status_code == 200 and backend.jobs[-1][1] is None
    pooled = http.post("/v1/recommend", json={"user_id": "u", "k": 2}).json()
    job, _ = backend.jobs[-1]
    assert job.candidates is None and job.exclude == {"i1"} and job.pool_size == 5
    assert [i["item_id"] for i in pooled["items"]] == ["i0", "i1"]


def test_openapi_documents_the_request_bodies(http: Any) -> None:
    schema = http.get("/openapi.json").json()
    assert {"/v1/events", "/v1/score", "/v1/recommend", "/v1/models", "/healthz"} <= set(
        schema["paths"]
    )
    components = schema["components"]["schemas"]
    assert {"EventIn", "HistoryEvent", "ScoreRequest", "RecommendRequest"} <= set(components)
    assert components["ScoreRequest"]["properties"]["candidates"]["maxItems"] == 50
    assert http.get("/docs").status_code == 200


def test_duplicates_in_first_repeat_order() -> None:
    assert duplicates(["a", "b", "a", "c", "b", "a"]) == ["a", "b"]
    assert duplicates(["a", "b"]) == []


def test_http_layer_does_not_import_ray() -> None:
    code = (
        "import sys\n"
        "import recicl.serve.api.routes, recicl.serve.api.backend, recicl.serve.api.schemas\n"
        "import recicl.serve.api.errors, recicl.serve.api.middleware, recicl.serve.api.parsing\n"
        "import recicl.serve.api.feedback, recicl.serve.api.route_context\n"
        "import recicl.serve.api.traffic, recicl.serve.traffic\n"
        "import recicl.serve.store, recicl.serve.store.feedback, recicl.serve.live_metrics\n"
        "import recicl.serve.settings, recicl.serve.serving_model\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("recorded", "expected"), [([0.5, 5.0], (0.5, 5.0)), ([1, 10], (1.0, 10.0)), (None, None)]
)
def test_served_scale_is_the_scale_the_samples_build_recorded(recorded: Any, expected: Any):
    """The served version's scale is the one its samples were validated against (recorded in
    their manifest; null = unchecked): the serving config does not count."""
    from recicl.serve.serving_model import trained_rating_range

    serving_cfg = build_config({"data": {"rating_range": [0, 100]}})
    manifest = SamplesManifest.model_validate({"rating_range": recorded})
    assert trained_rating_range(manifest, serving_cfg) == expected


def test_samples_without_a_recorded_scale_use_the_serving_configs_explicit_one() -> None:
    from recicl.serve.serving_model import trained_rating_range

    old = SamplesManifest.model_validate({})  # built before the scale was recorded
    assert trained_rating_range(old, build_config({})) is None  # unknown: unchecked, warned
    explicit = build_config({"data": {"source": "parquet", "rating_range": [1, 3]}})
    assert trained_rating_range(old, explicit) == (1.0, 3.0)
    assert trained_rating_range(None, explicit) == (1.0, 3.0)  # no manifest at all
