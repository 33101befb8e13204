"""Leases: a worker shows it is alive while it renders a take; a dead one is seen as such."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tasks import leases
from tasks.leases import Lease, holder_gone, lease_age, lease_path


def test_a_lease_names_its_holder_while_the_take_renders_and_is_gone_after(
        tmp_path: Path) -> None:
    assert lease_age(tmp_path, "t-1") is None

    with Lease(tmp_path, "t-1"):
        assert lease_path(tmp_path, "t-1").read_text().split() == [socket.gethostname(),
                                                                   str(os.getpid())]
        assert 0 <= lease_age(tmp_path, "t-1") < 5  # type: ignore[operator]
        assert not holder_gone(tmp_path, "t-1")

    assert lease_age(tmp_path, "t-1") is None


def test_a_lease_is_touched_again_while_its_holder_works(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(leases, "LEASE_SECONDS", 0.05)

    with Lease(tmp_path, "t-1"):
        os.utime(lease_path(tmp_path, "t-1"), (0, 0))  # as if last touched long ago
        deadline = time.monotonic() + 10
        while lease_age(tmp_path, "t-1") > 60:  # type: ignore[operator]
            assert time.monotonic() < deadline, "the lease was not touched again"
            time.sleep(0.02)


def test_a_lease_whose_process_is_dead_is_known_gone_at_once(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    path = lease_path(tmp_path, "t-1")
    path.parent.mkdir(parents=True)
    path.write_text(f"{socket.gethostname()} {dead}\n")

    assert holder_gone(tmp_path, "t-1")


def test_a_lease_held_on_another_host_is_judged_by_its_age_only(tmp_path: Path) -> None:
    path = lease_path(tmp_path, "t-1")
    path.parent.mkdir(parents=True)
    path.write_text("some-other-host 1\n")

    assert not holder_gone(tmp_path, "t-1")
    assert not holder_gone(tmp_path, "no-such-take")


def _generating_take(tmp_path: Path):  # noqa: ANN202 - (store, project id, node id, take)
    from studio.prepare import prepare_take
    from studio.store import ProjectStore
    from studio.takes import start_take
    from studio.tiers import Quality
    from studio.workspace import Workspace
    from tests.stack_helpers import add_text_to_image

    store = ProjectStore(Workspace(tmp_path))
    project = store.create("P")
    node_id = add_text_to_image(store, project.id)
    job = prepare_take(store, project.id, node_id, quality_requested=Quality.standard,
                       quality_used=Quality.standard, seed=1)
    return store, project.id, node_id, start_take(store, project.id, node_id, job.take_id)


def _completed_take(tmp_path: Path):  # noqa: ANN202 - (store, project id, take as read before)
    from studio.takes import complete_take

    store, project_id, node_id, generating = _generating_take(tmp_path)
    (store.project_dir(project_id) / generating.path).write_bytes(b"\x89PNG\r\n\x1a\n")
    complete_take(store, project_id, node_id, generating.id, timings={})
    return store, project_id, generating


def test_a_take_that_completed_after_it_was_read_keeps_its_image_when_leftovers_are_cleared(
        tmp_path: Path) -> None:
    from tasks.recovery import clear_leftovers

    # The reconciler read the take while it rendered, then (a long pass later) its lease was
    # gone and it judged the worker dead: by then the take had completed.
    store, project_id, read_while_generating = _completed_take(tmp_path)
    clear_leftovers(store, project_id, read_while_generating)

    output = store.project_dir(project_id) / read_while_generating.path
    assert output.read_bytes().startswith(b"\x89PNG")


def test_a_dead_attempts_output_is_cleared(tmp_path: Path) -> None:
    from tasks.recovery import clear_leftovers

    store, project_id, _, take = _generating_take(tmp_path)
    output = store.project_dir(project_id) / take.path
    output.write_bytes(b"half a png")
    clear_leftovers(store, project_id, take)
    assert not output.exists()
