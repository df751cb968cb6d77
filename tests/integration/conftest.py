"""Fixtures shared by integration modules: a private redis-server and a store URL per backend
(the store tests), and the Serve app of a module's `world` (serving tests)."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.test_store import NO_REDIS, RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip(NO_REDIS)
    pytest.importorskip("redis", reason="the redis client is missing: pip install 'recicl[redis]'")
    server = RedisServer(exe, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def url(request, tmp_path) -> str:
    """The same test on a SQLite file and on a flushed private redis-server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    server = request.getfixturevalue("redis_server")
    server.flush()
    return server.url


@pytest.fixture(scope="module")
def server(world):
    """The recicl Serve app of the requesting module's ``world`` fixture on a free loopback
    port, for the module (test_serve.py, test_live_replay.py)."""
    from tests.integration.test_serve import Server

    srv = Server(world.cfg)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
