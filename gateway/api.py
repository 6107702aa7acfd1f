"""The gateway's HTTP API: device registry and audit for admins, state callbacks for the command
center, health for monitoring. Tokens are compared in constant time; no response carries a secret."""

from __future__ import annotations

import base64
import hmac
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Response, status
from pydantic import AfterValidator, BaseModel, Field

from siaga import contract
from siagafw import proto

from .store import Device, StoreError

if TYPE_CHECKING:
    from .service import Gateway

DEVICE_ID = r"^[a-z0-9][a-z0-9-]{2,31}$"
# The registry's address and area travel in fault reports to the command center: the same text
# rule as in a button's frame (siaga/contract.py).
Address = Annotated[str, AfterValidator(contract.text_checker(contract.ADDRESS_MAX_BYTES))]
Area = Annotated[str, AfterValidator(contract.text_checker(contract.AREA_MAX_BYTES))]
Site = Annotated[str, AfterValidator(contract.text_checker(4 * contract.SITE_MAX_CHARS)),
               Field(max_length=contract.SITE_MAX_CHARS)]


class DeviceIn(BaseModel):
    id: str = Field(pattern=DEVICE_ID)
    secret_hex: str = Field(pattern=r"^[0-9a-f]{64}$", description="32-byte HMAC key, lowercase hex")
    site: Site | None = Field(default=None, description="buttons of one site form one incident")
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    address: Address = ""
    area: Area = ""


class DeviceOut(BaseModel):
    id: str
    created_ms: int
    revoked: bool
    site: str | None
    lat: float | None
    lon: float | None
    address: str
    area: str
    last_seen_ms: int | None
    battery_mv: int | None
    rssi: int | None
    firmware: str | None
    tamper: bool | None
    heartbeat_s: int | None
    faults: list[str] = Field(description="active faults: offline, low_battery, tamper")
    key_pending: bool = Field(description="a rotated key waits for the device to start using it")
    decommissioned: bool


class RotateIn(BaseModel):
    secret_hex: str = Field(pattern=r"^[0-9a-f]{64}$", description="the new 32-byte HMAC key, lowercase hex")
    mode: Literal["immediate", "pending"] = Field(
        default="immediate",
        description="immediate: the old key stops working now; pending: both work until the device first "
                    "signs with the new one (when the board is rewritten later)")


class DevicePatch(BaseModel):
    site: Site | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    address: Address | None = None
    area: Area | None = None


class StateIn(BaseModel):
    event_id: str = Field(max_length=128)
    device_id: str = Field(pattern=DEVICE_ID)
    seq: int = Field(ge=0, lt=2**31)
    state: Literal["received", "acknowledged", "dispatched", "resolved", "false_alarm"]
    incident_id: str | None = Field(default=None, max_length=64)
    at: datetime
    by: str | None = Field(default=None, max_length=64)


def _bearer(expected: str):
    def check(authorization: Annotated[str | None, Header()] = None) -> None:
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
    return check


def _e6(value: float | None) -> int | None:
    return None if value is None else round(value * 1_000_000)


