"""Shadow and split over HTTP: FastAPI's TestClient on the real routes, a real SQLite store.

The backend is ``test_http_api``'s with three versions that score every item differently
(version 1 is the champion), a version that can be held (a slow shadow) or made to fail. The
split's assignment is checked against sha256 computed here, independently of the server's code;
the shadow against the answers of an app without one.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from recicl.config import ConfigError, build_config
from recicl.serve.api.backend import ModelError, ModelJob, ModelRef, ModelReply
from recicl.serve.api.routes import create_api
from recicl.serve.store import SQLiteStore
from recicl.serve.traffic import split_route, unit_hash
from tests.unit.test_http_api import ADMIN_TOKEN, ITEMS, NAME, SCALE, FakeBackend, _config

T = 1_700_000_000
VERSIONS = ("1", "2", "3")
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def score_of(version: str, item: str) -> float:
    """Each version ranks the catalog differently (none is 0 or 1)."""
    k = ITEMS.index(item)
    return {"1": 0.9 - 0.08 * k, "2": 0.1 + 0.08 * k, "3": 0.5 + 0.04 * ((3 * k) % 10 - 5)}[version]


def expected_bucket(salt: str, user: str) -> float:
    """The documented draw, computed here from the definition: sha256(domain, salt, key)."""
    digest = hashlib.sha256(b"split\x00" + salt.encode() + b"\x00" + user.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class VersionedBackend(FakeBackend):
    """Versions 1-3; ``hold`` (cleared) blocks every non-champion scoring, ``failing`` refuses."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(store=store)
        self.hold = threading.Event()
        self.hold.set()
        self.failing: set[str] = set()

    async def lookup_version(self, ref: ModelRef) -> str | None:
        if ref.alias is not None:
            return {"challenger": "2"}.get(ref.alias)
        return ref.version if ref.version in VERSIONS else None

    async def score(self, job: ModelJob, version: str | None) -> ModelReply | ModelError:
        chosen = version or "1"
        if chosen in self.failing:
            return ModelError(404, "model_not_found", f"model: cannot load version {chosen}")
        if chosen != "1":
            await asyncio.to_thread(self.hold.wait, 30)
        reply = await super().score(job, None)
        if isinstance(reply, ModelError):
            return reply
        scores = tuple((item, score_of(chosen, item)) for item, _ in reply.scores)
        return ModelReply(
            chosen, f"{NAME}/{chosen}", "catalog.parquet", scores, len(job.events), SCALE,
            policy="recent/recent",
        )  # fmt: skip


class App:
    def __init__(self, http: Any, backend: VersionedBackend, store: SQLiteStore) -> None:
        self.http, self.backend, self.store = http, backend, store

    def drain(self) -> None:
        self.http.portal.call(self.http.app.state.route_context.traffic.drain)

    def rows(self, arm: str) -> list[Any]:
        return [r for r in self.store.feedback_rows(0, now=T) if r.served.arm == arm]


@pytest.fixture()
def make(tmp_path: Any) -> Any:
    opened: list[tuple[TestClient, SQLiteStore]] = []

    def make_app(traffic: dict[str, Any] | None = None) -> App:
        store = SQLiteStore(tmp_path / f"events{len(opened)}.db", synchronous="NORMAL")
        backend = VersionedBackend(store)
        cfg = _config(traffic=traffic or {})
        client = TestClient(create_api(backend, cfg, admin_token=ADMIN_TOKEN, clock=lambda: T))
        client.__enter__()
        opened.append((client, store))
        return App(client, backend, store)

    yield make_app
    for client, store in opened:
        client.__exit__(None, None, None)
        store.close()


# -- split ------------------------------------------------------------------------------------


