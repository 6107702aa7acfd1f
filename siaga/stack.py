"""A whole Siaga system in one process, for `siaga demo` and `siaga simulate`: a broker (Mosquitto
when installed, else the embedded demo broker), the reference command center and the gateway, with
fresh credentials and databases in a temporary folder.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from siaga.asgi import EmbeddedServer, embedded_server
from siaga.broker.embedded import EmbeddedBroker, mosquitto_available
from siaga.broker.process import MosquittoProcess
from siaga.commandcenter.app import close_live_streams
from siaga.commandcenter.app import create_app as create_cc_app
from siaga.commandcenter.config import CallbackSettings, CCConfig
from siaga.devices.sites import Site
from siaga.gateway.adapters import ReferenceAdapter
from siaga.gateway.config import GatewayConfig
from siaga.gateway.mqtt import MqttSettings
from siaga.gateway.service import Gateway
from siaga.gateway.store import open_store
from siaga.net import free_port

Say = Callable[[str, str], None]
OPERATOR = "operator-demo"


class LocalStack:
    """`async with LocalStack(workdir, "auto", say) as stack:` — everything running and ready."""

    def __init__(self, workdir: Path, broker: str, say: Say, *, cc_extra: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.broker_kind = broker
        self.say = say
        self.cc_port, self.gw_port = free_port(), free_port()
        self.cc_url = f"http://127.0.0.1:{self.cc_port}"
        self.gw_url = f"http://127.0.0.1:{self.gw_port}"
        self.intake_token, self.operator_token, self.callback_token, self.admin_token = (
            secrets.token_urlsafe(24) for _ in range(4))
        self._gateway_password = secrets.token_urlsafe(24)
        self._cc_extra = cc_extra or {}
        self._mosquitto: MosquittoProcess | None = None
        self._embedded: EmbeddedBroker | None = None
        self.mqtt_port = 0
        self.gateway: Gateway | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._cc_server: EmbeddedServer | None = None
        self._gw_stop = asyncio.Event()
        self.operator = httpx.AsyncClient(base_url=self.cc_url, timeout=10,
                                          headers={"Authorization": f"Bearer {self.operator_token}"})

    async def __aenter__(self) -> LocalStack:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stop()

    async def _start(self) -> None:
        if self.broker_kind == "mosquitto" or (self.broker_kind == "auto" and mosquitto_available()):
            self._mosquitto = MosquittoProcess(self.workdir / "broker", gateway_password=self._gateway_password)
            await asyncio.to_thread(self._mosquitto.start)
            self.mqtt_port = self._mosquitto.port
            self.say("broker", f"Mosquitto on 127.0.0.1:{self.mqtt_port} with per-device logins and ACL")
        else:
            self._embedded = await EmbeddedBroker("127.0.0.1", free_port()).start()
            self.mqtt_port = self._embedded.port
            self.say("broker", f"embedded demo broker on 127.0.0.1:{self.mqtt_port} "
                               "(Mosquitto not installed; no logins or ACL in this mode)")
        cc_cfg = CCConfig(host="127.0.0.1", port=self.cc_port, db_path=self.workdir / "cc.sqlite3",
                          intake_token=self.intake_token, operator_tokens={self.operator_token: OPERATOR},
                          gateway_url=self.gw_url, gateway_token=self.callback_token, log_level="warning",
                          callbacks=CallbackSettings(initial_backoff_s=0.2, max_backoff_s=2.0, idle_poll_s=1.0),
                          **self._cc_extra)
        self._cc_app = create_cc_app(cc_cfg)
        self._cc_server = embedded_server(self._cc_app, "127.0.0.1", self.cc_port)
        gw_cfg = GatewayConfig(
            gateway_id="gw-demo", db_path=self.workdir / "gateway.sqlite3",
            mqtt=MqttSettings("127.0.0.1", self.mqtt_port, "siaga-gateway", self._gateway_password,
                              "siaga-gateway-demo"),
            api_host="127.0.0.1", api_port=self.gw_port, admin_token=self.admin_token,
            cc_callback_token=self.callback_token, cc_url=self.cc_url, cc_token=self.intake_token,
            retry_first_s=0.2, retry_max_s=2.0)
        store = open_store(gw_cfg.db, group_window_ms=gw_cfg.incident_window_s * 1000)
        self.gateway = Gateway(gw_cfg, store, ReferenceAdapter(self.cc_url, self.intake_token))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._cc_server.serve(), name="command center"),
                       loop.create_task(self.gateway.run(self._gw_stop), name="gateway")]
        async with asyncio.timeout(30):
            while not (self._cc_server.started and self.gateway.ready.is_set() and self.gateway.link is not None
                       and self.gateway.link.connected.is_set()):
                for task in self._tasks:
                    if task.done():
                        task.result()  # raises the reason it stopped
                        raise RuntimeError(f"{task.get_name()} stopped during start-up")
                await asyncio.sleep(0.05)

    async def _stop(self) -> None:
        self._gw_stop.set()
        if self._cc_server is not None:
            # uvicorn waits for open connections: end the consoles' event streams first.
            close_live_streams(self._cc_app)
            self._cc_server.should_exit = True
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.operator.aclose()
        if self._mosquitto is not None:
            await asyncio.to_thread(self._mosquitto.close)
        if self._embedded is not None:
            await self._embedded.stop()

    def check_running(self) -> None:
        """Raise if the command center or the gateway has stopped on its own."""
        for task in self._tasks:
            if task.done():
                task.result()
                raise RuntimeError(f"{task.get_name()} stopped")

    async def register(self, sites: Iterable[Site], *, heartbeat_s: int = 30, long_ms: int = 1500,
                       cancel_ms: int = 0) -> list[dict[str, Any]]:
        """Register buttons with the broker and the gateway; return their firmware configs."""
        assert self.gateway is not None
        configs = []
        for site in sites:
            secret_hex, password = secrets.token_hex(32), secrets.token_urlsafe(16)
            if self._mosquitto is not None:
                await asyncio.to_thread(self._mosquitto.add_device, site.device_id, password, reload=False)
            loc = site.location()
            await self.gateway.register_device(site.device_id, bytes.fromhex(secret_hex), lat_e6=loc["lat_e6"],
                                               lon_e6=loc["lon_e6"], address=site.place, area=site.area)
            configs.append({"dev": site.device_id, "secret": secret_hex,
                            "mqtt": {"host": "127.0.0.1", "port": self.mqtt_port, "password": password},
                            "loc": loc, "button": {"long_ms": long_ms, "cancel_ms": cancel_ms},
                            "heartbeat_s": heartbeat_s})
        if self._mosquitto is not None:
            await asyncio.to_thread(self._mosquitto.reload)
        return configs

    async def incidents(self) -> list[dict[str, Any]]:
        resp = await self.operator.get("/api/v1/incidents", params={"limit": 1000})
        resp.raise_for_status()
        return resp.json()
