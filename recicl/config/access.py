"""Who may write events to the serving API and how much anyone may ask of it (``serve.access``).

Off by default (the local embedded server: one machine, one trusted user) and on in
``serve_configs/production.yaml``; docs/threat-model.md says what each setting defends against.
Rates and quotas use the notation of the ``limits`` package that enforces them
(``"50/second"``, ``"600 per hour"``, several separated by ``;``), parsed here so that a typo
fails at load time naming the key, not on the first request.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from recicl.config.base import StrictModel

#: An HTTP header name as RFC 9110 defines a token (no spaces, colons or control characters).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")


def _checked_limits(text: str | None) -> str | None:
    """``text`` unchanged when ``limits`` can parse every item, else a ValueError saying why."""
    if text is None:
        return None
    from limits import parse_many

    try:
        items = parse_many(text)
    except ValueError as error:
        raise ValueError(
            f"{text!r} is not a rate: write e.g. '50/second', '600 per hour' or several "
            f"separated by ';' ({error})"
        ) from None
    if not items:
        raise ValueError(f"{text!r} holds no rate; write e.g. '50/second', or null for none")
    return text


class AccessConfig(StrictModel):
    """Event writes by credential; per-client rates and per-user and total event quotas.

    Rates and quotas are counted in the interaction store's Redis when the store is Redis (one
    count shared by every ingress replica), else in each ingress replica's memory (each replica
    allows the full amount). Over a limit: 429 ``too_many_requests`` with ``Retry-After``."""

    write_token: str | None = Field(
        None,
        description="Bearer token a client must send to POST /v1/events; null = "
        "$RECICL_WRITE_TOKEN, and with neither, event writes are open (the local default). "
        "Several separated by ',' are all valid (rotation without downtime). "
        "Prefer the environment variable: a token in the config travels in the Serve "
        "application's arguments, which the dashboard shows.",
    )
    require_token_for_writes: bool = Field(
        False,
        description="Refuse to start serving when no write token is set (production.yaml: "
        "true, so a missing secret stops the deployment instead of opening writes).",
    )
    client_rate: str | None = Field(
        None,
        description="Requests one client may send to the /v1 routes (limits notation, e.g. "
        "'50/second;2000/minute'); null = unlimited. /healthz is never limited.",
    )
    client_header: str | None = Field(
        None,
        description="Header naming the client for client_rate, set by the gateway in front "
        "(e.g. X-Real-IP; of a list such as X-Forwarded-For the last address, the one the "
        "gateway added); null = the TCP peer address. Only name a header that gateway sets: "
        "clients can send any header.",
    )
    user_event_quota: str | None = Field(
        None,
        description="Events one user id may be sent in POST /v1/events (e.g. '600/hour'); a "
        "flood of forged events cannot push a user's real history out of the store "
        "(serve.max_events_per_user) faster than this. null = unlimited.",
    )
    total_event_quota: str | None = Field(
        None,
        description="Events all clients together may write (e.g. '20000/minute'): how fast the "
        "store can grow, whatever the number of user ids. null = unlimited.",
    )

    metrics_need_admin: bool = Field(
        False,
        description="GET /v1/metrics/live answers only with the admin token: live AUC, like "
        "rates and traffic per version and arm are the business's figures, not the clients'. "
        "`recicl models live --url` sends $RECICL_ADMIN_TOKEN.",
    )

    @field_validator("client_rate", "user_event_quota", "total_event_quota")
    @classmethod
    def _rates(cls, value: str | None) -> str | None:
        return _checked_limits(value)

    @field_validator("client_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an HTTP header name (e.g. X-Forwarded-For)")
        return value
