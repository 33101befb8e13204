"""Issue 12, without servers: what a TD types into the batch form, seeds, sweeps, the contact
sheet, signed file links, the low tier's effective settings and which failures are retried."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from flows.batch import PlannedTake, TakeOutcome, _grid_labels, _render_all, plan_takes
from runners.strategies import RunnerFailed
from studio.batch import (
    BatchError,
    Sweep,
    find_node,
    find_project,
    scene_name,
    select_nodes,
    shot_name,
    take_seeds,
)
from studio.jobs import GenerationParams, TakeJob
from studio.manifest import Project, Shot, TakeStatus
from studio.store import ProjectNotFound, ProjectStore
from studio.tiers import Quality
from studio.workspace import Workspace
from tasks import artifacts, contact_sheet
from tasks.retry import is_infrastructure_failure
from tests.stack_helpers import add_text_to_image


@pytest.fixture
def store(tmp_path: Path) -> ProjectStore:
    return ProjectStore(Workspace(tmp_path))


@pytest.mark.parametrize("typed", ["SHOT-015", "SHOT_015", "shot 15", "Shot-015"])
def test_shots_are_accepted_as_people_write_them(typed: str) -> None:
    assert shot_name(typed) == "SHOT_015"


def test_a_shot_that_is_no_shot_says_how_to_write_it() -> None:
    with pytest.raises(BatchError, match="write it as SHOT-015"):
        shot_name("fifteen")
    assert scene_name("scene-1") == "SCENE_01"


def test_a_project_is_found_by_its_display_name_or_its_id(store: ProjectStore) -> None:
    project = store.create("Project Odyssey")
    assert find_project(store, "Project Odyssey").id == project.id
    assert find_project(store, "project odyssey").id == project.id
    assert find_project(store, project.id).id == project.id


def test_an_unknown_project_lists_the_known_ones(store: ProjectStore) -> None:
    store.create("Project Odyssey")
    store.create("Blue Hour")
    with pytest.raises(ProjectNotFound) as caught:
        find_project(store, "Odyssey")
    assert "'Project Odyssey' (id Project_Odyssey)" in str(caught.value)
    assert "'Blue Hour' (id Blue_Hour)" in str(caught.value)


def test_nodes_are_selected_by_scene_and_shot_and_a_miss_lists_the_shots(
        store: ProjectStore) -> None:
    project = store.create("P")
    a = add_text_to_image(store, project.id, shot="SHOT_010")
    b = add_text_to_image(store, project.id, shot="SHOT_020", x=300)
    add_text_to_image(store, project.id, shot="SHOT_030", scene="SCENE_02", x=600)
    loaded = store.load(project.id)
    assert [n.id for n in select_nodes(loaded, "SCENE-01")] == [a, b]
    assert [n.id for n in select_nodes(loaded, "", ["SHOT-020"])] == [b]
    assert find_node(loaded, "SHOT-010").id == a and find_node(loaded, a).id == a
    with pytest.raises(BatchError, match="SCENE_01/SHOT-010, SCENE_01/SHOT-020"):
        select_nodes(loaded, "SCENE_01", ["SHOT-099"])


def test_random_seeds_never_repeat_within_a_batch_and_listed_ones_run_in_turn() -> None:
    seeds = take_seeds(500, [])
    assert len(set(seeds)) == 500
    assert take_seeds(5, [1, 2]) == [1, 2, 1, 2, 1]
    with pytest.raises(BatchError):
        take_seeds(1, [-1])


def test_a_sweep_is_every_combination_with_the_first_axis_as_columns(
        store: ProjectStore) -> None:
    sweep = Sweep(shot="SHOT-010", seeds=[1, 2, 3], cfg_scales=[2, 3.5, 5])
    cells = sweep.cells()
    assert len(cells) == 9
    assert [c["seed"] for c in cells[:3]] == [1, 2, 3] and {c["cfg_scale"] for c in cells[:3]} \
        == {2.0}
    assert _grid_labels(sweep) == (3, ["seed 1", "seed 2", "seed 3"],
                                   ["cfg 2", "cfg 3.5", "cfg 5"])
    project = store.create("P")
    node_id = add_text_to_image(store, project.id, shot="SHOT_010")
    node = store.load(project.id).get_node(node_id)
    planned = plan_takes([node], 1, [], sweep, node)
    assert [(p.seed, p.overrides) for p in planned[:2]] == [(1, {"cfg_scale": 2.0}),
                                                           (2, {"cfg_scale": 2.0})]


def test_a_sweep_without_a_seed_axis_shares_one_seed(store: ProjectStore) -> None:
    project = store.create("P")
    node_id = add_text_to_image(store, project.id)
    node = store.load(project.id).get_node(node_id)
    planned = plan_takes([node], 1, [], Sweep(shot="SHOT-010", steps=[4, 8]), node)
    assert len({p.seed for p in planned}) == 1
    assert [p.overrides for p in planned] == [{"steps": 4}, {"steps": 8}]
    with pytest.raises(BatchError, match="at least one list"):
        Sweep(shot="SHOT-010").cells()


class CountingStore(ProjectStore):
    """A store that counts its edits (each one rewrites the whole project.json)."""

    edits = 0

    @contextmanager
    def edit(self, project_id: str) -> Iterator[Project]:
        with super().edit(project_id) as project:
            yield project
        self.edits += 1


@pytest.mark.parametrize("slots", [1, 3])
def test_a_batch_keeps_at_most_its_concurrency_in_flight_and_reserves_takes_in_plan_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slots: int) -> None:
    monkeypatch.setenv("STUDIO_BATCH_CONCURRENCY", str(slots))
    monkeypatch.delenv("STUDIO_RUNNER_MODE", raising=False)
    store = CountingStore(Workspace(tmp_path))
    project = store.create("P")
    first = add_text_to_image(store, project.id, shot="SHOT_010")
    second = add_text_to_image(store, project.id, shot="SHOT_020", x=300)
    loaded = store.load(project.id)
    nodes = [loaded.get_node(first), loaded.get_node(second)]
    planned = plan_takes(nodes, 4, [11, 12, 13, 14], Sweep(), None)
    lock = threading.Lock()
    in_flight: list[int] = []
    ahead: list[int] = []
    started: set[str] = set()
    finished: set[str] = set()

    def render(take: PlannedTake, job: TakeJob, task: object) -> TakeOutcome:
        # Held until the batch has filled its slots (or started every take), as a slow render
        # would be; every started take that has not ended is one in flight.
        with lock:
            started.add(job.take_id)
        deadline = time.monotonic() + 20
        while True:
            with lock:
                now_in_flight = len(started - finished)
                reserved = {t.id for n in store.load(project.id).nodes for t in n.takes}
                waiting = len(reserved - started)
            if now_in_flight >= slots or len(started) == len(planned) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        in_flight.append(now_in_flight)
        ahead.append(waiting)
        with lock:
            finished.add(job.take_id)
        return TakeOutcome(take, "done", f"take{job.take_number:02d}", job.output_path)

    done: list[int] = []
    edits_before = store.edits
    outcomes = _render_all(store, project.id, planned, Quality.standard,
                           lambda index, outcome, seconds: done.append(index), render)

    assert max(in_flight) == slots  # overlapped up to the limit, never beyond
    assert max(ahead) <= slots  # reserved at most a slot's worth ahead of the renders
    assert [o.planned for o in outcomes] == planned and sorted(done) == list(range(8))
    for node_id in (first, second):  # numbers follow the plan: take01 has the first seed
        takes = store.load(project.id).get_node(node_id).takes
        assert [(t.number, t.params["seed"]) for t in takes] == [(1, 11), (2, 12), (3, 13),
                                                                 (4, 14)]
    # The first take alone, then a slot's worth per rewrite of project.json: 1 + 3 + 3 + 1.
    assert store.edits - edits_before == (8 if slots == 1 else 4)


def test_a_node_that_cannot_render_is_skipped_alone_and_the_takes_around_it_are_reserved(
        store: ProjectStore) -> None:
    from flows.batch import _prepare_group

    project = store.create("P")
    good = add_text_to_image(store, project.id, shot="SHOT_010")
    bad = add_text_to_image(store, project.id, shot="SHOT_020", prompt="", x=300)
    loaded = store.load(project.id)
    planned = plan_takes([loaded.get_node(good), loaded.get_node(bad), loaded.get_node(good)],
                         1, [3], Sweep(), None)

    jobs = _prepare_group(store, project.id, planned, Quality.standard)

    assert [type(j).__name__ for j in jobs] == ["TakeJob", "TakeOutcome", "TakeJob"]
    assert isinstance(jobs[1], TakeOutcome) and jobs[1].status == "skipped"
    assert "prompt is empty" in jobs[1].reason
    after = store.load(project.id)
    assert [t.number for t in after.get_node(good).takes] == [1, 2]
    assert after.get_node(bad).takes == []


def _unavailable() -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/increment-with-lease")
    return httpx.HTTPStatusError("503 Service Unavailable", request=request,
                                 response=httpx.Response(503, request=request))


def test_a_take_whose_task_run_start_meets_a_locked_database_is_started_again(
        store: ProjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.states import Completed

    from flows.batch import _prepare, _render_one

    monkeypatch.setattr("tasks.prefect_retry._pause", lambda attempt: 0.01)
    project = store.create("P")
    node_id = add_text_to_image(store, project.id)
    node = store.load(project.id).get_node(node_id)
    planned = plan_takes([node], 1, [5], Sweep(), None)[0]
    job = _prepare(store, project.id, planned, Quality.standard)
    assert isinstance(job, TakeJob)
    calls: list[str] = []

    def task(job: TakeJob, return_state: bool) -> object:
        calls.append(job.take_id)
        if len(calls) == 1:  # SQLite locked under the batch's burst, after Prefect's retries
            raise ConcurrencySlotAcquisitionError("Unable to acquire concurrency slots") \
                from _unavailable()
        return Completed(data={"output_path": job.output_path, "take_id": job.take_id})

    outcome = _render_one(planned, job, task, store)  # type: ignore[arg-type]

    assert outcome.status == "done" and calls == [job.take_id, job.take_id]


def test_a_take_prefect_gives_up_on_fails_alone_and_says_why(
        store: ProjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.batch import _prepare, _render_one

    monkeypatch.setenv("STUDIO_PREFECT_RETRY_SECONDS", "0")
    project = store.create("P")
    node_id = add_text_to_image(store, project.id)
    planned = plan_takes([store.load(project.id).get_node(node_id)], 1, [5], Sweep(), None)[0]
    job = _prepare(store, project.id, planned, Quality.standard)
    assert isinstance(job, TakeJob)

    def task(job: TakeJob, return_state: bool) -> object:
        raise _unavailable()

    outcome = _render_one(planned, job, task, store)  # type: ignore[arg-type]

    assert outcome.status == "failed" and "503 Service Unavailable" in outcome.reason
    [take] = store.load(project.id).get_node(node_id).takes
    assert take.status == TakeStatus.failed and "503" in (take.error or "")


def test_a_batch_concurrency_that_is_no_number_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.batch import batch_concurrency

    monkeypatch.setenv("STUDIO_BATCH_CONCURRENCY", "four")
    with pytest.raises(ValueError, match="STUDIO_BATCH_CONCURRENCY must be a whole number"):
        batch_concurrency()
    monkeypatch.setenv("STUDIO_BATCH_CONCURRENCY", "0")
    assert batch_concurrency() == 1


def test_a_batch_overlaps_takes_only_where_the_pipeline_lock_keeps_renders_one_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.batch import batch_concurrency

    monkeypatch.setenv("STUDIO_BATCH_CONCURRENCY", "4")
    monkeypatch.delenv("STUDIO_RUNNER_MODE", raising=False)
    assert batch_concurrency() == 4  # in process: one pipeline, one lock
    for mode in ("subprocess", "docker"):  # a runner per take: nothing would serialize them
        monkeypatch.setenv("STUDIO_RUNNER_MODE", mode)
        assert batch_concurrency() == 1


def test_the_contact_sheet_is_a_grid_with_failed_cells_marked(tmp_path: Path) -> None:
    take = tmp_path / "take.png"
    Image.new("RGB", (256, 256), (250, 0, 0)).save(take)
    cells = [contact_sheet.Cell(f"SHOT-010 · take0{i} · seed {i}", take) for i in range(1, 4)]
    cells.append(contact_sheet.Cell("SHOT-020 · take01 · seed 9 · FAILED", None))
    out = contact_sheet.render(cells, tmp_path / "sheets" / "sheet.png")
    with Image.open(out) as im:
        assert im.size == (2 * 8 + 2 * 192 + 6, 2 * 8 + 2 * (192 + 34) + 6)  # 2 x 2
        assert im.getpixel((8 + 96, 8 + 96)) == (250, 0, 0)  # a thumbnail of the take
        assert im.getpixel((8 + 192 + 6 + 10, 8 + 226 + 6 + 10)) != (250, 0, 0)  # failed cell
    assert not list((tmp_path / "sheets").glob(".*"))  # no temporary file left behind


def test_a_signed_link_opens_one_file_until_it_expires() -> None:
    token = artifacts.sign("secret", "P", "03_Renders/a.png", ttl_s=60)
    assert artifacts.signature_ok("secret", "P", "03_Renders/a.png", token)
    assert not artifacts.signature_ok("secret", "P", "03_Renders/b.png", token)
    assert not artifacts.signature_ok("secret", "Q", "03_Renders/a.png", token)
    assert not artifacts.signature_ok("other", "P", "03_Renders/a.png", token)
    assert not artifacts.signature_ok("secret", "P", "03_Renders/a.png", token,
                                      now=time.time() + 120)
    assert token.split(".")[1] != "secret"


def test_links_start_at_the_public_url_and_carry_a_signature_not_the_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_PUBLIC_URL", "https://studio.example.com/")
    monkeypatch.delenv("STUDIO_API_TOKEN", raising=False)
    assert artifacts.file_url("P", "03_Renders/S 1/a.png") == \
        "https://studio.example.com/api/projects/P/files/03_Renders/S%201/a.png"
    monkeypatch.setenv("STUDIO_API_TOKEN", "top-secret")
    url = artifacts.file_url("P", "03_Renders/a.png")
    assert "?sig=" in url and "top-secret" not in url


def _job(quality: Quality, steps: int = 28, cfg: float = 3.5, negative: str = "") -> TakeJob:
    return TakeJob(project_id="Project_Odyssey", node_id="n1", take_id="t1", take_number=1,
                   shot=Shot(scene="SCENE_01", shot="SHOT_015", version="v01"),
                   output_path="03_Renders/SCENE_01/SHOT_015/SHOT-015_v01_take01.png",
                   quality_requested=quality, quality_used=quality, pipeline_id="x",
                   params=GenerationParams(prompt="p", negative_prompt=negative, seed=1,
                                           steps=steps, cfg_scale=cfg, width=256, height=256))


def test_the_low_tier_reports_the_steps_and_cfg_it_really_applies() -> None:
    assert artifacts.describe_effective(_job(Quality.low)) == (
        "4 (asked 28; low tier maximum)",
        "ignored (asked 3.5; no guidance input on the low tier)")
    assert artifacts.effective_settings(_job(Quality.low, negative="blur"))["cfg_scale"] == 3.5
    assert artifacts.describe_effective(_job(Quality.standard)) == ("28", "3.5")
    assert artifacts.take_key(_job(Quality.low)) == "take-project-odyssey-shot-015"


@pytest.mark.parametrize(("exc", "retried"), [
    (RunnerFailed("killed", -9), True),
    (RunnerFailed("runner error", 1), True),
    (ConnectionError("lost"), True),
    (RunnerFailed("bad input", 2), False),
    (RunnerFailed("LoRA missing", 3), False),
    (RunnerFailed("out of GPU memory", 4), False),
    (ValueError("bad"), False),
])
def test_only_infrastructure_failures_are_retried(exc: BaseException, retried: bool) -> None:
    assert is_infrastructure_failure(exc) is retried


def test_log_rotation_keeps_writers_appending_to_the_same_file(tmp_path: Path) -> None:
    from scripts.rotate_logs import rotate_logs

    log = tmp_path / "api.log"
    with log.open("ab") as writer:  # as the stack's children hold their logs
        writer.write(b"x" * 2000)
        writer.flush()
        assert rotate_logs(tmp_path, max_bytes=1000, keep=2) == [log]
        writer.write(b"after\n")
        writer.flush()
    assert log.read_bytes() == b"after\n"
    assert (tmp_path / "api.log.1").read_bytes() == b"x" * 2000
    rotate_logs(tmp_path, max_bytes=1, keep=2)
    assert (tmp_path / "api.log.2").read_bytes() == b"x" * 2000
    assert rotate_logs(tmp_path, max_bytes=10_000, keep=2) == []


def _app(tmp_path: Path, token: str | None):  # noqa: ANN202 - a TestClient
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings

    # No lifespan (no `with`): the file route and /metrics need neither relay nor reconciler.
    return TestClient(create_app(Settings(workspace=Workspace(tmp_path), token=token)),
                      base_url="http://127.0.0.1")  # an allowed Host (api/security.py)


def test_the_file_route_accepts_a_link_signed_for_that_file_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ProjectStore(Workspace(tmp_path))
    project = store.create("P")
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(store.project_dir(project.id) / "03_Renders" / name)
    monkeypatch.setenv("STUDIO_API_TOKEN", "secret")
    monkeypatch.setenv("STUDIO_PUBLIC_URL", "http://127.0.0.1")
    client = _app(tmp_path, "secret")
    url = artifacts.file_url(project.id, "03_Renders/a.png")
    assert client.get(url).status_code == 200
    sig = url.split("?sig=")[1]
    assert client.get(f"/api/projects/{project.id}/files/03_Renders/b.png",
                      params={"sig": sig}).status_code == 401
    assert client.get(f"/api/projects/{project.id}", params={"sig": sig}).status_code == 401
    assert client.get(f"/api/projects/{project.id}",
                      headers={"Authorization": "Bearer secret"}).status_code == 200


def test_metrics_are_prometheus_text_with_every_tier_even_while_prefect_is_down(
        tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    response = _app(tmp_path, None).get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {"studio_takes", "studio_queue_depth", "studio_render_seconds",
            "studio_task_workers_online", "studio_prefect_up"} <= set(families)
    tiers = {s.labels["tier"] for s in families["studio_queue_depth"].samples}
    assert tiers == {"low", "standard", "high"}
