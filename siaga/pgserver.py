"""A private PostgreSQL server from the Debian binaries, for tests and benchmarks.

Never the machine's own service: `initdb` makes a new cluster in a folder of ours, `pg_ctl` starts it
on a free loopback port with its socket in that folder, and `stop()` removes it. PostgreSQL refuses
to run as root, so when we are root the cluster belongs to the `postgres` account the Debian
package creates (or `nobody`), and its commands run as that account through `runuser`.

`durable=False` turns off fsync and synchronous commit: for tests, where a lost transaction on a
power cut does not matter and speed does. Benchmarks keep the durable default.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .net import free_port


class PostgresNotFoundError(RuntimeError):
    pass


def find_bindir() -> Path:
    """The newest installed PostgreSQL server's binaries (Debian: /usr/lib/postgresql/N/bin)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    raise PostgresNotFoundError("PostgreSQL server binaries not found: install the Debian package 'postgresql'")


def _account() -> str | None:
    """The account to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresNotFoundError("running as root and no 'postgres' or 'nobody' account to run PostgreSQL as")


class PostgresProcess:
    def __init__(self, *, port: int | None = None, durable: bool = True, max_connections: int = 200) -> None:
        self.bindir = find_bindir()
        self.port = port or free_port()
        self.durable = durable
        self.max_connections = max_connections
        self.account = _account()
        self.folder = Path(tempfile.mkdtemp(prefix="siaga-pg-"))
        self.data = self.folder / "data"
        self.user = "siaga"
        self.started = False

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.account is not None:
            command = ["runuser", "-u", self.account, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=timeout)

    def start(self) -> PostgresProcess:
        if self.account is not None:
            info = pwd.getpwnam(self.account)
            os.chown(self.folder, info.pw_uid, info.pw_gid)
        os.chmod(self.folder, 0o700)
        try:
            self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-instructions")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr.strip()}") from None
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={self.folder}",
                   f"-c max_connections={self.max_connections}", "-c shared_buffers=64MB"]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                           "-t", "60", "-o", " ".join(options), "start", check=False)
        if result.returncode != 0:
            log = (self.folder / "server.log").read_text(errors="replace")[-2000:] if (
                self.folder / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr.strip()} {log}")
        self.started = True
        self._wait_port()
        return self

    def _wait_port(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its DSN."""
        import psycopg  # only needed where PostgreSQL is used

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
            self.started = False
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
