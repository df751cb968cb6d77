"""Opening a store by URL: the one place that knows every backend.

It sits apart from :mod:`~recicl.serve.store.base` because the backends build on base's
contract; keeping the backend choice here lets base stay free of its own implementations, so the
store package has no import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from recicl.serve.store.base import (
    DEFAULT_MAX_EVENTS_PER_USER,
    InteractionStore,
    StoreURLError,
    redact_url,
)
from recicl.serve.store.redis_store import RedisStore
from recicl.serve.store.sqlite_store import SQLiteStore

if TYPE_CHECKING:
    from recicl.serve.store.feedback import FeedbackSettings


def open_store(
    url: str,
    *,
    max_events_per_user: int | None = DEFAULT_MAX_EVENTS_PER_USER,
    feedback: FeedbackSettings | None = None,
) -> InteractionStore:
    """Open the store a URL names (``feedback``: the log's window and bounds; None = defaults).

    * ``sqlite:///<path>`` — SQLAlchemy/MLflow convention: ``sqlite:////abs/events.db`` (four
      slashes) is absolute, ``sqlite:///events.db`` relative to the working directory. Option:
      ``?synchronous=full|normal`` (see the module docstring).
    * ``redis://[:password@]host:port/db`` or ``rediss://…`` (TLS) — needs ``recicl[redis]``;
      the server is pinged here so a wrong address fails at startup, not on the first request.
    """
    if not isinstance(url, str):
        raise StoreURLError(f"store URL must be a string, got {url!r}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise StoreURLError(
                f"store URL {url!r}: write sqlite:///<path> (sqlite:////abs/path/events.db)"
            )
        path, _, query = url[len("sqlite:///") :].partition("?")
        if not path or path == ":memory:":
            raise StoreURLError(
                f"store URL {url!r} names no file; the store must be shared between processes, "
                "so give a path: sqlite:////abs/path/events.db"
            )
        options = {k.lower(): v[-1] for k, v in parse_qs(query).items()}
        unknown = sorted(set(options) - {"synchronous"})
        if unknown:
            raise StoreURLError(
                f"store URL {url!r}: unknown option(s) {unknown}; the only one is synchronous"
            )
        return SQLiteStore(
            path,
            max_events_per_user=max_events_per_user,
            synchronous=options.get("synchronous", "FULL"),
            feedback=feedback,
        )
    if scheme in ("redis", "rediss"):
        return RedisStore(url, max_events_per_user=max_events_per_user, feedback=feedback)
    raise StoreURLError(
        f"unknown interaction store URL {redact_url(url)!r}: use sqlite:////path/to/events.db "
        "(embedded, one machine) or redis://host:6379/0 (cluster)"
    )
