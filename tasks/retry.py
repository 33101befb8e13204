"""Retries of a take for infrastructure failures only.

A runner killed under the take, a lost connection or a full disk may pass on a second try; bad
input (exit 2), a missing model or LoRA (exit 3) and out of GPU memory (exit 4) fail the same
way every time, so they are not retried.
"""

from __future__ import annotations

from typing import Any

from runners.flux.contract import is_retryable
from runners.strategies import RunnerFailed

RETRIES = 2
RETRY_DELAY_S = 5


def is_infrastructure_failure(exc: BaseException) -> bool:
    if isinstance(exc, RunnerFailed):
        return is_retryable(exc.exit_code)
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


def infrastructure_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry only when the failure was the infrastructure's."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - any failure is classified, none re-raised
        return is_infrastructure_failure(exc)
    return False


def render_options() -> dict[str, Any]:
    """`with_options(...)` of a tier task inside a batch."""
    return {"retries": RETRIES, "retry_delay_seconds": RETRY_DELAY_S,
            "retry_condition_fn": infrastructure_only}
