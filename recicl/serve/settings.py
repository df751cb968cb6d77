"""Serving settings resolved once, where the app is built, and handed to every replica.

Replicas may run on other machines and in other working directories, so paths are made absolute
and secrets/URLs are read from the environment *here*, not in each replica.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recicl.config import ReciclConfig, build_config
from recicl.errors import ReciclError
from recicl.registry import Workspace

APP_NAME = "recicl"
MODEL_DEPLOYMENT = "ReciclModel"
API_DEPLOYMENT = "ReciclAPI"
#: Explicitly requested versions a model replica keeps loaded besides the alias's version.
MAX_EXPLICIT_VERSIONS = 3


class ServeError(ReciclError):
    """Serving cannot start or cannot load a model version as configured."""


@dataclass(frozen=True)
class ServeSettings:
    """Everything replicas need (config with absolute paths, registry, store, tokens)."""

    config: dict[str, Any]  # ReciclConfig as JSON: validated again in each replica
    tracking_uri: str
    model_name: str
    store_url: str
    admin_token: str | None
    write_token: str | None = None  # serve.access.write_token or $RECICL_WRITE_TOKEN

    def recicl_config(self) -> ReciclConfig:
        return ReciclConfig.model_validate(self.config)


def resolve_settings(cfg: ReciclConfig) -> ServeSettings:
    """Resolve ``cfg`` for the replicas (paths made absolute, store URL and token chosen)."""

    workspace = Workspace.of(cfg)
    raw = cfg.model_dump(mode="json")
    raw["workdir"] = str(workspace.folder)
    catalog = cfg.serve.catalog_path
    if catalog and "://" not in catalog:
        raw["serve"]["catalog_path"] = str(Path(catalog).expanduser().resolve())
    resolved = build_config(raw, "serve settings")
    access = cfg.serve.access
    write_token = access.write_token or os.environ.get("RECICL_WRITE_TOKEN") or None
    if access.require_token_for_writes and not write_token:
        raise ServeError(
            "serve.access.require_token_for_writes is true but no write token is set: export "
            "RECICL_WRITE_TOKEN on the cluster (e.g. from the recicl-secrets Secret, "
            "infra/README.md) or set serve.access.write_token; event writes stay closed "
            "rather than open to anyone"
        )
    return ServeSettings(
        config=resolved.model_dump(mode="json"),
        tracking_uri=workspace.tracking_uri,
        model_name=cfg.serve.model_name or workspace.registered_model,
        store_url=resolve_store_url(cfg),
        admin_token=cfg.serve.admin_token or os.environ.get("RECICL_ADMIN_TOKEN") or None,
        write_token=write_token,
    )


def resolve_store_url(cfg: ReciclConfig) -> str:
    """``serve.store_url`` → ``$RECICL_STORE_URL`` → SQLite in the workdir (absolute): the
    store the server writes, and the one ``recicl promote --live`` reads."""
    return (
        cfg.serve.store_url
        or os.environ.get("RECICL_STORE_URL")
        or "sqlite:///" + str(cfg.work_folder() / "events.db")
    )


def model_user_config(cfg: ReciclConfig) -> dict[str, Any]:
    """The model deployment's ``user_config``: what may change without restarting replicas."""
    sc = cfg.serve
    return {
        "alias": sc.alias,
        "alias_poll_seconds": sc.alias_poll_seconds,
        "max_batch_size": sc.max_batch_size,
        "batch_wait_timeout_s": sc.batch_wait_timeout_s,
        "reload_token": None,  # nosec B105: an empty default, set by /admin/reload
    }
