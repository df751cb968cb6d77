"""Registry reads off the request path: entries served while they are revalidated, with timeouts.

The ingress asks MLflow three things: which version an alias or a version number names (a
request's ``model``), the admin traffic setting (a tag of the registered model, read for every
scoring request) and the versions listing (``GET /v1/models``). Asked on the request's path, a
slow or unreachable MLflow would make every such request as slow as MLflow, and a down one would
fail them all, although the answers rarely change. So :class:`RegistryCache` holds one answer per
key ("stale-while-revalidate"):

* a held answer younger than the TTL (``serve.alias_poll_seconds``) is served as it is;
* an older one is still served, and one refresh per key starts in the background;
* only the *first* lookup of a key waits (nothing to serve yet), for at most ``timeout_s``; after
  a failed first lookup callers are refused at once (:class:`RegistryUnavailableError`) and the
  key is retried in the background, at most every ``negative_ttl_s``;
* a failed refresh keeps the last known answer and records the failure: serving goes on with
  the last known versions, and :meth:`RegistryCache.status` says since when MLflow is silent;
* ``None`` answers (no such alias or version) are held too, for a shorter time
  (``negative_ttl_s``), so repeated unknown references do not reach MLflow once per request.

Every registry call runs in a thread of the cache's own small pool and is awaited through
``asyncio.wait_for(asyncio.shield(...))``. The thread itself cannot be cancelled: a call stuck on
a hung MLflow holds one worker thread until MLflow's own HTTP timeout
(``MLFLOW_HTTP_REQUEST_TIMEOUT``, times its retries) gives up. That is why a key never has two
calls in flight (a refresh after a timeout waits for the same call again instead of starting
another, so hung calls cannot pile up), why the pool is not asyncio's default executor (the
store's calls use that one and must not queue behind the registry), and why an answer that
arrives after its timeout is still taken. The keys are the caller's to bound: the ingress asks
only for references ``serve.selectable_models`` allows, the listing and the traffic tag.

The reads themselves (:func:`read_version`, :func:`read_versions`, :func:`read_model_tag`) tell
"the registry has no such thing" (``None``, an answer) from "the registry did not answer" (an
exception, a failure): before, both were ``None``, so an MLflow outage turned every request
naming a model into a 404 ``model_not_found``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

log = logging.getLogger("recicl.serve")

V = TypeVar("V")

#: Default seconds one registry call may keep a caller (or a background refresh) waiting
#: (``serve.registry_timeout_seconds``). MLflow answers these reads in milliseconds; one that
#: takes seconds is treated as unreachable (its late answer is still taken).
REGISTRY_TIMEOUT_SECONDS = 5.0

#: Seconds a ``None`` answer (no such alias or version) is held, and how often a key that has
#: never been answered is retried while the registry fails. Shorter than the alias poll: an
#: alias registered a moment ago should soon be found. Capped by the cache's TTL.
NEGATIVE_TTL_SECONDS = 2.0

#: ``Retry-After`` of a 503 for a reference the unreachable registry never answered: the fail-fast
#: window plus a background retry, about the store's 5 s.
REGISTRY_RETRY_AFTER_SECONDS = 5

#: How long a replica starting up waits for its first registry answers (a model replica's alias,
#: an ingress's traffic tag). Serve routes no request to a replica until its start (constructor,
#: first ``reconfigure``, ASGI lifespan) returns, so waiting here costs no request; starting
#: without the answer does: a model replica with nothing loaded answers 503, an ingress without
#: the traffic tag routes a split's users to the wrong arm. A fresh process's first MLflow call
#: builds its SQL engine (3.1-3.2 s on an idle 2-core box, past the 5 s timeout under load).
#: Bounded all the same: a hung registry must not keep a replica starting for ever.
START_LOOKUP_TIMEOUT_SECONDS = 120.0

#: Threads for registry calls. At most one call per key is in flight, and the ingress has a few
#: keys (the allowed references, the listing, the traffic tag); more keys queue here.
REGISTRY_THREADS = 4

#: MLflow error codes meaning "no such registered model, alias or version": an answer, not a
#: failure (an unknown alias is INVALID_PARAMETER_VALUE, an unknown version or model
#: RESOURCE_DOES_NOT_EXIST). Anything else (a connection error is INTERNAL_ERROR) is a failure.
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})

RegistryState = Literal["ok", "unreachable", "unknown"]


class RegistryUnavailableError(Exception):
    """The registry did not answer and nothing is known for ``key``: the HTTP layer answers 503
    ``registry_unavailable`` with ``Retry-After`` (the cause is logged, never sent)."""

    def __init__(self, key: str, cause: str | None) -> None:
        super().__init__(f"registry unavailable for {key}: {cause or 'no answer yet'}")
        self.key, self.cause = key, cause


@dataclass(frozen=True)
class RegistryStatus:
    """How the registry answered lately (``/healthz``, ``/v1/models``): ``ok`` when its most
    recent call answered, ``unreachable`` when a call failed or timed out since, ``unknown``
    before any call; ``last_answer_s``: seconds since it last answered (None: never)."""

    state: RegistryState
    last_answer_s: float | None

    def to_json(self) -> dict[str, Any]:
        age = None if self.last_answer_s is None else round(self.last_answer_s, 3)
        return {"registry": self.state, "registry_last_answer_s": age}


class _Entry:
    """One key: its answer (when known), when it was answered, and its refresh."""

    __slots__ = ("answered_at", "call", "error", "expires", "known", "refresh", "value")

    def __init__(self) -> None:
        self.known = False
        self.value: Any = None
        self.answered_at: float | None = None
        self.expires = 0.0  # monotonic time to revalidate (or, unknown after a failure, retry)
        self.error: str | None = None  # the last failure, cleared by an answer
        self.call: asyncio.Future[Any] | None = None  # the thread's call; may outlive a timeout
        self.refresh: asyncio.Task[None] | None = None  # waits for ``call``, bounded


class RegistryCache:
    """Registry answers by key, served while revalidated in the background (module docstring).

    ``ttl_s``: how long an answer is fresh; ``timeout_s``: the longest a caller or a refresh
    waits for one call; ``negative_ttl_s``: how long ``None`` answers are fresh and how often an
    unanswered key is retried (capped by ``ttl_s``); ``clock``: monotonic seconds (tests step it).
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        timeout_s: float = REGISTRY_TIMEOUT_SECONDS,
        negative_ttl_s: float = NEGATIVE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        threads: int = REGISTRY_THREADS,
    ) -> None:
        self.ttl_s, self.timeout_s = ttl_s, timeout_s
        self.negative_ttl_s = min(negative_ttl_s, ttl_s)
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="recicl-registry")
        self._answered_at: float | None = None  # the registry's last answer, any key
        self._failed_at: float | None = None  # its last failure (or timeout), any key

    async def get(self, key: str, load: Callable[[], V], *, none_ttl_s: float | None = None) -> V:
        """The answer for ``key``; ``load`` (blocking, run in a thread) asks the registry.

        Waits only on the first lookup of ``key`` (at most ``timeout_s``); raises
        :class:`RegistryUnavailableError` when the registry has never answered for ``key``.
        ``none_ttl_s``: how long a ``None`` answer is fresh (default ``negative_ttl_s``; e.g. an
        absent tag is the normal case, not an unknown reference)."""
        entry = self._entries.setdefault(key, _Entry())
        due = self.clock() >= entry.expires
        if entry.known:
            if due:
                self._revalidate(entry, load, none_ttl_s)
            return cast("V", entry.value)
        if entry.error is not None:  # failed before: refuse now, retry in the background
            if due:
                self._revalidate(entry, load, none_ttl_s)
            raise RegistryUnavailableError(key, entry.error)
        self._revalidate(entry, load, none_ttl_s)  # the first lookup (or joins it)
        assert entry.refresh is not None
        await asyncio.shield(entry.refresh)  # a caller that goes away leaves it running
        if entry.known:
            return cast("V", entry.value)
        raise RegistryUnavailableError(key, entry.error)

    async def prime(
        self,
        key: str,
        load: Callable[[], Any],
        *,
        wait_s: float = START_LOOKUP_TIMEOUT_SECONDS,
        none_ttl_s: float | None = None,
    ) -> bool:
        """The first lookup of ``key`` at a replica's start, waited for up to ``wait_s``
        (:data:`START_LOOKUP_TIMEOUT_SECONDS`), longer than a caller's ``timeout_s``: it runs
        before the replica takes traffic. Returns whether the registry answered."""
        entry = self._entries.setdefault(key, _Entry())
        self._revalidate(entry, load, none_ttl_s)
        assert entry.refresh is not None
        await asyncio.shield(entry.refresh)  # bounded by timeout_s; the call itself may go on
        call = entry.call
        if not entry.known and call is not None and not call.done():
            with contextlib.suppress(Exception):  # a timeout or a failure: recorded below
                await asyncio.wait_for(asyncio.shield(call), max(0.0, wait_s - self.timeout_s))
            if call.done():
                self._settle(entry, call, none_ttl_s)  # at once, not when its callback runs
        return entry.known

    def revalidate(
        self, key: str, load: Callable[[], Any], *, none_ttl_s: float | None = None
    ) -> None:
        """Start a refresh of ``key`` when it is due (or was never asked); never waits."""
        entry = self._entries.setdefault(key, _Entry())
        if self.clock() >= entry.expires:
            self._revalidate(entry, load, none_ttl_s)

    def put(self, key: str, value: Any, *, none_ttl_s: float | None = None) -> None:
        """Hold ``value`` as the registry's answer now (after writing it there ourselves); a
        read still in flight began before the write, so its answer is dropped."""
        entry = self._entries.setdefault(key, _Entry())
        entry.call = None  # _settle ignores a call that is no longer the entry's
        self._answer(entry, value, none_ttl_s)

    def expire(self) -> None:
        """Revalidate every key on its next lookup (``POST /admin/reload``), still serving what
        is held meanwhile: dropping it would lose the last known answers if MLflow is down."""
        for entry in self._entries.values():
            entry.expires = 0.0

    def age(self, key: str) -> float | None:
        """Seconds since the registry answered ``key`` (None: never)."""
        entry = self._entries.get(key)
        if entry is None or entry.answered_at is None:
            return None
        return max(0.0, self.clock() - entry.answered_at)

    def status(self) -> RegistryStatus:
        """``ok`` / ``unreachable`` / ``unknown`` by the registry's latest call, any key."""
        answered, failed = self._answered_at, self._failed_at
        age = None if answered is None else max(0.0, self.clock() - answered)
        if failed is not None and (answered is None or failed >= answered):
            return RegistryStatus("unreachable", age)
        return RegistryStatus("ok" if answered is not None else "unknown", age)

    async def drain(self) -> None:
        """Wait for the refreshes in flight (each bounded by ``timeout_s``); tests use it."""
        pending = [e.refresh for e in self._entries.values() if e.refresh and not e.refresh.done()]
        await asyncio.gather(*pending, return_exceptions=True)

    def close(self) -> None:
        """Wait for no call: cancel what is in flight and let the pool's threads end when their
        calls return (a thread stuck on MLflow cannot be stopped)."""
        for entry in self._entries.values():
            for pending in (entry.refresh, entry.call):
                if pending is not None and not pending.done():
                    pending.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- one refresh per key -----------------------------------------------------------------

    def _revalidate(self, entry: _Entry, load: Callable[[], Any], none_ttl_s: float | None) -> None:
        if entry.refresh is None or entry.refresh.done():
            loop = asyncio.get_running_loop()
            entry.refresh = loop.create_task(self._refresh(entry, load, none_ttl_s))

    async def _refresh(
        self, entry: _Entry, load: Callable[[], Any], none_ttl_s: float | None
    ) -> None:
        """Ask the registry once for ``entry``, waiting at most ``timeout_s``; a call still
        running after an earlier timeout is waited for again rather than doubled."""
        call = entry.call
        if call is None or call.done():
            call = asyncio.get_running_loop().run_in_executor(self._executor, load)
            entry.call = call
            # an answer arriving after the timeout below is taken all the same
            call.add_done_callback(lambda done: self._settle(entry, done, none_ttl_s))
        try:
            await asyncio.wait_for(asyncio.shield(call), self.timeout_s)
        except asyncio.TimeoutError:  # not yet the builtin TimeoutError on Python 3.10
            self._fail(entry, f"no answer within {self.timeout_s:g} s")
        except Exception:  # _settle records it (the done callback may not have run yet)
            self._settle(entry, call, none_ttl_s)
        else:
            self._settle(entry, call, none_ttl_s)

    def _settle(self, entry: _Entry, call: asyncio.Future[Any], none_ttl_s: float | None) -> None:
        """Record a finished call once (the waiter and the done callback both report it)."""
        if call.cancelled() or entry.call is not call:
            return
        entry.call = None  # settled: the next refresh starts a new call
        error = call.exception()
        if error is None:
            self._answer(entry, call.result(), none_ttl_s)
        else:
            self._fail(entry, f"{type(error).__name__}: {error}")

    def _answer(self, entry: _Entry, value: Any, none_ttl_s: float | None) -> None:
        now = self.clock()
        if value is None:
            ttl = self.negative_ttl_s if none_ttl_s is None else none_ttl_s
        else:
            ttl = self.ttl_s
        entry.known, entry.value, entry.answered_at = True, value, now
        entry.expires, entry.error = now + ttl, None
        self._answered_at = now

    def _fail(self, entry: _Entry, reason: str) -> None:
        """Keep what is held; revalidate a held answer after a TTL, retry an unknown key sooner
        (callers are refused meanwhile, so a retry costs them nothing)."""
        now = self.clock()
        entry.error, self._failed_at = reason, now
        entry.expires = now + (self.ttl_s if entry.known else self.negative_ttl_s)
        if entry.answered_at is None:
            log.warning("model registry did not answer: %s", reason)
        else:
            age = now - entry.answered_at
            log.warning(
                "model registry did not answer: %s; serving its answer of %.0f s ago", reason, age
            )


