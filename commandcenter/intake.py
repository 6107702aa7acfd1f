"""What gateways send (protocol §6 step 4 and §7): alarms, one at a time or in batches, and device faults."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Response
from pydantic import BaseModel, ValidationError

from siaga import contract
from siaga.web import MIB, StrictRoute

from .deps import ServicesDep, require_intake
from .domain import KNOWN_KINDS, incident_ref, utc_now
from .models import (
    EVENT_ID,
    UNFINGERPRINTED_FIELDS,
    AlarmAccepted,
    AlarmBatchIn,
    AlarmIn,
    BatchOut,
    BatchResult,
    ErrorOut,
    FaultAccepted,
    FaultBatchIn,
    FaultBatchOut,
    FaultBatchResult,
    FaultIn,
)
from .plumbing import REPORT_BODY_MAX, GatewayReportIn, record_report
from .store import IntakeOutcome, NewAlarm, NewFault

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")

# 500 alarms (models.MAX_BATCH) of about 600 bytes each, with room for long group lists: 1 MiB. A
# gateway splits a batch that is larger (gateway/adapters.py). Refused while it arrives (413).
BATCH_BODY_MAX = 1 * MIB

router = APIRouter(prefix="/api/v1", tags=["intake"], dependencies=[Depends(require_intake)],
                   route_class=StrictRoute, max_body_size=BATCH_BODY_MAX)

IdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", pattern=EVENT_ID)]

_INTAKE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong intake token"},
    422: {"model": ErrorOut, "description": "invalid body, or key and body do not match"},
}


@router.post(
    "/alarms",
    summary="Receive an alarm from a gateway (idempotent)",
    description=(
        "Stores the alarm durably. It opens an incident, or, when its `incident_key` names an incident "
        "that is still open, attaches to that incident. The `Idempotency-Key` header must equal "
        "`event_id`. A repeated key is answered 200 with the same body as the first time and creates "
        "nothing; a repeated key with a different body is refused with 422."
    ),
    status_code=201,
    response_model=AlarmAccepted,
    responses={
        200: {"model": AlarmAccepted, "description": "received before (repeated key); nothing created"},
        201: {"description": "new alarm stored"},
        **_INTAKE_ERRORS,
    },
)
async def receive_alarm(alarm: AlarmIn, svc: ServicesDep, idempotency_key: IdempotencyKey) -> Response:
    if idempotency_key != alarm.event_id:
        raise HTTPException(422, "Idempotency-Key header must equal event_id in the body")
    _warn_unknown_kind(alarm)
    outcome = await svc.store.record_alarm(_storable(new_alarm, alarm), now=utc_now())
    if not outcome.same_body:
        log.warning("event %s was sent again with a different body; refused", alarm.event_id)
        raise HTTPException(422, "this Idempotency-Key was already used with a different body")
    answer = AlarmAccepted(event_id=outcome.event_id, incident_id=incident_ref(outcome.incident), state="received")
    if outcome.created:
        log.info(
            "alarm %s (%s%s) %s %s",
            alarm.event_id,
            alarm.kind,
            ", test" if alarm.test else "",
            "opened" if outcome.opened else "attached to",
            answer.incident_id,
        )
    else:
        log.info("alarm %s repeated; already in %s", alarm.event_id, answer.incident_id)
    if outcome.reported:
        svc.notify_callbacks()
    if outcome.opened:
        svc.notify_escalation()
    if outcome.created:
        await svc.publish([outcome.incident])
    # A Response, not the model, because the status code depends on the outcome.
    return Response(
        content=answer.model_dump_json(),
        status_code=201 if outcome.created else 200,
        media_type="application/json",
    )


@router.post(
    "/alarms/batch",
    summary="Receive up to 500 alarms from a gateway in one transaction",
    description=(
        "Each alarm's `event_id` is its idempotency key (there is no header). The alarms are taken in "
        "the order given, in one transaction, and grouped exactly as if they had been sent one by one. "
        "The answer has one result per alarm, in the same order: `created`, `duplicate` (received "
        "before; the incident of the first time) or `rejected` (a permanent refusal of that alarm "
        "alone: invalid, or a key reused with a different body). A rejected alarm does not stop the "
        "others."
    ),
    response_model=BatchOut,
    responses=_INTAKE_ERRORS,
)
async def receive_batch(batch: AlarmBatchIn, svc: ServicesDep) -> Response:
    results: list[BatchResult | None] = [None] * len(batch.alarms)
    valid, invalid = _validate_each(batch.alarms, AlarmIn, new_alarm, "alarm")
    for i, event_id, error in invalid:
        results[i] = _rejected(event_id, error)
    for _, alarm, _ in valid:
        _warn_unknown_kind(alarm)
    outcomes = await svc.store.record_alarms([new for _, _, new in valid], now=utc_now())
    for (i, alarm, _), outcome in zip(valid, outcomes, strict=True):
        results[i] = _batch_result(alarm, outcome)
    final = [r for r in results if r is not None]
    assert len(final) == len(results)

    created = sum(r.status == "created" for r in final)
    opened = sum(o.opened for o in outcomes)
    log.info(
        "batch of %d alarms: %d created (%d incidents opened), %d duplicate, %d rejected",
        len(final),
        created,
        opened,
        sum(r.status == "duplicate" for r in final),
        sum(r.status == "rejected" for r in final),
    )
    if any(o.reported for o in outcomes):
        svc.notify_callbacks()
    if opened:
        svc.notify_escalation()
    await svc.publish(list(dict.fromkeys(o.incident for o in outcomes if o.created)))
    # Serialised here rather than through response_model, which would validate 500 results again.
    return Response(content=BatchOut(results=final).model_dump_json(), media_type="application/json")


@router.post(
    "/faults",
    summary="Receive a device fault from a gateway (idempotent)",
    description=(
        "`offline`, `low_battery`, `tamper`, `bad_message`, `undelivered`, `on_backup_path` (offline on MQTT "
        "but heard by SMS) or `backup_path_down` (the periodic test SMS is missing), becoming active or "
        "(`active: false`) clearing. Stored in "
        "the fault history and the device's current fault state; never opens an incident. The "
        "`Idempotency-Key` header must equal `event_id`; a repeated key is answered 200 and creates "
        "nothing, a repeated key with a different body is refused with 422."
    ),
    status_code=201,
    response_model=FaultAccepted,
    responses={
        200: {"model": FaultAccepted, "description": "received before (repeated key); nothing changed"},
        201: {"description": "new fault report stored"},
        **_INTAKE_ERRORS,
    },
)
async def receive_fault(fault: FaultIn, svc: ServicesDep, idempotency_key: IdempotencyKey) -> Response:
    if idempotency_key != fault.event_id:
        raise HTTPException(422, "Idempotency-Key header must equal event_id in the body")
    outcome = await svc.store.record_fault(_storable(new_fault, fault), now=utc_now())
    if not outcome.same_body:
        log.warning("fault %s was sent again with a different body; refused", fault.event_id)
        raise HTTPException(422, "this Idempotency-Key was already used with a different body")
    if outcome.created:
        state = "active" if fault.active else "cleared"
        log.info("fault %s: %s %s on %s", fault.event_id, fault.fault, state, fault.device_id)
        svc.live.publish_fault(fault.device_id, fault.fault, fault.active, fault.at)
    else:
        log.info("fault %s repeated", fault.event_id)
    answer = FaultAccepted(event_id=fault.event_id, state="received")
    return Response(
        content=answer.model_dump_json(),
        status_code=201 if outcome.created else 200,
        media_type="application/json",
    )


@router.post(
    "/faults/batch",
    summary="Receive up to 500 device faults from a gateway in one transaction",
    description=(
        "Each report's `event_id` is its idempotency key (there is no header). Stored in the order "
        "given, in one transaction, as if sent one by one. One result per report, in the same order: "
        "`created`, `duplicate` (received before) or `rejected` (invalid, or a key reused with a "
        "different body); a rejected report does not stop the others. A wave of last wills (a power "
        "cut) is thousands of reports: one request per 500 instead of one each."
    ),
    response_model=FaultBatchOut,
    responses=_INTAKE_ERRORS,
)
async def receive_fault_batch(batch: FaultBatchIn, svc: ServicesDep) -> Response:
    results: list[FaultBatchResult | None] = [None] * len(batch.faults)
    valid, invalid = _validate_each(batch.faults, FaultIn, new_fault, "fault")
    for i, event_id, error in invalid:
        results[i] = FaultBatchResult(event_id=event_id, status="rejected", error=error)
    outcomes = await svc.store.record_faults([new for _, _, new in valid], now=utc_now())
    for (i, fault, _), outcome in zip(valid, outcomes, strict=True):
        if not outcome.same_body:
            log.warning("fault %s was sent again with a different body; rejected", fault.event_id)
            results[i] = FaultBatchResult(event_id=fault.event_id, status="rejected",
                                          error="this event_id was already used with a different body")
            continue
        results[i] = FaultBatchResult(event_id=fault.event_id, status="created" if outcome.created else "duplicate",
                                      error=None)
        if outcome.created:
            svc.live.publish_fault(fault.device_id, fault.fault, fault.active, fault.at)
    final = [r for r in results if r is not None]
    assert len(final) == len(results)
    log.info("batch of %d faults: %d created, %d duplicate, %d rejected", len(final),
             sum(r.status == "created" for r in final), sum(r.status == "duplicate" for r in final),
             sum(r.status == "rejected" for r in final))
    return Response(content=FaultBatchOut(results=final).model_dump_json(), media_type="application/json")


@router.post(
    "/gateways/report",
    summary="Receive a gateway's self-report (path supervision)",
    description=(
        "Sent by each gateway instance every `report_every_s` seconds (protocol §7, \"Gateway report\"). Kept "
        "as the instance's latest report; an instance whose latest report is older than `[plumbing] "
        "silence_s` is a room-wide fault (`GET /api/v1/gateways`) until it reports again. Nothing is "
        "answered but the status."
    ),
    status_code=204,
    response_class=Response,
    responses={204: {"description": "report stored"}, **_INTAKE_ERRORS},
    max_body_size=REPORT_BODY_MAX,
)
async def receive_gateway_report(report: GatewayReportIn, svc: ServicesDep) -> Response:
    try:
        await record_report(svc.store, report, now=utc_now())
    except _UNSTORABLE as exc:
        raise HTTPException(422, f"the report cannot be stored ({type(exc).__name__})") from None
    return Response(status_code=204)


# What turning a valid body into the store's record may still raise (a time that cannot be made
# UTC, text that cannot be encoded): the models refuse all of these first, so this is the second lock.
_UNSTORABLE = (ValueError, OverflowError)


def _validate_each(
    entries: list[Any], model: type[M], record: Callable[[M], R], what: str
) -> tuple[list[tuple[int, M, R]], list[tuple[int, str | None, str]]]:
    """A batch's entries one by one: (index, entry, the store's record of it) of the valid ones and
    (index, event id if it has a usable one, why) of the others, so that one invalid entry is
    rejected alone and never costs the batch's valid entries their place in the transaction."""
    valid: list[tuple[int, M, R]] = []
    invalid: list[tuple[int, str | None, str]] = []
    for i, raw in enumerate(entries):
        try:
            entry = model.model_validate(raw)
            valid.append((i, entry, record(entry)))
            continue
        except ValidationError as exc:
            error = _explain(exc)
        except _UNSTORABLE as exc:
            error = f"{what}: cannot be stored ({type(exc).__name__})"
        event_id = _echoable_event_id(raw)
        invalid.append((i, event_id, error))
        # %r, cut short: the event_id of an invalid entry is unchecked text (newlines, any length).
        log.warning("batch %s %d (%.100r) is invalid; rejected: %s", what, i, event_id, error)
    return valid, invalid


