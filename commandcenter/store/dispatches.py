"""Dispatches in the store: agencies asked to help with an incident, their answers, and the requests
nobody answered in time.

A dispatch's status change and the incident move it causes (dispatched once an agency has accepted,
resolved once every agency still involved is done) happen in one transaction, with the incident's
row locked as an operator action locks it: the state reports to the gateway exist if and only if
the move does, and two agencies answering at once cannot both move the incident."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from ..domain import (
    DISPATCH_FROM,
    OPEN_STATES,
    Action,
    DispatchStatus,
    can_move_dispatch,
    incident_moves,
    incident_ref,
    parse_rfc3339,
    rfc3339,
)
from ..engine import Conn
from .actions import _locked_incident, insert_dispatch, move_incident
from .audit import _audit
from .base import StoreBase
from .changes import Change, Wake
from .queries import _incident, _to_dispatch
from .records import (
    Dispatch,
    DispatchExistsError,
    DispatchNotFoundError,
    Incident,
    IncidentNotFoundError,
    InvalidDispatchMoveError,
    InvalidTransitionError,
)

# The column each status records its time in.
_STATUS_TIME = {
    DispatchStatus.ACCEPTED: "accepted_at",
    DispatchStatus.EN_ROUTE: "en_route_at",
    DispatchStatus.ON_SCENE: "on_scene_at",
    DispatchStatus.DONE: "done_at",
    DispatchStatus.DECLINED: "declined_at",
}
ESCALATION_ACTOR = "system:escalation"
_OPEN_STATES = ", ".join(f"'{s.value}'" for s in sorted(OPEN_STATES))


class DispatchActions(StoreBase):
    async def request_dispatches(
        self,
        number: int,
        requests: Sequence[tuple[str, DispatchStatus]],
        *,
        actor: str,
        now: datetime,
        note: str | None = None,
    ) -> Incident:
        """Dispatch the incident to each (agency, first status): `requested` for an agency that answers
        on screen, `accepted` for one the room asked by phone or radio. Allowed from the states of
        domain.DISPATCH_FROM; refused (DispatchExistsError) when an agency already has a dispatch here
        it has not declined. An accepted one moves the incident to `dispatched` at once."""
        if not requests:
            raise ValueError("a dispatch names at least one agency")

        async def work(db: Conn) -> Incident:
            incident = await _locked_incident(db, number)
            if incident is None:
                raise IncidentNotFoundError(incident_ref(number))
            if incident.state not in DISPATCH_FROM:
                raise InvalidTransitionError(incident.state, Action.DISPATCH)
            busy = {d.agency for d in incident.dispatches if d.status is not DispatchStatus.DECLINED}
            for agency, _ in requests:
                if agency in busy:
                    raise DispatchExistsError(agency, incident.state)
            for agency, status in requests:
                await insert_dispatch(db, number, agency, status, actor=actor, now=now)
            at = rfc3339(now)
            agencies = [agency for agency, _ in requests]
            # `agency`, for clients of schema versions 1-6: the first agency ever dispatched.
            await db.execute(
                "UPDATE incidents SET agency = COALESCE(agency, ?), updated_at = ? WHERE id = ?",
                (agencies[0], at, number),
            )
            detail: dict[str, Any] = {"agencies": agencies}
            waiting = [a for a, s in requests if s is DispatchStatus.REQUESTED]
            if waiting:
                detail["requested"] = waiting  # the others were accepted by the room on their behalf
            if note is not None:
                detail["note"] = note
            await _audit(db, at, actor, "dispatch_requested", incident_ref(number), detail)
            answered = [a for a, s in requests if s is not DispatchStatus.REQUESTED]
            move_detail: dict[str, Any] = {"agency": answered[0]} if answered else {}
            if len(answered) > 1:
                move_detail["agencies"] = answered
            if note is not None:
                move_detail["note"] = note
            moved = await self._follow(db, number, actor=actor, now=now, detail=move_detail)
            if not moved and note is not None:
                await _note(db, number, incident, note, actor=actor, at=at, agencies=agencies)
            # A dispatch left to answer sets the leader's unanswered-dispatch timer (another process's).
            return await self._done(db, number, moved, timer=bool(waiting))

        return await self._write(work)

    async def set_dispatch_status(
        self,
        number: int,
        agency: str,
        status: DispatchStatus,
        *,
        actor: str,
        now: datetime,
        reason: str | None = None,
        note: str | None = None,
    ) -> Incident:
        """Move the incident's dispatch to `agency` forward (domain.can_move_dispatch), or decline it
        with `reason`; then move the incident as its dispatches now call for (domain.incident_moves),
        all in one transaction."""
        if status is DispatchStatus.REQUESTED:
            raise ValueError("a dispatch is requested by dispatching, not by a status change")

        async def work(db: Conn) -> Incident:
            incident = await _locked_incident(db, number)
            if incident is None:
                raise IncidentNotFoundError(incident_ref(number))
            # The agency's current dispatch: the one not declined, else the latest declined one.
            row = await db.fetchone(
                """SELECT * FROM dispatches WHERE incident_id = ? AND agency = ?
                   ORDER BY CASE WHEN status = 'declined' THEN 1 ELSE 0 END, id DESC LIMIT 1""",
                (number, agency),
            )
            if row is None:
                raise DispatchNotFoundError(f"{incident_ref(number)} has no dispatch to {agency}")
            current = _to_dispatch(row)
            if not can_move_dispatch(current.status, status):
                raise InvalidDispatchMoveError(agency, current.status, status)
            at = rfc3339(now)
            await db.execute(
                f"""UPDATE dispatches SET status = ?, {_STATUS_TIME[status]} = ?, updated_at = ?, updated_by = ?,
                       reason = COALESCE(?, reason)
                   WHERE id = ?""",
                # The dispatch keeps the reason it was declined for; any other reason stays in its history.
                (status.value, at, at, actor, reason if status is DispatchStatus.DECLINED else None, row["id"]),
            )
            await db.execute(
                """INSERT INTO dispatch_history (dispatch_id, incident_id, at, actor, from_status, to_status, reason)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (row["id"], number, at, actor, current.status.value, status.value, reason),
            )
            await db.execute("UPDATE incidents SET updated_at = ? WHERE id = ?", (at, number))
            fields = (("agency", agency), ("from", current.status.value), ("reason", reason), ("note", note))
            await _audit(db, at, actor, f"dispatch_{status.value}", incident_ref(number),
                         {k: v for k, v in fields if v is not None})
            if note is not None:
                await _note(db, number, incident, note, actor=actor, at=at, agencies=[agency])
            moved = await self._follow(db, number, actor=actor, now=now, detail={"agency": agency})
            return await self._done(db, number, moved)

        return await self._write(work)

    async def _follow(self, db: Conn, number: int, *, actor: str, now: datetime, detail: dict[str, Any]) -> bool:
        """Move the incident as its dispatches now call for; True if it moved."""
        incident = await _incident(db, number)
        assert incident is not None
        moves = incident_moves(incident.state, (d.status for d in incident.dispatches))
        for action in moves:
            await move_incident(db, incident, action, actor=actor, now=now, detail=detail,
                                agency=detail.get("agency"))
            incident = await _incident(db, number)
            assert incident is not None
        return bool(moves)

    async def _done(self, db: Conn, number: int, moved: bool, *, timer: bool = False) -> Incident:
        updated = await _incident(db, number)
        assert updated is not None
        wake: list[Wake] = []
        if moved:
            wake.append("callbacks")
        if timer:
            wake.append("escalation")
        await self._announce(db, Change(self.origin, "incident", incidents=(number,), wake=tuple(wake)))
        return updated

    async def escalate_unanswered(
        self,
        *,
        now: datetime,
        within_s: float,
        webhook_body: Callable[[Incident, Dispatch, datetime], str] | None = None,
        limit: int = 500,
    ) -> list[tuple[Incident, Dispatch]]:
        """Escalate every dispatch of an open incident still `requested` `within_s` after it was
        requested and not escalated yet: mark it, record it in the incident's history and the audit
        log, and queue a `dispatch.unanswered` webhook event (when `webhook_body` is given), all in
        one transaction. Claimed with FOR UPDATE SKIP LOCKED, as escalate_due claims incidents."""
        cutoff = rfc3339(now - timedelta(seconds=within_s))
        at = rfc3339(now)

        async def work(db: Conn) -> list[tuple[Incident, Dispatch]]:
            rows = await db.fetchall(
                f"""SELECT d.id, d.incident_id, d.agency FROM dispatches d JOIN incidents i ON i.id = d.incident_id
                   WHERE d.status = 'requested' AND d.escalated_at IS NULL AND d.requested_at <= ?
                     AND i.state IN ({_OPEN_STATES})
                   ORDER BY d.requested_at, d.id LIMIT ?{db.lock(of="d", skip_locked=True)}""",
                (cutoff, limit),
            )
            if not rows:
                return []
            await db.executemany(
                "UPDATE dispatches SET escalated_at = ? WHERE id = ?", [(at, r["id"]) for r in rows]
            )
            found: list[tuple[Incident, Dispatch]] = []
            for r in rows:
                number, agency = r["incident_id"], r["agency"]
                await db.execute("UPDATE incidents SET updated_at = ? WHERE id = ?", (at, number))
                incident = await _incident(db, number)
                assert incident is not None
                await db.execute(
                    """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail, kind)
                       VALUES (?, ?, ?, ?, ?, ?, 'escalation')""",
                    (number, at, ESCALATION_ACTOR, incident.state.value, incident.state.value,
                     json.dumps({"dispatch": agency})),
                )
                await _audit(db, at, ESCALATION_ACTOR, "dispatch_escalated", incident_ref(number),
                             {"agency": agency, "after_s": within_s})
                dispatch = next(d for d in incident.dispatches if d.agency == agency and d.escalated_at is not None
                                and d.status is DispatchStatus.REQUESTED)
                found.append((incident, dispatch))
            if webhook_body is not None:
                await db.executemany(
                    """INSERT INTO webhook_outbox (incident_id, kind, body, created_at, next_attempt_at)
                       VALUES (?, 'dispatch.unanswered', ?, ?, ?)""",
                    [(i.ref, webhook_body(i, d, now), at, now.timestamp()) for i, d in found],
                )
            numbers = tuple(dict.fromkeys(i.number for i, _ in found))
            wake: tuple[Wake, ...] = ("webhooks",) if webhook_body is not None else ()
            await self._announce(db, Change(self.origin, "escalation", incidents=numbers, wake=wake))
            # An incident with two unanswered agencies is reported once, as it stands at the end.
            latest = {i.number: i for i in [await _incident(db, n) for n in numbers] if i is not None}
            return [(latest[i.number], d) for i, d in found]

        return await self._write(work)

    async def next_unanswered_due(self, *, within_s: float) -> datetime | None:
        """When the next requested dispatch escalates if nobody answers it, or None when none waits."""
        async with self._tx(write=False) as db:
            # Only open incidents: a closed one's unanswered dispatch never escalates, and counting it
            # would set the timer to a time long past, over and over.
            row = await db.fetchone(
                f"""SELECT MIN(d.requested_at) AS t FROM dispatches d JOIN incidents i ON i.id = d.incident_id
                   WHERE d.status = 'requested' AND d.escalated_at IS NULL AND i.state IN ({_OPEN_STATES})"""
            )
        if row is None or row["t"] is None:
            return None
        return parse_rfc3339(row["t"]) + timedelta(seconds=within_s)


async def _note(
    db: Conn, number: int, incident: Incident, note: str, *, actor: str, at: str, agencies: list[str]
) -> None:
    """A note given with a dispatch that did not move the incident: kept in its history as a note."""
    await db.execute(
        """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail, kind)
           VALUES (?, ?, ?, ?, ?, ?, 'note')""",
        (number, at, actor, incident.state.value, incident.state.value,
         json.dumps({"note": note, "agencies": agencies}, ensure_ascii=False)),
    )
