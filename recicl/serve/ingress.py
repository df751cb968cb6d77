"""The ingress deployment: the HTTP routes over Serve handles, the store and the registry.

:class:`IngressBackend` implements :class:`~recicl.serve.api.backend.ApiBackend`: it calls the
model deployment by handle (explicit versions as multiplexed model ids), reads and writes the
interaction store, and looks model references up in the registry. Small caches keep the hot path
cheap: the served catalog (keyed by its path, refreshed when a reply names another one), the
recent-popular pool (``serve.recent_cache_seconds``) and the registry's answers (model
references, the versions listing, the traffic tag: :mod:`recicl.serve.registry_cache`, served
while revalidated every alias-poll interval, so MLflow is off the request path and an MLflow
outage leaves serving on the last known versions, reported by ``/healthz``).
It also keeps the feedback log (served scores, joined with the events that answer them) and
exports live metrics as Prometheus metrics (:mod:`recicl.serve.metrics_export`). The admin traffic
setting (shadow/split, :mod:`recicl.serve.traffic`) is a tag of the registered model, read again
every alias-poll interval (the same cache), so all ingress replicas follow one
``PUT /admin/traffic``. Catalog items added while serving (``POST /admin/items``) are written to
the store and known to this ingress at once; other ingress replicas read them from the store
when an event names an id they do not know, and every job carries the store revision its events
were validated against, so the model replica that scores it catches up first (it checks the
candidates itself, with the same rule: :mod:`recicl.serve.catalog_items`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.exceptions import BackPressureError

from recicl.config import TrafficConfig
from recicl.registry import client
from recicl.serve.api.access import AccessGuard, counter_storage_uri
from recicl.serve.api.backend import (
    ModelError,
    ModelJob,
    ModelRef,
    ModelReply,
    ModelStatus,
    RegistryListing,
    ServedVersion,
)
from recicl.serve.api.routes import create_api
from recicl.serve.live_metrics import live_report
from recicl.serve.metrics_export import LiveMetricsExporter
from recicl.serve.registry_cache import (
    RegistryCache,
    RegistryStatus,
    RegistryUnavailableError,
    read_model_tag,
    read_version,
    read_versions,
)
from recicl.serve.settings import API_DEPLOYMENT, ServeSettings
from recicl.serve.store import CatalogItem, Event, open_store
from recicl.serve.store.feedback import (
    FeedbackCounts,
    FeedbackSettings,
    ServedScore,
    served_counts,
)
from recicl.serve.traffic import TRAFFIC_TAG, decode_override, encode_override

log = logging.getLogger(__name__)

#: ``Retry-After`` of a 503 ``overloaded``: Serve's queues drain in a batch or two.
OVERLOADED_RETRY_AFTER_SECONDS = 1


@dataclass
class _Cached:
    value: Any
    expires: float


def _catalog_ids(path: str) -> frozenset[str]:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["item_id"]).column("item_id").to_pylist()
    return frozenset(str(i) for i in column if i is not None)


class IngressBackend:
    """HTTP ingress: the routes of :func:`create_api` over the model handle and the store."""

    def __init__(self, model: Any, settings: ServeSettings) -> None:
        self.model = model  # DeploymentHandle of the model deployment
        self.cfg = settings.recicl_config()
        self.sc = self.cfg.serve
        self.settings = settings
        self.store = open_store(
            settings.store_url,
            max_events_per_user=self.sc.max_events_per_user,
            feedback=FeedbackSettings.from_config(self.sc.feedback),
        )
        self._exporter = LiveMetricsExporter()
        self._gauges_due = 0.0  # monotonic time the Prometheus gauges are next recomputed
        self._background: set[asyncio.Task[None]] = set()
        self._last_version: str | None = None  # of the newest reply, whichever version
        self._served_version: str | None = None  # behind the served alias (see _note_served)
        self._served: tuple[str, frozenset[str]] | None = None  # (catalog path, item ids)
        self._rating_range: tuple[float, float] | None = None
        self._catalog_lock = asyncio.Lock()
        # catalog items added while serving: the store revision read up to, their ids, and
        # (catalog path, revision, trained | added ids) so the union is made once per change
        self._items_revision: int | None = None  # None: not read yet
        self._added: set[str] = set()
        self._known: tuple[str, int, frozenset[str]] | None = None
        self._recent: _Cached | None = None
        # model references, the versions listing and the traffic tag, off the request path
        self._registry = RegistryCache(
            self.sc.alias_poll_seconds, timeout_s=self.sc.registry_timeout_seconds
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        access = AccessGuard(
            self.sc.access, self.settings.write_token, counter_storage_uri(self.settings.store_url)
        )
        return create_api(
            self,
            self.cfg,
            admin_token=self.settings.admin_token,
            access=access,
            on_start=self.prime_registry,
        )

    async def prime_registry(self) -> None:
        """Before this replica takes traffic: read the traffic tag, waiting longer than a
        request would (:meth:`RegistryCache.prime`). Without it, a replica started by a scale-up
        on a busy machine timed its first read out and routed a live split's users by
        ``serve.traffic`` until the next read: other arms than its peers gave them."""
        known = await self._registry.prime(
            self._traffic_key, self._read_traffic_tag, none_ttl_s=self._poll
        )
        if not known:
            log.warning("traffic tag not read at start; routing by serve.traffic until it is")

    # -- ApiBackend ------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    @property
    def last_version(self) -> str | None:
        return self._last_version

    async def _note_served(
        self, version: str | None, catalog_path: str | None, scale: Any = None
    ) -> None:
        """Remember the served version, its scale and its catalog (re-read when the path
        changes, i.e. after a promotion to a version trained on other samples)."""
        if version is None or catalog_path is None:
            return
        self._last_version = self._served_version = version
        self._rating_range = (float(scale[0]), float(scale[1])) if scale else None
        if self._served is None or self._served[0] != catalog_path:
            async with self._catalog_lock:
                if self._served is None or self._served[0] != catalog_path:
                    ids = await asyncio.to_thread(_catalog_ids, catalog_path)
                    self._served = (catalog_path, ids)

    async def _note_info(self, info: dict[str, Any]) -> None:
        await self._note_served(
            info.get("model_version"), info.get("catalog_path"), info.get("rating_range")
        )

    async def served_version(self, refresh_items: bool = False) -> ServedVersion | None:
        if self._served is None:
            await self._note_info(await self.model.info.remote())
        if self._served is None or self._served_version is None:
            return None  # no model loaded yet: nothing to validate against
        if refresh_items or self._items_revision is None:
            await self._read_added_items()
        path, trained = self._served
        revision = self._items_revision or 0
        if self._known is None or self._known[:2] != (path, revision):
            self._known = (path, revision, trained | self._added)
        # the alias's version: an explicitly requested version answering since then
        # (`model` in a request) does not own the catalog and scale checked here
        return ServedVersion(self._served_version, self._known[2], self._rating_range)

    async def _read_added_items(self) -> None:
        revision, items = await asyncio.to_thread(self.store.items_since, self._items_revision or 0)
        self._added.update(item.item_id for item in items)
        self._items_revision = max(revision, self._items_revision or 0)

    async def add_items(self, items: list[CatalogItem]) -> dict[str, Any]:
        revision = await asyncio.to_thread(self.store.put_items, items)  # one transaction
        await self._read_added_items()  # this ingress knows them before it answers
        try:
            reply: dict[str, Any] | ModelError = await self.model.add_items.remote(revision)
        except Exception as error:  # e.g. a replica restarting: it reads them when it loads
            reply = ModelError(503, "model_unavailable", f"{type(error).__name__}: {error}")
        if isinstance(reply, ModelError):  # stored all the same: replicas catch up later
            return {"items_revision": revision, "served": {"error": reply.detail}}
        return {"items_revision": revision, "served": reply}

    async def lookup_version(self, ref: ModelRef) -> str | None:
        """From the registry cache: an unknown reference is held for a short time (it may be
        registered soon), a known one for an alias poll; MLflow down with nothing known for
        ``ref`` raises :class:`RegistryUnavailableError` (503 with ``Retry-After``)."""
        uri, name = self.settings.tracking_uri, self.model_name
        if ref.alias is not None:
            alias = ref.alias
            return await self._registry.get(
                f"alias:{alias}", lambda: read_version(uri, name, alias=alias)
            )
        number = str(int(ref.version or "0"))  # one key for "7" and "007"
        return await self._registry.get(
            f"version:{number}", lambda: read_version(uri, name, version=number)
        )

    async def score(self, job: ModelJob, version: str | None) -> ModelReply | ModelError:
        if self._items_revision:  # the replica must know the added items this job was checked on
            job = dataclasses.replace(job, items_revision=self._items_revision)
        handle = self.model if not version else self.model.options(multiplexed_model_id=version)
        try:
            reply: ModelReply | ModelError = await handle.score.remote(job)
        except BackPressureError:  # load shedding (max_queued_requests): a refusal that passes
            return ModelError(
                503,
                "overloaded",
                "the model replicas are busy (their queue is full); retry after "
                f"{OVERLOADED_RETRY_AFTER_SECONDS} s",
                model_version=version,
                retry_after=OVERLOADED_RETRY_AFTER_SECONDS,
            )
        if isinstance(reply, ModelReply):
            self._last_version = reply.model_version
            if version is None:  # the served alias answered: its catalog may have moved
                await self._note_served(reply.model_version, reply.catalog_path, reply.rating_range)
        return reply

    async def latest_events(self, user_id: str) -> list[Event]:
        return await asyncio.to_thread(self.store.latest, user_id, self.sc.context_events)

    async def append_events(self, events: list[Event]) -> int:
        return await asyncio.to_thread(self.store.append, events)

    async def seen_items(self, user_id: str) -> set[str]:
        return await asyncio.to_thread(self.store.seen_items, user_id)

    async def recent_items(self) -> list[str]:
        now = time.monotonic()
        if self._recent is None or self._recent.expires <= now:
            since = int(time.time()) - self.sc.recent_window_seconds
            limit = self.sc.candidate_pool_size * 4 + 100  # room for the user's seen items
            rows = await asyncio.to_thread(self.store.recent_items, since, limit)
            self._recent = _Cached([item for item, _ in rows], now + self.sc.recent_cache_seconds)
        return list(self._recent.value)

    async def model_status(self) -> ModelStatus:
        info: dict[str, Any] = await self.model.info.remote()
        await self._note_info(info)
        return ModelStatus(info.get("model_version"), info)

    async def registry_versions(self) -> RegistryListing:
        uri, name = self.settings.tracking_uri, self.model_name
        rows = await self._registry.get("versions", lambda: read_versions(uri, name))
        return RegistryListing(rows, self._registry.age("versions") or 0.0)

    async def registry_status(self) -> RegistryStatus:
        """Also revalidates the traffic tag when due, never waiting: with no scoring traffic,
        the health probes alone keep the registry's state current (and never call MLflow on
        their own path)."""
        self._registry.revalidate(self._traffic_key, self._read_traffic_tag, none_ttl_s=self._poll)
        return self._registry.status()

    async def store_healthy(self) -> bool:
        return await asyncio.to_thread(self.store.health)

    async def record_served(self, scores: list[ServedScore], now: int) -> None:
        await asyncio.to_thread(self.store.record_served, scores, now)
        self._exporter.count(served_counts(scores))

    async def record_outcomes(self, events: list[Event], now: int) -> FeedbackCounts:
        counts = await asyncio.to_thread(self.store.record_outcomes, events, now)
        self._exporter.count(counts)
        self._refresh_gauges_soon(now)
        return counts

    async def live_metrics(self, window_s: int, now: int) -> dict[str, Any]:
        report = await asyncio.to_thread(live_report, self.store, window_s, now)
        self._exporter.publish(report)
        return report

    def _refresh_gauges_soon(self, now: int) -> None:
        """Recompute the default window's gauges in the background, at most once per
        ``serve.feedback.metrics_refresh_seconds``: events are what change them, and the
        events response must not wait for a read of the whole window."""
        fb = self.sc.feedback
        if fb.metrics_refresh_seconds <= 0 or time.monotonic() < self._gauges_due:
            return
        self._gauges_due = time.monotonic() + fb.metrics_refresh_seconds

        async def refresh() -> None:
            try:
                await self.live_metrics(fb.metrics_window_seconds, now)
            except Exception as error:  # the gauges wait for the next refresh; events are safe
                log.warning("live metrics not refreshed: %s: %s", type(error).__name__, error)

        task = asyncio.get_running_loop().create_task(refresh())
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)

    @property
    def _traffic_tag(self) -> str:
        return f"{TRAFFIC_TAG}.{self.sc.alias}"

    @property
    def _traffic_key(self) -> str:
        return f"tag:{self._traffic_tag}"

    @property
    def _poll(self) -> float:
        return self.sc.alias_poll_seconds

    def _read_traffic_tag(self) -> str | None:
        return read_model_tag(self.settings.tracking_uri, self.model_name, self._traffic_tag)

    async def traffic_override(self) -> TrafficConfig | None:
        """Every request asks, so the tag comes from the registry cache: read on the first
        request (nothing to route by yet, at most the registry timeout), then revalidated in
        the background once older than an alias poll, the held value answering meanwhile. An
        absent tag is held as long as a set one (it is the usual case); a registry that never
        answered routes by ``serve.traffic`` until it does."""
        try:
            text = await self._registry.get(
                self._traffic_key, self._read_traffic_tag, none_ttl_s=self._poll
            )
        except RegistryUnavailableError:
            return None
        return decode_override(text)

    async def set_traffic_override(self, traffic: TrafficConfig | None) -> None:
        """Written to MLflow directly (an admin call, not the request path: its failure is the
        admin's 500), then held as the registry's answer so this ingress follows at once."""
        mlc, tag = client(self.settings.tracking_uri), self._traffic_tag
        if traffic is None:
            text = None
            if await asyncio.to_thread(self._read_traffic_tag) is not None:
                await asyncio.to_thread(mlc.delete_registered_model_tag, self.model_name, tag)
        else:
            text = encode_override(traffic, int(time.time()))
            await asyncio.to_thread(mlc.set_registered_model_tag, self.model_name, tag, text)
        self._registry.put(self._traffic_key, text, none_ttl_s=self._poll)

    async def reload(self, force: bool) -> dict[str, Any] | ModelError:
        reply: dict[str, Any] | ModelError = await self.model.reload.remote(force)
        if not isinstance(reply, ModelError):
            self._last_version = reply.get("model_version") or self._last_version
            self._registry.expire()  # revalidated, the last known answers served meanwhile
            self._served = None  # the alias may point elsewhere now: ask the replica again
        return reply


#: :class:`IngressBackend` as the app's Serve ingress (options: :func:`recicl.serve.app.build_app`).
IngressDeployment = serve.deployment(name=API_DEPLOYMENT, max_ongoing_requests=256)(
    serve.ingress()(IngressBackend)
)
