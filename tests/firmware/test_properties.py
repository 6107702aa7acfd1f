"""What reaches the button from outside cannot crash it: the config file (any value in any field),
DNS and SNTP replies, MQTT bytes from the broker (over a real TCP connection) and acks carrying
any JSON at all under a valid signature. Each may be refused, with the one exception type its
caller handles; none may raise anything else or hang. Property tests with hypothesis, under
CPython (the core is the same source the boards run; the MicroPython runs are in test_core.py).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from siagafw import mqtt, proto, udp
from siagafw.app import Device
from siagafw.config import BOARDS, load_config
from tests.firmware.core_tests import ClockHal

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=[]), max_size=40),  # lone surrogates too
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)

GOOD = {
    "dev": "jkt-prop-0001", "secret": "ab" * 32,
    "mqtt": {"host": "mqtt.example.go.id", "port": 8883, "password": "pw", "tls": {"ca": "/ca.crt"},
             "keepalive_s": 30, "timeout_ms": 4000},
    "loc": {"lat_e6": -6175392, "lon_e6": 106827153, "addr": "Jl. Medan Merdeka Barat 12", "area": "31.71.01.1001"},
    "kind": "general", "types": ["medical"], "button": {"long_ms": 1500, "cancel_ms": 3000, "debounce_ms": 30},
    "heartbeat_s": 60, "wifi": {"ssid": "kelurahan", "password": "x", "power_save": False}, "gps": {"baud": 9600},
    "retry": {"first_ms": 3000, "max_ms": 60000}, "reconnect": {"first_ms": 500, "max_ms": 5000},
    "dns": "192.168.1.1", "ntp": "pool.ntp.org", "watchdog_ms": 8000, "loop_ms": 10, "net_settle_ms": 2000,
    "seq_block": 32, "outbox_capacity": 16, "silent": False, "buzzer": "active", "battery_low_mv": 3500,
}


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in obj.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += _paths(value, (*prefix, key))
    return out


PATHS = _paths(GOOD)


def refusal(text: str, board: str | None = None) -> str | None:
    """Why load_config refused the text, or None if it took it."""
    try:
        load_config(text, board)
    except ValueError as exc:
        return str(exc)
    return None


def test_the_good_config_is_good_on_every_board() -> None:
    for board in (None, *BOARDS):
        assert load_config(json.dumps(GOOD), board)["dev"] == GOOD["dev"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PATHS), json_values, st.sampled_from((None, *BOARDS)))
@example(("loc", "addr"), "\ud800", None)        # JSON's escape for half a UTF-16 pair
@example(("mqtt", "password"), "\udfff", "picow")
@example(("mqtt", "port"), 2**70, "esp32")
@example(("mqtt", "timeout_ms"), float("nan"), None)
@example(("loop_ms",), True, None)
def test_any_value_in_any_config_field_is_accepted_or_refused_with_a_reason(
        path: tuple[str, ...], value: Any, board: str | None) -> None:
    cfg = json.loads(json.dumps(GOOD))
    holder = cfg
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    why = refusal(json.dumps(cfg), board)
    assert why is None or why.startswith("config "), why


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_config_text_is_parsed_or_refused(text: str) -> None:
    why = refusal(text)
    assert why is None or why.startswith("config "), why


# ------------------------------------------------------------------ DNS and SNTP replies

NAME = "mqtt.siaga.go.id"


def _reply(qid: int) -> bytes:
    query = udp.dns_query(qid, NAME)
    return (struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + query[12:]
            + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, 7]))


def _check_dns(data: bytes, qid: int) -> None:
    try:
        ip = udp.dns_answer(data, qid, NAME)
    except ValueError:
        return
    assert ip is None or udp.is_ipv4(ip), ip


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 65535))
def test_any_datagram_is_an_answer_or_ignored_or_refused(data: bytes, qid: int) -> None:
    _check_dns(data, qid)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 65535), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 80))
def test_a_damaged_reply_is_never_more_than_refused(qid: int, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_reply(qid))
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _check_dns(bytes(data[:len(data) - cut]), qid)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=100), st.binary(min_size=8, max_size=8))
def test_any_sntp_datagram_gives_a_time_or_nothing_or_a_refusal(data: bytes, origin: bytes) -> None:
    if len(data) >= 32:  # often make it echo the origin, to reach the checks after the match
        data = data[:24] + origin + data[32:]
    try:
        t = udp.ntp_answer(data, origin)
    except ValueError:
        return
    assert t is None or isinstance(t, int)


# ------------------------------------------------------------------ MQTT from the broker


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_split_into_packets_or_a_clear_error(data: bytes) -> None:
    try:
        packet = mqtt.split_packet(data)
    except OSError:
        return
    if packet is not None:
        ptype, body, used = packet
        assert 0 <= ptype <= 255 and used <= len(data) and len(body) <= mqtt.MAX_PACKET


class Broker:
    """The far end of one real TCP connection, speaking just enough MQTT to bring a client up."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.conn: socket.socket | None = None

    def bring_up(self, client: mqtt.MQTTClient) -> socket.socket:
        client.start(self.listener.getsockname(), subscribe=(("siaga/v1/dev/jkt-prop-0001/ack", 1),))
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        self.conn = conn
        client.poll(100)                         # TCP up: the CONNECT goes out
        assert conn.recv(1)[0] == 0x10
        conn.recv(4096)
        conn.sendall(b"\x20\x02\x00\x00")
        while client.state != mqtt.SUBSCRIBING:
            client.poll(100)
        sub = conn.recv(4096)
        conn.sendall(b"\x90\x03" + sub[2:4] + b"\x01")
        while not client.connected():
            client.poll(100)
        return conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=5))
