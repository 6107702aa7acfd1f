"""Run a real Mosquitto as a child process: for tests, benchmarks and `siaga broker run`.

`MosquittoProcess` writes the same configuration as production (`render_config`, `write_acl`, the
password file) into a working directory, starts `mosquitto -c <conf>` on a free loopback port and
waits until it accepts connections. It can then kill the broker (as a crash would), start it again on
the same port with the same persistence directory, add and revoke devices with a live reload, and
return the broker's log.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from siaga.net import free_port

from .config import DEFAULT_GATEWAY_USER, TlsListener, render_config, validate_device_id, write_acl
from .passwd import remove_user, set_password, set_passwords

log = logging.getLogger(__name__)

# `mosquitto` lives in sbin on Debian, which is not on a normal user's PATH.
_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")
BINARY_ENV = "SIAGA_MOSQUITTO"
# The line Mosquitto logs when it starts a reload after SIGHUP.
_RELOAD_LINE = "Reloading config"


class MosquittoError(RuntimeError):
    """Mosquitto could not be started, reloaded or stopped; the message includes its log."""


class MosquittoNotFoundError(MosquittoError):
    """No `mosquitto` binary was found."""


def find_mosquitto(binary: str | None = None) -> str:
    """Return the path of the mosquitto binary: `binary`, $SIAGA_MOSQUITTO, PATH, then the sbin folders."""
    candidate = binary or os.environ.get(BINARY_ENV)
    if candidate:
        found = shutil.which(candidate)
        if found is None:
            raise MosquittoNotFoundError(f"mosquitto binary {candidate!r} does not exist or is not executable")
        return found
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path=os.pathsep.join(_SEARCH_DIRS))
    if found is None:
        raise MosquittoNotFoundError(
            "the mosquitto binary was not found on PATH or in "
            + ", ".join(_SEARCH_DIRS)
            + f"; install Mosquitto 2.0 (Debian: apt-get install mosquitto) or set {BINARY_ENV}"
        )
    return found


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoProcess:
    """A Mosquitto broker in a child process, configured like production.

    Use it as a context manager (start on enter, stop and clean up on exit) or call `start()` and
    `close()`. Without `directory` the files live in a temporary folder that `close()` removes.
    The gateway user's password is `gateway_password` (random unless given); `devices` maps device
    ids to passwords to create before the first start.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        port: int | None = None,
        bind: str = "127.0.0.1",
        gateway_user: str = DEFAULT_GATEWAY_USER,
        gateway_password: str | None = None,
        devices: Mapping[str, str] | None = None,
        tls: TlsListener | None = None,
        binary: str | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self._binary = find_mosquitto(binary)
        self._owns_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="siaga-mosquitto-") if directory is None else directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.bind = bind
        self.port = port if port is not None else free_port(bind)
        self.tls = tls
        self.gateway_user = gateway_user
        self.gateway_password = gateway_password or secrets.token_urlsafe(24)
        self.start_timeout_s = start_timeout_s
        self.conf_path = self.directory / "mosquitto.conf"
        self.data_dir = self.directory / "data"
        self.password_file = self.directory / "passwd"
        self.acl_file = self.directory / "acl"
        self.log_path = self.directory / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

        try:
            self._write_files(devices or {})
        except BaseException:
            if self._owns_directory:
                shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def _write_files(self, devices: Mapping[str, str]) -> None:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        write_acl(self.acl_file, gateway_user=self.gateway_user)
        set_password(self.password_file, self.gateway_user, self.gateway_password)
        for device_id, password in devices.items():
            self._set_device(device_id, password)
        # When started as root Mosquitto switches to the `mosquitto` user before it reads the password
        # file, which it could not read here: keep it as the user who started it.
        run_as = pwd.getpwuid(os.geteuid()).pw_name
        self.conf_path.write_text(
            render_config(
                port=self.port,
                bind=self.bind,
                data_dir=self.data_dir,
                password_file=self.password_file,
                acl_file=self.acl_file,
                tls=self.tls,
                run_as=run_as,
            ),
            encoding="utf-8",
        )

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> MosquittoProcess:
        """Start the broker (again: same port, same persistence) and wait until it accepts connections."""
        if self.running:
            raise MosquittoError(f"mosquitto is already running on port {self.port}")
        # Append: the log of a killed broker stays readable after the restart.
        with self.log_path.open("ab") as log_fh:
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,  # a Ctrl-C meant for the tests must not kill the broker first
            )
        ports = [(self.bind, self.port)]
        if self.tls is not None:
            ports.append((self.tls.bind, self.tls.port))
        deadline = time.monotonic() + self.start_timeout_s
        for bind, port in ports:
            host = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
            while not _accepts(host, port):
                if self._proc.poll() is not None:
                    code = self._proc.returncode
                    self._proc = None
                    raise MosquittoError(f"mosquitto exited with status {code} at start:\n{self._log_tail()}")
                if time.monotonic() > deadline:
                    self.kill()
                    raise MosquittoError(
                        f"mosquitto did not accept connections on {host}:{port} within "
                        f"{self.start_timeout_s} s:\n{self._log_tail()}"
                    )
                time.sleep(0.02)
        log.info("mosquitto (pid %d) listening on %s:%d", self._proc.pid, self.bind, self.port)
        return self

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM: Mosquitto saves its persistence file and exits. Returns the exit status."""
        if self._proc is None:
            return None
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto (pid %d) ignored SIGTERM for %s s; killing it", proc.pid, timeout_s)
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would: nothing queued since the last autosave is saved."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def reload(self, timeout_s: float = 10.0) -> None:
        """SIGHUP: re-read the password and ACL files; returns once Mosquitto has done so.

        Mosquitto reloads in its main loop, between two rounds of network handling, and logs the
        start of it; a connection made after that line is checked against the new files.
        """
        if not self.running or self._proc is None:
            return
        before = self.log_text().count(_RELOAD_LINE)
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while self.log_text().count(_RELOAD_LINE) <= before:
            if not self.running:
                raise MosquittoError(f"mosquitto exited during reload:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise MosquittoError(f"mosquitto did not reload within {timeout_s} s:\n{self._log_tail()}")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the broker and remove the working directory if it was a temporary one."""
        try:
            self.stop()
        finally:
            if self._owns_directory:
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> MosquittoProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- devices ---------------------------------------------------------------------------------

    def add_device(self, device_id: str, password: str, *, reload: bool = True) -> None:
        """Create or update a device login; a running broker is reloaded so it takes effect at once."""
        self._set_device(device_id, password)
        if reload:
            self.reload()

    def add_devices(self, logins: Mapping[str, str]) -> None:
        """Create or update many device logins (device id -> password) at once, then reload."""
        for device_id in logins:
            validate_device_id(device_id)
            if device_id == self.gateway_user:
                raise ValueError(f"device id {device_id!r} is reserved for the gateway")
        set_passwords(self.password_file, logins)
        self.reload()

    def remove_device(self, device_id: str, *, reload: bool = True) -> bool:
        """Revoke a device login and reload the broker; returns False if it did not exist."""
        removed = remove_user(self.password_file, validate_device_id(device_id))
        if reload:
            self.reload()
        return removed

    def _set_device(self, device_id: str, password: str) -> None:
        validate_device_id(device_id)
        if device_id == self.gateway_user:
            # The ACL would treat it as the gateway: a device must never get the gateway's rights.
            raise ValueError(f"device id {device_id!r} is reserved for the gateway")
        set_password(self.password_file, device_id, password)

    # -- logs ------------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything Mosquitto wrote (stdout and stderr) since this object was created."""
        try:
            return self.log_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<MosquittoProcess {self.bind}:{self.port} {state}>"
