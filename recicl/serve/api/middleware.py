"""ASGI middleware that refuses oversized and non-JSON bodies before the app reads them."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recicl.serve.api.errors import error_body


class _BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body: over the limit of {limit} bytes")


class BodyGuard:
    """413 for bodies over ``max_bytes`` (declared or streamed), 415 for a POST/PUT/PATCH body
    sent without ``Content-Type: application/json``. Checking here, not in the routes, keeps a
    huge body from ever being buffered: a declared size is refused before reading, a streamed one
    while reading.

    Why the header is required, not guessed: a browser page on another site can POST a form or
    ``text/plain`` to the API without a CORS preflight (a "simple request"), but not
    ``application/json``; refusing every other type (or none) keeps such cross-site writes out.
    A POST without a body (``/admin/reload``) needs no Content-Type."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reply(self, send: Send, status: int, code: str, detail: str) -> None:
        body = json.dumps(error_body(code, detail)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or ()}
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._reply(send, 400, "bad_request", "Content-Length is not a number")
                return
            if size > self.max_bytes:
                await self._reply(
                    send,
                    413,
                    "body_too_large",
                    f"body: {size} bytes is over the limit of {self.max_bytes} bytes",
                )
                return
        has_body = (declared is not None and int(declared) > 0) or b"transfer-encoding" in headers
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        media = content_type.split(";", 1)[0].strip()
        if (media or has_body) and media != "application/json":
            got = f"got {media!r}" if media else "none was sent"
            await self._reply(
                send,
                415,
                "unsupported_media_type",
                f"Content-Type: send JSON with 'Content-Type: application/json' ({got})",
            )
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge as error:
            if not started:
                await self._reply(send, 413, "body_too_large", str(error))
