"""The gateway's MQTT link on its own, against a real Mosquitto started from the production config:
connect and subscribe, manual acks and redelivery across reconnects, publishing while the broker is
away, a refused login, keepalive on an idle and on a frozen broker, and TLS to the broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from siaga.broker import certs
from siaga.broker.config import TlsListener
from siaga.broker.process import MosquittoProcess
from siaga.gateway.mqtt import Inbound, MqttAuthError, MqttLink, MqttSettings
from siaga.net import free_port
from tests.support.mosquitto import MqttClient
from tests.support.waiting import wait_for

pytestmark = pytest.mark.mosquitto

DEVICE, DEVICE_PW = "jkt-link-01", "pw-link-01"
ALARM_TOPIC = f"siaga/v1/dev/{DEVICE}/alarm"
ACK_TOPIC = f"siaga/v1/dev/{DEVICE}/ack"
WAIT_S = 10.0   # bound for anything that should happen within a reconnect or two


def settings_for(broker: MosquittoProcess, **overrides: Any) -> MqttSettings:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": broker.port, "username": broker.gateway_user,
                              "password": broker.gateway_password, "client_id": "siaga-gateway-link-test"}
    return MqttSettings(**(values | overrides))


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[MqttLink]:
    """The link's loop in a TaskGroup, as the gateway runs it; stopped (and awaited) on exit."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run(), name="mqtt-link")
        try:
            yield link
        finally:
            await link.stop()
            async with asyncio.timeout(WAIT_S):
                await task   # run() returns after stop(): nothing is left running


async def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """The suite's one wait helper, polled from a thread so that the link's loop runs meanwhile."""
    await asyncio.to_thread(wait_for, condition, timeout_s, what, 0.02)


async def received(queue: asyncio.Queue[Inbound], n: int) -> list[Inbound]:
    async with asyncio.timeout(WAIT_S):
        return [await queue.get() for _ in range(n)]


async def nothing_more(queue: asyncio.Queue[Inbound], wait_s: float = 1.0) -> None:
    await asyncio.sleep(wait_s)
    assert queue.empty(), f"unexpected message: {queue.get_nowait()}"


async def restart(broker: MosquittoProcess) -> None:
    """SIGTERM (Mosquitto saves its sessions) and start again on the same port."""
    await asyncio.to_thread(broker.stop)
    await asyncio.to_thread(broker.start)


@pytest.fixture
def broker(mosquitto: MosquittoProcess) -> MosquittoProcess:
    mosquitto.add_device(DEVICE, DEVICE_PW)
    return mosquitto


@pytest.fixture
def device(broker: MosquittoProcess, mqtt_client: Callable[..., MqttClient]) -> MqttClient:
    return mqtt_client(broker, DEVICE, DEVICE_PW)


async def test_link_connects_subscribes_and_receives_an_alarm(broker: MosquittoProcess, device: MqttClient) -> None:
    queue: asyncio.Queue[Inbound] = asyncio.Queue()
    async with running(MqttLink(settings_for(broker), queue)) as link:
        await until(link.subscribed.is_set, "SUBACK")
        assert link.connected.is_set()
        await asyncio.to_thread(device.publish, ALARM_TOPIC, b"alarm-1")
        (item,) = await received(queue, 1)
        assert (item.topic, item.payload, item.qos, item.dup, item.connection) == (ALARM_TOPIC, b"alarm-1", 1,
                                                                                   False, 1)
        assert link.connections == 1
    assert not link.connected.is_set()


async def test_unacked_messages_come_again_after_a_reconnect_and_acked_ones_do_not(
        broker: MosquittoProcess, device: MqttClient) -> None:
    queue: asyncio.Queue[Inbound] = asyncio.Queue()
    async with running(MqttLink(settings_for(broker), queue)) as link:
        await until(link.subscribed.is_set, "SUBACK")
        for n in range(3):
            await asyncio.to_thread(device.publish, ALARM_TOPIC, b"m%d" % n)
        first = await received(queue, 3)
        link.ack(first[0])                         # committed; the other two are not
        await asyncio.sleep(0.2)                   # the PUBACK leaves on the next loop turn

        await restart(broker)
        await until(lambda: link.connections == 2, "the second connection")
        again = await received(queue, 2)
        assert [(i.payload, i.dup, i.connection) for i in again] == [(b"m1", True, 2), (b"m2", True, 2)]
        await nothing_more(queue)

        # An ack that belongs to the first connection is dropped, not sent on the second, where
        # the same packet id may name another message: both come back once more.
        for item in first[1:]:
            link.ack(item)
        await asyncio.sleep(0.2)
        await restart(broker)
        await until(lambda: link.connections == 3, "the third connection")
        third = await received(queue, 2)
        assert [i.payload for i in third] == [b"m1", b"m2"]
        for item in third:
            link.ack(item)
        await asyncio.sleep(0.2)

        await restart(broker)
        await until(lambda: link.connections == 4, "the fourth connection")
        await nothing_more(queue)


