"""bench/scale.py --quick: both profiles, every scenario, reduced sizes, in the suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack_helpers import REPO

pytestmark = pytest.mark.stack


@pytest.mark.timeout(1800)
def test_the_quick_scale_bench_loses_and_duplicates_nothing_on_either_profile(
        tmp_path: Path) -> None:
    subprocess.run(["bash", "scripts/setup_production.sh"], cwd=REPO, check=True, timeout=600)
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, "bench/scale.py", "--quick", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "production/SQLite" in done.stdout
    report = json.loads(out.read_text())
    sizes = report["sizes"]
    for profile in ("embedded", "production"):
        result = report["results"][profile]
        batch, clicks, clients = result["batch"], result["clicks"], result["clients"]
        assert batch["state"] == "COMPLETED"
        assert (batch["lost"], batch["duplicated"]) == (0, 0)
        assert batch["completed"] == sizes["nodes"] * sizes["takes"]
        assert clicks["completed"] == clicks["successes"] == sizes["clicks"]
        assert clicks["success_messages"] == sizes["clicks"]  # each announced once
        assert clicks["distinct_numbers"] and clicks["duplicated"] == 0
        assert clients["clients_exact"] == sizes["clients"], clients
        assert clients["lost"] == 0
        # Every end message matched project.json when the scenario ended, and stayed so.
        assert clicks["end_contradictions"] == clients["end_contradictions"] == 0, \
            (clicks["contradicted"], clients["contradicted"])
