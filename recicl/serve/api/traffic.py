"""The traffic side of the HTTP API: which version answers, the shadow scorings, /admin/traffic.

The rules (the hashes, the shares, what each arm means) are :mod:`recicl.serve.traffic`; this
module applies them to requests. :class:`TrafficRouter` picks the version that answers a request
(a split's candidate or the served alias) and, after the answer is computed, starts the shadow
scoring of the same request in a task of its own: the response is returned without waiting for
it, and nothing the shadow does (slow, failing, a version that no longer exists) can change or
delay an answer. ``PUT``/``DELETE /admin/traffic`` change the setting at run time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Header, Request

from recicl.config import TrafficConfig
from recicl.serve.api.backend import ModelError, ModelJob, ModelRef, ModelReply
from recicl.serve.api.errors import validation_error
from recicl.serve.api.parsing import read_json, validated
from recicl.serve.store.feedback import ARM_CHAMPION, ARM_EXPLICIT, ARM_SHADOW, ServedScore
from recicl.serve.traffic import (
    check_traffic_versions,
    shadow_sampled,
    split_route,
    traffic_view,
)

if TYPE_CHECKING:
    from recicl.serve.api.route_context import RouteContext

log = logging.getLogger("recicl.serve")


@dataclasses.dataclass(frozen=True)
class Answer:
    """A request's reply, the arm that answered and the traffic setting it was routed by."""

    reply: ModelReply
    arm: str
    traffic: TrafficConfig


class TrafficRouter:
    """Routes one app's requests by the traffic setting in force; runs its shadow scorings.

    ``counts``: ``candidate_fallback`` (a split candidate could not answer, the champion did),
    ``shadow_scored``, ``shadow_failed`` and ``shadow_dropped`` (over ``max_in_flight``), shown
    by ``GET /v1/models``.
    """

    def __init__(self, ctx: RouteContext) -> None:
        self.ctx = ctx
        self.counts: Counter[str] = Counter()
        self._shadows: set[asyncio.Task[None]] = set()

    async def setting(self) -> tuple[TrafficConfig, str]:
        """(the setting in force, where it comes from: ``admin`` or ``config``)."""
        override = await self.ctx.backend.traffic_override()
        if override is not None:
            return override, "admin"
        return self.ctx.sc.traffic, "config"

    async def answer(self, job: ModelJob, version: str | None) -> Answer:
        """Score ``job`` on the version its route names: ``version`` when the request named a
        model, else the split's candidate for the users the hash sends there, else the alias.

        A candidate that cannot answer (a 4xx/5xx of its own: deleted, its catalog lacks an
        item) does not fail the request: the champion answers, counted as a fallback."""
        traffic, _ = await self.setting()
        if version is not None:
            return Answer(await self.ctx.scored(job, version), ARM_EXPLICIT, traffic)
        candidate, arm = split_route(traffic, job.user_id)
        if candidate is not None:
            reply = await self.ctx.score(job, candidate)
            if isinstance(reply, ModelReply):
                return Answer(reply, arm, traffic)
            self.counts["candidate_fallback"] += 1
            log.warning(
                "split candidate %s could not answer (%s: %s); the champion answers",
                candidate,
                reply.code,
                reply.detail,
            )
        return Answer(await self.ctx.scored(job, None), ARM_CHAMPION, traffic)

    def shadow(
        self,
        answer: Answer,
        request_id: str,
        job: ModelJob,
        shown: list[tuple[str, float]],
        served_at: int,
    ) -> None:
        """Start the shadow scoring of a champion answer, if the setting samples it.

        The shadow scores exactly the items the answer showed (a recommendation's pool is not
        filled again by the candidate), with the same context events, and its scores are logged
        with the answer's request id and time: the champion's and the shadow's score of an item
        are then one pair, joined with the same event."""
        if answer.arm != ARM_CHAMPION or not shown:
            return
        version = shadow_sampled(answer.traffic, request_id, answer.reply.model_version)
        if version is None:
            return
        if len(self._shadows) >= answer.traffic.shadow.max_in_flight:
            self.counts["shadow_dropped"] += 1
            return
        items = tuple(item for item, _ in shown)
        shadow_job = dataclasses.replace(
            job, candidates=items, pool=(), exclude=frozenset(), pool_size=0
        )
        task = asyncio.get_running_loop().create_task(
            self._score_shadow(shadow_job, version, request_id, served_at)
        )
        self._shadows.add(task)  # keep a reference until it is done
        task.add_done_callback(self._shadows.discard)

    async def _score_shadow(
        self, job: ModelJob, version: str, request_id: str, served_at: int
    ) -> None:
        try:
            reply = await self.ctx.score(job, version)
            if isinstance(reply, ModelError):
                self.counts["shadow_failed"] += 1
                log.warning("shadow v%s skipped request %s: %s", version, request_id, reply.detail)
                return
            scores = [
                ServedScore(
                    request_id, job.user_id, item, reply.model_version, ARM_SHADOW, reply.policy,
                    score, served_at,
                )
                for item, score in reply.scores
            ]  # fmt: skip
            await self.ctx.backend.record_served(scores, self.ctx.now())
            self.counts["shadow_scored"] += 1
        except Exception as error:  # a shadow's fault is logged and counted, never raised
            self.counts["shadow_failed"] += 1
            log.warning("shadow v%s of request %s failed: %s", version, request_id, error)

    async def drain(self) -> None:
        """Wait for the shadow scorings in flight (tests, and before a shutdown)."""
        while self._shadows:
            await asyncio.gather(*list(self._shadows), return_exceptions=True)

    async def view(self, champion: str | None) -> dict[str, Any]:
        traffic, source = await self.setting()
        counts = {**self.counts, "shadow_in_flight": len(self._shadows)}
        return traffic_view(traffic, source, champion, counts)


def add_traffic_routes(app: FastAPI, ctx: RouteContext) -> None:
    """``PUT /admin/traffic`` and ``DELETE /admin/traffic`` (admin token)."""
    backend = ctx.backend

    async def champion() -> str | None:
        served = await backend.served_version()
        return None if served is None else served.version

    @app.put("/admin/traffic", tags=["admin"], openapi_extra=ctx.body_of("TrafficConfig"))
    async def put_traffic(request: Request, authorization: str | None = Header(None)) -> Any:
        """Set shadow and split now (the fields of ``serve.traffic``; this setting wins over
        the config until DELETE). Every ingress follows within one alias poll."""
        ctx.check_admin(authorization)
        # strict: TrafficConfig is lax for YAML configs, but a JSON body must have the types
        # the schema documents (no `false` or "0.2" for a share), like every other request body
        traffic = validated(ctx.traffic_body, await read_json(request), strict=True)
        wanted = [v for v in (traffic.shadow.version, traffic.split.version) if v is not None]
        known = set()
        for version in wanted:
            if await backend.lookup_version(ModelRef(backend.model_name, version=str(version))):
                known.add(str(version))
        problems = check_traffic_versions(traffic, known, await backend.served_version())
        if problems:
            raise validation_error(
                [{"loc": tuple(field.split(".")), "msg": message} for field, message in problems]
            )
        await backend.set_traffic_override(traffic)
        return await ctx.traffic.view(await champion())

    @app.delete("/admin/traffic", tags=["admin"])
    async def delete_traffic(authorization: str | None = Header(None)) -> Any:
        """Drop the admin setting: ``serve.traffic`` of the config applies again."""
        ctx.check_admin(authorization)
        await backend.set_traffic_override(None)
        return await ctx.traffic.view(await champion())
