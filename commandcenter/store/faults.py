"""Device fault reports (offline, low battery, tamper...): each report stored once, and the current
state of each fault of each device. A fault never opens an incident."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from ..domain import parse_rfc3339, rfc3339
from ..engine import Conn
from .base import StoreBase
from .changes import Change, FaultNote
from .intake import _UPSERT_BATTERY
from .records import DeviceFault, FaultOutcome, NewFault


class Faults(StoreBase):
    async def record_fault(self, fault: NewFault, *, now: datetime) -> FaultOutcome:
        """Store a fault report once and update the device's current state of that fault. A fault
        never opens an incident (protocol §7): it is a matter for supervisors, not dispatchers."""
        return (await self.record_faults([fault], now=now))[0]

    async def record_faults(self, faults: Sequence[NewFault], *, now: datetime) -> list[FaultOutcome]:
        """record_fault for many reports, in one transaction (a gateway's batch)."""

        async def work(db: Conn) -> list[FaultOutcome]:
            outcomes = [await self._record_fault(db, fault, now) for fault in faults]
            notes = tuple(
                FaultNote(f.device_id, f.fault, f.active, f.at)
                for f, o in zip(faults, outcomes, strict=True)
                if o.created
            )
            if notes:
                await self._announce(db, Change(self.origin, "fault", faults=notes))
            return outcomes

        return await self._write(work)

    async def _record_fault(self, db: Conn, fault: NewFault, now: datetime) -> FaultOutcome:
        row = await db.fetchone("SELECT fingerprint FROM device_faults WHERE event_id = ?", (fault.event_id,))
        if row is not None:
            return FaultOutcome(
                created=False, event_id=fault.event_id, same_body=row["fingerprint"] == fault.fingerprint
            )
        lat, lon, address, area = fault.location or (None, None, None, None)
        at = rfc3339(fault.at)
        detail = json.dumps(fault.detail, sort_keys=True, ensure_ascii=False)
        intake_at = rfc3339(now)
        await db.execute(
            """INSERT INTO device_faults (event_id, gateway_id, device_id, fault, active, at, detail,
                   lat, lon, address, area, intake_at, fingerprint)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                fault.event_id,
                fault.gateway_id,
                fault.device_id,
                fault.fault,
                int(fault.active),
                at,
                detail,
                lat,
                lon,
                address,
                area,
                intake_at,
                fault.fingerprint,
            ),
        )
        # Only a report at least as new as the stored one changes the current state: the gateway
        # retries, so an old "active" may arrive after the "cleared" that followed it. In the SET
        # clause the unqualified table name is the row as it was, `excluded` the new report.
        await db.execute(
            """INSERT INTO device_fault_state (device_id, fault, active, since, at, event_id,
                   gateway_id, detail, lat, lon, address, area, intake_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (device_id, fault) DO UPDATE SET
                   since = CASE WHEN device_fault_state.active = excluded.active
                                THEN device_fault_state.since ELSE excluded.since END,
                   active = excluded.active, at = excluded.at, event_id = excluded.event_id,
                   gateway_id = excluded.gateway_id, detail = excluded.detail,
                   lat = COALESCE(excluded.lat, device_fault_state.lat),
                   lon = COALESCE(excluded.lon, device_fault_state.lon),
                   address = COALESCE(excluded.address, device_fault_state.address),
                   area = COALESCE(excluded.area, device_fault_state.area),
                   intake_at = excluded.intake_at
               WHERE excluded.at >= device_fault_state.at""",
            (
                fault.device_id,
                fault.fault,
                int(fault.active),
                at,
                at,
                fault.event_id,
                fault.gateway_id,
                detail,
                lat,
                lon,
                address,
                area,
                intake_at,
            ),
        )
        battery = fault.detail.get("battery_mv")
        # bool is an int in Python; `true` is not a voltage.
        if isinstance(battery, int) and not isinstance(battery, bool) and 0 <= battery < 100_000:
            await db.execute(_UPSERT_BATTERY, (fault.device_id, battery, at, fault.event_id))
        return FaultOutcome(created=True, event_id=fault.event_id, same_body=True)

    async def active_faults(self, *, limit: int = 1000) -> list[DeviceFault]:
        """Faults whose latest report says active, the most recently started first."""
        async with self._tx(write=False) as db:
            rows = await db.fetchall(
                """SELECT * FROM device_fault_state WHERE active = 1
                   ORDER BY since DESC, device_id, fault LIMIT ?""",
                (limit,),
            )
        return [
            DeviceFault(
                device_id=r["device_id"],
                fault=r["fault"],
                active=bool(r["active"]),
                since=parse_rfc3339(r["since"]),
                at=parse_rfc3339(r["at"]),
                event_id=r["event_id"],
                gateway_id=r["gateway_id"],
                detail=json.loads(r["detail"]),
                location=None if r["lat"] is None else (r["lat"], r["lon"], r["address"], r["area"]),
            )
            for r in rows
        ]
