"""The broker's configuration against a real Mosquitto and real paho-mqtt 2.2 clients (MQTT 3.1.1).

Negative checks ("X never arrives") need no sleeps: Mosquitto delivers the messages of one publisher
to one subscriber in order, so a test sends the forbidden message first and an allowed one after it
on the same connection; once the allowed one arrives, the forbidden one would have arrived before.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest

from siaga.broker import certs
from siaga.broker.config import TlsListener, acl_text, render_config, validate_device_id, write_acl
from siaga.broker.embedded import EmbeddedBroker, mosquitto_available
from siaga.broker.passwd import hash_password, read_entries, remove_user, set_password, verify_password
from siaga.broker.process import MosquittoNotFoundError, MosquittoProcess
from tests.support.net import free_port

if TYPE_CHECKING:
    # Only for annotations: the module is loaded by pytest as a plugin (below), so that its asserts
    # are rewritten; importing it here first would make pytest warn, and warnings are errors.
    from tests.support.mosquitto import MqttClient


WAIT_S = 5.0
GW = "siaga-gateway"
DEVICES = {"btn-a": "password-of-a", "btn-b": "password-of-b"}
Factory = Callable[..., MosquittoProcess]
ClientFactory = Callable[..., "MqttClient"]


def topic(device: str, suffix: str) -> str:
    return f"siaga/v1/dev/{device}/{suffix}"


def assert_refused(reason: mqtt.ReasonCode) -> None:
    # MQTT 3.1.1 CONNACK 4 "bad user name or password" or 5 "not authorized", as paho names them.
    assert reason.is_failure
    assert reason.getName() in {"Bad user name or password", "Not authorized"}, reason.getName()


@pytest.fixture
def broker(mosquitto_factory: Factory) -> MosquittoProcess:
    return mosquitto_factory(devices=DEVICES)


@pytest.fixture
def gateway(broker: MosquittoProcess, mqtt_client: ClientFactory) -> MqttClient:
    gw = mqtt_client(broker, GW, broker.gateway_password)
    for suffix in ("alarm", "status", "will"):
        gw.subscribe(topic("+", suffix))
    return gw


# --- ACL -------------------------------------------------------------------------------------------


@pytest.mark.mosquitto
def test_device_cannot_publish_as_another_device(
    broker: MosquittoProcess, gateway: MqttClient, mqtt_client: ClientFactory
) -> None:
    a = mqtt_client(broker, "btn-a", DEVICES["btn-a"])
    for suffix in ("alarm", "status", "will"):
        a.publish(topic("btn-b", suffix), b"forged by a")  # Mosquitto PUBACKs it, then drops it
    a.publish(topic("btn-a", "alarm"), b"own alarm")

    msg = gateway.expect()
    assert (msg.topic, msg.payload) == (topic("btn-a", "alarm"), b"own alarm")
    assert gateway.messages.empty()


@pytest.mark.mosquitto
def test_device_cannot_read_another_devices_acks(
    broker: MosquittoProcess, gateway: MqttClient, mqtt_client: ClientFactory
) -> None:
    # A retained ack is on B's topic before anyone subscribes; A tries to read B's acks both ways.
    gateway.publish(topic("btn-b", "ack"), b"retained ack for b", retain=True)
    a = mqtt_client(broker, "btn-a", DEVICES["btn-a"])
    a.subscribe(topic("btn-b", "ack"))  # the SUBACK grants it: read access is checked per message
    a.subscribe("siaga/v1/dev/+/ack")
    b = mqtt_client(broker, "btn-b", DEVICES["btn-b"])
    b.subscribe(topic("btn-b", "ack"))
    assert b.expect().payload == b"retained ack for b"

    gateway.publish(topic("btn-b", "ack"), b"live ack for b")
    gateway.publish(topic("btn-a", "ack"), b"ack for a")  # the barrier: A may read this one

    assert b.expect().payload == b"live ack for b"
    msg = a.expect()
    assert (msg.topic, msg.payload) == (topic("btn-a", "ack"), b"ack for a")
    assert a.messages.empty()


@pytest.mark.mosquitto
def test_gateway_reads_every_device_and_writes_acks(
    broker: MosquittoProcess, gateway: MqttClient, mqtt_client: ClientFactory
) -> None:
    a = mqtt_client(broker, "btn-a", DEVICES["btn-a"])
    a.subscribe(topic("btn-a", "ack"))
    b = mqtt_client(broker, "btn-b", DEVICES["btn-b"], will=(topic("btn-b", "will"), b"b is gone"))
    a.publish(topic("btn-a", "alarm"), b"alarm a")
    a.publish(topic("btn-a", "status"), b"status a")
    b.publish(topic("btn-b", "alarm"), b"alarm b")
    b.drop_connection()  # no DISCONNECT: the broker publishes B's will

    received = {(m.topic, m.payload) for m in (gateway.expect() for _ in range(4))}
    assert received == {
        (topic("btn-a", "alarm"), b"alarm a"),
        (topic("btn-a", "status"), b"status a"),
        (topic("btn-b", "alarm"), b"alarm b"),
        (topic("btn-b", "will"), b"b is gone"),
    }
    gateway.publish(topic("btn-a", "ack"), b"received")
    msg = a.expect()
    assert (msg.topic, msg.payload, msg.retain) == (topic("btn-a", "ack"), b"received", False)


@pytest.mark.mosquitto
def test_config_topics_are_written_by_the_gateway_alone_and_read_by_their_device(
    broker: MosquittoProcess, gateway: MqttClient, mqtt_client: ClientFactory
) -> None:
    # docs/protocol.md §10: a retained configuration reaches its own button only; no button can
    # write one, neither its own nor another's.
    gateway.publish(topic("btn-b", "config"), b"config for b", retain=True)
    a = mqtt_client(broker, "btn-a", DEVICES["btn-a"])
    a.subscribe(topic("btn-b", "config"))
    a.subscribe(topic("btn-a", "config"))
    b = mqtt_client(broker, "btn-b", DEVICES["btn-b"])
    b.subscribe(topic("btn-b", "config"))
    assert b.expect().payload == b"config for b"
    a.publish(topic("btn-a", "config"), b"forged by a")   # acknowledged, then dropped
    b.publish(topic("btn-b", "config"), b"forged by b", retain=True)
    gateway.publish(topic("btn-a", "config"), b"config for a")  # the barrier
    msg = a.expect()
    assert (msg.topic, msg.payload) == (topic("btn-a", "config"), b"config for a")
    assert a.messages.empty()
    assert b.messages.empty()


@pytest.mark.mosquitto
def test_will_on_another_devices_topic_is_not_delivered(
    broker: MosquittoProcess, gateway: MqttClient, mqtt_client: ClientFactory
) -> None:
    a = mqtt_client(broker, "btn-a", DEVICES["btn-a"], will=(topic("btn-b", "will"), b"forged will"))
    a.drop_connection()
    b = mqtt_client(broker, "btn-b", DEVICES["btn-b"], will=(topic("btn-b", "will"), b"real will"))
    b.drop_connection()
    # A's connection dropped first, so its will would have been published before B's.
    assert gateway.expect().payload == b"real will"
    assert gateway.messages.empty()


@pytest.mark.mosquitto
def test_gateway_gets_no_device_rights_from_the_patterns(broker: MosquittoProcess, mqtt_client: ClientFactory) -> None:
    # The pattern lines apply to the gateway too, as a device named "siaga-gateway"; the ACL's deny
    # takes them away. Without it the gateway would receive its own message on that ack topic.
    gw = mqtt_client(broker, GW, broker.gateway_password)
    gw.subscribe("siaga/v1/dev/#")
    a = mqtt_client(broker, "btn-a", DEVICES["btn-a"])
    a.subscribe(topic("btn-a", "ack"))
    gw.publish(topic(GW, "ack"), b"to itself")
    gw.publish(topic(GW, "alarm"), b"alarm as a device")
    gw.publish(topic("btn-a", "alarm"), b"alarm as btn-a")  # the gateway may not write alarms
    gw.publish(topic("btn-a", "ack"), b"ack")  # the gateway may not read acks either
    a.publish(topic("btn-a", "alarm"), b"barrier")

    assert a.expect().payload == b"ack"
    msg = gw.expect()
    assert (msg.topic, msg.payload) == (topic("btn-a", "alarm"), b"barrier")
    assert gw.messages.empty()


def test_acl_text_gives_devices_and_gateway_exactly_their_topics() -> None:
    rules = [line for line in acl_text().splitlines() if line and not line.startswith("#")]
    assert rules == [
        "pattern write siaga/v1/dev/%u/alarm",
        "pattern write siaga/v1/dev/%u/status",
        "pattern write siaga/v1/dev/%u/will",
        "pattern write siaga/v1/dev/%u/ota/get",
        "pattern write siaga/v1/dev/%u/ota/status",
        "pattern read siaga/v1/dev/%u/ack",
        "pattern read siaga/v1/dev/%u/config",
        "pattern read siaga/v1/dev/%u/ota",
        "pattern read siaga/v1/dev/%u/ota/data",
        "user siaga-gateway",
        "topic read siaga/v1/dev/+/alarm",
        "topic read siaga/v1/dev/+/status",
        "topic read siaga/v1/dev/+/will",
        "topic read siaga/v1/dev/+/ota/get",
        "topic read siaga/v1/dev/+/ota/status",
        "topic write siaga/v1/dev/+/ack",
        "topic write siaga/v1/dev/+/config",
        "topic write siaga/v1/dev/+/ota",
        "topic write siaga/v1/dev/+/ota/data",
        "topic deny siaga/v1/dev/siaga-gateway/#",
    ]
    with pytest.raises(ValueError, match="must not contain"):
        acl_text(gateway_user="gw/+")


# --- authentication -----------------------------------------------------------------------------


@pytest.mark.mosquitto
def test_wrong_password_and_unknown_user_are_refused(broker: MosquittoProcess, mqtt_client: ClientFactory) -> None:
    for username, password in [
        ("btn-a", "not-the-password-7f3a"),
        ("btn-a", DEVICES["btn-b"]),
        ("btn-zz", "unknown-user-password-9c1e"),
        (GW, DEVICES["btn-a"]),
        (None, None),  # anonymous
    ]:
        client = mqtt_client(broker, username, password, client_id="probe", connect=False)
        assert_refused(client.connect())
    assert "not authorised" in broker.log_text()
    # Mosquitto logs the usernames, never the passwords.
    log_text = broker.log_text()
    for password in ("not-the-password-7f3a", "unknown-user-password-9c1e", *DEVICES.values()):
        assert password not in log_text


@pytest.mark.mosquitto
def test_added_device_can_log_in_and_removed_device_is_cut_off(
    broker: MosquittoProcess, mqtt_client: ClientFactory
) -> None:
    broker.add_device("btn-c", "password-of-c")
    c = mqtt_client(broker, "btn-c", "password-of-c")

    assert broker.remove_device("btn-c")
    # Revocation takes effect at once: the live connection is closed at the reload...
    assert c.disconnected.wait(WAIT_S), "a removed device stayed connected after the reload"
    c.close()
    # ...and the next login is refused.
    again = mqtt_client(broker, "btn-c", "password-of-c", connect=False)
    assert_refused(again.connect())
    assert not broker.remove_device("btn-c")


def test_device_ids_are_checked() -> None:
    assert validate_device_id("jkt-menteng-0042") == "jkt-menteng-0042"
    for bad in ["ab", "-abc", "Btn-a", "btn/a", "btn+a", "btn#", "a" * 33, "btn a"]:
        with pytest.raises(ValueError, match="invalid device id"):
            validate_device_id(bad)


@pytest.mark.mosquitto
def test_device_may_not_take_the_gateways_name(broker: MosquittoProcess) -> None:
    with pytest.raises(ValueError, match="reserved for the gateway"):
        broker.add_device(GW, "x")


# --- password file --------------------------------------------------------------------------------

ENTRY_RE = re.compile(r"[^:]+:\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==")


def test_hash_matches_mosquitto_passwd_byte_for_byte(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    pw_file = tmp_path / "theirs"
    pw_file.touch()
    subprocess.run([tool, "-b", str(pw_file), "alice", "s3cret pässword"], check=True)
    line = pw_file.read_text().strip()
    assert ENTRY_RE.fullmatch(line), line
    _user, hashed = line.split(":", 1)
    salt = base64.b64decode(hashed.split("$")[3])
    # Same salt, same password: our entry must be identical to the tool's.
    assert hash_password("s3cret pässword", salt=salt) == hashed
    assert verify_password(hashed, "s3cret pässword")
    assert not verify_password(hashed, "s3cret password")
    assert read_entries(pw_file) == {"alice": hashed}


def test_set_password_and_remove_user_edit_the_file_atomically(tmp_path: Path) -> None:
    pw_file = tmp_path / "passwd"
    set_password(pw_file, "btn-a", "one")
    set_password(pw_file, "btn-b", "two")
    set_password(pw_file, "btn-a", "three")
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    lines = pw_file.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["btn-a", "btn-b"]
    assert all(ENTRY_RE.fullmatch(line) for line in lines)
    entries = read_entries(pw_file)
    assert verify_password(entries["btn-a"], "three")
    assert not verify_password(entries["btn-a"], "one")
    assert remove_user(pw_file, "btn-a")
    assert not remove_user(pw_file, "btn-a")
    assert list(read_entries(pw_file)) == ["btn-b"]
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    # No temporary file is left next to it (only the lock file).
    assert sorted(p.name for p in tmp_path.iterdir()) == [".passwd.lock", "passwd"]
    for bad_user in ["", "a:b", "a\nb"]:
        with pytest.raises(ValueError, match="invalid MQTT username"):
            set_password(pw_file, bad_user, "x")
    with pytest.raises(ValueError, match="empty"):
        set_password(pw_file, "btn-c", "")


@pytest.mark.mosquitto
def test_mosquitto_accepts_our_entries_next_to_mosquitto_passwds(
    broker: MosquittoProcess, mqtt_client: ClientFactory
) -> None:
    # Every login in this suite uses entries written by set_password; here the real tool edits the
    # same file too, and Mosquitto accepts both kinds after a reload.
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    subprocess.run([tool, "-b", str(broker.password_file), "btn-tool", "tool password"], check=True)
    broker.reload()
    for username, password in [("btn-tool", "tool password"), ("btn-a", DEVICES["btn-a"])]:
        mqtt_client(broker, username, password)  # fails the test if refused


# --- broker limits and persistence ------------------------------------------------------------------


@pytest.mark.mosquitto
def test_oversize_frames_reach_the_gateway_up_to_16_kib(
    broker: MosquittoProcess, gateway: MqttClient, mqtt_client: ClientFactory
) -> None:
    a = mqtt_client(broker, "btn-a", DEVICES["btn-a"])
    a.publish(topic("btn-a", "alarm"), b"x" * 8192)  # over the protocol's 1 KiB: the gateway audits it
    assert len(gateway.expect().payload) == 8192

    a.client.publish(topic("btn-a", "alarm"), b"y" * 20000, qos=1)  # over max_packet_size
    assert a.disconnected.wait(WAIT_S), "the broker kept a client that sent a 20 KB packet"
    b = mqtt_client(broker, "btn-b", DEVICES["btn-b"])
    b.publish(topic("btn-b", "alarm"), b"after")
    assert gateway.expect().payload == b"after"
    assert gateway.messages.empty()


@pytest.mark.mosquitto
def test_gateway_session_survives_a_broker_restart(broker: MosquittoProcess, mqtt_client: ClientFactory) -> None:
    def gateway_session() -> MqttClient:
        return mqtt_client(broker, GW, broker.gateway_password, client_id="gw-1", clean_session=False)

    gw = gateway_session()
    gw.subscribe(topic("+", "alarm"))
    gw.close()  # offline: the broker queues for the persistent session
    a = mqtt_client(broker, "btn-a", DEVICES["btn-a"])
    for i in range(3):
        a.publish(topic("btn-a", "alarm"), f"alarm {i}".encode())
    a.close()
    port = broker.port

    assert broker.stop() == 0  # SIGTERM: Mosquitto writes its persistence file
    broker.start()
    assert broker.port == port

    gw = gateway_session()
    assert [gw.expect().payload for _ in range(3)] == [b"alarm 0", b"alarm 1", b"alarm 2"]


@pytest.mark.mosquitto
def test_killed_broker_restarts_on_the_same_port(broker: MosquittoProcess, mqtt_client: ClientFactory) -> None:
    pid = broker.pid
    broker.kill()
    assert not broker.running
    broker.start()
    assert broker.pid != pid
    mqtt_client(broker, "btn-a", DEVICES["btn-a"])
    assert len(re.findall(r"mosquitto version \S+ running", broker.log_text())) == 2


# --- config rendering and process errors -------------------------------------------------------------


def test_render_config_settings(tmp_path: Path) -> None:
    tls = TlsListener(port=8883, cafile=Path("ca.crt"), certfile=tmp_path / "s.crt", keyfile=tmp_path / "s.key")
    text = render_config(
        port=1884,
        data_dir=tmp_path / "data",
        password_file=tmp_path / "pw",
        acl_file=tmp_path / "acl",
        tls=tls,
    )
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    for expected in [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {tmp_path / 'pw'}",
        f"acl_file {tmp_path / 'acl'}",
        "persistence true",
        f"persistence_location {tmp_path / 'data'}/",
        "autosave_interval 10",
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "max_inflight_messages 1000",
        "max_packet_size 16384",
        "set_tcp_nodelay true",
        "connection_messages true",
        "log_dest stderr",
        "listener 1884 127.0.0.1",
        "listener 8883 0.0.0.0",
        f"cafile {Path('ca.crt').absolute()}",
        "require_certificate false",
    ]:
        assert expected in settings, expected
    assert "user" not in [s.split()[0] for s in settings]
    assert settings.index("listener 8883 0.0.0.0") > settings.index("listener 1884 127.0.0.1")
    assert "$" not in text

    logged = render_config(
        port=1884, data_dir=tmp_path, password_file=tmp_path / "pw", acl_file=tmp_path / "acl",
        log_file=tmp_path / "m.log", run_as="mosquitto",
    )  # fmt: skip
    assert f"log_dest file {tmp_path / 'm.log'}" in logged.splitlines()
    assert "user mosquitto" in logged.splitlines()
    with pytest.raises(ValueError, match="cannot be written"):
        render_config(port=1884, data_dir=tmp_path / "x\nallow_anonymous true", password_file=tmp_path,
                      acl_file=tmp_path)  # fmt: skip


def test_write_acl_is_readable_and_atomic(tmp_path: Path) -> None:
    write_acl(tmp_path / "acl", gateway_user="gw-main")
    text = (tmp_path / "acl").read_text()
    assert "user gw-main\n" in text
    assert "topic deny siaga/v1/dev/gw-main/#" in text
    assert stat.S_IMODE((tmp_path / "acl").stat().st_mode) == 0o644


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MosquittoNotFoundError, match="does not exist"):
        MosquittoProcess(tmp_path, binary="siaga-no-such-mosquitto")
    assert list(tmp_path.iterdir()) == []


# --- TLS ------------------------------------------------------------------------------------------


@pytest.mark.mosquitto
def test_tls_listener_with_generated_ca(tmp_path: Path, mosquitto_factory: Factory, mqtt_client: ClientFactory) -> None:
    if not certs.openssl_available():
        pytest.skip("the openssl command is not installed")
    ca = certs.make_ca(tmp_path / "pki")
    server = certs.make_server_cert(tmp_path / "pki", ["localhost", "127.0.0.1"])
    for key in (ca.key, server.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        certs.make_ca(tmp_path / "pki")

    tls = TlsListener(port=free_port(), cafile=ca.cert, certfile=server.cert, keyfile=server.key, bind="127.0.0.1")
    broker = mosquitto_factory(devices=DEVICES, tls=tls)
    gw = mqtt_client(broker, GW, broker.gateway_password)  # plain loopback listener
    gw.subscribe(topic("+", "alarm"))

    trusted = ssl.create_default_context(cafile=str(ca.cert))
    device = mqtt_client(broker, "btn-a", DEVICES["btn-a"], port=tls.port, host="localhost", tls=trusted)
    device.publish(topic("btn-a", "alarm"), b"over tls")
    assert gw.expect().payload == b"over tls"

    # The same ACL and passwords hold on the TLS listener.
    wrong = mqtt_client(broker, "btn-a", "wrong", port=tls.port, host="localhost", tls=trusted, connect=False)
    assert_refused(wrong.connect())
    # A client that does not trust our CA refuses the broker's certificate.
    # (Plain ssl: paho 2.2 leaves its socket open when the handshake fails.)
    untrusted = ssl.create_default_context()
    with (
        socket.create_connection(("localhost", tls.port), timeout=WAIT_S) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        untrusted.wrap_socket(raw, server_hostname="localhost")
    # ...while our CA verifies it, for "localhost" and for 127.0.0.1.
    for host in ("localhost", "127.0.0.1"):
        with (
            socket.create_connection((host, tls.port), timeout=WAIT_S) as raw,
            trusted.wrap_socket(raw, server_hostname=host) as tls_sock,
        ):
            assert tls_sock.version() in {"TLSv1.2", "TLSv1.3"}


# --- embedded demo broker ---------------------------------------------------------------------------


async def test_embedded_broker_qos1_round_trip() -> None:
    async with EmbeddedBroker(port=free_port()) as embedded:
        subscribed, received, acked = threading.Event(), threading.Event(), threading.Event()
        got: list[mqtt.MQTTMessage] = []

        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw", protocol=mqtt.MQTTv311)
        sub.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic("+", "alarm"), qos=1)
        sub.on_subscribe = lambda *_: subscribed.set()
        sub.on_message = lambda _c, _u, m: (got.append(m), received.set())
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="btn-a", protocol=mqtt.MQTTv311)
        pub.on_publish = lambda *_: acked.set()
        try:
            # connect_async + loop_start: nothing blocks the event loop the broker runs on.
            sub.connect_async("127.0.0.1", embedded.port)
            sub.loop_start()
            assert await asyncio.to_thread(subscribed.wait, WAIT_S)
            pub.connect_async("127.0.0.1", embedded.port)
            pub.loop_start()
            pub.publish(topic("btn-a", "alarm"), b"demo alarm", qos=1)
            assert await asyncio.to_thread(acked.wait, WAIT_S), "no PUBACK from the embedded broker"
            assert await asyncio.to_thread(received.wait, WAIT_S), "the subscriber got nothing"
        finally:
            for client in (pub, sub):
                client.disconnect()
                client.loop_stop()
        assert [(m.topic, m.payload, m.qos) for m in got] == [(topic("btn-a", "alarm"), b"demo alarm", 1)]
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == []


def test_embedded_broker_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        EmbeddedBroker(host="0.0.0.0", port=free_port())
    assert EmbeddedBroker(host="localhost", port=free_port()).host == "localhost"


def test_mosquitto_available_follows_the_binary_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIAGA_MOSQUITTO", "siaga-no-such-mosquitto")
    assert not mosquitto_available()
    monkeypatch.setenv("SIAGA_MOSQUITTO", "python3")  # any executable: only its presence is checked
    assert mosquitto_available()


async def test_embedded_broker_stops_cleanly_with_a_client_connected() -> None:
    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="btn-a", protocol=mqtt.MQTTv311)
    client.on_connect = lambda *_: connected.set()
    try:
        async with EmbeddedBroker(port=free_port()) as embedded:
            client.connect_async("127.0.0.1", embedded.port)
            client.loop_start()
            assert await asyncio.to_thread(connected.wait, WAIT_S)
        # The broker closed the live session itself; nothing of it is left on the event loop.
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    finally:
        await asyncio.to_thread(client.loop_stop)
