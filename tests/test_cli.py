"""The `siaga` command line: broker subcommands against real Mosquitto, friendly errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from siaga.broker.passwd import verify_password
from siaga.net import free_port
from tests.support.net import wait_port


@pytest.fixture(autouse=True)
def _english(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the tool's English messages (its default is Bahasa Indonesia)."""
    monkeypatch.setenv("SIAGA_LANG", "en")


def siaga(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "siaga.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=cwd, check=False)


def test_broker_subcommands_make_a_config_mosquitto_runs(tmp_path: Path) -> None:
    assert siaga("broker", "acl", "--out", str(tmp_path / "acl")).returncode == 0
    done = siaga("broker", "set-password", "--passwd", str(tmp_path / "pw"), "btn-001", stdin="pass-of-btn-001\n")
    assert done.returncode == 0, done.stderr
    entry = (tmp_path / "pw").read_text().strip()
    assert "pass-of-btn-001" not in entry
    assert verify_password(entry.split(":", 1)[1], "pass-of-btn-001")
    port = free_port()
    user = os.environ.get("USER") or "root"
    conf = siaga("broker", "config", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                 "--password-file", str(tmp_path / "pw"), "--acl-file", str(tmp_path / "acl"), "--run-as", user)
    assert conf.returncode == 0, conf.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "m.conf").write_text(conf.stdout)
    from siaga.broker.process import MosquittoNotFoundError, find_mosquitto
    try:
        binary = find_mosquitto()
    except MosquittoNotFoundError:
        pytest.skip("Mosquitto is not installed")
    proc = subprocess.Popen([binary, "-c", str(tmp_path / "m.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
    finally:
        proc.terminate()
        proc.wait(10)


def test_remove_unknown_user_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("")
    done = siaga("broker", "remove-user", "--passwd", str(tmp_path / "pw"), "nobody")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"siaga: nobody has no login in {tmp_path / 'pw'}"
    assert "Traceback" not in done.stderr


def test_missing_gateway_config_is_a_one_line_error(tmp_path: Path) -> None:
    done = siaga("gateway", "run", "--config", str(tmp_path / "nope.toml"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_simulate_accounts_for_every_alarm(tmp_path: Path) -> None:
    # A short quiet day: the command's whole path (the disaster itself is tests/test_fleet.py's).
    done = siaga("simulate", "--buttons", "10", "--scenario", "quiet-day", "--duration", "8", "--broker", "embedded")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every alarm accounted for, exactly once" in done.stdout
    assert "10 buttons connected" in done.stdout
    assert re.search(r"alarms raised [1-9]", done.stdout), done.stdout  # not an empty account
