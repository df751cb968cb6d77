"""``serve.access`` (issue #26): the event-write credential, per-client rates, event quotas.

Over the routes of ``test_http_api`` and its fake backend, with counters in memory (the shared
Redis counters: tests/integration/test_access_counters.py). What is checked for every refusal:
the status and the error body a client can act on (the field, the limit, ``Retry-After``), and
that nothing was stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from recicl.config import ConfigError, build_config, load_config, with_overrides
from recicl.serve.api.access import AccessGuard
from recicl.serve.api.routes import create_api
from recicl.serve.settings import ServeError, resolve_settings
from tests.unit.test_http_api import ADMIN_TOKEN, FakeBackend, _config

ROOT = Path(__file__).resolve().parents[2]
WRITE_TOKEN = "test-write-token"


def _client(backend: FakeBackend, write_token: str | None = None, **access: Any) -> TestClient:
    cfg = _config(access=access)
    guard = AccessGuard(cfg.serve.access, write_token, "memory://")
    return TestClient(
        create_api(backend, cfg, admin_token=ADMIN_TOKEN, access=guard),
        raise_server_exceptions=False,
    )


def _event(user: str = "u1", item: str = "i1", ts: int = 1_700_000_000) -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "label": 1, "timestamp": ts}


def _events(user: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [_event(user, f"i{k % 10}", 1_700_000_000 + start + k) for k in range(n)]


# -- the write credential ------------------------------------------------------------------------


def test_without_a_write_token_event_writes_are_open() -> None:
    backend = FakeBackend()
    with _client(backend) as http:
        assert http.post("/v1/events", json=_event()).status_code == 200
    assert len(backend.events) == 1


def test_with_a_write_token_only_its_bearer_writes_events() -> None:
    backend = FakeBackend()
    with _client(backend, WRITE_TOKEN) as http:
        missing = http.post("/v1/events", json=_event())
        assert missing.status_code == 401, missing.text
        assert missing.json()["error"] == "unauthorized"
        assert "Authorization: Bearer" in missing.json()["detail"]
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = http.post("/v1/events", json=_event(), headers={"Authorization": "Bearer not-it"})
        assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
        # the admin token is another credential: it does not write events
        admin = http.post(
            "/v1/events", json=_event(), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert admin.status_code == 403
        assert backend.events == []  # no refused write stored anything
        ok = http.post(
            "/v1/events", json=_event(), headers={"Authorization": f"Bearer {WRITE_TOKEN}"}
        )
        assert ok.status_code == 200, ok.text
        # reads need no write token
        score = http.post("/v1/score", json={"user_id": "u1", "candidates": ["i0"]})
        assert score.status_code == 200, score.text
    assert [e.user_id for e in backend.events] == ["u1"]


def test_tokens_rotate_without_downtime_old_and_new_are_both_valid_while_both_are_set() -> None:
    backend = FakeBackend()
    cfg = _config()
    guard = AccessGuard(cfg.serve.access, "old-write, new-write", "memory://")
    app = create_api(backend, cfg, admin_token="old-admin,new-admin", access=guard)
    with TestClient(app, raise_server_exceptions=False) as http:
        for token in ("old-write", "new-write"):
            reply = http.post(
                "/v1/events", json=_event(), headers={"Authorization": f"Bearer {token}"}
            )
            assert reply.status_code == 200, reply.text
        for token, status in [("old-admin", 200), ("new-admin", 200), ("old-write", 403),
                              ("old-admin,new-admin", 403), ("", 401)]:  # fmt: skip
            reply = http.post("/admin/reload", headers={"Authorization": f"Bearer {token}"})
            assert reply.status_code == status, (token, reply.text)


def test_the_token_is_checked_before_the_body_is_read() -> None:
    with _client(FakeBackend(), WRITE_TOKEN) as http:
        reply = http.post(
            "/v1/events", content=b"{not json", headers={"Content-Type": "application/json"}
        )
    assert reply.status_code == 401  # not 400: an anonymous client learns nothing of the API


# -- per-client rates ----------------------------------------------------------------------------


def test_a_client_over_its_rate_gets_429_with_retry_after_and_healthz_stays_open() -> None:
    backend = FakeBackend()
    with _client(backend, client_rate="3/minute") as http:
        codes = [
            http.post("/v1/score", json={"user_id": "u", "candidates": ["i0"]}).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 200]
        over = http.post("/v1/events", json=_event())
        assert over.status_code == 429, over.text
        body = over.json()
        assert body["error"] == "too_many_requests"
        assert body["limit"] == "3 per 1 minute"
        assert "client 'testclient'" in body["detail"]
        assert 1 <= int(over.headers["Retry-After"]) <= 60
        assert backend.events == []  # refused before anything was read or stored
        assert all(http.get("/healthz").status_code == 200 for _ in range(5))


def test_clients_named_by_the_gateway_header_are_counted_apart() -> None:
    with _client(FakeBackend(), client_rate="2/minute", client_header="X-Forwarded-For") as http:

        def score(forwarded: str) -> int:
            return http.post(
                "/v1/score",
                json={"user_id": "u", "candidates": ["i0"]},
                headers={"X-Forwarded-For": forwarded},
            ).status_code

        assert [score("1.2.3.4, 10.0.0.1") for _ in range(3)] == [200, 200, 429]
        # the address the gateway appended counts; what the client wrote before it does not
        assert score("5.6.7.8, 10.0.0.1") == 429
        assert [score("1.2.3.4, 10.0.0.2") for _ in range(2)] == [200, 200]


# -- event quotas --------------------------------------------------------------------------------


def test_a_user_over_its_event_quota_gets_429_naming_the_user_and_nothing_is_stored() -> None:
    backend = FakeBackend()
    with _client(backend, user_event_quota="5/hour") as http:
        assert http.post("/v1/events", json=_events("u1", 3)).status_code == 200
        over = http.post("/v1/events", json=_events("u1", 3, start=10) + _events("u2", 1))
        assert over.status_code == 429, over.text
        body = over.json()
        assert body["field"] == "user_id" and "user_id 'u1'" in body["detail"]
        assert body["limit"] == "5 per 1 hour"
        assert int(over.headers["Retry-After"]) >= 1
        assert len(backend.events) == 3  # the refused batch, u2's event included, is not stored
        # nothing of the refused batch was counted: u2 has its whole quota, u1 its last 2
        assert http.post("/v1/events", json=_events("u2", 5)).status_code == 200
        assert http.post("/v1/events", json=_events("u1", 2, start=20)).status_code == 200
        assert http.post("/v1/events", json=_event("u1")).status_code == 429
    assert len(backend.events) == 10


def test_more_events_in_one_request_than_a_quota_allows_is_a_422_not_a_retry() -> None:
    backend = FakeBackend()
    with _client(backend, user_event_quota="5/hour") as http:
        reply = http.post("/v1/events", json=_events("u1", 6))
    assert reply.status_code == 422, reply.text
    assert "send at most that many at once" in reply.json()["detail"]
    assert backend.events == []


def test_the_total_quota_counts_every_user_together() -> None:
    backend = FakeBackend()
    with _client(backend, total_event_quota="4/minute") as http:
        assert http.post("/v1/events", json=_events("a", 2)).status_code == 200
        assert http.post("/v1/events", json=_events("b", 2)).status_code == 200
        over = http.post("/v1/events", json=_event("c"))
        assert over.status_code == 429 and "all clients" in over.json()["detail"]
    assert {e.user_id for e in backend.events} == {"a", "b"}


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["client_rate", "user_event_quota", "total_event_quota"])
def test_a_rate_that_does_not_parse_is_a_config_error_naming_the_key(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"serve\.access\.{key}.*is not a rate"):
        build_config({"serve": {"access": {key: "50 a second"}}})


def test_a_bad_client_header_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"serve\.access\.client_header.*header name"):
        build_config({"serve": {"access": {"client_header": "X Forwarded: For"}}})


def test_serving_refuses_to_start_when_writes_need_a_token_and_none_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECICL_WRITE_TOKEN", raising=False)
    cfg = build_config(
        {"workdir": str(tmp_path), "serve": {"access": {"require_token_for_writes": True}}}
    )
    with pytest.raises(ServeError, match="RECICL_WRITE_TOKEN"):
        resolve_settings(cfg)
    monkeypatch.setenv("RECICL_WRITE_TOKEN", "from-the-secret")
    assert resolve_settings(cfg).write_token == "from-the-secret"


def test_the_write_token_is_masked_wherever_the_config_is_logged(tmp_path: Path) -> None:
    cfg = build_config({"workdir": str(tmp_path), "serve": {"access": {"write_token": "s3cr3t"}}})
    dumped = cfg.redacted_dump()
    assert "s3cr3t" not in str(dumped)
    assert dumped["serve"]["access"]["require_token_for_writes"] is False  # not a secret


def _shipped(name: str) -> Any:
    config = yaml.safe_load((ROOT / "serve_configs" / name).read_text())
    args = config["applications"][0]["args"]
    return with_overrides(load_config(args["config"]), args["overrides"] or {})


def test_production_needs_a_write_token_and_limits_clients_local_stays_open() -> None:
    production = _shipped("production.yaml").serve.access
    assert production.require_token_for_writes and production.write_token is None  # a secret
    assert production.client_rate and production.user_event_quota and production.total_event_quota
    local = _shipped("local.yaml").serve.access
    assert not local.require_token_for_writes
    assert local.client_rate is None and local.user_event_quota is None


# -- live metrics: the operator's figures --------------------------------------------------------


def test_live_metrics_need_the_admin_token_when_configured() -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with _client(FakeBackend()) as http:
        open_reply = http.get("/v1/metrics/live")
    with _client(FakeBackend(), metrics_need_admin=True) as http:
        anonymous = http.get("/v1/metrics/live")
        wrong = http.get("/v1/metrics/live", headers={"Authorization": "Bearer guess"})
        operator = http.get("/v1/metrics/live", headers=auth)
    assert open_reply.status_code == 200, open_reply.text  # the local default: open
    assert anonymous.status_code == 401 and "arms" not in anonymous.json()
    assert wrong.status_code == 403 and "arms" not in wrong.json()
    assert operator.status_code == 200 and "arms" in operator.json(), operator.text
    assert _shipped("production.yaml").serve.access.metrics_need_admin
    assert not _shipped("local.yaml").serve.access.metrics_need_admin
