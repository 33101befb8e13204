"""The task worker and a take that already ended: a leftover copy of its task run (handed out
again, then delivered after the take completed, failed or was cancelled) renders nothing,
writes no file, leaves the take's record as it was and says why in the worker's log.

`render_take` is the body every tier task runs; here it runs in this process on a real
workspace. The runner is never reached, so no model is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from studio.manifest import TakeStatus
from studio.prepare import prepare_take
from studio.project_file import save_project
from studio.store import ProjectStore
from studio.takes import cancel_if_queued, fail_take
from studio.tiers import Quality
from studio.workspace import Workspace
from tasks.leases import lease_path
from tasks.text_to_image import render_take
from tests.factories import odyssey


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProjectStore:
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    store = ProjectStore(Workspace(tmp_path))
    project = odyssey()
    store.project_dir(project.id).mkdir(parents=True)
    save_project(store.manifest_path(project.id), project)
    return store


@pytest.mark.parametrize("ended", [TakeStatus.failed, TakeStatus.cancelled])
def test_a_late_copy_of_an_ended_takes_run_renders_nothing(
        store: ProjectStore, ended: TakeStatus, caplog: pytest.LogCaptureFixture) -> None:
    job = prepare_take(store, "Project_Odyssey", "shot15", quality_requested=Quality.standard,
                       quality_used=Quality.standard)
    if ended == TakeStatus.failed:
        fail_take(store, "Project_Odyssey", "shot15", job.take_id, "out of GPU memory")
    else:
        cancel_if_queued(store, "Project_Odyssey", "shot15", job.take_id)
    before = store.load("Project_Odyssey").get_node("shot15").get_take(job.take_id)

    with caplog.at_level(logging.WARNING, logger="tasks.text_to_image"):
        result = render_take(job)

    after = store.load("Project_Odyssey").get_node("shot15").get_take(job.take_id)
    assert after == before  # status, attempts, error: untouched
    output = store.project_dir("Project_Odyssey") / job.output_path
    assert not output.exists()
    assert [p.name for p in output.parent.iterdir()] == []  # no preview, no temporary
    assert not lease_path(store.workspace.root, job.take_id).exists()
    [line] = [r.getMessage() for r in caplog.records if r.name == "tasks.text_to_image"]
    assert line.startswith(f"skipping {job.label()}")
    assert f"is already {ended.value}" in line and "nothing rendered" in line
    if ended == TakeStatus.failed:
        assert isinstance(result, dict)
        assert f"is already {ended.value}" in result["skipped"]
    else:  # a cancelled take's run ends Cancelled in Prefect
        assert result.is_cancelled()
