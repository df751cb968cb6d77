"""What the HTTP routes need from the rest of serving: one protocol and the typed messages.

The routes (:mod:`recicl.serve.api.routes`) validate requests and shape responses; everything
stateful (the model replicas, the interaction store, the registry) sits behind
:class:`ApiBackend`. In production the Serve ingress deployment implements it over Serve handles
(:mod:`recicl.serve.ingress`); tests implement it in a few lines and drive the routes with
FastAPI's ``TestClient``, without Ray. The job and reply dataclasses are what crosses the
ingress → model-replica boundary, so they are plain, picklable and Ray-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from recicl.config import TrafficConfig
from recicl.serve.registry_cache import RegistryStatus
from recicl.serve.store import CatalogItem, Event
from recicl.serve.store.feedback import FeedbackCounts, ServedScore


@dataclass(frozen=True)
class ModelJob:
    """One request's work for a model replica: score ``candidates`` in the context of ``events``.

    ``candidates=None`` asks the replica to fill the list itself (``/v1/recommend`` without
    candidates): ``pool`` first, then the version's catalog, skipping ``exclude``, up to
    ``pool_size`` items. ``allow_unknown`` lets item ids outside the catalog through.
    ``items_revision``: the store revision of added catalog items the ingress validated the
    request against; a replica behind it catches up first (:mod:`recicl.serve.catalog_items`).
    """

    user_id: str
    events: tuple[Event, ...]
    candidates: tuple[str, ...] | None
    allow_unknown: bool = False
    pool: tuple[str, ...] = ()
    exclude: frozenset[str] = frozenset()
    pool_size: int = 0
    items_revision: int = 0


@dataclass(frozen=True)
class ModelReply:
    """Scores of one job, in candidate order, and which version produced them."""

    model_version: str
    model: str  # "recicl/3"
    catalog_path: str
    scores: tuple[tuple[str, float], ...]
    context_events: int
    rating_range: tuple[float, float] | None = None  # the version's scale (None: unchecked)
    #: How the version chose the prompt context ("<demo_policy>/<history_policy>"), logged with
    #: every served score so live metrics can be split by it.
    policy: str = "unknown"


@dataclass(frozen=True)
class ModelError:
    """A replica's refusal (unknown items, no version loaded, ...), mapped 1:1 to an error
    response; a value rather than an exception so that it crosses process boundaries intact."""

    status: int
    code: str
    detail: str
    field: str | None = None
    unknown: tuple[str, ...] = ()
    model_version: str | None = None  # the version at fault, when one is
    retry_after: int | None = None  # seconds, for a refusal that passes (full queues)

    def headers(self) -> dict[str, str] | None:
        """The response headers of the refusal (``Retry-After`` when it passes)."""
        return None if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def extra(self) -> dict[str, Any]:
        """The optional members of the error body (only those that are set)."""
        out: dict[str, Any] = {}
        if self.field is not None:
            out["field"] = self.field
        if self.unknown:
            out["unknown"] = list(self.unknown)
        if self.model_version is not None:
            out["model_version"] = self.model_version
        return out


@dataclass(frozen=True)
class ServedVersion:
    """What request validation needs to know about the version behind the served alias."""

    version: str
    item_ids: frozenset[str]
    rating_range: tuple[float, float] | None = None  # None: the source's scale is unchecked


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``model`` field: ``name@alias`` or ``name/<version>``."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def text(self) -> str:
        return (
            f"{self.name}@{self.alias}" if self.alias is not None else f"{self.name}/{self.version}"
        )


@dataclass
class ModelStatus:
    """The answering replica's self-description (``/v1/models``, ``/healthz``)."""

    model_version: str | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegistryListing:
    """The registry's versions (``GET /v1/models``) as last answered: while MLflow is down the
    listing it gave ``age_s`` seconds ago is shown rather than an error."""

    versions: list[dict[str, Any]]
    age_s: float


class ApiBackend(Protocol):
    """Everything stateful the routes use. Methods may raise only for server faults (→ 500),
    an unreachable store (``StoreUnavailableError``) or registry
    (:class:`~recicl.serve.registry_cache.RegistryUnavailableError`) (→ 503 with
    ``Retry-After``); expected refusals come back as values (:class:`ModelError`, ``None``)."""

    @property
    def model_name(self) -> str:
        """The registered model served (requests naming another model get 404)."""
        ...

    @property
    def last_version(self) -> str | None:
        """The served version this ingress saw last (reported by ``POST /v1/events``)."""
        ...

    async def served_version(self, refresh_items: bool = False) -> ServedVersion | None:
        """The served alias's version (its catalog with the items added while serving, rating
        scale); None while none is loaded. ``refresh_items``: read the items added since this
        ingress last looked first (another ingress replica may have added them)."""
        ...

    async def add_items(self, items: list[CatalogItem]) -> dict[str, Any]:
        """Store catalog items (one atomic write; all were validated) and have a model replica
        take them at once: ``{"items_revision": r, "served": <replica state> | None}``."""
        ...

    async def lookup_version(self, ref: ModelRef) -> str | None:
        """The registry version ``ref`` names (an alias other than the served one, or a version
        number); None when the registry has no such alias or version. Answered from a cache
        off the request path; ``RegistryUnavailableError`` when the registry is unreachable
        and has never answered for ``ref`` (a last known answer is served instead)."""
        ...

    async def score(self, job: ModelJob, version: str | None) -> ModelReply | ModelError:
        """Score ``job`` on ``version`` (None: the served alias's version)."""
        ...

    async def latest_events(self, user_id: str) -> list[Event]:
        """The user's newest stored events (``serve.context_events`` of them), oldest first."""
        ...

    async def append_events(self, events: list[Event]) -> int:
        """Store a batch atomically; return how many were new."""
        ...

    async def seen_items(self, user_id: str) -> set[str]:
        """Items the user has events for (never recommended back)."""
        ...

    async def recent_items(self) -> list[str]:
        """Recently popular items, most popular first (the default recommendation pool)."""
        ...

    async def model_status(self) -> ModelStatus:
        """The answering model replica's status."""
        ...

    async def registry_versions(self) -> RegistryListing:
        """The registry's versions of the served model, newest first, as last answered;
        ``RegistryUnavailableError`` when the registry never answered."""
        ...

    async def registry_status(self) -> RegistryStatus:
        """Whether the registry answers lately and since when (``/healthz``); never waits on
        the registry."""
        ...

    async def store_healthy(self) -> bool:
        """True when the interaction store answers."""
        ...

    async def record_served(self, scores: list[ServedScore], now: int) -> None:
        """Log the scores a response showed in the feedback log (server time ``now``)."""
        ...

    async def record_outcomes(self, events: list[Event], now: int) -> FeedbackCounts:
        """Join stored events with the scores they answer; counts by kind, version and arm."""
        ...

    async def live_metrics(self, window_s: int, now: int) -> dict[str, Any]:
        """:func:`recicl.serve.live_metrics.live_report` of the last ``window_s`` seconds."""
        ...

    async def reload(self, force: bool) -> dict[str, Any] | ModelError:
        """Re-check the served alias now (``force``: reload even if it did not move)."""
        ...

    async def traffic_override(self) -> TrafficConfig | None:
        """The traffic setting made through ``PUT /admin/traffic`` (None: ``serve.traffic``
        applies); shared by every ingress replica (:mod:`recicl.serve.traffic`)."""
        ...

    async def set_traffic_override(self, traffic: TrafficConfig | None) -> None:
        """Keep ``traffic`` as the admin setting (None: back to ``serve.traffic``)."""
        ...
