"""The local stack in one command: `python -m scripts.stack [--demo]` (`make up` / `make demo`).

Starts, on 127.0.0.1 and each in its own process group:
  - a Prefect server on SQLite, its UI at :4200 (reused if one already answers there);
  - a warm task worker per quality tier that has weights (`serve_tier`), so clicks render at once;
  - the `local` Process work pool, its deployments (`batch_takes/local`, `run_graph/local`) and a
    `prefect worker` for it, for TDs' batches from the Prefect UI;
  - the API (and the canvas, from web/dist) at :8000.
Every long-lived process is supervised (scripts/supervise.py): one that dies is restarted with
a backoff and logged, the others keep running. It prints "ready" only once the API's /readyz
says every started tier has a worker online; a tier without weights is named with the command
that fixes it. Ctrl-C stops all of it.

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

from scripts.docker_pools import start_docker_pools
from scripts.local_prefect import LocalPrefectServer
from scripts.stack_gpus import plan_gpu_workers
from scripts.supervise import Supervisor

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
    # A tier without weights gets no worker: its clicks wait in its queue, and the banner,
    # /healthz and the canvas say "no weights: run `make download-models`".
    workers = [t for t in (args.tiers or TIERS) if t in ready]
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
        # The tiers whose workers this stack starts: the API's /readyz waits for them.
        "STUDIO_TIERS": ",".join(workers),
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
    # The `studio worker` command pins the worker to its tier's GPU (STUDIO_GPUS) first.
    return [str(Path(sys.executable).with_name("studio")), "worker", "--tier", tier]


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


def banner(plan: Plan, health: dict[str, object], ready: bool, deployed: bool | None,
           pool_worker: bool) -> str:
    api = f"http://{plan.host}:{plan.api_port}"
    states: dict[str, dict[str, object]] = health.get("tiers") or {}  # type: ignore[assignment]
    tiers = []
    for tier in TIERS:
        state = states.get(tier, {})
        if tier in plan.missing_tiers:
            tiers.append(f"{tier}: no weights (run `make download-models`, or `make demo`)")
        elif tier not in plan.worker_tiers:
            tiers.append(f"{tier}: not started (--tiers)")
        else:
            tiers.append(f"{tier} {state.get('state', 'unknown')}"
                         f" ({state.get('workers', 0)} worker)")
    canvas = "canvas at /" if (REPO / "web" / "dist" / "index.html").is_file() else \
        "canvas not built (`make web`)"
    if deployed is None:
        pool = "local: not started (--no-pool)"
    else:
        deployments = ("deployments " + ", ".join(LOCAL_DEPLOYMENTS) if deployed
                       else "deploy FAILED (see logs)")
        pool = (f"local: {deployments}; process worker "
                f"{'running' if pool_worker else 'NOT running'}")
    mode = ("DEMO: tiny random-weight FLUX at every tier; images are coloured noise"
            if plan.demo else f"models from {plan.models_root}")
    if ready:
        status = "ready"
    elif not plan.worker_tiers:
        status = ("NOT ready: no tier has weights; run `make download-models` "
                  "(or `make demo` for the tiny model)")
    else:
        waiting = health.get("waiting_for") or ["the API"]
        status = f"NOT ready yet: waiting for {', '.join(map(str, waiting))}"
    lines = [
        "",
        f"Generative Studio, local stack ({mode}; profile {plan.profile})",
        f"  Prefect UI    http://127.0.0.1:{plan.prefect_port}",
        f"  API           {api}  ({canvas}; OpenAPI at /docs; /healthz, /readyz)",
        f"  task workers  {'; '.join(tiers)}",
        f"  work pool     {pool}",
        f"  workspace     {plan.workspace}",
        f"  logs          {plan.logs} (supervisor.log: restarts)",
        status,
        "Ctrl-C stops all of it.",
        "",
    ]
    return "\n".join(lines)


def revive_prefect(server: Any) -> None:
    """Restarts what of the stack's own Prefect stopped: the embedded server, or in the
    production profile the services alone (nothing is lost: the state is in PostgreSQL) or
    the whole set."""
    from scripts.production import ProductionPrefect

    if isinstance(server, ProductionPrefect):
        dead = [name for name, child in server.children.items() if not child.alive()]
        if dead == ["prefect-services"]:
            say("Prefect's services stopped; restarting them (see logs)")
            server.children.pop("prefect-services")
            server.start_services()
        elif dead:
            say(f"Prefect's {', '.join(dead)} stopped; restarting the production Prefect")
            server.restart()
    elif server.proc is not None and server.proc.poll() is not None:
        say("the Prefect server stopped; restarting it (see prefect-server.log)")
        server.start(timeout=600)


class _SupervisedStarter:
    """The Docker pools' workers are restarted like every other long-lived process."""

    def __init__(self, procs: Processes, sup: Supervisor) -> None:
        self.procs, self.sup = procs, sup

    def run(self, name: str, cmd: list[str], timeout: float = 300) -> bool:
        return self.procs.run(name, cmd, timeout)

    def start(self, name: str, cmd: list[str]) -> object:
        return self.sup.start(name, cmd)


