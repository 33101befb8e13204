"""The local stack in one command: `python -m scripts.stack [--demo]` (`make up` / `make demo`).

Starts, on 127.0.0.1 and each in its own process group:
  - a Prefect server on SQLite, its UI at :4200 (reused if one already answers there);
  - a warm task worker per quality tier that has weights (`serve_tier`), so clicks render at once;
  - the `local` Process work pool, its deployments (`batch_takes/local`, `run_graph/local`) and a
    `prefect worker` for it, for TDs' batches from the Prefect UI;
  - the API (and the canvas, from web/dist) at :8000.
It prints where each is and what is ready; Ctrl-C stops all of it.

`--profile production` (`make up PROFILE=production`) runs Prefect on PostgreSQL and Redis, its API
(two replicas) and services apart: scripts/production.py, docs/operations.md.

`--demo` renders with a tiny random-weight FLUX model at every tier (built once into
$STUDIO_WORKSPACE/.studio/demo-models): everything works on a laptop CPU, the images are noise.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from scripts.local_prefect import LocalPrefectServer

REPO = Path(__file__).resolve().parent.parent
TIERS = ("low", "standard", "high")
VARIANT = {"low": "FLUX.1-schnell", "standard": "FLUX.1-dev", "high": "FLUX.1-dev"}
LOCAL_DEPLOYMENTS = ("batch_takes/local", "run_graph/local")


@dataclass
class Plan:
    """What to start, decided before anything starts (tests read it)."""

    workspace: Path
    models_root: Path
    demo: bool
    host: str
    api_port: int
    prefect_port: int
    worker_tiers: list[str]
    missing_tiers: list[str]
    env: dict[str, str] = field(default_factory=dict)
    profile: str = "embedded"
    _prefect: Any = None

    @property
    def state_dir(self) -> Path:
        return self.workspace / ".studio"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def prefect_server(self) -> Any:
        """The embedded server, or the production profile's processes (one per plan)."""
        if self._prefect is None:
            if self.profile == "production":
                from scripts.production import ProductionPrefect

                self._prefect = ProductionPrefect(self.state_dir / "production",
                                                  ui_port=self.prefect_port,
                                                  task_port=self.prefect_port + 1)
            else:
                self._prefect = LocalPrefectServer(self.state_dir / "prefect", self.prefect_port,
                                                   ui=True, log=self.logs / "prefect-server.log")
        return self._prefect


def has_weights(models_root: Path, tier: str) -> bool:
    return (models_root / "flux" / VARIANT[tier] / "model_index.json").is_file()


