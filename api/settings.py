"""The gateway's settings, from the environment (one place, read once per app)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from studio.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass
class Settings:
    workspace: Workspace = field(default_factory=Workspace)
    # When set, every /api route and /ws need it (Bearer header or ?token=).
    token: str | None = field(default_factory=lambda: os.environ.get("STUDIO_API_TOKEN") or None)
    # How often the reconciler looks for lost or abandoned takes (a take Prefect lost is handed
    # out again within a few passes of its tier's worker being online and idle).
    reconcile_seconds: float = field(
        default_factory=lambda: _float("STUDIO_RECONCILE_SECONDS", 1.0))
    # No longer used (issue 16: a queued take waits for its worker however long; see
    # api.reconcile_rules); kept so existing environments still parse.
    queue_timeout_seconds: float = field(
        default_factory=lambda: _float("STUDIO_QUEUE_TIMEOUT_SECONDS", 300.0))
    # Where the built canvas lives; served at / when it exists.
    web_dist: Path = field(
        default_factory=lambda: Path(os.environ.get("STUDIO_WEB_DIST", REPO / "web" / "dist")))
