"""The gateway's HTTP API: device registry and audit for admins, state callbacks for the command
center, health for monitoring. Tokens are compared in constant time; no response carries a secret."""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Response, status
from pydantic import BaseModel, Field

from siagafw import proto

from .store import StoreError

if TYPE_CHECKING:
    from .service import Gateway

DEVICE_ID = r"^[a-z0-9][a-z0-9-]{2,31}$"


class DeviceIn(BaseModel):
    id: str = Field(pattern=DEVICE_ID)
    secret_hex: str = Field(pattern=r"^[0-9a-f]{64}$", description="32-byte HMAC key, lowercase hex")
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    address: str = Field(default="", max_length=200)
    area: str = Field(default="", max_length=64)


class DeviceOut(BaseModel):
    id: str
    created_ms: int
    revoked: bool
    lat: float | None
    lon: float | None
    address: str
    area: str
    last_seen_ms: int | None
    battery_mv: int | None
    firmware: str | None


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

    @app.get("/health", summary="Liveness and the MQTT link")
    async def health() -> dict[str, object]:
        mqtt_up = gw.link is not None and gw.link.connected.is_set()
        return {"status": "ok" if mqtt_up else "degraded", "mqtt": mqtt_up,
                "outbox": await gw.store.outbox_depth()}

    @app.post("/api/v1/devices", status_code=201, dependencies=[admin], summary="Register a device")
    async def add_device(dev: DeviceIn) -> DeviceOut:
        try:
            await gw.register_device(dev.id, bytes.fromhex(dev.secret_hex), lat_e6=_e6(dev.lat),
                                     lon_e6=_e6(dev.lon), address=dev.address, area=dev.area)
        except StoreError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return next(d for d in await list_devices() if d.id == dev.id)

    @app.get("/api/v1/devices", dependencies=[admin], summary="List devices (never their secrets)")
    async def list_devices() -> list[DeviceOut]:
        return [DeviceOut(id=d.id, created_ms=d.created_ms, revoked=d.revoked_ms is not None,
                          lat=None if d.lat_e6 is None else d.lat_e6 / 1e6,
                          lon=None if d.lon_e6 is None else d.lon_e6 / 1e6, address=d.address, area=d.area,
                          last_seen_ms=d.last_seen_ms, battery_mv=d.battery_mv, firmware=d.firmware)
                for d in await gw.store.devices()]

    @app.post("/api/v1/devices/{device_id}/revoke", dependencies=[admin], summary="Revoke a device now")
    async def revoke(device_id: str) -> dict[str, object]:
        if device_id not in gw.keys:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id}")
        return {"device_id": device_id, "revoked": True, "changed": await gw.revoke_device(device_id)}

    @app.get("/api/v1/audit", dependencies=[admin], summary="Newest rejected messages first")
    async def audit(limit: int = 100) -> list[dict[str, object]]:
        return await gw.store.audit(max(1, min(limit, 1000)))

    @app.get("/metrics", dependencies=[admin], summary="Counters in Prometheus text format")
    async def metrics() -> Response:
        lines = [f"siaga_gateway_{name} {value}" for name, value in sorted(gw.metrics.items())]
        lines.append(f"siaga_gateway_outbox_depth {await gw.store.outbox_depth()}")
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.post("/api/v1/cc/state", dependencies=[cc], summary="A command center reports an alarm's state")
    async def cc_state(body: StateIn) -> dict[str, object]:
        stored = await gw.command_center_state(body.device_id, body.seq, body.state, body.incident_id, body.by,
                                               int(body.at.timestamp() * 1000))
        if stored is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alarm {body.device_id}:{body.seq}")
        return {"event_id": body.event_id, "state": stored.state, "changed": stored.changed,
                "rank": proto.state_rank(stored.state)}

    return app