def _echoable_event_id(raw: Any) -> str | None:
    """The event_id of an invalid entry, to name it in its result: only a string that the JSON
    answer can carry (not one with a lone surrogate)."""
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    if not isinstance(event_id, str) or contract.utf8_length(event_id) is None:
        return None
    return event_id


def _storable(record: Callable[[M], R], body: M) -> R:
    """The store's record of a single valid body, or 422 (see _UNSTORABLE)."""
    try:
        return record(body)
    except _UNSTORABLE as exc:
        raise HTTPException(422, f"the body cannot be stored ({type(exc).__name__})") from None


def _warn_unknown_kind(alarm: AlarmIn) -> None:
    if alarm.kind not in KNOWN_KINDS:
        log.warning("alarm %s has unknown kind %r; accepted as sent", alarm.event_id, alarm.kind)


def _rejected(event_id: str | None, error: str) -> BatchResult:
    return BatchResult(event_id=event_id, status="rejected", incident_id=None, state=None, error=error)


def _batch_result(alarm: AlarmIn, outcome: IntakeOutcome) -> BatchResult:
    if not outcome.same_body:
        log.warning("event %s was sent again with a different body; rejected", alarm.event_id)
        return _rejected(alarm.event_id, "this event_id was already used with a different body")
    log.debug(
        "batch alarm %s %s %s",
        alarm.event_id,
        ("opened" if outcome.opened else "attached to") if outcome.created else "repeated; already in",
        incident_ref(outcome.incident),
    )
    return BatchResult(
        event_id=alarm.event_id,
        status="created" if outcome.created else "duplicate",
        incident_id=incident_ref(outcome.incident),
        state="received",
        error=None,
    )