def make_plan(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Plan:
    environ = dict(os.environ if environ is None else environ)
    workspace = Path(environ.get("STUDIO_WORKSPACE") or REPO / "Generative_Studio_Workspace")
    workspace = workspace.absolute()
    if args.demo:
        models_root = workspace / ".studio" / "demo-models" / "Library" / "AI_Models"
    else:
        models_root = Path(environ.get("STUDIO_MODELS_ROOT")
                           or workspace / "Library" / "AI_Models")
    # The demo's model is built before workers start, so every tier counts as having weights.
    ready = [t for t in TIERS if args.demo or has_weights(models_root, t)]
    workers = [t for t in (args.tiers or TIERS) if t in ready]
    if not workers and not args.demo:
        # With no weights at all, a standard worker still runs: a click then fails with the
        # runner's "run `make download-models`" instead of "no worker online".
        workers = ["standard"]
    plan = Plan(workspace=workspace, models_root=models_root, demo=args.demo, host=args.host,
                api_port=args.port, prefect_port=args.prefect_port, worker_tiers=workers,
                missing_tiers=[t for t in TIERS if t not in ready],
                profile=getattr(args, "profile", "embedded"))
    home = plan.state_dir / "prefect"
    plan.env = {
        **environ,
        **plan.prefect_server().env(),
        "STUDIO_WORKSPACE": str(workspace),
        "STUDIO_MODELS_ROOT": str(models_root),
        "STUDIO_REPO": str(REPO),
        "STUDIO_PUBLIC_URL": f"http://{args.host}:{args.port}",
        # The API and the workers hand parameters over through the same result storage.
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return plan


def deploy_command() -> list[str]:
    """Only the local deployments: the GPU pools' Docker deployments need images and GPUs."""
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy"]
    for name in LOCAL_DEPLOYMENTS:
        cmd += ["--name", name]
    return cmd


def worker_command(tier: str) -> list[str]:
    return [sys.executable, "-c", f"from tasks.worker import serve_tier; serve_tier({tier!r})"]


class Processes:
    """Children in their own process groups, stopped together (newest first)."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.children.append((name, proc))
        return proc

    def run(self, name: str, cmd: list[str], timeout: float = 300) -> bool:
        with (self.logs / f"{name}.log").open("ab") as log:
            done = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=timeout, check=False)
        return done.returncode == 0

    def exited(self) -> list[str]:
        return [name for name, proc in self.children if proc.poll() is not None]

    def stop(self) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def build_demo_model(plan: Plan, procs: Processes) -> None:
    root = plan.models_root.parent.parent  # <root>/Library/AI_Models
    if all(has_weights(plan.models_root, t) for t in TIERS):
        return
    say(f"building the tiny demo model in {root} (once) ...")
    if not procs.run("make-tiny-model", [sys.executable, "scripts/make_tiny_model.py",
                                         str(root)]):
        raise SystemExit(f"could not build the demo model; see {plan.logs}/make-tiny-model.log")


def say(text: str) -> None:
    print(text, flush=True)


def wait_for(check: object, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return True
        except httpx.HTTPError:
            pass
        time.sleep(every)
    return False


def banner(plan: Plan, health: dict[str, object], deployed: bool, pool_worker: bool) -> str:
    api = f"http://{plan.host}:{plan.api_port}"
    online = set(health.get("online_tiers") or [])  # type: ignore[arg-type]
    tiers = []
    for tier in TIERS:
        if tier in online:
            tiers.append(f"{tier} ready")
        elif tier in plan.worker_tiers:
            tiers.append(f"{tier} starting (or failed: see logs)")
        elif tier in plan.missing_tiers:
            tiers.append(f"{tier}: no weights (`make download-models`)")
        else:
            tiers.append(f"{tier}: not started")
    canvas = "canvas at /" if (REPO / "web" / "dist" / "index.html").is_file() else \
        "canvas not built (`make web`)"
    deployments = ("deployments " + ", ".join(LOCAL_DEPLOYMENTS) if deployed
                   else "deploy FAILED (see logs)")
    mode = ("DEMO: tiny random-weight FLUX at every tier; images are coloured noise"
            if plan.demo else f"models from {plan.models_root}")
    lines = [
        "",
        f"Generative Studio, local stack ({mode}; profile {plan.profile})",
        f"  Prefect UI    http://127.0.0.1:{plan.prefect_port}",
        f"  API           {api}  ({'ready' if health.get('api') == 'ok' else 'NOT ready'}; "
        f"{canvas}; OpenAPI at /docs)",
        f"  task workers  {', '.join(tiers)}",
        f"  work pool     local: {deployments}; process worker "
        f"{'running' if pool_worker else 'NOT running'}",
        f"  workspace     {plan.workspace}",
        f"  logs          {plan.logs}",
        "Ctrl-C stops all of it.",
        "",
    ]
    return "\n".join(lines)


def up(plan: Plan) -> int:
    plan.logs.mkdir(parents=True, exist_ok=True)
    procs = Processes(plan.logs, plan.env)
    server = plan.prefect_server()

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts us in the background leaves it ignored otherwise.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if plan.demo:
            build_demo_model(plan, procs)
        if wait_for(lambda: httpx.get(f"{server.api_url}/health", timeout=1).is_success, 1):
            say(f"using the Prefect server already at {server.ui_url}")
        else:
            say(f"starting the Prefect server at {server.ui_url} (~30 s) ...")
            server.start(timeout=300)
            plan.env.update(server.env())  # the production profile adds when Prefect started
        for tier in plan.worker_tiers:
            procs.start(f"worker-{tier}", worker_command(tier))
        procs.start("api", [sys.executable, "-m", "api", "--host", plan.host,
                            "--port", str(plan.api_port)])
        # Pools and deployments while the workers load their pipelines.
        deployed = procs.run("create-pools", [sys.executable, "-m", "scripts.create_pools",
                                              "local"]) and procs.run("deploy", deploy_command())
        procs.start("prefect-worker-local", [sys.executable, "-m", "prefect", "worker", "start",
                                             "--pool", "local"])
        health_url = f"http://127.0.0.1:{plan.api_port}/healthz"
        health: dict[str, object] = {}

        def all_ready() -> bool:
            nonlocal health
            health = httpx.get(health_url, timeout=5).json()
            online = health.get("online_tiers") or []
            return set(plan.worker_tiers) <= set(online)  # type: ignore[arg-type]

        wait_for(all_ready, 240, every=1)
        say(banner(plan, health, deployed, "prefect-worker-local" not in procs.exited()))
        while True:
            time.sleep(1)
            gone = procs.exited()
            if "api" in gone:
                say(f"the API stopped; see {plan.logs}/api.log")
                return 1
    except KeyboardInterrupt:
        say("\nstopping ...")
        return 0
    finally:
        procs.stop()
        server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true",
                        help="the tiny random-weight model at every tier")
    parser.add_argument("--host", default="127.0.0.1", help="where the API listens")
    parser.add_argument("--port", type=int, default=8000, help="the API's port")
    parser.add_argument("--prefect-port", type=int, default=4200,
                        help="the Prefect UI (production: the task API replica is this + 1)")
    parser.add_argument("--profile", choices=("embedded", "production"),
                        default=os.environ.get("STUDIO_PROFILE") or "embedded",
                        help="embedded: Prefect on SQLite in one process (default); production: "
                        "PostgreSQL, Redis, two API replicas and the services apart")
    parser.add_argument("--tiers", nargs="+", choices=TIERS,
                        help="start task workers only for these tiers (default: all with weights)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return up(make_plan(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
