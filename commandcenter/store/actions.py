"""Operator actions on an incident (acknowledge, dispatch, resolve, false alarm, referral as not an
emergency) and notes: each in one transaction with its history entry, its audit entry and, for an
action, the state reports to the gateway. The move itself (`move_incident`) is shared with the
dispatches (store/dispatches.py), whose status changes move their incident in the same transaction."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ..domain import REFER_FROM, Action, DispatchStatus, callback_body, can_apply, incident_ref, rfc3339
from ..engine import Conn
from .audit import _audit
from .base import StoreBase
from .changes import Change
from .queries import _incident
from .records import Incident, IncidentNotFoundError, InvalidTransitionError

# Columns written by each action besides `state`.
_ACTION_COLUMNS: dict[Action, tuple[str, str]] = {
    Action.ACKNOWLEDGE: ("acknowledged_at", "acknowledged_by"),
    Action.DISPATCH: ("dispatched_at", "dispatched_by"),
    Action.RESOLVE: ("closed_at", "closed_by"),
    Action.FALSE_ALARM: ("closed_at", "closed_by"),
}


class IncidentActions(StoreBase):
    async def apply_action(
        self,
        number: int,
        action: Action,
        *,
        actor: str,
        now: datetime,
        agency: str | None = None,
        note: str | None = None,
        referral: tuple[str, str | None] | None = None,
    ) -> Incident:
        """Move an incident to the action's state, record who did it, and queue one state report
        per event of the incident, all in one transaction (the transactional-outbox pattern: the
        report exists if and only if the change does). The incident's row is locked first, so an
        action in another process waits and then judges the state this one left.

        `referral` (channel, reference) closes it as not an emergency, referred to that channel:
        only with RESOLVE, allowed from the states a false alarm is (domain.REFER_FROM), recorded
        in the incident's row, history and audit (action `referred`)."""
        if referral is not None and action is not Action.RESOLVE:
            raise ValueError("a referral closes an incident as resolved")

        async def work(db: Conn) -> Incident:
            incident = await _locked_incident(db, number)
            if incident is None:
                raise IncidentNotFoundError(incident_ref(number))
            allowed = incident.state in REFER_FROM if referral is not None else can_apply(action, incident.state)
            if not allowed:
                raise InvalidTransitionError(incident.state, action)
            channel, reference = referral if referral is not None else (None, None)
            fields = (("agency", agency), ("referred_to", channel), ("reference", reference), ("note", note))
            detail = {k: v for k, v in fields if v is not None}
            await move_incident(db, incident, action, actor=actor, now=now, detail=detail, agency=agency,
                                referral=referral)
            if action is Action.DISPATCH and agency is not None:
                # The room asked the agency by phone or radio: its dispatch is accepted on its behalf.
                await insert_dispatch(db, number, agency, DispatchStatus.ACCEPTED, actor=actor, now=now)
            updated = await _incident(db, number)
            assert updated is not None
            await self._announce(db, Change(self.origin, "incident", incidents=(number,), wake=("callbacks",)))
            return updated

        return await self._write(work)

    async def add_note(self, number: int, note: str, *, actor: str, now: datetime) -> Incident:
        """Record an operator's note in the incident's history; the state stays as it is."""

        async def work(db: Conn) -> Incident:
            incident = await _locked_incident(db, number)
            if incident is None:
                raise IncidentNotFoundError(incident_ref(number))
            at = rfc3339(now)
            await db.execute("UPDATE incidents SET updated_at = ? WHERE id = ?", (at, number))
            await db.execute(
                """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail, kind)
                   VALUES (?, ?, ?, ?, ?, ?, 'note')""",
                (number, at, actor, incident.state.value, incident.state.value,
                 json.dumps({"note": note}, ensure_ascii=False)),
            )
            await _audit(db, at, actor, "note", incident_ref(number), {"note": note})
            updated = await _incident(db, number)
            assert updated is not None
            await self._announce(db, Change(self.origin, "incident", incidents=(number,)))
            return updated

        return await self._write(work)


