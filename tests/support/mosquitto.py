"""Pytest fixtures for tests against a real Mosquitto, and a paho-mqtt client with bounded waits.

Register them for the whole suite with `pytest_plugins = ["tests.support.mosquitto"]` in the root
conftest.py, or import the fixtures a test module uses by name. Fixtures:

- `mosquitto_factory(**kwargs)`: start a `MosquittoProcess` (production config, own free loopback
  port, files under the test's tmp_path); every broker it made is stopped at teardown.
- `mosquitto`: one running broker with the gateway user and no devices; the gateway's password is
  `mosquitto.gateway_password`, devices are added with `mosquitto.add_device(id, password)`.
- `mqtt_client(broker, username, password, **kwargs)`: a connected `MqttClient`, closed at teardown.

Tests are skipped, with the reason, only when no `mosquitto` binary is installed.
"""

from __future__ import annotations

import os
import queue
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from siaga.broker.process import MosquittoNotFoundError, MosquittoProcess

WAIT_S = 5.0  # upper bound for anything that should happen at once on loopback


class MqttClient:
    """A paho-mqtt 2.2 client (MQTT 3.1.1, callback API version 2) whose every step waits, bounded.

    `connect()` returns the CONNACK reason code instead of raising, so refusals can be asserted.
    Received messages are queued; `expect()` takes the next one.
    """

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        client_id: str | None = None,
        host: str = "127.0.0.1",
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id if client_id is not None else (username or ""),
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        if tls is not None:
            # Our own context: paho's tls_set() defaults to ssl.PROTOCOL_TLSv1_2, which is deprecated.
            self.client.tls_set_context(tls)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: ReasonCode | None = None
        self._connected = threading.Event()
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self._acks: dict[int, threading.Event] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_ack

    # paho callbacks (run in paho's network thread)
    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _reason: ReasonCode, _p: Any) -> None:
        self.disconnected.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        self._ack_event(mid).set()

    def _on_ack(self, _c: mqtt.Client, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        self._ack_event(mid).set()

    def _ack_event(self, mid: int) -> threading.Event:
        with self._lock:
            return self._acks.setdefault(mid, threading.Event())

    # steps
    def connect(self, timeout: float = WAIT_S) -> ReasonCode:
        """Connect and wait for the CONNACK; on a refusal the network loop is stopped (no retries)."""
        self._connected.clear()
        self.disconnected.clear()
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.client.loop_stop()
            raise TimeoutError(f"no CONNACK from {self.host}:{self.port} within {timeout} s")
        assert self.connack is not None
        if self.connack.is_failure:
            self.client.loop_stop()
        return self.connack

    def subscribe(self, topic: str, qos: int = 1, timeout: float = WAIT_S) -> None:
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, result
        assert self._ack_event(mid).wait(timeout), f"no SUBACK for {topic} within {timeout} s"

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = WAIT_S) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        assert self._ack_event(info.mid).wait(timeout), f"no PUBACK for {topic} within {timeout} s"

    def expect(self, timeout: float = WAIT_S) -> mqtt.MQTTMessage:
        """The next message received; fails the test if none arrives within `timeout`."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no message within {timeout} s")

    def drop_connection(self) -> None:
        """Close the socket without DISCONNECT, as a power cut would: the broker sends the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()
        self.client.loop_stop()


def new_broker(folder: Path, **kwargs: Any) -> MosquittoProcess:
    """A MosquittoProcess (not started) in `folder`; the test is skipped where Mosquitto is missing,
    and fails in CI."""
    try:
        return MosquittoProcess(folder, **kwargs)
    except MosquittoNotFoundError as exc:
        if os.environ.get("CI"):
            # `make test` installs Mosquitto; in CI its absence is a broken set-up, not a reason
            # to skip every test that proves an alarm gets through.
            pytest.fail(f"Mosquitto is not installed: {exc}")
        pytest.skip(f"Mosquitto is not installed: {exc}")


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoProcess]]:
    """Start real Mosquitto brokers (keyword arguments go to `MosquittoProcess`); stopped at teardown."""
    made: list[MosquittoProcess] = []

    def make(**kwargs: Any) -> MosquittoProcess:
        broker = new_broker(tmp_path / f"mosquitto-{len(made)}", **kwargs)
        made.append(broker)
        return broker.start()

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., MosquittoProcess]) -> MosquittoProcess:
    """A running Mosquitto with the production config and the gateway user (no devices yet)."""
    return mosquitto_factory()


@pytest.fixture
def mqtt_client() -> Iterator[Callable[..., MqttClient]]:
    """`mqtt_client(broker, username, password, **kwargs)`: a connected `MqttClient`.

    It fails the test if the broker refuses the login. With `connect=False` the client is returned
    unconnected, so that a test can call `connect()` itself and assert a refusal. Keyword arguments
    go to `MqttClient` (`port` defaults to the broker's plain listener). Closed at teardown.
    """
    made: list[MqttClient] = []

    def make(
        broker: MosquittoProcess,
        username: str | None,
        password: str | None,
        *,
        connect: bool = True,
        **kwargs: Any,
    ) -> MqttClient:
        port = kwargs.pop("port", broker.port)
        client = MqttClient(port, username, password, **kwargs)
        made.append(client)
        if connect:
            reason = client.connect()
            assert not reason.is_failure, f"{username} was refused: {reason}"
        return client

    yield make
    for client in made:
        client.close()