def test_the_split_hash_is_sha256_of_salt_and_user_and_its_share_holds() -> None:
    users = [f"user-{k}" for k in range(2000)]
    cfg = build_config({"serve": {"traffic": {"split": {"version": 3, "share": 0.3}}}})
    traffic = cfg.serve.traffic
    for user in users[:50]:
        assert unit_hash("split", "recicl", user) == expected_bucket("recicl", user)
    arms = [split_route(traffic, user) for user in users]
    assert arms == [split_route(traffic, user) for user in users]  # stable
    chosen = {u for u, (version, arm) in zip(users, arms, strict=True) if arm == "candidate"}
    assert all(version == "3" for version, arm in arms if arm == "candidate")
    assert chosen == {u for u in users if expected_bucket("recicl", u) < 0.3}
    assert abs(len(chosen) / len(users) - 0.3) <= 0.03
    wider = traffic.model_copy(update={"split": traffic.split.model_copy(update={"share": 0.5})})
    assert chosen < {u for u in users if split_route(wider, u)[1] == "candidate"}  # only adds
    resalted = traffic.model_copy(update={"salt": "another draw"})
    assert chosen != {u for u in users if split_route(resalted, u)[1] == "candidate"}


def test_split_over_http_is_stable_per_user_and_answers_from_the_candidate(make: Any) -> None:
    app = make({"split": {"version": 3, "share": 0.3}})
    users = [f"user-{k}" for k in range(2000)]
    seen: dict[str, tuple[str, str]] = {}
    for user in users:
        body = app.http.post("/v1/score", json={"user_id": user, "candidates": ITEMS[:2]}).json()
        seen[user] = (body["arm"], body["model_version"])
        expected = "candidate" if expected_bucket("recicl", user) < 0.3 else "champion"
        assert body["arm"] == expected, (user, body)
        version = "3" if expected == "candidate" else "1"
        assert body["model_version"] == version
        assert [s["score"] for s in body["scores"]] == [score_of(version, i) for i in ITEMS[:2]]
    share = sum(arm == "candidate" for arm, _ in seen.values()) / len(users)
    assert abs(share - 0.3) <= 0.03, share
    for user in users[:200]:  # again: every user stays in its arm
        body = app.http.post("/v1/recommend", json={"user_id": user, "k": 2}).json()
        assert (body["arm"], body["model_version"]) == seen[user]
    logged = {(r.served.user_id, r.served.arm, r.served.version) for r in app.rows("candidate")}
    assert logged == {(u, "candidate", "3") for u, (arm, _) in seen.items() if arm == "candidate"}
    # a request naming a model is not routed by the split
    first_candidate = next(u for u, (arm, _) in seen.items() if arm == "candidate")
    named = app.http.post(
        "/v1/score", json={"user_id": first_candidate, "candidates": ["i0"], "model": f"{NAME}/1"}
    ).json()
    assert (named["arm"], named["model_version"]) == ("explicit", "1")


def test_a_candidate_that_cannot_answer_falls_back_to_the_champion(make: Any) -> None:
    app = make({"split": {"version": 3, "share": 1.0}})
    app.backend.failing.add("3")
    body = app.http.post("/v1/score", json={"user_id": "u", "candidates": ["i0"]}).json()
    assert (body["arm"], body["model_version"]) == ("champion", "1")
    counts = app.http.get("/v1/models").json()["traffic"]["counts"]
    assert counts["candidate_fallback"] == 1


# -- shadow -----------------------------------------------------------------------------------

REQUESTS = [
    ("/v1/score", {"user_id": "a", "candidates": ["i3", "i1", "i7"]}),
    ("/v1/score", {"user_id": "b", "candidates": ITEMS}),
    ("/v1/recommend", {"user_id": "c", "k": 3, "candidates": ["i2", "i5", "i8", "i9"]}),
    ("/v1/recommend", {"user_id": "d", "k": 2}),  # the pool: the shadow scores what was shown
]


