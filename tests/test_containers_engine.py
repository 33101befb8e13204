"""Through a real container engine (podman serving the Docker API; scripts/container_engine.sh):
the studio's images, the container-per-take runner strategy, and a Prefect Docker worker running
a batch on the `gpu-16gb` pool in the flow-run image.

The engine set-up (podman from Debian, a Debian base image, the two images) takes minutes on a
fresh machine; it is done once and reused (scripts are idempotent).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.registry import docker_strategy
from runners.strategies import RunnerFailed
from runners.take_request import take_request
from scripts.local_prefect import LocalPrefectServer
from studio.jobs import LoraRef
from studio.manifest import TakeStatus
from studio.prepare import prepare_take
from studio.store import ProjectStore
from studio.tiers import TIERS, Quality
from studio.workspace import Workspace
from tests.stack_helpers import REPO, Proc, add_text_to_image, wait_until

# The first run on a machine sets up the engine and builds the images (minutes) inside the
# first test's fixture.
pytestmark = [pytest.mark.stack, pytest.mark.timeout(3600)]

VOLUME = "generative_studio_workspace"
STANDARD = TIERS[Quality.standard]


def _script(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHON": sys.executable})


@pytest.fixture(scope="module")
def engine() -> Iterator[dict[str, str]]:
    """The engine's env (DOCKER_HOST, ...), with gms-flux and gms-studio of the standard tier
    built. Skips only where the script says it cannot set an engine up, and why."""
    started = time.monotonic()
    for args, timeout in ((["scripts/container_engine.sh"], 1200),
                          (["scripts/build_images.sh", "standard"], 2400)):
        done = _script(args, timeout)
        if done.returncode == 3:
            pytest.skip(done.stdout.strip().splitlines()[-1])
        assert done.returncode == 0, done.stdout + done.stderr
    print(f"container set-up: {time.monotonic() - started:.0f} s")
    env_file = REPO / os.environ.get("STUDIO_ENGINE_DIR", ".studio/engine") / "env"
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the docker SDK (and every child) finds the engine by DOCKER_HOST
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def workspace(engine: dict[str, str], tiny_model_dir: Path, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A workspace with the tiny models inside it (a container sees only the volume), bound to
    the named volume the pools and the runner mount, as docker-compose.yml binds it."""
    import docker

    root = tmp_path / "workspace"
    shutil.copytree(tiny_model_dir / "Library", root / "Library")
    monkeypatch.setenv("STUDIO_WORKSPACE", str(root))
    monkeypatch.delenv("STUDIO_MODELS_ROOT", raising=False)
    client = docker.from_env()
    for old in client.volumes.list(filters={"name": VOLUME}):
        old.remove(force=True)
    volume = client.volumes.create(VOLUME, driver="local", driver_opts={
        "type": "none", "o": "bind", "device": str(root)})
    yield root
    # A flow-run container may still be on its way out (auto_remove): it holds the volume.
    for container in client.containers.list(all=True, filters={"volume": VOLUME}):
        container.remove(force=True)
    volume.remove(force=True)


def give_to_uid_1000(root: Path) -> None:
    """The containers run as uid 1000: the workspace must be theirs (docs/deploy.md)."""
    subprocess.run(["chown", "-R", "1000:1000", str(root)], check=True)


def _take(root: Path, steps: int = 2, loras: list | None = None, size: int = 256):
    store = ProjectStore(Workspace(root))
    project = store.create("Containers", "standard")
    node = add_text_to_image(store, project.id, steps=steps, size=size)
    job = prepare_take(store, project.id, node, quality_requested=Quality.standard,
                       quality_used=Quality.standard)
    if loras is not None:
        params = job.params.model_copy(update={"loras": [LoraRef(**lora) for lora in loras]})
        job = job.model_copy(update={"params": params})
    give_to_uid_1000(root)
    return store, job


def _runner(root: Path):
    return docker_strategy(STANDARD.pipeline_id, {
        "STUDIO_WORKSPACE": str(root), "STUDIO_CONTAINER_GPUS": "none"})


def _runner_containers() -> list:
    import docker

    return docker.from_env().containers.list(all=True, filters={"name": "gms-flux-"})


def test_a_take_renders_in_a_runner_container_with_progress_relayed(workspace: Path) -> None:
    store, job = _take(workspace)
    project_dir = store.project_dir(job.project_id)
    request = take_request(job, workspace_root=workspace, project_dir=project_dir)
    progress: list[tuple[int, str, str | None]] = []

    result = _runner(workspace).run(request, lambda p, s, preview: progress.append((p, s, preview)))

    output = project_dir / job.output_path
    assert Path(result.output_path) == output.resolve()
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert output.stat().st_uid == 1000  # written by the container's non-root user
    assert progress and progress[-1][0] == 100
    assert [p for p, _, _ in progress] == sorted(p for p, _, _ in progress)
    assert all(preview is None or Path(preview).is_relative_to(workspace)
               for _, _, preview in progress)
    assert result.seed == job.params.seed
    assert _runner_containers() == []  # removed after the take


