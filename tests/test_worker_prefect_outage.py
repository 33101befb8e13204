"""A take that finishes while its worker cannot reach Prefect (a restart, a network blip) is not
failed in Prefect: its file and project.json entry are the take, and the run's record (its
artifacts, its Completed state) waits for Prefect to answer again. Before, the artifact call
raised ConnectError and Prefect showed the run Failed beside a completed take.

Real parts: a standard task worker (`studio worker`) whose link to the session's Prefect server
runs through a TCP proxy the test cuts, the tiny model, the session's Prefect server.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from scripts.local_prefect import LocalPrefectServer
from studio.manifest import Take, TakeStatus
from studio.prepare import prepare_take
from studio.store import ProjectStore
from studio.tiers import Quality
from studio.workspace import Workspace
from tasks.submit import submit_take
from tasks.text_to_image import artifact_key
from tests.api_helpers import assert_no_worker_online
from tests.cut_proxy import CutProxy
from tests.restart_helpers import run_state
from tests.stack_helpers import add_text_to_image, start_tier_worker, studio_env, wait_until


def _take(store: ProjectStore, project_id: str, node_id: str, take_id: str) -> Take:
    take = store.load(project_id).get_node(node_id).get_take(take_id)
    assert take is not None
    return take


def _artifact_types(key: str) -> list[str]:
    async def read() -> list[str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key, f"{key}-params"])))
        return sorted(str(a.type) for a in found)

    return asyncio.run(read())


def test_a_take_finished_while_prefect_is_unreachable_ends_completed_with_its_artifacts(
        prefect_server: LocalPrefectServer, tiny_model_dir: Path, tmp_path: Path) -> None:
    assert_no_worker_online()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    proxy = CutProxy(prefect_server.port)
    env = {**studio_env(workspace, tiny_model_dir / "Library" / "AI_Models"),
           "PREFECT_API_URL": proxy.api_url,
           # Prefect's client gives up on a refused connection at once, as a client that has
           # not connected yet always does (prefect/client/base.py): the wait is the worker's.
           "PREFECT_CLIENT_MAX_RETRIES": "0"}
    worker = start_tier_worker(Quality.standard, env, tmp_path / "worker.log")
    try:
        store = ProjectStore(Workspace(workspace))
        project = store.create("Outage", "standard")
        # 1024x1024 at 40 steps (~4 s on the tiny model): still rendering when Prefect goes.
        node_id = add_text_to_image(store, project.id, steps=40, size=1024)
        job = prepare_take(store, project.id, node_id, quality_requested=Quality.standard,
                           quality_used=Quality.standard)
        # Submitted through the proxy too: a task run carries its submitter's settings (the
        # API URL among them) to the worker, which renders it in that context.
        with temporary_settings(updates={PREFECT_API_URL: proxy.api_url}):
            task_run_id = submit_take(job)
        wait_until(lambda: _take(store, project.id, node_id, job.take_id).status
                   != TakeStatus.queued, 120, "the take to start")
        proxy.go_down()  # connections refused until restored, as while Prefect restarts
        take = wait_until(lambda: (t := _take(store, project.id, node_id, job.take_id)).status
                          in (TakeStatus.completed, TakeStatus.failed) and t, 300,
                          "the take to end while Prefect is unreachable")
        time.sleep(3)  # the worker asks Prefect for the artifacts meanwhile, and is refused
        proxy.restore()
        ended = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED)
        state = wait_until(lambda: (s := run_state(task_run_id)) in ended and s, 120,
                           "Prefect to record how the run ended")
        artifacts = _artifact_types(artifact_key(job))  # written before the run completes
    finally:
        worker.kill()
        proxy.close()

    assert take.status == TakeStatus.completed, take.error
    assert (store.project_dir(project.id) / take.path).is_file()
    assert state == StateType.COMPLETED
    assert artifacts == ["image", "table"]
    assert "recording the image artifact of" in worker.output()  # it waited for Prefect
