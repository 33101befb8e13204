"""The scale a studio needs, on both Prefect profiles in one run: embedded (SQLite, one process)
and production (PostgreSQL, Redis, two API replicas, services apart).

Per profile, a whole studio of real processes (tests/studio_stack.py): Prefect, one warm
`standard` task worker on the tiny FLUX model (1 step at 256x256, the smallest size a node
accepts), a studio API, the `local` pool and its worker. Then:
  batch    a `batch_takes` of NODES x TAKES through the `local` pool: takes lost, duplicated,
           wall time, takes/s (takes / wall) and orchestrated takes/s (takes / (wall - render),
           render = the seconds the one pipeline was busy: every take's phases under its lock
           and its one load; wall - render is the time it waited on everything else);
  clicks   CLICKS clicks fired at once over CLICK_NODES nodes through one WebSocket: distinct
           take numbers, all completed, p50/p95 click -> task_success;
  clients  CLIENTS WebSocket clients on one project while CLIENT_TAKES takes render: each must
           receive every message of every take exactly once and in order; API RSS before/after;
and a table with the production/SQLite ratio per row.

    .venv/bin/python bench/scale.py            # 50 x 20 batch, 100 clicks, 200 clients
    .venv/bin/python bench/scale.py --quick    # 2 x 2, 6 clicks, 10 clients (the suite runs it)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studio.tiers import Quality  # noqa: E402
from tests.stack_helpers import wait_until  # noqa: E402
from tests.studio_stack import PROFILES, Studio, shared_tmp  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Sizes:
    nodes: int
    takes: int
    clicks: int
    click_nodes: int
    clients: int
    client_takes: int


FULL = Sizes(nodes=50, takes=20, clicks=100, click_nodes=10, clients=200, client_takes=20)
QUICK = Sizes(nodes=2, takes=2, clicks=6, click_nodes=3, clients=10, client_takes=2)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def new_project(http: httpx.Client, name: str, nodes: int) -> tuple[str, list[str]]:
    project = http.post("/api/projects", json={"name": name, "quality": "standard"})
    project.raise_for_status()
    project_id = project.json()["id"]
    node_ids = []
    for i in range(nodes):
        node = http.post(f"/api/projects/{project_id}/nodes", json={
            "node_type": "text_to_image",
            "shot": {"scene": "SCENE_01", "shot": f"SHOT_{i + 1:03d}", "version": "v01"},
            "params": {"prompt": f"a lighthouse {i}", "steps": 1, "seed": i, "preset": "custom",
                       "width": 256, "height": 256}})
        node.raise_for_status()
        node_ids.append(node.json()["id"])
    return project_id, node_ids


def all_takes(studio: Studio, project_id: str) -> dict[str, list[dict[str, Any]]]:
    manifest = studio.workspace / "Projects" / project_id / "project.json"
    project = json.loads(manifest.read_text())
    return {n["id"]: n.get("takes", []) for n in project["nodes"]
            if n["node_type"] == "text_to_image"}


def count_takes(studio: Studio, project_id: str, expected_per_node: int) -> dict[str, int]:
    """completed / failed / lost / duplicated (take numbers, files) over the project."""
    by_node = all_takes(studio, project_id)
    folder = studio.workspace / "Projects" / project_id
    completed = failed = duplicated = 0
    for takes in by_node.values():
        numbers = Counter(t["number"] for t in takes)
        paths = Counter(t["path"] for t in takes)
        duplicated += sum(c - 1 for c in numbers.values()) + sum(c - 1 for c in paths.values())
        for take in takes:
            if take["status"] == "completed":
                path = folder / take["path"]
                if path.is_file() and path.read_bytes()[:8] == PNG:
                    completed += 1
            elif take["status"] == "failed":
                failed += 1
    expected = expected_per_node * len(by_node)
    return {"completed": completed, "failed": failed, "duplicated": duplicated,
            "lost": max(0, expected - completed - failed)}


# --- the three scenarios --------------------------------------------------------------------

RUNNER_PHASES = ("validate", "load", "lora", "encode", "preview_fit", "denoise", "decode", "save")
# The phases run under the tier pipeline's lock (runners/flux/generation.py): one take at a time.
# Validating, waiting for the pipeline and saving the PNG run outside it, beside another take's
# render, so a sum over every phase can exceed the wall once takes overlap.
PIPELINE_PHASES = ("lora", "encode", "preview_fit", "denoise", "decode")


def runner_seconds(take: dict[str, Any]) -> float:
    """The seconds the runner itself spent on a take: the phases it times (validate, load,
    encode, denoise, decode, save). Not its wait for the pipeline's lock, nor the task's
    bookkeeping around it (the take's `total`)."""
    timings = take.get("timings") or {}
    return sum(float(timings.get(phase, 0.0)) for phase in RUNNER_PHASES)


def pipeline_seconds(takes: list[dict[str, Any]]) -> float:
    """The seconds the one pipeline was busy: every take's phases under its lock, plus its one
    load (the first take renders alone, so nothing else could render while it loaded)."""
    timings = [t.get("timings") or {} for t in takes]
    busy = sum(float(t.get(phase, 0.0)) for t in timings for phase in PIPELINE_PHASES)
    return busy + max((float(t.get("load", 0.0)) for t in timings), default=0.0)


def batch_figures(takes: list[dict[str, Any]], wall: float, completed: int) -> dict[str, float]:
    """Wall, the pipeline's busy seconds, and what orchestration leaves: the pipeline renders one
    take at a time, so wall - busy is the time it sat waiting on everything else (flow-run
    start, task runs, events, artifacts, project.json, PNG saves not overlapped, the contact
    sheet). Orchestrated takes/s = takes per second of that rest."""
    render = pipeline_seconds(takes)
    orchestration = max(wall - render, 1e-6)
    return {"wall_s": wall, "render_s": render,
            "runner_s": sum(runner_seconds(t) for t in takes),
            "orchestration_s": orchestration,
            "takes_per_s": completed / wall,
            "orchestrated_takes_per_s": completed / orchestration,
            "render_share": render / wall,
            "overhead_per_take_s": orchestration / max(1, completed)}


def bench_batch(studio: Studio, http: httpx.Client, sizes: Sizes, timeout: float) -> dict:
    project_id, _ = new_project(http, "Scale Batch", sizes.nodes)
    started = time.monotonic()
    flow_run_id = studio.run_batch(project_id, takes_per_node=sizes.takes)
    final = wait_until(lambda: (s := studio.flow_run_state(flow_run_id)) in
                       ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and s, timeout,
                       "the batch's flow run to end", every=2)
    wall = time.monotonic() - started
    counts = count_takes(studio, project_id, sizes.takes)
    takes = list(_by_id(studio, project_id).values())
    return {**counts, "state": final, **batch_figures(takes, wall, counts["completed"])}


async def _collect(url: str, stop: asyncio.Event, out: list[dict], ready: asyncio.Event,
                   n_ready: list[int], total: int) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, open_timeout=60, max_size=None, ping_timeout=None) as ws:
        n_ready[0] += 1
        if n_ready[0] == total:
            ready.set()
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
            except TimeoutError:
                continue
            out.append({**json.loads(raw), "_at": time.monotonic()})


