"""Click-to-result latency through the gateway, against a running stack (`make demo`).

    python -m bench.ws_latency [--api http://127.0.0.1:8000] [--runs 20] [--workspace DIR]

For each run (one after another, so none waits behind another): the time from sending
`client:start_generation` to the first `server:node_state_updated`, and to `server:task_success`.

Baseline: the same take without the gateway: `prepare_take` + `submit_take` in this process, and
Prefect's own event stream read directly (`studio.take.started` / `.succeeded`). The difference is
what the gateway (dispatcher, relay, WebSocket) adds. Tiny model, 256x256, 2 steps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import websockets


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"  {name:<38} median {statistics.median(ms):8.1f} ms   p95 {pct(ms, 0.95):8.1f} ms"
            f"   (n={len(ms)})")


async def ours(api: str, project_id: str, node_id: str, runs: int) -> dict[str, list[float]]:
    ws_url = api.replace("http", "ws", 1) + f"/ws/{project_id}"
    first, success = [], []
    async with websockets.connect(ws_url, max_size=None) as ws:
        for _ in range(runs):
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "client:start_generation",
                                      "payload": {"node_id": node_id}}))
            t_first = None
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 120))
                kind = message["type"]
                if kind == "server:node_state_updated" and t_first is None:
                    t_first = time.perf_counter() - t0
                if kind == "server:task_failed" or kind == "server:error":
                    raise SystemExit(f"the take failed: {message['payload']}")
                if kind == "server:task_success":
                    success.append(time.perf_counter() - t0)
                    break
            first.append(t_first or 0.0)
            # Let the node's last state arrive before the next click.
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message["type"] == "server:node_state_updated":
                    break
    return {"click -> first node_state_updated": first, "click -> task_success": success}


async def baseline(project_id: str, node_id: str, runs: int) -> dict[str, list[float]]:
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    from studio.prepare import prepare_take
    from studio.store import ProjectStore
    from studio.take_events import TakeFailed, TakeStarted, TakeSucceeded, parse
    from studio.tiers import Quality
    from tasks import events
    from tasks.submit import submit_take

    store = ProjectStore()
    quality = Quality(store.load(project_id).quality)
    started, succeeded = [], []
    take_events = EventFilter(event=EventNameFilter(prefix=[events.PREFIX]))
    async with get_events_subscriber(filter=take_events) as subscriber:
        for _ in range(runs):
            t0 = time.perf_counter()
            job = await asyncio.to_thread(prepare_take, store, project_id, node_id,
                                          quality_requested=quality, quality_used=quality)
            await asyncio.to_thread(submit_take, job)
            async for event in subscriber:
                typed = parse(event.event, dict(event.resource), event.payload)
                if typed is None or typed.take_id != job.take_id:
                    continue
                if isinstance(typed, TakeStarted):
                    started.append(time.perf_counter() - t0)
                elif isinstance(typed, TakeSucceeded):
                    succeeded.append(time.perf_counter() - t0)
                    break
                elif isinstance(typed, TakeFailed):
                    raise SystemExit(f"the baseline take failed: {typed.error}")
    return {"submit -> studio.take.started event": started,
            "submit -> studio.take.succeeded event": succeeded}


def setup(api: str) -> tuple[str, str, dict[str, Any]]:
    with httpx.Client(base_url=api, timeout=30) as http:
        health = http.get("/healthz").json()
        project = http.post("/api/projects", json={"name": "Latency Bench"}).json()
        node = http.post(f"/api/projects/{project['id']}/nodes", json={
            "node_type": "text_to_image",
            "params": {"prompt": "a lighthouse at dusk", "steps": 2, "preset": "custom",
                       "width": 256, "height": 256},
        }).json()
    return project["id"], node["id"], health


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workspace", default=os.environ.get("STUDIO_WORKSPACE"),
                        help="the stack's workspace (for the baseline); default $STUDIO_WORKSPACE")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)

    project_id, node_id, health = setup(args.api)
    print(f"stack: {args.api}, Prefect {health.get('prefect_api_url')}, "
          f"workers online: {health.get('online_tiers')}; {args.runs} runs each, "
          "tiny model 256x256, 2 steps")
    results = asyncio.run(ours(args.api, project_id, node_id, args.runs))
    if not args.no_baseline and args.workspace:
        # The baseline talks to the same Prefect server and workspace as the stack.
        workspace = Path(args.workspace).absolute()
        os.environ["STUDIO_WORKSPACE"] = str(workspace)
        os.environ["PREFECT_API_URL"] = str(health["prefect_api_url"])
        os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH",
                              str(workspace / ".studio" / "prefect" / "results"))
        results |= asyncio.run(baseline(project_id, node_id, args.runs))
    print("through the gateway (WebSocket):")
    for name, values in results.items():
        if name.startswith("submit"):
            continue
        print(summary(name, values))
    baseline_rows = {k: v for k, v in results.items() if k.startswith("submit")}
    if baseline_rows:
        print("baseline, no gateway (prepare_take + submit_take + Prefect events in-process):")
        for name, values in baseline_rows.items():
            print(summary(name, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
