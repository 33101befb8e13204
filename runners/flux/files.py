"""Atomic file writes: a reader never sees a half-written image at the final path."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, then rename it into place.

    The rename is atomic on one filesystem, so ``path`` holds either nothing, the old file or
    the whole new one. ``durable`` fsyncs the file and its folder first (the image itself);
    previews skip it: they are replaced a moment later anyway.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        # mkstemp makes 0600 files; other services (the API, other uids) must read takes.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows opening a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def probe_writable(folder: Path) -> None:
    """Raise OSError unless a file can really be created in ``folder`` (root ignores modes)."""
    fd, tmp = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(tmp)
