"""No single point of failure (issue 14): three gateway instances share one PostgreSQL database and
one Mosquitto (MQTT shared subscriptions), beside one command center. Buttons send alarms and send
each again until its signed "received" ack comes, as the firmware does; meanwhile the instance that
forwards the outbox is killed (kill -9) at a random point, then a second one. Every alarm reaches
the command center exactly once and its button hears it was received, and an operator's
acknowledgement still reaches the buttons through the instance that is left.

Everything is real: Mosquitto from broker/ config, PostgreSQL from the Debian binaries on a free
port (tests/support/postgres.py), the gateway and command center as separate processes over HTTP.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from siaga.broker.process import MosquittoProcess
from siaga.pgserver import PostgresProcess
from tests.support.ccproc import CommandCenterProcess
from tests.support.devices import SimButton
from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import new_broker
from tests.support.net import free_port
from tests.support.system import DeviceCredentials

DEVICES = 100
ALARMS_EACH = 50           # 5,000 alarms in all
RESEND_S = 1.0             # a button sends an alarm again when its ack has not come in this time
DEADLINE_S = 150.0


class ResendingButton(SimButton):
    """Sends its alarms one after another, each again every RESEND_S until its "received" ack."""

    def __init__(self, creds: DeviceCredentials, port: int) -> None:
        super().__init__(creds, port)
        self.sent = 0
        self.done = threading.Event()
        self.failure: str | None = None

    def has_ack(self, seq: int, state: str) -> bool:
        return any(a["seq"] == seq and a["state"] == state for a in self.acks)

    def run(self, count: int, stop: threading.Event) -> None:
        try:
            for _ in range(count):
                seq, frame = self.alarm_frame("medical")
                while not stop.is_set():
                    self.client.publish(f"siaga/v1/dev/{self.device_id}/alarm", frame, qos=1)
                    self.sent += 1
                    with self._acked:
                        if self._acked.wait_for(lambda s=seq: self.has_ack(s, "received"), RESEND_S):
                            break
        except Exception as exc:  # reported by the test, not lost in a thread
            self.failure = repr(exc)
        finally:
            self.done.set()


Cluster = tuple[MosquittoProcess, CommandCenterProcess, list[GatewayProcess], str]


def start_cluster(tmp_path: Path, postgres: PostgresProcess, names: str) -> Iterator[Cluster]:
    """A broker, a command center and one gateway instance per letter of `names`, all on one new
    database; the command center reports states to all of them."""
    dsn = postgres.create_database(f"cluster{len(names)}")
    broker = new_broker(tmp_path / "mosquitto")
    broker.start()
    ports = [free_port() for _ in names]
    callback_token = secrets.token_urlsafe(24)
    cc = CommandCenterProcess(tmp_path, extra_toml="[gateway]\nurls = [{}]\ntoken_file = \"gateway.token\"\n".format(
        ", ".join(f'"http://127.0.0.1:{p}"' for p in ports)))
    (cc.dir / "gateway.token").write_text(callback_token + "\n", encoding="utf-8")
    gateways = [GatewayProcess(tmp_path / name, mqtt_port=broker.port, mqtt_password=broker.gateway_password,
                               cc_url=cc.url, cc_token=cc.intake_token, gateway_id="gw-city", port=port,
                               callback_token=callback_token, db=dsn, gateway_settings=f'instance = "{name}"',
                               mqtt_settings='share_group = "siaga"', extra_toml="forward_batch = 500")
                for name, port in zip(names, ports, strict=True)]
    try:
        cc.start()
        for gw in gateways:
            gw.start()
        yield broker, cc, gateways, dsn
    finally:
        for gw in gateways:
            gw.stop()
        cc.stop()
        broker.close()


@pytest.fixture
def three(tmp_path: Path, postgres: PostgresProcess) -> Iterator[Cluster]:
    yield from start_cluster(tmp_path, postgres, "abc")


@pytest.fixture
def two(tmp_path: Path, postgres: PostgresProcess) -> Iterator[Cluster]:
    yield from start_cluster(tmp_path, postgres, "ab")


def register(gateway: GatewayProcess, broker: MosquittoProcess, fleet: list[DeviceCredentials],
             site: str | None = None) -> None:
    broker.add_devices({c.device_id: c.mqtt_password for c in fleet})
    with httpx.Client(base_url=gateway.url, headers=gateway.admin_headers, timeout=30) as http:
        for c in fleet:
            http.post("/api/v1/devices", json={"id": c.device_id, "secret_hex": c.secret_hex, "lat": -6.2,
                                               "lon": 106.8, "address": "Jl. Kota", "area": "31.71",
                                               "site": site}).raise_for_status()
    time.sleep(1.5)  # the other instances read the registry changed through the first (SHARED_SYNC_S)


def new_fleet(prefix: str, n: int) -> list[DeviceCredentials]:
    return [DeviceCredentials(f"{prefix}-{i:03}", secrets.token_hex(32), secrets.token_urlsafe(18)) for i in range(n)]


def _forwarder(gateways: list[GatewayProcess], timeout_s: float = 10.0) -> GatewayProcess:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leading = [g for g in gateways if g.running() and g.health()["forwarding"]]
        if leading:
            assert len(leading) == 1, "two instances forward at once"
            return leading[0]
        time.sleep(0.1)
    raise AssertionError("no instance took over the forwarding")


def _at_command_center(cc: CommandCenterProcess) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{cc.db_path}?mode=ro", uri=True)
    try:
        total, distinct = db.execute("SELECT count(*), count(DISTINCT event_id) FROM alarms").fetchone()
    finally:
        db.close()
    return total, distinct


def test_three_instances_lose_two_and_every_alarm_arrives_once(three: Cluster) -> None:
    broker, cc, gateways, _ = three
    rng = random.Random()
    fleet = new_fleet("btn", DEVICES)
    register(gateways[0], broker, fleet)

    buttons = [ResendingButton(c, broker.port).connect() for c in fleet]
    stop = threading.Event()
    threads = [threading.Thread(target=b.run, args=(ALARMS_EACH, stop), daemon=True) for b in buttons]
    started = time.monotonic()
    for t in threads:
        t.start()
    total = DEVICES * ALARMS_EACH
    kills: list[tuple[str, int, float]] = []
    try:
        # The forwarder first (its outbox must be taken over), then one of the two left: each at a
        # random point of the stream.
        for share in sorted(rng.uniform(0.1, 0.7) for _ in range(2)):
            while _at_command_center(cc)[1] < share * total:
                assert time.monotonic() - started < DEADLINE_S, "alarms stopped arriving"
                time.sleep(0.05)
            victim = _forwarder(gateways) if not kills else rng.choice([g for g in gateways if g.running()])
            victim.kill()
            kills.append((victim.config_path.parent.parent.name, _at_command_center(cc)[1],
                          round(time.monotonic() - started, 1)))
        survivor = _forwarder(gateways)
        for b in buttons:
            assert b.done.wait(max(1.0, DEADLINE_S - (time.monotonic() - started))), f"{b.device_id} stuck"
            assert b.failure is None, b.failure
        while _at_command_center(cc)[1] < total and time.monotonic() - started < DEADLINE_S:
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        received, distinct = _at_command_center(cc)
        resent = sum(b.sent for b in buttons) - total
        print(f"\n{total} alarms, kills (instance, alarms at the center then, s): {kills}, "
              f"{resent} resends, {elapsed:.1f} s; survivor {survivor.config_path.parent.parent.name}")
        assert (received, distinct) == (total, total)  # each exactly once
        for b in buttons:
            assert all(b.has_ack(seq, "received") for seq in range(1, ALARMS_EACH + 1))

        # An operator acknowledges incidents of ten buttons (each incident is one button's fifty presses,
        # so fifty state reports); the states travel back through the instance that is left.
        with httpx.Client(base_url=cc.url, headers=cc.operator_headers(), timeout=10) as ops:
            incidents = ops.get("/api/v1/incidents", params={"limit": 1000}).json()
            assert {i["device_id"] for i in incidents} == {c.device_id for c in fleet}
            chosen = rng.sample(incidents, 10)
            for incident in chosen:
                ops.post(f"/api/v1/incidents/{incident['id']}/acknowledge").raise_for_status()
        deadline = time.monotonic() + 30
        by_id = {b.device_id: b for b in buttons}
        for incident in chosen:
            b = by_id[incident["device_id"]]
            with b._acked:
                assert b._acked.wait_for(lambda b=b: any(a["state"] == "acknowledged" for a in b.acks),
                                         max(0.1, deadline - time.monotonic())), f"{b.device_id}: no operator ack"
    finally:
        stop.set()
        for b in buttons:
            b.close()


def test_two_instances_agree_on_incidents_faults_and_the_registry(two: Cluster) -> None:
    """What the instances must agree on, through the whole processes: presses of one market taken by
    both are one incident; a button's last will is one offline fault and its return one clear; a
    button revoked through one instance's admin API is refused by both."""
    broker, _, (a, b), dsn = two
    market = new_fleet("pasar", 6)
    register(a, broker, market, site="pasar-baru")
    buttons = [ResendingButton(c, broker.port).connect(with_will=i == 0) for i, c in enumerate(market)]
    stop = threading.Event()
    try:
        for button in buttons:
            button.run(3, stop)  # 18 presses, handed by the broker to both instances
            assert button.failure is None, button.failure
        with psycopg.connect(dsn) as db:
            taken = db.execute("SELECT count(*) FROM gateway_instances").fetchone()
            groups = db.execute("SELECT count(DISTINCT group_id), max(press_count), count(*) FROM alarms").fetchone()
        assert taken == (2,)
        assert groups == (1, 18, 18)  # one incident, its presses counted 1..18 across the instances

        buttons[0].drop()  # a power cut: the broker publishes the will to one of the instances
        time.sleep(2.0)    # both instances have taken the other's news from the database (SHARED_SYNC_S)
        back = ResendingButton(market[0], broker.port).connect()
        back.seq = buttons[0].seq
        back.publish("status", back.status_frame())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with psycopg.connect(dsn) as db:
                changes = db.execute("SELECT active FROM faults WHERE device_id = %s AND fault = 'offline' "
                                     "ORDER BY id", (market[0].device_id,)).fetchall()
            if len(changes) >= 2:
                break
            time.sleep(0.2)
        assert changes == [(1,), (0,)]  # one start and one clear, whichever instance took each
        back.close()

        revoked = market[1]
        httpx.post(f"{b.url}/api/v1/devices/{revoked.device_id}/revoke", headers=b.admin_headers,
                   timeout=5).raise_for_status()
        time.sleep(1.5)
        for _ in range(4):  # the broker hands these to both instances
            _, frame = buttons[1].alarm_frame()
            buttons[1].publish("alarm", frame)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with psycopg.connect(dsn) as db:
                refused = db.execute("SELECT count(*) FROM audit WHERE device_id = %s AND reason = 'revoked'",
                                     (revoked.device_id,)).fetchone()
            if refused == (4,):
                break
            time.sleep(0.2)
        assert refused == (4,)
        assert not any(a["seq"] > 3 for a in buttons[1].acks)
    finally:
        stop.set()
        for button in buttons[1:]:
            button.close()
