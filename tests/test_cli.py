"""The installed `studio` command, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.manifest import TakeStatus
from studio.project_file import save_project
from tests.factories import add_take, odyssey

STUDIO = Path(sys.executable).parent / "studio"


def studio(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STUDIO), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_the_command_is_installed_next_to_python() -> None:
    assert STUDIO.is_file() and os.access(STUDIO, os.X_OK)


def test_validate_summarises_a_valid_project(tmp_path: Path) -> None:
    project = odyssey()
    for status in (TakeStatus.completed, TakeStatus.completed, TakeStatus.failed):
        add_take(project, "shot15", status)
    save_project(tmp_path / "project.json", project)

    result = studio("validate", str(tmp_path / "project.json"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "ok: Project_Odyssey — 5 nodes, 4 edges, 3 takes\n"


def test_validate_lists_each_graph_problem_and_fails(tmp_path: Path) -> None:
    data = odyssey().model_dump(mode="json")
    data["edges"][0].update(source="alex", source_socket="asset")  # AssetReference -> String
    data["edges"][1]["target_socket"] = "seed"
    data["edges"][2]["target"] = "ghost"
    (tmp_path / "project.json").write_text(json.dumps(data))

    result = studio("validate", str(tmp_path / "project.json"))

    assert result.returncode == 1
    path = tmp_path / "project.json"
    assert result.stdout.splitlines() == [
        f"{path}: edge e1: cannot connect alex.asset (AssetReference) to shot15.prompt (String)",
        f"{path}: edge e2: node shot15 (text_to_image) has no input socket 'seed' "
        "(inputs: prompt, negative_prompt, style, character)",
        f"{path}: edge e3: unknown target node 'ghost'",
    ]


def test_validate_lists_each_bad_parameter_and_fails(tmp_path: Path) -> None:
    data = odyssey().model_dump(mode="json")
    data["nodes"][4]["params"].update(preset="custom", width=96, height=4096)
    (tmp_path / "project.json").write_text(json.dumps(data))

    result = studio("validate", str(tmp_path / "project.json"))

    assert result.returncode == 1
    where = f"{tmp_path / 'project.json'}: node shot15 (text_to_image)"
    assert result.stdout.splitlines() == [
        f"{where}: params.width: Input should be greater than or equal to 256 (got 96)",
        f"{where}: params.height: Input should be less than or equal to 2048 (got 4096)",
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", "the manifest must be a JSON object"),
    ],
)
def test_validate_rejects_a_file_that_is_not_a_manifest(
    tmp_path: Path, content: str, problem: str
) -> None:
    (tmp_path / "project.json").write_text(content)

    result = studio("validate", str(tmp_path / "project.json"))

    assert result.returncode == 1
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"{tmp_path / 'project.json'}: {problem}")


def test_validate_reports_a_missing_file(tmp_path: Path) -> None:
    result = studio("validate", str(tmp_path / "none.json"))

    assert result.returncode == 1
    assert result.stdout.startswith(f"{tmp_path / 'none.json'}: cannot read: ")


def test_schema_prints_the_models_json_schema() -> None:
    result = studio("schema")

    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert (
        document["node_types"]["text_to_image"]["params"]["properties"]["steps"]["maximum"] == 100
    )
    assert set(document["manifest"]["properties"]) == {
        "schema_version",
        "id",
        "name",
        "quality",
        "fallback",
        "fallback_grace_seconds",
        "nodes",
        "edges",
        "assets",
    }
    assert document["socket_types"]["Image"] == {"type": "string", "format": "relative-path"}


def test_new_project_creates_it_in_the_workspace_and_prints_its_folder(tmp_path: Path) -> None:
    result = studio(
        "new-project",
        "Project Odyssey",
        "--quality",
        "low",
        env={"STUDIO_WORKSPACE": str(tmp_path)},
    )

    folder = tmp_path / "Projects" / "Project_Odyssey"
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{folder}\n"
    assert json.loads((folder / "project.json").read_text())["quality"] == "low"
    assert (folder / "03_Renders").is_dir()


def test_new_project_refuses_an_unknown_quality(tmp_path: Path) -> None:
    result = studio(
        "new-project", "X", "--quality", "ultra", env={"STUDIO_WORKSPACE": str(tmp_path)}
    )

    assert result.returncode == 2
    assert not (tmp_path / "Projects").exists()


def test_the_domain_loads_without_prefect_fastapi_or_torch() -> None:
    probe = (
        "import sys, cli.app, studio.prepare, studio.takes; "
        "print(sorted({'prefect', 'fastapi', 'torch'} & sys.modules.keys()))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)

    assert result.stdout == "[]\n", result.stderr
