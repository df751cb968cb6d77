"""The feedback side of the HTTP API: request ids, the served-score log and live metrics.

Every ``/v1/score`` and ``/v1/recommend`` response names its request id and the version and arm
that answered, and the scores it showed are logged under them
(:mod:`recicl.serve.store.feedback`); ``POST /v1/events`` joins events to those scores;
``GET /v1/metrics/live`` reports how each version and arm does on them
(:func:`recicl.serve.live_metrics.live_report`).

Why reuse ``X-Request-ID``: Ray Serve's proxy already gives every HTTP request an id in that
header (the client's own when it sent one) and returns it in the response, and Serve's logs carry
it. Logging scores under the same id lets one find a request's scores from its log line and the
other way round; a second id would have to be mapped to the first.
"""

from __future__ import annotations

import re
import uuid

from fastapi import FastAPI, Header, Query, Request, Response

from recicl.serve.api.backend import ModelJob
from recicl.serve.api.errors import field_error
from recicl.serve.api.route_context import RouteContext
from recicl.serve.api.schemas import LiveMetricsResponse
from recicl.serve.api.traffic import Answer
from recicl.serve.store.feedback import ServedScore

#: Ray Serve's request-id header (``ray.serve._private.constants.SERVE_HTTP_REQUEST_ID_HEADER``).
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: safe in logs, keys and headers


def request_id_of(request: Request, response: Response, max_length: int) -> str:
    """The request's id: its ``X-Request-ID`` (sent by the client or set by Serve's proxy), or a
    new one, returned in ``X-Request-ID`` (under Serve the proxy returns it, so it is only set
    here when there was none)."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is None:
        new = uuid.uuid4().hex
        response.headers["X-Request-ID"] = new
        return new
    if not _REQUEST_ID.match(given) or len(given) > max_length:
        raise field_error(
            "X-Request-ID",
            f"must be 1 to {max_length} visible ASCII characters without spaces (got "
            f"{given[:40]!r}); send a UUID or leave the header out to get one",
        )
    return given


async def log_served(
    ctx: RouteContext,
    request_id: str,
    job: ModelJob,
    answer: Answer,
    shown: list[tuple[str, float]],
) -> None:
    """Log the scores a response shows (for ``/v1/recommend`` the top k, not every candidate
    scored: the user can only react to what was shown, and unshown items would only pile up as
    scores that were never answered), then start the shadow scoring of the same items, if any
    (after the answer's own log, off the response's path)."""
    now, reply = ctx.now(), answer.reply
    scores = [
        ServedScore(
            request_id, job.user_id, item, reply.model_version, answer.arm, reply.policy, score, now
        )
        for item, score in shown
    ]
    await ctx.backend.record_served(scores, now)
    ctx.traffic.shadow(answer, request_id, job, shown, now)


def add_feedback_routes(app: FastAPI, ctx: RouteContext) -> None:
    """``GET /v1/metrics/live``."""
    fb = ctx.sc.feedback

    @app.get("/v1/metrics/live", response_model=LiveMetricsResponse, tags=["feedback"])
    async def get_live_metrics(
        window: int | None = Query(
            None,
            description="Seconds back from now: scores served since then are counted; default "
            f"serve.feedback.metrics_window_seconds ({fb.metrics_window_seconds}), at most "
            f"serve.feedback.retention_seconds ({fb.retention_seconds}).",
        ),
        authorization: str | None = Header(
            None, description="'Bearer <admin token>' when serve.access.metrics_need_admin"
        ),
    ) -> object:
        """AUC, LogLoss, joined count and like rate per version and arm on live traffic, with
        the counts of unjoined scores and of late, duplicate and unscored events."""
        if ctx.sc.access.metrics_need_admin:
            ctx.check_admin(authorization)
        window_s = fb.metrics_window_seconds if window is None else window
        if not 1 <= window_s <= fb.retention_seconds:
            raise field_error(
                "window",
                f"{window_s} is outside 1 to {fb.retention_seconds} seconds (scores are kept "
                f"serve.feedback.retention_seconds); e.g. ?window={fb.metrics_window_seconds}",
            )
        return await ctx.backend.live_metrics(window_s, ctx.now())
