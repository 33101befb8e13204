"""Supervision of the local stack's long-lived processes: one dying never stops the others.

Each child runs in its own process group with its output in `<logs>/<name>.log`. A child that
exits is started again after a backoff (1 s, doubling to 30 s; back to 1 s once it has stayed
up a minute), and each exit and restart is logged to stdout and `<logs>/supervisor.log`. The
children's pids are kept in `<state>/stack.json`, so tools and tests can find them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # a child up this long has its backoff reset


@dataclass
class Child:
    name: str
    cmd: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = None
    restarts: int = 0
    history: list[dict[str, object]] = field(default_factory=list)


class Supervisor:
    def __init__(self, cwd: Path, env: dict[str, str], logs: Path, state_file: Path,
                 say: Callable[[str], None] = print) -> None:
        self.cwd = cwd
        self.env = env
        self.logs = logs
        self.state_file = state_file
        self.say = say
        self.children: dict[str, Child] = {}

    def _log(self, text: str) -> None:
        line = f"{datetime.now(UTC).isoformat(timespec='milliseconds')} {text}"
        self.say(text)
        with (self.logs / "supervisor.log").open("a") as out:
            out.write(line + "\n")

    def start(self, name: str, cmd: list[str]) -> Child:
        child = self.children.get(name) or Child(name, cmd)
        self.children[name] = child
        with (self.logs / f"{name}.log").open("ab") as log:
            child.proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_at = None
        self._save()
        return child

    def _save(self) -> None:
        state = {name: {"pid": c.proc.pid if c.proc else None, "restarts": c.restarts,
                        "history": c.history[-20:]}
                 for name, c in self.children.items()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def check(self) -> list[str]:
        """Notices exits and restarts what is due; returns the names restarted now."""
        now = time.monotonic()
        restarted = []
        for child in self.children.values():
            proc = child.proc
            if proc is not None and proc.poll() is not None and child.restart_at is None:
                up = now - child.started_at
                if up >= STABLE_AFTER:
                    child.backoff = FIRST_BACKOFF
                child.restart_at = now + child.backoff
                child.history.append({"exited": datetime.now(UTC).isoformat(),
                                      "code": proc.returncode, "up_s": round(up, 1)})
                self._log(f"{child.name} exited (code {proc.returncode}) after {up:.1f} s; "
                          f"restarting in {child.backoff:.0f} s (see {child.name}.log)")
                child.backoff = min(child.backoff * 2, MAX_BACKOFF)
                self._save()
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self.start(child.name, child.cmd)
                child.history.append({"restarted": datetime.now(UTC).isoformat(),
                                      "pid": child.proc.pid if child.proc else None})
                self._save()
                self._log(f"{child.name} restarted (pid {child.proc.pid if child.proc else '?'},"
                          f" restart {child.restarts})")
                restarted.append(child.name)
        return restarted

    def running(self, name: str) -> bool:
        child = self.children.get(name)
        return bool(child and child.proc and child.proc.poll() is None)

    def stop(self) -> None:
        """SIGTERM to every group, newest first; SIGKILL what is left after 15 s."""
        children = [c for c in reversed(self.children.values()) if c.proc is not None]
        for child in children:
            if child.proc and child.proc.poll() is None:
                _signal_group(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        self.state_file.unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
