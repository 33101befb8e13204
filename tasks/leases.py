"""Liveness of a take being rendered: the worker touches a lease file while it works.

A worker killed mid-take stops touching it; whoever reconciles sees a stale lease and fails
the take, so no take stays "generating" forever.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

LEASE_SECONDS = 2.0
STALE_AFTER_SECONDS = 15.0


def lease_path(workspace_root: Path, take_id: str) -> Path:
    return workspace_root / ".studio" / "leases" / take_id


class Lease:
    """Touches the lease every LEASE_SECONDS from a daemon thread while the take renders."""

    def __init__(self, workspace_root: Path, take_id: str) -> None:
        self.path = lease_path(workspace_root, take_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-{take_id}")

    def _touch(self) -> None:
        self.path.write_text(f"{socket.gethostname()} {os.getpid()}\n")

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_SECONDS):
            self._touch()

    def __enter__(self) -> Lease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._touch()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)


def lease_age(workspace_root: Path, take_id: str) -> float | None:
    """Seconds since the take's worker last showed life; None when there is no lease."""
    try:
        return time.time() - lease_path(workspace_root, take_id).stat().st_mtime
    except FileNotFoundError:
        return None


def holder_gone(workspace_root: Path, take_id: str) -> bool:
    """True when the lease's worker ran on this host and its process no longer exists: a
    worker killed mid-take is known dead at once, not only when its lease goes stale."""
    try:
        host, pid = lease_path(workspace_root, take_id).read_text().split()
    except (FileNotFoundError, ValueError):
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False
