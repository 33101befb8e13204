"""bench/flux_gpu.py --tiny: the GPU bench's code path, run on the CPU with tiny configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_tiny_bench_reports_every_tier_against_the_baseline(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "flux_gpu.py"), "--tiny", "--runs", "3",
         "--steps", "2", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for column in ("s/image", "s/step", "cold s", "alloc GiB", "resv GiB", "x base img"):
        assert column in proc.stdout
    results = {r["case"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"baseline", "low", "standard", "high"}
    for case in results.values():
        assert len(case["runs"]) == 3 and case["s_per_image"] > 0 and case["cold_start_s"] > 0
        assert case["s_per_step"] == case["s_per_image"] / case["steps"]
    assert results["baseline"]["ratio_image"] == 1.0
    assert results["low"]["variant"] == "FLUX.1-schnell"
    assert "float8_e4m3fn" in results["standard"]["settings"]["dtypes"]["transformer"]
    assert results["high"]["settings"]["fp8"] == {}