def test_any_bytes_from_the_broker_keep_the_link_or_drop_it_cleanly(chunks: list[bytes]) -> None:
    client = mqtt.MQTTClient("jkt-prop-0001", "jkt-prop-0001", "pw", 30, 2000)
    got: list[tuple[str, bytes, bool]] = []
    client.on_message = lambda topic, payload, retained: got.append((topic, payload, retained))
    broker = Broker()
    try:
        conn = broker.bring_up(client)
        for chunk in chunks:
            conn.sendall(chunk)
            try:
                for _ in range(3):
                    client.poll(5)
            except OSError:
                assert not client.active()       # a fault closes the link: the app reconnects
                break
        for topic, payload, retained in got:
            assert isinstance(topic, str) and isinstance(payload, bytes) and isinstance(retained, bool)
    finally:
        client.close()
        broker.close()


# ------------------------------------------------------------------ signed acks with any content


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.sampled_from(["v", "type", "dev", "seq", "state", "inc", "x"]), json_values,
                            max_size=6),
       retained=st.booleans())
def test_a_validly_signed_ack_with_any_content_never_breaks_the_button(body: dict[str, Any], retained: bool,
                                                                       tmp_path_factory: Any) -> None:
    tmp = tmp_path_factory.mktemp("ack")
    hal = ClockHal()
    cfg = load_config(json.dumps(dict(GOOD, mqtt={"host": "127.0.0.1", "port": 1})))
    dev = Device(hal, cfg, str(tmp))
    signer = proto.Signer(proto.secret_from_hex(GOOD["secret"]))
    try:
        payload = signer.seal(json.dumps(body).encode())
    except ValueError:
        return  # the body could not even be encoded (a lone surrogate): nothing to send
    dev.mqtt.on_message(proto.topic(GOOD["dev"], "ack"), payload, retained)
    shown = hal.shown[-1]
    assert shown in ("no_network", "received", "acknowledged", "dispatched", "resolved", "false_alarm", "fault"), shown


# ------------------------------------------------------------------ signed remote configs with any content


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(["loc", "heartbeat_s", "retry", "reconnect", "sms", "wifi"]),
                               json_values, max_size=4),
       ver=st.integers(-2, 2**32))
@example(changes={"retry": {"first_ms": None}}, ver=1)
@example(changes={"sms": {"gateway": "+6281100000001", "fallback_s": 2**70}}, ver=1)
@example(changes={"loc": {"lat_e6": 1.5, "lon_e6": 0, "addr": "", "area": ""}}, ver=1)
def test_a_validly_signed_config_with_any_content_is_applied_or_refused(changes: dict[str, Any], ver: int,
                                                                        tmp_path_factory: Any) -> None:
    tmp = tmp_path_factory.mktemp("cfg")
    path = tmp / "config.json"
    path.write_text(json.dumps(dict(GOOD, mqtt={"host": "127.0.0.1", "port": 1})))
    hal = ClockHal()
    dev = Device(hal, load_config(path.read_text(), "esp32"), str(tmp), str(path), "esp32")
    signer = proto.Signer(proto.secret_from_hex(GOOD["secret"]))
    try:
        payload = signer.seal(json.dumps({"v": 1, "type": "config", "dev": GOOD["dev"], "ver": ver,
                                          "set": changes}).encode())
    except ValueError:
        return
    dev.mqtt.on_message(proto.topic(GOOD["dev"], "config"), payload, True)
    names = [n for n, _ in hal.events if n.startswith("config")]
    assert len(names) == 1 and names[0] in ("config_applied", "config_rejected"), hal.events
    # Whatever happened, the file on flash is a config the board boots from.
    load_config(path.read_text(), "esp32")