def create_app(gw: Gateway) -> FastAPI:
    app = FastAPI(title="Siaga gateway", version="1", summary="Device registry, audit and state relay")
    admin = Depends(_bearer(gw.cfg.admin_token))
    cc = Depends(_bearer(gw.cfg.cc_callback_token))

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, object]:
        mqtt_up = gw.link is not None and gw.link.connected.is_set()
        return {"status": "ok" if mqtt_up else "degraded", "mqtt": mqtt_up,
                "outbox": await gw.store.outbox_depth(), "circuit": gw.breaker.state.value}

    @app.get("/ready", summary="Readiness: connected to the broker and the store answers",
             responses={503: {"description": "not ready"}})
    async def ready(response: Response) -> dict[str, object]:
        mqtt_up = gw.link is not None and gw.link.connected.is_set()
        try:
            depth: int | None = await gw.store.outbox_depth()
        except Exception:  # any store failure means not ready; the reason is in the log
            depth = None
        ok = mqtt_up and depth is not None
        if not ok:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"ready": ok, "mqtt": mqtt_up, "store": depth is not None}

    def device_out(d: Device) -> DeviceOut:
        return DeviceOut(id=d.id, created_ms=d.created_ms, revoked=d.revoked_ms is not None, site=d.site,
                         lat=None if d.lat_e6 is None else d.lat_e6 / 1e6,
                         lon=None if d.lon_e6 is None else d.lon_e6 / 1e6, address=d.address, area=d.area,
                         last_seen_ms=d.last_seen_ms, battery_mv=d.battery_mv, rssi=d.rssi, firmware=d.firmware,
                         tamper=d.tamper, heartbeat_s=d.every_s, faults=list(d.faults), key_pending=d.key_pending,
                         decommissioned=d.decommissioned_ms is not None)

    @app.post("/api/v1/devices", status_code=201, dependencies=[admin], summary="Register a device")
    async def add_device(dev: DeviceIn) -> DeviceOut:
        try:
            await gw.register_device(dev.id, bytes.fromhex(dev.secret_hex), site=dev.site, lat_e6=_e6(dev.lat),
                                     lon_e6=_e6(dev.lon), address=dev.address, area=dev.area)
        except StoreError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return await get_device(dev.id)

    @app.get("/api/v1/devices", dependencies=[admin], summary="List devices (never their secrets)")
    async def list_devices() -> list[DeviceOut]:
        return [device_out(d) for d in await gw.store.devices()]

    @app.get("/api/v1/devices/{device_id}", dependencies=[admin], summary="One device and its faults")
    async def get_device(device_id: str) -> DeviceOut:
        found = await gw.store.devices(device_id)
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")
        return device_out(found[0])

    @app.post("/api/v1/devices/{device_id}/revoke", dependencies=[admin], summary="Revoke a device now")
    async def revoke(device_id: str) -> dict[str, object]:
        if device_id not in gw.registry:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")
        return {"device_id": device_id, "revoked": True, "changed": await gw.revoke_device(device_id)}

    @app.post("/api/v1/devices/{device_id}/rotate-key", dependencies=[admin], summary="Give a device a new key")
    async def rotate_key(device_id: str, body: RotateIn) -> DeviceOut:
        rec = gw.registry.get(device_id)
        if rec is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")
        if rec.revoked:
            raise HTTPException(status.HTTP_409_CONFLICT, f"device {device_id} is revoked")
        await gw.rotate_key(device_id, bytes.fromhex(body.secret_hex), pending=body.mode == "pending")
        return await get_device(device_id)

    @app.patch("/api/v1/devices/{device_id}", dependencies=[admin], summary="Change a device's site or location")
    async def patch_device(device_id: str, body: DevicePatch) -> DeviceOut:
        if device_id not in gw.registry:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")
        given = body.model_dump(exclude_unset=True)
        fields = {{"lat": "lat_e6", "lon": "lon_e6"}.get(k, k): (_e6(v) if k in ("lat", "lon") else v)
                  for k, v in given.items()}
        if not fields:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "nothing to change")
        await gw.update_device(device_id, fields)
        return await get_device(device_id)

    @app.delete("/api/v1/devices/{device_id}", dependencies=[admin],
                summary="Decommission a device: revoked for good, its history kept")
    async def decommission(device_id: str) -> dict[str, object]:
        if device_id not in gw.registry:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")
        return {"device_id": device_id, "decommissioned": True, "changed": await gw.decommission_device(device_id)}

    @app.get("/api/v1/alarms", dependencies=[admin], summary="Stored alarms, newest first")
    async def alarms(device_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return await gw.store.alarms(device_id=device_id, limit=max(1, min(limit, 1000)))

    @app.get("/api/v1/incidents", dependencies=[admin], summary="Incident groups (the incident layer), newest first")
    async def incidents(limit: int = 100) -> list[dict[str, Any]]:
        return await gw.store.groups(max(1, min(limit, 1000)))

    @app.get("/api/v1/audit", dependencies=[admin], summary="Rejected messages, newest first")
    async def audit(limit: int = 100, reason: str | None = None) -> list[dict[str, Any]]:
        return await gw.store.audit(max(1, min(limit, 1000)), reason)

    @app.get("/api/v1/quarantine", dependencies=[admin],
             summary="Messages the gateway could not process, newest first (raw bytes in base64)")
    async def quarantine(limit: int = 100) -> list[dict[str, Any]]:
        rows = await gw.store.quarantined(max(1, min(limit, 1000)))
        return [{**{k: v for k, v in r.items() if k != "payload"},
                 "payload_base64": base64.b64encode(r["payload"]).decode(),
                 "payload_preview": r["payload"][:200].decode("utf-8", "replace")} for r in rows]

    @app.get("/api/v1/outbox/refused", dependencies=[admin],
             summary="Events the command center refused for good, newest first")
    async def refused(limit: int = 100) -> list[dict[str, Any]]:
        return await gw.store.refused(max(1, min(limit, 1000)))

    @app.post("/api/v1/outbox/{outbox_id}/requeue", dependencies=[admin],
              summary="Send a refused event again, once its cause is fixed")
    async def requeue(outbox_id: int) -> dict[str, object]:
        if not 0 < outbox_id < 2**63 or not await gw.requeue(outbox_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no refused event {outbox_id}")
        return {"id": outbox_id, "requeued": True}

    @app.get("/metrics", dependencies=[admin], summary="Prometheus metrics")
    async def metrics() -> Response:
        gauges = {**gw.gauges(), "outbox_depth": await gw.store.outbox_depth()}
        return Response(gw.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.post("/api/v1/cc/state", dependencies=[cc], summary="A command center reports an alarm's state")
    async def cc_state(body: StateIn) -> dict[str, object]:
        stored = await gw.command_center_state(body.device_id, body.seq, body.state, body.incident_id, body.by,
                                               int(body.at.timestamp() * 1000))
        if stored is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alarm {body.device_id}:{body.seq}")
        return {"event_id": body.event_id, "state": stored.state, "changed": stored.changed,
                "rank": proto.state_rank(stored.state)}

    return app
