"""Latency from submitting a take to its task starting and to the take being recorded.

Side by side, on one local Prefect server (SQLite) and the tiny FLUX model:
  (a) a deployment run on a Process worker with Prefect's defaults,
  (b) the same with our tuned settings (worker polls every 1 s; `python -m prefect.engine`),
  (c) a background task on a warm per-tier task worker (what a Generate click uses).

    .venv/bin/python bench/dispatch_latency.py [--runs 10] [--skip-defaults]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.local_prefect import LocalPrefectServer, free_port  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f} s   p95 {pct(values, 0.95):6.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--skip-defaults", action="store_true",
                        help="skip (a), the slowest (~15 s a run)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    server = LocalPrefectServer(root / "prefect", free_port(), ui=False)
    env = {**os.environ, **server.env(),
           "STUDIO_WORKSPACE": str(root / "workspace"),
           "STUDIO_MODELS_ROOT": str(root / "models" / "Library" / "AI_Models"),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(root / "results"),
           "PREFECT_LOGGING_LEVEL": "WARNING", "STUDIO_REPO": str(REPO), "OMP_NUM_THREADS": "1"}
    os.environ.update(env)
    subprocess.run([sys.executable, "scripts/make_tiny_model.py", str(root / "models")],
                   cwd=REPO, check=True, env=env, stdout=subprocess.DEVNULL)
    print(f"starting a Prefect server in {root} ...", flush=True)
    server.start()

    # Imported after the env points at the bench server.
    from prefect.deployments import run_deployment

    from deployments.pools import ensure_pools
    from studio.prepare import prepare_take
    from studio.store import ProjectStore
    from studio.tiers import Quality
    from tasks.submit import submit_take
    from tests.stack_helpers import Proc, add_text_to_image, start_tier_worker, wait_until

    asyncio.run(ensure_pools(["local"]))
    subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name",
                    "batch_takes/local"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    store = ProjectStore()
    project = store.create("Latency", "standard")
    node_id = add_text_to_image(store, project.id, steps=2, size=256)
    results: dict[str, tuple[list[float], list[float]]] = {}

    def latest_take():
        return store.load(project.id).get_node(node_id).takes[-1]

    def measure_deployment(label: str, worker_env: dict[str, str], job_vars: dict) -> None:
        worker = Proc([sys.executable, "-m", "prefect", "worker", "start", "--pool", "local"],
                      worker_env, root / f"worker-{label}.log")
        starts, done = [], []
        try:
            time.sleep(3)  # let the worker register before the first run
            for i in range(args.runs):
                t0 = time.time()
                run = run_deployment("batch_takes/local", timeout=600, poll_interval=0.5,
                                     job_variables=job_vars,
                                     parameters={"project": project.id, "seeds": [i]})
                assert run.state.is_completed(), run.state
                take = latest_take()
                starts.append(take.started_at.timestamp() - t0)
                done.append(take.finished_at.timestamp() - t0)
                print(f"  {label} run {i + 1}: start {starts[-1]:.2f} s, "
                      f"recorded {done[-1]:.2f} s", flush=True)
        finally:
            worker.kill()
        results[label] = (starts, done)

    if not args.skip_defaults:
        print("(a) deployment, Prefect defaults", flush=True)
        measure_deployment("a-deployment-defaults", env, {})
    print("(b) deployment, tuned", flush=True)
    measure_deployment("b-deployment-tuned", {**env, "PREFECT_WORKER_QUERY_SECONDS": "1",
                                              "PREFECT_WORKER_PREFETCH_SECONDS": "1"},
                       {})  # the Process worker's default: its own interpreter, one start

    print("(c) warm task worker", flush=True)
    worker = start_tier_worker(Quality.standard, env, root / "task-worker.log")
    starts, done = [], []
    try:
        for i in range(args.runs):
            job = prepare_take(store, project.id, node_id, quality_requested=Quality.standard,
                               quality_used=Quality.standard, seed=i)
            t0 = time.time()
            submit_take(job)
            take = wait_until(lambda j=job: next(
                (t for t in store.load(project.id).get_node(node_id).takes
                 if t.id == j.take_id and t.finished_at), None), 120, "the take")
            starts.append(take.started_at.timestamp() - t0)
            done.append(take.finished_at.timestamp() - t0)
            print(f"  warm run {i + 1}: start {starts[-1]:.2f} s, recorded {done[-1]:.2f} s",
                  flush=True)
        loads = worker.output().count("loaded from")
    finally:
        worker.kill()
        server.stop()
    results["c-warm-task-worker"] = (starts, done)

    print(f"\nsubmit -> task start and -> take recorded, {args.runs} runs each, tiny model")
    warm = statistics.median(results["c-warm-task-worker"][0])
    for label, (s, d) in results.items():
        ratio = statistics.median(s) / warm
        print(f"{label:24s} start: {summary(s)} | recorded: {summary(d)} | "
              f"start vs warm: {ratio:5.1f}x")
    print(f"warm task worker: {loads} pipeline load(s) for {args.runs} takes (at start)")


if __name__ == "__main__":
    main()