def readiness(plan: Plan) -> tuple[bool, dict[str, object]]:
    """GET /readyz: (200?, its body)."""
    try:
        response = httpx.get(f"http://127.0.0.1:{plan.api_port}/readyz", timeout=5)
        return response.status_code == 200, response.json()
    except (httpx.HTTPError, ValueError):
        return False, {}


def up(plan: Plan, pool: bool = True, ready_timeout: float = 300) -> int:
    plan.logs.mkdir(parents=True, exist_ok=True)
    # Before anything starts: the GPU map may leave a tier without a worker, and STUDIO_TIERS
    # (what /readyz waits for) must name only the workers that really start.
    plan.worker_tiers, gpu_line = plan_gpu_workers(plan.worker_tiers, plan.demo)
    plan.env["STUDIO_TIERS"] = ",".join(plan.worker_tiers)
    procs = Processes(plan.logs, plan.env)
    sup = Supervisor(REPO, plan.env, plan.logs, plan.state_dir / "stack.json", say)
    server = plan.prefect_server()
    started = time.monotonic()

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts us in the background leaves it ignored otherwise.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if plan.demo:
            build_demo_model(plan, procs)
        own_server = False
        if wait_for(lambda: httpx.get(f"{server.api_url}/health", timeout=1).is_success, 1):
            say(f"using the Prefect server already at {server.ui_url}")
        else:
            say(f"starting the Prefect server at {server.ui_url} (~30 s) ...")
            server.start(timeout=600)  # minutes on a loaded machine; it is worth the wait
            plan.env.update(server.env())  # the production profile's task API URL
            own_server = True
        for tier in plan.worker_tiers:
            sup.start(f"worker-{tier}", worker_command(tier))
        sup.start("api", [sys.executable, "-m", "api", "--host", plan.host,
                          "--port", str(plan.api_port)])
        deployed: bool | None = None
        if pool:
            # Pools and deployments while the workers load their pipelines.
            deployed = procs.run("create-pools", [sys.executable, "-m", "scripts.create_pools",
                                                  "local"]) and procs.run("deploy",
                                                                          deploy_command())
            sup.start("prefect-worker-local", [sys.executable, "-m", "prefect", "worker",
                                               "start", "--pool", "local"])
        docker_line = (start_docker_pools(_SupervisedStarter(procs, sup), say, plan.env) if pool
                       else "  GPU pools     not started (no pools asked for)")
        ready, health = False, {}
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and plan.worker_tiers:
            sup.check()
            ready, health = readiness(plan)
            if ready:
                break
            time.sleep(0.5)
        if not ready:
            ready, health = readiness(plan)
        say(banner(plan, health, ready, deployed, sup.running("prefect-worker-local")))
        say(f"{gpu_line}\n{docker_line}\n")
        if ready:
            say(f"ready in {time.monotonic() - started:.1f} s (GET /readyz: 200)")
        while True:
            time.sleep(0.5)
            sup.check()
            if own_server:
                revive_prefect(server)
    except KeyboardInterrupt:
        say("\nstopping ...")
        return 0
    finally:
        sup.stop()
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
    parser.add_argument("--no-pool", action="store_true",
                        help="no work pool, deployments or pool worker (clicks only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return up(make_plan(args), pool=not args.no_pool)


if __name__ == "__main__":
    sys.exit(main())
