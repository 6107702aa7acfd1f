"""The room sees its own plumbing: path supervision of the gateways (EN 50136 style).

Each gateway reports itself every `report_every_s` seconds (gateway/liveness.py) with
`POST /api/v1/gateways/report` (intake token; protocol §7, "Gateway report"); the latest report of each
gateway instance is kept in `gateway_reports`. A supervisor loop, run by the process that runs the
other background loops (cluster.Leadership), raises a room-wide fault when an instance's latest report
is older than `[plumbing] silence_s` by this command center's clock, and clears it when the instance
reports again. Either change is recorded in the audit log (`gateway_silent`, `gateway_back`) and, with
an escalation webhook configured, queued in the webhook outbox (`gateway.silent`, `gateway.back`) in
the same transaction. The console shows the faults as a banner from `GET /api/v1/gateways`, which it
asks every few seconds.

What is measured is the whole path from the gateway to here: a gateway that stopped, lost its uplink,
or cannot reach the command center for any other reason is silent alike. A gateway is supervised from
its first report on; a gateway never heard from is unknown, not silent.

A gateway with an SMS path says in its report how its own GSM modem is (`sms`: up, registered on the
network, signal). It is kept with the rest of the report; the console shows a modem that is down or
off the network as a room-wide fault, from the latest report, until a report says it is back: every
button behind that gateway has lost its backup path meanwhile.

A gateway that updates its buttons' firmware over the air ([ota]) says in its report which firmware
versions are in service, how its latest rollouts go and where each of their buttons stands (`firmware`:
at most 500 buttons, the failed and busy first, with how many there are in all); the console's devices
view shows it. It is information, never a fault: the gateway halts a failing rollout by itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, WithJsonSchema

from siaga import contract
from siaga.web import StrictRoute

from .background import Loop
from .config import PlumbingSettings
from .deps import PrincipalDep, ServicesDep, SupervisorDep
from .domain import parse_rfc3339, rfc3339, utc_now
from .models import DEVICE_ID, GATEWAY_ID, ErrorOut, EventTime, UtcTime

if TYPE_CHECKING:
    from .engine import Conn, Row
    from .store import Store

log = logging.getLogger(__name__)

SILENT_EVENT = "gateway.silent"
BACK_EVENT = "gateway.back"
ACTOR = "system:plumbing"
# How often the supervisor looks, at most: a silence is raised at most this late.
CHECK_EVERY_MAX_S = 5.0


def check_every_s(silence_s: float) -> float:
    """A quarter of the silence, between 0.25 s and CHECK_EVERY_MAX_S."""
    return max(0.25, min(CHECK_EVERY_MAX_S, silence_s / 4))


# ---- the report (protocol §7, gateway -> command center) -------------------------------------------

INSTANCE = r"^[!-~]{1,128}$"  # visible ASCII: it is in event ids and webhook-id headers
DESTINATION = r"^[a-z0-9][a-z0-9_-]{0,31}$"  # gateway/config.py DESTINATION_NAME
COUNT_MAX = 10**12
# The bounds before the validator: placed after it, they reach the OpenAPI document as "ge"/"le",
# which JSON Schema does not know, instead of minimum/maximum.
Count = Annotated[int, Field(strict=True, ge=0, le=COUNT_MAX), BeforeValidator(contract.json_integer)]
# A software version is visible ASCII ("0.9.0", "unknown"), so its 64 characters are 64 bytes: the
# schema and the check cannot disagree on a name with letters outside ASCII.
Version = Annotated[str, Field(pattern=r"^[!-~]{1,64}$")]


def _depths(value: dict[str, int]) -> dict[str, int]:
    return dict(sorted(value.items()))


Depths = Annotated[
    dict[Annotated[str, Field(pattern=DESTINATION)], Count],
    Field(max_length=64),
    AfterValidator(_depths),
    WithJsonSchema({
        "type": "object", "maxProperties": 64, "propertyNames": {"pattern": DESTINATION},
        "additionalProperties": {"type": "integer", "minimum": 0, "maximum": COUNT_MAX},
        "description": "events waiting, by destination name",
    }),
]


class OutboxDepth(BaseModel):
    total: Count = Field(description="events waiting to be forwarded, every destination together")
    by_destination: Depths = Field(default_factory=dict)


class Buttons(BaseModel):
    online: Count = Field(description="registered buttons not reported offline by the gateway")
    registered: Count


RSSI_MAX = 31  # 3GPP TS 27.007 §8.5 <rssi>: 0 (-113 dBm or less) to 31 (-51 dBm or more)
Rssi = Annotated[int, Field(strict=True, ge=0, le=RSSI_MAX), BeforeValidator(contract.json_integer)]


class SmsModem(BaseModel):
    """The gateway's own GSM modem (its SMS path), as the gateway last saw it."""

    up: bool = Field(strict=True, description="the gateway's session with its modem is set up and the modem answers")
    registered: bool | None = Field(
        default=None, strict=True,
        description="the modem is registered on the mobile network (AT+CREG?); null: not known (modem down)")
    signal: Rssi | None = Field(
        default=None, description="signal strength, AT+CSQ <rssi> (0 to 31, about -113 to -51 dBm); null: not known")


