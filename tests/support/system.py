"""The whole chain on loopback for end-to-end tests: a real Mosquitto from broker/ config, the
reference command center and the gateway as separate processes, and devices registered in both
the broker and the gateway."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from siaga.broker.process import MosquittoProcess
from tests.support.ccproc import CommandCenterProcess
from tests.support.gateway import GatewayProcess
from tests.support.modem import ModemSim
from tests.support.mosquitto import new_broker
from tests.support.net import free_port, share_httpx_tls_context
from tests.support.waiting import wait_for


def pytest_configure(config: pytest.Config) -> None:
    # This module is a plugin of the whole suite (tests/conftest.py): one TLS context for every
    # httpx client the tests make, instead of one per httpx.get() (see share_httpx_tls_context).
    share_httpx_tls_context()


def together(*steps: Callable[[], object]) -> None:
    """Run the steps at the same time (each in a thread) and wait for all; the first error is raised.

    Starting the command center and the gateway is mostly their interpreters importing modules:
    on two cores, the two processes start side by side in the time of one.
    """
    with ThreadPoolExecutor(len(steps)) as pool:
        futures = [pool.submit(step) for step in steps]
    for future in futures:
        future.result()


# Where the test devices are registered (the gateway's record; an alarm carries its own location).
PLACE: dict[str, object] = {"lat": -6.175392, "lon": 106.827153, "address": "Jl. Medan Merdeka Barat 12",
                            "area": "31.71.01.1001"}


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    device_id: str
    secret_hex: str
    mqtt_password: str


@dataclass
class System:
    broker: MosquittoProcess
    cc: CommandCenterProcess
    gateway: GatewayProcess

    def new_device(self, device_id: str, *, site: str | None = None, reload: bool = True,
                   phone: str | None = None) -> DeviceCredentials:
        """A device in the broker and the gateway; `phone`: its SIM's number for the SMS path."""
        creds = DeviceCredentials(device_id, secrets.token_hex(32), secrets.token_urlsafe(18))
        self.broker.add_device(device_id, creds.mqtt_password, reload=reload)
        self.gateway.register(device_id, creds.secret_hex, **PLACE, site=site,
                              **({"phone": phone} if phone is not None else {}))
        return creds

    def new_devices(self, prefix: str, n: int) -> list[DeviceCredentials]:
        """n devices named prefix-000, prefix-001, ... (see `new_devices_named`)."""
        return self.new_devices_named([f"{prefix}-{i:03d}" for i in range(n)])

    def new_devices_named(self, device_ids: Iterable[str]) -> list[DeviceCredentials]:
        """Devices as `new_device` makes them, many at once: the broker logins in one rewrite of the
        password file and one reload, the registrations over one HTTP connection to the gateway."""
        made = [DeviceCredentials(d, secrets.token_hex(32), secrets.token_urlsafe(18)) for d in device_ids]
        self.broker.add_devices({c.device_id: c.mqtt_password for c in made})
        with httpx.Client(base_url=self.gateway.url, headers=self.gateway.admin_headers, timeout=10) as http:
            for c in made:
                http.post("/api/v1/devices", json={"id": c.device_id, "secret_hex": c.secret_hex, **PLACE,
                                                   "site": None}).raise_for_status()
        return made


def start_system(tmp_path: Path, broker: MosquittoProcess, *, gateway_settings: str = "",
                 extra_toml: str = "", mqtt_settings: str = "", sms_settings: str = "",
                 cc_settings: str = "", ota_settings: str = "") -> Iterator[System]:
    """ota_settings: the lines of an [ota] table (firmware over the air: keys = [...], ...), none
    without them."""
    gw_port, callback_token = free_port(), secrets.token_urlsafe(24)
    if ota_settings:
        extra_toml = f"{extra_toml}\n[ota]\n{ota_settings}\n"
    cc = CommandCenterProcess(tmp_path, gateway_url=f"http://127.0.0.1:{gw_port}", gateway_token=callback_token)
    gateway = GatewayProcess(tmp_path, mqtt_port=broker.port, mqtt_password=broker.gateway_password,
                             cc_url=cc.url, cc_token=cc.intake_token, port=gw_port, callback_token=callback_token,
                             gateway_settings=gateway_settings, extra_toml=extra_toml, mqtt_settings=mqtt_settings,
                             sms_settings=sms_settings, cc_settings=cc_settings)
    try:
        # Neither needs the other to become healthy (the gateway's health is its broker link; it
        # forwards with retries), and each is ready when its start() returns.
        together(cc.start, gateway.start)
        yield System(broker, cc, gateway)
    finally:
        try:
            gateway.stop()
        finally:
            cc.stop()


@pytest.fixture
def system(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[System]:
    yield from start_system(tmp_path, mosquitto)


def shared_system(folder: Path, **kwargs: str) -> Iterator[System]:
    """A broker of its own and `start_system` on it, for a module-scoped fixture: for tests that
    each use devices of their own and look only at those, so that one system can serve them all
    (hand each test `running_again(system)`). Keyword arguments go to `start_system`."""
    broker = new_broker(folder / "mosquitto")
    broker.start()
    try:
        yield from start_system(folder, broker, **kwargs)
    finally:
        broker.close()


def running_again(system: System, timeout_s: float = 20.0) -> System:
    """The shared system as a fresh one would be: whatever an earlier test stopped or killed (the
    broker, the gateway, the command center) started again, and the gateway connected to the broker."""
    if not system.broker.running:
        system.broker.start()
    steps = []
    if not system.cc.running:
        steps.append(system.cc.start)
    if not system.gateway.running():
        steps.append(system.gateway.start)
    if steps:
        together(*steps)
    wait_for(lambda: system.gateway.health().get("mqtt"), timeout_s, "the gateway connected to the broker")
    return system


@dataclass
class SmsRig:
    """A shared system whose gateway reads a modem of the modem simulator, and the simulator."""

    system: System
    sim: ModemSim


GATEWAY_NUMBER = "+6281100000001"   # the gateway modem's number in the SMS tests


@contextlib.contextmanager
def sms_rig(folder: Path, phones: dict[str, str], *, delay_ms: int, sms_settings: str = "",
            cc_settings: str = "") -> Iterator[SmsRig]:
    """The modem simulator with a modem per entry of `phones` (name -> number) and the gateway's
    (GATEWAY_NUMBER), and `shared_system` with an [sms] table on that modem (more lines in
    `sms_settings`), ready when the gateway's modem is up."""
    with ModemSim(modems={**phones, "gateway": GATEWAY_NUMBER}, delay_ms=delay_ms) as sim:
        settings = f'port = "{sim.path("gateway")}"\nnumber = "{GATEWAY_NUMBER}"\n{sms_settings}'
        with contextlib.contextmanager(shared_system)(folder, sms_settings=settings, cc_settings=cc_settings) as system:
            wait_for(lambda: system.gateway.metrics().get("sms_modem_up") == 1, 15, "the gateway's modem is up")
            yield SmsRig(system, sim)