def test_a_missing_lora_fails_the_container_with_the_runners_message(workspace: Path) -> None:
    lora = {"path": "Library/AI_Models/loras/gone.safetensors", "weight": 0.8, "kind": "style"}
    store, job = _take(workspace, loras=[lora])
    request = take_request(job, workspace_root=workspace,
                           project_dir=store.project_dir(job.project_id))

    with pytest.raises(RunnerFailed) as failed:
        _runner(workspace).run(request, lambda *_: None)

    assert failed.value.exit_code == 3
    assert failed.value.message == (
        "LoRA file not found: Library/AI_Models/loras/gone.safetensors "
        "(looked at /workspace/Library/AI_Models/loras/gone.safetensors)")
    assert _runner_containers() == []


def test_a_runner_container_killed_mid_take_fails_the_take_and_leaves_no_file(
    workspace: Path, prefect_server: LocalPrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.text_to_image import render_take

    monkeypatch.setenv("STUDIO_CONTAINER_GPUS", "none")
    monkeypatch.setenv("STUDIO_WORKSPACE_VOLUME", VOLUME)
    store, job = _take(workspace, steps=100, size=1024)  # still rendering when it is killed
    outcome: list[BaseException] = []

    def render() -> None:
        try:
            render_take(job, mode="docker")
        except BaseException as exc:  # noqa: B036 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=render)
    thread.start()
    (container,) = wait_until(
        lambda: [c for c in _runner_containers() if c.status == "running"], 120,
        "the runner container to run")
    time.sleep(2)  # into the take: torch is loading or the model rendering
    container.kill(signal="SIGKILL")
    thread.join(timeout=120)

    assert outcome and isinstance(outcome[0], RunnerFailed)
    take = next(t for n in store.load(job.project_id).nodes for t in n.takes
                if t.id == job.take_id)
    assert take.status == TakeStatus.failed
    assert "killed" in (take.error or "")
    output = store.project_dir(job.project_id) / job.output_path
    assert not output.exists()
    assert list(output.parent.glob("*.tmp")) == [] and not list(output.parent.glob("*.png"))
    assert _runner_containers() == []


@pytest.fixture
def docker_worker(engine: dict[str, str], workspace: Path, prefect_server: LocalPrefectServer,
                  tmp_path: Path) -> Iterator[None]:
    """The gpu-16gb pool as production creates it, its deployment, one Prefect Docker worker."""
    from deployments.pools import ensure_pools

    env = {**os.environ, "STUDIO_WORKSPACE": str(workspace)}
    env.pop("STUDIO_WORKSPACE_VOLUME", None)  # the template's own: the named volume
    created = subprocess.run([sys.executable, "-m", "scripts.create_pools", STANDARD.work_pool],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    assert asyncio.run(ensure_pools([STANDARD.work_pool])) == [STANDARD.work_pool]
    deployed = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy",
         "--name", f"batch_takes/{STANDARD.work_pool}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    worker = Proc([sys.executable, "-m", "prefect", "worker", "start", "--pool",
                   STANDARD.work_pool, "--type", "docker"],
                  {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, tmp_path / "docker-worker.log")
    yield
    worker.kill()  # before the server: a worker whose server is gone ignores SIGTERM


def test_a_docker_worker_runs_a_batch_in_the_flow_run_image_through_the_volume(
    docker_worker: None, workspace: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.deployments import run_deployment

    from tests.api_helpers import ApiServer, is_, of_type

    store = ProjectStore(Workspace(workspace))
    project = store.create("Docker Batch", "standard")
    for i in (1, 2):
        add_text_to_image(store, project.id, shot=f"SHOT_0{i}0", x=300 * i)
    give_to_uid_1000(workspace)
    api = ApiServer(workspace).start()
    socket = api.socket(project.id)
    try:
        run = run_deployment(
            f"batch_takes/{STANDARD.work_pool}", timeout=900, poll_interval=2,
            parameters={"project": project.id, "takes_per_node": 2, "seeds": [1, 2]},
            # Only what this machine needs: podman's host network, no GPU to request.
            job_variables={"network_mode": "host", "device_requests": []},
        )
        assert run.state is not None and run.state.is_completed(), run.state
        socket.until(lambda m: len(of_type("task_success", socket.received)) >= 4,
                     timeout=120, what="four server:task_success messages")
    finally:
        socket.close()
        api.stop()

    takes = [t for n in store.load(project.id).nodes for t in n.takes]
    assert len(takes) == 4 and {t.status for t in takes} == {TakeStatus.completed}
    files = [store.project_dir(project.id) / t.path for t in takes]
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in files)
    assert {f.stat().st_uid for f in files} == {1000}  # the container's non-root user
    assert {t.flow_run_id for t in takes} == {str(run.id)}
    # The take events, emitted in the container, reached the canvas' socket through the API.
    assert len(of_type("task_success", socket.received)) == 4
    assert any(is_("task_progress")(m) for m in socket.received)

    async def images() -> list:
        async with get_client() as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(like_=f"take-{project.id.lower()}-")))
        return [a for a in artifacts if a.type == "image"]

    assert len(asyncio.run(images())) == 4
