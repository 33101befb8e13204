"""project.json: validation messages, migration, atomic and crash-safe saving.

The sample project the studio tests share is built in tests/factories.py.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from studio.manifest import SCHEMA_VERSION, Edge, ManifestError, Project, Shot, TakeStatus
from studio.project_file import load_project, save_project
from tests.factories import add_take, odyssey


def dump(project: Project) -> dict[str, Any]:
    return project.model_dump(mode="json")


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def problems_loading(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_project(path)
    return info.value.problems


def test_a_saved_project_loads_back_equal(tmp_path: Path) -> None:
    project = odyssey()
    add_take(project, "shot15")
    save_project(tmp_path / "project.json", project)

    assert load_project(tmp_path / "project.json") == project


def test_each_bad_parameter_is_one_line_naming_node_and_parameter(tmp_path: Path) -> None:
    data = dump(odyssey())
    data["nodes"][4]["params"].update(steps=500, cfg_scale="high")

    problems = problems_loading(write_json(tmp_path / "project.json", data))

    assert problems == [
        "node shot15 (text_to_image): params.steps: Input should be less than or equal to 100 "
        "(got 500)",
        "node shot15 (text_to_image): params.cfg_scale: Input should be a valid number "
        "(got 'high')",
    ]


def test_an_unknown_parameter_is_refused_by_name(tmp_path: Path) -> None:
    data = dump(odyssey())
    data["nodes"][4]["params"]["sampler"] = "euler"

    problems = problems_loading(write_json(tmp_path / "project.json", data))

    assert problems == [
        "node shot15 (text_to_image): params.sampler: Extra inputs are not permitted (got 'euler')"
    ]


def test_an_unknown_node_type_is_refused_listing_the_known_ones(tmp_path: Path) -> None:
    data = dump(odyssey())
    data["nodes"][0]["node_type"] = "upscale"

    (problem,) = problems_loading(write_json(tmp_path / "project.json", data))

    assert problem.startswith("node prompt (upscale): unknown node type 'upscale'; known: ")
    assert "text_to_image" in problem


def test_a_text_to_image_node_without_a_shot_is_refused(tmp_path: Path) -> None:
    data = dump(odyssey())
    data["nodes"][4]["shot"] = None

    problems = problems_loading(write_json(tmp_path / "project.json", data))

    assert problems == [
        "node shot15 (text_to_image): a text_to_image node needs a shot {scene, shot, version}"
    ]


def test_a_badly_named_shot_is_refused(tmp_path: Path) -> None:
    data = dump(odyssey())
    data["nodes"][4]["shot"]["shot"] = "shot 15"

    (problem,) = problems_loading(write_json(tmp_path / "project.json", data))

    assert problem.startswith("node shot15 (text_to_image): shot.shot: String should match")


def test_an_active_take_that_is_not_completed_is_refused(tmp_path: Path) -> None:
    project = odyssey()
    take = add_take(project, "shot15", TakeStatus.failed)
    data = dump(project)
    data["nodes"][4]["active_take"] = take.id

    problems = problems_loading(write_json(tmp_path / "project.json", data))

    assert problems == [
        f"node shot15 (text_to_image): active_take {take.id!r} is not a completed take"
    ]


def test_a_take_path_leaving_the_project_is_refused(tmp_path: Path) -> None:
    project = odyssey()
    add_take(project, "shot15")
    data = dump(project)
    data["nodes"][4]["takes"][0]["path"] = "../../etc/passwd"

    (problem,) = problems_loading(write_json(tmp_path / "project.json", data))

    assert problem.startswith("node shot15 (text_to_image): takes[0].path: ")
    assert "contains '..'" in problem


def test_duplicate_node_ids_are_refused(tmp_path: Path) -> None:
    data = dump(odyssey())
    data["nodes"][1]["id"] = "prompt"

    assert problems_loading(write_json(tmp_path / "project.json", data)) == [
        "node ids used twice: prompt"
    ]


def test_invalid_json_is_reported_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "project.json"
    path.write_text('{\n  "schema_version": 1,\n  "id": }', encoding="utf-8")

    assert problems_loading(path) == ["not valid JSON: Expecting value (line 3, column 9)"]


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    (problem,) = problems_loading(tmp_path / "nowhere.json")

    assert problem.startswith("cannot read: ")


V0_MANIFEST = {
    "schema_version": 0,
    "id": "Old_Project",
    "name": "Old Project",
    "quality_level": "high",
    "nodes": [
        {"id": "p", "type": "string", "params": {"value": "a castle"}, "pos": [10, 20]},
        {
            "id": "t",
            "type": "text_to_image",
            "params": {},
            "pos": [300, 20],
            "shot": "SCENE_01/SHOT_010/v02",
        },
    ],
    "edges": [{"from": "p.value", "to": "t.prompt"}],
    "assets": [],
}


def test_a_v0_manifest_is_migrated_on_load(tmp_path: Path) -> None:
    project = load_project(write_json(tmp_path / "project.json", V0_MANIFEST))

    assert project.schema_version == SCHEMA_VERSION
    assert project.quality == "high"
    assert [(n.id, n.node_type, n.position.x, n.position.y) for n in project.nodes] == [
        ("p", "string", 10, 20),
        ("t", "text_to_image", 300, 20),
    ]
    assert project.nodes[1].shot == Shot(scene="SCENE_01", shot="SHOT_010", version="v02")
    assert project.edges == [
        Edge(id="e1", source="p", source_socket="value", target="t", target_socket="prompt")
    ]


def test_a_malformed_v0_edge_says_the_migration_failed(tmp_path: Path) -> None:
    data = {**V0_MANIFEST, "edges": [{"from": "p", "to": "t.prompt"}]}

    (problem,) = problems_loading(write_json(tmp_path / "project.json", data))

    assert problem.startswith("cannot migrate schema_version 0 to 1: ")


def test_a_newer_schema_version_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    data = {**dump(odyssey()), "schema_version": SCHEMA_VERSION + 1}

    assert problems_loading(write_json(tmp_path / "project.json", data)) == [
        f"schema_version {SCHEMA_VERSION + 1} is newer than this studio understands "
        f"(up to {SCHEMA_VERSION}); open it with a newer studio"
    ]


def test_a_missing_schema_version_is_refused(tmp_path: Path) -> None:
    data = dump(odyssey())
    del data["schema_version"]

    assert problems_loading(write_json(tmp_path / "project.json", data)) == [
        "schema_version is missing"
    ]


def test_saving_leaves_only_the_manifest_and_its_lock(tmp_path: Path) -> None:
    for _ in range(3):
        save_project(tmp_path / "project.json", odyssey())

    assert {p.name for p in tmp_path.iterdir()} <= {"project.json", "project.json.lock"}


SAVE_LOOP = """
import sys
from studio.project_file import load_project, save_project
path = sys.argv[1]
project = load_project(path)
i = 0
print("saving", flush=True)
while True:
    i += 1
    # sizes vary (a String value holds at most 4,000 characters)
    project.nodes[0].params["value"] = "x" * (i * 997 % 4_000)
    save_project(path, project)
"""


def test_a_process_killed_while_saving_leaves_a_manifest_that_loads(tmp_path: Path) -> None:
    path = tmp_path / "project.json"
    project = odyssey()
    project.nodes[0].params["value"] = "x"
    save_project(path, project)
    rng = random.Random(7)
    for _ in range(5):
        saver = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert saver.stdout is not None and saver.stdout.readline() == "saving\n"
        time.sleep(rng.uniform(0.05, 0.4))
        saver.send_signal(signal.SIGKILL)
        saver.wait()

        value = load_project(path).nodes[0].params["value"]

        assert set(value) <= {"x"}


def test_the_next_save_clears_a_dead_writers_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "project.json"
    save_project(path, odyssey())
    (tmp_path / ".project.json.abc123.tmp").write_text('{"half": ')

    save_project(path, odyssey())

    assert {p.name for p in tmp_path.iterdir()} == {"project.json", "project.json.lock"}
