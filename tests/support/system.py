"""The whole chain on loopback for end-to-end tests: a real Mosquitto from broker/ config, the
reference command center and the gateway as separate processes, and devices registered in both
the broker and the gateway."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from siaga.broker.process import MosquittoProcess
from tests.support.ccproc import CommandCenterProcess
from tests.support.gateway import GatewayProcess
from tests.support.net import free_port


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

    def new_device(self, device_id: str, *, site: str | None = None, reload: bool = True) -> DeviceCredentials:
        creds = DeviceCredentials(device_id, secrets.token_hex(32), secrets.token_urlsafe(18))
        self.broker.add_device(device_id, creds.mqtt_password, reload=reload)
        self.gateway.register(device_id, creds.secret_hex, lat=-6.175392, lon=106.827153,
                              address="Jl. Medan Merdeka Barat 12", area="31.71.01.1001", site=site)
        return creds

    def new_devices(self, prefix: str, n: int) -> list[DeviceCredentials]:
        """n devices with one broker reload at the end instead of one each."""
        made = [self.new_device(f"{prefix}-{i:03d}", reload=False) for i in range(n)]
        self.broker.reload()
        return made


def start_system(tmp_path: Path, broker: MosquittoProcess, *, gateway_settings: str = "",
                 extra_toml: str = "", mqtt_settings: str = "") -> Iterator[System]:
    gw_port, callback_token = free_port(), secrets.token_urlsafe(24)
    cc = CommandCenterProcess(tmp_path, gateway_url=f"http://127.0.0.1:{gw_port}", gateway_token=callback_token)
    cc.start()
    gateway = GatewayProcess(tmp_path, mqtt_port=broker.port, mqtt_password=broker.gateway_password,
                             cc_url=cc.url, cc_token=cc.intake_token, port=gw_port, callback_token=callback_token,
                             gateway_settings=gateway_settings, extra_toml=extra_toml, mqtt_settings=mqtt_settings)
    try:
        gateway.start()
        yield System(broker, cc, gateway)
    finally:
        try:
            gateway.stop()
        finally:
            cc.stop()


@pytest.fixture
def system(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[System]:
    yield from start_system(tmp_path, mosquitto)