# -- the reads the ingress caches ----------------------------------------------------------------


def _not_found(error: Exception) -> bool:
    return getattr(error, "error_code", None) in NOT_FOUND_CODES


def read_version(
    tracking_uri: str, name: str, *, alias: str | None = None, version: str | None = None
) -> str | None:
    """The version number ``alias`` (or ``version``) of ``name`` names; None when the registry
    has no such model, alias or version. Raises when the registry does not answer."""
    from mlflow.exceptions import MlflowException

    from recicl.registry import client

    mlc = client(tracking_uri)
    try:
        if alias is not None:
            return str(mlc.get_model_version_by_alias(name, alias).version)
        return str(mlc.get_model_version(name, str(version)).version)
    except MlflowException as error:
        if _not_found(error):
            return None
        raise


def read_versions(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """The registry's versions of ``name`` with their aliases, newest first ([] when ``name``
    is not registered). Raises when the registry does not answer."""
    from mlflow.exceptions import MlflowException

    from recicl.registry import client

    mlc = client(tracking_uri)
    found = mlc.search_model_versions(f"name='{name}'", max_results=100)
    # search results carry no aliases: the registered model has the alias → version map
    try:
        aliases = mlc.get_registered_model(name).aliases or {}
    except MlflowException as error:
        if not _not_found(error):
            raise
        aliases = {}
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = [
        {
            "version": str(v.version),
            "aliases": sorted(by_version.get(str(v.version), [])),
            "run_id": v.run_id,
            "created": v.creation_timestamp,
            "tags": dict(v.tags or {}),
        }
        for v in found
    ]
    return sorted(rows, key=lambda r: -int(r["version"]))


def read_model_tag(tracking_uri: str, name: str, tag: str) -> str | None:
    """The registered model's tag ``tag`` (None: no such tag, or no such model)."""
    from mlflow.exceptions import MlflowException

    from recicl.registry import client

    try:
        model = client(tracking_uri).get_registered_model(name)
    except MlflowException as error:
        if _not_found(error):
            return None
        raise
    value = (model.tags or {}).get(tag)
    return None if value is None else str(value)
