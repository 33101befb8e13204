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
import uuid
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
    in_container: bool  # True: the env must carry container paths (/workspace/...)

    def run(self, env: dict[str, str], on_progress: ProgressCallback) -> RunResult: ...


class InProcess:
    name = "in-process"
    in_container = False

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
    in_container = False

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


def _container_name(env: dict[str, str]) -> str:
    """`gms-flux-<take file>-<random>`: unique per take, across projects and retries."""
    stem = Path(env["OUTPUT_PATH"]).stem.lower()
    safe = "".join(c if c.isalnum() else "-" for c in stem).strip("-")[:60]
    return f"gms-flux-{safe}-{uuid.uuid4().hex[:8]}"


def _last_message(stderr: str) -> str:
    """The runner's last stderr line (`ERROR: <message>`), as the in-process runner words it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1].removeprefix("ERROR:").strip() if lines else ""


def remove_partial_files(output: Path) -> None:
    """What a runner killed mid-write leaves: its temporary file beside the output."""
    for leftover in output.parent.glob(f".{output.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


@dataclass
class Docker:
    """One take per container: the spec's `docker run --gpus ... -v <volume>:/workspace:rw -e ...
    <image>`, through the Docker SDK (any Docker-API engine: Docker, podman's service).

    `workspace_volume` is what /workspace mounts (a named volume or a host path) and
    `host_workspace` where that volume lies on this host: the env arrives with container paths
    (/workspace/...), progress previews are reported back as host paths.
    """

    image: str
    workspace_volume: str = "generative_studio_workspace"
    host_workspace: Path | None = None
    name: str = "docker"
    in_container = True
    gpu_ids: list[str] | None = None  # None: every GPU; []: none (CPU)
    user: str = "1000:1000"
    network_mode: str | None = "none"  # the runner reads local files only

    def container_spec(self, env: dict[str, str], container_name: str) -> dict[str, Any]:
        """The keyword arguments of `containers.run`: what `docker run` would be given."""
        from docker.types import DeviceRequest

        spec: dict[str, Any] = {
            "image": self.image,
            "name": container_name,
            "environment": {**env, "HOME": "/tmp"},
            "volumes": {self.workspace_volume: {"bind": "/workspace", "mode": "rw"}},
            "detach": True,
            "user": self.user,
            # Hardening: only the workspace and /tmp are writable; no privilege gain.
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev"},
            "security_opt": ["no-new-privileges"],
            "cap_drop": ["ALL"],
        }
        if self.network_mode:
            spec["network_mode"] = self.network_mode
        if self.gpu_ids is None:
            spec["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        elif self.gpu_ids:
            spec["device_requests"] = [DeviceRequest(device_ids=list(self.gpu_ids),
                                                     capabilities=[["gpu"]])]
        return spec

    def run(self, env: dict[str, str], on_progress: ProgressCallback) -> RunResult:
        import docker
        from runners.env import host_path

        host_root = self.host_workspace or Path(os.environ.get("STUDIO_WORKSPACE", "/workspace"))
        seed: list[int] = []
        client = docker.from_env()
        container = client.containers.run(**self.container_spec(env, _container_name(env)))
        try:
            for raw in container.logs(stream=True, follow=True, stdout=True, stderr=False):
                for line in raw.decode(errors="replace").splitlines():
                    progress = parse_progress_line(line)
                    if progress is not None:
                        preview = progress.preview_path
                        on_progress(progress.percent, progress.step,
                                    str(host_path(preview, host_root)) if preview else None)
                    elif line.startswith("SEED:"):
                        seed.append(int(line.split(":", 1)[1]))
            code = int(container.wait()["StatusCode"])
            if code != 0:
                stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
                message = _last_message(stderr)
                if code == 137:  # SIGKILL: the runner could not say anything
                    message = ("the runner container was killed (exit code 137: out of memory, "
                               "or stopped by force)")
                raise RunnerFailed(message or _failure_message(code, []), code)
        except BaseException:
            remove_partial_files(host_path(env["OUTPUT_PATH"], host_root))
            raise
        finally:
            container.remove(force=True)
        return RunResult(output_path=str(host_path(env["OUTPUT_PATH"], host_root)),
                         seed=seed[-1] if seed else None)
