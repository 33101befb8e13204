"""The domain's import graph: acyclic (value types below the use cases, no late imports to dodge
a circle) and free of Prefect, FastAPI, torch and the packages built on them."""

from __future__ import annotations

import ast
from pathlib import Path

STUDIO = Path(__file__).resolve().parents[1] / "studio"
# The domain is pure Python and pydantic; these are the layers above it and the heavy libraries.
FORBIDDEN = {"prefect", "fastapi", "starlette", "torch", "diffusers", "api", "tasks", "flows",
             "runners", "cli"}
# The runner's published contract (tiers, limits, Quality): standard-library modules the runner
# image carries on its own, so the domain reads them from there rather than keeping a copy.
RUNNER_CONTRACT = {"runners.flux.contract", "runners.flux.tiers"}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at module level, in functions or under TYPE_CHECKING."""
    package = "studio"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"{package}.{base}" if base else package
            found.add(base)
            # `from studio import graph` imports the module studio.graph.
            found |= {f"{base}.{alias.name}" for alias in node.names
                      if (STUDIO.parent / base.replace(".", "/") / f"{alias.name}.py").is_file()}
    return found


def studio_graph() -> dict[str, set[str]]:
    """studio module -> the studio modules it imports."""
    modules = {f"studio.{p.stem}": p for p in STUDIO.glob("*.py") if p.stem != "__init__"}
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a -> b -> a), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_a_late_import_circle() -> None:
    assert find_cycle({"studio.jobs": {"studio.graph"}, "studio.graph": {"studio.jobs"}}) == [
        "studio.graph", "studio.jobs", "studio.graph"]
    assert find_cycle({"studio.a": {"studio.b"}, "studio.b": set()}) is None


def test_the_import_graph_of_studio_has_no_cycle() -> None:
    graph = studio_graph()

    assert "studio.prepare" in graph and "studio.jobs" in graph["studio.prepare"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_value_types_sit_below_the_use_case() -> None:
    graph = studio_graph()

    for value_module in ("studio.params", "studio.jobs", "studio.manifest", "studio.takes"):
        assert "studio.prepare" not in graph[value_module], value_module


def test_studio_imports_nothing_of_prefect_fastapi_torch_or_the_layers_above() -> None:
    offending = {
        path.name: sorted(m for m in _imports(path)
                          if m.split(".")[0] in FORBIDDEN and m not in RUNNER_CONTRACT)
        for path in STUDIO.glob("*.py")
    }

    assert {name: mods for name, mods in offending.items() if mods} == {}


def test_the_runner_contract_the_domain_reads_is_standard_library_only() -> None:
    root = STUDIO.parent
    for module in RUNNER_CONTRACT:
        path = root / (module.replace(".", "/") + ".py")
        outside = {m for m in _imports(path)
                   if m.split(".")[0] not in {"__future__", "json", "math", "re", "collections",
                                              "dataclasses", "enum", "pathlib", "typing"}
                   and m not in RUNNER_CONTRACT}
        assert outside == set(), (module, outside)