FIRMWARE_VERSION = r"^[!-~]{1,64}$"  # as a button reports it: visible ASCII ("0.3.0")
FIRMWARE_VERSIONS_MAX = 64  # versions in service a report may list
ROLLOUTS_MAX = 8  # rollouts a report may list (the gateway sends its newest 5)
HALTED_REASON_MAX = 300  # bytes
ROLLOUT_DEVICES_MAX = 500  # buttons of its rollouts a report may list (the gateway's failed and busy first)
DEVICE_DETAIL_MAX = 64  # bytes: a button's update report says at most this much (docs/protocol.md §11)
BOARD = r"^[a-z0-9_-]{1,16}$"  # as a button's heartbeat names it (gateway/codec.py)
# The largest report the schema allows, every field at its bound and every character escaped, is
# about 400 KB (500 buttons of up to ~700 bytes); POST /api/v1/gateways/report must read that much.
# A gateway keeps its own reports far smaller (gateway/liveness.py, REPORT_BYTES_MAX).
REPORT_BODY_MAX = 512 * 1024
PERCENT_MAX = 100


def _versions(value: dict[str, int]) -> dict[str, int]:
    return dict(sorted(value.items()))


VersionCounts = Annotated[
    dict[Annotated[str, Field(pattern=FIRMWARE_VERSION)], Count],
    Field(max_length=FIRMWARE_VERSIONS_MAX),
    AfterValidator(_versions),
    WithJsonSchema({
        "type": "object", "maxProperties": FIRMWARE_VERSIONS_MAX, "propertyNames": {"pattern": FIRMWARE_VERSION},
        "additionalProperties": {"type": "integer", "minimum": 0, "maximum": COUNT_MAX},
        "description": "buttons by the firmware version they run, as their heartbeats report it",
    }),
]
Percent = Annotated[float, Field(strict=True, ge=0, le=PERCENT_MAX, allow_inf_nan=False)]
WholePercent = Annotated[int, Field(strict=True, ge=0, le=PERCENT_MAX), BeforeValidator(contract.json_integer)]
HaltedReason = Annotated[str, AfterValidator(contract.text_checker(HALTED_REASON_MAX)),
                         contract.text_schema(HALTED_REASON_MAX)]
Millis = Annotated[int, Field(strict=True, ge=0, le=2**53), BeforeValidator(contract.json_integer)]
DeviceDetail = Annotated[str, AfterValidator(contract.text_checker(DEVICE_DETAIL_MAX)),
                         contract.text_schema(DEVICE_DETAIL_MAX)]
RolloutId = Annotated[int, Field(strict=True, ge=1, le=2**53), BeforeValidator(contract.json_integer)]


class RolloutCounts(BaseModel):
    """A rollout's buttons by their state in it (docs/protocol.md §11)."""

    model_config = {"extra": "ignore"}

    offered: Count = Field(default=0, description="offered the update, not yet downloading")
    downloading: Count = 0
    installed: Count = Field(default=0, description="installed, on trial until it passes its self-test")
    updated: Count = Field(default=0, description="running the new version")
    failed: Count = Field(default=0, description="refused it, or went back to the version before")
    withdrawn: Count = Field(default=0, description="the offer was withdrawn (the rollout halted or was cancelled)")


