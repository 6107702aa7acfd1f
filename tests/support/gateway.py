"""Run the gateway as a real separate process (`siaga gateway run`), as an operator would."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.support.mosquitto import new_broker
from tests.support.net import free_port


class GatewayProcess:
    def __init__(self, tmp_path: Path, *, mqtt_port: int, mqtt_password: str, cc_url: str, cc_token: str,
                 gateway_id: str = "gw-test", port: int | None = None, callback_token: str | None = None,
                 gateway_settings: str = "", extra_toml: str = "", mqtt_settings: str = "",
                 python: str = sys.executable, people: Mapping[str, str] | None = None, db: str = "gateway.sqlite3",
                 # Most tests try wrong tokens on purpose, all from 127.0.0.1: far above the default.
                 api_settings: str = 'throttle_per_address = "10000/minute"', cc_settings: str = "",
                 sms_settings: str = "") -> None:
        """gateway_settings: TOML lines for the [gateway] table; extra_toml: more lines for the
        [forwarding] table, then further tables; python: the interpreter (another install of
        Siaga, to compare versions in a benchmark); people: name -> role of [[api.people]] entries,
        each with a token of its own (`people_tokens`, `headers_of(name)`), beside the admin token;
        api_settings: more lines for the [api] table; cc_settings: more lines for the [commandcenter]
        table (e.g. "report_every_s = 1"); db: the [gateway] db setting (a SQLite file in
        the gateway's folder, or a postgresql:// URL); sms_settings: the lines of an [sms] table
        (the SMS path's modem: port = "<a modem simulator's pty>", ...), none without them."""
        self.python = python
        self.dir = Path(tmp_path) / "gateway"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway_id = gateway_id
        self.admin_token = secrets.token_urlsafe(24)
        # What the command center presents when it reports a state to us.
        self.callback_token = callback_token or secrets.token_urlsafe(24)
        self.db_path = self.dir / "gateway.sqlite3"
        self.log_path = self.dir / "gateway.log"
        secrets_dir = self.dir / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        for name, value in {"mqtt-password": mqtt_password, "admin-token": self.admin_token,
                            "cc-callback-token": self.callback_token, "cc-intake-token": cc_token}.items():
            (secrets_dir / name).write_text(value + "\n", encoding="utf-8")
        self.people_tokens = {name: secrets.token_urlsafe(24) for name in (people or {})}
        people_toml = ""
        for name, role in (people or {}).items():
            (secrets_dir / f"person-{name}").write_text(self.people_tokens[name] + "\n", encoding="utf-8")
            people_toml += f'\n[[api.people]]\nname = "{name}"\nrole = "{role}"\ntoken_file = "secrets/person-{name}"\n'
        self.config_path = self.dir / "gateway.toml"
        self.config_path.write_text(f"""
[gateway]
id = "{gateway_id}"
db = "{db}"
{gateway_settings}

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
username = "siaga-gateway"
password_file = "secrets/mqtt-password"
{mqtt_settings}

[api]
host = "127.0.0.1"
port = {self.port}
admin_token_file = "secrets/admin-token"
cc_token_file = "secrets/cc-callback-token"
{api_settings}
{people_toml}
[commandcenter]
url = "{cc_url}"
token_file = "secrets/cc-intake-token"
{cc_settings}

[forwarding]
retry_first_s = 0.2
retry_max_s = 2.0
{extra_toml}
{"[sms]" if sms_settings else ""}
{sms_settings}
""", encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> GatewayProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "siaga.cli", "gateway", "run", "--config", str(self.config_path)],
                cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).json().get("mqtt"):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"gateway not healthy after {timeout_s} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def headers_of(self, person: str) -> dict[str, str]:
        """The Authorization header of a person given with `people`."""
        return {"Authorization": f"Bearer {self.people_tokens[person]}"}

    def register(self, device_id: str, secret_hex: str, **location: object) -> None:
        """Register a device; `location` holds the other fields of the API (lat, lon, address, area,
        site, phone)."""
        resp = httpx.post(f"{self.url}/api/v1/devices", headers=self.admin_headers,
                          json={"id": device_id, "secret_hex": secret_hex, **location}, timeout=5)
        resp.raise_for_status()

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def metrics(self) -> dict[str, float]:
        """Samples by name without the siaga_gateway_ prefix, labels included:
        {"alarms_stored_total": 3.0, 'rejected_total{reason="replay"}': 1.0, ...}."""
        text = httpx.get(f"{self.url}/metrics", headers=self.admin_headers, timeout=5).text
        return {line.rsplit(" ", 1)[0].removeprefix("siaga_gateway_"): float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def lone_gateway(folder: Path, **kwargs: Any) -> Iterator[GatewayProcess]:
    """A gateway with a broker of its own and no command center (its address only has to be valid:
    nothing is forwarded), for tests of the admin API. Keyword arguments go to GatewayProcess."""
    broker = new_broker(folder / "mosquitto")
    broker.start()
    try:
        with GatewayProcess(folder, mqtt_port=broker.port, mqtt_password=broker.gateway_password,
                            cc_url=f"http://127.0.0.1:{free_port()}", cc_token=secrets.token_urlsafe(24),
                            **kwargs) as gateway:
            yield gateway
    finally:
        broker.close()
