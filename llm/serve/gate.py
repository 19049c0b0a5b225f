"""The gate every request passes before the API sees it (Guard, an ASGI middleware): the API key, the body's size
and content type, and the Host header a web page in the user's browser cannot forge (docs/serving.md)."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm.serve.schemas import error_body

# ---------------------------------------------------------------------------------------------- the gate


class BodyTooLarge(Exception):
    pass


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_host_names(host: str, port: int, extra: Sequence[str] = ()) -> list[str] | None:
    """The Host headers a server bound to host:port answers: the address it is bound to and, on a loopback address,
    this machine's loopback names, each with the port (and bare on port 80), plus `extra` (allowed_hosts: a name,
    with or without its port). Bound to every interface (0.0.0.0, ::) with no extra names: None, any Host, since
    the names it is reached by cannot be known here."""
    every = host in ("0.0.0.0", "::", "")
    if every and not extra:
        return None
    shown = f"[{host}]" if ":" in host else host
    names = [] if every else [shown]
    if shown in LOOPBACK_NAMES or host.startswith("127."):
        names += LOOPBACK_NAMES
    out = set()
    for name in [*names, *extra]:
        if re.search(r":\d+$", name):  # carries its port
            out.add(name)
            continue
        out.add(f"{name}:{port}")
        if port == 80:  # a browser leaves the default port out
            out.add(name)
    return sorted(out)


def authorized(header: bytes | None, key: bytes) -> bool:
    """Whether an Authorization header is "Bearer <key>" (compared in constant time)."""
    scheme, _, token = (header or b"").partition(b" ")
    return hmac.compare_digest(token.strip(), key) and scheme.lower() == b"bearer"


async def send_json(send: Send, status: int, body: dict, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """Pure ASGI middleware, before the app reads a byte: a Host header that names none of allowed_hosts is a 421
    (a page on another site reaching a local server by DNS rebinding); a POST whose Content-Type is not
    application/json is a 415 (a cross-site form or a "simple" fetch, which a browser sends without asking); with an
    API key, every path but /health needs "Authorization: Bearer <key>" (else 401); a body over max_bytes is a 413,
    from its Content-Length before it is read, or counted as it is read (a chunked body)."""

    def __init__(
        self, app: ASGIApp, api_key: str | None, max_bytes: int, allowed_hosts: Sequence[str] | None = None
    ) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.key = None if api_key is None else api_key.encode("utf-8")
        self.hosts = None if allowed_hosts is None else {h.lower().encode("latin-1") for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").lower()
        if self.hosts is not None and host not in self.hosts:
            shown = host.decode("latin-1")[:100]
            message = f"Host {shown!r} is not this server's (allowed_hosts adds names it is reached by)"
            return await send_json(send, 421, error_body(message, "invalid_request_error", None, "misdirected"))
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope.get("method") == "POST" and kind != b"application/json":
            message = f"Content-Type {kind.decode('latin-1')[:100]!r} is not accepted: send application/json"
            return await send_json(send, 415, error_body(message, "invalid_request_error", None, "unsupported_media"))
        if (
            self.key is not None
            and scope["path"] != "/health"
            and not authorized(headers.get(b"authorization"), self.key)
        ):
            message = "a valid API key is needed: send the header 'Authorization: Bearer <key>'"
            body = error_body(message, "invalid_request_error", None, "invalid_api_key")
            return await send_json(send, 401, body, [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await send_json(send, 413, self.too_large())
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if started:
                raise
            await send_json(send, 413, self.too_large())

    def too_large(self) -> dict:
        message = f"the request body is over max_request_bytes={self.max_bytes} bytes"
        return error_body(message, "invalid_request_error", None, "request_too_large")
