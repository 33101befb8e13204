"""REST for a take in flight: DELETE cancels it while it is queued or generating."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from api.auth import require_token
from api.cancel import NoSuchTake, cancel_generation
from api.deps import GatewayDep
from api.routes_projects import TakeOut, _node, take_out

router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], tags=["takes"])


@router.delete("/projects/{project_id}/nodes/{node_id}/takes/{take_id}",
               response_model=TakeOut)
async def cancel_take_route(project_id: str, node_id: str, take_id: str,
                            gateway: GatewayDep) -> TakeOut:
    """Cancel a queued or generating take: 200 with the take (`cancelled`, or still
    `generating` until its worker stops at the next step); 409 when it already ended."""
    project = await gateway.load(project_id)
    node = _node(project, node_id)
    if node.get_take(take_id) is None:
        raise HTTPException(404, f"node {node_id} has no take {take_id!r}")
    try:
        take = await cancel_generation(gateway.store, gateway.relay, project_id, take_id)
    except NoSuchTake as exc:
        raise HTTPException(404, str(exc)) from None
    return take_out(project_id, node, take)
