"""Device logins at the broker: the Mosquitto password file (siaga.broker.passwd) plus a reload,
so that a new button can log in and a revoked one is refused and disconnected at once
(docs/broker.md §5)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess

from siaga.broker.passwd import read_entries, remove_user, set_password

from .errors import BrokerError
from .settings import BrokerFiles

log = logging.getLogger(__name__)


class BrokerLogins:
    def __init__(self, files: BrokerFiles | None) -> None:
        self.files = files

    @property
    def managed(self) -> bool:
        return self.files is not None

    def set(self, device_id: str, password: str) -> None:
        if self.files is None:
            return
        try:
            set_password(self.files.password_file, device_id, password)
        except OSError as exc:
            raise BrokerError(f"cannot write the broker password file {self.files.password_file}: {exc.strerror}",
                              "run the tool as a user that may write it (or with sudo)") from None

    def remove(self, device_id: str) -> bool:
        if self.files is None:
            return False
        try:
            return remove_user(self.files.password_file, device_id)
        except OSError as exc:
            raise BrokerError(f"cannot write the broker password file {self.files.password_file}: {exc.strerror}",
                              "run the tool as a user that may write it (or with sudo)") from None

    def has(self, device_id: str) -> bool:
        return self.files is not None and device_id in read_entries(self.files.password_file)

    def reload(self) -> None:
        """Make Mosquitto re-read the password file (SIGHUP); it then also drops removed users'
        live connections."""
        if self.files is None:
            return
        if self.files.reload_command:
            try:
                proc = subprocess.run(list(self.files.reload_command), capture_output=True, text=True, timeout=30,
                                      check=False)
            except OSError as exc:
                raise BrokerError(f"cannot run the broker reload command {self.files.reload_command[0]}: {exc}") \
                    from None
            if proc.returncode != 0:
                raise BrokerError(f"the broker reload command failed ({proc.returncode}): "
                                  f"{(proc.stderr or proc.stdout).strip()[:200]}")
            return
        assert self.files.pid_file is not None
        try:
            pid = int(self.files.pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot signal the broker through {self.files.pid_file}: {exc}",
                              "is Mosquitto running? check [broker] pid_file, or use reload_command") from None
        log.info("sent SIGHUP to the broker (pid %d)", pid)