class RolloutSummary(BaseModel):
    """One rollout of a firmware version, as the gateway lists it."""

    model_config = {"extra": "ignore"}

    id: RolloutId
    version: str = Field(pattern=FIRMWARE_VERSION)
    percent: Percent = Field(description="the share of the eligible buttons offered the version so far")
    state: Literal["active", "halted", "done", "cancelled"] = Field(
        description="`halted`: more than `max_failed_percent` of the buttons offered it failed; the gateway "
                    "withdrew the offers not yet taken up")
    max_failed_percent: WholePercent | None = None
    halted_reason: HaltedReason | None = None
    created_ms: Millis | None = None
    counts: RolloutCounts = Field(default_factory=RolloutCounts)
    targeted: Count = Field(default=0, description="buttons offered the version")
    eligible: Count = Field(default=0, description="buttons it is for: their board has a bundle of the version")


class RolloutDevice(BaseModel):
    """One button of a rollout the report lists, and where its update stands."""

    model_config = {"extra": "ignore"}

    device_id: str = Field(pattern=DEVICE_ID)
    rollout: RolloutId = Field(description="the rollout (its `id` in `rollouts`)")
    state: Literal["offered", "downloading", "installed", "updated", "failed", "withdrawn"] = Field(
        description="the button's state in the rollout (docs/protocol.md §11)")
    detail: DeviceDetail = Field(default="", description=(
        "for `failed`, the button's reason word (`wrong_sha256`, `selftest`, `crashes`, ...); for `withdrawn`, "
        "why the offer was withdrawn"))
    firmware: str | None = Field(default=None, pattern=FIRMWARE_VERSION,
                                 description="the version its heartbeats report; null before the first")
    board: str | None = Field(default=None, pattern=BOARD, description="its board; null before its first report")
    updated_ms: Millis = Field(description="when its state in the rollout last changed (ms since the epoch)")


class FirmwareSummary(BaseModel):
    """The firmware of a gateway's buttons: versions in service, the latest rollouts and their buttons."""

    model_config = {"extra": "ignore"}

    versions: VersionCounts = Field(default_factory=dict)
    rollouts: list[RolloutSummary] = Field(default_factory=list, max_length=ROLLOUTS_MAX,
                                           description="the newest active or halted rollouts, newest first")
    devices: list[RolloutDevice] = Field(
        default_factory=list, max_length=ROLLOUT_DEVICES_MAX,
        description="the buttons of those rollouts: the failed first, then those under way, then the rest")
    devices_total: Count = Field(
        default=0, description="how many buttons those rollouts have in all; more than `devices` lists when "
                                  "the gateway cut the list to its bound or to the report's size")


class GatewayReportIn(BaseModel):
    """A gateway's self-report. Unknown fields are ignored (protocol §4)."""

    model_config = {
        "extra": "ignore",
        "json_schema_extra": {"examples": [{
            "gateway_id": "gw-1", "instance": "gw-1a", "version": "0.9.0", "uptime_s": 8123.4,
            "outbox": {"total": 2, "by_destination": {"command-center": 0, "cad-kota": 2}},
            "broker_connected": True, "buttons": {"online": 118, "registered": 120},
            "at": "2026-11-24T03:12:09.412Z", "sms": {"up": True, "registered": True, "signal": 18},
            "firmware": {"versions": {"0.2.0": 112, "0.3.0": 8}, "rollouts": [{
                "id": 3, "version": "0.3.0", "percent": 10, "state": "active", "max_failed_percent": 20,
                "halted_reason": None, "created_ms": 1795922400000,
                "counts": {"offered": 2, "downloading": 1, "installed": 1, "updated": 8, "failed": 0, "withdrawn": 0},
                "targeted": 12, "eligible": 120}], "devices": [{
                "device_id": "btn-0042", "rollout": 3, "state": "downloading", "detail": "", "firmware": "0.2.0",
                "board": "esp32", "updated_ms": 1795922460000}], "devices_total": 12},
        }]},
    }

    gateway_id: str = Field(pattern=GATEWAY_ID)
    instance: str = Field(pattern=INSTANCE, description="the instance's name among several of one gateway id")
    version: Version = Field(description="the gateway's software version")
    uptime_s: float = Field(ge=0, le=1e10, allow_inf_nan=False, strict=True,
                            description="seconds since the gateway started")
    outbox: OutboxDepth
    broker_connected: bool = Field(strict=True, description="the gateway's link to its MQTT broker is up")
    buttons: Buttons
    at: EventTime = Field(description="when the gateway made the report, by its clock")
    sms: SmsModem | None = Field(default=None, description="the gateway's SMS modem; absent without an SMS path")
    firmware: FirmwareSummary | None = Field(
        default=None, description="its buttons' firmware and rollouts; absent without updates over the air ([ota])")


