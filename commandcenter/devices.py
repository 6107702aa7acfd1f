"""`/api/v1/devices`: the state of the buttons themselves, for supervisors (docs/gateway.md, "Supervision")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from siaga.web import StrictRoute

from .deps import ActorDep, ServicesDep
from .models import DeviceFaultOut, ErrorOut

router = APIRouter(
    route_class=StrictRoute,
    prefix="/api/v1/devices",
    tags=["devices"],
    responses={
        401: {"model": ErrorOut, "description": "not signed in: no or wrong token or session"},
        403: {"model": ErrorOut, "description": "agency viewers do not see device faults"},
    },
)


@router.get(
    "/faults",
    summary="Faults that are active now",
    description=(
        "The latest report of each (device, fault) whose state is active: a device that went offline "
        "and came back is not listed. Most recently started first. The full history stays in the database."
    ),
    response_model=list[DeviceFaultOut],
)
async def active_faults(
    svc: ServicesDep,
    operator: ActorDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[DeviceFaultOut]:
    return [DeviceFaultOut.of(f) for f in await svc.store.active_faults(limit=limit)]
