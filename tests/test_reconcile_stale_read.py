"""A reconcile pass reads every take first and acts on each seconds later (minutes under load).
A take that completed in between must be left as it is: its Prefect run stays Completed and
its image stays, though the pass's copy says `generating` and its lease is gone.

Real parts: the session's Prefect server holds the take's task run; the project is on disk.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Completed

from api.hub import Hub
from api.reconcile import Reconciler
from api.relay import Relay
from scripts.local_prefect import LocalPrefectServer
from studio.manifest import TakeStatus
from studio.prepare import prepare_take
from studio.store import ProjectStore
from studio.takes import complete_take, start_take
from studio.workspace import Workspace
from tasks.submit import submit_take
from tests.stack_helpers import add_text_to_image


async def _run_state(task_run_id: str) -> StateType:
    async with get_client() as client:
        run = await client.read_task_run(uuid.UUID(task_run_id))
    assert run.state is not None
    return run.state.type


async def _complete_run(task_run_id: str) -> None:
    async with get_client() as client:
        await client.set_task_run_state(uuid.UUID(task_run_id), Completed(), force=True)


def test_a_take_that_completed_after_the_pass_read_it_is_not_retried_nor_crashed(
        prefect_server: LocalPrefectServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = ProjectStore(Workspace(tmp_path))
    project = store.create("Stale Read")
    node_id = add_text_to_image(store, project.id)
    job = prepare_take(store, project.id, node_id, quality_requested="standard",
                       quality_used="standard", seed=1)
    task_run_id = submit_take(job)  # no worker serves it: the test plays the worker
    read_by_the_pass = start_take(store, project.id, node_id, job.take_id,
                                  task_run_id=task_run_id)
    output = store.project_dir(project.id) / job.output_path
    output.write_bytes(b"\x89PNG\r\n\x1a\n")
    complete_take(store, project.id, node_id, job.take_id, timings={})
    asyncio.run(_complete_run(task_run_id))
    # The pass's copy has no lease: with no grace left, it reads as a dead worker's take.
    monkeypatch.setattr("tasks.leases.STALE_AFTER_SECONDS", 0.0)

    async def one_pass_acting_on_its_old_copy() -> str | None:
        reconciler = Reconciler(store, Relay(store, Hub()), interval=1.0)
        reconciler._pass_at = read_by_the_pass.started_at
        return await reconciler._one(project.id, node_id, read_by_the_pass)

    assert asyncio.run(one_pass_acting_on_its_old_copy()) is None
    take = store.load(project.id).get_node(node_id).get_take(job.take_id)
    assert (take.status, take.attempts) == (TakeStatus.completed, 1)
    assert output.read_bytes().startswith(b"\x89PNG")
    assert asyncio.run(_run_state(task_run_id)) == StateType.COMPLETED
