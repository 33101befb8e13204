"""The dispatcher's click, unit by unit (no servers): one locked edit of project.json checks the
node, picks the tier and reserves the take; a click that cannot render reserves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.dispatcher import Refused, reserve_click
from api.tiers import Tiers, TierView
from studio.manifest import TakeStatus
from studio.tiers import FallbackPolicy, Quality
from studio.workspace import Workspace
from tests.factories import CountingStore, odyssey, stored

PROJECT, NODE = "Project_Odyssey", "shot15"


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return stored(tmp_path, odyssey(), CountingStore(Workspace(tmp_path)))  # type: ignore[return-value]


def views() -> dict:
    return Tiers(expected=set()).views()


def test_a_click_reads_project_json_once_to_reserve_its_take(store: CountingStore) -> None:
    reserved = reserve_click(store, PROJECT, NODE, views())

    assert store.reads == 1
    take = store.load(PROJECT).get_node(NODE).get_take(reserved.job.take_id)
    assert (take.status, take.number, take.path) == (
        TakeStatus.queued, 1, "03_Renders/SCENE_02/SHOT_015/SHOT-015_v01_take01.png")
    assert reserved.project.get_node(NODE).get_take(take.id) == take  # the state sent as queued


def test_the_job_carries_the_shot_and_take_number_it_is_named_by(store: CountingStore) -> None:
    job = reserve_click(store, PROJECT, NODE, views()).job

    assert (str(job.shot), job.take_number) == ("SCENE_02/SHOT_015/v01", 1)
    assert job.label() == "Project_Odyssey · SHOT-015 · v01 · take01"


@pytest.mark.parametrize(("change", "reason"), [
    (lambda p: p.get_node("shot15").params.update(negative_prompt="blurry", cfg_scale=1.0),
     "a negative prompt needs CFG scale > 1"),
    (lambda p: (p.get_node("shot15").params.update(prompt=""),
                setattr(p, "edges", []), setattr(p, "nodes", p.nodes[4:])),
     "the prompt is empty"),
], ids=["negative prompt without true CFG", "nothing to render"])
def test_a_click_the_runner_would_refuse_is_refused_and_reserves_no_take(
        tmp_path: Path, change, reason: str) -> None:
    project = odyssey()
    change(project)
    store = stored(tmp_path, project, CountingStore(Workspace(tmp_path)))
    before = store.manifest_path(PROJECT).read_bytes()

    with pytest.raises(Refused, match=reason):
        reserve_click(store, PROJECT, NODE, views())

    assert store.manifest_path(PROJECT).read_bytes() == before
    assert not (tmp_path / "Projects" / PROJECT / "03_Renders").exists() or not any(
        (tmp_path / "Projects" / PROJECT / "03_Renders").rglob("*.png"))


def test_a_click_on_a_value_node_is_refused_naming_its_type(store: CountingStore) -> None:
    with pytest.raises(Refused, match="node prompt is of type string; only text_to_image"):
        reserve_click(store, PROJECT, "prompt", views())


def test_a_click_in_a_project_that_does_not_exist_is_refused(store: CountingStore) -> None:
    with pytest.raises(Refused, match="project 'Nope' does not exist"):
        reserve_click(store, "Nope", NODE, views())


def test_with_the_tier_offline_a_fallback_policy_picks_a_lower_tier_and_says_why(
        tmp_path: Path) -> None:
    project = odyssey()
    project.quality = Quality.high
    project.fallback = FallbackPolicy.when_offline
    project.fallback_grace_seconds = 0
    views = {Quality.high: TierView(online=False, offline_for=30.0, busy=False),
             Quality.standard: TierView(online=True, offline_for=0.0, busy=False),
             Quality.low: TierView(online=True, offline_for=0.0, busy=False)}
    store = stored(tmp_path, project, CountingStore(Workspace(tmp_path)))

    reserved = reserve_click(store, PROJECT, NODE, views)

    assert (reserved.job.quality_requested, reserved.job.quality_used) == (
        Quality.high, Quality.standard)
    assert reserved.fallback == "no task worker has been online for quality high for 30 s"
    take = store.load(PROJECT).get_node(NODE).takes[0]
    assert (take.quality_requested, take.quality_used) == (Quality.high, Quality.standard)