class GatewayOut(BaseModel):
    gateway_id: str
    instance: str
    status: Literal["reporting", "silent"] = Field(
        description="`silent`: no report for longer than `silence_s`; a room-wide fault until it reports again")
    last_report_at: UtcTime = Field(description="when its latest report arrived, by the command center's clock")
    reported_at: UtcTime = Field(description="when the gateway made its latest report, by its own clock")
    silent_at: UtcTime | None = Field(description="when its silence was raised as a fault; null while it reports")
    first_report_at: UtcTime
    version: str
    uptime_s: float
    outbox: OutboxDepth
    broker_connected: bool
    buttons: Buttons
    sms: SmsModem | None = Field(description=(
        "the gateway's SMS modem in its latest report; null without an SMS path. Down (`up` false) or off the "
        "network (`registered` false) is a room-wide fault: the buttons behind the gateway have no backup path"))
    firmware: FirmwareSummary | None = Field(description=(
        "its buttons' firmware versions and its latest rollouts, from its latest report; null without updates "
        "over the air"))


class GatewaysOut(BaseModel):
    silence_s: float = Field(description="a gateway silent for longer than this is a fault ([plumbing] silence_s)")
    gateways: list[GatewayOut]


# ---- the database -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayState:
    gateway_id: str
    instance: str
    received_at: datetime
    silent_at: datetime | None
    reported_at: datetime
    first_at: datetime
    report: dict[str, Any]

    @property
    def name(self) -> str:
        return self.gateway_id if self.instance == self.gateway_id else f"{self.gateway_id}/{self.instance}"


Transition = tuple[GatewayState, Literal["silent", "back"]]


def decide(states: Sequence[GatewayState], *, now: datetime, silence_s: float) -> list[Transition]:
    """What changes now: an instance that reports is `silent` once its latest report is older than
    `silence_s`; a silent one is `back` once a report arrived after its silence was raised."""
    cutoff = now - timedelta(seconds=silence_s)
    changes: list[Transition] = []
    for s in states:
        if s.silent_at is None and s.received_at <= cutoff:
            changes.append((s, "silent"))
        elif s.silent_at is not None and s.received_at > s.silent_at:
            changes.append((s, "back"))
    return changes


def _state(r: Row) -> GatewayState:
    return GatewayState(
        gateway_id=r["gateway_id"], instance=r["instance"], received_at=parse_rfc3339(r["received_at"]),
        silent_at=None if r["silent_at"] is None else parse_rfc3339(r["silent_at"]),
        reported_at=parse_rfc3339(r["reported_at"]), first_at=parse_rfc3339(r["first_at"]),
        report=json.loads(r["report"]),
    )


_COLUMNS = "gateway_id, instance, report, reported_at, received_at, first_at, silent_at"


async def record_report(store: Store, report: GatewayReportIn, *, now: datetime) -> None:
    """Keep `report` as the instance's latest (an older one that arrives late is kept too: what counts
    is that the path carried something now)."""
    body = report.model_dump_json()
    at, reported = rfc3339(now), rfc3339(report.at)

    async def work(db: Conn) -> None:
        await db.execute(
            f"""INSERT INTO gateway_reports ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)
                ON CONFLICT (gateway_id, instance) DO UPDATE SET report = excluded.report,
                    reported_at = excluded.reported_at, received_at = excluded.received_at""",
            (report.gateway_id, report.instance, body, reported, at, at),
        )

    await store._write(work)  # the store's write transaction, retried after a lost race


