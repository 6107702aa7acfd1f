"""The gateway's MQTT link: paho-mqtt with a persistent session and manual acknowledgements.

paho runs its network loop in its own thread; messages cross into asyncio through
`loop.call_soon_threadsafe`. A message is acknowledged to the broker (PUBACK) only when the
service calls `ack()` after its database commit, so a crash before the commit makes the broker
deliver it again (docs/protocol.md §6). The number of unacknowledged messages, and therefore this
queue, is bounded by the broker's `max_inflight_messages` (see broker/templates/mosquitto.conf).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

UPLINK_TOPICS = ("siaga/v1/dev/+/alarm", "siaga/v1/dev/+/status", "siaga/v1/dev/+/will")
# CONNACK return codes of MQTT 3.1.1 that no retry can fix (§3.2.2.3): 4 bad credentials,
# 5 not authorised. paho reports them as ReasonCodes with these values.
_AUTH_FAILURES = {4, 5, 134, 135}


class MqttAuthError(Exception):
    """The broker refused the gateway's credentials: retrying would only hammer it."""


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    received_ms: int


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    username: str
    password: str
    client_id: str
    keepalive_s: int = 30


class MqttLink:
    def __init__(self, settings: MqttSettings, queue: asyncio.Queue[Inbound],
                 on_connected: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self._queue = queue
        self._on_connected = on_connected  # called in the event loop after each (re)connect
        self._loop = asyncio.get_running_loop()
        self.connected = asyncio.Event()
        self.auth_failed: MqttAuthError | None = None
        self._stopped = False
        self._auth_event = asyncio.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                             clean_session=False, protocol=paho.MQTTv311)
        client.username_pw_set(settings.username, settings.password)
        client.manual_ack_set(True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        # Outgoing acks to buttons: keep every one queued while the broker is away.
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(200)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    async def start(self) -> None:
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive_s)
        self._client.loop_start()

    async def stop(self) -> None:
        # Unacknowledged messages stay in the broker's session and come back on the next start.
        if self._stopped:
            return
        self._stopped = True
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def wait_auth_failure(self) -> None:
        await self._auth_event.wait()
        assert self.auth_failed is not None
        raise self.auth_failed

    # ------------------------------------------------------------ paho thread

    def _on_connect(self, client: paho.Client, _userdata: object, flags: paho.ConnectFlags,
                    reason: ReasonCode, _props: object) -> None:
        if reason.is_failure:
            if reason.value in _AUTH_FAILURES:
                client.disconnect()  # stops paho's reconnect loop
                err = MqttAuthError(f"broker {self.settings.host}:{self.settings.port} refused user "
                                    f"{self.settings.username!r}: {reason}")
                self._loop.call_soon_threadsafe(self._set_auth_failed, err)
            else:
                log.warning("MQTT connect refused: %s", reason)
            return
        log.info("MQTT connected to %s:%d (session present: %s)", self.settings.host, self.settings.port,
                 flags.session_present)
        # Subscribe on every connect: cheap, and correct even if the broker lost the session.
        client.subscribe([(t, 1) for t in UPLINK_TOPICS])
        self._loop.call_soon_threadsafe(self._connected)

    def _connected(self) -> None:
        self.connected.set()
        if self._on_connected is not None:
            self._on_connected()

    def _set_auth_failed(self, err: MqttAuthError) -> None:
        self.auth_failed = err
        self._auth_event.set()

    def _on_disconnect(self, _client: paho.Client, _userdata: object, _flags: object, reason: ReasonCode,
                       _props: object) -> None:
        if reason.is_failure:
            log.warning("MQTT disconnected: %s", reason)
        else:
            log.info("MQTT disconnected: %s", reason)
        self._loop.call_soon_threadsafe(self.connected.clear)

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        item = Inbound(msg.topic, msg.payload, msg.mid, msg.qos, bool(msg.dup), int(time.time() * 1000))
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    # ------------------------------------------------------------ asyncio side

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            # Harmless when disconnected: the broker redelivers, and the store drops the duplicate.
            self._client.ack(mid, qos)

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("MQTT publish to %s failed: %s", topic, paho.error_string(info.rc))
