"""The configuration reference (``recicl config reference``, the README's table).

Generated from the field descriptions, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from recicl.config.data import BUNDLED_MOVIELENS
from recicl.config.loading import build_config
from recicl.config.root import ReciclConfig


def reference_rows(
    model: type[BaseModel] = ReciclConfig, prefix: str = ""
) -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf field: the README's config table."""
    rows: list[tuple[str, str, str]] = []
    defaults = (
        model().model_dump(mode="json")
        if model is not ReciclConfig
        else build_config().model_dump(mode="json")
    )
    for name, field in model.model_fields.items():
        annotation = field.annotation
        key = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(reference_rows(annotation, f"{key}."))
            continue
        default = json.dumps(defaults[name])
        if name == "path" and str(BUNDLED_MOVIELENS) in default:
            default = "bundled ml-latest-small"
        rows.append((key, default, field.description or ""))
    return rows


def reference_markdown() -> str:
    """The configuration reference as a Markdown table."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, description in reference_rows():
        lines.append(f"| `{key}` | `{default}` | {description} |")
    return "\n".join(lines)
