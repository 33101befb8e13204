"""Takes whose worker died: their leftovers removed, then retried or failed (api.reconcile
decides which).

A take is abandoned when it is `generating` and its lease (tasks/leases.py) has not been
touched for `stale_after` seconds, or never was, or its worker's process is gone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from studio.manifest import Take, TakeStatus
from studio.project_file import project_lock
from studio.store import ProjectStore
from studio.takes import fail_take
from studio.workspace import safe_path
from tasks.leases import STALE_AFTER_SECONDS, holder_gone, lease_age, lease_path


def _leftovers(output: Path) -> list[Path]:
    """Files a dead take may have left beside its output: temporaries and previews."""
    if not output.parent.is_dir():
        return []
    return [p for p in output.parent.iterdir()
            if p != output and p.is_file() and output.stem in p.name]


def is_abandoned(workspace_root: Path, take: Take, stale_after: float) -> bool:
    if take.status != TakeStatus.generating:
        return False
    if holder_gone(workspace_root, take.id):
        return True
    age = lease_age(workspace_root, take.id)
    if age is None:  # no lease yet: give a starting worker the same grace
        started = take.started_at or take.created_at
        age = (datetime.now(UTC) - started).total_seconds()
    return age > stale_after


def clear_leftovers(store: ProjectStore, project_id: str, take: Take) -> None:
    """A dead attempt's temporaries, preview, lease and any output: a retry starts clean.

    The output goes only if the take has not completed, as project.json says under the
    project's lock now, not as `take` (the caller's copy, seconds old in a long reconcile pass)
    said: a take that completed meanwhile keeps its image, and a completion recorded after this
    finds no image and fails the take instead of recording one that is gone.
    """
    output = safe_path(store.project_dir(project_id), take.path)
    for leftover in _leftovers(output):
        leftover.unlink(missing_ok=True)
    try:
        with project_lock(store.manifest_path(project_id)):
            current = next((t for node in store.load(project_id).nodes for t in node.takes
                            if t.id == take.id), None)
            if current is None or current.status != TakeStatus.completed:
                output.unlink(missing_ok=True)
    except (OSError, LookupError, ValueError):  # project gone or locked: keep it, in doubt
        pass  # a retry overwrites it, and no new take is ever numbered onto a file on disk
    lease_path(store.workspace.root, take.id).unlink(missing_ok=True)


def abandoned_takes(store: ProjectStore, project_id: str,
                    stale_after: float = STALE_AFTER_SECONDS) -> list[tuple[str, Take]]:
    """(node id, take) of every generating take of the project whose worker is gone."""
    root = store.workspace.root
    project = store.load(project_id)
    return [(node.id, take) for node in project.nodes for take in node.takes
            if is_abandoned(root, take, stale_after)]


def fail_abandoned_takes(store: ProjectStore, project_id: str,
                         stale_after: float = STALE_AFTER_SECONDS) -> list[Take]:
    """Fails every abandoned take of the project; returns them."""
    root = store.workspace.root
    project = store.load(project_id)
    failed = []
    for node in project.nodes:
        for take in node.takes:
            if not is_abandoned(root, take, stale_after):
                continue
            output = safe_path(store.project_dir(project_id), take.path)
            for leftover in _leftovers(output):
                leftover.unlink(missing_ok=True)
            failed.append(fail_take(store, project_id, node.id, take.id,
                                    "the worker stopped while rendering this take "
                                    f"(no sign of life for over {stale_after:.0f} s)"))
            lease_path(root, take.id).unlink(missing_ok=True)
    return failed
