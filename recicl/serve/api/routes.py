"""The HTTP API as a FastAPI app over an :class:`~recicl.serve.api.backend.ApiBackend`.

Everything a request can get wrong is decided here (schemas, duplicates, unknown items, ratings
outside the served version's scale, timestamps in the future, model references, admin auth), so
it is tested with FastAPI's ``TestClient`` and a small in-test backend, without Ray. Request
bodies are parsed by hand (not by FastAPI's body parameters) because ``POST /v1/events`` takes
one event *or* a list, and one parser for every route keeps the JSON errors identical.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from recicl.config import ReciclConfig
from recicl.serve.api.backend import ApiBackend, ModelError, ModelJob, ModelReply
from recicl.serve.api.errors import (
    ApiError,
    error_body,
    field_error,
    install_error_handlers,
    validation_error,
)
from recicl.serve.api.middleware import BodyGuard
from recicl.serve.api.parsing import duplicates, parse_model_ref, read_json, validated
from recicl.serve.api.schemas import (
    ErrorResponse,
    EventIn,
    EventsResponse,
    RecommendResponse,
    ScoreResponse,
    request_schemas,
)
from recicl.serve.store import Event

#: Events may be stamped at most this far in the future (clock skew); later ones are refused,
#: as training quarantines them (they would sort after "now", the time of every query).
FUTURE_SKEW_SECONDS = 86_400


def create_api(backend: ApiBackend, cfg: ReciclConfig, *, admin_token: str | None) -> FastAPI:
    """The FastAPI app of one ingress: routes validate, ``backend`` does the rest."""
    sc = cfg.serve
    schemas = request_schemas(cfg)
    score_body = TypeAdapter(schemas.score)
    recommend_body = TypeAdapter(schemas.recommend)
    one_event = TypeAdapter(schemas.event)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": text}
        for code, text in {
            400: "Malformed JSON",
            404: "Unknown route / model",
            413: "Body too large",
            415: "Not JSON",
            422: "Invalid field, unknown item ids or rating off the scale",
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
    app.add_middleware(BodyGuard, max_bytes=sc.max_body_bytes)
    install_error_handlers(app)

    # -- checks against the served version and the clock ---------------------------------------

    async def check_served(
        items: list[str], items_field: str, ratings: list[tuple[str, float]]
    ) -> None:
        """422 for ``items`` not in the served version's catalog, or a ``(field, rating)`` off
        its rating scale. Nothing to check against until a version is loaded."""
        served = await backend.served_version()
        if served is None:
            return
        unknown = list(dict.fromkeys(i for i in items if i not in served.item_ids))
        if unknown and not sc.allow_unknown_items:
            raise ApiError(
                422,
                "unknown_items",
                f"{items_field}: {len(unknown)} item id(s) are not in the catalog: {unknown[:20]}",
                field=items_field,
                unknown=unknown[:100],
            )
        if served.rating_range is not None:
            low, high = served.rating_range
            for where, rating in ratings:
                if not low <= rating <= high:
                    raise field_error(
                        where,
                        f"{rating} is outside the rating scale [{low}, {high}] of version "
                        f"{served.version}",
                    )

    def check_time(timestamp: int | None, where: str, now: int) -> int:
        if timestamp is None:
            return now
        if timestamp > now + FUTURE_SKEW_SECONDS:
            raise field_error(
                where, f"{timestamp} is in the future (now is {now}); send unix seconds"
            )
        return timestamp

    def label_of(label: int | None, rating: float | None) -> int:
        if label is not None:
            return label
        assert rating is not None  # the schema requires a label or a rating
        return int(rating >= cfg.data.like_threshold)

    async def resolve_model(text: str | None) -> str | None:
        """``model`` → a version number (None = the served alias's version)."""
        if text is None:
            return None
        ref = parse_model_ref(text)
        if ref.name != backend.model_name:
            raise ApiError(
                404,
                "model_not_found",
                f"model: this server serves {backend.model_name!r}, not {ref.name!r}",
            )
        if ref.alias == sc.alias:
            return None  # the served alias: the replicas' hot-swapped pointer
        version = await backend.lookup_version(ref)
        if version is None:
            kind, what = ("alias", ref.alias) if ref.alias is not None else ("version", ref.version)
            raise ApiError(
                404,
                "model_not_found",
                f"model: {backend.model_name} has no {kind} {what!r} in the registry",
            )
        return version

    def check_unique(candidates: list[str]) -> None:
        repeated = duplicates(candidates)
        if repeated:
            raise field_error("candidates", f"duplicate item ids {repeated[:20]}")

    async def scored(job: ModelJob, version: str | None) -> ModelReply:
        reply = await backend.score(job, version)
        if isinstance(reply, ModelError):
            raise ApiError(reply.status, reply.code, reply.detail, **reply.extra())
        return reply

    def check_admin(authorization: str | None) -> None:
        if not admin_token:
            raise ApiError(
                404,
                "admin_disabled",
                "admin routes are disabled: set serve.admin_token or RECICL_ADMIN_TOKEN",
            )
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401, "unauthorized", "Authorization: send 'Authorization: Bearer <admin token>'"
            )
        if not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
            raise ApiError(403, "forbidden", "Authorization: wrong admin token")

    def parse_events(payload: Any) -> tuple[list[EventIn], bool]:
        """(events, is_list): one event object or a list of them; errors name the field."""
        if isinstance(payload, dict):
            return [validated(one_event, payload)], False
        if not isinstance(payload, list):
            raise field_error("body", "send one event object or a list of event objects")
        if not payload:
            raise field_error("body", "the list of events is empty")
        if len(payload) > sc.max_events_per_request:
            raise field_error(
                "body",
                f"{len(payload)} events is over the limit of {sc.max_events_per_request} per "
                "request",
            )
        problems: list[Any] = []
        events: list[EventIn] = []
        for i, item in enumerate(payload):
            try:
                events.append(one_event.validate_python(item))
            except PydanticValidationError as error:
                problems += [{**p, "loc": (i, *p["loc"])} for p in error.errors()]
        if problems:
            raise validation_error(problems)
        return events, True

    # -- routes -----------------------------------------------------------------------------------

    body_doc = {"required": True, "content": {"application/json": {"schema": {}}}}

    def body_of(*names: str, array_of: str | None = None) -> dict[str, Any]:
        refs: list[dict[str, Any]] = [{"$ref": f"#/components/schemas/{n}"} for n in names]
        if array_of is not None:
            refs.append(
                {
                    "type": "array",
                    "items": {"$ref": f"#/components/schemas/{array_of}"},
                    "minItems": 1,
                    "maxItems": sc.max_events_per_request,
                }
            )
        schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
        return {"requestBody": {**body_doc, "content": {"application/json": {"schema": schema}}}}

    @app.post(
        "/v1/events",
        response_model=EventsResponse,
        tags=["events"],
        openapi_extra=body_of("EventIn", array_of="EventIn"),
    )
    async def post_events(request: Request) -> Any:
        """Store one event or a list (atomically); they shape the user's next scores."""
        events, is_list = parse_events(await read_json(request))
        prefix = [f"[{i}]." if is_list else "" for i in range(len(events))]
        await check_served(
            [e.item_id for e in events],
            "item_id",
            [
                (f"{p}rating", e.rating)
                for p, e in zip(prefix, events, strict=True)
                if e.rating is not None
            ],
        )
        now = int(time.time())
        records = [
            Event(
                e.user_id,
                e.item_id,
                label_of(e.label, e.rating),
                check_time(e.timestamp, f"{p}timestamp", now),
                e.rating,
            )
            for p, e in zip(prefix, events, strict=True)
        ]
        new = await backend.append_events(records)
        return {"accepted": len(records), "new": new, "model_version": backend.last_version}

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        tags=["scoring"],
        openapi_extra=body_of("ScoreRequest"),
    )
    async def post_score(request: Request) -> Any:
        """P(Yes) per candidate, with the user's newest stored events (or `history`) as context."""
        body = validated(score_body, await read_json(request))
        check_unique(body.candidates)
        version = await resolve_model(body.model)
        if body.history is not None:
            history = body.history
            await check_served(
                [h.item_id for h in history],
                "history",
                [
                    (f"history[{i}].rating", h.rating)
                    for i, h in enumerate(history)
                    if h.rating is not None
                ],
            )
            now, n = int(time.time()), len(history)
            events = [
                Event(
                    body.user_id,
                    h.item_id,
                    label_of(h.label, h.rating),
                    check_time(h.timestamp, f"history[{i}].timestamp", now)
                    if h.timestamp is not None
                    else now - n + i,  # list order is time order
                    h.rating,
                )
                for i, h in enumerate(history)
            ]
        else:
            events = await backend.latest_events(body.user_id)
        job = ModelJob(body.user_id, tuple(events), tuple(body.candidates), sc.allow_unknown_items)
        reply = await scored(job, version)
        return {
            "model_version": reply.model_version,
            "model": reply.model,
            "scores": [{"item_id": i, "score": s} for i, s in reply.scores],
            "context_events": reply.context_events,
        }

    @app.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        tags=["scoring"],
        openapi_extra=body_of("RecommendRequest"),
    )
    async def post_recommend(request: Request) -> Any:
        """Top-k of `candidates`, or of recent popular items the user has not seen."""
        body = validated(recommend_body, await read_json(request))
        if body.candidates is not None:
            check_unique(body.candidates)
        version = await resolve_model(body.model)
        events = tuple(await backend.latest_events(body.user_id))
        if body.candidates is not None:
            job = ModelJob(body.user_id, events, tuple(body.candidates), sc.allow_unknown_items)
        else:
            job = ModelJob(
                body.user_id,
                events,
                None,
                sc.allow_unknown_items,
                pool=tuple(await backend.recent_items()),
                exclude=frozenset(await backend.seen_items(body.user_id)),
                pool_size=min(sc.candidate_pool_size, sc.max_candidates),
            )
        reply = await scored(job, version)
        ranked = sorted(reply.scores, key=lambda pair: (-pair[1], pair[0]))
        return {
            "model_version": reply.model_version,
            "model": reply.model,
            "items": [{"item_id": i, "score": s} for i, s in ranked[: body.k]],
            "context_events": reply.context_events,
            "candidates_scored": len(ranked),
        }

    @app.get("/v1/models", tags=["models"])
    async def get_models() -> Any:
        """The served alias/version (of the replica that answers) and the registry's versions."""
        status = await backend.model_status()
        return {
            "model_version": status.model_version,
            "registered_model": backend.model_name,
            "alias": status.details.get("alias"),
            "served": {"model_version": status.model_version, **status.details},
            "versions": await backend.registry_versions(),
        }

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> Any:
        """200 when the store answers and a model version is loaded, else 503."""
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
        }
        if store_ok and version:
            return body
        detail = (
            "store: unavailable"
            if not store_ok
            else f"model: no version loaded ({problem or 'starting'})"
        )
        return JSONResponse({**error_body("unavailable", detail), **body}, status_code=503)

    @app.post("/admin/reload", tags=["admin"])
    async def admin_reload(
        authorization: str | None = Header(None),
        force: bool = Query(False, description="Reload even if the alias did not move."),
    ) -> Any:
        """Re-check the alias now on the answering replica (others follow within one poll)."""
        check_admin(authorization)
        reply = await backend.reload(force)
        if isinstance(reply, ModelError):
            raise ApiError(reply.status, reply.code, reply.detail, **reply.extra())
        return reply

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the request bodies (validated by hand, see the docstring)."""
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
    return app
