"""The runner image as written (no Docker engine here): Dockerfile stages, user, command,
requirements, the compose tags, and the /app/src layout the image's command relies on."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
FLUX = REPO / "runners" / "flux"
TAGS = {"low": "gms-flux:1.0-low-vram", "standard": "gms-flux:1.0-standard",
        "high": "gms-flux:1.0-high-fidelity"}


def stages() -> list[dict]:
    """The Dockerfile as stages: {'from': ..., 'name': ..., 'instructions': [(op, args)]}."""
    text = re.sub(r"\\\n", " ", (FLUX / "Dockerfile").read_text())
    out: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        if op.upper() == "FROM":
            image, _, name = args.partition(" AS ")
            out.append({"from": image.strip(), "name": name.strip(), "instructions": []})
        elif out:
            out[-1]["instructions"].append((op.upper(), args.strip()))
    return out


def test_one_dockerfile_builds_the_runner_and_the_flow_run_image_as_uid_1000() -> None:
    text = (FLUX / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04" in text
    by_name = {stage["name"]: stage for stage in stages()}
    assert by_name["base"]["from"] == "${BASE_IMAGE}"
    runner, studio = by_name["runner"], by_name["studio"]
    # One install of the runner's dependencies (torch, diffusers), shared by both images.
    assert by_name["deps"]["from"] == "base"
    assert any(op == "RUN" and "-r /tmp/runner-requirements.txt" in args
               for op, args in by_name["deps"]["instructions"])
    for stage in (runner, studio):
        ops = stage["instructions"]
        assert stage["from"] == "deps"
        assert [args for op, args in ops if op == "USER"] == ["1000:1000"]
        assert ("ARG", "QUALITY=standard") in ops
        assert any(op == "ENV" and "QUALITY=${QUALITY}" in args for op, args in ops)
    assert json.loads(next(args for op, args in runner["instructions"] if op == "CMD")) == [
        "python", "src/run_flux_generation.py"]
    # The runner image gets the runner package only; the flow-run image the whole project.
    runner_sources = {args.split()[0] for op, args in runner["instructions"]
                      if op == "COPY" and "--from=" not in args}
    assert runner_sources == {"runners/__init__.py", "runners/flux/",
                              "runners/flux/run_flux_generation.py"}
    assert ("WORKDIR", "/app") in studio["instructions"]
    # Every COPY source exists in the build context (the repository root) and is sent to the
    # builder: the ignore file excludes everything it does not name again.
    ignore = (FLUX / "Dockerfile.dockerignore").read_text().splitlines()
    sent = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for stage in by_name.values():
        for op, args in stage["instructions"]:
            if op == "COPY" and "--from=" not in args:
                for source in [a for a in args.split() if not a.startswith("--")][:-1]:
                    source = source.replace("${RUNNER_REQUIREMENTS}",
                                            "runners/flux/requirements.txt")
                    assert (REPO / source).exists(), source
                    assert source.split("/")[0] in sent, f"{source} is not in the build context"


def test_requirements_are_pinned_ranges_with_torch_from_the_cuda_index() -> None:
    text = (FLUX / "requirements.txt").read_text()
    lines = [ln.split("#")[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    assert "--extra-index-url https://download.pytorch.org/whl/cu124" in lines
    reqs = {r.name.lower(): r for r in map(Requirement, (ln for ln in lines if ln[0] != "-"))}
    for name in ("torch", "diffusers", "transformers", "accelerate", "peft", "safetensors"):
        spec = str(reqs[name].specifier)
        assert ">=" in spec and "<" in spec.replace("<=", ""), (name, spec)
    assert not {"prefect", "studio", "fastapi"} & set(reqs)  # the image stays lean


def test_compose_builds_the_three_tier_tags_and_an_attached_debug_service() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.flux.yml").read_text())
    services = compose["services"]
    by_tag = {s["image"]: s for s in services.values()}
    for quality, tag in TAGS.items():
        service = by_tag[tag]
        assert service["build"]["args"]["QUALITY"] == quality
        assert (service["build"]["context"], service["build"]["dockerfile"],
                service["build"]["target"]) == (".", "runners/flux/Dockerfile", "runner")
        assert "generative_studio_workspace:/workspace:rw" in service["volumes"]
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == [
            "gpu"]
        assert service["scale"] == 0  # `up` starts only the debug container
    debug = services["flux-debug"]
    assert debug["command"] == ["sleep", "infinity"] and debug["tty"] and debug["stdin_open"]
    assert "generative_studio_workspace:/workspace:rw" in debug["volumes"]
    core = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    volume = core["volumes"]["generative_studio_workspace"]
    assert volume["name"] == "generative_studio_workspace"
    assert volume["driver_opts"]["o"] == "bind"


def test_the_image_layout_runs_the_script_from_src(tmp_path: Path) -> None:
    """/app/src/run_flux_generation.py beside /app/src/runners/flux, as the Dockerfile copies."""
    src = tmp_path / "app" / "src"
    (src / "runners").mkdir(parents=True)
    shutil.copy(REPO / "runners" / "__init__.py", src / "runners" / "__init__.py")
    shutil.copytree(FLUX, src / "runners" / "flux",
                    ignore=shutil.ignore_patterns("__pycache__", "Dockerfile*", "*.txt", "*.md"))
    shutil.copy(FLUX / "run_flux_generation.py", src / "run_flux_generation.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PROMPT", "OUTPUT_PATH", "PYTHONPATH")}
    proc = subprocess.run([sys.executable, "src/run_flux_generation.py"], cwd=tmp_path / "app",
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "ERROR: PROMPT is required" in proc.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, 'src'); "
         "import runners.flux.generation as g; print(g.__file__)"],
        cwd=tmp_path / "app", env=env, capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(src)
