"""Rotates the stack's logs: `python -m scripts.rotate_logs [--max-mb 20] [--keep 5]`.

The stack's processes write `$STUDIO_WORKSPACE/.studio/logs/*.log` in append mode and keep them
open, so a log is copied to `<name>.log.1` (older ones shift to .2 … .keep) and then truncated in
place: the writers carry on at the start of the same file, nothing restarts. Run it from cron
(every few minutes), or use logrotate with `copytruncate` (docs/ops-guide.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from studio.workspace import Workspace


def rotate(path: Path, keep: int) -> None:
    for n in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with path.open("r+b") as f:  # the writers use O_APPEND: they continue at the new end
        f.truncate(0)


def rotate_logs(folder: Path, max_bytes: int, keep: int) -> list[Path]:
    """Rotates every `*.log` in `folder` larger than `max_bytes`; returns those it rotated."""
    rotated = []
    for path in sorted(folder.glob("*.log")):
        if path.stat().st_size > max_bytes:
            rotate(path, keep)
            rotated.append(path)
    return rotated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.rotate_logs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=Path, default=Workspace().root / ".studio" / "logs")
    parser.add_argument("--max-mb", type=float, default=20.0)
    parser.add_argument("--keep", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.logs.is_dir():
        parser.error(f"{args.logs} is not a folder")
    for path in rotate_logs(args.logs, int(args.max_mb * 1024 * 1024), max(1, args.keep)):
        print(f"rotated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
