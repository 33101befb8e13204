"""The edge of the API: who may address it (Host), who may drive it (Origin), how much a request
may carry, and keeping the token out of the logs. See docs/security.md for the threat model.

Pure ASGI middleware, so a refused request never reaches a route (nor the WebSocket handler).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# Names that always mean this machine: a DNS-rebinding page never has one of them as its Host.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Methods a browser may send cross-site without asking (no preflight) and that change nothing.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Client messages are a few hundred bytes; anything near this is not the canvas talking.
MAX_WS_FRAME_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
HEALTH_PATH = "/healthz"


def host_name(host_header: str) -> str:
    """The host part of a Host header, lower-case: "[::1]:8000" -> "::1", "a.b:80" -> "a.b"."""
    host = host_header.strip().lower()
    if host.startswith("["):  # an IPv6 literal
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def normalize_origin(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class EdgeGuard:
    """Refuses a request whose Host is not allowed (DNS rebinding), and a WebSocket handshake or
    state-changing request whose Origin is not allowed (cross-site requests and WebSocket
    hijacking). In every mode, token or not: a token a browser holds is sent cross-site too.

    An Origin is allowed when it is listed, or when it is the origin the request was addressed
    to (its host:port equals the Host header, which passed the Host check): the served canvas
    and `npm run dev`'s proxy both are. Clients that are not browsers send no Origin and pass.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str],
                 allowed_origins: Iterable[str]) -> None:
        self.app = app
        self.hosts = {h.strip().lower().strip("[]") for h in allowed_hosts if h.strip()}
        self.any_host = "*" in self.hosts
        self.origins = {normalize_origin(o) for o in allowed_origins if o.strip()}

    def host_ok(self, host: str | None) -> bool:
        return bool(host) and (self.any_host or host_name(host or "") in self.hosts)

    def origin_ok(self, origin: str, host: str) -> bool:
        origin = normalize_origin(origin)
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == host.strip().lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if not self.host_ok(host) and not _is_probe(scope):
            log.warning("refused a request for Host %r (allowed: %s; see STUDIO_ALLOWED_HOSTS)",
                        host, ", ".join(sorted(self.hosts)))
            await refuse(scope, receive, send, 400,
                         f"Host {host!r} is not an allowed host of this studio; "
                         "set STUDIO_ALLOWED_HOSTS to serve it under another name")
            return
        origin = _header(scope, b"origin")
        checked = scope["type"] == "websocket" or scope["method"] not in SAFE_METHODS
        if checked and origin is None and scope["type"] == "http" and (
                _header(scope, b"sec-fetch-site") == "cross-site"):
            origin = "null"  # a browser that withheld Origin but says it is cross-site
        if checked and origin is not None and not self.origin_ok(origin, host or ""):
            log.warning("refused a %s from Origin %r (see STUDIO_ALLOWED_ORIGINS)",
                        "WebSocket" if scope["type"] == "websocket" else scope["method"], origin)
            await refuse(scope, receive, send, 403,
                         f"Origin {origin!r} may not use this studio; "
                         "set STUDIO_ALLOWED_ORIGINS to allow it")
            return
        await self.app(scope, receive, _with_headers(send) if scope["type"] == "http" else send)


# On every HTTP response: no page may frame the studio (a framed canvas is same-origin, so
# clicks tricked out of the artist would pass the Origin check), and no type sniffing.
SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
FRAME_POLICY = b"frame-ancestors 'none'"


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            names = {k.lower() for k, _ in headers}
            headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
            if b"content-security-policy" not in names:
                headers.append((b"content-security-policy", FRAME_POLICY))
            message = {**message, "headers": headers}
        await send(message)

    return sending


def _is_probe(scope: Scope) -> bool:
    """A health probe (Kubernetes sends the pod's IP as Host): answered whatever the Host."""
    return scope["type"] == "http" and scope["path"] == HEALTH_PATH and scope["method"] in (
        "GET", "HEAD")


class BodyLimit:
    """Refuses a request body over `max_bytes` with 413 before any of it is parsed; a body
    without Content-Length (chunked) is read up to the limit, then handed on."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await refuse(scope, receive, send, 413, self._too_big(length))
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await refuse(scope, receive, send, 413, self._too_big(f"over {size}"))
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    def _too_big(self, length: str) -> str:
        return (f"the request body is {length} bytes; this studio takes at most {self.max_bytes} "
                "(STUDIO_MAX_BODY_BYTES)")


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    if scope["type"] == "websocket":
        # Before accept, a close is answered with HTTP 403: the handshake fails.
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
        return
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# --- WebSocket frames -----------------------------------------------------------------------


class FrameRefused(ValueError):
    """A client frame refused before or while parsing; its text goes back as server:error."""


def json_depth(text: str) -> int:
    """How deep arrays and objects nest, in one pass without recursion (strings skipped).

    A loop rather than a regex: a pattern for JSON strings backtracks quadratically on
    unterminated ones, and frames are bounded (MAX_WS_FRAME_BYTES) before this runs.
    """
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "[" or char == "{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif char == "]" or char == "}":
            depth -= 1
    return deepest


def load_frame(raw: str, max_bytes: int = MAX_WS_FRAME_BYTES,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A client frame's JSON, or FrameRefused: too big, too deep, or not JSON."""
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise FrameRefused(f"a message is at most {max_bytes} bytes; this one is {size}")
    if (depth := json_depth(raw)) > max_depth:
        raise FrameRefused(f"a message nests at most {max_depth} levels deep; this one {depth}")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FrameRefused(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


# --- logs -----------------------------------------------------------------------------------

_TOKEN_IN_URL = re.compile(r"([?&](?:token|access_token)=)[^&#\s\"']*", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _TOKEN_IN_URL.sub(rf"\g<1>{REDACTED}", text)


class RedactTokens(logging.Filter):
    """Rewrites `?token=...` in a record's message and arguments (uvicorn logs the request line
    with its query string, in `uvicorn.access` for HTTP and `uvicorn.error` for WebSockets)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v
                           for k, v in record.args.items()}
        return True


LOGGERS_WITH_URLS = ("uvicorn.access", "uvicorn.error")


def install_log_redaction() -> None:
    """Idempotent; logger filters survive uvicorn's logging dictConfig, which only swaps
    handlers, but this also runs again at startup in case a config replaced them."""
    for name in LOGGERS_WITH_URLS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
