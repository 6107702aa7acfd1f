"""paho-mqtt 2.x driven on the asyncio event loop, behind the gateway's link interface: the
alternative that bench/gateway_throughput.py measures against the gateway's own link.

    .venv/bin/python bench/paho_loop_link.py --config gateway.toml

runs `siaga gateway run` with this link in place of gateway/mqtt.py's `MqttLink`.

No network thread, the way Home Assistant's MQTT integration drives paho: the blocking connect
(and TLS handshake) runs in a worker thread; from then on the socket is registered with the event
loop (`on_socket_open` -> `add_reader`, `on_socket_register_write` -> `add_writer`), readiness
calls paho's `loop_read()` / `loop_write()`, and a 1 s timer calls `loop_misc()` for keepalive.
Acknowledgements are manual (`manual_ack_set(True)`, `ack(mid, 1)` after the commit) on a
persistent session (clean session off). What differs from the own link is the client
underneath: the settings, subscriptions, publish-while-away queue and reconnect backoff are the
same. The benchmark found it clearly slower (docs/performance.md, "The MQTT link"), so it is not
part of the gateway and no test covers it. Gaps left for that reason: `server_hostname` is not
used (paho checks the certificate against the host it connects to), and TLS records that the SSL
object has already decrypted wait for the next readable event (paho's own loop checks
`pending()`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from siaga.gateway.mqtt import (
    PENDING_MAX,
    RECONNECT_FIRST_S,
    RECONNECT_MAX_S,
    UPLINK_TOPICS,
    Inbound,
    MqttAuthError,
    MqttSettings,
)

log = logging.getLogger(__name__)

MISC_EVERY_S = 1.0           # Home Assistant's interval for loop_misc()
AUTH_FAILURES = {4, 5, 134, 135}  # 3.1.1 CONNACK codes 4, 5 and their MQTT 5 reason codes


class PahoLoopLink:
    def __init__(self, settings: MqttSettings, queue: asyncio.Queue[Inbound],
                 on_connected: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self._queue = queue
        self._on_connected = on_connected
        self._loop = asyncio.get_running_loop()
        self.connected = asyncio.Event()
        self.auth_failed: MqttAuthError | None = None
        self.connections = 0
        self.dropped_publishes = 0
        self._lost = asyncio.Event()
        self._pending: deque[tuple[str, bytes, bool]] = deque()
        self._stopping = False
        self._stopped = asyncio.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=False,
                        protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        c.username_pw_set(settings.username, settings.password)
        c.manual_ack_set(True)
        c.max_inflight_messages_set(0)  # no window on the acks to buttons, as in the own link
        tls = settings.tls_context()
        if tls is not None:
            # paho checks the certificate against the host it connects to: server_hostname is not used.
            c.tls_set_context(tls)
        c.connect_async(settings.host, settings.port, settings.keepalive_s)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_close = self._socket_close
        c.on_socket_unregister_write = self._unregister_write
        self._client = c

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Stay connected until `stop()`; raises MqttAuthError if the broker refuses the login."""
        backoff = RECONNECT_FIRST_S
        while not self._stopping:
            self._lost.clear()
            made = self.connections
            # The connect blocks (DNS, TCP, TLS handshake): a worker thread, whose socket callbacks
            # hop to the loop; once it returns, they run on the loop directly.
            self._client.on_socket_open = self._threadsafe(self._socket_open)
            self._client.on_socket_register_write = self._threadsafe(self._register_write)
            try:
                rc = await asyncio.to_thread(self._client.reconnect)
            except (OSError, ValueError) as exc:
                rc = None
                log.warning("MQTT connect to %s:%d failed: %s", self.settings.host, self.settings.port, exc)
            finally:
                self._client.on_socket_open = self._socket_open
                self._client.on_socket_register_write = self._register_write
            if rc == mqtt.MQTT_ERR_SUCCESS:
                while not self._lost.is_set():
                    try:
                        await asyncio.wait_for(self._lost.wait(), MISC_EVERY_S)
                    except TimeoutError:
                        self._client.loop_misc()
            if self.auth_failed is not None:
                raise self.auth_failed
            if self._stopping:
                return
            backoff = RECONNECT_FIRST_S if self.connections > made else min(backoff * 2, RECONNECT_MAX_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), random.uniform(RECONNECT_FIRST_S, backoff))

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._stopped.set()
        if self._client.socket() is not None:
            self._client.disconnect()
            self._client.loop_write()   # the DISCONNECT, then paho closes the socket
        self._lost.set()
        self.connected.clear()

    # ------------------------------------------------------------ socket callbacks

    def _threadsafe(self, fn: Callable[[mqtt.Client, Any, Any], None]) -> Callable[[mqtt.Client, Any, Any], None]:
        def hop(client: mqtt.Client, userdata: Any, sock: Any) -> None:
            self._loop.call_soon_threadsafe(fn, client, userdata, sock)
        return hop

    @staticmethod
    def _current(client: mqtt.Client, sock: Any) -> bool:
        """A callback that hopped from the connect thread may arrive after its socket is gone."""
        return sock.fileno() > -1 and client.socket() is sock

    def _socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        if self._current(client, sock):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._loop.add_reader(sock, self._readable)

    def _socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        if sock.fileno() > -1:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        if self._current(client, sock):
            self._loop.add_writer(sock, self._writable)

    def _unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        if sock.fileno() > -1:
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        self._client.loop_read()    # on a fault paho closes the socket and calls on_disconnect

    def _writable(self) -> None:
        self._client.loop_write()

    # ------------------------------------------------------------ paho callbacks (on the loop)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    _p: Any) -> None:
        s = self.settings
        if reason.is_failure:
            if reason.value in AUTH_FAILURES:
                self.auth_failed = MqttAuthError(f"broker {s.host}:{s.port} refused user {s.username!r}: {reason}")
            log.warning("MQTT connect refused: %s", reason)
            return
        self.connections += 1
        client.subscribe([(t, 1) for t in UPLINK_TOPICS])
        while self._pending:
            topic, payload, retain = self._pending.popleft()
            client.publish(topic, payload, qos=1, retain=retain)
        log.info("MQTT connected to %s:%d (session present: %s)", s.host, s.port, flags.session_present)
        self.connected.set()
        if self._on_connected is not None:
            self._on_connected()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if not self._stopping:
            log.warning("MQTT link lost: %s", reason)
        self.connected.clear()
        self._lost.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "\ufffd"  # not a topic the codec accepts; rejected and counted there
        self._queue.put_nowait(Inbound(topic, msg.payload, msg.mid, msg.qos, bool(msg.dup),
                                       int(time.time() * 1000), self.connections))

    # ------------------------------------------------------------ the service's side

    def ack(self, item: Inbound) -> None:
        if item.qos and item.connection == self.connections and self.connected.is_set():
            self._client.ack(item.mid, item.qos)

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        if not self.connected.is_set():
            if len(self._pending) >= PENDING_MAX:
                self._pending.popleft()
                self.dropped_publishes += 1
            self._pending.append((topic, payload, retain))
            return
        self._client.publish(topic, payload, qos=1, retain=retain)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    from siaga.gateway import server, service

    service.MqttLink = PahoLoopLink  # the service builds its link from this name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server.run(args.config)


if __name__ == "__main__":
    main()
