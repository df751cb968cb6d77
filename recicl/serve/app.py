"""The Ray Serve application: a FastAPI ingress in front of a multiplexed, batched model deployment.

Two deployments::

    HTTP ──► ReciclAPI (FastAPI ingress, N replicas)          ReciclModel (M replicas)
               validates, reads/writes the interaction   ──►   champion version + explicit
               store, calls the model by handle                versions (@serve.multiplexed),
                                                               @serve.batch, prefix-shared scoring

**Real-time personalization.** ``POST /v1/events`` appends to the durable interaction store
(:mod:`recicl.serve.store`); ``/v1/score`` and ``/v1/recommend`` read the user's newest stored
events on every request and build the prompt from them with the training semantics
(:func:`recicl.serve.context.context_from_events`), so a new taste shows in the very next request
without retraining.

**Which model.** Each model replica keeps a pointer to the version behind ``serve.alias``
(default ``champion``) and re-checks the alias every ``serve.alias_poll_seconds`` in a background
task. A new version is loaded *first* and then the pointer is switched; a batch already running
holds the old object and finishes on it, so a promotion drops no request. ``reconfigure``
(a changed ``user_config``: alias, batch settings, ``reload_token``) and ``POST /admin/reload``
re-check at once (admin reload reaches the replica that answers it; others follow within one poll
interval; change ``user_config.reload_token`` to reach all replicas at once). A request's optional
``model`` (``"recicl@challenger"``, ``"recicl/3"``) is resolved to a version number by the ingress
and routed as the multiplexed model id; replicas keep up to :data:`MAX_EXPLICIT_VERSIONS` such
versions (least recently used evicted). Every score/recommend response carries ``model_version``.

**Errors.** Every error is JSON ``{"error": code, "detail": text naming the field}`` with a 4xx
status for bad input (400 malformed JSON, 401/403/404 admin auth, 404 unknown route/model,
405, 413 body too large, 415 not JSON, 422 validation/unknown items); 5xx only for server faults
(500) or no model loaded yet (503). Item ids not in the served version's catalog are rejected with
422 ``unknown_items`` listing them, unless ``serve.allow_unknown_items`` (then they are scored
with the title-less fallback ``"item <id>"``). Unknown *users* are not an error: they are scored
cold-start (no demonstrations), and the response says ``context_events: 0``.
"""

import asyncio
import hmac
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from ray import serve

from recicl.config import ConfigError, ReciclConfig, build_config, load_config, with_overrides
from recicl.errors import ReciclError

log = logging.getLogger("recicl.serve")

APP_NAME = "recicl"
MODEL_DEPLOYMENT = "ReciclModel"
API_DEPLOYMENT = "ReciclAPI"
#: Explicitly requested versions a model replica keeps loaded besides the alias's version.
MAX_EXPLICIT_VERSIONS = 3
#: Events may be stamped at most this far in the future (clock skew); later ones are refused,
#: as training quarantines them (they would sort after "now", the time of every query).
FUTURE_SKEW_SECONDS = 86_400
_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters (they break the one-line layout)
_MODEL_REF = r"^[A-Za-z0-9_.\-]+(@[A-Za-z0-9_.\-]+|/[0-9]+)$"


class ServeError(ReciclError):
    """Serving cannot start or cannot load a model version as configured."""


# =============================================================================================
# Settings resolved on the driver (absolute paths, URIs, secrets), passed to every replica


def resolve_settings(cfg: ReciclConfig) -> dict[str, Any]:
    """Everything replicas need, resolved where the app is built (paths made absolute)."""
    from recicl.registry import resolve_tracking_uri

    raw = cfg.model_dump(mode="json")
    workdir = Path(cfg.workdir).expanduser().resolve()
    raw["workdir"] = str(workdir)
    catalog = cfg.serve.catalog_path
    if catalog and "://" not in catalog:
        raw["serve"]["catalog_path"] = str(Path(catalog).expanduser().resolve())
    resolved = build_config(raw, "serve settings")
    store_url = (
        cfg.serve.store_url
        or os.environ.get("RECICL_STORE_URL")
        or "sqlite:///" + str(workdir / "events.db")
    )
    token = cfg.serve.admin_token or os.environ.get("RECICL_ADMIN_TOKEN") or None
    return {
        "config": resolved.model_dump(mode="json"),
        "tracking_uri": resolve_tracking_uri(resolved),
        "model_name": cfg.serve.model_name or cfg.mlflow.registered_model,
        "store_url": store_url,
        "admin_token": token,
    }


def _user_config(cfg: ReciclConfig) -> dict[str, Any]:
    sc = cfg.serve
    return {
        "alias": sc.alias,
        "alias_poll_seconds": sc.alias_poll_seconds,
        "max_batch_size": sc.max_batch_size,
        "batch_wait_timeout_s": sc.batch_wait_timeout_s,
        "reload_token": None,
    }


# =============================================================================================
# One loaded model version


def _read_text(location: str) -> str | None:
    """A small text file from a local path or a filesystem URI (s3://, gs://, ...)."""
    try:
        if "://" in location and not location.startswith("file://"):
            import pyarrow.fs as pafs

            filesystem, path = pafs.FileSystem.from_uri(location)
            with filesystem.open_input_stream(path) as stream:
                return stream.read().decode()
        path = Path(location.removeprefix("file://"))
        return path.read_text() if path.is_file() else None
    except (OSError, ValueError):
        return None


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


