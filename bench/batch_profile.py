"""Where a batch take's time goes when the render is cheap: `batch_takes` run in this process
against a bare local Prefect server (SQLite), the tiny FLUX model, with every project.json edit
and every Prefect HTTP call counted and timed.

    .venv/bin/python bench/batch_profile.py --nodes 5 --takes 10
    .venv/bin/python bench/batch_profile.py --nodes 5 --takes 10 --concurrency 1 8

Prints, per run: wall, the pipeline's busy seconds (bench/scale.py's `batch_figures`), the idle
pipeline per take ((wall - busy) / takes), project.json edits per take and their seconds, and
Prefect calls per take by route.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.local_prefect import LocalPrefectServer, free_port  # noqa: E402

ROOT = Path(tempfile.mkdtemp(prefix="bench-batch-profile-"))
SERVER = LocalPrefectServer(ROOT / "prefect", free_port(), ui=False)
# Before anything imports prefect: this process and the server agree on where Prefect is.
os.environ.update(SERVER.env())
os.environ.update({"PREFECT_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
                   "OMP_NUM_THREADS": "1",
                   "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(ROOT / "results")})


class Meter:
    """Counts and seconds per label, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, label: str, seconds: float) -> None:
        with self.lock:
            self.count[label] += 1
            self.seconds[label] += seconds

    @contextmanager
    def timed(self, label: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(label, time.perf_counter() - started)


METER = Meter()


def instrument() -> None:
    """Wrap project.json's edit/read/write and every httpx request (Prefect's clients)."""
    import httpx

    import studio.project_file as project_file
    import studio.store as store

    def wrap(module: Any, name: str, label: str) -> None:
        original = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with METER.timed(label):
                return original(*args, **kwargs)

        setattr(module, name, timed)

    wrap(store, "load_project", "project.json load (parse)")
    wrap(store, "parse_project", "project.json re-validate on save")
    wrap(store, "validate_project", "project.json graph check")
    wrap(store, "write_project", "project.json write (fsync)")
    wrap(project_file, "write_project", "project.json write (fsync)")

    original_edit = store.ProjectStore.edit

    @contextmanager
    def edit(self: Any, project_id: str) -> Iterator[Any]:
        started = time.perf_counter()
        with original_edit(self, project_id) as project:
            yield project
        METER.add("project.json edit (lock to saved)", time.perf_counter() - started)

    store.ProjectStore.edit = edit  # type: ignore[method-assign]

    def route(request: httpx.Request) -> str:
        parts = [p for p in request.url.path.split("/") if p]
        parts = parts[1:] if parts and parts[0] == "api" else parts
        # ids (uuids) collapse to {id}
        kept = ["{id}" if len(p) == 36 and p.count("-") == 4 else p for p in parts]
        return f"{request.method} /{'/'.join(kept)}"

    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        with METER.timed(f"http {route(request)}"):
            return sync_send(self, request, **kwargs)

    async def asend(self: httpx.AsyncClient, request: httpx.Request,
                    **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        try:
            return await async_send(self, request, **kwargs)
        finally:
            METER.add(f"http {route(request)}", time.perf_counter() - started)

    httpx.Client.send = send  # type: ignore[method-assign]
    httpx.AsyncClient.send = asend  # type: ignore[method-assign]


def make_project(workspace: Path, name: str, nodes: int, size: int) -> str:
    from studio.store import ProjectStore
    from studio.workspace import Workspace
    from tests.stack_helpers import add_text_to_image

    store = ProjectStore(Workspace(workspace))
    project = store.create(name)
    for i in range(nodes):
        add_text_to_image(store, project.id, shot=f"SHOT_{i + 1:03d}", steps=1, size=size,
                          x=300 * i, prompt=f"a lighthouse {i}")
    return project.id


def batch_takes_of(workspace: Path, project_id: str) -> list[dict[str, Any]]:
    data = json.loads((workspace / "Projects" / project_id / "project.json").read_text())
    return [t for n in data["nodes"] for t in n.get("takes", [])]


def one_run(workspace: Path, nodes: int, takes: int, concurrency: int, size: int) -> dict:
    from flows.batch import batch_takes

    os.environ["STUDIO_BATCH_CONCURRENCY"] = str(concurrency)
    project_id = make_project(workspace, f"Profile {concurrency} {time.time_ns()}", nodes, size)
    METER.count.clear()
    METER.seconds.clear()
    started = time.perf_counter()
    state = batch_takes(project=project_id, takes_per_node=takes, return_state=True)
    wall = time.perf_counter() - started
    from bench.scale import batch_figures

    recorded = batch_takes_of(workspace, project_id)
    done = sum(t["status"] == "completed" for t in recorded)
    n = nodes * takes
    figures = batch_figures(recorded, wall, done)
    return {"concurrency": concurrency, "state": state.name, "takes": n, "completed": done,
            **figures, "idle_per_take_s": figures["orchestration_s"] / n,
            "meter": {k: (METER.count[k], METER.seconds[k]) for k in sorted(METER.count)}}


def report(result: dict) -> None:
    n = result["takes"]
    print(f"\n== concurrency {result['concurrency']}: {result['state']}, "
          f"{result['completed']}/{n} completed, wall {result['wall_s']:.1f} s, "
          f"pipeline busy {result['render_s']:.1f} s, idle pipeline per take "
          f"{result['idle_per_take_s']:.3f} s, {result['takes_per_s']:.2f} takes/s, "
          f"orchestrated {result['orchestrated_takes_per_s']:.2f} takes/s")
    print(f"   {'what':<58} {'per take':>9} {'s/take':>8} {'ms each':>8}")
    rows = sorted(result["meter"].items(), key=lambda kv: -kv[1][1])
    for label, (count, seconds) in rows:
        print(f"   {label[:58]:<58} {count / n:>9.2f} {seconds / n:>8.3f} "
              f"{1000 * seconds / count:>8.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--takes", type=int, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4],
                        help="STUDIO_BATCH_CONCURRENCY values, run in turn")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from scripts.make_tiny_model import write_tiny_workspace

    workspace = ROOT / "workspace"
    write_tiny_workspace(workspace)
    os.environ["STUDIO_WORKSPACE"] = str(workspace)
    os.environ["STUDIO_MODELS_ROOT"] = str(workspace / "Library" / "AI_Models")
    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    SERVER.start(timeout=600)
    print(f"Prefect (SQLite) up in {time.monotonic() - started:.0f} s", flush=True)
    instrument()
    results = []
    try:
        for concurrency in args.concurrency:
            results.append(one_run(workspace, args.nodes, args.takes, concurrency, args.size))
            report(results[-1])
    finally:
        SERVER.stop()
        shutil.rmtree(ROOT, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
