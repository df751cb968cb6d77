"""Serving through an outage of both of its dependencies, on real ones: a real ``mlflow server``
(the registry, over HTTP) and a real redis-server (the interaction store), both on 127.0.0.1.

The ingress is the Serve app's own (:class:`recicl.serve.ingress.IngressBackend` and the routes
it builds); only the model deployment is a stand-in (a handle answering ``info``/``score`` with a
fixed score), since neither outage involves it and a model replica is tested in test_serve.py.

The story: both up → MLflow stops (named versions it resolved are still served, ``/healthz``
says the registry is unreachable) → Redis stops too (writes and reads of the context are 503
with ``Retry-After``, no internals in the body) → both come back (writes succeed again, the events
stored before the outage are all there, the registry is ``ok`` again).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recicl.data.schema import CATALOG
from recicl.serve.api.backend import ModelJob, ModelReply
from tests.integration.test_store import RedisServer

pytestmark = pytest.mark.integration

NAME = "recicl"
ITEMS = [f"i{k}" for k in range(5)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """``mlflow server`` on a SQLite registry, loopback only; stop() and start() again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import requests

        mlflow = Path(sys.executable).with_name("mlflow")
        args = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'db'}"]
        args += ["--default-artifact-root", (self.folder / "artifacts").as_uri()]
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (kept by the process)
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.uri}/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = (self.folder / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow server did not start on port {self.port}:\n{text}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class _Method:
    """``handle.<method>.remote(...)``: awaitable, as a Serve deployment handle's."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            return self.fn(*args)

        return call()


class ModelStandIn:
    """The model deployment's handle: version 1 of ``recicl``, every candidate scored 0.5."""

    def __init__(self, catalog: Path) -> None:
        self.catalog = str(catalog)
        self.info = _Method(
            lambda: {"model_version": "1", "catalog_path": self.catalog, "rating_range": None}
        )
        self.score = _Method(self._score)

    def _score(self, job: ModelJob) -> ModelReply:
        candidates = job.candidates or tuple(ITEMS)
        return ModelReply(
            model_version="1",
            model=f"{NAME}/1",
            catalog_path=self.catalog,
            scores=tuple((item, 0.5) for item in candidates),
            context_events=len(job.events),
        )

    def options(self, **_: Any) -> ModelStandIn:
        return self


@pytest.fixture()
def services(redis_server: RedisServer, tmp_path: Path) -> Any:
    from recicl.registry import client

    redis_server.flush()
    mlflow = MlflowServer(tmp_path)
    mlc = client(f"sqlite:///{tmp_path / 'db'}")  # the server's own database, made beforehand
    mlc.create_registered_model(NAME)
    mlc.create_model_version(NAME, (tmp_path / "version").as_uri())
    mlc.set_registered_model_alias(NAME, "challenger", "1")
    mlflow.start()
    try:
        yield mlflow, redis_server
    finally:
        mlflow.stop()
        if redis_server.proc is None or redis_server.proc.poll() is not None:
            redis_server.start()  # the module's other tests keep their server


def _eventually(check: Any, seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_serving_rides_out_mlflow_and_redis_outages_and_loses_nothing(
    services: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from recicl.config import build_config
    from recicl.serve.ingress import IngressBackend
    from recicl.serve.settings import resolve_settings

    mlflow, redis_server = services
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    catalog = tmp_path / "catalog.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": ITEMS,
                "title": [f"Film {item}" for item in ITEMS],
                "attributes": pa.array([[] for _ in ITEMS], pa.map_(pa.string(), pa.string())),
            },
            schema=CATALOG,
        ),
        catalog,
    )
    cfg = build_config(
        {
            "workdir": str(tmp_path / "work"),
            "mlflow": {"tracking_uri": mlflow.uri, "registered_model": NAME},
            "serve": {
                "store_url": redis_server.url,
                "alias_poll_seconds": 0.5,
                "registry_timeout_seconds": 1.0,
                "selectable_models": ["challenger"],
            },
        }
    )
    backend = IngressBackend(ModelStandIn(catalog), resolve_settings(cfg))
    named = {"user_id": "u", "candidates": ["i1", "i2"], "model": f"{NAME}@challenger"}

    def event(item: str) -> dict[str, Any]:
        return {"user_id": "u", "item_id": item, "label": 1}

    with TestClient(backend.__serve_build_asgi_app__(), raise_server_exceptions=False) as http:
        # both up
        assert http.post("/v1/events", json=event("i0")).status_code == 200
        up = http.post("/v1/score", json=named)
        assert up.status_code == 200, up.text
        assert http.get("/healthz").json()["registry"] == "ok"

        # MLflow down: the version it named is still served, and health says why
        mlflow.stop()
        time.sleep(0.6)  # past alias_poll_seconds: the next reads revalidate, and fail
        held = http.post("/v1/score", json=named)
        assert held.status_code == 200, held.text
        assert held.json()["model_version"] == "1"
        health = _eventually(lambda: http.get("/healthz").json()["registry"] == "unreachable")
        assert health, http.get("/healthz").text
        assert http.get("/healthz").status_code == 200  # reported, not fatal
        assert http.post("/v1/events", json=event("i1")).status_code == 200  # the store is up

        # Redis down too: refusals that pass, with Retry-After and nothing internal
        redis_server.stop()
        for path, body in (("/v1/events", event("i2")), ("/v1/score", named)):
            reply = http.post(path, json=body)
            assert reply.status_code == 503, (path, reply.text)
            assert reply.json()["error"] == "store_unavailable"
            assert int(reply.headers["Retry-After"]) > 0
            for internal in (str(redis_server.port), "Redis", "ConnectionError", mlflow.uri):
                assert internal not in reply.text, (path, internal)
        down = http.get("/healthz")
        assert down.status_code == 503 and down.json()["store"] == "unavailable"

        # both back: writes succeed, nothing stored before the outage is lost
        redis_server.start()
        mlflow.start()
        assert http.post("/v1/events", json=event("i3")).status_code == 200
        items = [e.item_id for e in backend.store.latest("u", 10)]
        assert items == ["i0", "i1", "i3"], items  # i2 was refused, never half-written
        again = http.post("/v1/score", json=named)
        assert again.status_code == 200 and again.json()["context_events"] == 3, again.text
        recovered = _eventually(lambda: http.get("/healthz").json()["registry"] == "ok")
        assert recovered, http.get("/healthz").text
    backend.store.close()
