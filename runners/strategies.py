"""Function Runner strategies: three ways to run one take's request through the FLUX runner.

- `InProcess`: hands the request to the runner function in this process; its pipeline cache
  keeps FLUX loaded across takes (the warm task worker).
- `Subprocess`: runs `run_flux_generation.py` as a child process with the request as env vars
  and parses its stdout lines (the spec's worker logic, isolated from the worker's memory).
- `Docker`: the spec's `docker run --gpus all -v <volume>:/workspace:rw -e ... <image>`, through
  the Docker SDK, with the request's paths mapped into the volume; stdout is parsed, stderr
  becomes the failure message.

The lines, the exit codes and the env names are the runner contract's (runners/flux/contract.py).
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

from runners.flux.contract import (
    ENV_NAMES,
    ExitCode,
    FluxRequest,
    ProgressCallback,
    failure_message,
    parse_progress,
    parse_seed,
)
from runners.mount import WorkspaceMount

RUNNER_SCRIPT = Path(__file__).resolve().parent / "flux" / "run_flux_generation.py"


class RunnerFailed(RuntimeError):
    """A take the runner could not render; `exit_code` is the runner's (an `ExitCode` when the
    runner said so, or whatever a killed process returned)."""

    def __init__(self, message: str, exit_code: int = ExitCode.FAILED) -> None:
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

    def run(self, request: FluxRequest, on_progress: ProgressCallback) -> RunResult: ...


class InProcess:
    name = "in-process"

    def run(self, request: FluxRequest, on_progress: ProgressCallback) -> RunResult:
        # Imported here: torch and diffusers load only in processes that render.
        from runners.flux.contract import FluxError
        from runners.flux.generation import generate

        try:
            result = generate(request, on_progress)
        except FluxError as exc:
            raise RunnerFailed(str(exc), exc.exit_code) from exc
        except Exception as exc:  # the runner's own bugs still fail the take readably
            raise RunnerFailed(f"{type(exc).__name__}: {exc}", ExitCode.FAILED) from exc
        return RunResult(
            output_path=str(result.output_path),
            seed=result.seed,
            loaded_pipeline=result.loaded_pipeline,
            timings=dict(result.timings),
        )


class _StdoutReader:
    """Reads a runner's stdout lines: progress is forwarded, the seed kept."""

    def __init__(self, on_progress: ProgressCallback, mount: WorkspaceMount | None = None) -> None:
        self.on_progress = on_progress
        self.mount = mount  # a container's previews are reported as /workspace paths
        self.seed: int | None = None

    def __call__(self, line: str) -> None:
        progress = parse_progress(line)
        if progress is not None:
            preview = progress.preview_path
            if preview and self.mount is not None:
                preview = str(self.mount.to_host(preview))
            self.on_progress(progress.percent, progress.step, preview)
            return
        seed = parse_seed(line)
        if seed is not None:
            self.seed = seed


def _pump_lines(stream: Any, on_line: Any) -> None:
    for raw in iter(stream.readline, ""):
        on_line(raw.rstrip("\n"))
    stream.close()


def child_env(request: FluxRequest, environ: dict[str, str] | None = None) -> dict[str, str]:
    """This process's env without any contract variable of its own, plus the request's."""
    base = os.environ if environ is None else environ
    return {**{k: v for k, v in base.items() if k not in ENV_NAMES}, **request.to_env()}


class Subprocess:
    name = "subprocess"

    def __init__(self, python: str = sys.executable, script: Path = RUNNER_SCRIPT) -> None:
        self.python = python
        self.script = script

    def run(self, request: FluxRequest, on_progress: ProgressCallback) -> RunResult:
        reader = _StdoutReader(on_progress)
        stderr_tail: deque[str] = deque(maxlen=20)
        proc = subprocess.Popen(
            [self.python, str(self.script)],
            env=child_env(request),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        err = threading.Thread(target=_pump_lines, args=(proc.stderr, stderr_tail.append))
        err.start()
        try:
            _pump_lines(proc.stdout, reader)
            code = proc.wait()
        finally:
            if proc.poll() is None:  # our own thread was interrupted: don't leave the child behind
                proc.kill()
                proc.wait()
            err.join()
        if code != ExitCode.OK:
            raise RunnerFailed(failure_message(list(stderr_tail), code), code)
        return RunResult(output_path=str(request.output_path), seed=reader.seed)


def container_name(request: FluxRequest) -> str:
    """`gms-flux-<take file>-<random>`: unique per take, across projects and retries."""
    stem = request.output_path.stem.lower()
    safe = "".join(c if c.isalnum() else "-" for c in stem).strip("-")[:60]
    return f"gms-flux-{safe}-{uuid.uuid4().hex[:8]}"


def remove_partial_files(output: Path) -> None:
    """What a runner killed mid-write leaves: its temporary file beside the output."""
    for leftover in output.parent.glob(f".{output.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


@dataclass
class Docker:
    """One take per container: the spec's `docker run --gpus ... -v <volume>:/workspace:rw -e ...
    <image>`, through the Docker SDK (any Docker-API engine: Docker, podman's service).

    `workspace_volume` is what /workspace mounts (a named volume or a host path) and
    `host_workspace` where that volume lies on this host (default: the request's workspace):
    the request's paths are mapped into the volume, reported previews back out of it.
    """

    image: str
    workspace_volume: str = "generative_studio_workspace"
    host_workspace: Path | None = None
    name: str = "docker"
    gpu_ids: list[str] | None = None  # None: every GPU; []: none (CPU)
    user: str = "1000:1000"
    network_mode: str | None = "none"  # the runner reads local files only

    def mount(self, request: FluxRequest) -> WorkspaceMount:
        return WorkspaceMount(self.host_workspace or request.workspace)

    def container_spec(self, request: FluxRequest, name: str) -> dict[str, Any]:
        """The keyword arguments of `containers.run`: what `docker run` would be given."""
        from docker.types import DeviceRequest

        env = self.mount(request).request(request).to_env()
        spec: dict[str, Any] = {
            "image": self.image,
            "name": name,
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

    def run(self, request: FluxRequest, on_progress: ProgressCallback) -> RunResult:
        import docker

        reader = _StdoutReader(on_progress, self.mount(request))
        client = docker.from_env()
        container = client.containers.run(**self.container_spec(request, container_name(request)))
        try:
            for raw in container.logs(stream=True, follow=True, stdout=True, stderr=False):
                for line in raw.decode(errors="replace").splitlines():
                    reader(line)
            code = int(container.wait()["StatusCode"])
            if code != ExitCode.OK:
                stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
                raise RunnerFailed(failure_message(stderr.splitlines(), code), code)
        except BaseException:
            remove_partial_files(request.output_path)
            raise
        finally:
            container.remove(force=True)
        return RunResult(output_path=str(request.output_path), seed=reader.seed)
