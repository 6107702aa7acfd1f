"""Mosquitto 2.0 password files, managed without the `mosquitto_passwd` binary.

An entry is `user:$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 over the UTF-8
password, 101 iterations, a 12-byte random salt and a 64-byte hash, in standard base64 with padding.
That is what `mosquitto_passwd -b` (its default `sha512-pbkdf2`) writes and what Mosquitto 2.0
checks at CONNECT; the test suite logs into a real Mosquitto with entries made here.

Passwords are never logged. Changes take effect when the broker is sent SIGHUP.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ._files import atomic_write

log = logging.getLogger(__name__)

# Mosquitto's defaults (mosquitto_passwd 2.0): changing them would still verify, but matching them
# keeps our entries indistinguishable from the tool's.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64
_PBKDF2_TAG = "7"


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Return the `$7$...` hash of `password` as written after `user:` in a password file."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, HASH_BYTES)
    return f"${_PBKDF2_TAG}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(hashed: str, password: str) -> bool:
    """Check `password` against a `$7$` entry (ours or mosquitto_passwd's), in constant time."""
    try:
        _, tag, iterations, salt_b64, hash_b64 = hashed.split("$")
        if tag != _PBKDF2_TAG:
            raise ValueError(f"unsupported password hash type ${tag}$")
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
        rounds = int(iterations)
    except ValueError as exc:
        raise ValueError(f"not a Mosquitto sha512-pbkdf2 hash: {exc}") from None
    actual = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, rounds, len(expected))
    return hmac.compare_digest(actual, expected)


def _check_user(user: str) -> None:
    # ':' separates user and hash; a line break would start a forged entry.
    if not user or ":" in user or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
        raise ValueError(f"invalid MQTT username {user!r}")


def read_entries(password_file: Path) -> dict[str, str]:
    """Return {user: hash} from a password file (an absent file has no users)."""
    entries: dict[str, str] = {}
    for line in _read_lines(Path(password_file)):
        user, sep, hashed = line.partition(":")
        if sep and not line.startswith("#"):
            entries[user] = hashed
    return entries


def users(password_file: Path) -> list[str]:
    """The usernames in a password file, in file order."""
    return list(read_entries(password_file))


def set_password(password_file: Path, user: str, password: str) -> None:
    """Add `user` or replace its password; the file is replaced atomically with mode 0600."""
    _check_user(user)
    entry = f"{user}:{hash_password(password)}"
    path = Path(password_file)
    with _locked(path):
        lines = _read_lines(path)
        replaced = False
        out: list[str] = []
        for line in lines:
            if line.partition(":")[0] == user and not line.startswith("#"):
                if not replaced:
                    out.append(entry)
                    replaced = True
                continue  # also drops any duplicate of the user
            out.append(line)
        if not replaced:
            out.append(entry)
        _write_lines(path, out)
    log.info("%s password for MQTT user %s in %s", "changed" if replaced else "added", user, path)


def set_passwords(password_file: Path, users: Mapping[str, str]) -> None:
    """set_password for many users in one rewrite of the file (a fleet brought in at once:
    thousands of set_password calls would rewrite the file thousands of times)."""
    for user in users:
        _check_user(user)
    entries = {user: f"{user}:{hash_password(password)}" for user, password in users.items()}
    path = Path(password_file)
    with _locked(path):
        out = [line for line in _read_lines(path) if line.startswith("#") or line.partition(":")[0] not in entries]
        _write_lines(path, out + list(entries.values()))
    log.info("set passwords of %d MQTT users in %s", len(entries), path)


def remove_user(password_file: Path, user: str) -> bool:
    """Remove `user`; return False if it was not there. The file is replaced atomically."""
    _check_user(user)
    path = Path(password_file)
    with _locked(path):
        lines = _read_lines(path)
        out = [line for line in lines if line.startswith("#") or line.partition(":")[0] != user]
        removed = len(out) != len(lines)
        if removed:
            _write_lines(path, out)
    if removed:
        log.info("removed MQTT user %s from %s", user, path)
    return removed


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def _write_lines(path: Path, lines: list[str]) -> None:
    atomic_write(path, "".join(f"{line}\n" for line in lines).encode("utf-8"), mode=0o600)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Read-modify-write under an exclusive lock on a side file, so that two tools editing at once
    # (provisioning adding a device while an operator revokes another) cannot undo each other's
    # change; above all, a revocation must not be lost. The side file is never replaced, so the
    # lock stays valid across the atomic rename of the password file.
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
