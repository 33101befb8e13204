#!/usr/bin/env python3
"""The FLUX Function Runner's entry point: one take from the env-var contract, then exit.

    PROMPT="a fox" OUTPUT_PATH=/workspace/.../take01.png python run_flux_generation.py

Env (ARCHITECTURE.md, docs/flux.md): PROMPT, OUTPUT_PATH (required); NEGATIVE_PROMPT, SEED,
CFG_SCALE, STEPS, WIDTH, HEIGHT, QUALITY (low|standard|high), MODEL_DIR, STUDIO_WORKSPACE
(default /workspace), PREVIEW_PATH, PREVIEW_EVERY, LORAS (JSON), PIPELINE_ID.

Stdout: ``SEED: <n>``, then ``PROGRESS: <0-100> | <text>[ | preview=<path>]`` lines rising to 100.
Exit codes (``ExitCode``): 0 image written at OUTPUT_PATH; 2 bad input; 3 model (or LoRA file)
missing; 4 out of memory; 1 anything else. On failure nothing is at OUTPUT_PATH and the last
stderr line is ``ERROR: <what happened and what to do>``. Every line and code is written by
``runners/flux/contract.py``.

Runs from a checkout (``python runners/flux/run_flux_generation.py``) and inside the image
(``python src/run_flux_generation.py``, the package beside it at ``src/runners/flux``).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType


def _import_runner() -> None:
    """Make ``runners.flux`` importable from either layout, without the rest of the project."""
    try:
        import runners.flux  # noqa: F401  (installed, or the image layout: src/runners/flux)
    except ImportError:
        here = Path(__file__).resolve().parent
        for root in (here.parent.parent, here):  # checkout: <root>/runners/flux/<this file>
            if (root / "runners" / "flux" / "contract.py").is_file():
                sys.path.insert(0, str(root))
                break


_import_runner()

from runners.flux.contract import (  # noqa: E402
    Cancelled,
    ExitCode,
    FluxError,
    FluxRequest,
    Progress,
    error_line,
    note_line,
    output_line,
    seed_line,
)
from runners.flux.generation import generate  # noqa: E402
from runners.flux.plan import plan_take  # noqa: E402


def _progress(percent: int, text: str, preview: str | None) -> None:
    print(Progress(percent, text, preview).line(), flush=True)


def _error(message: str) -> None:
    print(error_line(message), file=sys.stderr, flush=True)


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # docker stop sends SIGTERM: unwind normally so temporary files are removed.
    raise Cancelled(f"stopped by signal {signum}")


def _quiet_libraries() -> None:
    # Keep stderr for messages a person should read; never reach the network for weights.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # Validate before torch/diffusers are imported: bad input exits in milliseconds.
        plan = plan_take(FluxRequest.from_env(os.environ))
    except FluxError as exc:
        _error(str(exc))
        return exc.exit_code
    print(seed_line(plan.seed), flush=True)
    for note in plan.notes:
        print(note_line(note), file=sys.stderr, flush=True)
    _quiet_libraries()
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        result = generate(plan, _progress)
    except FluxError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return ExitCode.FAILED
    except Exception as exc:  # noqa: BLE001  (the contract: exit 1 with a readable line)
        traceback.print_exc(file=sys.stderr)
        _error(f"unexpected failure: {type(exc).__name__}: {exc}")
        return ExitCode.FAILED
    print(output_line(result.output_path), flush=True)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
