"""The workspace volume as a runner container sees it: host paths <-> /workspace paths.

A container sees only the workspace volume, mounted at /workspace. A take's request is built
with host paths; the container strategy maps it in (``WorkspaceMount.request``) and maps what
the runner reports back out (``WorkspaceMount.to_host``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runners.flux.contract import FluxRequest

CONTAINER_WORKSPACE = PurePosixPath("/workspace")


@dataclass(frozen=True)
class WorkspaceMount:
    host_root: Path
    container_root: PurePosixPath = CONTAINER_WORKSPACE

    def to_container(self, path: Path) -> str:
        """The path a container sees for a host path on the volume (relative: to the workspace).

        Raises ValueError for a path outside the workspace: a container could not reach it.
        """
        root = self.host_root.resolve()
        resolved = (root / path).resolve()
        try:
            relative = resolved.relative_to(root)
        except ValueError:
            raise ValueError(f"{resolved} is outside the workspace {root}: a runner container "
                             f"sees only the workspace volume at {self.container_root}") from None
        return str(self.container_root.joinpath(*relative.parts))

    def to_host(self, path: str) -> Path:
        """The host path of a path a container reported; one outside the volume is kept as is."""
        try:
            relative = PurePosixPath(path).relative_to(self.container_root)
        except ValueError:
            return Path(path)
        return self.host_root.resolve().joinpath(*relative.parts)

    def request(self, request: FluxRequest) -> FluxRequest:
        """The same take with every path as the container sees it."""
        def inside(path: Path | None) -> Path | None:
            return None if path is None else Path(self.to_container(path))

        return dataclasses.replace(
            request,
            workspace=Path(str(self.container_root)),
            output_path=inside(request.output_path),
            model_dir=inside(request.model_dir),
            preview_path=inside(request.preview_path),
        )
