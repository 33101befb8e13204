"""A burst of clicks under many sockets, against a running stack (`make demo`, or
`python -m scripts.stack --tiers standard --no-pool` on the tiny model).

    python -m bench.ws_burst [--api http://127.0.0.1:8000] [--sockets 200] [--clicks 100]
                             [--projects 10] [--steps 2]

`--sockets` WebSocket clients are spread over `--projects` projects (one Text-to-Image node
each); `--clicks` Generate clicks are sent at once, spread over the projects. The bench also
subscribes to Prefect's event stream itself: for every `studio.take.*` event it notes when the
event reached *it* (the baseline: Prefect -> a subscriber), and for every socket when the
matching server message reached that socket. It reports:

- event -> socket latency (p50, p95, max) for started / progress / succeeded events;
- duplicates: a socket that got a take's task_success (or a progress value) twice;
- order: per socket and take, queued -> generating -> progress (rising) -> success, and never
  progress after the result;
- hand-outs: takes handed to Prefect more than once (`hand_outs` > 0) and task runs that ran
  more than once (Prefect `run_count` > 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

import httpx
import websockets


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


class Seen:
    """Arrival times: of each Prefect event at the bench, of each message at each socket."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], float] = {}  # (take, kind) -> t
        self.sockets: list[list[tuple[float, dict[str, Any]]]] = []


def key_of(message: dict[str, Any]) -> tuple[str, str] | None:
    """The Prefect event a server message relays, as (take id, kind)."""
    kind, p = message["type"], message["payload"]
    if kind == "server:task_success":
        return p["result"]["take_id"], "succeeded"
    if kind == "server:task_progress":
        return p["take_id"], f"progress:{p['progress']}"
    # A message with a queue place is a queued take's place, sent with its *node's* state
    # (generating while another take of the node renders): not the take starting.
    if (kind == "server:node_state_updated" and p["state"] == "generating" and p.get("take_id")
            and not p.get("queue")):
        return p["take_id"], "started"
    return None


async def follow_prefect(seen: Seen, stop: asyncio.Event) -> None:
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    take_events = EventFilter(event=EventNameFilter(prefix=["studio.take."]))
    async with get_events_subscriber(filter=take_events) as subscriber:
        async for event in subscriber:
            take = event.resource.get("studio.take")
            if not take:
                continue
            name = event.event.removeprefix("studio.take.")
            if name == "progress":
                name = f"progress:{int(event.payload.get('progress', 0))}"
            seen.events.setdefault((take, name), time.perf_counter())
            if stop.is_set():
                return


async def listen(url: str, log: list[tuple[float, dict[str, Any]]], done: asyncio.Event,
                 ready: asyncio.Event, opened: list[int]) -> None:
    async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
        opened.append(1)
        ready.set()
        while not done.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 1.0)
            except TimeoutError:
                continue
            log.append((time.perf_counter(), json.loads(raw)))


def check_order(messages: list[dict[str, Any]]) -> list[str]:
    """What is out of order in one socket's messages, per take."""
    problems = []
    per_take: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in messages:
        p = m["payload"]
        take = p.get("take_id") or (p.get("result") or {}).get("take_id")
        if take:
            per_take[take].append(m)
    for take, ms in per_take.items():
        ended = False
        last_progress = -1
        started = False
        for m in ms:
            kind, p = m["type"], m["payload"]
            if kind in ("server:task_success", "server:task_failed", "server:task_cancelled"):
                if ended:
                    problems.append(f"{take}: a second result")
                ended = True
            elif kind == "server:task_progress":
                if ended:
                    problems.append(f"{take}: progress after the result")
                if p["progress"] < last_progress:
                    problems.append(f"{take}: progress went down")
                last_progress = p["progress"]
            elif kind == "server:node_state_updated" and p.get("take_id") == take:
                # A queue place (sent with the node's state) after the take started, or one
                # after its result, is out of order; the node's state alone is not the take's.
                if p.get("queue") and (started or ended):
                    problems.append(f"{take}: a queue place after it "
                                    f"{'ended' if ended else 'started'}")
                if p["state"] in ("queued", "generating") and not p.get("queue") and ended:
                    problems.append(f"{take}: announced {p['state']} after its result")
                if p["state"] == "generating" and not p.get("queue"):
                    started = True
    return problems


