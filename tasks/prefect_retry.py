"""Our own backoff around Prefect calls, on top of the client's: a take never fails for a
transient database lock.

Prefect's HTTP transport retries 408/429/502/503 `PREFECT_CLIENT_MAX_RETRIES` times (default 5,
about a minute). Under a burst on SQLite that is not enough: bench/scale.py measured 2 of 100
clicks fired at once failing with "503 Service Unavailable" on `POST /task_runs/` after the
client's retries. These helpers keep retrying transient answers, with capped exponential
backoff and jitter, for `STUDIO_PREFECT_RETRY_SECONDS` (default 300 s) before giving up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_STATUS = {408, 429, 502, 503, 504}


def retry_seconds() -> float:
    return float(os.environ.get("STUDIO_PREFECT_RETRY_SECONDS") or 300)


def is_transient(exc: BaseException) -> bool:
    """A 503-like answer or a dropped connection (PrefectHTTPStatusError is an httpx one)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in TRANSIENT_STATUS
    return isinstance(exc, httpx.TransportError)


# A server that refuses connections is down (a restart): asking again every few seconds costs
# it nothing, and a longer pause only delays the hand-out once it is back. A server that answers
# 503 is overloaded: back off further.
ABSENT_MAX_PAUSE = 2.0
BUSY_MAX_PAUSE = 15.0


def _pause(attempt: int) -> float:
    return min(BUSY_MAX_PAUSE, 2.0 ** attempt) * random.uniform(0.5, 1.0)


def _pause_after(exc: BaseException, attempt: int) -> float:
    pause = _pause(attempt)
    if isinstance(exc, httpx.ConnectError):
        pause = min(pause, ABSENT_MAX_PAUSE * random.uniform(0.5, 1.0))
    return pause


def retry_transient(call: Callable[[], T], what: str, seconds: float | None = None) -> T:
    deadline = time.monotonic() + (retry_seconds() if seconds is None else seconds)
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            pause = _pause_after(exc, attempt)
            if not is_transient(exc) or time.monotonic() + pause > deadline:
                raise
            log.warning("%s: %s; retrying in %.1f s", what, exc, pause)
            time.sleep(pause)
            attempt += 1


async def aretry_transient(call: Callable[[], Awaitable[T]], what: str,
                           seconds: float | None = None) -> T:
    deadline = time.monotonic() + (retry_seconds() if seconds is None else seconds)
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            pause = _pause_after(exc, attempt)
            if not is_transient(exc) or time.monotonic() + pause > deadline:
                raise
            log.warning("%s: %s; retrying in %.1f s", what, exc, pause)
            await asyncio.sleep(pause)
            attempt += 1
