"""STUDIO_API_TOKEN: a shared secret for REST (Bearer header or ?token=) and the WebSocket."""

from __future__ import annotations

import ipaddress
import secrets

from fastapi import HTTPException, Request, WebSocket


def presented_token(conn: Request | WebSocket) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    # Browsers cannot set headers on a WebSocket: the query parameter is the way there.
    return conn.query_params.get("token")


def token_ok(expected: str | None, conn: Request | WebSocket) -> bool:
    if not expected:
        return True
    given = presented_token(conn)
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


def require_token(request: Request) -> None:
    """FastAPI dependency of every /api route."""
    if not token_ok(request.app.state.settings.token, request):
        raise HTTPException(
            status_code=401,
            detail="this API needs STUDIO_API_TOKEN: send `Authorization: Bearer <token>` "
            "or `?token=<token>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
