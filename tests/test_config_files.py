"""Config files: every mistake is one line on stderr that names the setting, and exit status 2; and
the example configs, as shipped, make a broker, a command center and a gateway that work together.

The mistakes are made in copies of the shipped examples (gateway/gateway.example.toml,
commandcenter/cc.example.toml), so the examples themselves are checked as a valid starting point.
Each process is started as an operator would start it: through `siaga ... run` and through the
module entry point, as separate processes, with nothing of the test in between.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

import siaga.commandcenter
import siaga.gateway
from siaga.broker.process import MosquittoNotFoundError, find_mosquitto
from siaga.commandcenter.config import CCConfig
from siaga.gateway.config import GatewayConfig
from siaga.net import free_port
from tests.support.devices import SimButton
from tests.support.net import wait_port
from tests.support.system import DeviceCredentials
from tests.support.waiting import wait_for

GATEWAY_EXAMPLE = Path(siaga.gateway.__file__).parent / "gateway.example.toml"
CC_EXAMPLE = Path(siaga.commandcenter.__file__).parent / "cc.example.toml"

ENTRY_POINTS = {
    "gateway": {"siaga": ["siaga.cli", "gateway", "run"], "module": ["siaga.gateway.server"]},
    "cc": {"siaga": ["siaga.cli", "cc", "run"], "module": ["siaga.commandcenter"]},
}


# ---- a folder with a copy of an example and the secrets it names -----------------------------------------


def write_secrets(folder: Path, doc: dict[str, Any], env: dict[str, str]) -> None:
    """Give every `*_file` the document names a fresh random secret (a file already written, as a
    token both examples name, keeps its secret) and every `*_env` a variable in `env`."""
    def walk(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if key.endswith("_file") and isinstance(value, str):
                path = folder / value
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
            elif key.endswith("_env") and isinstance(value, str):
                env.setdefault(value, secrets.token_urlsafe(32))
            else:
                walk(value)
    walk(doc)


@dataclass
class Setup:
    folder: Path
    env: dict[str, str]

    def config(self, service: str) -> Path:
        return self.folder / ("gateway.toml" if service == "gateway" else "cc.toml")

    def edit(self, service: str, old: str, new: str) -> None:
        path = self.config(service)
        text = path.read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{old!r} is not once in {path.name}: the example changed"
        path.write_text(text.replace(old, new), encoding="utf-8")


def make_setup(folder: Path, text_of: Callable[[str], str] = lambda text: text) -> Setup:
    """Both examples in `folder` (gateway.toml and cc.toml, `text_of` applied), with their secrets."""
    folder.mkdir(parents=True, exist_ok=True)
    setup = Setup(folder, {})
    for example, name in ((GATEWAY_EXAMPLE, "gateway.toml"), (CC_EXAMPLE, "cc.toml")):
        text = text_of(example.read_text(encoding="utf-8"))
        (folder / name).write_text(text, encoding="utf-8")
        write_secrets(folder, tomllib.loads(text), setup.env)
    return setup


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    made = make_setup(tmp_path / "etc")
    for name, value in made.env.items():
        monkeypatch.setenv(name, value)
    return made


def start_with_config(service: str, entry: str, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a service against `config`; a config error must end it at once (the timeout is a backstop)."""
    return subprocess.run([sys.executable, "-m", *ENTRY_POINTS[service][entry], "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False, cwd=config.parent,
                          env={**os.environ, **env})


def assert_one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    lines = done.stderr.splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# ---- the examples as shipped ------------------------------------------------------------------------------


def test_the_examples_agree_on_ports_and_secrets(setup: Setup) -> None:
    gw = GatewayConfig.load(setup.config("gateway"))
    cc = CCConfig.load(setup.config("cc"))
    assert cc.gateway_url is not None
    to_cc, to_gw = urlsplit(gw.cc_url), urlsplit(cc.gateway_url)
    assert (to_cc.hostname, to_cc.port) == (cc.host, cc.port)
    assert (to_gw.hostname, to_gw.port) == (gw.api_host, gw.api_port)
    assert gw.cc_token == cc.intake_token               # what the gateway presents, the center expects
    assert gw.cc_callback_token == cc.gateway_token     # and the way back
    # The broker that docs/broker.md makes: `siaga broker config` listens on 1883 unless told otherwise,
    # and its ACL names the gateway user "siaga-gateway".
    assert (gw.mqtt.host, gw.mqtt.port, gw.mqtt.username) == ("127.0.0.1", 1883, "siaga-gateway")
    assert gw.db_path.parent == cc.db_path.parent == setup.folder / "data"


# ---- one line, exit status 2 ------------------------------------------------------------------------------

# (service, what is wrong, the edit to the example: old -> new, what the line must say)
MISTAKES = [
    ("gateway", "unknown key", ("keepalive_s = 30", "keepalive = 30"),
     ["unknown setting mqtt.keepalive", "did you mean mqtt.keepalive_s?"]),
    ("gateway", "wrong type", ("port = 1883", 'port = "1883"'), ["mqtt.port", "must be an integer", "port = 1883"]),
    ("gateway", "out of range", ("port = 8081", "port = 80810"), ["api.port", "80810", "from 1 to 65535"]),
    ("gateway", "invalid TOML", ("flood_burst = 30", "flood_burst ="),
     ["gateway.toml", "not valid TOML", "line of flood_burst"]),
    ("cc", "unknown key", ('timezone = "Asia/Jakarta"', 'time_zone = "Asia/Jakarta"'),
     ["unknown setting console.time_zone", "did you mean console.timezone?"]),
    ("cc", "wrong type", ("port = 8300", 'port = "8300"'), ["server.port", "must be an integer"]),
    ("cc", "out of range", ("port = 8300", "port = 83000"), ["server.port", "83000", "from 1 to 65535"]),
    ("cc", "invalid TOML", ("[console]", "[console"), ["cc.toml", "not valid TOML", "line of [console"]),
]


@pytest.mark.parametrize("entry", ["siaga", "module"])
@pytest.mark.parametrize(("service", "mistake", "edit", "expected"), MISTAKES,
                         ids=[f"{m[0]}-{m[1].replace(' ', '-')}" for m in MISTAKES])
def test_a_mistake_in_the_config_is_one_line_and_exit_2(setup: Setup, entry: str, service: str, mistake: str,
                                                        edit: tuple[str, str], expected: list[str]) -> None:
    setup.edit(service, *edit)
    assert_one_line_error(start_with_config(service, entry, setup.config(service), setup.env), *expected)


@pytest.mark.parametrize("entry", ["siaga", "module"])
@pytest.mark.parametrize(("service", "secret", "key"), [("gateway", "admin.token", "api.admin_token_file"),
                                                         ("cc", "intake.token", "intake.token_file")])
def test_a_missing_secret_file_is_one_line_and_exit_2(setup: Setup, entry: str, service: str, secret: str,
                                                      key: str) -> None:
    (setup.folder / "secrets" / secret).unlink()
    done = start_with_config(service, entry, setup.config(service), setup.env)
    assert_one_line_error(done, key, str(setup.folder.resolve() / "secrets" / secret), "no such file")


@pytest.mark.parametrize("entry", ["siaga", "module"])
@pytest.mark.parametrize("service", ["gateway", "cc"])
def test_a_missing_config_file_is_one_line_and_exit_2(tmp_path: Path, entry: str, service: str) -> None:
    missing = tmp_path / "nowhere.toml"
    assert_one_line_error(start_with_config(service, entry, missing, {}), str(missing), "does not exist")


# More of the gateway's mistakes, through `siaga gateway run` only (the entry points share the loader).
GATEWAY_MISTAKES = [
    ("zero timing", ("retry_first_s = 1.0", "retry_first_s = 0"), ["forwarding.retry_first_s", "more than 0"]),
    ("retry cap below the first delay", ("retry_max_s = 60.0", "retry_max_s = 0.5"),
     ["forwarding.retry_max_s", "at least retry_first_s"]),
    ("zero batch", ("batch_max = 500", "batch_max = 0"), ["forwarding.batch_max", "at least 1"]),
    ("gateway id with a colon", ('id = "gw-1"', 'id = "gw:1"'), ["gateway.id", "no colon"]),
    ("share group with a wildcard", ("keepalive_s = 30", 'keepalive_s = 30\nshare_group = "siaga/+"'),
     ["mqtt.share_group", "one topic level"]),
    ("instance name with a space", ('id = "gw-1"', 'id = "gw-1"\ninstance = "gw a"'), ["gateway.instance"]),
    ("unknown log format", ('format = "text"', 'format = "xml"'), ["logging.format", '"text" or "json"']),
    ("key under the wrong table", ("drain_s = 10.0", "drain_s = 10.0\nkeepalive_s = 5"),
     ["unknown setting gateway.keepalive_s", "[mqtt]"]),
    ("misspelt table", ("[supervision]", "[supervisor]"), ["unknown setting [supervisor]", "[supervision]"]),
    ("misspelt table of the command center", ("[commandcenter]", "[command_center]"),
     ["unknown setting [command_center]", "did you mean [commandcenter]?"]),
    ("TLS file without tls", ("keepalive_s = 30", 'keepalive_s = 30\nca_file = "secrets/ca.crt"'),
     ["mqtt.ca_file", "tls = true"]),
    ("TLS file missing", ("keepalive_s = 30", 'keepalive_s = 30\ntls = true\nca_file = "secrets/ca.crt"'),
     ["mqtt.ca_file", "secrets/ca.crt", "no such file"]),
    ("client key without its certificate",
     ("keepalive_s = 30", 'keepalive_s = 30\ntls = true\nkey_file = "secrets/gateway.key"'), ["mqtt.cert_file"]),
    ("inline secret", ('password_file = "secrets/mqtt.password"', 'password = "hunter2-hunter2"'),
     ["mqtt.password", "inline", "mqtt.password_file"]),
    ("unset environment variable", ('token_file = "secrets/intake.token"', 'token_env = "SIAGA_TEST_UNSET_TOKEN"'),
     ["commandcenter.token_env", "SIAGA_TEST_UNSET_TOKEN"]),
    ("URL that is not http", ('url = "http://127.0.0.1:8300"', 'url = "127.0.0.1:8300"'),
     ["commandcenter.url", "http://"]),
    ("misspelt key of an optional table", ('url = "http://127.0.0.1:8300"', 'url = "http://127.0.0.1:8300"\nurll = 1'),
     ["unknown setting commandcenter.urll", "did you mean commandcenter.url?"]),
]


@pytest.mark.parametrize(("mistake", "edit", "expected"), GATEWAY_MISTAKES, ids=[m[0] for m in GATEWAY_MISTAKES])
def test_gateway_config_mistakes(setup: Setup, mistake: str, edit: tuple[str, str], expected: list[str]) -> None:
    setup.edit("gateway", *edit)
    line = assert_one_line_error(start_with_config("gateway", "siaga", setup.config("gateway"), setup.env),
                                 *expected)
    assert "hunter2" not in line  # a secret written inline is refused without being repeated


def test_a_missing_table_names_it_and_the_example(setup: Setup) -> None:
    path = setup.config("gateway")
    text = path.read_text(encoding="utf-8")
    # Drop [mqtt] with its keys: everything from its header to the next one.
    path.write_text(re.sub(r"^\[mqtt\]\n(?:[^\[].*\n|\n)*", "", text, flags=re.MULTILINE), encoding="utf-8")
    done = start_with_config("gateway", "siaga", path, setup.env)
    assert_one_line_error(done, "missing table [mqtt]", "gateway/gateway.example.toml")


def test_a_gateway_with_nowhere_to_forward_is_refused(setup: Setup) -> None:
    path = setup.config("gateway")
    text = path.read_text(encoding="utf-8")
    # [commandcenter] is optional once [[destinations]] name somewhere else; without either, no.
    path.write_text(re.sub(r"^\[commandcenter\]\n(?:[^\[].*\n|\n)*", "", text, flags=re.MULTILINE), encoding="utf-8")
    done = start_with_config("gateway", "siaga", path, setup.env)
    assert_one_line_error(done, "nowhere to forward alarms", "[commandcenter]", "[[destinations]]")


def test_the_tls_settings_reach_the_mqtt_link(setup: Setup) -> None:
    (setup.folder / "secrets" / "ca.crt").write_text("a CA certificate\n")
    (setup.folder / "secrets" / "gateway.pem").write_text("a certificate and its key\n")
    setup.edit("gateway", "keepalive_s = 30", 'keepalive_s = 30\ntls = true\nca_file = "secrets/ca.crt"\n'
               'cert_file = "secrets/gateway.pem"\nserver_hostname = "mqtt.siaga.example.go.id"')
    mqtt = GatewayConfig.load(setup.config("gateway")).mqtt
    assert (mqtt.tls, mqtt.server_hostname) == (True, "mqtt.siaga.example.go.id")
    # Relative to the config file's folder, like every path in it.
    secrets_dir = setup.folder.resolve() / "secrets"
    assert (mqtt.ca_file, mqtt.cert_file, mqtt.key_file) == (secrets_dir / "ca.crt", secrets_dir / "gateway.pem", None)
    # Without TLS settings the link is plain, as in the example.
    plain = GatewayConfig.load(make_setup(setup.folder.parent / "plain").config("gateway")).mqtt
    assert (plain.tls, plain.ca_file, plain.server_hostname) == (False, None, None)


# ---- the three services from the examples, together --------------------------------------------------------

# The examples' fixed ports (1883, 8300, 8081) may be taken on a CI machine (a system Mosquitto on
# 1883, another test's server), so each is replaced by a free port, everywhere it appears in either
# example and on the broker's command line. Nothing else in the files is changed: if the examples
# disagreed on a port, a token file or the gateway user, the services would not reach each other.
EXAMPLE_PORTS = (1883, 8300, 8081)


@contextmanager
def running(args: list[str], cwd: Path, log: Path,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A service as a child process; SIGTERM on exit (SIGKILL if it does not stop)."""
    with log.open("ab") as fh:
        proc = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def siaga(*args: str, cwd: Path, stdin: str = "") -> str:
    done = subprocess.run([sys.executable, "-m", "siaga.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=cwd, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def healthy(url: str, proc: subprocess.Popen[bytes], log: Path, ok: Callable[[httpx.Response], bool]) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"{url} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
    try:
        return ok(httpx.get(url, timeout=1))
    except httpx.TransportError:
        return False


@pytest.mark.e2e
@pytest.mark.mosquitto
def test_the_examples_start_together_and_carry_an_alarm_both_ways(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        mosquitto = find_mosquitto()
    except MosquittoNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Mosquitto is not installed: {exc}")
        pytest.skip(f"Mosquitto is not installed: {exc}")
    ports = {old: free_port() for old in EXAMPLE_PORTS}
    setup = make_setup(tmp_path / "etc", lambda text: re.sub(
        r"\b(1883|8300|8081)\b", lambda m: str(ports[int(m[1])]), text))
    etc = setup.folder
    for name, value in setup.env.items():
        monkeypatch.setenv(name, value)
    gw_cfg, cc_cfg = GatewayConfig.load(setup.config("gateway")), CCConfig.load(setup.config("cc"))
    device = DeviceCredentials("jkt-gambir-0001", secrets.token_hex(32), secrets.token_urlsafe(18))

    # 1. The broker, made as docs/broker.md says: ACL, logins, then `siaga broker config`.
    broker = etc / "broker"
    (broker / "data").mkdir(parents=True)
    siaga("broker", "acl", "--out", str(broker / "acl"), cwd=etc)
    siaga("broker", "set-password", "--passwd", str(broker / "passwd"), gw_cfg.mqtt.username,
          stdin=gw_cfg.mqtt.password + "\n", cwd=etc)
    siaga("broker", "set-password", "--passwd", str(broker / "passwd"), device.device_id,
          stdin=device.mqtt_password + "\n", cwd=etc)
    # --run-as: this test runs Mosquitto as whoever runs the tests (maybe root), who owns the files;
    # in production Mosquitto switches to its own user, which owns them there.
    conf = siaga("broker", "config", "--port", str(ports[1883]), "--bind", "127.0.0.1",
                 "--data-dir", str(broker / "data"), "--password-file", str(broker / "passwd"),
                 "--acl-file", str(broker / "acl"), "--run-as", pwd.getpwuid(os.geteuid()).pw_name, cwd=etc)
    (broker / "mosquitto.conf").write_text(conf, encoding="utf-8")

    with ExitStack() as stack:  # stopped in reverse: gateway, command center, broker
        stack.enter_context(running([mosquitto, "-c", str(broker / "mosquitto.conf")], etc,
                                    tmp_path / "mosquitto.log"))
        wait_port(ports[1883])

        # 2. The command center.
        cc_log = tmp_path / "cc.log"
        cc = stack.enter_context(running([sys.executable, "-m", "siaga.cli", "cc", "run", "--config", "cc.toml"],
                                         etc, cc_log, setup.env))
        cc_url = f"http://127.0.0.1:{ports[8300]}"
        wait_for(lambda: healthy(f"{cc_url}/health", cc, cc_log, lambda r: r.status_code == 200),
                 timeout_s=30, what="command center healthy")

        # 3. The gateway: healthy means it is logged in to the broker.
        gw_log = tmp_path / "gateway.log"
        gw = stack.enter_context(running([sys.executable, "-m", "siaga.cli", "gateway", "run", "--config",
                                          "gateway.toml"], etc, gw_log))
        gw_url = f"http://127.0.0.1:{ports[8081]}"
        wait_for(lambda: healthy(f"{gw_url}/health", gw, gw_log, lambda r: r.json().get("mqtt") is True),
                 timeout_s=30, what="gateway connected to the broker")
        admin = {"Authorization": f"Bearer {gw_cfg.admin_token}"}
        metrics = httpx.get(f"{gw_url}/metrics", headers=admin, timeout=5).text
        assert "siaga_gateway_mqtt_connected 1" in metrics

        # 4. An alarm there and an acknowledgement back: every port and token of the examples in use.
        operator = {"Authorization": f"Bearer {next(iter(cc_cfg.operator_tokens))}"}
        httpx.post(f"{gw_url}/api/v1/devices", headers=admin, timeout=5,
                   json={"id": device.device_id, "secret_hex": device.secret_hex, "lat": -6.1766,
                         "lon": 106.819, "address": "Kantor Kelurahan Gambir"}).raise_for_status()
        button = SimButton(device, ports[1883]).connect()
        stack.callback(button.close)
        seq, frame = button.alarm_frame()
        button.publish("alarm", frame)
        button.wait_ack(seq, "received")            # broker -> gateway, stored

        def incident() -> dict[str, Any] | None:
            found = httpx.get(f"{cc_url}/api/v1/incidents", headers=operator, timeout=5).json()
            return next((i for i in found if i["device_id"] == device.device_id), None)

        found = wait_for(incident, what="the alarm at the command center")   # gateway -> command center
        resp = httpx.post(f"{cc_url}/api/v1/incidents/{found['id']}/acknowledge", headers=operator, timeout=5)
        assert resp.status_code == 200, resp.text
        button.wait_ack(seq, "acknowledged")        # command center -> gateway -> broker -> button
