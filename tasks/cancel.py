"""Cancelling a take: a flag file in the workspace that the take's worker checks between
denoising steps (at every progress report), so any API process can stop any worker's take."""

from __future__ import annotations

from pathlib import Path


class CancelRequested(Exception):
    """Raised from the progress callback: the runner unwinds and writes no file."""


def cancel_flag(workspace_root: Path, take_id: str) -> Path:
    return workspace_root / ".studio" / "cancel" / take_id


def request_cancel(workspace_root: Path, take_id: str) -> None:
    flag = cancel_flag(workspace_root, take_id)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()


def cancel_requested(workspace_root: Path, take_id: str) -> bool:
    return cancel_flag(workspace_root, take_id).exists()


def clear_cancel(workspace_root: Path, take_id: str) -> None:
    cancel_flag(workspace_root, take_id).unlink(missing_ok=True)
