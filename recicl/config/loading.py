"""YAML files and command-line flags → a validated :class:`ReciclConfig`, or one readable error.

Why the errors are rewritten: pydantic's messages name internal locations and types; the person
who mistyped a key wants the key, the closest valid one and the list to pick from.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from recicl.config.base import ConfigError
from recicl.config.root import ReciclConfig


def _describe_errors(error: ValidationError, source: str) -> str:
    """One line per problem: the dotted key, then either the closest valid key and the allowed
    ones (a typo) or pydantic's reason with the value given."""
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            model = _model_at(ReciclConfig, item["loc"][:-1])
            known = sorted(model.model_fields) if model else []
            hint = _did_you_mean(str(item["loc"][-1]), known)
            lines.append(f"  - {loc}: unknown key{hint}; allowed keys here: {', '.join(known)}")
        else:
            lines.append(f"  - {loc}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _did_you_mean(key: str, known: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or '': one wording for YAML and flags."""
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def build_config(raw: dict[str, Any] | None = None, source: str = "<defaults>") -> ReciclConfig:
    """Validate a plain dict into a config, turning pydantic errors into a readable ConfigError."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}"
        )
    try:
        return ReciclConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe_errors(error, source)) from None


def load_config(path: str | Path | None = None) -> ReciclConfig:
    """Load a YAML config file (or the defaults when ``path`` is None)."""
    if path is None:
        return build_config()
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {path} {what}: pass --config with a YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return build_config(raw, str(path))


def with_overrides(config: ReciclConfig, overrides: dict[str, Any]) -> ReciclConfig:
    """Apply dotted-key overrides (``samples.num_demos``) from CLI flags; None means 'not given'."""
    raw = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents):
            where = ".".join(parents[: depth + 1])
            sections = sorted(key for key, child in node.items() if isinstance(child, dict))
            if part not in node:
                # Without this check a mistyped section is a bare KeyError; a mistyped leaf
                # needs none: the validation below names it as it does a typo in the YAML.
                raise ConfigError(
                    f"override {dotted!r}: unknown section {where!r}"
                    f"{_did_you_mean(part, sections)}; sections here: {', '.join(sections)}"
                )
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {dotted!r}: {where} is not a section but a value; "
                    f"set it as {where}=..."
                )
        node[leaf] = value
    return build_config(raw, "command-line flags")
