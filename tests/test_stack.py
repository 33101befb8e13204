"""`make up` / `make demo` (scripts/stack.py): what the local stack starts, decided from the
weights on disk. Light: nothing is started here (tests/test_api_*.py run the pieces for real)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.stack import LOCAL_DEPLOYMENTS, banner, deploy_command, make_plan, parse_args
from tests.stack_helpers import REPO


def weights(models_root: Path, *variants: str) -> None:
    for variant in variants:
        folder = models_root / "flux" / variant
        folder.mkdir(parents=True)
        (folder / "model_index.json").write_text("{}")


def test_up_starts_a_warm_worker_for_each_tier_that_has_weights(tmp_path: Path) -> None:
    weights(tmp_path / "Library" / "AI_Models", "FLUX.1-dev")
    plan = make_plan(parse_args([]), {"STUDIO_WORKSPACE": str(tmp_path)})
    assert plan.worker_tiers == ["standard", "high"]
    assert plan.missing_tiers == ["low"]


def test_up_without_any_weights_starts_no_worker_and_says_which_command_fixes_it(
        tmp_path: Path) -> None:
    plan = make_plan(parse_args([]), {"STUDIO_WORKSPACE": str(tmp_path)})
    assert plan.worker_tiers == []  # clicks wait in the queue, saying why
    assert plan.missing_tiers == ["low", "standard", "high"]
    text = banner(plan, {}, False, None, False)
    assert "standard ready" not in text and "\nready" not in text
    assert "low: no weights (run `make download-models`" in text
    assert "NOT ready: no tier has weights; run `make download-models`" in text


def test_the_api_is_told_which_tiers_to_wait_for(tmp_path: Path) -> None:
    weights(tmp_path / "Library" / "AI_Models", "FLUX.1-dev")
    plan = make_plan(parse_args([]), {"STUDIO_WORKSPACE": str(tmp_path)})
    assert plan.env["STUDIO_TIERS"] == "standard,high"


def test_demo_uses_the_tiny_model_at_every_tier_in_its_own_models_root(tmp_path: Path) -> None:
    plan = make_plan(parse_args(["--demo"]), {"STUDIO_WORKSPACE": str(tmp_path)})
    assert plan.worker_tiers == ["low", "standard", "high"]
    assert plan.env["STUDIO_MODELS_ROOT"] == str(
        tmp_path / ".studio" / "demo-models" / "Library" / "AI_Models")


def test_every_process_shares_one_prefect_server_result_storage_and_workspace(
        tmp_path: Path) -> None:
    plan = make_plan(parse_args(["--prefect-port", "4242"]), {"STUDIO_WORKSPACE": str(tmp_path)})
    assert plan.env["PREFECT_API_URL"] == "http://127.0.0.1:4242/api"
    assert plan.env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"].startswith(str(tmp_path))
    assert plan.env["STUDIO_WORKSPACE"] == str(tmp_path)
    assert plan.env["STUDIO_REPO"] == str(REPO)


def test_only_the_local_deployments_are_deployed() -> None:
    cmd = deploy_command()
    assert cmd[-4:] == ["--name", LOCAL_DEPLOYMENTS[0], "--name", LOCAL_DEPLOYMENTS[1]]
    assert "--all" not in cmd


def test_the_command_explains_itself() -> None:
    done = subprocess.run([sys.executable, "-m", "scripts.stack", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--demo" in done.stdout