def _explain(exc: ValidationError) -> str:
    # Field and message only: the input values are not echoed back.
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'alarm'}: {e['msg']}" for e in exc.errors()[:5]]
    # Defensive: the batch answer must stay encodable (no lone surrogate) whatever an error names.
    return "; ".join(parts)[:500].encode("utf-8", "replace").decode("utf-8")


def _fingerprint(fields: dict[str, Any]) -> str:
    # Do not change the encoding: alarms stored by earlier versions keep the fingerprints made so.
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_alarm(a: AlarmIn) -> NewAlarm:
    # The fingerprint covers the validated fields only, so a gateway that later adds fields (which
    # are ignored) still matches what it sent before; the grouping fields and the battery are left out
    # too (see models.UNFINGERPRINTED_FIELDS).
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
        # In UTC, as stored: a time that cannot be converted fails here, for this alarm alone.
        raised_at=None if a.raised_at is None else a.raised_at.astimezone(UTC),
        received_at=a.received_at.astimezone(UTC),
        fingerprint=_fingerprint(a.model_dump(mode="json", exclude=set(UNFINGERPRINTED_FIELDS))),
        incident_key=a.incident_key,
        press_count=a.press_count,
        sources=None if a.sources is None else tuple(a.sources),
        battery_mv=a.battery_mv,
    )


def new_fault(f: FaultIn) -> NewFault:
    loc = f.location
    return NewFault(
        event_id=f.event_id,
        gateway_id=f.gateway_id,
        device_id=f.device_id,
        fault=f.fault,
        active=f.active,
        at=f.at.astimezone(UTC),
        detail=f.detail,
        location=None if loc is None else (loc.lat, loc.lon, loc.address, loc.area),
        fingerprint=_fingerprint(f.model_dump(mode="json")),
    )