async def burst(api: str, sockets: int, clicks: int, projects: int, steps: int) -> int:
    with httpx.Client(base_url=api, timeout=60) as http:
        health = http.get("/healthz").json()
        os.environ["PREFECT_API_URL"] = health["prefect_api_url"]
        nodes = []
        for i in range(projects):
            project = http.post("/api/projects", json={"name": f"Burst {uuid.uuid4().hex[:6]}"}
                                ).json()
            node = http.post(f"/api/projects/{project['id']}/nodes", json={
                "node_type": "text_to_image",
                "params": {"prompt": f"burst {i}", "steps": steps, "preset": "custom",
                           "width": 256, "height": 256},
            }).json()
            nodes.append((project["id"], node["id"]))
    ws_base = api.replace("http", "ws", 1)
    seen = Seen()
    stop, done = asyncio.Event(), asyncio.Event()
    prefect = asyncio.create_task(follow_prefect(seen, stop))
    opened: list[int] = []
    listeners = []
    for i in range(sockets):
        project_id, _ = nodes[i % projects]
        log: list[tuple[float, dict[str, Any]]] = []
        seen.sockets.append(log)
        ready = asyncio.Event()
        listeners.append(asyncio.create_task(listen(f"{ws_base}/ws/{project_id}", log, done,
                                                    ready, opened)))
        await ready.wait()
    await asyncio.sleep(1.0)  # the subscription is live

    started = time.perf_counter()
    async with websockets.connect(f"{ws_base}/ws/{nodes[0][0]}", max_size=None) as clicker:
        per_project = [clicks // projects + (1 if i < clicks % projects else 0)
                       for i in range(projects)]
        # One clicking socket per project, all clicks at once.
        extra = [await websockets.connect(f"{ws_base}/ws/{pid}", max_size=None)
                 for pid, _ in nodes[1:]]
        for (_pid, nid), ws, n in zip(nodes, [clicker, *extra], per_project, strict=True):
            for _ in range(n):
                await ws.send(json.dumps({"type": "client:start_generation",
                                          "payload": {"node_id": nid}}))

        def successes() -> int:
            return len({k for k in seen.events if k[1] in ("succeeded", "failed")})

        deadline = time.monotonic() + 60 + clicks * 10
        while successes() < clicks and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(3.0)  # late or duplicate messages
        for ws in extra:
            await ws.close()
    elapsed = time.perf_counter() - started
    done.set()
    stop.set()
    await asyncio.gather(*listeners, return_exceptions=True)
    prefect.cancel()

    latencies: dict[str, list[float]] = defaultdict(list)
    duplicates = 0
    disorder: list[str] = []
    for log in seen.sockets:
        counted: dict[tuple[str, str], int] = defaultdict(int)
        for t, m in log:
            key = key_of(m)
            if key is None:
                continue
            counted[key] += 1
            if key in seen.events:
                kind = key[1].split(":")[0]
                latencies[kind].append(max(0.0, t - seen.events[key]))
        duplicates += sum(1 for k, n in counted.items() if n > 1 and k[1] == "succeeded")
        disorder += check_order([m for _, m in log])

    hand_outs, reruns, statuses = 0, 0, defaultdict(int)
    from prefect.client.orchestration import get_client

    with httpx.Client(base_url=api, timeout=60) as http:
        run_ids = []
        for pid, nid in nodes:
            for take in http.get(f"/api/projects/{pid}/nodes/{nid}/takes").json():
                statuses[take["status"]] += 1
                hand_outs += take.get("hand_outs", 0)
                if take["task_run_id"]:
                    run_ids.append(take["task_run_id"])
    async with get_client() as client:
        for run_id in run_ids:
            run = await client.read_task_run(uuid.UUID(run_id))
            reruns += run.run_count > 1

    print(f"{sockets} sockets over {projects} projects, {clicks} clicks at once, tiny model "
          f"256x256 {steps} steps; {len(opened)} sockets open; burst took {elapsed:.1f} s")
    print(f"takes: {dict(statuses)}; hand-outs again: {hand_outs}; Prefect runs that ran "
          f"more than once: {reruns}")
    print("event (at a Prefect subscriber) -> server message (at each socket):")
    for kind, values in sorted(latencies.items()):
        ms = [v * 1000 for v in values]
        print(f"  {kind:<10} p50 {statistics.median(ms):8.1f} ms   p95 {pct(ms, 0.95):8.1f} ms"
              f"   max {max(ms):8.1f} ms   (n={len(ms)})")
    print(f"duplicate results at a socket: {duplicates}; order problems: {len(disorder)}")
    for line in disorder[:10]:
        print(f"  {line}")
    return 0 if not duplicates and not disorder and not reruns else 1


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--clicks", type=int, default=100)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    return asyncio.run(burst(args.api, args.sockets, args.clicks, args.projects, args.steps))


if __name__ == "__main__":
    sys.exit(main())
