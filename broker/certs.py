"""A private CA and the broker's TLS server certificate, made with the `openssl` command line.

The devices trust only this CA (its certificate is written to each button at provisioning), so a
public CA is not needed and a certificate from one cannot be used to impersonate the broker.

Layout of the directory (the defaults of `TlsListener` in the docs):
    ca.crt      the CA certificate: goes to every device and into the broker's `cafile`
    ca.key      the CA private key (0600): keep it offline after the server certificate is made
    server.crt  the broker certificate, signed by the CA, with the broker's names as subjectAltName
    server.key  the broker's private key (0600), readable by the broker's user only
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"

# RSA-2048: every TLS stack a button may run verifies it (mbedTLS on ESP32 and Pico W, older axTLS
# builds that know no elliptic curves). The extensions follow RFC 5280 strictly, so that clients with
# strict X.509 checking (Python 3.13's default context, for one) accept the chain.
_KEY_SPEC = "rsa:2048"
_OPENSSL_CNF = """\
[ req ]
distinguished_name = dn
prompt = no

[ dn ]

[ ca_ext ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ server_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = @alt_names

[ alt_names ]
"""


class CertError(RuntimeError):
    """openssl is missing or failed; the message includes its error output."""


@dataclass(frozen=True)
class CaFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerCertFiles:
    cert: Path
    key: Path
    ca_cert: Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def make_ca(directory: Path, *, common_name: str = "Siaga MQTT CA", days: int = 3650) -> CaFiles:
    """Create `ca.crt` and `ca.key` in `directory`. Refuses to replace an existing CA key.

    Replacing the CA would lock out every device that trusts the old one, so it is never implicit:
    delete the old files by hand if that is really meant.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = CaFiles(directory / CA_CERT, directory / CA_KEY)
    if files.key.exists():
        raise FileExistsError(f"{files.key} exists: a new CA would lock out every device that trusts the old one")
    with tempfile.TemporaryDirectory(dir=directory, prefix=".ca-") as tmp_dir:
        tmp = Path(tmp_dir)
        cnf = _write_cnf(tmp, [])
        key = _private_file(tmp / CA_KEY)
        _openssl(
            "req", "-x509", "-new", "-newkey", _KEY_SPEC, "-nodes", "-sha256",
            "-config", str(cnf), "-extensions", "ca_ext",
            "-subj", _subject(common_name), "-days", str(days),
            "-set_serial", _serial(),
            "-keyout", str(key), "-out", str(tmp / CA_CERT),
        )  # fmt: skip
        _install(tmp / CA_CERT, files.cert, 0o644)
        _install(key, files.key, 0o600)
    log.info("created CA %s (%s, valid %d days)", files.cert, common_name, days)
    return files


def make_server_cert(
    directory: Path, hostnames: Sequence[str], *, days: int = 825, ca: CaFiles | None = None
) -> ServerCertFiles:
    """Create `server.crt` and `server.key` in `directory`, signed by the CA there (or `ca`).

    `hostnames` are the names and IP addresses devices use to reach the broker; the first is also the
    common name. Existing server files are replaced atomically, so a running broker picks up either
    the old or the new pair on its next reload, never a mix.
    """
    directory = Path(directory)
    names = [h.strip() for h in hostnames if h.strip()]
    if not names:
        raise ValueError("at least one hostname or IP address is needed for the server certificate")
    ca = ca or CaFiles(directory / CA_CERT, directory / CA_KEY)
    for path in (ca.cert, ca.key):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: run make_ca first")
    files = ServerCertFiles(directory / SERVER_CERT, directory / SERVER_KEY, ca.cert)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".server-") as tmp_dir:
        tmp = Path(tmp_dir)
        cnf = _write_cnf(tmp, names)
        key = _private_file(tmp / SERVER_KEY)
        csr = tmp / "server.csr"
        _openssl(
            "req", "-new", "-newkey", _KEY_SPEC, "-nodes", "-sha256", "-config", str(cnf),
            "-subj", _subject(names[0]), "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-sha256", "-days", str(days),
            "-CA", str(ca.cert), "-CAkey", str(ca.key), "-set_serial", _serial(),
            "-extfile", str(cnf), "-extensions", "server_ext", "-out", str(tmp / SERVER_CERT),
        )  # fmt: skip
        _install(tmp / SERVER_CERT, files.cert, 0o644)
        _install(key, files.key, 0o600)
    log.info("created server certificate %s for %s (valid %d days)", files.cert, ", ".join(names), days)
    return files


def _write_cnf(directory: Path, names: Sequence[str]) -> Path:
    # Our own config file, not the system's openssl.cnf: its defaults differ between distributions.
    alt = []
    dns = ip = 0
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not all(c.isalnum() or c in "-.*" for c in name):
                raise ValueError(f"{name!r} is neither a hostname nor an IP address") from None
            dns += 1
            alt.append(f"DNS.{dns} = {name}")
        else:
            ip += 1
            alt.append(f"IP.{ip} = {name}")
    if not alt:  # openssl rejects an empty section reference; the CA does not use it
        alt.append("DNS.1 = unused.invalid")
    cnf = directory / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF + "\n".join(alt) + "\n", encoding="utf-8")
    return cnf


def _subject(common_name: str) -> str:
    if any(c in common_name for c in "/=\\\n"):
        raise ValueError(f"common name {common_name!r} must not contain '/', '=', '\\' or a line break")
    return f"/CN={common_name}"


def _serial() -> str:
    # Random positive 127-bit serials, so that no serial file has to be kept next to the CA.
    return hex(secrets.randbits(127) | 1)


def _private_file(path: Path) -> Path:
    # Create the key file 0600 before openssl writes into it, so it is never readable by others.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


def _install(src: Path, dst: Path, mode: int) -> None:
    os.chmod(src, mode)
    try:
        old = dst.stat()
    except FileNotFoundError:
        pass
    else:
        # Renewal: keep the owner the administrator gave the old file (the broker's user must still
        # be able to read its key), when we are allowed to.
        if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.chown(src, old.st_uid, old.st_gid)
            except PermissionError:
                log.warning("cannot keep the owner of %s: the new file belongs to the current user", dst)
    os.replace(src, dst)


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise CertError("the openssl command is not installed (Debian: apt-get install openssl)")
    result = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CertError(f"openssl {args[0]} failed ({result.returncode}): {result.stderr.strip()}")
