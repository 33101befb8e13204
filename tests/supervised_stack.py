"""The real local stack (`python -m scripts.stack`) as a test drives it: started on free ports
against the session's Prefect server, its stdout kept, its children's pids read from the
supervisor's state file, stopped like Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from scripts.local_prefect import LocalPrefectServer, free_port
from tests.api_helpers import Socket
from tests.stack_helpers import REPO, wait_until


class Stack:
    def __init__(self, workspace: Path, models_root: Path, prefect: LocalPrefectServer,
                 tiers: list[str]) -> None:
        self.workspace = workspace
        self.models_root = models_root
        self.prefect = prefect
        self.tiers = tiers
        self.port = free_port()
        self.lines: list[tuple[float, str]] = []
        self.proc: subprocess.Popen[str] | None = None
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Stack:
        env = {**os.environ, "STUDIO_WORKSPACE": str(self.workspace),
               "STUDIO_MODELS_ROOT": str(self.models_root), "OMP_NUM_THREADS": "1",
               "STUDIO_RECONCILE_SECONDS": "1"}
        self.lines = []
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.stack", "--no-pool", "--tiers", *self.tiers,
             "--port", str(self.port), "--prefect-port", str(self.prefect.port)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_line(self, starts: str, timeout: float) -> float:
        """Seconds from the stack's start to the first stdout line starting with `starts`."""
        def seen() -> float | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the stack exited:\n{self.output()[-3000:]}")
            return next((t - self.started_at for t, line in self.lines
                         if line.startswith(starts)), None)

        return wait_until(seen, timeout, f"the stack to print {starts!r}", every=0.2)

    def children(self) -> dict[str, Any]:
        path = self.workspace / ".studio" / "stack.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def pid(self, name: str) -> int:
        return int(self.children()[name]["pid"])

    def kill_child(self, name: str) -> int:
        pid = self.pid(name)
        os.killpg(pid, signal.SIGKILL)
        return pid

    def freeze_child(self, name: str) -> int:
        """SIGSTOP: the child does nothing more (no take finished, none picked up) until the
        stack's stop kills it — a machine that stops with work in flight."""
        pid = self.pid(name)
        os.killpg(pid, signal.SIGSTOP)
        return pid

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def socket(self, project_id: str) -> Socket:
        return Socket(f"ws://127.0.0.1:{self.port}/ws/{project_id}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