@dataclass
class ServingModel:
    """A model version ready to score: scorer + catalog + the context sizes it was trained with."""

    version: str
    label: str  # "recicl/3"
    scorer: Any  # recicl.modeling.prefix_sharing.CandidateScorer
    catalog_ids: frozenset[str]
    catalog_order: list[str]
    catalog_path: str
    num_demos: int
    history_len: int
    prompt_format: str
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "model": self.label,
            "catalog_path": self.catalog_path,
            "catalog_items": len(self.catalog_order),
            "num_demos": self.num_demos,
            "history_len": self.history_len,
            "prompt_format": self.prompt_format,
            "loaded_at": self.loaded_at,
            "scoring": {
                "attention": sorted(set(self.scorer.layout.kinds)),
                "sliding_window": self.scorer.layout.window,
                "prefix_fallbacks": dict(self.scorer.fallbacks),
            },
        }


def load_serving_model(
    cfg: ReciclConfig,
    tracking_uri: str,
    name: str,
    version: str,
    *,
    device: str = "cpu",
    on_fallback: Callable[[str], None] | None = None,
) -> ServingModel:
    """Download ``name`` version ``version`` from the registry and make it ready to score.
    ``on_fallback(reason)``: called whenever prefix-shared scoring falls back to full prompts."""
    import pyarrow.parquet as pq

    from recicl.modeling.packaged import load_packaged_model
    from recicl.prompts import PromptBuilder
    from recicl.registry import load_version
    from recicl.modeling.prefix_sharing import CandidateScorer

    download = Path(tempfile.mkdtemp(prefix=f"recicl-serve-{name}-{version}-"))
    try:
        folder = load_version(name, version, tracking_uri=tracking_uri, dst=download)
        packaged = load_packaged_model(
            folder, prompt=cfg.prompt, model_cfg=cfg.model, label=f"{name}/{version}", device=device
        )
    finally:  # weights are in memory now (an unlinked mmapped file stays readable on Linux)
        shutil.rmtree(download, ignore_errors=True)
    manifest = packaged.manifest or {}
    samples_dir = (manifest.get("data") or {}).get("samples_dir")
    catalog_path = cfg.serve.catalog_path or (
        _join(samples_dir, "catalog.parquet") if samples_dir else None
    )
    if not catalog_path:
        raise ServeError(
            f"{name}/{version} records no samples folder, so its catalog is unknown: set "
            "serve.catalog_path to the catalog.parquet it was trained with"
        )
    try:
        catalog = pq.read_table(catalog_path)
    except (OSError, ValueError) as error:
        raise ServeError(
            f"cannot read the catalog of {name}/{version} at {catalog_path}: {error}; "
            "set serve.catalog_path"
        ) from error
    samples_manifest: dict[str, Any] = {}
    if samples_dir:
        text = _read_text(_join(samples_dir, "manifest.json"))
        samples_manifest = json.loads(text) if text else {}
    trained = (samples_manifest.get("config") or {}).get("samples") or {}
    num_demos = cfg.serve.num_demos
    if num_demos is None:
        num_demos = int(trained.get("num_demos", cfg.samples.num_demos))
    history_len = cfg.serve.history_len
    if history_len is None:
        history_len = int(trained.get("history_len", cfg.samples.history_len))
    builder = PromptBuilder(packaged.prompt, catalog, packaged.tokenizer)
    scorer = CandidateScorer(
        packaged.model,
        packaged.tokenizer,
        builder,
        packaged.answer_tokens,
        max_rows=cfg.serve.score_batch_rows,
        per_row=cfg.serve.candidates_per_row,
        on_fallback=on_fallback,
    )
    order = [str(i) for i in catalog.column("item_id").to_pylist() if i is not None]
    log.info("loaded %s/%s (catalog %s, %d items)", name, version, catalog_path, len(order))
    return ServingModel(
        version=str(version),
        label=f"{name}/{version}",
        scorer=scorer,
        catalog_ids=frozenset(order),
        catalog_order=order,
        catalog_path=catalog_path,
        num_demos=num_demos,
        history_len=history_len,
        prompt_format=packaged.prompt.format,
    )


def _error(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "status": status, "detail": detail, **extra}


