"""The gateway's settings, from the environment (one place, read once per app)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from api.reconcile_rules import LOST_AFTER_SECONDS
from api.security import LOOPBACK_HOSTS
from studio.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None


def _list(name: str) -> list[str]:
    """A comma-separated environment variable as a list (blanks dropped)."""
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


@dataclass
class Settings:
    workspace: Workspace = field(default_factory=Workspace)
    # When set, every /api route and /ws need it (Bearer header, ?token= or the canvas's cookie).
    token: str | None = field(default_factory=lambda: os.environ.get("STUDIO_API_TOKEN") or None)
    # How often the reconciler looks for lost or abandoned takes (a take Prefect lost is handed
    # out again within a few passes of its tier's worker being online and idle).
    reconcile_seconds: float = field(
        default_factory=lambda: _float("STUDIO_RECONCILE_SECONDS", 1.0))
    # How long a run may sit SCHEDULED, with an idle worker of its tier online that long, before
    # Prefect counts as having lost it (each hand-out again waits one more such period).
    lost_after_seconds: float = field(
        default_factory=lambda: _float("STUDIO_LOST_AFTER_SECONDS", LOST_AFTER_SECONDS))
    # Where the built canvas lives; served at / when it exists.
    web_dist: Path = field(
        default_factory=lambda: Path(os.environ.get("STUDIO_WEB_DIST", REPO / "web" / "dist")))
    # Host names this API answers to besides 127.0.0.1, localhost and ::1 (any port): a request
    # for another Host is refused, which defeats DNS rebinding. "*" allows any (not advised).
    allowed_hosts: list[str] = field(default_factory=lambda: _list("STUDIO_ALLOWED_HOSTS"))
    # Origins (scheme://host[:port]) that may open /ws and change things, besides the origin a
    # request was addressed to (the served canvas's own): e.g. a reverse proxy's public origin.
    allowed_origins: list[str] = field(default_factory=lambda: _list("STUDIO_ALLOWED_ORIGINS"))
    # The largest request body accepted (413 above it, before parsing).
    max_body_bytes: int = field(
        default_factory=lambda: int(os.environ.get("STUDIO_MAX_BODY_BYTES") or 1024 * 1024))

    # Where browsers reach the API (tasks/artifacts.py builds the Prefect UI's links from it):
    # its host and origin are allowed too, so a link that works is never refused at the edge.
    public_url: str | None = field(
        default_factory=lambda: os.environ.get("STUDIO_PUBLIC_URL") or None)

    def __post_init__(self) -> None:
        if not self.lost_after_seconds > 0:
            raise ValueError("STUDIO_LOST_AFTER_SECONDS must be a number of seconds above 0, "
                             f"not {self.lost_after_seconds}")

    def hosts(self) -> list[str]:
        """Every allowed Host name: the loopback names, STUDIO_ALLOWED_HOSTS, the public URL's."""
        public = urlsplit(self.public_url).hostname if self.public_url else None
        return [*LOOPBACK_HOSTS, *self.allowed_hosts, *([public] if public else [])]

    def origins(self) -> list[str]:
        """STUDIO_ALLOWED_ORIGINS and the public URL's origin."""
        if not self.public_url:
            return list(self.allowed_origins)
        parts = urlsplit(self.public_url)
        return [*self.allowed_origins, f"{parts.scheme}://{parts.netloc}"]