async def test_a_publish_made_while_the_broker_is_away_is_sent_after_the_reconnect(
        broker: MosquittoProcess, mqtt_client: Callable[..., MqttClient]) -> None:
    queue: asyncio.Queue[Inbound] = asyncio.Queue()
    async with running(MqttLink(settings_for(broker), queue)) as link:
        await until(link.connected.is_set, "the first connection")
        await asyncio.to_thread(broker.stop)
        await until(lambda: not link.connected.is_set(), "the link noticing the broker gone")
        link.publish(ACK_TOPIC, b"ack-while-away", retain=True)
        await asyncio.to_thread(broker.start)
        await until(lambda: link.connections == 2, "the reconnect")
        button = mqtt_client(broker, DEVICE, DEVICE_PW)
        await asyncio.to_thread(button.subscribe, ACK_TOPIC)
        msg = await asyncio.to_thread(button.expect)
        assert msg.payload == b"ack-while-away"
        assert link.dropped_publishes == 0


async def test_a_refused_login_ends_run_with_an_auth_error(broker: MosquittoProcess) -> None:
    link = MqttLink(settings_for(broker, password="not-the-password"), asyncio.Queue())
    async with asyncio.timeout(WAIT_S):
        with pytest.raises(MqttAuthError, match="refused user"):
            await link.run()     # once, not a retry loop that hammers the broker
    assert link.auth_failed is not None
    assert link.connections == 0


async def test_an_idle_link_with_a_1_s_keepalive_stays_on_one_connection(broker: MosquittoProcess) -> None:
    async with running(MqttLink(settings_for(broker, keepalive_s=1), asyncio.Queue())) as link:
        await until(link.connected.is_set, "the connection")
        # No traffic at all but the link's own pings (one per keepalive/2): five keepalive periods,
        # more than three times the 1.5 s after which Mosquitto drops a client that does not ping.
        await asyncio.sleep(5)
        assert link.connected.is_set()
        assert link.connections == 1
    assert "exceeded timeout" not in broker.log_text()


async def test_a_broker_that_stops_answering_is_declared_dead_and_reconnected(
        broker: MosquittoProcess, caplog: pytest.LogCaptureFixture) -> None:
    assert broker.pid is not None
    async with running(MqttLink(settings_for(broker, keepalive_s=1), asyncio.Queue())) as link:
        await until(link.connected.is_set, "the connection")
        os.kill(broker.pid, signal.SIGSTOP)   # the TCP connection stays open; nothing answers
        try:
            with caplog.at_level(logging.WARNING, logger="siaga.gateway.mqtt"):
                await until(lambda: not link.connected.is_set(), "the link declared dead", timeout_s=5)
            assert "PINGREQ" in caplog.text
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        await until(lambda: link.connections == 2 and link.connected.is_set(), "the reconnect", timeout_s=20)


# ------------------------------------------------------------ TLS

@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Path]:
    """The project CA with a broker certificate for localhost, and a CA that signed nothing here."""
    if not certs.openssl_available():
        pytest.skip("the openssl command is not installed")
    ca = certs.make_ca(tmp_path / "pki")
    certs.make_server_cert(tmp_path / "pki", ["localhost", "127.0.0.1"])
    return ca.cert, certs.make_ca(tmp_path / "other-pki").cert


@pytest.fixture
def tls_broker(mosquitto_factory: Callable[..., MosquittoProcess], pki: tuple[Path, Path],
               tmp_path: Path) -> MosquittoProcess:
    pki_dir = tmp_path / "pki"
    tls = TlsListener(port=free_port(), cafile=pki[0], certfile=pki_dir / certs.SERVER_CERT,
                      keyfile=pki_dir / certs.SERVER_KEY, bind="127.0.0.1")
    broker = mosquitto_factory(tls=tls)
    broker.add_device(DEVICE, DEVICE_PW)
    return broker


def tls_settings(broker: MosquittoProcess, ca_file: Path, server_hostname: str = "localhost") -> MqttSettings:
    assert broker.tls is not None
    return settings_for(broker, port=broker.tls.port, tls=True, ca_file=ca_file, server_hostname=server_hostname)


async def test_tls_link_verifies_the_broker_against_the_project_ca(
        tls_broker: MosquittoProcess, pki: tuple[Path, Path], mqtt_client: Callable[..., MqttClient]) -> None:
    queue: asyncio.Queue[Inbound] = asyncio.Queue()
    async with running(MqttLink(tls_settings(tls_broker, pki[0]), queue)) as link:
        await until(link.subscribed.is_set, "SUBACK over TLS")
        button = mqtt_client(tls_broker, DEVICE, DEVICE_PW)
        await asyncio.to_thread(button.publish, ALARM_TOPIC, b"over-tls")
        (item,) = await received(queue, 1)
        assert item.payload == b"over-tls"
        assert link.connections == 1


@pytest.mark.parametrize("case", ["signed by another CA", "another name"])
async def test_tls_link_refuses_a_broker_it_cannot_verify(
        tls_broker: MosquittoProcess, pki: tuple[Path, Path], case: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = (tls_settings(tls_broker, pki[1]) if case == "signed by another CA"
                else tls_settings(tls_broker, pki[0], server_hostname="broker.invalid"))
    with caplog.at_level(logging.ERROR, logger="siaga.gateway.mqtt"):
        async with running(MqttLink(settings, asyncio.Queue())) as link:
            await until(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, "the verification failure logged")
            assert link.connections == 0
            assert not link.connected.is_set()


def test_tls_settings_without_tls_are_refused() -> None:
    with pytest.raises(ValueError, match="tls is off"):
        MqttSettings("h", 8883, "u", "p", "c", ca_file=Path("ca.crt"))
