"""Function Runner strategies without a model: which strategy a pipeline gets, how the child
process is given the request, how its lines and exit codes come back.

A take that really renders through each strategy: tests/test_runner_flux_*.py (in process and
the script), tests/test_containers_engine.py (a container)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runners.flux.contract import ExitCode, FluxRequest, Progress, seed_line
from runners.mount import WorkspaceMount
from runners.registry import STRATEGIES, strategy_for
from runners.strategies import (
    Docker,
    InProcess,
    RunnerFailed,
    Subprocess,
    _StdoutReader,
    child_env,
    remove_partial_files,
)
from studio.tiers import TIERS


@pytest.mark.parametrize(
    ("mode", "kind"), [("in-process", InProcess), ("subprocess", Subprocess), ("docker", Docker)]
)
def test_every_tiers_pipeline_has_a_strategy_in_every_mode(mode: str, kind: type) -> None:
    assert set(STRATEGIES) == {tier.pipeline_id for tier in TIERS.values()}
    for pipeline_id in STRATEGIES:
        assert isinstance(strategy_for(pipeline_id, mode), kind)


def test_the_mode_comes_from_the_environment_and_defaults_to_in_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STUDIO_RUNNER_MODE", raising=False)
    assert isinstance(strategy_for("flux-dev-fp8"), InProcess)
    monkeypatch.setenv("STUDIO_RUNNER_MODE", "subprocess")
    assert isinstance(strategy_for("flux-dev-fp8"), Subprocess)


def test_an_unknown_mode_or_pipeline_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown runner mode 'gpu'; choose one of in-process"):
        strategy_for("flux-dev-fp8", "gpu")
    with pytest.raises(ValueError, match="no runner for pipeline 'sdxl'; known: flux-dev-bf16"):
        strategy_for("sdxl", "in-process")


def _request(root: Path, **kw: object) -> FluxRequest:
    return FluxRequest(prompt="a fox", output_path=root / "Projects" / "P" / "x.png",
                       workspace=root, width=256, height=256, **kw)  # type: ignore[arg-type]


def test_a_child_process_gets_the_request_and_none_of_the_parents_contract_values(
    tmp_path: Path,
) -> None:
    parent = {"PATH": "/usr/bin", "PREVIEW_PATH": "/stray.png", "SEED": "9", "LORAS": "[]"}

    env = child_env(_request(tmp_path, seed=3), parent)

    assert env["PATH"] == "/usr/bin" and env["SEED"] == "3"
    assert "PREVIEW_PATH" not in env and "LORAS" not in env
    assert env["OUTPUT_PATH"] == str(tmp_path / "Projects" / "P" / "x.png")  # a host path
    assert env["STUDIO_WORKSPACE"] == str(tmp_path)


def test_the_subprocess_strategy_fails_with_the_runners_code_and_message(tmp_path: Path) -> None:
    with pytest.raises(RunnerFailed) as bad:
        Subprocess().run(_request(tmp_path, steps=0), lambda *_: None)
    assert bad.value.exit_code == ExitCode.BAD_INPUT
    assert bad.value.message == "STEPS must be between 1 and 100; got 0"

    with pytest.raises(RunnerFailed) as missing:
        Subprocess().run(_request(tmp_path), lambda *_: None)
    assert missing.value.exit_code == ExitCode.MODEL_MISSING
    assert missing.value.message.startswith("FLUX.1-dev model not found at")
    assert not (tmp_path / "Projects" / "P" / "x.png").exists()


def test_a_child_killed_without_a_word_fails_as_killed(tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")

    with pytest.raises(RunnerFailed) as killed:
        Subprocess(python=sys.executable, script=script).run(_request(tmp_path), lambda *_: None)

    assert ExitCode.of(killed.value.exit_code) is ExitCode.KILLED
    assert "killed" in killed.value.message


def test_the_in_process_strategy_passes_the_request_and_fails_with_the_runners_code(
    tmp_path: Path,
) -> None:
    with pytest.raises(RunnerFailed) as bad:
        InProcess().run(_request(tmp_path, cfg_scale=1.0, negative_prompt="blurry"),
                        lambda *_: None)
    assert bad.value.exit_code == ExitCode.BAD_INPUT
    assert "a negative prompt needs CFG_SCALE > 1" in bad.value.message


def test_stdout_progress_is_forwarded_and_the_seed_kept() -> None:
    seen: list[tuple[int, str, str | None]] = []
    reader = _StdoutReader(lambda p, s, preview: seen.append((p, s, preview)))

    for line in (seed_line(42), "NOTE: x", Progress(15, "Denoising step 0/4").line(),
                 Progress(90, "Denoising step 4/4", "/ws/a.preview.png").line()):
        reader(line)

    assert reader.seed == 42
    assert seen == [(15, "Denoising step 0/4", None), (90, "Denoising step 4/4",
                                                         "/ws/a.preview.png")]


def test_a_containers_preview_is_reported_as_a_host_path(tmp_path: Path) -> None:
    seen: list[str | None] = []
    reader = _StdoutReader(lambda p, s, preview: seen.append(preview), WorkspaceMount(tmp_path))

    reader(Progress(50, "Denoising", "/workspace/Projects/P/x.preview.png").line())

    assert seen == [str(tmp_path.resolve() / "Projects" / "P" / "x.preview.png")]


def test_the_container_request_carries_only_volume_paths_and_maps_back(tmp_path: Path) -> None:
    request = _request(tmp_path, model_dir=tmp_path / "Library" / "m",
                       preview_path=tmp_path / "Projects" / "P" / "x.preview.png")
    mount = WorkspaceMount(tmp_path)

    inside = mount.request(request)

    assert inside.workspace == Path("/workspace")
    assert (inside.output_path, inside.model_dir, inside.preview_path) == (
        Path("/workspace/Projects/P/x.png"), Path("/workspace/Library/m"),
        Path("/workspace/Projects/P/x.preview.png"))
    assert mount.to_host(str(inside.output_path)) == request.output_path.resolve()
    assert (inside.prompt, inside.seed, inside.width) == (request.prompt, request.seed, 256)


def test_partial_files_of_a_killed_runner_are_removed_and_nothing_else(tmp_path: Path) -> None:
    output = tmp_path / "take01.png"
    (tmp_path / ".take01.png.abc.tmp").write_bytes(b"half")
    (tmp_path / "take02.png").write_bytes(b"whole")

    remove_partial_files(output)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["take02.png"]
