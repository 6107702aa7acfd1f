"""`POST /api/v1/alarms`: alarms forwarded by gateways (protocol §6 step 4 and §7)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Response

from .deps import ServicesDep, require_intake
from .domain import KNOWN_KINDS, incident_ref, utc_now
from .models import AlarmAccepted, AlarmIn, ErrorOut
from .store import NewAlarm

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["intake"], dependencies=[Depends(require_intake)])


@router.post(
    "/alarms",
    summary="Receive an alarm from a gateway (idempotent)",
    description=(
        "Stores the alarm durably and opens an incident. The `Idempotency-Key` header must equal "
        "`event_id`. A repeated key is answered 200 with the same body as the first time and creates "
        "nothing; a repeated key with a different body is refused with 422."
    ),
    status_code=201,
    response_model=AlarmAccepted,
    responses={
        200: {"model": AlarmAccepted, "description": "received before (repeated key); nothing created"},
        201: {"description": "new alarm stored"},
        401: {"model": ErrorOut, "description": "missing or wrong intake token"},
        422: {"model": ErrorOut, "description": "invalid body, or key and body do not match"},
    },
)
async def receive_alarm(
    alarm: AlarmIn,
    svc: ServicesDep,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
) -> Response:
    if idempotency_key != alarm.event_id:
        raise HTTPException(422, "Idempotency-Key header must equal event_id in the body")
    if alarm.kind not in KNOWN_KINDS:
        log.warning("alarm %s has unknown kind %r; accepted as sent", alarm.event_id, alarm.kind)
    outcome = await svc.store.record_alarm(_new_alarm(alarm), now=utc_now())
    if not outcome.same_body:
        log.warning("event %s was sent again with a different body; refused", alarm.event_id)
        raise HTTPException(422, "this Idempotency-Key was already used with a different body")
    answer = AlarmAccepted(event_id=outcome.event_id, incident_id=incident_ref(outcome.incident), state="received")
    if outcome.created:
        log.info(
            "alarm %s (%s%s) opened %s",
            alarm.event_id,
            alarm.kind,
            ", test" if alarm.test else "",
            answer.incident_id,
        )
    else:
        log.info("alarm %s repeated; already in %s", alarm.event_id, answer.incident_id)
    # A Response, not the model, because the status code depends on the outcome.
    return Response(
        content=answer.model_dump_json(),
        status_code=201 if outcome.created else 200,
        media_type="application/json",
    )


def _new_alarm(a: AlarmIn) -> NewAlarm:
    # The fingerprint covers the validated fields only, so a gateway that later adds fields (which
    # are ignored) still matches what it sent before.
    canonical = json.dumps(a.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return NewAlarm(
        event_id=a.event_id,
        gateway_id=a.gateway_id,
        device_id=a.device_id,
        seq=a.seq,
        kind=a.kind,
        test=a.test,
        lat=a.location.lat,
        lon=a.location.lon,
        address=a.location.address,
        area=a.location.area,
        raised_at=a.raised_at,
        received_at=a.received_at,
        fingerprint=hashlib.sha256(canonical.encode()).hexdigest(),
    )
