"""Request-body parsing shared by the routes: JSON errors and pydantic errors in one shape."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from recicl.serve.api.backend import ModelRef
from recicl.serve.api.errors import ApiError, validation_error

Body = TypeVar("Body", bound=BaseModel)


def duplicates(items: list[str]) -> list[str]:
    """Ids that occur more than once, in first-repeat order."""
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    for item in items:
        if item in seen:
            repeated[item] = None
        seen.add(item)
    return list(repeated)


def parse_model_ref(text: str) -> ModelRef:
    """``name@alias`` / ``name/3`` (the schema's pattern has already checked the form)."""
    name, sep, alias = text.partition("@")
    if sep:
        return ModelRef(name, alias=alias)
    name, _, version = text.partition("/")
    return ModelRef(name, version=version)


async def read_json(request: Request) -> Any:
    """The request body as JSON: 422 when empty, 400 when not JSON."""
    body = await request.body()
    if not body:
        raise ApiError(422, "validation_error", "body: Field required")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_json", f"body: not valid JSON ({error})") from None


def validated(adapter: TypeAdapter[Body], payload: Any, *, strict: bool | None = None) -> Body:
    """``payload`` as ``adapter``'s class, or a 422 naming the fields; ``strict=True`` also
    refuses what pydantic would coerce (``false`` or ``"0.5"`` for a number, ``2.0`` for an
    integer), for classes that are lax because they also read YAML configs."""
    try:
        return adapter.validate_python(payload, strict=strict)
    except PydanticValidationError as error:
        raise validation_error(error.errors()) from None
