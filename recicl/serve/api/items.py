"""``POST /admin/items``: add or update catalog items while serving (admin token).

Why here and not a re-tune: the model reads items as text (title and attributes in the prompt),
so an item that appears after tuning can be scored as soon as the prompt can quote it. The items
go to the interaction store, the source of truth every replica catches up from
(:mod:`recicl.serve.catalog_items`), so they survive a restart. A request is all or nothing:
every item is validated (schema, ids repeated within the request) before any is stored, and the
store writes them in one transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Header, Request

from recicl.serve.api.errors import field_error
from recicl.serve.api.parsing import read_json, validated
from recicl.serve.api.schemas import ItemsResponse
from recicl.serve.store import CatalogItem

if TYPE_CHECKING:
    from recicl.serve.api.route_context import RouteContext


def add_item_routes(app: FastAPI, ctx: RouteContext) -> None:
    """``POST /admin/items``."""

    @app.post(
        "/admin/items",
        tags=["admin"],
        response_model=ItemsResponse,
        openapi_extra=ctx.body_of("ItemsRequest"),
    )
    async def post_items(request: Request, authorization: str | None = Header(None)) -> Any:
        """Add or update catalog items (id, title, attributes): scoreable at once on every
        replica, embedded for the similarity policies, kept in the store across restarts."""
        ctx.check_admin(authorization)
        body = validated(ctx.items_body, await read_json(request))
        seen: set[str] = set()
        for index, item in enumerate(body.items):
            if item.item_id in seen:
                raise field_error(
                    f"items[{index}].item_id",
                    f"{item.item_id!r} is already in this request: send each item once",
                )
            seen.add(item.item_id)
        items = [CatalogItem.of(i.item_id, i.title, i.attributes) for i in body.items]
        result = await ctx.backend.add_items(items)
        return {**result, "added": [i.item_id for i in items]}
