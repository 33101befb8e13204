"""ProjectStore: projects in the workspace, and edits that lock, validate and save atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.graph import GraphError
from studio.manifest import Edge, ManifestError
from studio.project_file import load_project, save_project
from studio.store import ProjectNotFound, ProjectStore
from studio.workspace import Workspace
from tests.factories import odyssey


@pytest.fixture
def store(tmp_path: Path) -> ProjectStore:
    return ProjectStore(Workspace(tmp_path / "ws"))


def saved_odyssey(store: ProjectStore) -> str:
    project = odyssey()
    store.project_dir(project.id).mkdir(parents=True)
    save_project(store.manifest_path(project.id), project)
    return project.id


def test_a_new_project_has_its_numbered_folders_and_manifest(store: ProjectStore) -> None:
    project = store.create("Project Odyssey", "high")

    folder = store.workspace.root / "Projects" / "Project_Odyssey"
    assert project.id == "Project_Odyssey" and project.quality == "high"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "01_Assets",
        "02_Scripts",
        "03_Renders",
        "04_Exports",
    ]
    assert load_project(folder / "project.json") == project
    assert (store.workspace.root / "Library" / "AI_Models").is_dir()


def test_a_second_project_of_the_same_name_gets_a_numbered_id(store: ProjectStore) -> None:
    ids = [store.create("Project Odyssey").id for _ in range(3)]

    assert ids == ["Project_Odyssey", "Project_Odyssey_2", "Project_Odyssey_3"]
    assert [p.id for p in store.list()] == ids


def test_an_edit_is_saved(store: ProjectStore) -> None:
    project_id = saved_odyssey(store)

    with store.edit(project_id) as project:
        project.nodes[4].params["steps"] = 40

    assert store.load(project_id).nodes[4].params["steps"] == 40


def test_an_edit_with_invalid_params_is_refused_and_not_saved(store: ProjectStore) -> None:
    project_id = saved_odyssey(store)

    with pytest.raises(ManifestError, match=r"params\.steps: Input should be less than"):
        with store.edit(project_id) as project:
            project.nodes[4].params["steps"] = 500

    assert store.load(project_id).nodes[4].params["steps"] == 28


def test_an_edit_adding_a_bad_edge_is_refused_and_not_saved(store: ProjectStore) -> None:
    project_id = saved_odyssey(store)
    bad = Edge(
        id="e9", source="alex", source_socket="asset", target="shot15", target_socket="prompt"
    )

    with pytest.raises(GraphError, match=r"cannot connect alex\.asset \(AssetReference\)"):
        with store.edit(project_id) as project:
            project.edges.append(bad)

    assert [e.id for e in store.load(project_id).edges] == ["e1", "e2", "e3", "e4"]


def test_an_edit_whose_body_fails_saves_nothing(store: ProjectStore) -> None:
    project_id = saved_odyssey(store)

    with pytest.raises(RuntimeError):
        with store.edit(project_id) as project:
            project.name = "Renamed"
            raise RuntimeError("changed my mind")

    assert store.load(project_id).name == "Project Odyssey"


def test_a_project_id_that_is_not_a_slug_is_not_found(store: ProjectStore) -> None:
    with pytest.raises(ProjectNotFound, match="is not a project id"):
        store.load("../elsewhere")


def test_a_missing_project_is_not_found(store: ProjectStore) -> None:
    with pytest.raises(ProjectNotFound, match="no project 'Nope'"):
        store.load("Nope")


def test_a_manifest_whose_id_differs_from_its_folder_is_refused(store: ProjectStore) -> None:
    project_id = saved_odyssey(store)
    copy = store.project_dir("Copy")
    copy.mkdir()
    (copy / "project.json").write_bytes(store.manifest_path(project_id).read_bytes())

    with pytest.raises(ManifestError, match="id is 'Project_Odyssey' but the project's folder"):
        store.load("Copy")


def test_listing_leaves_out_an_unreadable_project(store: ProjectStore) -> None:
    store.create("Good")
    broken = store.project_dir("Broken")
    broken.mkdir()
    (broken / "project.json").write_text(json.dumps({"schema_version": 1}))

    assert [p.id for p in store.list()] == ["Good"]


def test_an_edit_saves_indented_json_that_loads_back_as_the_edited_project(
        store: ProjectStore) -> None:
    project_id = saved_odyssey(store)

    with store.edit(project_id) as project:
        project.name = "Odyssée"  # non-ASCII is kept as written
        edited = project.model_copy(deep=True)

    text = store.manifest_path(project_id).read_text(encoding="utf-8")
    assert text.startswith('{\n  "') and text.endswith("}\n") and "Odyssée" in text
    assert json.loads(text) == edited.model_dump(mode="json")
    assert store.load(project_id) == edited


def test_a_take_path_leaving_the_project_is_refused_on_every_save(store: ProjectStore) -> None:
    from studio.manifest import Take

    project_id = saved_odyssey(store)
    node = next(n for n in store.load(project_id).nodes if n.shot is not None)
    take = Take.model_validate({
        "id": "t1", "number": 1, "path": "03_Renders/a.png", "fingerprint": "f",
        "pipeline_id": "p", "quality_requested": "standard", "quality_used": "standard",
        "created_at": "2026-12-02T00:00:00Z",
        "params": {"prompt": "p", "seed": 1, "steps": 1, "cfg_scale": 1.0, "width": 256,
                   "height": 256}})
    for _ in range(2):  # the path check is cached: a refusal must not become a pass
        with pytest.raises(ManifestError, match="'..'"), store.edit(project_id) as project:
            bad = take.model_copy(update={"path": "../elsewhere/a.png"})
            project.get_node(node.id).takes.append(bad)
    assert store.load(project_id).get_node(node.id).takes == []
