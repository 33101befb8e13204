"""Projects in the workspace: create, list, load, and edit under the project's lock."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path

from studio.graph import GraphError, validate_project
from studio.manifest import ManifestError, Project
from studio.project_file import (
    dump_project,
    load_project,
    parse_project,
    project_lock,
    save_project,
    write_project,
)
from studio.tiers import Quality
from studio.workspace import (
    MANIFEST,
    PROJECT_FOLDERS,
    PROJECT_ID_RE,
    Workspace,
    check_project_name,
    slugify,
)

log = logging.getLogger(__name__)


class ProjectNotFound(LookupError):
    pass


class ProjectStore:
    def __init__(self, workspace: Workspace | None = None) -> None:
        self.workspace = workspace or Workspace()

    def project_dir(self, project_id: str) -> Path:
        # The id becomes a folder name, so only a slug may get that far.
        if not PROJECT_ID_RE.fullmatch(project_id):
            raise ProjectNotFound(f"{project_id!r} is not a project id (A-Z a-z 0-9 _ -, 1-64)")
        return self.workspace.projects_dir / project_id

    def manifest_path(self, project_id: str) -> Path:
        return self.project_dir(project_id) / MANIFEST

    def create(self, name: str, quality: Quality | str = Quality.standard) -> Project:
        """A new, empty project with its numbered folders; its id is unique in the workspace.

        Raises ValueError for a name `check_project_name` refuses.
        """
        name = check_project_name(name)
        self.workspace.ensure()
        base = slugify(name)
        for n in count(1):
            suffix = "" if n == 1 else f"_{n}"
            project_id = base[: 64 - len(suffix)] + suffix
            try:
                self.project_dir(project_id).mkdir()  # atomic: two creators never share a folder
                break
            except FileExistsError:
                continue
        folder = self.project_dir(project_id)
        for sub in PROJECT_FOLDERS:
            (folder / sub).mkdir()
        project = Project(id=project_id, name=name, quality=quality)
        save_project(folder / MANIFEST, project)
        return project

    def list(self) -> list[Project]:
        """Every readable project; an unreadable one is logged and left out."""
        projects = []
        if not self.workspace.projects_dir.is_dir():
            return projects
        for folder in sorted(self.workspace.projects_dir.iterdir()):
            if (folder / MANIFEST).is_file():
                try:
                    projects.append(self.load(folder.name))
                except (ManifestError, ProjectNotFound) as e:
                    log.warning("skipping project %s: %s", folder.name, e)
        return projects

    def _existing_manifest(self, project_id: str) -> Path:
        path = self.manifest_path(project_id)
        if not path.is_file():
            raise ProjectNotFound(f"no project {project_id!r} in {self.workspace.projects_dir}")
        # A project folder (or its project.json) linked to elsewhere would have the API read,
        # serve and write files outside the workspace: it is not a project of this workspace.
        if not path.resolve().is_relative_to(self.workspace.projects_dir.resolve()):
            log.warning("project %s leads outside the workspace (to %s); ignored",
                        project_id, path.resolve().parent)
            raise ProjectNotFound(f"project {project_id!r} is a link to outside the workspace; "
                                  "move it into the workspace instead of linking it")
        return path

    def existing_dir(self, project_id: str) -> Path:
        """The folder of a project that exists and lies inside the workspace."""
        return self._existing_manifest(project_id).parent

    def load(self, project_id: str) -> Project:
        path = self._existing_manifest(project_id)
        project = load_project(path)
        if project.id != project_id:
            raise ManifestError(
                [f"id is {project.id!r} but the project's folder is {project_id!r}"], str(path)
            )
        return project

    @contextmanager
    def edit(self, project_id: str) -> Iterator[Project]:
        """Lock, load, yield the project to change in place, validate, save atomically.

        Nothing is saved if the body raises or the result is invalid (ManifestError/GraphError).
        """
        path = self._existing_manifest(project_id)
        with project_lock(path):
            project = self.load(project_id)
            yield project
            # The very text that is saved is parsed back and validated like a load, so in-place
            # changes (e.g. a params dict) are checked and what lands on disk is what was checked.
            text = dump_project(project)
            checked = parse_project(json.loads(text), str(path))
            if checked.id != project_id:
                raise ManifestError([f"a project's id cannot change ({project_id!r})"], str(path))
            problems = validate_project(checked)
            if problems:
                raise GraphError(problems)
            write_project(path, checked, text)