async def gateway_states(store: Store) -> list[GatewayState]:
    async with store._tx(write=False) as db:
        rows = await db.fetchall(f"SELECT {_COLUMNS} FROM gateway_reports ORDER BY gateway_id, instance")
    return [_state(r) for r in rows]


async def forget(store: Store, gateway_id: str, instance: str, *, actor: str, now: datetime) -> bool:
    """Drop an instance's row (a gateway taken out of service), with an audit entry; False if unknown."""

    async def work(db: Conn) -> bool:
        row = await db.fetchone(
            f"SELECT silent_at FROM gateway_reports WHERE gateway_id = ? AND instance = ?{db.lock()}",
            (gateway_id, instance),
        )
        if row is None:
            return False
        await db.execute("DELETE FROM gateway_reports WHERE gateway_id = ? AND instance = ?", (gateway_id, instance))
        name = gateway_id if instance == gateway_id else f"{gateway_id}/{instance}"
        await db.execute(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, 'gateway_forgotten', ?, ?)",
            (rfc3339(now), actor, name, json.dumps({"silent_at": row["silent_at"]})),
        )
        return True

    return await store._write(work)


def webhook_body(state: GatewayState, change: Literal["silent", "back"], *, now: datetime, silence_s: float) -> str:
    """What the escalation webhook receives (docs/commandcenter.md, "Plumbing")."""
    since = now if change == "silent" else state.silent_at
    assert since is not None
    return json.dumps({
        "event": SILENT_EVENT if change == "silent" else BACK_EVENT,
        "event_id": f"gateway:{state.gateway_id}:{state.instance}:{change}:{rfc3339(since)}",
        "at": rfc3339(now),
        "silence_s": silence_s,
        "gateway": {"gateway_id": state.gateway_id, "instance": state.instance,
                    "last_report_at": rfc3339(state.received_at),
                    "silent_at": rfc3339(since), "report": state.report},
    }, separators=(",", ":"), ensure_ascii=False)


async def apply_transitions(
    store: Store, *, now: datetime, silence_s: float, webhook: bool
) -> list[Transition]:
    """One round of the supervisor, in one write transaction: mark what fell silent and what came
    back, each with an audit entry and (`webhook`) a queued webhook event."""
    at = rfc3339(now)

    async def work(db: Conn) -> list[Transition]:
        rows = await db.fetchall(f"SELECT {_COLUMNS} FROM gateway_reports ORDER BY gateway_id, instance{db.lock()}")
        changes = decide([_state(r) for r in rows], now=now, silence_s=silence_s)
        for state, change in changes:
            await db.execute(
                "UPDATE gateway_reports SET silent_at = ? WHERE gateway_id = ? AND instance = ?",
                (at if change == "silent" else None, state.gateway_id, state.instance),
            )
            detail = {"last_report_at": rfc3339(state.received_at), "silence_s": silence_s}
            if change == "back" and state.silent_at is not None:
                detail["silent_at"] = rfc3339(state.silent_at)
            await db.execute(
                "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                (at, ACTOR, f"gateway_{change}", state.name, json.dumps(detail, ensure_ascii=False)),
            )
            if webhook:
                await db.execute(
                    """INSERT INTO webhook_outbox (incident_id, kind, body, created_at, next_attempt_at)
                       VALUES (?, ?, ?, ?, ?)""",
                    (f"gateway:{state.gateway_id}:{state.instance}",
                     SILENT_EVENT if change == "silent" else BACK_EVENT,
                     webhook_body(state, change, now=now, silence_s=silence_s), at, now.timestamp()),
                )
        return changes

    return await store._write(work)


# ---- the supervisor loop ------------------------------------------------------------------------------


