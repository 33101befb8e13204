"""Real processes for tests: tier task workers and Prefect workers, started and stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from studio.manifest import Position, Shot, new_node
from studio.store import ProjectStore
from studio.tiers import Quality

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def wait_until(check: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """Polls `check` until it returns something truthy; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def studio_env(workspace: Path, models_root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "STUDIO_WORKSPACE": str(workspace),
        "STUDIO_MODELS_ROOT": str(models_root),
        "PYTHONUNBUFFERED": "1",
        # The tiny model renders fastest on one thread; two cores are shared by the whole run.
        "OMP_NUM_THREADS": "1",
        # Only the system's binaries: whatever the product starts must name its own interpreter.
        "PATH": "/usr/bin:/bin",
    }


class Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def start_tier_worker(quality: Quality, env: dict[str, str], log: Path) -> Proc:
    """`studio worker --tier Q`; returns once Prefect lists *this* worker as connected.

    Not merely the tier: a worker of the same tier killed just before (by the previous test
    module) stays listed for a second or two, and a click then would find no worker at all.
    """
    from tasks.availability import connected_task_workers

    studio = Path(sys.executable).with_name("studio")
    proc = Proc([str(studio), "worker", "--tier", quality.value], env, log)
    # Prefect's TaskWorker.client_id: the script runs as the Popen's own process.
    identifier = f"{socket.gethostname()}-{proc.popen.pid}"

    def online() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"worker exited: {proc.output()[-2000:]}")
        workers = asyncio.run(connected_task_workers([quality]))
        return identifier in {w["identifier"] for w in workers}

    wait_until(online, 180, f"the {quality.value} task worker to connect", every=0.5)
    return proc


def add_text_to_image(
    store: ProjectStore,
    project_id: str,
    *,
    prompt: str = "a red fox",
    shot: str = "SHOT_010",
    scene: str = "SCENE_01",
    steps: int = 2,
    size: int = 256,
    x: float = 0,
) -> str:
    node = new_node(
        "text_to_image",
        title="Text-to-Image",
        params={
            "prompt": prompt,
            "steps": steps,
            "seed": 7,
            "preset": "custom",
            "width": size,
            "height": size,
        },
        shot=Shot(scene=scene, shot=shot, version="v01"),
        position=Position(x=x, y=0),
    )
    with store.edit(project_id) as project:
        project.nodes.append(node)
    return node.id
