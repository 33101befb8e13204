"""Issue 4: work pools per GPU tier, `prefect deploy --all`, and TDs' batches on the local pool."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.deployments import run_deployment
from prefect_docker.worker import DockerWorkerJobConfiguration

from deployments.pools import ensure_pools, gpu_device_requests, pool_gpu_map, pool_specs
from scripts.local_prefect import LocalPrefectServer
from studio.manifest import TakeStatus
from studio.store import ProjectStore
from studio.tiers import TIERS, Quality
from studio.workspace import Workspace
from tests.stack_helpers import REPO, Proc, add_text_to_image, studio_env


@pytest.fixture(scope="module")
def pools(prefect_server: LocalPrefectServer) -> list[str]:
    return asyncio.run(ensure_pools())


@pytest.mark.parametrize("quality", list(Quality))
def test_each_gpu_pool_renders_its_tiers_image_gpu_request_volume_and_env(
    pools: list[str], quality: Quality
) -> None:
    tier = TIERS[quality]

    async def render() -> DockerWorkerJobConfiguration:
        async with get_client() as client:
            pool = await client.read_work_pool(tier.work_pool)
        assert pool.type == "docker" and pool.concurrency_limit == 1
        return await DockerWorkerJobConfiguration.from_template_and_values(
            pool.base_job_template, {"env": {"EXTRA": "1"}}
        )

    config = asyncio.run(render())
    assert config.image == tier.flow_image  # gms-studio: Prefect + the project + the runner
    assert config.image_pull_policy == "Never"  # pinned tags built on the Docker host
    assert config.volumes == ["generative_studio_workspace:/workspace:rw"]
    assert config.container_create_kwargs["device_requests"] == gpu_device_requests(
        pool_gpu_map().get(quality))
    assert config.container_create_kwargs["user"] == "1000:1000"
    assert config.container_create_kwargs["read_only"] is True
    assert config.container_create_kwargs["security_opt"] == ["no-new-privileges"]
    # Per-run env is merged into the template's, not put in its place.
    assert config.env["STUDIO_WORKSPACE"] == "/workspace"
    assert config.env["QUALITY"] == quality.value
    assert config.env["EXTRA"] == "1"


def test_the_local_pool_is_a_process_pool_running_one_take_at_a_time(pools: list[str]) -> None:
    assert set(pools) == set(pool_specs())

    async def read():
        async with get_client() as client:
            return await client.read_work_pool("local")

    pool = asyncio.run(read())
    assert pool.type == "process" and pool.concurrency_limit == 1


def _deploy(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", *args],
        cwd=REPO,
        env={**env, "STUDIO_REPO": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_prefect_deploy_all_creates_every_deployment(pools: list[str]) -> None:
    result = _deploy(["--all"], dict(__import__("os").environ))
    assert result.returncode == 0, result.stdout + result.stderr

    async def names() -> set[str]:
        async with get_client() as client:
            deployments = await client.read_deployments()
            flows = {f.id: f.name for f in await client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}" for d in deployments}

    expected = {
        f"{flow}/{pool}"
        for flow in ("batch_takes", "run_graph")
        for pool in ("local", "gpu-12gb", "gpu-16gb", "gpu-24gb")
    }
    assert expected <= asyncio.run(names())


@pytest.fixture
def local_worker(pools: list[str], tiny_model_dir: Path, tmp_path: Path) -> Iterator[dict]:
    env = studio_env(tmp_path / "workspace", tiny_model_dir / "Library" / "AI_Models")
    deployed = _deploy(["--name", "batch_takes/local"], env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    worker = Proc(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "local"],
        {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        tmp_path / "worker.log",
    )
    yield env
    worker.kill()


@pytest.mark.timeout(900)  # twelve takes in a fresh flow-run process; run_deployment waits 420 s
def test_a_batch_of_three_nodes_by_four_takes_renders_twelve_takes_with_one_model_load(
    local_worker: dict,
) -> None:
    store = ProjectStore(Workspace(local_worker["STUDIO_WORKSPACE"]))
    project = store.create("Batch", "standard")
    nodes = [
        add_text_to_image(store, project.id, shot=f"SHOT_0{i}0", x=300 * i) for i in range(1, 4)
    ]

    run = run_deployment(
        "batch_takes/local",
        timeout=420,
        poll_interval=2,
        parameters={"project": project.id, "takes_per_node": 4, "seeds": [1, 2, 3, 4]},
    )

    assert run.state is not None and run.state.is_completed(), run.state
    manifest = store.load(project.id)
    takes = [t for n in manifest.nodes for t in n.takes]
    assert len(takes) == 12 and {t.status for t in takes} == {TakeStatus.completed}
    files = {t.path for t in takes}
    assert len(files) == 12
    assert all((store.project_dir(project.id) / f).is_file() for f in files)
    assert {t.flow_run_id for t in takes} == {str(run.id)}

    async def artifacts() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(like_=f"take-{project.id.lower()}-")
                )
            )

    images = [a for a in asyncio.run(artifacts()) if a.type == "image"]
    assert len(images) == 12
    result = asyncio.run(_result(run.id))
    assert sum(r["loaded_pipeline"] for r in result["takes"]) == 1
    assert sorted(n for n in nodes) == sorted({n.id for n in manifest.nodes})


async def _result(flow_run_id):
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
    return await run.state.result()
