"""Function Runner strategies: three ways to run one take through the runner's env contract.

- `InProcess`: calls the runner function in this process; its pipeline cache keeps FLUX loaded
  across takes (the warm task worker).
- `Subprocess`: runs `run_flux_generation.py` as a child process and parses its PROGRESS lines
  (the spec's worker logic, isolated from the worker's memory).
- `Docker`: the spec's `docker run --gpus all -v <volume>:/workspace:rw -e ... <image>`, through
  the Docker SDK; stdout is parsed, stderr becomes the failure message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runners.progress import ProgressCallback, parse_progress_line

RUNNER_SCRIPT = Path(__file__).resolve().parent / "flux" / "run_flux_generation.py"

# The runner's exit codes (runners/flux): 2 bad input, 3 model missing, 4 out of GPU memory.
EXIT_REASONS = {1: "runner error", 2: "bad input", 3: "model missing", 4: "out of GPU memory"}


class RunnerFailed(RuntimeError):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class RunResult:
    output_path: str
    seed: int | None = None
    loaded_pipeline: bool | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Strategy(Protocol):
    name: str

    def run(self, env: dict[str, str], on_progress: ProgressCallback) -> RunResult: ...


class InProcess:
    name = "in-process"

    def run(self, env: dict[str, str], on_progress: ProgressCallback) -> RunResult:
        # Imported here: torch and diffusers load only in processes that render.
        from runners.flux.errors import FluxError
        from runners.flux.generation import generate, request_from_env

        try:
            request = request_from_env(env)
            result = generate(request, on_progress)
        except FluxError as exc:
            raise RunnerFailed(str(exc), exc.exit_code) from exc
        except Exception as exc:  # the runner's own bugs still fail the take readably
            raise RunnerFailed(f"{type(exc).__name__}: {exc}", 1) from exc
        return RunResult(
            output_path=str(result.output_path),
            seed=result.seed,
            loaded_pipeline=result.loaded_pipeline,
            timings=dict(result.timings),
        )


def _pump_lines(stream: Any, on_line: Any) -> None:
    for raw in iter(stream.readline, ""):
        on_line(raw.rstrip("\n"))
    stream.close()


def _failure_message(exit_code: int, stderr_tail: list[str]) -> str:
    text = "\n".join(line for line in stderr_tail if line.strip())
    reason = EXIT_REASONS.get(exit_code, f"exit code {exit_code}")
    return text or f"runner failed ({reason}) without a message"


class Subprocess:
    name = "subprocess"

    def __init__(self, python: str = sys.executable, script: Path = RUNNER_SCRIPT) -> None:
        self.python = python
        self.script = script

    def run(self, env: dict[str, str], on_progress: ProgressCallback) -> RunResult:
        seed: list[int] = []
        stderr_tail: deque[str] = deque(maxlen=20)

        def on_stdout(line: str) -> None:
            progress = parse_progress_line(line)
            if progress is not None:
                on_progress(progress.percent, progress.step, progress.preview_path)
            elif line.startswith("SEED:"):
                seed.append(int(line.split(":", 1)[1]))

        proc = subprocess.Popen(
            [self.python, str(self.script)],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        err = threading.Thread(target=_pump_lines, args=(proc.stderr, stderr_tail.append))
        err.start()
        try:
            _pump_lines(proc.stdout, on_stdout)
            code = proc.wait()
        finally:
            if proc.poll() is None:  # our own thread was interrupted: don't leave the child behind
                proc.kill()
                proc.wait()
            err.join()
        if code != 0:
            raise RunnerFailed(_failure_message(code, list(stderr_tail)), code)
        return RunResult(output_path=env["OUTPUT_PATH"], seed=seed[-1] if seed else None)


@dataclass
class Docker:
    """Runs the tier's image; `workspace_volume` is the volume (or host path) of /workspace."""

    image: str
    workspace_volume: str = "generative_studio_workspace"
    name: str = "docker"
    gpus: bool = True

    def container_spec(self, env: dict[str, str], container_name: str) -> dict[str, Any]:
        """The keyword arguments of `containers.run`: what `docker run` would be given."""
        from docker.types import DeviceRequest

        spec: dict[str, Any] = {
            "image": self.image,
            "name": container_name,
            "environment": env,
            "volumes": {self.workspace_volume: {"bind": "/workspace", "mode": "rw"}},
            "detach": True,
            "user": "1000:1000",
        }
        if self.gpus:
            # The SDK's form of `--gpus all`.
            spec["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        return spec

    def run(self, env: dict[str, str], on_progress: ProgressCallback) -> RunResult:
        import docker

        take = Path(env["OUTPUT_PATH"]).stem.lower().replace("_", "-")
        client = docker.from_env()
        container = client.containers.run(**self.container_spec(env, f"flux-{take}"))
        try:
            for raw in container.logs(stream=True, follow=True, stdout=True, stderr=False):
                for line in raw.decode(errors="replace").splitlines():
                    progress = parse_progress_line(line)
                    if progress is not None:
                        on_progress(progress.percent, progress.step, progress.preview_path)
            code = int(container.wait()["StatusCode"])
            if code != 0:
                stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
                raise RunnerFailed(_failure_message(code, stderr.splitlines()[-20:]), code)
        finally:
            container.remove(force=True)
        return RunResult(output_path=env["OUTPUT_PATH"])
