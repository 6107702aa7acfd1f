"""Simulated buttons for gateway tests: real MQTT clients with the device's own login, publishing
frames signed with the device's secret (the firmware core's own encoder). Faster than a MicroPython
process per device, so fifty of them can send a thousand alarms in a test."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from siaga.broker.process import MosquittoProcess
from siagafw import mqtt as fwmqtt
from siagafw import proto
from tests.support.gateway import GatewayProcess
from tests.support.system import DeviceCredentials

LOC = proto.location(-6175392, 106827153, "Jl. Medan Merdeka Barat 12", "31.71.01.1001")


@dataclass
class SimButton:
    creds: DeviceCredentials
    port: int
    seq: int = 0
    acks: list[dict] = field(default_factory=list)
    will: bytes | None = None

    def __post_init__(self) -> None:
        self.signer = proto.Signer(bytes.fromhex(self.creds.secret_hex))
        self._acked = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.creds.device_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(self.creds.device_id, self.creds.mqtt_password)
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._on_message
        self._connected = threading.Event()
        self.client.on_connect = lambda *a: self._connected.set()

    @property
    def device_id(self) -> str:
        return self.creds.device_id

    def connect(self, *, with_will: bool = False) -> SimButton:
        if with_will:
            self.will = self.frame(proto.will_body(self.device_id, self.next_seq()))
            self.client.will_set(proto.topic(self.device_id, "will"), self.will, qos=1)
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError(f"{self.device_id} could not connect")
        self.client.subscribe(proto.topic(self.device_id, "ack"), qos=1)
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Cut the TCP connection without DISCONNECT, as a power cut would: the broker sends the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def frame(self, body: dict) -> bytes:
        return self.signer.seal(proto.encode(body))

    def alarm_frame(self, kind: str = "general", seq: int | None = None) -> tuple[int, bytes]:
        seq = self.next_seq() if seq is None else seq
        return seq, self.frame(proto.alarm_body(self.device_id, seq, kind, LOC, False, 1000, int(time.time())))

    def status_frame(self, every_s: int = 60, battery_mv: int | None = 4000, tamper: bool = False,
                     seq: int | None = None) -> bytes:
        seq = self.next_seq() if seq is None else seq
        return self.frame(proto.status_body(self.device_id, seq, "0.1.0", every_s, battery_mv, -60, tamper, 0, 5))

    def publish(self, suffix: str, payload: bytes) -> None:
        info = self.client.publish(proto.topic(self.device_id, suffix), payload, qos=1)
        info.wait_for_publish(10)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = self.signer.open(msg.payload)
        if body is None:
            return
        with self._acked:
            self.acks.append(json.loads(body))
            self._acked.notify_all()

    def wait_ack(self, seq: int, state: str = "received", timeout_s: float = 10.0) -> dict:
        def found() -> dict | None:
            return next((a for a in self.acks if a["seq"] == seq and a["state"] == state), None)
        with self._acked:
            if not self._acked.wait_for(lambda: found() is not None, timeout_s):
                raise AssertionError(f"{self.device_id}: no {state} ack for seq {seq} in {timeout_s} s: "
                                     f"{self.acks[-5:]}")
            ack = found()
            assert ack is not None
            return ack


def publish_once(port: int, creds: DeviceCredentials, suffix: str, payload: bytes, timeout_s: float = 10.0) -> None:
    """Log in as the device, publish one QoS 1 message on its topic, wait for the PUBACK, leave.
    A plain socket and the firmware's own packet code: about a millisecond each on loopback, so a
    test can speak for thousands of buttons without a client per button."""
    dev = creds.device_id
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(fwmqtt.connect_packet(dev, 30, True, None, dev, creds.mqtt_password))
        connack = _packet(sock)
        if connack[0] != 0x20 or connack[1][1:2] != b"\x00":
            raise ConnectionRefusedError(f"{dev}: CONNACK {connack!r}")
        topic = proto.topic(dev, suffix).encode()
        variable = struct.pack("!H", len(topic)) + topic + b"\x00\x01"
        sock.sendall(fwmqtt._header(0x32, len(variable) + len(payload)) + variable + payload)
        if _packet(sock)[0] != 0x40:
            raise ConnectionError(f"{dev}: no PUBACK")
        sock.sendall(b"\xe0\x00")


def _packet(sock: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while True:
        whole = fwmqtt.split_packet(buf)
        if whole is not None:
            return whole[0], whole[1]
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("broker closed the connection")
        buf += chunk


def register_fleet(gateway: GatewayProcess, broker: MosquittoProcess, fleet: list[DeviceCredentials]) -> None:
    """Thousands of buttons at one place: broker logins in one rewrite of the password file, then
    one HTTP connection to the gateway's admin API for all of the registrations."""
    broker.add_devices({c.device_id: c.mqtt_password for c in fleet})
    place = {"lat": -6.2, "lon": 106.8, "address": "Jl. Gelap", "area": "31.71"}
    with httpx.Client(base_url=gateway.url, headers=gateway.admin_headers, timeout=30) as http:
        for c in fleet:
            http.post("/api/v1/devices", json={"id": c.device_id, "secret_hex": c.secret_hex,
                                               **place}).raise_for_status()


def go_dark(port: int, creds: DeviceCredentials) -> None:
    """A button losing power: a heartbeat with its battery low and its lid open, then its last
    will (three fault reports at the gateway: low_battery, tamper, offline)."""
    signer = proto.Signer(bytes.fromhex(creds.secret_hex))
    status = proto.status_body(creds.device_id, 1, "0.2.0", 60, 3100, -80, True, 0, 1000)
    publish_once(port, creds, "status", signer.seal(proto.encode(status)))
    publish_once(port, creds, "will", signer.seal(proto.encode(proto.will_body(creds.device_id, 2))))