def run_jobs(model: ServingModel, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score a batch of ingress jobs on one model version (runs in a worker thread).

    A job: ``user_id``, ``events`` ([item_id, label, timestamp, rating] rows), ``candidates``
    (list, or None = fill from ``pool`` then the catalog up to ``pool_size``, skipping
    ``exclude``), ``allow_unknown``. Per-job problems become error dicts; the rest are scored
    together (prefixes batched, candidates on shared prefix caches).
    """
    from recicl.prompts import PromptError
    from recicl.serve.context import context_from_events
    from recicl.modeling.prefix_sharing import ScoreJob
    from recicl.serve.store import Event

    results: list[dict[str, Any] | None] = [None] * len(jobs)
    work: list[tuple[int, ScoreJob, int]] = []
    for i, job in enumerate(jobs):
        events = [Event(job["user_id"], e[0], int(e[1]), int(e[2]), e[3]) for e in job["events"]]
        history, demos = context_from_events(events, model.num_demos, model.history_len)
        candidates = job.get("candidates")
        if candidates is None:
            candidates = _fill_pool(model, job)
        elif not job.get("allow_unknown"):
            unknown = [c for c in candidates if c not in model.catalog_ids]
            if unknown:
                results[i] = _error(
                    422,
                    "unknown_items",
                    f"candidates: {len(unknown)} item id(s) are not in the catalog of "
                    f"{model.label}: {unknown[:20]}",
                    field="candidates",
                    unknown=unknown[:100],
                )
                continue
        if not candidates:
            results[i] = _reply(model, [], [], len(events))
            continue
        work.append((i, ScoreJob(history, demos, candidates), len(events)))
    if work:
        try:
            scores = model.scorer.score([job for _, job, _ in work])
        except PromptError as error:
            for i, _, _ in work:
                results[i] = _error(500, "prompt_error", str(error))
        else:
            for (i, job, n_events), values in zip(work, scores, strict=True):
                results[i] = _reply(model, job.candidates, values, n_events)
    return [r for r in results if r is not None]


def _reply(model: ServingModel, items: Any, scores: Any, n_events: int) -> dict[str, Any]:
    return {
        "model_version": model.version,
        "model": model.label,
        "catalog_path": model.catalog_path,
        "scores": [[str(item), float(s)] for item, s in zip(items, scores, strict=True)],
        "context_events": n_events,
    }


def _fill_pool(model: ServingModel, job: dict[str, Any]) -> list[str]:
    size = int(job.get("pool_size", 0))
    exclude = set(job.get("exclude") or ())
    out: list[str] = []
    chosen: set[str] = set()
    for source in (job.get("pool") or (), model.catalog_order):
        for item in source:
            if len(out) >= size:
                return out
            if item in exclude or item in chosen or item not in model.catalog_ids:
                continue
            out.append(item)
            chosen.add(item)
    return out


# =============================================================================================
# Model deployment


@serve.deployment(name=MODEL_DEPLOYMENT, max_ongoing_requests=16)
class ModelServer:
    """Holds the alias's version (hot-swapped) + explicit versions; scores batched requests."""

    async def __init__(self, settings: dict[str, Any]) -> None:
        import torch

        self.cfg = ReciclConfig.model_validate(settings["config"])
        self.tracking_uri: str = settings["tracking_uri"]
        self.name: str = settings["model_name"]
        sc = self.cfg.serve
        self.alias = sc.alias
        self.poll_seconds = sc.alias_poll_seconds
        self.device = "cuda" if sc.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.current: ServingModel | None = None
        self.last_error: str | None = None
        self.last_check: float = 0.0
        self.swaps = 0
        self._reload_lock = asyncio.Lock()
        self._reload_token: Any = None
        from ray.serve.metrics import Counter

        self._fallback_metric = Counter(
            "recicl_prefix_sharing_fallbacks",
            description="Score batches whose candidates were scored as full prompts instead of "
            "on a shared prefix cache, by reason (see recicl.modeling.prefix_sharing).",
            tag_keys=("model_version", "reason"),
        )
        try:
            await self.refresh()
        except Exception as error:  # serve anyway (503 until a version exists), keep polling
            self.last_error = f"{type(error).__name__}: {error}"
            log.warning("no model loaded at startup: %s", self.last_error)
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    # -- which version ---------------------------------------------------------------------

    def _load(self, version: str) -> ServingModel:
        def fallback(reason: str) -> None:
            self._fallback_metric.inc(
                tags={"model_version": str(version), "reason": reason.split(":", 1)[0]}
            )

        return load_serving_model(
            self.cfg,
            self.tracking_uri,
            self.name,
            version,
            device=self.device,
            on_fallback=fallback,
        )

    async def refresh(self, *, force: bool = False) -> dict[str, Any]:
        """Resolve the alias; load and switch to its version when it changed (or ``force``)."""
        from recicl.registry import resolve_version

        async with self._reload_lock:
            previous = self.current.version if self.current else None
            version = await asyncio.to_thread(
                resolve_version, self.tracking_uri, self.name, self.alias
            )
            self.last_check = time.time()
            changed = version != previous
            if changed or force:
                loaded = await asyncio.to_thread(self._load, version)  # load first ...
                self.current = loaded  # ... then switch: running batches keep the old object
                self.swaps += changed
                log.info("serving %s (alias %s; was %s)", loaded.label, self.alias, previous)
            self.last_error = None
            return {"model_version": version, "previous_version": previous, "changed": changed}

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.refresh()
            except Exception as error:  # keep serving the old version
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("alias check failed, still serving the old version: %s", error)

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Serve calls this with ``user_config`` at start and whenever it changes."""
        uc = user_config or {}
        self.poll_seconds = float(uc.get("alias_poll_seconds", self.poll_seconds))
        if "max_batch_size" in uc:
            self._score_batch.set_max_batch_size(int(uc["max_batch_size"]))
        if "batch_wait_timeout_s" in uc:
            self._score_batch.set_batch_wait_timeout_s(float(uc["batch_wait_timeout_s"]))
        alias = uc.get("alias", self.alias)
        token = uc.get("reload_token")
        force = token != self._reload_token
        self._reload_token = token
        if alias != self.alias or force or self.current is None:
            self.alias = alias
            try:
                await self.refresh(force=force)
            except Exception as error:
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("reload on reconfigure failed: %s", self.last_error)

    @serve.multiplexed(max_num_models_per_replica=MAX_EXPLICIT_VERSIONS)
    async def explicit_version(self, version: str) -> ServingModel:
        current = self.current
        if current is not None and current.version == version:
            return current
        return await asyncio.to_thread(self._load, version)

    # -- requests --------------------------------------------------------------------------

    async def score(self, job: dict[str, Any]) -> dict[str, Any]:
        return await self._score_batch(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _score_batch(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        requested = serve.get_multiplexed_model_id()  # one id per batch (Serve splits by id)
        model = self.current
        if requested and (model is None or model.version != requested):
            try:
                model = await self.explicit_version(requested)
            except Exception as error:
                reply = _error(
                    404,
                    "model_not_found",
                    f"model: cannot load version {requested} of {self.name}: {error}",
                )
                return [reply] * len(jobs)
        if model is None:
            reply = _error(
                503,
                "model_unavailable",
                f"no version of {self.name} is loaded (alias {self.alias!r}: "
                f"{self.last_error or 'not checked yet'}); register and promote one",
            )
            return [reply] * len(jobs)
        return await asyncio.to_thread(run_jobs, model, jobs)

    async def info(self) -> dict[str, Any]:
        current = self.current
        context = serve.get_replica_context()
        return {
            **(current.describe() if current else {"model_version": None, "model": None}),
            "alias": self.alias,
            "registered_model": self.name,
            "replica": str(getattr(context, "replica_id", "")),
            "device": self.device,
            "last_error": self.last_error,
            "last_alias_check": self.last_check,
            "swaps": self.swaps,
        }

    async def reload(self, force: bool = False) -> dict[str, Any]:
        try:
            return await self.refresh(force=force)
        except Exception as error:
            self.last_error = f"{type(error).__name__}: {error}"
            return _error(
                503,
                "reload_failed",
                f"reload of {self.name}@{self.alias} failed: {self.last_error}",
            )


# =============================================================================================
# HTTP API: request models (limits from the config), errors, middleware


class ApiError(Exception):
    """An error response: ``{"error": code, "detail": ...}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


def _error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def _field_path(loc: tuple[Any, ...], tags: set[str]) -> str:
    parts = [p for p in loc if p not in tags]
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def request_models(cfg: ReciclConfig) -> dict[str, type[BaseModel]]:
    """Pydantic request/response models with the limits of ``cfg.serve``."""
    sc = cfg.serve
    ItemId = Annotated[
        str,
        StringConstraints(min_length=1, max_length=sc.max_string_length, pattern=_ID_PATTERN),
        Field(description="Item id as in the catalog."),
    ]
    UserId = Annotated[
        str,
        StringConstraints(min_length=1, max_length=sc.max_string_length, pattern=_ID_PATTERN),
        Field(description="User id (any string; new users are scored cold-start)."),
    ]
    Label = Annotated[int, Field(strict=True, ge=0, le=1, description="1 = liked, 0 = not.")]
    Rating = Annotated[
        float,
        Field(
            strict=True,
            allow_inf_nan=False,
            ge=-1e9,
            le=1e9,
            description=f"Rating; label = rating >= {cfg.data.like_threshold} when no label.",
        ),
    ]
    Timestamp = Annotated[
        int,
        Field(strict=True, ge=0, le=2**53, description="Unix seconds; omitted = now."),
    ]

    class _Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class _Labelled(_Strict):
        label: Label | None = None
        rating: Rating | None = None
        timestamp: Timestamp | None = None

        @model_validator(mode="after")
        def _label_or_rating(self) -> Any:
            if self.label is None and self.rating is None:
                raise ValueError("give `label` (0/1) or `rating`")
            return self

    class EventIn(_Labelled):
        """One interaction: a label (0/1) or a rating, optional timestamp (default now)."""

        user_id: UserId
        item_id: ItemId

    class HistoryEvent(_Labelled):
        """An event of the request's user, used as context instead of the stored events."""

        item_id: ItemId

    class ScoreRequest(_Strict):
        user_id: UserId
        candidates: list[ItemId] = Field(
            min_length=1, max_length=sc.max_candidates, description="Items to score."
        )
        history: list[HistoryEvent] | None = Field(
            None,
            max_length=sc.max_history_events,
            description="Context to use instead of the user's stored events (list order = "
            "time order for events without timestamp).",
        )
        model: str | None = Field(
            None,
            max_length=sc.max_string_length,
            pattern=_MODEL_REF,
            description="'name@alias' or 'name/<version>'; default = the served alias.",
        )

    class RecommendRequest(_Strict):
        user_id: UserId
        k: int = Field(10, strict=True, ge=1, le=sc.max_candidates, description="Items returned.")
        candidates: list[ItemId] | None = Field(
            None,
            min_length=1,
            max_length=sc.max_candidates,
            description="Items to rank; omitted = recent popular items the user has not seen, "
            "topped up from the catalog.",
        )
        model: str | None = Field(
            None, max_length=sc.max_string_length, pattern=_MODEL_REF, description="As in score."
        )

    class ItemScore(BaseModel):
        item_id: str
        score: float = Field(description="P(Yes): probability that the user likes the item.")

    class ScoreResponse(BaseModel):
        model_version: str
        model: str
        scores: list[ItemScore]
        context_events: int = Field(description="Events the prompt context was built from.")

    class RecommendResponse(BaseModel):
        model_version: str
        model: str
        items: list[ItemScore]
        context_events: int
        candidates_scored: int

    class EventsResponse(BaseModel):
        accepted: int
        new: int = Field(description="Events not already stored (exact repeats count once).")
        model_version: str | None = Field(description="Served version last seen by this ingress.")

    class ErrorResponse(BaseModel):
        error: str
        detail: str

    return {
        "EventIn": EventIn,
        "HistoryEvent": HistoryEvent,
        "ScoreRequest": ScoreRequest,
        "RecommendRequest": RecommendRequest,
        "ScoreResponse": ScoreResponse,
        "RecommendResponse": RecommendResponse,
        "EventsResponse": EventsResponse,
        "ErrorResponse": ErrorResponse,
    }


def validation_error(problems: list[Any]) -> ApiError:
    """422 naming the fields of pydantic errors (locations below ``body``)."""
    fields = [
        {"field": _field_path(tuple(p.get("loc", ())), set()), "message": p["msg"]}
        for p in problems
    ]
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    if len(fields) > 5:
        detail += f"; and {len(fields) - 5} more"
    return ApiError(422, "validation_error", detail, fields=fields[:50])


class BodyGuard:
    """ASGI middleware: 413 for bodies over ``max_bytes`` (declared or streamed), 415 for a
    POST whose Content-Type is not JSON. Answers before the app reads anything."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reply(self, send: Any, status: int, code: str, detail: str) -> None:
        body = json.dumps(_error_body(code, detail)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or ()}
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._reply(send, 400, "bad_request", "Content-Length is not a number")
                return
            if size > self.max_bytes:
                await self._reply(
                    send,
                    413,
                    "body_too_large",
                    f"body: {size} bytes is over the limit of {self.max_bytes} bytes",
                )
                return
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        media = content_type.split(";", 1)[0].strip()
        if media and not (media == "application/json" or media.endswith("+json")):
            await self._reply(
                send,
                415,
                "unsupported_media_type",
                f"Content-Type: send JSON with 'Content-Type: application/json' (got {media!r})",
            )
            return
        received = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge as error:
            if not started:
                await self._reply(send, 413, "body_too_large", str(error))


class _BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body: over the limit of {limit} bytes")


def _status_code_name(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        406: "not_acceptable",
        413: "body_too_large",
        415: "unsupported_media_type",
        422: "validation_error",
        429: "too_many_requests",
        503: "unavailable",
    }.get(status, "error" if status >= 500 else "bad_request")


def install_error_handlers(app: Any) -> None:
    """Every error as JSON ``{error, detail}``; never a 500 for bad input."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ApiError)
    async def _api_error(_request: Any, error: ApiError) -> JSONResponse:
        return JSONResponse(
            _error_body(error.code, error.detail, **error.extra), status_code=error.status
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Any, error: RequestValidationError) -> JSONResponse:
        problems = list(error.errors())
        for problem in problems:
            if problem.get("type") == "json_invalid":
                ctx = problem.get("ctx") or {}
                where = problem.get("loc", ("body", 0))[-1]
                return JSONResponse(
                    _error_body(
                        "invalid_json",
                        f"body: not valid JSON ({ctx.get('error', 'decode error')} at "
                        f"position {where})",
                    ),
                    status_code=400,
                )
        error_ = validation_error(problems)
        return JSONResponse(
            _error_body(error_.code, error_.detail, **error_.extra), status_code=error_.status
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Any, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else json.dumps(error.detail)
        if error.status_code == 404 and detail == "Not Found":
            detail = f"path: no route {request.method} {request.url.path} (see /docs)"
        elif error.status_code == 405:
            detail = f"method: {request.method} is not allowed on {request.url.path}"
        return JSONResponse(
            _error_body(_status_code_name(error.status_code), detail),
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Any, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            _error_body("internal_error", f"{type(error).__name__}: {error}"), status_code=500
        )


# =============================================================================================
# Ingress deployment


@dataclass
class _Cached:
    value: Any
    expires: float


@serve.deployment(name=API_DEPLOYMENT, max_ongoing_requests=256)
@serve.ingress()
class ApiServer:
    """HTTP ingress: validation, the interaction store, model calls by handle."""

    def __init__(self, model: Any, settings: dict[str, Any]) -> None:
        from recicl.serve.store import open_store

        self.model = model
        self.cfg = ReciclConfig.model_validate(settings["config"])
        self.sc = self.cfg.serve
        self.tracking_uri: str = settings["tracking_uri"]
        self.model_name: str = settings["model_name"]
        self.admin_token: str | None = settings.get("admin_token")
        self.store = open_store(
            settings["store_url"], max_events_per_user=self.sc.max_events_per_user
        )
        self.last_version: str | None = None
        self._catalog: tuple[str, frozenset[str]] | None = None
        self._catalog_lock = asyncio.Lock()
        self._refs: dict[str, _Cached] = {}
        self._recent: _Cached | None = None
        self._models = request_models(self.cfg)

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(self)

    # -- helpers ---------------------------------------------------------------------------

    async def call_model(self, job: dict[str, Any], version: str | None) -> dict[str, Any]:
        handle = self.model if not version else self.model.options(multiplexed_model_id=version)
        reply = await handle.score.remote(job)
        if "error" in reply:
            extra = {k: v for k, v in reply.items() if k not in ("error", "status", "detail")}
            raise ApiError(reply["status"], reply["error"], reply["detail"], **extra)
        self.last_version = reply["model_version"]
        await self._note_catalog(reply.get("catalog_path"))
        return reply

    async def _note_catalog(self, path: str | None) -> None:
        if path and (self._catalog is None or self._catalog[0] != path):
            async with self._catalog_lock:
                if self._catalog is None or self._catalog[0] != path:
                    ids = await asyncio.to_thread(_catalog_ids, path)
                    self._catalog = (path, ids)

    async def catalog_ids(self) -> frozenset[str] | None:
        """Item ids of the served version's catalog (None until a version is loaded)."""
        if self._catalog is None:
            info = await self.model.info.remote()
            self.last_version = info.get("model_version") or self.last_version
            await self._note_catalog(info.get("catalog_path"))
        return self._catalog[1] if self._catalog else None

    async def check_items(self, items: list[str], where: str) -> None:
        if self.sc.allow_unknown_items or not items:
            return
        known = await self.catalog_ids()
        if known is None:
            return  # no model loaded yet: nothing to validate against
        unknown = list(dict.fromkeys(i for i in items if i not in known))
        if unknown:
            raise ApiError(
                422,
                "unknown_items",
                f"{where}: {len(unknown)} item id(s) are not in the catalog: {unknown[:20]}",
                field=where,
                unknown=unknown[:100],
            )

    async def resolve_model(self, ref: str | None) -> str | None:
        """'name@alias' / 'name/3' → version number ('' / None = the served alias)."""
        if ref is None:
            return None
        name, sep, rest = ref.partition("@")
        if not sep:
            name, _, rest = ref.partition("/")
        if name != self.model_name:
            raise ApiError(
                404,
                "model_not_found",
                f"model: this server serves {self.model_name!r}, not {name!r}",
            )
        if sep and rest == self.sc.alias:
            return None  # the served alias: the replicas' hot-swapped pointer
        cached = self._refs.get(ref)
        if cached and cached.expires > time.monotonic():
            return cached.value
        version = await asyncio.to_thread(self._lookup_version, rest, bool(sep))
        self._refs[ref] = _Cached(version, time.monotonic() + self.sc.alias_poll_seconds)
        return version

    def _lookup_version(self, ref: str, is_alias: bool) -> str:
        from mlflow.exceptions import MlflowException

        from recicl.registry import client

        mlc = client(self.tracking_uri)
        try:
            if is_alias:
                return str(mlc.get_model_version_by_alias(self.model_name, ref).version)
            return str(mlc.get_model_version(self.model_name, ref).version)
        except MlflowException as error:
            kind = "alias" if is_alias else "version"
            raise ApiError(
                404,
                "model_not_found",
                f"model: {self.model_name} has no {kind} {ref!r} in the registry",
            ) from error

    async def user_events(self, user_id: str) -> list[list[Any]]:
        events = await asyncio.to_thread(self.store.latest, user_id, self.sc.context_events)
        return [[e.item_id, e.label, e.timestamp, e.rating] for e in events]

    def label_of(self, label: int | None, rating: float | None) -> int:
        if label is not None:
            return int(label)
        return int(float(rating) >= self.cfg.data.like_threshold)  # type: ignore[arg-type]

    def check_time(self, timestamp: int | None, where: str, now: int) -> int:
        if timestamp is None:
            return now
        if timestamp > now + FUTURE_SKEW_SECONDS:
            raise ApiError(
                422,
                "validation_error",
                f"{where}: {timestamp} is in the future (now is {now}); send unix seconds",
                fields=[{"field": where, "message": "timestamp in the future"}],
            )
        return timestamp

    async def recent_pool(self) -> list[str]:
        now = time.monotonic()
        if self._recent is None or self._recent.expires <= now:
            since = int(time.time()) - self.sc.recent_window_seconds
            limit = self.sc.candidate_pool_size * 4 + 100  # room for the user's seen items
            rows = await asyncio.to_thread(self.store.recent_items, since, limit)
            self._recent = _Cached([item for item, _ in rows], now + self.sc.recent_cache_seconds)
        return self._recent.value

    def check_admin(self, authorization: str | None) -> None:
        if not self.admin_token:
            raise ApiError(
                404,
                "admin_disabled",
                "admin routes are disabled: set serve.admin_token or RECICL_ADMIN_TOKEN",
            )
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "unauthorized",
                "Authorization: send 'Authorization: Bearer <admin token>'",
            )
        if not hmac.compare_digest(token.strip().encode(), self.admin_token.encode()):
            raise ApiError(403, "forbidden", "Authorization: wrong admin token")


def _catalog_ids(path: str) -> frozenset[str]:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["item_id"]).column("item_id").to_pylist()
    return frozenset(str(i) for i in column if i is not None)


