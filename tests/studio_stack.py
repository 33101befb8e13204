"""A whole studio as real processes around one Prefect, embedded (SQLite) or production
(PostgreSQL, Redis, two API replicas, services): for tests/test_production.py and bench/scale.py.

Every process gets its Prefect from the environment built here, never from the test process's
own settings (which point at the test session's SQLite server).
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from scripts.local_prefect import LocalPrefectServer, free_port
from scripts.production import ProductionPrefect
from studio.tiers import Quality
from tests.stack_helpers import REPO, Proc, studio_env, wait_until

PROFILES = ("embedded", "production")


def shared_tmp(prefix: str) -> Path:
    """A folder the `postgres` user can reach (pytest's own tmp is 0700 under /tmp)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)
    return root


class Studio:
    def __init__(self, root: Path, models_root: Path, profile: str, **env: str) -> None:
        assert profile in PROFILES, profile
        self.profile = profile
        self.root = root
        self.workspace = root / "workspace"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.models_root = models_root
        self.extra_env = env
        state = self.workspace / ".studio"
        self.prefect: Any
        if profile == "production":
            self.prefect = ProductionPrefect(state / "production", ui_port=free_port(),
                                             logs=self.logs)
        else:
            self.prefect = LocalPrefectServer(state / "prefect", free_port(), ui=False,
                                              log=self.logs / "prefect-server.log")
        self.procs: dict[str, Proc] = {}
        self.api_ports: dict[str, int] = {}

    # --- environments -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The studio's processes: the (task) Prefect API, shared result storage, workspace."""
        env = studio_env(self.workspace, self.models_root)
        for key in [k for k in env if k.startswith("PREFECT_")]:
            del env[key]  # the test session's server
        env.update(self.prefect.env())
        env.update({
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(self.workspace / ".studio" / "results"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "STUDIO_REPO": str(REPO),
            "STUDIO_RECONCILE_SECONDS": "1",
            **self.extra_env,
        })
        return env

    def pool_env(self) -> dict[str, str]:
        """The local pool's worker and its flow runs: any replica (production: the UI one)."""
        env = self.env()
        if self.profile == "production":
            env["PREFECT_API_URL"] = self.prefect.ui_api_url
        return env

    @property
    def api_url(self) -> str:
        return str(self.prefect.api_url)

    @contextmanager
    def prefect_client_settings(self) -> Iterator[None]:
        """This process's Prefect calls (run_deployment, reads) go to this studio's Prefect."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            yield

    # --- processes ----------------------------------------------------------------------------

    def start_prefect(self) -> float:
        started = time.monotonic()
        self.prefect.start(timeout=600) if self.profile == "production" else \
            self.prefect.start(timeout=300)
        return time.monotonic() - started

    def start_worker(self, quality: Quality = Quality.standard, name: str | None = None) -> Proc:
        """`studio worker --tier Q`; returns once the task replica lists this very process."""
        from tasks.text_to_image import TIER_TASKS

        name = name or f"worker-{quality.value}"
        studio = Path(sys.executable).with_name("studio")
        proc = Proc([str(studio), "worker", "--tier", quality.value], self.env(),
                    self.logs / f"{name}.log")
        self.procs[name] = proc
        identifier = f"{socket.gethostname()}-{proc.popen.pid}"
        key = TIER_TASKS[quality].task_key

        def online() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"worker exited: {proc.output()[-2000:]}")
            try:
                workers = httpx.post(f"{self.api_url}/task_workers/filter", timeout=10,
                                     json={"task_worker_filter": {"task_keys": [key]}}).json()
            except httpx.HTTPError:
                return False
            return identifier in {w["identifier"] for w in workers}

        wait_until(online, 240, f"the {quality.value} task worker to connect", every=0.5)
        return proc

    def start_api(self, name: str = "api-1") -> str:
        """A studio API process (`python -m api`); returns its URL once its relay is connected."""
        port = free_port()
        proc = Proc([sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"],
                    self.env(), self.logs / f"{name}.log")
        self.procs[name] = proc
        self.api_ports[name] = port
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"{name} exited: {proc.output()[-2000:]}")
            try:
                health = httpx.get(f"{url}/healthz", timeout=10)
            except httpx.HTTPError:
                return False
            return health.status_code == 200 and health.json().get("relay") == "connected"

        wait_until(ready, 180, f"{name} to be ready", every=0.5)
        return url

    def deploy_local_pool(self) -> None:
        """The `local` Process pool, `batch_takes/local`, and a `prefect worker` for it."""
        import subprocess

        for cmd in ([sys.executable, "-m", "scripts.create_pools", "local"],
                    [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name",
                     "batch_takes/local"]):
            done = subprocess.run(cmd, cwd=REPO, env=self.pool_env(), capture_output=True,
                                  text=True, timeout=300, check=False)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        self.procs["pool-worker"] = Proc(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "local"],
            self.pool_env(), self.logs / "pool-worker.log")

    def run_batch(self, project_id: str, takes_per_node: int, quality: str = "standard",
                  **parameters: Any) -> str:
        """Starts `batch_takes/local`; returns the flow run id (does not wait)."""
        from prefect.deployments import run_deployment

        with self.prefect_client_settings():
            run = run_deployment("batch_takes/local", timeout=0, parameters={
                "project": project_id, "takes_per_node": takes_per_node,
                "quality": quality, **parameters})
        return str(run.id)

    def flow_run_state(self, flow_run_id: str) -> str:
        response = httpx.get(f"{self.api_url}/flow_runs/{flow_run_id}", timeout=30)
        response.raise_for_status()
        return str(response.json()["state_type"])

    def task_run_states(self, flow_run_id: str) -> list[str]:
        response = httpx.post(f"{self.api_url}/task_runs/filter", timeout=30, json={
            "flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})
        response.raise_for_status()
        return [str(r["state_type"]) for r in response.json()]

    def stop_studio(self) -> None:
        """Every studio process (workers, APIs, pool worker), newest first; Prefect stays."""
        for name in reversed(list(self.procs)):
            self.procs.pop(name).kill()

    def stop(self) -> None:
        self.stop_studio()
        self.prefect.stop()
