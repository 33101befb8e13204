"""The FLUX runner script as a worker or container runs it: env in; PNG, PROGRESS, exit code out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runners.flux.contract import ENV_NAMES as CONTRACT
from runners.flux.metadata import read_metadata

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "runners" / "flux" / "run_flux_generation.py"
TAKE = "Projects/Script/03_Renders/SCENE_01/SHOT_010"


def runner_env(workspace: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONTRACT}
    # One torch thread: the 2-core test machine is shared, tiny ops lose time in thread barriers.
    env.update(STUDIO_WORKSPACE=str(workspace), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.update(values)
    return env


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT)], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def progress_of(stdout: str) -> list[tuple[int, str]]:
    out = []
    for line in stdout.splitlines():
        if line.startswith("PROGRESS: "):
            percent, _, text = line.removeprefix("PROGRESS: ").partition(" | ")
            out.append((int(percent), text))
    return out


@pytest.fixture(scope="module")
def two_takes(tiny_model_dir: Path) -> list[tuple[int, str, str, Path]]:
    """Two script runs with the same parameters and seed, started together (the slow part,
    importing torch + diffusers, overlaps)."""
    procs = []
    for n in (1, 2):
        out = tiny_model_dir / TAKE / f"SHOT-010_v01_take{n:02d}.png"
        env = runner_env(tiny_model_dir, PROMPT="a lighthouse at dusk", SEED="7", STEPS="4",
                         WIDTH="256", HEIGHT="256", CFG_SCALE="3.5", QUALITY="standard",
                         PIPELINE_ID="flux-dev-fp8", OUTPUT_PATH=str(out))
        procs.append((start(env), out))
    results = []
    for proc, out in procs:
        stdout, stderr = proc.communicate(timeout=300)
        results.append((proc.returncode, stdout, stderr, out))
    return results


def test_script_writes_a_png_of_the_requested_size(two_takes: list) -> None:
    from PIL import Image

    code, stdout, stderr, out = two_takes[0]
    assert code == 0, stderr
    assert stderr == ""  # stderr is for messages a person must read; a clean take has none
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (256, 256)
    assert f"OUTPUT: {out}" in stdout
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary file left"


def test_progress_lines_rise_to_100_and_carry_previews(two_takes: list) -> None:
    code, stdout, _, out = two_takes[0]
    steps = progress_of(stdout)
    percents = [p for p, _ in steps]
    assert percents == sorted(percents) and percents[0] == 0 and percents[-1] == 100
    assert any(text.startswith("Denoising step 4/4") for _, text in steps)
    preview = out.with_name(f"{out.stem}.preview.png")
    previews = [text for _, text in steps if f"preview={preview}" in text]
    assert len(previews) == 4  # ~4 previews by default
    assert previews[1].startswith("Denoising step 2/4")
    assert preview.is_file()


def test_seed_is_reported_and_the_png_carries_its_parameters(two_takes: list) -> None:
    _, stdout, _, out = two_takes[0]
    assert "SEED: 7" in stdout.splitlines()
    meta = read_metadata(out)
    assert meta["prompt"] == "a lighthouse at dusk"
    assert (meta["seed"], meta["steps"], meta["cfg_scale"]) == (7, 4, 3.5)
    assert (meta["width"], meta["height"]) == (256, 256)
    assert (meta["quality"], meta["variant"], meta["pipeline_id"]) == (
        "standard", "FLUX.1-dev", "flux-dev-fp8")
    assert meta["negative_prompt"] == ""


def test_same_parameters_and_seed_give_a_byte_identical_png(two_takes: list) -> None:
    (code1, _, err1, out1), (code2, _, err2, out2) = two_takes
    assert code1 == code2 == 0, err1 + err2
    assert out1.read_bytes() == out2.read_bytes()


def test_the_script_and_an_in_process_take_agree_and_another_seed_differs(
    two_takes: list, tiny_model_dir: Path
) -> None:
    from runners.flux.generation import FluxRequest, generate

    def take(seed: int, name: str) -> bytes:
        out = tiny_model_dir / TAKE / name
        generate(FluxRequest(prompt="a lighthouse at dusk", seed=seed, steps=4, width=256,
                             height=256, cfg_scale=3.5, quality="standard",
                             pipeline_id="flux-dev-fp8", output_path=out,
                             workspace=tiny_model_dir))
        return out.read_bytes()

    script_png = two_takes[0][3].read_bytes()
    assert take(7, "in_process_seed7.png") == script_png
    assert take(8, "in_process_seed8.png") != script_png


BAD = [
    ({"STEPS": "0"}, 2, "STEPS must be between 1 and 100"),
    ({"STEPS": "four"}, 2, "STEPS must be a whole number"),
    ({"CFG_SCALE": "nan"}, 2, "CFG_SCALE must be a finite number"),
    ({"CFG_SCALE": "25"}, 2, "CFG_SCALE must be a finite number between 0 and 20"),
    ({"WIDTH": "1000"}, 2, "WIDTH must be a multiple of 16"),
    ({"HEIGHT": "128"}, 2, "HEIGHT must be between 256 and 2048"),
    ({"PROMPT": ""}, 2, "PROMPT is required"),
    ({"PROMPT": "   "}, 2, "PROMPT is required"),
    ({"SEED": "-1"}, 2, "SEED must be between 0"),
    ({"QUALITY": "ultra"}, 2, "QUALITY must be one of low, standard, high"),
    ({"NEGATIVE_PROMPT": "blurry", "CFG_SCALE": "1"}, 2, "a negative prompt needs CFG_SCALE > 1"),
    ({"LORAS": "{not json"}, 2, "LORAS must be a JSON list"),
    ({"LORAS": '[{"path": "../outside.safetensors", "kind": "style"}]'}, 2,
     "LORAS[0].path must lie inside STUDIO_WORKSPACE"),
    ({"LORAS": '[{"path": "Library/LoRAs/nobody.safetensors", "kind": "character"}]'}, 3,
     "LoRA file not found: Library/LoRAs/nobody.safetensors"),
]


@pytest.mark.parametrize(("values", "code", "message"), BAD, ids=[str(b[0]) for b in BAD])
def test_a_bad_value_exits_with_its_code_a_readable_message_and_no_file(
    tmp_path: Path, values: dict[str, str], code: int, message: str
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    out = workspace / TAKE / "take01.png"
    env = runner_env(workspace, PROMPT="a fox", OUTPUT_PATH=str(out), WIDTH="256", HEIGHT="256")
    env.update(values)
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == code, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: ") and message in last, last
    assert not out.exists()


@pytest.mark.parametrize(
    ("where", "code", "message"),
    [
        ("outside", 2, "OUTPUT_PATH must lie inside STUDIO_WORKSPACE"),
        ("escape", 2, "OUTPUT_PATH must lie inside STUDIO_WORKSPACE"),
        ("unwritable", 2, "OUTPUT_PATH: cannot write in"),
        ("not_png", 2, "OUTPUT_PATH must end with .png"),
        ("no_model", 3, "FLUX.1-dev model not found at"),
    ],
)
def test_a_bad_place_exits_with_its_code_and_writes_nothing(
    tmp_path: Path, where: str, code: int, message: str
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "a_file").write_text("not a folder")
    if where != "no_model":  # validation only looks for the model's index file
        model = workspace / "Library" / "AI_Models" / "flux" / "FLUX.1-dev"
        model.mkdir(parents=True)
        (model / "model_index.json").write_text("{}")
    out = {
        "outside": tmp_path / "elsewhere" / "take.png",
        "escape": workspace / "Projects" / ".." / ".." / "escape.png",
        "unwritable": workspace / "a_file" / "take.png",  # folder is a file: root ignores modes
        "not_png": workspace / "take.jpg",
        "no_model": workspace / "Projects" / "take.png",
    }[where]
    env = runner_env(workspace, PROMPT="a fox", OUTPUT_PATH=str(out), WIDTH="256", HEIGHT="256")
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not out.exists() and not (tmp_path / "escape.png").exists()
    if where == "no_model":
        assert "make download-models" in proc.stderr
        assert not out.parent.exists()  # nothing is created for a take that cannot run


def test_input_is_validated_before_torch_is_imported(tmp_path: Path) -> None:
    """Bad input is refused in milliseconds: validation needs neither torch nor diffusers."""
    code = (
        "import sys\n"
        "import os\n"
        "from runners.flux.contract import FluxRequest, ModelMissing\n"
        "from runners.flux.plan import plan_take\n"
        "try:\n"
        "    plan_take(FluxRequest.from_env(os.environ))\n"
        "except ModelMissing:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    env = runner_env(tmp_path, PROMPT="a fox", OUTPUT_PATH=str(tmp_path / "x.png"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
