"""The HTTP API as a FastAPI app over an :class:`~recicl.serve.api.backend.ApiBackend`.

Everything a request can get wrong is decided here (schemas, duplicates, unknown items, ratings
outside the served version's scale, timestamps in the future, model references, admin auth), so
it is tested with FastAPI's ``TestClient`` and a small in-test backend, without Ray. The checks
live in :class:`~recicl.serve.api.route_context.RouteContext`, shared by the groups of routes
registered below and by the feedback and traffic routes (:mod:`recicl.serve.api.feedback`,
:mod:`recicl.serve.api.traffic`: which version answers, shadow scoring, /admin/traffic; and
:mod:`recicl.serve.api.items`: catalog items added while serving, /admin/items). Request
bodies are parsed by hand (not by FastAPI's body parameters) because ``POST /v1/events`` takes
one event *or* a list, and one parser for every route keeps the JSON errors identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from recicl.config import ReciclConfig
from recicl.serve.api.access import AccessGuard
from recicl.serve.api.backend import ApiBackend, ModelError, ModelJob
from recicl.serve.api.errors import ApiError, error_body, install_error_handlers
from recicl.serve.api.feedback import add_feedback_routes, log_served, request_id_of
from recicl.serve.api.items import add_item_routes
from recicl.serve.api.middleware import BodyGuard
from recicl.serve.api.parsing import read_json, validated
from recicl.serve.api.route_context import RouteContext
from recicl.serve.api.schemas import (
    ErrorResponse,
    EventsResponse,
    RecommendResponse,
    RequestSchemas,
    ScoreResponse,
)
from recicl.serve.api.traffic import add_traffic_routes
from recicl.serve.registry_cache import RegistryUnavailableError
from recicl.serve.store import Event


def create_api(
    backend: ApiBackend,
    cfg: ReciclConfig,
    *,
    admin_token: str | None,
    clock: Callable[[], float] = time.time,
    access: AccessGuard | None = None,
    on_start: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The FastAPI app of one ingress: routes validate, ``backend`` does the rest.

    ``clock`` (unix seconds) stamps events without a timestamp and served scores, and ends the
    windows of the feedback log; tests pass their own to step through those windows.
    ``access``: ``serve.access`` with the resolved write token and shared counters (default:
    the config's token, counters in memory). ``on_start``: awaited in the app's lifespan
    startup, which Serve runs before the replica takes traffic."""
    ctx = RouteContext(backend, cfg, admin_token, clock, access)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_start is not None:
            await on_start()
        yield

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": text}
        for code, text in {
            400: "Malformed JSON",
            401: "No write token on an event write (serve.access.write_token)",
            403: "Model not in serve.selectable_models, or a wrong token",
            404: "Unknown route / model",
            413: "Body too large",
            415: "No 'Content-Type: application/json' on a body",
            422: "Invalid field, unknown item ids or rating off the scale",
            429: "Over a client rate or an event quota of serve.access (with Retry-After)",
            503: "No model loaded, scores that are not probabilities, the model replicas' "
            "queues full (overloaded), or the interaction store or registry unavailable (the "
            "last three with Retry-After)",
        }.items()
    }
    app = FastAPI(
        title="recicl",
        version="1",
        description="Real-time personalized scoring with an in-context-learning recommender. "
        "Errors are JSON {error, detail} naming the field.",
        responses=errors,
        dependencies=[Depends(ctx.access.limit_client)],  # every route but /healthz
        lifespan=lifespan,
    )
    app.state.route_context = ctx  # e.g. tests wait for its shadow scorings (ctx.traffic.drain)
    app.add_middleware(BodyGuard, max_bytes=ctx.sc.max_body_bytes)
    install_error_handlers(app)
    add_event_routes(app, ctx)
    add_scoring_routes(app, ctx)
    add_status_routes(app, ctx)
    add_feedback_routes(app, ctx)
    add_traffic_routes(app, ctx)
    add_item_routes(app, ctx)
    install_openapi(app, ctx.schemas)
    return app


