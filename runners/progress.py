"""The runner's stdout progress protocol: `PROGRESS: <0-100> | <step text>[ | preview=<path>]`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

_LINE = re.compile(r"^PROGRESS:\s*(\d{1,3})\s*\|\s*(.*)$")


@dataclass(frozen=True)
class Progress:
    percent: int
    step: str
    preview_path: str | None = None


class ProgressCallback(Protocol):
    def __call__(self, percent: int, step: str, preview_path: str | None) -> None: ...


def parse_progress_line(line: str) -> Progress | None:
    """A PROGRESS line as a Progress, or None for any other line."""
    match = _LINE.match(line.strip())
    if not match:
        return None
    percent = max(0, min(100, int(match.group(1))))
    parts = [p.strip() for p in match.group(2).split("|")]
    preview = None
    step_parts = []
    for part in parts:
        if part.startswith("preview="):
            preview = part.removeprefix("preview=") or None
        else:
            step_parts.append(part)
    return Progress(percent, " | ".join(step_parts), preview)
