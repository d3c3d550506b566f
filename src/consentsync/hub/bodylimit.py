"""A cap on the size of a request's body, checked before anything reads it.

FastAPI reads and parses a route's whole body before it resolves the route's dependencies, the
API key check included: without a cap, anyone, with no key at all, could make the server buffer
and parse a body of any size. A body over the cap is answered 413 from its ``Content-Length``, or,
sent in chunks, as soon as what arrived passes the cap, and nothing of it is parsed.

The console (web/app.py) caps every body with one too, except under the paths where it mounts
the hub's apps (``/v1``, ``/p``), which cap their own: a request there is passed on untouched."""

from __future__ import annotations

from typing import Any

import orjson
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: refuses a body larger than ``limit`` bytes with 413."""

    def __init__(
        self, app: ASGIApp, limit: int, answer: Any = None, capped_below: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.limit = limit
        # One line of JSON; nothing of the request (a token, an address) is ever echoed.
        self.answer = answer or {"error": f"the request body is larger than {limit} bytes"}
        # Path prefixes ("/v1/") where a mounted app with a BodyLimit of its own is routed: matched
        # as the router matches a Mount (the path below the root path), so that nothing routed
        # there escapes that app's cap, and nothing routed elsewhere escapes this one.
        self.capped_below = capped_below

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            self.capped_below and get_route_path(scope).startswith(self.capped_below)
        ):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.limit
            except ValueError:
                too_large = True  # no length we can read: not a request our clients send
            if too_large:
                await self._refuse(send)
                return
        # Read here, up to the cap (the route would read all of it anyway), and handed on whole.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks)}], receive), send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps(self.answer)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A ``receive`` that gives ``messages`` first, then waits on ``then`` (a disconnect)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive
