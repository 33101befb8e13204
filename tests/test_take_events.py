"""A take's events: one model per kind, put on the wire and read back the same."""

from __future__ import annotations

import pytest

from studio.take_events import (
    PREFIX,
    TakeCancelled,
    TakeEventBase,
    TakeFailed,
    TakeProgress,
    TakeQueued,
    TakeStarted,
    TakeSucceeded,
    parse,
)
from studio.tiers import Quality

IDS = {"project_id": "Project_Odyssey", "node_id": "shot15", "take_id": "t-1",
       "take_number": 4, "tier": Quality.standard, "task_run_id": "run-9"}

EVERY_KIND: list[TakeEventBase] = [
    TakeQueued(**IDS, why="dispatch"),
    TakeStarted(**IDS, attempt=2),
    TakeProgress(**IDS, progress=50, step="step 2/4", preview_path="03_Renders/x.preview.png"),
    TakeSucceeded(**IDS, output_path="03_Renders/SCENE_02/SHOT_015/SHOT-015_v01_take04.png"),
    TakeFailed(**IDS, error="Out of GPU memory"),
    TakeCancelled(**IDS),
]


@pytest.mark.parametrize("event", EVERY_KIND, ids=lambda e: e.kind)
def test_every_event_reads_back_as_it_was_emitted(event: TakeEventBase) -> None:
    name, resource, payload = event.wire()

    assert name == PREFIX + event.kind
    assert parse(name, resource, payload) == event


def test_an_event_names_its_take_in_labels_other_processes_filter_on() -> None:
    name, resource, payload = TakeFailed(**IDS, error="boom").wire()

    assert name == "studio.take.failed"
    assert resource == {
        "prefect.resource.id": "studio.take.t-1",
        "prefect.resource.name": "Project_Odyssey · shot15 · take04",
        "studio.project": "Project_Odyssey", "studio.node": "shot15", "studio.take": "t-1",
        "studio.take-number": "4", "studio.tier": "standard", "studio.task-run": "run-9",
    }
    assert payload == {"error": "boom"}


def test_a_take_not_yet_handed_out_has_an_empty_task_run_label_read_back_as_none() -> None:
    event = TakeQueued(**{**IDS, "task_run_id": None})

    assert event.wire()[1]["studio.task-run"] == ""
    assert parse(*event.wire()) == event


@pytest.mark.parametrize(("name", "resource", "payload"), [
    ("prefect.flow-run.Completed", {"studio.take": "t-1"}, {}),
    ("studio.take.exploded", {"studio.project": "P", "studio.node": "n", "studio.take": "t"}, {}),
    ("studio.take.succeeded", {"studio.project": "P", "studio.node": "n"}, {}),
    ("studio.take.progress", {"studio.project": "P", "studio.node": "n", "studio.take": "t"},
     {"progress": "lots"}),
], ids=["not a take's", "unknown kind", "no take label", "bad payload"])
def test_anything_else_on_the_stream_is_not_a_take_event(
        name: str, resource: dict[str, str], payload: dict[str, object]) -> None:
    assert parse(name, resource, payload) is None
