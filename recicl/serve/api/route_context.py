"""What every group of routes shares: the backend, the config, the clock and the checks.

The routes are registered by several small functions (:mod:`recicl.serve.api.routes`,
:mod:`recicl.serve.api.feedback`) instead of one long closure; they all decide bad input the same
way because they call the same checks, here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from recicl.config import ReciclConfig
from recicl.serve.api.access import AccessGuard, bearer_token, token_accepted
from recicl.serve.api.backend import ApiBackend, ModelError, ModelJob, ModelRef, ModelReply
from recicl.serve.api.errors import ApiError, field_error, validation_error
from recicl.serve.api.parsing import duplicates, parse_model_ref, validated
from recicl.serve.api.schemas import EventIn, request_schemas
from recicl.serve.api.traffic import TrafficRouter

#: Events may be stamped at most this far in the future (clock skew); later ones are refused,
#: as training quarantines them (they would sort after "now", the time of every query).
FUTURE_SKEW_SECONDS = 86_400

log = logging.getLogger("recicl.serve")


class RouteContext:
    """The backend and config of one app, and the checks its routes share."""

    def __init__(
        self,
        backend: ApiBackend,
        cfg: ReciclConfig,
        admin_token: str | None,
        clock: Callable[[], float],
        access: AccessGuard | None = None,
    ) -> None:
        self.backend, self.cfg, self.sc = backend, cfg, cfg.serve
        self.admin_token = admin_token
        #: serve.access: the write credential, client rates, event quotas (counted in memory
        #: unless the caller shares a Redis: see recicl.serve.api.access)
        self.access = access or AccessGuard(
            cfg.serve.access, cfg.serve.access.write_token, "memory://"
        )
        self.clock = clock
        self.schemas = request_schemas(cfg)
        self.score_body = TypeAdapter(self.schemas.score)
        self.recommend_body = TypeAdapter(self.schemas.recommend)
        self.one_event = TypeAdapter(self.schemas.event)
        self.traffic_body = TypeAdapter(self.schemas.traffic)
        self.items_body = TypeAdapter(self.schemas.items)
        self.traffic = TrafficRouter(self)  # which version answers; the shadow scorings

    def now(self) -> int:
        """Server time in unix seconds: default event time, served-score time, window ends."""
        return int(self.clock())

    # -- checks against the served version and the clock ---------------------------------------

    async def check_served(
        self, items: list[str], items_field: str, ratings: list[tuple[str, float]]
    ) -> None:
        """422 for ``items`` not in the served version's catalog (trained or added while
        serving), or a ``(field, rating)`` off its rating scale. Nothing to check against until
        a version is loaded."""
        served = await self.backend.served_version()
        if served is None:
            return
        unknown = list(dict.fromkeys(i for i in items if i not in served.item_ids))
        if unknown and not self.sc.allow_unknown_items:
            # added through another ingress replica since this one looked? (one store read;
            # only requests naming unknown ids pay it)
            served = await self.backend.served_version(refresh_items=True) or served
            unknown = [i for i in unknown if i not in served.item_ids]
        if unknown and not self.sc.allow_unknown_items:
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

    @staticmethod
    def check_time(timestamp: int | None, where: str, now: int) -> int:
        if timestamp is None:
            return now
        if timestamp > now + FUTURE_SKEW_SECONDS:
            raise field_error(
                where, f"{timestamp} is in the future (now is {now}); send unix seconds"
            )
        return timestamp

    def label_of(self, label: int | None, rating: float | None) -> int:
        if label is not None:
            return label
        assert rating is not None  # the schema requires a label or a rating
        return int(rating >= self.cfg.data.like_threshold)

    async def resolve_model(self, text: str | None) -> str | None:
        """``model`` → a version number (None = the served alias's version); 404 for another
        registered model or a reference the registry does not know, 403 for one that
        ``serve.selectable_models`` does not list."""
        if text is None:
            return None
        backend = self.backend
        ref = parse_model_ref(text)
        if ref.name != backend.model_name:
            raise ApiError(
                404,
                "model_not_found",
                f"model: this server serves {backend.model_name!r}, not {ref.name!r}",
            )
        if ref.alias == self.sc.alias:
            return None  # the served alias: the replicas' hot-swapped pointer
        self.check_selectable(ref)
        version = await backend.lookup_version(ref)
        if version is None:
            kind, what = ("alias", ref.alias) if ref.alias is not None else ("version", ref.version)
            raise ApiError(
                404,
                "model_not_found",
                f"model: {backend.model_name} has no {kind} {what!r} in the registry",
            )
        return version

    def check_selectable(self, ref: ModelRef) -> None:
        """403 unless ``serve.selectable_models`` lists the alias or version ``ref`` names.

        Checked before the registry lookup and before any replica sees the request: a named
        version is loaded on the model replicas (evicting others, minutes of GPU time for a large
        model), so which versions clients may reach is the operator's decision, not theirs."""
        allowed = self.sc.selectable_models
        wanted = ref.alias if ref.alias is not None else str(int(ref.version or "0"))
        if wanted in allowed:
            return
        name = self.backend.model_name
        listed = [f"{name}@{self.sc.alias}"] + [
            f"{name}/{a}" if a.isdigit() else f"{name}@{a}" for a in allowed
        ]
        raise ApiError(
            403,
            "model_not_selectable",
            f"model: {ref.text!r} may not be requested on this server; allowed: "
            f"{', '.join(listed)} (leave `model` out for the served alias; the operator lists "
            "more in serve.selectable_models)",
            field="model",
            allowed=listed,
        )

    @staticmethod
    def check_unique(candidates: list[str]) -> None:
        repeated = duplicates(candidates)
        if repeated:
            raise field_error("candidates", f"duplicate item ids {repeated[:20]}")

    async def score(self, job: ModelJob, version: str | None) -> ModelReply | ModelError:
        """``backend.score``, with a reply holding a score that is not a probability (NaN,
        infinite, outside [0, 1]: a broken version or a numeric fault) turned into a 503
        ``invalid_scores`` naming the version. Such a score must never reach a client (JSON has
        no NaN; a ranking by it is meaningless) nor the feedback log (which refuses it), and as
        a refusal it makes a split candidate fall back to the champion like any other."""
        reply = await self.backend.score(job, version)
        if isinstance(reply, ModelError):
            return reply
        bad = [item for item, score in reply.scores if not 0.0 <= score <= 1.0]  # NaN too
        if not bad:
            return reply
        log.error(
            "version %s returned %d score(s) outside [0, 1] or not finite (e.g. item %r): refused",
            reply.model_version,
            len(bad),
            bad[0],
        )
        return ModelError(
            503,
            "invalid_scores",
            f"model version {reply.model_version} returned {len(bad)} score(s) that are not "
            "probabilities (NaN, infinite or outside [0, 1]); nothing was served or logged. "
            "Retry later or leave `model` out; the operator has the details in the server log",
            model_version=reply.model_version,
        )

    async def scored(self, job: ModelJob, version: str | None) -> ModelReply:
        reply = await self.score(job, version)
        if isinstance(reply, ModelError):
            raise ApiError(
                reply.status, reply.code, reply.detail, headers=reply.headers(), **reply.extra()
            )
        return reply

    def is_admin(self, authorization: str | None) -> bool:
        """Whether ``authorization`` carries a valid admin token (routes that show more to the
        operator than to clients; no error for anyone else)."""
        token = bearer_token(authorization)
        return bool(self.admin_token and token and token_accepted(token, self.admin_token))

    def check_admin(self, authorization: str | None) -> None:
        if not self.admin_token:
            raise ApiError(
                404,
                "admin_disabled",
                "admin routes are disabled: set serve.admin_token or RECICL_ADMIN_TOKEN",
            )
        token = bearer_token(authorization)
        if token is None:
            raise ApiError(
                401, "unauthorized", "Authorization: send 'Authorization: Bearer <admin token>'"
            )
        if not token_accepted(token, self.admin_token):
            raise ApiError(403, "forbidden", "Authorization: wrong admin token")

    def parse_events(self, payload: Any) -> tuple[list[EventIn], bool]:
        """(events, is_list): one event object or a list of them; errors name the field."""
        if isinstance(payload, dict):
            return [validated(self.one_event, payload)], False
        if not isinstance(payload, list):
            raise field_error("body", "send one event object or a list of event objects")
        if not payload:
            raise field_error("body", "the list of events is empty")
        limit = self.sc.max_events_per_request
        if len(payload) > limit:
            raise field_error(
                "body", f"{len(payload)} events is over the limit of {limit} per request"
            )
        problems: list[Any] = []
        events: list[EventIn] = []
        for i, item in enumerate(payload):
            try:
                events.append(self.one_event.validate_python(item))
            except PydanticValidationError as error:
                problems += [{**p, "loc": (i, *p["loc"])} for p in error.errors()]
        if problems:
            raise validation_error(problems)
        return events, True

    # -- OpenAPI --------------------------------------------------------------------------------

    def body_of(self, *names: str, array_of: str | None = None) -> dict[str, Any]:
        """``openapi_extra`` documenting a hand-parsed request body (see routes' docstring)."""
        refs: list[dict[str, Any]] = [{"$ref": f"#/components/schemas/{n}"} for n in names]
        if array_of is not None:
            refs.append(
                {
                    "type": "array",
                    "items": {"$ref": f"#/components/schemas/{array_of}"},
                    "minItems": 1,
                    "maxItems": self.sc.max_events_per_request,
                }
            )
        schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
        return {
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        }
