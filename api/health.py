"""Liveness and readiness: /healthz (the API lives; Prefect and each tier as they stand) and
/readyz (200 only when every tier the stack started has a task worker online).

A tier is `starting` (the stack started its worker, none connected yet), `online` or `offline`
(no worker, or no more); each comes with its worker count, queue depth, and a problem such as
missing weights with the command that fixes it.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prefect.settings import PREFECT_API_URL

router = APIRouter(tags=["health"])


async def _prefect() -> str:
    url = str(PREFECT_API_URL.value() or "")
    try:
        async with httpx.AsyncClient(timeout=3) as client:
            (await client.get(f"{url}/health")).raise_for_status()
    except Exception as exc:
        return f"unreachable: {exc}"
    return "ok"


def _body(request: Request, prefect: str) -> dict[str, Any]:
    gateway = request.app.state.gateway
    tiers = gateway.relay.tiers
    states = tiers.states()
    return {
        "api": "ok",
        "prefect_api_url": str(PREFECT_API_URL.value() or ""),
        "prefect": prefect,
        "relay": "connected" if gateway.relay.connected.is_set() else "connecting",
        "tiers": {s.tier.value: s.model_dump(mode="json", exclude={"tier"}) for s in states},
        "online_tiers": sorted(s.tier.value for s in states if s.state == "online"),
        "expected_tiers": sorted(q.value for q in tiers.expected),
        "ready": prefect == "ok" and tiers.ready(),
    }


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """Liveness: 200 while the API runs and Prefect answers; the tiers as they stand."""
    body = _body(request, await _prefect())
    return JSONResponse(status_code=200 if body["prefect"] == "ok" else 503, content=body)


@router.get("/readyz", responses={503: {"description": "not ready: the body says what it "
                                             "waits for"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 only when every tier the stack started has a worker online (any tier,
    when STUDIO_TIERS names none) and Prefect answers; 503 says which tier is not."""
    body = _body(request, await _prefect())
    if not body["ready"]:
        waiting = [f"{name}: {tier['state']}" + (f" ({tier['problem']})" if tier["problem"]
                                                 else "")
                   for name, tier in body["tiers"].items()
                   if (not body["expected_tiers"] or name in body["expected_tiers"])
                   and tier["state"] != "online"]
        body["waiting_for"] = waiting if body["prefect"] == "ok" else ["prefect"]
    return JSONResponse(status_code=200 if body["ready"] else 503, content=body)
