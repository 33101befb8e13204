"""STUDIO_API_TOKEN: a shared secret for REST and the WebSocket.

Presented as `Authorization: Bearer <token>` (scripts), as `?token=` (kept for scripts and
old links), or as the canvas's session cookie: opening `/?token=...` trades the token for a
signed, HttpOnly, SameSite=Strict cookie and redirects to `/`, so the token leaves the address
bar and is not repeated in every image URL and WebSocket URL. The cookie is an HMAC of its
expiry keyed by the token, so changing the token (docs/security.md) invalidates every cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from pathlib import Path

from fastapi import HTTPException, Request, Response, WebSocket
from fastapi.responses import FileResponse, RedirectResponse

from api.deps import settings_of

SESSION_COOKIE = "studio_session"
SESSION_SECONDS = 12 * 3600


def _digest(value: str) -> bytes:
    # Hashed first so compare_digest sees equal lengths: not even the length leaks.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(_digest(given), _digest(expected))


def _signature(token: str, expires: int) -> str:
    message = f"studio-session:{expires}".encode()
    return hmac.new(token.encode("utf-8", "surrogatepass"), message, hashlib.sha256).hexdigest()


def session_value(token: str, now: float | None = None) -> str:
    """A cookie value good for SESSION_SECONDS: `<expiry>.<hmac>`."""
    expires = int(now if now is not None else time.time()) + SESSION_SECONDS
    return f"{expires}.{_signature(token, expires)}"


def session_ok(token: str, value: str | None, now: float | None = None) -> bool:
    if not value:
        return False
    expires, _, signature = value.partition(".")
    if not expires.isdigit() or int(expires) < (now if now is not None else time.time()):
        return False
    return same_secret(signature, _signature(token, int(expires)))


def presented_token(conn: Request | WebSocket) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    # Browsers cannot set headers on a WebSocket: the query parameter (or the cookie) is the way.
    return conn.query_params.get("token")


def token_ok(expected: str | None, conn: Request | WebSocket) -> bool:
    if not expected:
        return True
    given = presented_token(conn)
    if given is not None:
        return same_secret(given, expected)
    return session_ok(expected, conn.cookies.get(SESSION_COOKIE))


def require_token(request: Request) -> None:
    """FastAPI dependency of every /api route."""
    if not token_ok(settings_of(request).token, request):
        raise HTTPException(
            status_code=401,
            detail="this API needs STUDIO_API_TOKEN: send `Authorization: Bearer <token>` "
            "or `?token=<token>`, or open the canvas as /?token=<token>",
            headers={"WWW-Authenticate": "Bearer"},
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def canvas_index(request: Request, index: Path) -> Response:
    """GET / : the canvas. With `?token=<the token>` it sets the session cookie and redirects
    to / without the token; anything else gets the page (whose API calls then say what is
    missing)."""
    expected: str | None = settings_of(request).token
    given = request.query_params.get("token")
    if expected and given is not None and same_secret(given, expected):
        response: Response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session_value(expected), max_age=SESSION_SECONDS,
                            path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        response.headers["Referrer-Policy"] = "no-referrer"
        return response
    return FileResponse(index, headers={"Cache-Control": "no-cache"})
