"""The runner contract (runners/flux/contract.py): a request survives its env form, every exit
code maps both ways, the stdout lines written are the lines parsed, and one preview rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.flux.contract import (
    ENV_NAMES,
    ERRORS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    BadInput,
    Cancelled,
    ExitCode,
    FluxError,
    FluxRequest,
    LoraSpec,
    Progress,
    Quality,
    describe_exit,
    error_line,
    failure_message,
    is_retryable,
    parse_progress,
    parse_quality,
    parse_seed,
    preview_path_for,
    seed_line,
)

FULL = FluxRequest(
    prompt="alexchar, a lone astronaut, film noir",
    output_path=Path("/ws/Projects/P/03_Renders/SCENE_01/SHOT_010/SHOT-010_v01_take01.png"),
    negative_prompt="blurry",
    seed=MAX_SEED,
    cfg_scale=3.5,
    steps=28,
    width=1024,
    height=768,
    quality=Quality.high,
    model_dir=Path("/ws/Library/AI_Models/flux/FLUX.1-dev"),
    workspace=Path("/ws"),
    preview_path=Path("/ws/Projects/P/p.preview.png"),
    preview_every=2,
    loras=(LoraSpec("Library/LoRAs/alex.safetensors", 0.8, "character"),
           LoraSpec("Library/LoRAs/noir.safetensors", -0.5, "style")),
    pipeline_id="flux-dev-bf16",
)


def test_a_request_is_the_same_request_after_its_env_round_trip() -> None:
    assert FluxRequest.from_env(FULL.to_env()) == FULL


def test_a_minimal_request_round_trips_and_sends_only_what_is_set() -> None:
    request = FluxRequest(prompt="a fox", output_path="Projects/P/x.png")

    env = request.to_env()

    assert env == {"PROMPT": "a fox", "OUTPUT_PATH": "Projects/P/x.png", "QUALITY": "standard",
                   "STUDIO_WORKSPACE": "/workspace"}
    assert FluxRequest.from_env(env) == request


def test_the_env_names_are_exactly_those_a_full_request_sends() -> None:
    assert set(FULL.to_env()) == set(ENV_NAMES)


def test_values_given_as_text_or_dicts_become_the_same_request() -> None:
    loose = FluxRequest(
        prompt=FULL.prompt, output_path=str(FULL.output_path), negative_prompt="blurry",
        seed=MAX_SEED, cfg_scale=3.5, steps=28, width=1024, height=768, quality="HIGH",
        model_dir=str(FULL.model_dir), workspace="/ws", preview_path=str(FULL.preview_path),
        preview_every=2, pipeline_id="flux-dev-bf16",
        loras=[{"path": "Library/LoRAs/alex.safetensors", "weight": 0.8, "kind": "character"},
               {"path": "Library/LoRAs/noir.safetensors", "weight": -0.5, "kind": "style"}],
    )
    assert loose == FULL


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROMPT": None}, "PROMPT is required"),
        ({"PROMPT": "  "}, "PROMPT is required"),
        ({"OUTPUT_PATH": None}, "OUTPUT_PATH is required"),
        ({"SEED": "1.5"}, "SEED must be a whole number; got '1.5'"),
        ({"CFG_SCALE": "high"}, "CFG_SCALE must be a number"),
        ({"QUALITY": "ultra"}, "QUALITY must be one of low, standard, high; got 'ultra'"),
        ({"LORAS": "{"}, "LORAS must be a JSON list of objects"),
        ({"LORAS": '{"path": "a"}'}, "LORAS must be a JSON list of objects"),
        ({"LORAS": '[{"path": "a.safetensors", "weight": 9}]'},
         "LORAS[0].weight must be a finite number between -4 and 4"),
        ({"LORAS": '[{"path": "a.safetensors", "kind": "pose"}]'},
         "LORAS[0].kind must be 'character' or 'style'"),
        ({"LORAS": '[{"weight": 1}]'}, "LORAS[0].path is required"),
        ({"LORAS": '[{"path": "a.safetensors", "style_prompt": "noir"}]'},
         "LORAS[0] has unknown fields: style_prompt (trigger words and style prompts belong"),
    ],
)
def test_a_bad_env_value_is_bad_input_naming_the_variable(env: dict, message: str) -> None:
    values = {"PROMPT": "a fox", "OUTPUT_PATH": "x.png", **env}
    with pytest.raises(BadInput) as info:
        FluxRequest.from_env({k: v for k, v in values.items() if v is not None})
    assert message in str(info.value)
    assert info.value.exit_code == ExitCode.BAD_INPUT


def test_quality_is_parsed_once_whatever_its_case() -> None:
    assert parse_quality(" High ") is Quality.high
    assert parse_quality(Quality.low) is Quality.low


@pytest.mark.parametrize("code", list(ExitCode))
def test_every_exit_code_maps_to_its_number_and_back(code: ExitCode) -> None:
    assert ExitCode(int(code)) is code
    assert ExitCode.of(int(code)) is code
    assert describe_exit(int(code)) == code.reason


def test_the_exit_codes_are_the_ones_the_runner_documents() -> None:
    assert {c.name: c.value for c in ExitCode} == {
        "OK": 0, "FAILED": 1, "BAD_INPUT": 2, "MODEL_MISSING": 3, "OUT_OF_MEMORY": 4,
        "KILLED": 137}


@pytest.mark.parametrize(("code", "error"), list(ERRORS.items()))
def test_every_error_carries_its_exit_code_and_back(code: ExitCode, error: type) -> None:
    assert error.exit_code is code
    assert ERRORS[error("x").exit_code] is error


def test_a_cancel_is_a_plain_runner_failure() -> None:
    assert Cancelled.exit_code is ExitCode.FAILED and issubclass(Cancelled, FluxError)


def test_a_process_killed_by_a_signal_reads_as_killed_and_an_unknown_code_as_its_number() -> None:
    assert ExitCode.of(-9) is ExitCode.KILLED  # Popen's return code for SIGKILL
    assert ExitCode.of(9) is None
    assert describe_exit(9) == "exit code 9"


@pytest.mark.parametrize(
    ("code", "retry"),
    [(1, True), (-9, True), (137, True), (9, True), (2, False), (3, False), (4, False)],
)
def test_only_failures_of_the_infrastructure_are_retryable(code: int, retry: bool) -> None:
    assert is_retryable(code) is retry


@pytest.mark.parametrize(
    "progress",
    [Progress(0, "Starting FLUX.1-dev (standard tier)"),
     Progress(55, "Denoising step 3/4", "/ws/Projects/P/take01.preview.png"),
     Progress(100, "Done"),
     Progress(40, "a | step with a bar")],
)
def test_a_progress_line_written_is_the_progress_parsed(progress: Progress) -> None:
    assert parse_progress(progress.line()) == progress


def test_a_progress_line_looks_as_documented_and_its_percent_is_clamped() -> None:
    assert Progress(7, "Loading", "/p.png").line() == "PROGRESS: 7 | Loading | preview=/p.png"
    assert parse_progress("PROGRESS: 250 | too far") == Progress(100, "too far")
    assert parse_progress("SEED: 4") is None and parse_progress("PROGRESS: x | y") is None


def test_a_seed_line_written_is_the_seed_parsed() -> None:
    assert parse_seed(seed_line(MAX_SEED)) == MAX_SEED
    assert parse_seed("PROGRESS: 5 | SEED: 3") is None and parse_seed("SEED: -1") is None


def test_the_failure_message_is_the_runners_error_line() -> None:
    stderr = ["NOTE: true CFG", "Traceback (most recent call last):", "  boom",
              error_line("LoRA file not found: a.safetensors")]
    assert failure_message(stderr, 3) == "LoRA file not found: a.safetensors"


def test_a_runner_that_said_nothing_fails_with_its_exit_codes_reason() -> None:
    assert "killed" in failure_message([], 137) and "137" in failure_message([], -9)
    assert failure_message(["", "  "], 4) == "runner failed (out of GPU memory) without a message"
    assert failure_message(["Segmentation fault"], 139) == "Segmentation fault"


def test_the_preview_goes_beside_the_take() -> None:
    take = Path("/ws/Projects/P/03_Renders/SCENE_01/SHOT_010/SHOT-010_v01_take01.png")
    assert preview_path_for(take) == take.with_name("SHOT-010_v01_take01.preview.png")


def test_the_domain_and_the_runner_share_one_seed_and_prompt_limit() -> None:
    from studio import nodes

    assert (nodes.MAX_SEED, nodes.MAX_PROMPT_CHARS) == (MAX_SEED, MAX_PROMPT_CHARS)
    assert MAX_SEED == 2**32 - 1
