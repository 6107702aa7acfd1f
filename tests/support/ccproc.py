"""Run the reference command center as a real separate process for tests.

    with CommandCenterProcess(tmp_path) as cc:
        httpx.get(f"{cc.url}/health")

or use the `command_center` fixture. The process gets its own config, token files and database in
the given folder; `stop()` and `start()` restart it on the same port and database.

Several processes of one command center (docs/commandcenter.md, "Several processes"): give each the
same `db_url` (a PostgreSQL database) and `shared_port`, and `secrets_from` the first; each then
also listens on its own `port` (`.url`), and `.shared_url` is the address they share.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import httpx
import pytest

from tests.support.net import free_port

OPERATOR_NAME = "operator-1"
SUPERVISOR_NAME = "supervisor-1"
AGENCY_VIEWER_NAME = "viewer-fire"
AGENCY_VIEWER_AGENCY = "fire"
# A second agency with its own screen (search and rescue, Basarnas), for incidents dispatched to two
# agencies. The others have none: the room records their answers.
SAR_NAME = "staff-sar"
SAR_AGENCY = "sar"


class CommandCenterProcess:
    def __init__(
        self,
        tmp_path: Path,
        gateway_url: str | None = None,
        gateway_token: str | None = None,
        *,
        initial_backoff_s: float = 0.05,
        max_backoff_s: float = 0.5,
        request_timeout_s: float = 2.0,
        idle_poll_s: float = 1.0,
        escalation_after_s: float | None = None,
        webhook_url: str | None = None,
        webhook_token: str | None = None,
        extra_toml: str = "",
        # Most tests try wrong credentials on purpose, all from 127.0.0.1: far above the defaults.
        throttle: tuple[str, str] = ("10000/minute", "10000/minute"),
        record_failures_every_s: float = 60.0,
        server_toml: str = "",  # more lines for [server], e.g. "header_timeout_s = 2"
        db_url: str | None = None,  # a PostgreSQL database instead of the SQLite file
        shared_port: int | None = None,  # listen here with SO_REUSEPORT as well as on `port`
        gateway_urls: Sequence[str] | None = None,  # a gateway group instead of `gateway_url`
        name: str = "cc",  # the folder in tmp_path: several processes need one each
        secrets_from: CommandCenterProcess | None = None,  # the same tokens as that process (one deployment)
    ) -> None:
        self.dir = Path(tmp_path) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        self.shared_port = shared_port
        self.shared_url = f"http://127.0.0.1:{shared_port}" if shared_port is not None else self.url
        self.intake_token = secrets_from.intake_token if secrets_from else secrets.token_urlsafe(32)
        self.operator_token = secrets_from.operator_token if secrets_from else secrets.token_urlsafe(32)
        self.operator_name = OPERATOR_NAME
        self.supervisor_token = secrets_from.supervisor_token if secrets_from else secrets.token_urlsafe(32)
        self.supervisor_name = SUPERVISOR_NAME
        self.agency_token = secrets_from.agency_token if secrets_from else secrets.token_urlsafe(32)
        self.agency_name = AGENCY_VIEWER_NAME
        self.sar_token = secrets_from.sar_token if secrets_from else secrets.token_urlsafe(32)
        self.sar_name = SAR_NAME
        self.db_path = self.dir / "cc.sqlite3"
        self.config_path = self.dir / "cc.toml"
        self.log_path = self.dir / "cc.log"
        self._proc: subprocess.Popen[bytes] | None = None

        (self.dir / "intake.token").write_text(self.intake_token + "\n", encoding="utf-8")
        (self.dir / "operator.token").write_text(self.operator_token + "\n", encoding="utf-8")
        (self.dir / "supervisor.token").write_text(self.supervisor_token + "\n", encoding="utf-8")
        (self.dir / "agency.token").write_text(self.agency_token + "\n", encoding="utf-8")
        (self.dir / "sar.token").write_text(self.sar_token + "\n", encoding="utf-8")
        ports = [f"port = {self.port}"]
        if shared_port is not None:
            ports = [f"port = {shared_port}", "reuse_port = true", f"direct_port = {self.port}"]
        lines = [
            "[server]",
            'host = "127.0.0.1"',
            *ports,
            'log_level = "debug"',
            server_toml,
            "[store]",
            f'url = "{db_url}"' if db_url is not None else f'path = "{self.db_path.name}"',
            "[intake]",
            'token_file = "intake.token"',
            "[[operators]]",
            f'name = "{OPERATOR_NAME}"',
            'token_file = "operator.token"',
            "[[operators]]",
            f'name = "{SUPERVISOR_NAME}"',
            'role = "supervisor"',
            'token_file = "supervisor.token"',
            "[[operators]]",
            f'name = "{AGENCY_VIEWER_NAME}"',
            'role = "agency"',
            f'agency = "{AGENCY_VIEWER_AGENCY}"',
            'token_file = "agency.token"',
            "[[operators]]",
            f'name = "{SAR_NAME}"',
            'role = "agency"',
            f'agency = "{SAR_AGENCY}"',
            'token_file = "sar.token"',
            "[callbacks]",
            f"initial_backoff_s = {initial_backoff_s}",
            f"max_backoff_s = {max_backoff_s}",
            f"request_timeout_s = {request_timeout_s}",
            f"idle_poll_s = {idle_poll_s}",
            "[throttle]",
            f'per_address = "{throttle[0]}"',
            f'per_name = "{throttle[1]}"',
            f"record_every_s = {record_failures_every_s}",
        ]
        if gateway_url is not None or gateway_urls is not None:
            if gateway_token is None:
                raise ValueError("gateway_url needs gateway_token")
            (self.dir / "gateway.token").write_text(gateway_token + "\n", encoding="utf-8")
            # A JSON array of strings is a TOML array too.
            where = f'url = "{gateway_url}"' if gateway_urls is None else f"urls = {json.dumps(list(gateway_urls))}"
            lines += ["[gateway]", where, 'token_file = "gateway.token"']
        if escalation_after_s is not None or webhook_url is not None:
            lines.append("[escalation]")
            if escalation_after_s is not None:
                lines.append(f"after_s = {escalation_after_s}")
            if webhook_url is not None:
                lines.append(f'webhook_url = "{webhook_url}"')
            if webhook_token is not None:
                (self.dir / "webhook.token").write_text(webhook_token + "\n", encoding="utf-8")
                lines.append('webhook_token_file = "webhook.token"')
        self.config_path.write_text("\n".join(lines) + "\n" + extra_toml, encoding="utf-8")

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 20.0) -> None:
        if self.running:
            raise RuntimeError("command center is already running")
        log = self.log_path.open("ab")  # append: a restart keeps the earlier output for diagnosis
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "siaga.commandcenter", "--config", str(self.config_path)],
                cwd=self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()  # the child has its own copy
        self._wait_healthy(timeout_s)

    def _wait_healthy(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"command center exited with {self._proc.returncode} during startup:\n{self.log()}"
                    )
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise TimeoutError(f"command center not healthy after {timeout_s} s:\n{self.log()}")
                time.sleep(0.05)

    def stop(self, timeout_s: float = 15.0, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Send `sig`, wait for a graceful exit, SIGKILL if it does not come. Returns the exit code.

        After its graceful shutdown uvicorn re-raises the signal, so a clean stop by SIGTERM
        returns -SIGTERM and one by SIGINT 130; `stopped_cleanly()` tells them from a kill.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL, as in a crash or power cut: no shutdown code runs."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stopped_cleanly(self, returncode: int | None) -> bool:
        """The process ended through its shutdown path (not killed, not crashed)."""
        return returncode in (0, -signal.SIGTERM, 130) and "command center stopped" in self.log()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # ---- convenience --------------------------------------------------------------------------

    def intake_headers(self, event_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.intake_token}", "Idempotency-Key": event_id}

    def batch_headers(self) -> dict[str, str]:
        """For `POST /api/v1/alarms/batch`, which has no Idempotency-Key (each alarm's event_id is one)."""
        return {"Authorization": f"Bearer {self.intake_token}"}

    def operator_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_token}"}

    def supervisor_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.supervisor_token}"}

    def agency_headers(self) -> dict[str, str]:
        """The fire brigade's account: sees only incidents with a dispatch to "fire", and answers those dispatches."""
        return {"Authorization": f"Bearer {self.agency_token}"}

    def __enter__(self) -> CommandCenterProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture
def command_center(tmp_path: Path) -> Iterator[CommandCenterProcess]:
    """A running command center without a gateway."""
    with CommandCenterProcess(tmp_path) as cc:
        yield cc
