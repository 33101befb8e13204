"""The GPU tiers' Docker work pools in the local stack (`make up`): when a container engine
answers at DOCKER_HOST, create the pools, deploy their flows and start one Prefect Docker
worker per pool; otherwise say so (batches then run on the `local` pool).

    python -m scripts.docker_pools        # the same on its own, for an already running server
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from studio.tiers import TIERS, Quality

REPO = Path(__file__).resolve().parent.parent
GPU_POOLS = [TIERS[q].work_pool for q in (Quality.low, Quality.standard, Quality.high)]


class Starter(Protocol):
    def run(self, name: str, cmd: list[str], timeout: float = 300) -> bool: ...
    def start(self, name: str, cmd: list[str]) -> object: ...


def engine_problem(environ: dict[str, str] | None = None) -> str | None:
    """None when a Docker-API engine answers; else why not, in words."""
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST")
    if not host:
        return ("no container engine (DOCKER_HOST is not set; scripts/container_engine.sh "
                "sets up podman)")
    try:
        import docker

        docker.DockerClient(base_url=host, timeout=5).ping()
    except Exception as exc:  # any failure to reach it means the same to the user
        return f"no container engine answers at DOCKER_HOST={host} ({type(exc).__name__})"
    return None


def missing_images(environ: dict[str, str] | None = None) -> list[str]:
    """The tiers' flow-run images the engine lacks (pull policy Never cannot fetch them)."""
    import docker
    from deployments.pools import flow_image

    env = os.environ if environ is None else environ
    client = docker.DockerClient(base_url=env["DOCKER_HOST"], timeout=10)
    missing = []
    for quality in (Quality.low, Quality.standard, Quality.high):
        image = flow_image(TIERS[quality])
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    return missing


def deploy_command() -> list[str]:
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy"]
    for pool in GPU_POOLS:
        cmd += ["--name", f"batch_takes/{pool}", "--name", f"run_graph/{pool}"]
    return cmd


def start_docker_pools(procs: Starter, say: Callable[[str], None] = print,
                       environ: dict[str, str] | None = None) -> str:
    """Starts what the engine allows; returns the banner line."""
    problem = engine_problem(environ)
    if problem:
        return f"  GPU pools     not started: {problem}; batches use the local pool"
    if not procs.run("create-gpu-pools", [sys.executable, "-m", "scripts.create_pools",
                                          *GPU_POOLS]):
        return "  GPU pools     FAILED to create (see logs/create-gpu-pools.log)"
    if not procs.run("deploy-gpu-pools", deploy_command()):
        return "  GPU pools     deploy FAILED (see logs/deploy-gpu-pools.log)"
    for pool in GPU_POOLS:
        procs.start(f"prefect-worker-{pool}", [sys.executable, "-m", "prefect", "worker",
                                               "start", "--pool", pool, "--type", "docker"])
    line = f"  GPU pools     {', '.join(GPU_POOLS)}: Docker workers running"
    missing = missing_images(environ)
    if missing:
        line += (f"; images missing: {', '.join(missing)} (scripts/build_images.sh, or set "
                 "STUDIO_IMAGE_REGISTRY)")
    return line


class _Foreground:
    """Runs the steps in this terminal (python -m scripts.docker_pools)."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def run(self, name: str, cmd: list[str], timeout: float = 300) -> bool:
        return subprocess.run(cmd, cwd=REPO, timeout=timeout, check=False).returncode == 0

    def start(self, name: str, cmd: list[str]) -> object:
        proc = subprocess.Popen(cmd, cwd=REPO)
        self.children.append(proc)
        return proc


def main() -> int:
    procs = _Foreground()
    print(start_docker_pools(procs))
    try:
        for child in procs.children:
            child.wait()
    except KeyboardInterrupt:
        for child in procs.children:
            child.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
