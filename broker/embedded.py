"""An in-process MQTT broker (amqtt) for `siaga demo` on machines without Mosquitto.

DEMO ONLY. It accepts anonymous clients and has no ACL, no persistence and no queue limits worth the
name: any local program can publish a fake alarm or read every ack. It therefore refuses to listen on
anything but a loopback address. Production uses Mosquitto (see `siaga.broker.config`).
"""

from __future__ import annotations

import ipaddress
import logging
from types import TracebackType
from typing import Any

from amqtt.broker import Broker

from siaga.net import free_port

from .process import MosquittoNotFoundError, find_mosquitto

log = logging.getLogger(__name__)


def mosquitto_available() -> bool:
    """True if a `mosquitto` binary can be found (then the demo should use the real broker)."""
    try:
        find_mosquitto()
    except MosquittoNotFoundError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EmbeddedBroker:
    """`async with EmbeddedBroker(port=...) as broker:` runs an amqtt broker on loopback.

    `port=0` picks a free port; `broker.port` tells which. MQTT 3.1.1, QoS 0-2, retained messages,
    anonymous access (demo only: see the module docstring).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not _is_loopback(host):
            # Anonymous access with no ACL must never be reachable from the network.
            raise ValueError(f"the embedded demo broker listens on loopback only, not on {host!r}")
        self.host = host
        self.port = port or free_port("127.0.0.1" if host == "localhost" else host)
        self._broker: Broker | None = None

    def _config(self) -> dict[str, Any]:
        # amqtt 0.12 format (amqtt.contexts.BrokerConfig). Plugins are given explicitly: when the
        # `plugins` key is missing, amqtt loads its defaults, among them the $SYS plugin, which warns
        # about psutil and publishes broker statistics nobody reads. Only the anonymous
        # authentication plugin is kept (amqtt refuses every client when no auth plugin is loaded).
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    async def start(self) -> EmbeddedBroker:
        if self._broker is not None:
            raise RuntimeError("the embedded broker is already running")
        broker = Broker(self._config())
        await broker.start()
        self._broker = broker
        log.warning(
            "embedded demo broker (amqtt, anonymous, no ACL) listening on %s:%d - not for production",
            self.host,
            self.port,
        )
        return self

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
            log.info("embedded demo broker on %s:%d stopped", self.host, self.port)

    async def __aenter__(self) -> EmbeddedBroker:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
