"""The feedback loop over HTTP: scores served, events posted, joins and live metrics checked.

The routes run as in production (FastAPI's TestClient, no Ray) over the test backend of
``test_http_api`` with a real SQLite store and a clock the test moves. The test keeps its own log
of what it was served and what it posted, joins it by the documented rule (brute force, below),
and computes AUC and LogLoss with scikit-learn itself; the server's joins, counters and figures
must equal those. The Prometheus exporter and ``recicl models live`` are checked on the report
this produces.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import log_loss, roc_auc_score

from recicl.serve.api.backend import ModelError, ModelJob, ModelReply
from recicl.serve.api.routes import create_api
from recicl.serve.store import SQLiteStore
from recicl.serve.store.feedback import FeedbackSettings
from tests.unit.test_http_api import NAME, FakeBackend, _config

T = 1_700_000_000
WINDOW = 60
RETENTION = 600
#: Scores depend on the item only, none is 0 or 1 (LogLoss needs no clipping to compare).
SCORES = {f"i{k}": s for k, s in enumerate([0.9, 0.2, 0.6, 0.4, 0.7, 0.3, 0.5, 0.35, 0.65, 0.15])}


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t + 0.25  # mid-second: served scores and events are stamped int(now)


class ItemScoringBackend(FakeBackend):
    async def score(self, job: ModelJob, version: str | None) -> ModelReply | ModelError:
        reply = await super().score(job, version)
        if isinstance(reply, ModelError):
            return reply
        scores = tuple((item, SCORES[item]) for item, _ in reply.scores)
        return dataclasses.replace(reply, scores=scores, policy="recent/recent")


@dataclasses.dataclass
class Loop:
    """The client, its clock, the store, and the test's own log of the traffic."""

    http: Any
    clock: Clock
    store: SQLiteStore
    served: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def at(self, t: int) -> Loop:
        self.clock.t = t
        return self

    def score(
        self, user: str, candidates: list[str], model: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        payload = {"user_id": user, "candidates": candidates}
        reply = self.http.post("/v1/score", json={**payload, "model": model}, **kw)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        self._log(user, body, body["scores"])
        return {**body, "header": reply.headers.get("x-request-id")}

    def recommend(self, user: str, k: int, candidates: list[str]) -> dict[str, Any]:
        payload = {"user_id": user, "k": k, "candidates": candidates}
        body = self.http.post("/v1/recommend", json=payload).json()
        self._log(user, body, body["items"])
        return body

    def _log(self, user: str, body: dict[str, Any], shown: list[dict[str, Any]]) -> None:
        for entry in shown:
            self.served.append(
                {"request_id": body["request_id"], "user": user, "item": entry["item_id"],
                 "score": entry["score"], "version": body["model_version"], "arm": body["arm"],
                 "at": self.clock.t}
            )  # fmt: skip

    def post(self, *events: dict[str, Any]) -> None:
        reply = self.http.post("/v1/events", json=list(events))
        assert reply.status_code == 200, reply.text
        for e in events:
            ts = e.get("timestamp", self.clock.t)
            self.events.append({**e, "ts": ts, "arrived": self.clock.t})

    def live(self, **params: Any) -> dict[str, Any]:
        reply = self.http.get("/v1/metrics/live", params=params)
        assert reply.status_code == 200, reply.text
        return reply.json()


def reference_join(loop: Loop) -> tuple[dict[int, int], Counter, Counter, int]:
    """The documented rule, read literally, event by event in arrival order: in each arm, the
    newest score of that user and item served at or before the event's time takes the label if
    the event is stamped and arrives within the window and the score has none yet; else the
    event is late / a duplicate; with no such score in any arm it is unscored.
    Returns (label of each joined score by log index, late and duplicate events per score index,
    unscored events)."""
    labels: dict[int, int] = {}
    late: Counter = Counter()
    duplicate: Counter = Counter()
    unscored = 0
    for e in loop.events:
        matched = False
        for arm in sorted({s["arm"] for s in loop.served}):
            before = [
                k
                for k, s in enumerate(loop.served)
                if (s["user"], s["item"], s["arm"]) == (e["user_id"], e["item_id"], arm)
                and s["at"] <= e["ts"]
            ]
            if not before:
                continue
            matched = True
            k = max(before, key=lambda k: (loop.served[k]["at"], k))
            closes = loop.served[k]["at"] + WINDOW
            if e["ts"] > closes or e["arrived"] > closes:
                late[k] += 1
            elif k in labels:
                duplicate[k] += 1
            else:
                labels[k] = e["label"]
        unscored += not matched
    return labels, late, duplicate, unscored


@pytest.fixture()
def loop(tmp_path: Path) -> Any:
    cfg = _config(
        feedback={
            "attribution_window_seconds": WINDOW,
            "retention_seconds": RETENTION,
            "metrics_window_seconds": RETENTION,
        }
    )
    store = SQLiteStore(
        tmp_path / "events.db", feedback=FeedbackSettings.from_config(cfg.serve.feedback)
    )
    clock = Clock(T)
    app = create_api(ItemScoringBackend(store=store), cfg, admin_token=None, clock=clock)
    with TestClient(app) as http:
        yield Loop(http, clock, store)
    store.close()


def _traffic(loop: Loop) -> None:
    """Scores, then events: joins, a retry, late ones (by stamp and by arrival), unscored ones,
    an explicitly requested version, and a score never answered."""
    first = loop.at(T).score("u1", ["i0", "i1", "i2"])
    assert first["request_id"] == first["header"] and len(first["request_id"]) == 32
    assert (first["arm"], first["model_version"]) == ("champion", "1")
    given = loop.score("u2", ["i0", "i3"], headers={"X-Request-ID": "req-u2"})
    assert given["request_id"] == "req-u2"
    shown = loop.at(T + 5).recommend("u3", 2, ["i4", "i5", "i6"])
    assert [i["item_id"] for i in shown["items"]] == ["i4", "i6"]  # i5 scored, not shown
    loop.at(T + 10).post(
        {"user_id": "u1", "item_id": "i0", "label": 1},
        {"user_id": "u1", "item_id": "i1", "label": 0},
        {"user_id": "u2", "item_id": "i0", "label": 0},
        {"user_id": "u3", "item_id": "i4", "label": 1},
        {"user_id": "u3", "item_id": "i5", "label": 1},  # not shown: unscored
        {"user_id": "u1", "item_id": "i9", "label": 0},  # never scored: unscored
    )
    loop.at(T + 20).post({"user_id": "u1", "item_id": "i0", "label": 1, "timestamp": T + 10})
    loop.post(
        {"user_id": "u2", "item_id": "i3", "label": 1, "timestamp": T + WINDOW + 1},  # late
        {"user_id": "u2", "item_id": "i3", "label": 1, "timestamp": T - 5},  # before: unscored
    )
    loop.at(T + 70).post({"user_id": "u3", "item_id": "i6", "label": 1, "timestamp": T + 30})
    explicit = loop.score("u4", ["i7", "i8"], model=f"{NAME}/1")
    assert (explicit["arm"], explicit["model_version"]) == ("explicit", "1")
    loop.at(T + 71).post({"user_id": "u4", "item_id": "i7", "label": 1})
    loop.at(T + 80)


def test_joins_counters_and_metrics_match_the_reference(loop: Loop) -> None:
    _traffic(loop)
    labels, late, duplicate, unscored = reference_join(loop)
    # the reference itself, against the story told in _traffic
    assert sorted(labels.values()) == [0, 0, 1, 1, 1] and unscored == 3
    assert sum(late.values()) == 2 and sum(duplicate.values()) == 1

    rows = loop.store.feedback_rows(0, now=T + 80)
    assert [(r.served.request_id, r.served.user_id, r.served.item_id) for r in rows] == [
        (s["request_id"], s["user"], s["item"]) for s in loop.served
    ]
    for k, (row, s) in enumerate(zip(rows, loop.served, strict=True)):
        assert (row.served.score, row.served.arm, row.served.version) == (
            s["score"], s["arm"], s["version"]
        )  # fmt: skip
        assert (row.served.served_at, row.served.policy) == (s["at"], "recent/recent")
        assert row.label == labels.get(k), (k, s)
        assert (row.late, row.duplicates) == (late[k], duplicate[k]), (k, s)

    report = loop.live(window=RETENTION)
    assert report == loop.live()  # the default window is serve.feedback.metrics_window_seconds
    assert (report["since"], report["now"]) == (T + 80 - RETENTION, T + 80)
    groups = {(g["version"], g["arm"]): g for g in report["arms"]}
    assert list(groups) == [("1", "champion"), ("1", "explicit")]
    for (version, arm), group in groups.items():
        mine = [k for k, s in enumerate(loop.served) if (s["version"], s["arm"]) == (version, arm)]
        joined = [k for k in mine if k in labels]
        y = np.array([labels[k] for k in joined])
        p = np.array([loop.served[k]["score"] for k in joined])
        open_ = [k for k in mine if k not in labels and loop.served[k]["at"] + WINDOW >= T + 80]
        assert group["served"] == len(mine)
        assert group["joined"] == len(joined)
        assert group["pending"] == len(open_)
        assert group["unjoined"] == len(mine) - len(joined) - len(open_)
        assert group["late"] == sum(late[k] for k in mine)
        assert group["duplicate"] == sum(duplicate[k] for k in mine)
        assert group["like_rate"] == pytest.approx(y.mean())
        assert group["logloss"] == pytest.approx(log_loss(y, p, labels=[0, 1]))
        if len(set(y)) == 2:
            assert group["auc"] == pytest.approx(roc_auc_score(y, p))
        else:
            assert group["auc"] is None
    champion, explicit = groups[("1", "champion")], groups[("1", "explicit")]
    assert (champion["joined"], champion["unjoined"], champion["late"]) == (4, 3, 2)
    assert champion["auc"] == pytest.approx(0.625)  # liked 0.9, 0.7 vs disliked 0.2, 0.9
    assert (explicit["joined"], explicit["pending"], explicit["auc"]) == (1, 1, None)
    totals = report["totals"]
    assert totals["unscored"] == 3
    assert totals["arms"] == [
        {"version": "1", "arm": "champion", "served": 7, "joined": 4, "late": 2,
         "duplicate": 1, "expired": 3, "evicted": 0},
        {"version": "1", "arm": "explicit", "served": 2, "joined": 1, "late": 0,
         "duplicate": 0, "expired": 0, "evicted": 0},
    ]  # fmt: skip
    recent = loop.live(window=15)  # since T + 65: only u4's scores
    assert [(g["arm"], g["served"]) for g in recent["arms"]] == [("explicit", 2)]


@pytest.mark.parametrize("window", ["0", str(RETENTION + 1), "abc", "-5"])
def test_a_bad_window_is_a_422_naming_it(loop: Loop, window: str) -> None:
    reply = loop.http.get("/v1/metrics/live", params={"window": window})
    assert reply.status_code == 422, reply.text
    assert "window" in reply.json()["detail"]


@pytest.mark.parametrize("request_id", ["has space", "x" * 65, "é"])
def test_a_bad_request_id_is_a_422_and_nothing_is_logged(loop: Loop, request_id: str) -> None:
    headers = {"X-Request-ID": request_id.encode()}
    for path, body in [
        ("/v1/score", {"user_id": "u", "candidates": ["i0"]}),
        ("/v1/recommend", {"user_id": "u", "k": 1}),
    ]:
        reply = loop.http.post(path, json=body, headers=headers)
        assert reply.status_code == 422, reply.text
        assert reply.json()["detail"].startswith("X-Request-ID:")
    assert loop.store.feedback_rows(0, now=T) == []


def test_exporter_publishes_the_report(loop: Loop) -> None:
    """Every figure of every group lands in its gauge with the version, arm and window tags;
    undefined ones are NaN; the counter adds up what it is given."""
    from recicl.serve.metrics_export import LiveMetricsExporter

    class Recorded:
        def __init__(self, name: str, description: str = "", tag_keys: tuple = ()) -> None:
            self.name, self.tag_keys, self.values = name, tag_keys, {}

        def set(self, value: float, tags: dict[str, str]) -> None:
            assert set(tags) == set(self.tag_keys)
            self.values[tuple(sorted(tags.items()))] = value

        def inc(self, value: float, tags: dict[str, str]) -> None:
            key = tuple(sorted(tags.items()))
            self.values[key] = self.values.get(key, 0) + value

    _traffic(loop)
    report = loop.live()
    exporter = LiveMetricsExporter(Recorded, Recorded)
    exporter.publish(report)
    for group in report["arms"]:
        tags = (("arm", group["arm"]), ("version", "1"), ("window", str(RETENTION)))
        for figure, gauge in exporter.figures.items():
            assert gauge.name == f"recicl_live_{figure}"
            value = gauge.values[tags]
            if group[figure] is None:
                assert math.isnan(value)
            else:
                assert value == group[figure]
    assert exporter.totals.values[(("arm", ""), ("kind", "unscored"), ("version", ""))] == 3
    expired = (("arm", "champion"), ("kind", "expired"), ("version", "1"))
    assert exporter.totals.values[expired] == 3
    exporter.count(Counter({("joined", "1", "champion"): 2}))
    exporter.count(Counter({("joined", "1", "champion"): 1, ("late", "1", "champion"): 0}))
    assert exporter.counts.values == {
        (("arm", "champion"), ("kind", "joined"), ("version", "1")): 3
    }


def test_exporter_on_rays_metrics_api(loop: Loop) -> None:
    """The real classes accept the names, tags and values (a wrong tag raises in Ray)."""
    from recicl.serve.metrics_export import LiveMetricsExporter

    _traffic(loop)
    exporter = LiveMetricsExporter()
    exporter.publish(loop.live())
    exporter.count(Counter({("joined", "1", "champion"): 1}))
    assert exporter.figures["auc"].info["name"] == "recicl_live_auc"
    assert exporter.counts.info["tag_keys"] == ("kind", "version", "arm")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_models_live_logs_to_the_versions_run(loop: Loop, tmp_path: Path) -> None:
    """`recicl models live` reads a running API on 127.0.0.1 and logs the version's figures to
    the MLflow run behind that version; errors are one line and exit 2."""
    import uvicorn
    import yaml
    from typer.testing import CliRunner

    from recicl.cli import app
    from recicl.config import build_config
    from recicl.registry import client, register_model_folder

    _traffic(loop)
    expected = loop.live()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = {"workdir": str(tmp_path / "work"), "mlflow": {"tracking_uri": uri}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    folder = tmp_path / "version"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    version = register_model_folder(build_config(raw), folder)
    run_id = client(uri).get_model_version(NAME, version).run_id

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(loop.http.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        runner = CliRunner()
        base = ["models", "live", "--config", str(tmp_path / "config.yaml"), "--url", url]
        done = runner.invoke(app, [*base, "--version", version, "--window", str(RETENTION)])
        assert done.exit_code == 0, done.output
        unknown = runner.invoke(app, [*base, "--version", "99"])
        assert unknown.exit_code == 2 and "has no version 99" in unknown.output
        bad_window = runner.invoke(app, [*base, "--version", version, "--window", "999999"])
        assert bad_window.exit_code == 2 and "window" in bad_window.output
    finally:
        server.should_exit = True
        thread.join(30)
    gone = runner.invoke(app, [*base, "--version", version])  # nothing listens there now
    assert gone.exit_code == 2 and "cannot reach" in gone.output and "Traceback" not in gone.output

    metrics = client(uri).get_run(run_id).data.metrics
    champion = next(g for g in expected["arms"] if g["arm"] == "champion")
    explicit = next(g for g in expected["arms"] if g["arm"] == "explicit")
    assert metrics[f"live.champion.{RETENTION}s.auc"] == pytest.approx(champion["auc"])
    assert metrics[f"live.champion.{RETENTION}s.logloss"] == pytest.approx(champion["logloss"])
    assert metrics[f"live.champion.{RETENTION}s.joined"] == champion["joined"]
    assert metrics[f"live.explicit.{RETENTION}s.like_rate"] == explicit["like_rate"]
    assert f"live.explicit.{RETENTION}s.auc" not in metrics  # null (one class): not logged
    history = client(uri).get_metric_history(run_id, f"live.champion.{RETENTION}s.auc")
    assert [m.step for m in history] == [T + 80]


def test_ingress_backend_logs_joins_and_refreshes_the_gauges(tmp_path: Path) -> None:
    """The Serve ingress's own feedback methods (no Serve needed to construct it): scores and
    events reach the configured store, and events schedule one gauge refresh per interval."""
    import asyncio

    from recicl.config import build_config
    from recicl.serve.ingress import IngressBackend
    from recicl.serve.settings import resolve_settings
    from recicl.serve.store import Event
    from recicl.serve.store.feedback import ServedScore

    fb = {
        "attribution_window_seconds": WINDOW,
        "retention_seconds": RETENTION,
        "metrics_window_seconds": 300,
    }
    cfg = build_config({"workdir": str(tmp_path), "serve": {"feedback": fb}})
    backend = IngressBackend(None, resolve_settings(cfg))
    published: list[dict[str, Any]] = []
    backend._exporter.publish = published.append

    async def run() -> tuple[Counter, dict[str, Any]]:
        served = [ServedScore("r1", "u", i, "3", "champion", "recent/recent", s, T)
                  for i, s in (("a", 0.8), ("b", 0.3))]  # fmt: skip
        await backend.record_served(served, T)
        first = await backend.record_outcomes([Event("u", "a", 1, T + 1)], T + 1)
        second = await backend.record_outcomes([Event("u", "b", 0, T + 2)], T + 2)
        while backend._background:  # the refresh runs off the events' path
            await asyncio.sleep(0.01)
        return first + second, await backend.live_metrics(RETENTION, T + 3)

    counts, report = asyncio.run(run())
    assert counts == Counter({("joined", "3", "champion"): 2})
    assert backend.store.url == f"sqlite:///{tmp_path.resolve() / 'events.db'}"
    # one refresh for the two events (30 s interval) with the default window, then the request
    assert [r["window_seconds"] for r in published] == [300, RETENTION]
    [group] = report["arms"]
    assert (group["version"], group["joined"], group["auc"]) == ("3", 2, 1.0)
    backend.store.close()
