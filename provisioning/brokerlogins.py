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
from .text import t

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
            raise BrokerError(t("broker.passwd_unwritable", path=self.files.password_file, error=exc.strerror),
                              t("broker.passwd_unwritable.hint")) from None

    def remove(self, device_id: str) -> bool:
        if self.files is None:
            return False
        try:
            return remove_user(self.files.password_file, device_id)
        except OSError as exc:
            raise BrokerError(t("broker.passwd_unwritable", path=self.files.password_file, error=exc.strerror),
                              t("broker.passwd_unwritable.hint")) from None

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
                raise BrokerError(t("broker.reload_unrunnable", command=self.files.reload_command[0],
                                    error=exc)) from None
            if proc.returncode != 0:
                raise BrokerError(t("broker.reload_failed", code=proc.returncode,
                                    output=(proc.stderr or proc.stdout).strip()[:200]))
            return
        assert self.files.pid_file is not None
        try:
            pid = int(self.files.pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise BrokerError(t("broker.signal_failed", path=self.files.pid_file, error=exc),
                              t("broker.signal_failed.hint")) from None
        log.info("sent SIGHUP to the broker (pid %d)", pid)