def add_event_routes(app: FastAPI, ctx: RouteContext) -> None:
    """``POST /v1/events``: store events, then join them with the scores they answer."""

    @app.post(
        "/v1/events",
        response_model=EventsResponse,
        tags=["events"],
        openapi_extra=ctx.body_of("EventIn", array_of="EventIn"),
    )
    async def post_events(
        request: Request,
        authorization: str | None = Header(
            None, description="'Bearer <write token>' when serve.access has one"
        ),
    ) -> Any:
        """Store one event or a list (atomically); they shape the user's next scores."""
        ctx.access.check_write(authorization)
        events, is_list = ctx.parse_events(await read_json(request))
        prefix = [f"[{i}]." if is_list else "" for i in range(len(events))]
        await ctx.check_served(
            [e.item_id for e in events],
            "item_id",
            [
                (f"{p}rating", e.rating)
                for p, e in zip(prefix, events, strict=True)
                if e.rating is not None
            ],
        )
        now = ctx.now()
        records = [
            Event(
                e.user_id,
                e.item_id,
                ctx.label_of(e.label, e.rating),
                ctx.check_time(e.timestamp, f"{p}timestamp", now),
                e.rating,
            )
            for p, e in zip(prefix, events, strict=True)
        ]
        await ctx.access.take_events([e.user_id for e in records])  # 429 stores nothing
        new = await ctx.backend.append_events(records)
        # after the append: an event is joined only once it is stored (a failed append joins
        # nothing), and a retried POST finds its score already joined (a counted duplicate)
        await ctx.backend.record_outcomes(records, now)
        return {"accepted": len(records), "new": new, "model_version": ctx.backend.last_version}


def add_scoring_routes(app: FastAPI, ctx: RouteContext) -> None:
    """``POST /v1/score`` and ``POST /v1/recommend``; both log the scores they show."""
    sc = ctx.sc

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        tags=["scoring"],
        openapi_extra=ctx.body_of("ScoreRequest"),
    )
    async def post_score(request: Request, response: Response) -> Any:
        """P(Yes) per candidate, with the user's newest stored events (or `history`) as context."""
        request_id = request_id_of(request, response, sc.max_string_length)
        body = validated(ctx.score_body, await read_json(request))
        ctx.check_unique(body.candidates)
        version = await ctx.resolve_model(body.model)
        if body.history is not None:
            history = body.history
            await ctx.check_served(
                [h.item_id for h in history],
                "history",
                [
                    (f"history[{i}].rating", h.rating)
                    for i, h in enumerate(history)
                    if h.rating is not None
                ],
            )
            now, n = ctx.now(), len(history)
            events = [
                Event(
                    body.user_id,
                    h.item_id,
                    ctx.label_of(h.label, h.rating),
                    ctx.check_time(h.timestamp, f"history[{i}].timestamp", now)
                    if h.timestamp is not None
                    else now - n + i,  # list order is time order
                    h.rating,
                )
                for i, h in enumerate(history)
            ]
        else:
            events = await ctx.backend.latest_events(body.user_id)
        job = ModelJob(body.user_id, tuple(events), tuple(body.candidates), sc.allow_unknown_items)
        answer = await ctx.traffic.answer(job, version)
        reply = answer.reply
        await log_served(ctx, request_id, job, answer, list(reply.scores))
        return {
            "model_version": reply.model_version,
            "model": reply.model,
            "scores": [{"item_id": i, "score": s} for i, s in reply.scores],
            "context_events": reply.context_events,
            "request_id": request_id,
            "arm": answer.arm,
        }

    @app.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        tags=["scoring"],
        openapi_extra=ctx.body_of("RecommendRequest"),
    )
    async def post_recommend(request: Request, response: Response) -> Any:
        """Top-k of `candidates`, or of recent popular items the user has not seen."""
        request_id = request_id_of(request, response, sc.max_string_length)
        body = validated(ctx.recommend_body, await read_json(request))
        if body.candidates is not None:
            ctx.check_unique(body.candidates)
        version = await ctx.resolve_model(body.model)
        events = tuple(await ctx.backend.latest_events(body.user_id))
        if body.candidates is not None:
            job = ModelJob(body.user_id, events, tuple(body.candidates), sc.allow_unknown_items)
        else:
            job = ModelJob(
                body.user_id,
                events,
                None,
                sc.allow_unknown_items,
                pool=tuple(await ctx.backend.recent_items()),
                exclude=frozenset(await ctx.backend.seen_items(body.user_id)),
                pool_size=min(sc.candidate_pool_size, sc.max_candidates),
            )
        answer = await ctx.traffic.answer(job, version)
        reply = answer.reply
        ranked = sorted(reply.scores, key=lambda pair: (-pair[1], pair[0]))
        await log_served(ctx, request_id, job, answer, ranked[: body.k])
        return {
            "model_version": reply.model_version,
            "model": reply.model,
            "items": [{"item_id": i, "score": s} for i, s in ranked[: body.k]],
            "context_events": reply.context_events,
            "candidates_scored": len(ranked),
            "request_id": request_id,
            "arm": answer.arm,
        }