def test_shadow_never_changes_an_answer_and_logs_its_scores_under_arm_shadow(make: Any) -> None:
    plain, shadowed = make(), make({"shadow": {"version": 2, "share": 1.0}})
    shadowed.http.post("/v1/events", json={"user_id": "d", "item_id": "i0", "label": 1})
    plain.http.post("/v1/events", json={"user_id": "d", "item_id": "i0", "label": 1})
    answers = {}
    for k, (path, body) in enumerate(REQUESTS):
        headers = {"X-Request-ID": f"req-{k}"}
        without = plain.http.post(path, json=body, headers=headers)
        with_shadow = shadowed.http.post(path, json=body, headers=headers)
        assert without.status_code == with_shadow.status_code == 200, with_shadow.text
        assert with_shadow.json() == without.json()  # same scores, same order, same version
        assert with_shadow.json()["model_version"] == "1"
        answers[body["user_id"]] = with_shadow.json()
    shadowed.drain()
    champion, shadow = shadowed.rows("champion"), shadowed.rows("shadow")
    assert plain.rows("shadow") == [] and len(champion) == 3 + 10 + 3 + 2
    key = [(r.served.request_id, r.served.user_id, r.served.item_id, r.served.served_at)
           for r in champion]  # fmt: skip
    assert sorted(key) == sorted(
        (r.served.request_id, r.served.user_id, r.served.item_id, r.served.served_at)
        for r in shadow
    )
    for row in shadow:
        assert (row.served.version, row.served.policy) == ("2", "recent/recent")
        assert row.served.score == score_of("2", row.served.item_id)
    shown = [i["item_id"] for i in answers["d"]["items"]]  # 2 of a pool of 5
    assert [r.served.item_id for r in shadow if r.served.user_id == "d"] == shown
    assert answers["d"]["candidates_scored"] == 5
    # an event joins both arms' scores of the exposure
    shadowed.http.post("/v1/events", json={"user_id": "a", "item_id": "i3", "label": 1})
    joined = [r for r in shadowed.store.feedback_rows(0, now=T) if r.status == "joined"]
    assert sorted((r.served.arm, r.served.version) for r in joined) == [
        ("champion", "1"), ("shadow", "2")
    ]  # fmt: skip


def test_shadow_is_off_the_answers_path_and_bounded(make: Any) -> None:
    """A shadow that has not answered does not hold the response; past max_in_flight a
    request's shadow is dropped (counted); a failing shadow is counted and changes nothing."""
    app = make({"shadow": {"version": 2, "share": 1.0, "max_in_flight": 2}})
    app.backend.hold.clear()  # version 2 blocks until released
    started = time.monotonic()
    bodies = [
        app.http.post("/v1/score", json={"user_id": f"u{k}", "candidates": ["i0", "i1"]}).json()
        for k in range(4)
    ]
    assert time.monotonic() - started < 10  # the held shadows (30 s) did not delay anyone
    assert all(b["model_version"] == "1" and b["arm"] == "champion" for b in bodies)
    assert app.rows("shadow") == [] and len(app.rows("champion")) == 8
    counts = app.http.get("/v1/models").json()["traffic"]["counts"]
    assert (counts["shadow_in_flight"], counts["shadow_dropped"]) == (2, 2)
    app.backend.hold.set()
    app.drain()
    assert {r.served.user_id for r in app.rows("shadow")} == {"u0", "u1"}
    app.backend.failing.add("2")
    failed = app.http.post("/v1/score", json={"user_id": "u9", "candidates": ["i0"]})
    assert failed.status_code == 200 and failed.json()["scores"][0]["score"] == score_of("1", "i0")
    app.drain()
    counts = app.http.get("/v1/models").json()["traffic"]["counts"]
    assert (counts["shadow_scored"], counts["shadow_failed"]) == (2, 1)


def test_shadow_samples_its_share_of_requests_by_request_id(make: Any) -> None:
    app = make({"shadow": {"version": 2, "share": 0.5}})
    ids = [f"r{k}" for k in range(60)]
    for request_id in ids:
        app.http.post(
            "/v1/score",
            json={"user_id": "u", "candidates": ["i0"]},
            headers={"X-Request-ID": request_id},
        )
    app.drain()
    sampled = {r.served.request_id for r in app.rows("shadow")}
    assert sampled == {i for i in ids if unit_hash("shadow", "recicl", i) < 0.5}
    assert 0 < len(sampled) < len(ids)


# -- the admin API and /v1/models -------------------------------------------------------------


