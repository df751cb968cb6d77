"""The model deployment: the alias's version (hot-swapped), explicit versions, batched scoring.

Each replica keeps a pointer to the version behind ``serve.alias`` and re-checks the alias every
``serve.alias_poll_seconds`` in a background task. A new version is loaded *first* and then the
pointer is switched; a batch already running holds the old object and finishes on it, so a
promotion drops no request. ``reconfigure`` (a changed ``user_config``: alias, batch settings,
``reload_token``) and ``reload`` re-check at once. A request for an explicit version arrives as
the multiplexed model id; replicas keep up to :data:`MAX_EXPLICIT_VERSIONS` of them (LRU).
Catalog items added while serving are read from the interaction store: on every load, on every
alias poll, and before a batch that needs them (:func:`recicl.serve.catalog_items.behind`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve
from ray.serve.metrics import Counter

from recicl.modeling.threads import ModelThread, apply_torch_threads
from recicl.registry import resolve_version
from recicl.serve.api.backend import ModelError, ModelJob, ModelReply
from recicl.serve.catalog_items import behind, catch_up
from recicl.serve.registry_cache import START_LOOKUP_TIMEOUT_SECONDS
from recicl.serve.serving_model import ServingModel, load_serving_model, run_jobs
from recicl.serve.settings import MAX_EXPLICIT_VERSIONS, MODEL_DEPLOYMENT, ServeSettings
from recicl.serve.store import open_store

log = logging.getLogger("recicl.serve")


class ModelServer:
    """Holds the alias's version (hot-swapped) + explicit versions; scores batched requests.

    The first load happens in :meth:`reconfigure`, which Serve calls right after the constructor
    as part of starting the replica (the app always sets ``user_config``): it is async, so the
    alias poller starts on the replica's event loop there.
    """

    def __init__(self, settings: ServeSettings) -> None:
        import torch

        self.cfg = settings.recicl_config()
        self.tracking_uri = settings.tracking_uri
        self.name = settings.model_name
        sc = self.cfg.serve
        self.alias = sc.alias
        self.poll_seconds = sc.alias_poll_seconds
        self.registry_timeout = sc.registry_timeout_seconds
        # (alias, its lookup in flight): one at a time, even past its timeout (_resolve_alias)
        self._lookup: tuple[str, asyncio.Future[str]] | None = None
        self.device = "cuda" if sc.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        # torch threads from the CPUs Ray gave this replica (its ray_actor_options), not Ray's
        # OMP_NUM_THREADS (1 for 1.5 CPUs); model.num_threads overrides
        self.threads = apply_torch_threads("model replica", self.cfg.model.num_threads)
        # every model call in one thread, loads in passing ones (threads.ModelThread says why)
        self.model_thread = ModelThread(self.threads)
        self.current: ServingModel | None = None
        # the catalog items added while serving (recicl.serve.catalog_items) are read from here
        self.store = open_store(settings.store_url, max_events_per_user=sc.max_events_per_user)
        self._items_lock = asyncio.Lock()
        self.last_error: str | None = None
        self.last_check = 0.0
        self.swaps = 0
        self._reload_lock = asyncio.Lock()
        self._reload_token: Any = None
        self._poller: asyncio.Task[None] | None = None
        self._fallback_metric = Counter(
            "recicl_prefix_sharing_fallbacks",
            description="Score batches whose candidates were scored as full prompts instead of "
            "on a shared prefix cache, by reason (see recicl.modeling.prefix_sharing).",
            tag_keys=("model_version", "reason"),  # type: ignore[arg-type]  # Ray annotates Tuple[str], means Tuple[str, ...]
        )

    # -- which version ---------------------------------------------------------------------

    def _load(self, version: str) -> ServingModel:
        def fallback(reason: str) -> None:
            self._fallback_metric.inc(
                tags={"model_version": str(version), "reason": reason.split(":", 1)[0]}
            )

        model = load_serving_model(
            self.cfg,
            self.tracking_uri,
            self.name,
            version,
            device=self.device,
            on_fallback=fallback,
        )
        catch_up(model, self.store)  # before it answers: a restart keeps the added items
        return model

    async def catch_up_items(self, revision: int = 0, model: ServingModel | None = None) -> Any:
        """Lay the catalog items added since ``model``'s revision over it (default: the alias's
        version), when it is behind ``revision``; ``revision`` 0: read the store in any case.
        Serialized per replica: two catch-ups would embed the same items twice."""
        model = model or self.current
        if model is None or model.overlay is None:
            return None
        async with self._items_lock:
            if revision and model.overlay.revision >= revision:
                return model.overlay.describe()
            return await self.model_thread.run(catch_up, model, self.store)

    async def refresh(
        self, *, force: bool = False, lookup_timeout: float | None = None
    ) -> dict[str, Any]:
        """Resolve the alias (waiting ``lookup_timeout``, by default
        ``serve.registry_timeout_seconds``); load and switch to its version when it changed (or
        ``force``)."""

        async with self._reload_lock:
            previous = self.current.version if self.current else None
            version = await self._resolve_alias(lookup_timeout or self.registry_timeout)
            self.last_check = time.time()
            changed = version != previous
            if changed or force:
                loaded = await self.model_thread.run_apart(self._load, version)  # load first ...
                self.current = loaded  # ... then switch: running batches keep the old object
                self.swaps += changed
                log.info("serving %s (alias %s; was %s)", loaded.label, self.alias, previous)
            self.last_error = None
            return {"model_version": version, "previous_version": previous, "changed": changed}

    async def _resolve_alias(self, timeout: float) -> str:
        """The alias's version from MLflow, waited for at most ``timeout`` (then TimeoutError:
        the poll keeps serving the old version). A hung MLflow would otherwise hold the reload
        lock, and with it every later poll and ``/admin/reload``, for as long as its connection
        hangs. The lookup thread cannot be cancelled, so at most one is in flight: a poll while
        it hangs waits on the same one instead of starting another (no pile of blocked
        threads)."""
        alias = self.alias
        if self._lookup is None or self._lookup[0] != alias or self._lookup[1].done():
            thread = asyncio.to_thread(resolve_version, self.tracking_uri, self.name, alias)
            task = asyncio.ensure_future(thread)
            # a lookup that fails after its caller timed out: its error was logged by then as a
            # TimeoutError; read it here so asyncio does not report it again as never retrieved
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._lookup = (alias, task)
        lookup = self._lookup[1]
        return await asyncio.wait_for(asyncio.shield(lookup), timeout=timeout)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.refresh()
            except Exception as error:  # keep serving the old version
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("alias check failed, still serving the old version: %s", error)
            try:  # items added through another ingress, for the recommendation pool
                await self.catch_up_items()
            except Exception as error:  # the next poll or job tries again
                log.warning("added catalog items not read: %s: %s", type(error).__name__, error)

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Serve calls this with ``user_config`` at start and whenever it changes."""
        uc = user_config or {}
        self.poll_seconds = float(uc.get("alias_poll_seconds", self.poll_seconds))
        if "max_batch_size" in uc:
            self._score_batch.set_max_batch_size(int(uc["max_batch_size"]))  # type: ignore[attr-defined]  # Ray's stubs omit the setters
        if "batch_wait_timeout_s" in uc:
            self._score_batch.set_batch_wait_timeout_s(float(uc["batch_wait_timeout_s"]))  # type: ignore[attr-defined]  # Ray's stubs omit the setters
        alias = uc.get("alias", self.alias)
        token = uc.get("reload_token")
        force = token != self._reload_token
        self._reload_token = token
        if alias != self.alias or force or self.current is None:
            self.alias = alias
            starting = self._poller is None and self.current is None  # no traffic until we return
            timeout = max(START_LOOKUP_TIMEOUT_SECONDS, self.registry_timeout) if starting else None
            try:
                await self.refresh(force=force, lookup_timeout=timeout)
            except Exception as error:  # serve anyway (503 until a version exists), keep polling
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("no version loaded on (re)configure: %s", self.last_error)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    @serve.multiplexed(max_num_models_per_replica=MAX_EXPLICIT_VERSIONS)
    async def explicit_version(self, version: str) -> ServingModel:
        current = self.current
        if current is not None and current.version == version:
            return current
        return await self.model_thread.run_apart(self._load, version)

    # -- requests --------------------------------------------------------------------------

    async def score(self, job: ModelJob) -> ModelReply | ModelError:
        requested = serve.get_multiplexed_model_id()
        current = self.current
        if requested and (current is None or current.version != requested):
            # Load (download, minutes for a large model) here, per request, not inside the
            # batch below: @serve.batch runs one batch at a time, so a load there would hold
            # every other batch of this replica, the served alias's included. Loaded, the
            # batch finds it in the multiplexed cache.
            try:
                await self.explicit_version(requested)
            except Exception as error:
                return self._not_loaded(requested, error)
        reply: ModelReply | ModelError = await self._score_batch(job)
        return reply

    def _not_loaded(self, requested: str, error: Exception) -> ModelError:
        """503 for a version the registry names but this replica could not load: a fault here,
        not a bad request; the cause (URLs, paths) goes to the log only."""
        log.warning("version %s not loaded: %s: %s", requested, type(error).__name__, error)
        detail = (
            f"model: version {requested} of {self.name} could not be loaded on this replica; "
            "retry later or leave `model` out (the server log has the cause)"
        )
        return ModelError(503, "model_unavailable", detail)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _score_batch(self, jobs: list[ModelJob]) -> list[ModelReply | ModelError]:
        requested = serve.get_multiplexed_model_id()  # one id per batch (Serve splits by id)
        model = self.current
        if requested and (model is None or model.version != requested):
            try:
                model = await self.explicit_version(requested)
            except Exception as error:  # evicted since score() loaded it, and failing now
                return [self._not_loaded(requested, error)] * len(jobs)
        if model is None:
            detail = (
                f"no version of {self.name} is loaded yet (alias {self.alias!r}); register and "
                "promote one (GET /v1/models shows the last load error)"
            )
            return [ModelError(503, "model_unavailable", detail)] * len(jobs)
        if behind(model, jobs):  # added items it has not read (one store read)
            try:
                await self.catch_up_items(0, model)
            except Exception as error:  # score with what it knows; the ingress checked the ids
                log.warning("added catalog items not read: %s: %s", type(error).__name__, error)
        return await self.model_thread.run(run_jobs, model, jobs)

    async def info(self) -> dict[str, Any]:
        current = self.current
        context = serve.get_replica_context()
        return {
            **(current.describe() if current else {"model_version": None, "model": None}),
            "alias": self.alias,
            "registered_model": self.name,
            "replica": str(getattr(context, "replica_id", "")),
            "device": self.device,
            "torch_threads": self.model_thread.threads_in_use,  # as the model thread gets it
            "last_error": self.last_error,
            "last_alias_check": self.last_check,
            "swaps": self.swaps,
        }

    async def add_items(self, revision: int) -> dict[str, Any] | ModelError:
        """After ``POST /admin/items`` stored items at ``revision``: catch up now, so that the
        encoder is loaded and the items embedded before the answer (other replicas follow on
        their next job or poll)."""
        try:
            state = await self.catch_up_items(revision)
        except Exception as error:
            detail = f"added items not read from the store: {type(error).__name__}: {error}"
            return ModelError(503, "store_unavailable", detail)
        if state is None:
            return ModelError(503, "model_unavailable", f"no version of {self.name} is loaded")
        return {"model_version": self.current.version if self.current else None, **state}

    async def reload(self, force: bool = False) -> dict[str, Any] | ModelError:
        try:
            return await self.refresh(force=force)
        except Exception as error:
            self.last_error = f"{type(error).__name__}: {error}"
            detail = f"reload of {self.name}@{self.alias} failed: {self.last_error}"
            return ModelError(503, "reload_failed", detail)


#: :class:`ModelServer` as a Serve deployment (options: :func:`recicl.serve.app.build_app`).
ModelDeployment = serve.deployment(name=MODEL_DEPLOYMENT, max_ongoing_requests=16)(ModelServer)