async def move_incident(
    db: Conn,
    incident: Incident,
    action: Action,
    *,
    actor: str,
    now: datetime,
    detail: dict[str, Any],
    agency: str | None = None,
    referral: tuple[str, str | None] | None = None,
) -> None:
    """Inside a write transaction that holds the incident's row (`_locked_incident`) and has judged
    the move allowed: set the state and who did it, add the history and audit entries, and queue one
    state report per alarm event of the incident. Shared by the operator actions and by a dispatch's
    status change, which moves its incident in the same transaction (store/dispatches.py)."""
    number = incident.number
    at = rfc3339(now)
    at_col, by_col = _ACTION_COLUMNS[action]
    assignments = f"state = ?, updated_at = ?, {at_col} = ?, {by_col} = ?"
    params: list[Any] = [action.target.value, at, at, actor]
    if action is Action.DISPATCH:
        # `agency` stays the first agency dispatched (for clients of schema versions 1-6).
        assignments += ", agency = COALESCE(agency, ?)"
        params.append(agency)
    if referral is not None:
        assignments += ", referred_to = ?, referral_ref = ?"
        params += list(referral)
    await db.execute(f"UPDATE incidents SET {assignments} WHERE id = ?", (*params, number))
    detail_json = json.dumps(detail, ensure_ascii=False) if detail else None
    await db.execute(
        """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (number, at, actor, incident.state.value, action.target.value, detail_json),
    )
    audit_action = "referred" if referral is not None else action.value
    await _audit(db, at, actor, audit_action, incident_ref(number), detail or None)
    events = await db.fetchall(
        "SELECT event_id, gateway_id, device_id, seq FROM alarms WHERE incident_id = ? ORDER BY id",
        (number,),
    )
    for ev in events:
        body = callback_body(
            event_id=ev["event_id"],
            device_id=ev["device_id"],
            seq=ev["seq"],
            state=action,
            incident=incident_ref(number),
            at=now,
            by=actor,
        )
        await db.execute(
            """INSERT INTO callback_outbox (event_id, gateway_id, state, body, created_at,
                   next_attempt_at)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (ev["event_id"], ev["gateway_id"], action.value, body, at, now.timestamp()),
        )


async def insert_dispatch(
    db: Conn, number: int, agency: str, status: DispatchStatus, *, actor: str, now: datetime
) -> None:
    """A new dispatch of incident `number` to `agency`, `requested` or already `accepted`, with its
    first history entry. The caller has checked that the agency has none that is not declined (the
    unique index dispatches_one_per_agency would refuse it anyway)."""
    at = rfc3339(now)
    accepted_at = at if status is DispatchStatus.ACCEPTED else None
    await db.execute(
        """INSERT INTO dispatches (incident_id, agency, status, requested_at, requested_by, accepted_at,
               updated_at, updated_by)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        (number, agency, status.value, at, actor, accepted_at, at, actor),
    )
    row = await db.fetchone(
        "SELECT MAX(id) AS id FROM dispatches WHERE incident_id = ? AND agency = ?", (number, agency)
    )
    assert row is not None
    await db.execute(
        """INSERT INTO dispatch_history (dispatch_id, incident_id, at, actor, from_status, to_status)
           VALUES (?, ?, ?, ?, NULL, ?)""",
        (row["id"], number, at, actor, status.value),
    )


async def _locked_incident(db: Conn, number: int) -> Incident | None:
    """The incident, its row locked until the transaction ends (PostgreSQL; SQLite's write
    transaction already excludes every other writer). Read after the lock is granted, so it is the
    state the previous holder committed."""
    if db.shared:
        await db.fetchone(f"SELECT id FROM incidents WHERE id = ?{db.lock()}", (number,))
    return await _incident(db, number)