def _ended_take(message: dict) -> str | None:
    """The take an end message (success or failure) is about; None for any other message."""
    if message["type"] == "server:task_success":
        return str(message["payload"]["result"]["take_id"])
    if message["type"] == "server:task_failed":
        return str(message["payload"].get("take_id"))
    return None


def _ended_takes(messages: list[dict]) -> set[str]:
    return {t for t in map(_ended_take, messages) if t is not None}


def _take_messages(messages: list[dict]) -> list[str]:
    """The take-related messages, as comparable strings, in arrival order."""
    kinds = ("server:task_progress", "server:task_success", "server:task_failed")
    return [json.dumps({k: v for k, v in m.items() if k != "_at"}, sort_keys=True)
            for m in messages if m["type"] in kinds]


async def _clicks_and_clients(ws_url: str, node_ids: list[str], clicks: int, clients: int,
                              timeout: float) -> tuple[float, list[list[dict]]]:
    """`clients` listening sockets plus one that fires `clicks` clicks round-robin over the
    nodes at once; returns (the time the clicks were fired, each socket's messages)."""
    from websockets.asyncio.client import connect

    stop, ready = asyncio.Event(), asyncio.Event()
    n_ready = [0]
    outs: list[list[dict]] = [[] for _ in range(clients)]
    listeners = [asyncio.create_task(_collect(ws_url, stop, outs[i], ready, n_ready, clients))
                 for i in range(clients)]
    await asyncio.wait_for(ready.wait(), timeout=120)
    await asyncio.sleep(1.0)  # every snapshot delivered
    async with connect(ws_url, open_timeout=60, max_size=None) as clicker:
        fired = time.monotonic()
        for i in range(clicks):
            await clicker.send(json.dumps({"type": "client:start_generation",
                                           "payload": {"node_id": node_ids[i % len(node_ids)]}}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Distinct takes ended, not end messages: a take announced twice (failed, then
            # success) must not pass for two takes.
            done = min(len(_ended_takes(out)) for out in outs)
            if done >= clicks:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # late duplicates would show up now
    stop.set()
    await asyncio.gather(*listeners, return_exceptions=True)
    return fired, outs


def _by_id(studio: Studio, project_id: str) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for ts in all_takes(studio, project_id).values() for t in ts}


def settle(studio: Studio, project_id: str, timeout: float = 120) -> float:
    """Waits until no take of the project is queued or generating (each end message the
    clients got must match project.json by then); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        takes = _by_id(studio, project_id).values()
        if all(t["status"] not in ("queued", "generating") for t in takes):
            break
        time.sleep(0.5)
    return time.monotonic() - started


# The end message a take's final status is announced with.
_END_KIND = {"completed": "success", "failed": "failed", "cancelled": "cancelled"}


def end_contradictions(outs: list[list[dict]], at_end: dict[str, dict[str, Any]],
                       final: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Takes whose end messages disagree with project.json: more than one end message (or
    two kinds), or a kind that is not the take's status when the scenario ended or later."""
    found = []
    for take_id in sorted({t for out in outs for t in _ended_takes(out)} | set(final)):
        kinds = Counter(m["type"].removeprefix("server:task_") for out in outs[:1] for m in out
                        if _ended_take(m) == take_id)
        now, later = at_end.get(take_id, {}), final.get(take_id, {})
        if len(kinds) != 1 or sum(kinds.values()) != 1 or \
                {_END_KIND.get(now.get("status", ""), now.get("status")),
                 _END_KIND.get(later.get("status", ""), later.get("status"))} != set(kinds):
            found.append({"take": later.get("number"), "messages": dict(kinds),
                          "status_when_ended": now.get("status"),
                          "status_later": later.get("status"),
                          **{k: later.get(k) for k in ("attempts", "hand_outs", "error")}})
    return found


def _check_ends(studio: Studio, project_id: str, outs: list[list[dict]]) -> dict[str, Any]:
    """The clients' end messages against project.json, as the scenario ended and once settled."""
    at_end = _by_id(studio, project_id)
    settled = settle(studio, project_id)
    contradictions = end_contradictions(outs, at_end, _by_id(studio, project_id))
    return {"end_contradictions": len(contradictions), "contradicted": contradictions,
            "settle_s": settled}


def bench_clicks(studio: Studio, http: httpx.Client, api_url: str, sizes: Sizes,
                 timeout: float) -> dict:
    project_id, node_ids = new_project(http, "Scale Clicks", sizes.click_nodes)
    ws_url = api_url.replace("http://", "ws://") + f"/ws/{project_id}"
    fired, [out] = asyncio.run(_clicks_and_clients(ws_url, node_ids, sizes.clicks, 1, timeout))
    ends = _check_ends(studio, project_id, [out])
    successes = [m for m in out if m["type"] == "server:task_success"]
    latencies = [m["_at"] - fired for m in successes]
    per_node = sizes.clicks // sizes.click_nodes
    counts = count_takes(studio, project_id, per_node)
    numbers_ok = all(sorted(t["number"] for t in ts) == list(range(1, len(ts) + 1))
                     for ts in all_takes(studio, project_id).values())
    return {**counts, "distinct_numbers": numbers_ok,
            "successes": len({m["payload"]["result"]["take_id"] for m in successes}),
            "success_messages": len(successes),
            **ends,
            "p50_s": pct(latencies, 0.5), "p95_s": pct(latencies, 0.95)}


def bench_clients(studio: Studio, http: httpx.Client, api_url: str, sizes: Sizes,
                  timeout: float) -> dict:
    project_id, node_ids = new_project(http, "Scale Clients", 2)
    ws_url = api_url.replace("http://", "ws://") + f"/ws/{project_id}"
    api_pid = studio.procs["api-1"].popen.pid
    before = rss_mb(api_pid)
    _, outs = asyncio.run(_clicks_and_clients(ws_url, node_ids, sizes.client_takes,
                                              sizes.clients, timeout))
    after = rss_mb(api_pid)
    ends = _check_ends(studio, project_id, outs)
    sequences = [_take_messages(out) for out in outs]
    reference = Counter(tuple(s) for s in sequences).most_common(1)[0][0]
    exact = 0
    for seq in sequences:
        successes = [json.loads(m)["payload"]["result"]["take_id"] for m in seq
                     if json.loads(m)["type"] == "server:task_success"]
        if (tuple(seq) == reference and len(successes) == sizes.client_takes
                and len(set(successes)) == sizes.client_takes and len(set(seq)) == len(seq)):
            exact += 1
    counts = count_takes(studio, project_id, sizes.client_takes // 2)
    return {**counts, "clients_exact": exact, "clients": sizes.clients,
            **ends,
            "messages_per_client": len(reference), "rss_before_mb": before,
            "rss_after_mb": after}


async def _event_delays(emit_url: str, subscribe_url: str, n: int) -> list[float]:
    """Seconds from emitting an event to a subscriber receiving it (production: emitted to the
    UI replica, received from the task replica, through Redis)."""
    import uuid

    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient, PrefectEventSubscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    name = f"studio.bench.{uuid.uuid4().hex[:8]}"
    delays = []
    subscriber = PrefectEventSubscriber(api_url=subscribe_url,
                                        filter=EventFilter(event=EventNameFilter(name=[name])))
    async with subscriber, PrefectEventsClient(api_url=emit_url) as client:
        for i in range(n):
            sent = time.monotonic()
            await client.emit(Event(event=name, resource={"prefect.resource.id": f"bench.{i}"}))
            await asyncio.wait_for(subscriber.__anext__(), timeout=60)
            delays.append(time.monotonic() - sent)
    return delays


def bench_events(studio: Studio, n: int) -> dict:
    emit_url = getattr(studio.prefect, "ui_api_url", studio.api_url)
    delays = asyncio.run(_event_delays(emit_url, studio.api_url, n))
    return {"p50_s": pct(delays, 0.5), "p95_s": pct(delays, 0.95), "max_s": max(delays)}


# --- one profile ----------------------------------------------------------------------------

SCENARIOS = ("clicks", "clients", "batch")


def run_profile(profile: str, sizes: Sizes, models_root: Path, timeout: float,
                keep: bool, scenarios: tuple[str, ...] = SCENARIOS,
                env: dict[str, str] | None = None) -> dict[str, Any]:
    studio = Studio(shared_tmp(f"bench-scale-{profile}-"), models_root, profile, **(env or {}))
    print(f"[{profile}] starting Prefect in {studio.root} ...", flush=True)
    try:
        startup = studio.start_prefect()
        studio.start_worker(Quality.standard)
        api_url = studio.start_api("api-1")
        studio.deploy_local_pool()
        print(f"[{profile}] up (Prefect in {startup:.0f} s)", flush=True)
        result: dict[str, Any] = {"startup_s": startup}
        result["events"] = bench_events(studio, 20)
        print(f"[{profile}] event delay: {result['events']}", flush=True)
        with httpx.Client(base_url=api_url, timeout=60) as http:
            if "clicks" in scenarios:
                result["clicks"] = bench_clicks(studio, http, api_url, sizes, timeout)
                print(f"[{profile}] clicks: {result['clicks']}", flush=True)
            if "clients" in scenarios:
                result["clients"] = bench_clients(studio, http, api_url, sizes, timeout)
                print(f"[{profile}] clients: {result['clients']}", flush=True)
            if "batch" in scenarios:
                result["batch"] = bench_batch(studio, http, sizes, timeout)
                print(f"[{profile}] batch: {result['batch']}", flush=True)
        return result
    finally:
        studio.stop()
        if not keep:
            shutil.rmtree(studio.root, ignore_errors=True)


def table(results: dict[str, dict[str, Any]], sizes: Sizes) -> str:
    n_batch = sizes.nodes * sizes.takes
    rows = [
        (f"batch {sizes.nodes}x{sizes.takes}: takes lost", "batch", "lost", None),
        (f"batch {sizes.nodes}x{sizes.takes}: takes duplicated", "batch", "duplicated", None),
        (f"batch {sizes.nodes}x{sizes.takes}: takes failed", "batch", "failed", None),
        (f"batch {sizes.nodes}x{sizes.takes}: wall (s)", "batch", "wall_s", False),
        (f"batch {n_batch} takes: takes/s (takes / wall)", "batch", "takes_per_s", True),
        (f"batch {n_batch} takes: orchestrated takes/s (takes / (wall - render))", "batch",
         "orchestrated_takes_per_s", True),
        (f"batch {n_batch} takes: the pipeline busy, in-lock phases + its load (s)", "batch",
         "render_s", False),
        (f"batch {n_batch} takes: the runner's own seconds, every phase, sum (s)", "batch",
         "runner_s", False),
        (f"batch {n_batch} takes: wall - render, per take (s)", "batch", "overhead_per_take_s",
         False),
        (f"{sizes.clicks} clicks: completed", "clicks", "completed", True),
        (f"{sizes.clicks} clicks: lost", "clicks", "lost", None),
        (f"{sizes.clicks} clicks: duplicated", "clicks", "duplicated", None),
        (f"{sizes.clicks} clicks: p50 click->success (s)", "clicks", "p50_s", False),
        (f"{sizes.clicks} clicks: p95 click->success (s)", "clicks", "p95_s", False),
        (f"{sizes.clients} clients: every event exactly once, in order", "clients",
         "clients_exact", True),
        (f"{sizes.clients} clients: takes lost", "clients", "lost", None),
        (f"{sizes.clicks} clicks: end messages contradicting project.json", "clicks",
         "end_contradictions", None),
        (f"{sizes.clients} clients: end messages contradicting project.json", "clients",
         "end_contradictions", None),
        (f"{sizes.clients} clients: API RSS before (MB)", "clients", "rss_before_mb", False),
        (f"{sizes.clients} clients: API RSS after (MB)", "clients", "rss_after_mb", False),
        ("event emit -> subscriber p50 (s)", "events", "p50_s", False),
        ("event emit -> subscriber max (s)", "events", "max_s", False),
        ("Prefect start (s)", None, "startup_s", False),
    ]
    profiles = [p for p in PROFILES if p in results]
    head = f"| row | {' | '.join(profiles)} | production/SQLite |"
    lines = [head, "|" + " --- |" * (len(profiles) + 2)]
    for label, group, key, _ in rows:
        values = []
        for p in profiles:
            source = results[p].get(group, {}) if group else results[p]
            values.append(source.get(key))
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in values]
        ratio = ""
        if len(values) == 2 and all(isinstance(v, (int, float)) for v in values) and values[0]:
            ratio = f"{values[1] / values[0]:.2f}"
        lines.append(f"| {label} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes (the test suite)")
    parser.add_argument("--profiles", nargs="+", choices=PROFILES, default=list(PROFILES))
    parser.add_argument("--nodes", type=int, help="batch nodes (default 50; quick 2)")
    parser.add_argument("--takes", type=int, help="batch takes per node (default 20; quick 2)")
    parser.add_argument("--clicks", type=int, help="clicks fired at once (default 100; quick 6)")
    parser.add_argument("--clients", type=int, help="WebSocket clients (default 200; quick 10)")
    parser.add_argument("--client-takes", type=int,
                        help="takes rendered while the clients listen (default 20; quick 2)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                        help="which rows to run (default all)")
    parser.add_argument("--batch-concurrency", type=int,
                        help="takes in flight in the batch (STUDIO_BATCH_CONCURRENCY; "
                             "default flows/batch.py's)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="per scenario, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep each profile's folder")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    chosen = {"nodes": args.nodes, "takes": args.takes, "clicks": args.clicks,
              "clients": args.clients, "client_takes": args.client_takes}
    sizes = Sizes(**{**sizes.__dict__, **{k: v for k, v in chosen.items() if v}})

    env = ({"STUDIO_BATCH_CONCURRENCY": str(args.batch_concurrency)}
           if args.batch_concurrency else {})
    models = Path(tempfile.mkdtemp(prefix="bench-scale-models-"))
    from scripts.make_tiny_model import write_tiny_workspace

    models_root = write_tiny_workspace(models) / "Library" / "AI_Models"
    results: dict[str, dict[str, Any]] = {}
    try:
        for profile in args.profiles:
            results[profile] = run_profile(profile, sizes, models_root, args.timeout, args.keep,
                                           tuple(args.scenarios), env)
    finally:
        shutil.rmtree(models, ignore_errors=True)
    print()
    print(table(results, sizes))
    if args.json:
        args.json.write_text(json.dumps({"sizes": sizes.__dict__, "results": results},
                                        indent=2, default=str))
    bad = [p for p, r in results.items()
           if any(r[g]["lost"] or r[g]["duplicated"] or r[g].get("end_contradictions")
                  for g in SCENARIOS if g in r)]
    if bad:
        print(f"takes lost or duplicated, or end messages contradicting project.json, on: "
              f"{', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