def test_admin_traffic_routes_refuse_without_the_token(make: Any) -> None:
    app = make()
    body = {"split": {"version": 3, "share": 0.2}}
    for method in ("put", "delete"):
        call = getattr(app.http, method)
        kwargs = {"json": body} if method == "put" else {}
        for headers, status in [
            ({}, 401),
            ({"Authorization": "Bearer nope"}, 403),
            ({"Authorization": ADMIN_TOKEN}, 401),
        ]:
            reply = call("/admin/traffic", headers=headers, **kwargs)
            assert reply.status_code == status, (method, headers, reply.text)
            assert "Authorization" in reply.json()["detail"]
    assert app.backend.traffic is None  # nothing was set


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"split": {"version": 3, "share": 1.5}}, 422, "split.share"),
        ({"split": {"version": 3, "share": -0.1}}, 422, "split.share"),
        ({"shadow": {"version": 2, "share": 2}}, 422, "shadow.share"),
        ({"split": {"version": 9, "share": 0.2}}, 422, "split.version"),
        ({"shadow": {"version": 9}}, 422, "shadow.version"),
        ({"split": {"version": 1, "share": 0.2}}, 422, "split.version"),  # the champion itself
        ({"split": {"version": 2, "share": 0.2}, "shadow": {"version": 2}}, 422, "split.version"),
        ({"split": {"version": "three"}}, 422, "split.version"),
        ({"splt": {"version": 3}}, 422, "splt"),
        ([], 422, "body"),
    ],
)
def test_bad_traffic_is_a_4xx_naming_the_field(make: Any, body: Any, status: int, field: str):
    app = make()
    reply = app.http.put("/admin/traffic", json=body, headers=AUTH)
    assert reply.status_code == status, reply.text
    assert field in reply.json()["detail"], reply.json()
    assert app.backend.traffic is None


def test_admin_traffic_sets_the_arms_models_shows_them_delete_restores(make: Any) -> None:
    app = make({"shadow": {"version": 2, "share": 0.25}})
    models = app.http.get("/v1/models").json()
    assert models["model_version"] == "1"  # the reply names the version
    traffic = models["traffic"]
    assert traffic["source"] == "config"
    assert [(a["arm"], a["version"], a["share"]) for a in traffic["arms"]] == [
        ("champion", "1", 1.0), ("shadow", "2", 0.25)
    ]  # fmt: skip
    put = app.http.put(
        "/admin/traffic",
        json={"split": {"version": 3, "share": 0.2}, "shadow": {"version": 2, "share": 1.0}},
        headers=AUTH,
    )
    assert put.status_code == 200, put.text
    arms = {a["arm"]: a for a in app.http.get("/v1/models").json()["traffic"]["arms"]}
    assert (arms["champion"]["share"], arms["candidate"]["version"]) == (0.8, "3")
    assert (arms["candidate"]["share"], arms["shadow"]["share"]) == (0.2, 1.0)
    assert not arms["shadow"]["answers"] and arms["candidate"]["answers"]
    user = next(u for u in (f"user-{k}" for k in range(100)) if expected_bucket("recicl", u) < 0.2)
    reply = app.http.post("/v1/score", json={"user_id": user, "candidates": ["i0"]}).json()
    assert (reply["arm"], reply["model_version"]) == ("candidate", "3")
    deleted = app.http.delete("/admin/traffic", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json()["source"] == "config"
    reply = app.http.post("/v1/score", json={"user_id": user, "candidates": ["i0"]}).json()
    assert (reply["arm"], reply["model_version"]) == ("champion", "1")


@pytest.mark.parametrize(
    ("traffic", "where"),
    [
        ({"split": {"version": 2, "share": 1.01}}, "serve.traffic.split.share"),
        ({"shadow": {"version": 2, "share": -1}}, "serve.traffic.shadow.share"),
        ({"shadow": {"version": 0}}, "serve.traffic.shadow.version"),
        ({"split": {"version": 2, "share": 0.1}, "shadow": {"version": 2}}, "serve.traffic"),
        ({"split": {"version": 2, "portion": 0.1}}, "serve.traffic.split.portion"),
    ],
)
def test_bad_traffic_config_is_a_config_error_naming_the_field(traffic: Any, where: str):
    with pytest.raises(ConfigError) as error:
        build_config({"serve": {"traffic": traffic}})
    assert f"  - {where}:" in str(error.value)