class PlumbingSupervisor(Loop):
    """Background task (background.Loop): `start()`, `stop()`. `on_change(transitions)` after a round
    changed something (the webhook sender is woken there)."""

    name = "plumbing"

    def __init__(
        self, store: Store, settings: PlumbingSettings, *, webhook: bool,
        on_change: Callable[[list[Transition]], None],
    ) -> None:
        super().__init__()
        self._store = store
        self._settings = settings
        self._webhook = webhook
        self._on_change = on_change
        self.retry_s = check_every_s(settings.silence_s)

    def describe(self) -> str:
        return f"a gateway silent for more than {self._settings.silence_s:.0f} s is a room-wide fault"

    async def run_once(self, now: datetime) -> list[Transition]:
        silence_s = self._settings.silence_s
        changes = await apply_transitions(self._store, now=now, silence_s=silence_s, webhook=self._webhook)
        for state, change in changes:
            if change == "silent":
                # ERROR: the room no longer hears of alarms through this gateway.
                log.error("gateway %s silent: no report since %s (more than %.0f s)", state.name,
                          rfc3339(state.received_at), silence_s)
            else:
                log.warning("gateway %s reports again (it was silent from %s)", state.name,
                            rfc3339(state.silent_at) if state.silent_at else "?")
        if changes:
            self._on_change(changes)
        return changes

    async def round(self) -> float:
        await self.run_once(utc_now())
        return check_every_s(self._settings.silence_s)


# ---- the console's view -------------------------------------------------------------------------------

router = APIRouter(
    prefix="/api/v1",
    tags=["plumbing"],
    route_class=StrictRoute,
    responses={401: {"model": ErrorOut, "description": "not signed in"}},
)


def gateway_out(s: GatewayState) -> GatewayOut:
    r = s.report
    return GatewayOut(
        gateway_id=s.gateway_id, instance=s.instance, status="silent" if s.silent_at is not None else "reporting",
        last_report_at=s.received_at, reported_at=s.reported_at, silent_at=s.silent_at, first_report_at=s.first_at,
        version=r.get("version", ""), uptime_s=r.get("uptime_s", 0.0),
        outbox=OutboxDepth.model_validate(r.get("outbox", {"total": 0})),
        broker_connected=bool(r.get("broker_connected", False)),
        buttons=Buttons.model_validate(r.get("buttons", {"online": 0, "registered": 0})),
        sms=None if r.get("sms") is None else SmsModem.model_validate(r["sms"]),
        firmware=None if r.get("firmware") is None else FirmwareSummary.model_validate(r["firmware"]),
    )


@router.get(
    "/gateways",
    summary="The gateways' self-reports, and which of them are silent",
    description=(
        "Every gateway instance that has reported, with its latest report. `status` is `silent` from the "
        "moment its silence was raised as a room-wide fault (no report for longer than `silence_s`) until "
        "it reports again. `sms` is the gateway's own SMS modem as its latest report says, `firmware` its "
        "buttons' firmware versions and rollouts. For everyone signed in: the console shows silent gateways, "
        "and gateways whose SMS modem is down or off the network, as a banner, and the firmware in its "
        "devices view."
    ),
    response_model=GatewaysOut,
)
async def list_gateways(svc: ServicesDep, who: PrincipalDep) -> GatewaysOut:
    states = await gateway_states(svc.store)
    return GatewaysOut(silence_s=svc.config.plumbing.silence_s, gateways=[gateway_out(s) for s in states])


@router.delete(
    "/gateways",
    summary="Forget a gateway instance (supervisors)",
    description=(
        "For a gateway taken out of service: its row goes, and with it its fault and banner; recorded in "
        "the audit log (`gateway_forgotten`). A gateway that still runs comes back with its next report."
    ),
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "forgotten"},
        403: {"model": ErrorOut, "description": "signed in, but not as a supervisor"},
        404: {"model": ErrorOut, "description": "no report from that gateway instance"},
    },
)
async def forget_gateway(
    svc: ServicesDep,
    who: SupervisorDep,
    gateway_id: Annotated[str, Query(pattern=GATEWAY_ID)],
    instance: Annotated[str, Query(pattern=INSTANCE)],
) -> Response:
    if not await forget(svc.store, gateway_id, instance, actor=who.name, now=utc_now()):
        raise HTTPException(404, "no report from that gateway instance")
    log.info("%s forgot gateway %s (%s)", who.name, gateway_id, instance)
    return Response(status_code=204)