def add_status_routes(app: FastAPI, ctx: RouteContext) -> None:
    """``GET /v1/models``, ``GET /healthz`` and ``POST /admin/reload`` (the admin traffic
    routes: :mod:`recicl.serve.api.traffic`).

    Both read routes report the registry (``registry``: ok / unreachable / unknown,
    ``registry_last_answer_s``) without waiting on it: the backend answers from its cache."""
    backend = ctx.backend

    @app.get("/v1/models", tags=["models"])
    async def get_models(
        authorization: str | None = Header(
            None, description="'Bearer <admin token>' adds the operator's details"
        ),
    ) -> Any:
        """The served alias/version (of the replica that answers), the traffic arms (each with
        its version and share) and the registry's versions as last answered
        (``versions_age_s`` old; null while the registry never answered). Paths, run ids, tags
        and load errors only with the admin token (:data:`OPERATOR_FIELDS`)."""
        operator = ctx.is_admin(authorization)
        status = await backend.model_status()
        try:
            listing = await backend.registry_versions()
            versions, age = listing.versions, round(listing.age_s, 3)
        except RegistryUnavailableError:  # informative only: not worth a 5xx
            versions, age = None, None
        details = status.details if operator else public_view(status.details)
        if versions is not None and not operator:
            versions = [public_view(row) for row in versions]
        return {
            "model_version": status.model_version,
            "registered_model": backend.model_name,
            "alias": status.details.get("alias"),
            "served": {"model_version": status.model_version, **details},
            "traffic": await ctx.traffic.view(status.model_version),
            "versions": versions,
            "versions_age_s": age,
            **(await backend.registry_status()).to_json(),
        }

    @app.get("/healthz", tags=["ops"])
    async def healthz(
        authorization: str | None = Header(
            None, description="'Bearer <admin token>' adds why no version is loaded"
        ),
    ) -> Any:
        """200 when the store answers and a model version is loaded, else 503. The registry is
        reported, not required: while MLflow is down the replicas keep their versions and the
        ingress its last known answers, so serving goes on."""
        store_ok = await backend.store_healthy()
        try:
            status = await asyncio.wait_for(backend.model_status(), timeout=10)
            version, model = status.model_version, status.details.get("model")
            problem = status.details.get("last_error")
        except Exception as error:  # a replica that does not answer is "unavailable", not a 500
            version, model, problem = None, None, f"{type(error).__name__}: {error}"
        body = {
            "status": "ok" if store_ok and version else "unavailable",
            "model_version": version,
            "model": model,
            "store": "ok" if store_ok else "unavailable",
            **(await backend.registry_status()).to_json(),
        }
        if store_ok and version:
            return body
        if not store_ok:
            detail = "store: unavailable"
        elif ctx.is_admin(authorization):
            detail = f"model: no version loaded ({problem or 'starting'})"
        else:  # the cause may name hosts, paths, URLs: the operator's, with the admin token
            detail = "model: no version loaded yet (the admin token shows why)"
        return JSONResponse({**error_body("unavailable", detail), **body}, status_code=503)

    @app.post("/admin/reload", tags=["admin"])
    async def admin_reload(
        authorization: str | None = Header(None),
        force: bool = Query(False, description="Reload even if the alias did not move."),
    ) -> Any:
        """Re-check the alias now on the answering replica (others follow within one poll)."""
        ctx.check_admin(authorization)
        reply = await backend.reload(force)
        if isinstance(reply, ModelError):
            raise ApiError(
                reply.status, reply.code, reply.detail, headers=reply.headers(), **reply.extra()
            )
        return reply


#: What ``GET /v1/models`` shows only with the admin token: filesystem paths, the last load
#: error (hosts, URLs), the registry's run ids and tags. Everything else is public.
OPERATOR_FIELDS = frozenset({"catalog_path", "last_error", "run_id", "tags"})


def public_view(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` without :data:`OPERATOR_FIELDS`."""
    return {key: value for key, value in row.items() if key not in OPERATOR_FIELDS}


def install_openapi(app: FastAPI, schemas: RequestSchemas) -> None:
    """FastAPI's schema plus the request bodies (validated by hand, see the module docstring)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in schemas.all():
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI documents this override
