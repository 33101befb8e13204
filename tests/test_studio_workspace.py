"""The workspace layout and the one safe-path rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from studio.workspace import PathEscapeError, Workspace, safe_path, slugify


def test_the_root_comes_from_studio_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))

    assert Workspace().root == tmp_path
    assert Workspace().models_dir == tmp_path / "Library" / "AI_Models"


def test_the_default_root_is_generative_studio_workspace_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STUDIO_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)

    assert Workspace().root == tmp_path / "Generative_Studio_Workspace"


def test_a_relative_path_resolves_inside_the_project(tmp_path: Path) -> None:
    assert safe_path(tmp_path, "03_Renders/SCENE_02/a.png") == (
        tmp_path.resolve() / "03_Renders" / "SCENE_02" / "a.png"
    )


segments = st.lists(st.sampled_from(["a", "03_Renders", ".", "b.png"]), max_size=3)


@given(segments, segments)
def test_a_path_with_dotdot_is_refused(before: list[str], after: list[str]) -> None:
    rel = "/".join([*before, "..", *after])

    with pytest.raises(PathEscapeError, match="contains '..'; paths may not leave the project"):
        safe_path(Path("/srv/project"), rel)


@pytest.mark.parametrize("rel", ["/etc/passwd", "//server/share"])
def test_an_absolute_path_is_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(PathEscapeError, match="is absolute"):
        safe_path(tmp_path, rel)


@pytest.mark.parametrize("rel", ["", "a\\..\\b", "a\0b"])
def test_empty_backslashed_or_nul_paths_are_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(PathEscapeError):
        safe_path(tmp_path, rel)


def test_a_symlink_leading_out_of_the_project_is_refused(tmp_path: Path) -> None:
    project, outside = tmp_path / "project", tmp_path / "outside"
    (project / "03_Renders").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, project / "03_Renders" / "escape")

    with pytest.raises(PathEscapeError, match="leads outside .* through a symlink"):
        safe_path(project, "03_Renders/escape/take01.png")


def test_a_symlink_staying_inside_the_project_is_followed(tmp_path: Path) -> None:
    (tmp_path / "01_Assets").mkdir()
    os.symlink(tmp_path / "01_Assets", tmp_path / "assets")

    assert safe_path(tmp_path, "assets/x.png") == tmp_path.resolve() / "01_Assets" / "x.png"


@pytest.mark.parametrize(
    ("name", "slug"),
    [("Project Odyssey", "Project_Odyssey"), ("  Café noir! ", "Cafe_noir"), ("a/../b", "a_b")],
)
def test_a_project_id_is_a_slug_of_its_name(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_a_name_without_letters_or_digits_has_no_id() -> None:
    with pytest.raises(ValueError, match="has no letters or digits"):
        slugify("***")