def _duplicates(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return list(dict.fromkeys(i for i in items if i in seen or seen.add(i)))  # type: ignore[func-returns-value]


def build_api(server: ApiServer) -> Any:
    """The FastAPI app of one ingress replica (routes close over ``server``)."""
    from fastapi import FastAPI, Header, Query, Request
    from fastapi.responses import JSONResponse

    models = server._models
    EventIn, ScoreRequest, RecommendRequest = (
        models["EventIn"],
        models["ScoreRequest"],
        models["RecommendRequest"],
    )
    errors = {
        code: {"model": models["ErrorResponse"], "description": text}
        for code, text in {
            400: "Malformed JSON",
            404: "Unknown route / model",
            413: "Body too large",
            415: "Not JSON",
            422: "Invalid field or unknown item ids",
            503: "No model loaded",
        }.items()
    }
    app = FastAPI(
        title="recicl",
        version="1",
        description="Real-time personalized scoring with an in-context-learning recommender. "
        "Errors are JSON {error, detail} naming the field.",
        responses=errors,
    )
    app.add_middleware(BodyGuard, max_bytes=server.cfg.serve.max_body_bytes)
    install_error_handlers(app)
    one_event = TypeAdapter(EventIn)
    event_list = TypeAdapter(list[EventIn])  # type: ignore[valid-type]

    def parse_events(payload: Any) -> tuple[list[Any], bool]:
        """(events, is_list): one event object or a list of them; errors name the field."""
        limit = server.sc.max_events_per_request
        if isinstance(payload, list):
            if not payload:
                raise ApiError(422, "validation_error", "body: the list of events is empty")
            if len(payload) > limit:
                raise ApiError(
                    422,
                    "validation_error",
                    f"body: {len(payload)} events is over the limit of {limit} per request",
                )
            adapter, is_list = event_list, True
        elif isinstance(payload, dict):
            adapter, is_list = one_event, False
        else:
            raise ApiError(
                422, "validation_error", "body: send one event object or a list of event objects"
            )
        try:
            parsed = adapter.validate_python(payload)
        except PydanticValidationError as error:
            raise validation_error(error.errors()) from None
        return (parsed if is_list else [parsed]), is_list

    events_schema = {
        "anyOf": [
            {"$ref": "#/components/schemas/EventIn"},
            {
                "type": "array",
                "items": {"$ref": "#/components/schemas/EventIn"},
                "minItems": 1,
                "maxItems": server.sc.max_events_per_request,
            },
        ]
    }

    @app.post(
        "/v1/events",
        response_model=models["EventsResponse"],
        tags=["events"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": events_schema}},
            }
        },
    )
    async def post_events(request: Request) -> Any:
        """Store one event or a list (atomically); they shape the user's next scores."""
        from recicl.serve.store import Event

        body = await request.body()
        if not body:
            raise ApiError(422, "validation_error", "body: Field required (an event or a list)")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(400, "invalid_json", f"body: not valid JSON ({error})") from None
        events, is_list = parse_events(payload)
        await server.check_items([e.item_id for e in events], "item_id")
        now = int(time.time())
        records = [
            Event(
                e.user_id,
                e.item_id,
                server.label_of(e.label, e.rating),
                server.check_time(e.timestamp, f"[{i}].timestamp" if is_list else "timestamp", now),
                e.rating,
            )
            for i, e in enumerate(events)
        ]
        new = await asyncio.to_thread(server.store.append, records)
        return {"accepted": len(records), "new": new, "model_version": server.last_version}

    @app.post("/v1/score", response_model=models["ScoreResponse"], tags=["scoring"])
    async def post_score(request: ScoreRequest) -> Any:  # type: ignore[valid-type]
        """P(Yes) per candidate, with the user's newest stored events (or `history`) as context."""
        duplicates = _duplicates(request.candidates)
        if duplicates:
            raise ApiError(
                422, "validation_error", f"candidates: duplicate item ids {duplicates[:20]}"
            )
        version = await server.resolve_model(request.model)
        if request.history is not None:
            await server.check_items([h.item_id for h in request.history], "history")
            now = int(time.time())
            n = len(request.history)
            events = [
                [
                    h.item_id,
                    server.label_of(h.label, h.rating),
                    server.check_time(h.timestamp, f"history[{i}].timestamp", now)
                    if h.timestamp is not None
                    else now - n + i,
                    h.rating,
                ]
                for i, h in enumerate(request.history)
            ]
        else:
            events = await server.user_events(request.user_id)
        job = {
            "user_id": request.user_id,
            "events": events,
            "candidates": list(request.candidates),
            "allow_unknown": server.sc.allow_unknown_items,
        }
        reply = await server.call_model(job, version)
        return {
            "model_version": reply["model_version"],
            "model": reply["model"],
            "scores": [{"item_id": i, "score": s} for i, s in reply["scores"]],
            "context_events": reply["context_events"],
        }

    @app.post("/v1/recommend", response_model=models["RecommendResponse"], tags=["scoring"])
    async def post_recommend(request: RecommendRequest) -> Any:  # type: ignore[valid-type]
        """Top-k of `candidates`, or of recent popular items the user has not seen."""
        version = await server.resolve_model(request.model)
        events = await server.user_events(request.user_id)
        job: dict[str, Any] = {
            "user_id": request.user_id,
            "events": events,
            "allow_unknown": server.sc.allow_unknown_items,
        }
        if request.candidates is not None:
            duplicates = _duplicates(request.candidates)
            if duplicates:
                raise ApiError(
                    422, "validation_error", f"candidates: duplicate item ids {duplicates[:20]}"
                )
            job["candidates"] = list(request.candidates)
        else:
            seen = await asyncio.to_thread(server.store.seen_items, request.user_id)
            job.update(
                candidates=None,
                pool=await server.recent_pool(),
                exclude=sorted(seen),
                pool_size=min(server.sc.candidate_pool_size, server.sc.max_candidates),
            )
        reply = await server.call_model(job, version)
        ranked = sorted(reply["scores"], key=lambda pair: (-pair[1], pair[0]))
        return {
            "model_version": reply["model_version"],
            "model": reply["model"],
            "items": [{"item_id": i, "score": s} for i, s in ranked[: request.k]],
            "context_events": reply["context_events"],
            "candidates_scored": len(ranked),
        }

    @app.get("/v1/models", tags=["models"])
    async def get_models() -> Any:
        """The served alias/version (of the replica that answers) and the registry's versions."""
        info = await server.model.info.remote()
        server.last_version = info.get("model_version") or server.last_version
        versions = await asyncio.to_thread(
            _registry_versions, server.tracking_uri, server.model_name
        )
        return {
            "model_version": info.get("model_version"),
            "registered_model": server.model_name,
            "alias": info.get("alias"),
            "served": info,
            "versions": versions,
        }

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> Any:
        """200 when the store answers and a model version is loaded, else 503."""
        store_ok = await asyncio.to_thread(server.store.health)
        try:
            info = await asyncio.wait_for(server.model.info.remote(), timeout=10)
        except Exception as error:
            info = {"model_version": None, "last_error": f"{type(error).__name__}: {error}"}
        version = info.get("model_version")
        server.last_version = version or server.last_version
        body = {
            "status": "ok" if store_ok and version else "unavailable",
            "model_version": version,
            "model": info.get("model"),
            "store": "ok" if store_ok else "unavailable",
        }
        if store_ok and version:
            return body
        detail = (
            "store: unavailable"
            if not store_ok
            else (f"model: no version loaded ({info.get('last_error') or 'starting'})")
        )
        return JSONResponse({**_error_body("unavailable", detail), **body}, status_code=503)

    @app.post("/admin/reload", tags=["admin"])
    async def admin_reload(
        authorization: str | None = Header(None),
        force: bool = Query(False, description="Reload even if the alias did not move."),
    ) -> Any:
        """Re-check the alias now on the answering replica (others follow within one poll)."""
        server.check_admin(authorization)
        reply = await server.model.reload.remote(force)
        if "error" in reply:
            raise ApiError(reply["status"], reply["error"], reply["detail"])
        server.last_version = reply.get("model_version") or server.last_version
        server._refs.clear()
        return reply

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus EventIn (the events body is validated by hand, see above)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            event_schema = one_event.json_schema(ref_template="#/components/schemas/{model}")
            nested = event_schema.pop("$defs", {})
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update({"EventIn": event_schema, **nested})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _registry_versions(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    from recicl.registry import client

    mlc = client(tracking_uri)
    try:
        found = mlc.search_model_versions(f"name='{name}'", max_results=100)
        # search results carry no aliases: the registered model has the alias → version map
        by_version: dict[str, list[str]] = {}
        for alias, version in (mlc.get_registered_model(name).aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
    except Exception as error:
        return [{"error": f"{type(error).__name__}: {error}"}]
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


# =============================================================================================
# Building and running


def build_app(cfg: ReciclConfig) -> serve.Application:
    """The Serve application for ``cfg`` (ingress bound to the model deployment)."""
    settings = resolve_settings(cfg)
    sc = cfg.serve
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    model_options: dict[str, Any] = {
        "max_ongoing_requests": max(2 * sc.max_batch_size, 8),
        "ray_actor_options": {
            "num_cpus": sc.num_cpus,
            "num_gpus": sc.num_gpus,
            "runtime_env": env,
        },
        "user_config": _user_config(cfg),
        "graceful_shutdown_timeout_s": 20,
    }
    if sc.max_replicas is not None and sc.max_replicas > sc.num_replicas:
        model_options["autoscaling_config"] = {
            "min_replicas": sc.num_replicas,
            "max_replicas": sc.max_replicas,
            "target_ongoing_requests": sc.target_ongoing_requests,
        }
    else:
        model_options["num_replicas"] = sc.num_replicas
    model = ModelServer.options(**model_options).bind(settings)
    return ApiServer.options(
        num_replicas=sc.ingress_replicas,
        ray_actor_options={"num_cpus": sc.ingress_num_cpus, "runtime_env": env},
    ).bind(model, settings)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve config entry point (``import_path: recicl.serve.app:app_builder``).

    ``args``: ``config`` (a recicl YAML file; null = defaults) and ``overrides`` (dotted keys,
    e.g. ``{"serve.store_url": "redis://redis:6379/0"}``), applied on top of the file.
    """
    args = dict(args or {})
    config = args.pop("config", None)
    overrides = args.pop("overrides", None) or {}
    if args:
        raise ConfigError(
            f"unknown application args {sorted(args)}: use 'config' (YAML path) and "
            "'overrides' (dotted keys)"
        )
    if not isinstance(overrides, dict):
        raise ConfigError("application arg 'overrides' must be a mapping of dotted keys")
    cfg = with_overrides(load_config(config), overrides)
    return build_app(cfg)


def server_url(cfg: ReciclConfig) -> str:
    prefix = cfg.serve.route_prefix.rstrip("/")
    return f"http://{cfg.serve.host}:{cfg.serve.port}{prefix}"


def start_app(cfg: ReciclConfig, *, wait: bool = True, timeout: float = 180.0) -> str:
    """Start Serve's HTTP proxy on ``serve.host:serve.port``, deploy the app, and return its URL;
    with ``wait``, only once ``/healthz`` answers 200 (a model version is loaded)."""
    import httpx

    from recicl.raycluster import ensure_ray

    ensure_ray(cfg.ray)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_app(cfg), name=APP_NAME, route_prefix=cfg.serve.route_prefix)
    url = server_url(cfg)
    if not wait:
        return url
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=10).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ServeError(f"the app at {url} did not become healthy within {timeout:.0f}s")


def run_server(
    cfg: ReciclConfig, *, blocking: bool = True, on_ready: Callable[[str], None] | None = None
) -> str:
    """Start Serve (HTTP on ``serve.host:serve.port``), deploy the app, return its URL.

    ``blocking``: wait until SIGTERM/SIGINT, then shut Serve down. Without it the app keeps
    running only as long as the Ray cluster does (use a cluster: ``RAY_ADDRESS``).
    """
    url = start_app(cfg, wait=False)
    if on_ready is not None:
        on_ready(url)
    if blocking:
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            while not stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            serve.shutdown()
    return url


__all__ = [
    "API_DEPLOYMENT",
    "APP_NAME",
    "MODEL_DEPLOYMENT",
    "ApiServer",
    "ModelServer",
    "ServeError",
    "ServingModel",
    "app_builder",
    "build_app",
    "load_serving_model",
    "request_models",
    "resolve_settings",
    "run_jobs",
    "run_server",
]
