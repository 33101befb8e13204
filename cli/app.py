"""The `studio` command, apart from the domain (as Prefect keeps `prefect.cli` apart): commands that
need Prefect or the API import them inside themselves, so `studio validate` stays as light as
the domain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from studio.graph import validate_project
from studio.manifest import ManifestError, Project
from studio.nodes import node_types_schema
from studio.project_file import load_project
from studio.sockets import REPRESENTATION
from studio.store import ProjectStore
from studio.tiers import Quality
from studio.workspace import Workspace

app = typer.Typer(
    name="studio",
    help="Generative Studio: projects, node graphs and workers.",
    no_args_is_help=True,
)


@app.command()
def validate(project_json: Annotated[Path, typer.Argument(help="a project.json")]) -> None:
    """Check a project.json: one line per problem (exit 1), or a one-line summary (exit 0)."""
    try:
        project = load_project(project_json)
    except ManifestError as e:
        for problem in e.problems:
            typer.echo(f"{project_json}: {problem}")
        raise typer.Exit(1) from None
    problems = validate_project(project)
    for problem in problems:
        typer.echo(f"{project_json}: {problem}")
    if problems:
        raise typer.Exit(1)
    takes = sum(len(n.takes) for n in project.nodes)
    typer.echo(
        f"ok: {project.id} — {len(project.nodes)} nodes, {len(project.edges)} edges, {takes} takes"
    )


@app.command()
def schema() -> None:
    """Print the JSON Schema of the manifest and of every node type (from the models)."""
    document = {
        "manifest": Project.model_json_schema(),
        "node_types": node_types_schema(),
        "socket_types": {str(t): rep for t, rep in REPRESENTATION.items()},
    }
    typer.echo(json.dumps(document, indent=2))


@app.command("new-project")
def new_project(
    name: Annotated[str, typer.Argument(help='e.g. "Project Odyssey"')],
    quality: Annotated[Quality, typer.Option(help="the project's quality tier")] = Quality.standard,
) -> None:
    """Create a project in $STUDIO_WORKSPACE and print its folder."""
    store = ProjectStore(Workspace())
    try:
        project = store.create(name, quality)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(store.project_dir(project.id))


@app.command()
def worker(
    tier: Annotated[Quality, typer.Option(help="the quality tier this worker serves")],
    limit: Annotated[int, typer.Option(help="takes at once; one per GPU")] = 1,
    gpu: Annotated[int | None, typer.Option(
        help="the GPU index (as nvidia-smi numbers them) this worker renders on; "
             "default: the one STUDIO_GPUS maps to the tier, else every GPU CUDA sees")] = None,
) -> None:
    """Run the warm task worker of one tier: loads its pipeline, then serves clicks."""
    from runners.gpus import gpu_map, pin_gpu
    from studio.gpus import GpuMapError

    try:
        # Before tasks.worker: CUDA reads CUDA_VISIBLE_DEVICES once, when torch initialises it.
        index = gpu if gpu is not None else gpu_map().get(tier)
        if index is not None:
            pin_gpu(index)
    except GpuMapError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    from tasks.worker import serve_tier  # Prefect and torch load only for this command

    serve_tier(tier, limit=limit)


@app.command()
def reconcile(
    project_id: Annotated[str, typer.Argument(help="a project id (its folder name)")],
) -> None:
    """Fail the project's takes whose worker died mid-render, and remove their leftovers."""
    from tasks.recovery import fail_abandoned_takes

    for take in fail_abandoned_takes(ProjectStore(Workspace()), project_id):
        typer.echo(f"failed take {take.number} ({take.path}): {take.error}")
