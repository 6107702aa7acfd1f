"""Tests of the command center's protocol §7 extensions: the incident layer (incident_key,
press_count, sources), batched intake, device faults, and the schema migration that brought them.

Shares its helpers with tests/test_commandcenter.py.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siaga.commandcenter import store as store_module
from siaga.commandcenter.domain import Action
from siaga.commandcenter.intake import new_alarm
from siaga.commandcenter.models import AlarmIn
from siaga.commandcenter.store import Store
from tests.support.ccproc import CommandCenterProcess
from tests.test_commandcenter import (
    GATEWAY_TOKEN,
    INTAKE_TOKEN,
    OPERATOR,
    OPERATOR2,
    OPERATOR_TOKEN,
    Api,
    GatewayStandIn,
    alarm,
    db_rows,
    delivered,
    intake_headers,
    operator_action,
    running_api,
)

INTAKE = {"Authorization": f"Bearer {INTAKE_TOKEN}"}
KEY = "gw-1:g:118"


def pressed(
    seq: int, device: str = "jkt-menteng-0042", key: str | None = KEY, count: int = 1, **changes: Any
) -> dict[str, Any]:
    """An alarm as a grouping gateway sends it (protocol §7)."""
    body = alarm(seq=seq, device=device, **changes)
    if key is not None:
        body.update(incident_key=key, press_count=count, sources=changes.get("sources", [device]))
    return body


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "cc.sqlite3") as running:
        yield running


async def incident(api: Api, ref: str) -> dict[str, Any]:
    r = await api.client.get(f"/api/v1/incidents/{ref}", headers=OPERATOR)
    assert r.status_code == 200, r.text
    return r.json()


async def post_batch(api: Api, alarms: list[Any], headers: dict[str, str] = INTAKE) -> httpx.Response:
    return await api.client.post("/api/v1/alarms/batch", json={"alarms": alarms}, headers=headers)


async def post_fault(api: Api, body: dict[str, Any]) -> httpx.Response:
    return await api.client.post("/api/v1/faults", json=body, headers=intake_headers(body["event_id"]))


def outbox(db_path: Path) -> list[tuple[str, str, str]]:
    """(device, event, state) of every queued state report, in queue order."""
    rows = db_rows(db_path, "SELECT body FROM callback_outbox ORDER BY id")
    return [(b["device_id"], b["event_id"], b["state"]) for b in (json.loads(r[0]) for r in rows)]


# ---- incident layer ----------------------------------------------------------------------------


async def test_an_alarm_with_the_key_of_an_open_incident_is_attached_to_it(api: Api) -> None:
    first = await api.post_alarm(pressed(1, "jkt-menteng-0042", count=1))
    second = await api.post_alarm(
        pressed(2, "jkt-menteng-0043", count=2, sources=["jkt-menteng-0042", "jkt-menteng-0043"])
    )
    third = await api.post_alarm(pressed(3, "jkt-menteng-0042", count=3))
    assert [r.status_code for r in (first, second, third)] == [201, 201, 201]
    ref = first.json()["incident_id"]
    assert second.json()["incident_id"] == third.json()["incident_id"] == ref

    inc = await incident(api, ref)
    assert inc["incident_key"] == KEY
    assert (inc["event_count"], inc["press_count"]) == (3, 3)
    assert inc["sources"] == ["jkt-menteng-0042", "jkt-menteng-0043"]
    assert inc["device_id"] == "jkt-menteng-0042"  # the device that opened it
    assert inc["updated_at"] >= inc["created_at"]
    assert [(e["device_id"], e["press_count"], e["incident_key"]) for e in inc["events"]] == [
        ("jkt-menteng-0042", 1, KEY),
        ("jkt-menteng-0043", 2, KEY),
        ("jkt-menteng-0042", 3, KEY),
    ]
    assert inc["events"][1]["sources"] == ["jkt-menteng-0042", "jkt-menteng-0043"]
    # Attaching is an update, not a state change: the history has only the creation.
    assert [h["to_state"] for h in inc["history"]] == ["new"]
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM incidents") == [(1,)]
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM callback_outbox") == [(0,)]


async def test_attaching_moves_updated_at(api: Api) -> None:
    ref = (await api.post_alarm(pressed(1))).json()["incident_id"]
    created = (await incident(api, ref))["updated_at"]
    await asyncio.sleep(0.01)  # times have millisecond precision
    await api.post_alarm(pressed(2, count=2))
    assert (await incident(api, ref))["updated_at"] > created


async def test_sources_include_the_sender_even_when_its_list_leaves_it_out(api: Api) -> None:
    ref = (await api.post_alarm(pressed(1, "jkt-menteng-0042", sources=["jkt-menteng-0099"]))).json()["incident_id"]
    assert (await incident(api, ref))["sources"] == ["jkt-menteng-0099", "jkt-menteng-0042"]


@pytest.mark.parametrize("closing_action", ["resolve", "false-alarm"])
async def test_after_an_incident_is_closed_its_key_opens_a_new_one(api: Api, closing_action: str) -> None:
    old = (await api.post_alarm(pressed(1))).json()["incident_id"]
    assert (await api.act(old, "acknowledge")).status_code == 200
    assert (await api.act(old, closing_action)).status_code == 200

    again = await api.post_alarm(pressed(2, count=2))
    assert again.status_code == 201
    new = again.json()["incident_id"]
    assert new != old
    inc = await incident(api, new)
    assert (inc["state"], inc["incident_key"], inc["event_count"]) == ("new", KEY, 1)
    # The next press joins the new incident, not the closed one.
    assert (await api.post_alarm(pressed(3, count=3))).json()["incident_id"] == new
    assert (await incident(api, old))["event_count"] == 1


async def test_different_keys_and_missing_keys_open_separate_incidents(api: Api) -> None:
    refs = [
        (await api.post_alarm(body)).json()["incident_id"]
        for body in (
            pressed(1, key="gw-1:g:1"),
            pressed(2, key="gw-1:g:2"),
            pressed(3, key=None),
            pressed(4, key=None),
        )
    ]
    assert len(set(refs)) == 4
    assert [(await incident(api, r))["incident_key"] for r in refs] == ["gw-1:g:1", "gw-1:g:2", None, None]


async def test_acknowledging_a_grouped_incident_reports_to_every_event(api: Api) -> None:
    ref = (await api.post_alarm(pressed(1, "jkt-menteng-0042"))).json()["incident_id"]
    await api.post_alarm(pressed(2, "jkt-menteng-0043", count=2))
    await api.post_alarm(pressed(3, "jkt-menteng-0042", count=3))
    assert (await api.act(ref, "acknowledge")).status_code == 200
    assert outbox(api.cfg.db_path) == [
        ("jkt-menteng-0042", "gw-1:jkt-menteng-0042:1", "acknowledged"),
        ("jkt-menteng-0043", "gw-1:jkt-menteng-0043:2", "acknowledged"),
        ("jkt-menteng-0042", "gw-1:jkt-menteng-0042:3", "acknowledged"),
    ]


@pytest.mark.parametrize(
    ("steps", "told"),
    [
        (["acknowledge"], ("acknowledged", "operator-1")),
        (["acknowledge", "dispatch"], ("dispatched", "operator-2")),
    ],
)
async def test_a_press_joining_an_incident_already_acted_on_is_told_its_state(
    api: Api, steps: list[str], told: tuple[str, str]
) -> None:
    # The joining button has only heard "received" from its gateway; without this report it would
    # not learn that help is coming until the next operator action.
    ref = (await api.post_alarm(pressed(1, "jkt-menteng-0042"))).json()["incident_id"]
    for action in steps:
        if action == "dispatch":  # by the other operator, so the report must name who did the latest
            r = await api.act(ref, action, headers=OPERATOR2, agency="ambulance")
        else:
            r = await api.act(ref, action)
        assert r.status_code == 200, r.text
    before = len(outbox(api.cfg.db_path))

    r = await api.post_alarm(pressed(2, "jkt-menteng-0043", count=2))
    assert (r.status_code, r.json()["incident_id"]) == (201, ref)
    rows = db_rows(api.cfg.db_path, "SELECT body FROM callback_outbox ORDER BY id")
    assert len(rows) == before + 1
    report = json.loads(rows[-1][0])
    inc = await incident(api, ref)
    state, by = told
    assert report == {
        "event_id": "gw-1:jkt-menteng-0043:2",
        "device_id": "jkt-menteng-0043",
        "seq": 2,
        "state": state,
        "incident_id": ref,
        "at": inc[f"{state}_at"],
        "by": by,
    }
    assert inc["state"] == state  # joining changes no state


async def test_a_real_press_makes_a_grouped_test_incident_real(api: Api) -> None:
    ref = (await api.post_alarm(pressed(1, test=True))).json()["incident_id"]
    assert (await incident(api, ref))["test"] is True
    await api.post_alarm(pressed(2, "jkt-menteng-0043", count=2, test=False))
    assert (await incident(api, ref))["test"] is False
    await api.post_alarm(pressed(3, count=3, test=True))
    assert (await incident(api, ref))["test"] is False  # and stays real


async def test_a_repeated_attached_event_creates_nothing(api: Api) -> None:
    await api.post_alarm(pressed(1))
    first = await api.post_alarm(pressed(2, count=2))
    again = await api.post_alarm(pressed(2, count=2))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.content == first.content
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(2,)]


async def test_a_retry_with_other_grouping_data_is_the_same_event(api: Api) -> None:
    # The grouping fields describe the gateway's view when it sent the event, which a retry may
    # state differently (a recount after a restart); the alarm itself has not changed.
    first = await api.post_alarm(pressed(1, count=1))
    again = await api.post_alarm(
        pressed(1, key="gw-1:g:999", count=7, sources=["jkt-menteng-0042", "jkt-menteng-0050"])
    )
    assert again.status_code == 200
    assert again.content == first.content
    # But a different alarm under the same key is still refused.
    assert (await api.post_alarm(pressed(1, kind="fire"))).status_code == 422


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"press_count": 0}, id="press-count-0"),
        pytest.param({"press_count": "3"}, id="press-count-string"),
        pytest.param({"press_count": 2.5}, id="press-count-fraction"),  # 2.0 is 2 (JSON Schema's integer)
        pytest.param({"incident_key": ""}, id="key-empty"),
        pytest.param({"incident_key": 118}, id="key-not-a-string"),
        pytest.param({"sources": ["Not A Device"]}, id="source-malformed"),
        pytest.param({"sources": "jkt-menteng-0042"}, id="sources-not-a-list"),
    ],
)
async def test_malformed_grouping_fields_are_refused(api: Api, changes: dict[str, Any]) -> None:
    body = {**pressed(1), **changes}
    r = await api.post_alarm(body)
    assert r.status_code == 422, r.text
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(0,)]


# ---- batch -------------------------------------------------------------------------------------


async def test_a_batch_answers_each_alarm_in_order(api: Api) -> None:
    known = await api.post_alarm(alarm(seq=1))
    assert known.status_code == 201
    malformed = alarm(seq=5)
    del malformed["location"]
    r = await post_batch(
        api,
        [
            alarm(seq=2),
            alarm(seq=1),  # received before, same body
            alarm(seq=1, kind="fire"),  # received before, different body
            alarm(seq=3),
            alarm(seq=3),  # twice in the same batch
            malformed,
            {"nonsense": True},
            alarm(seq=4),
        ],
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["event_id"], x["status"]) for x in results] == [
        ("gw-1:jkt-menteng-0042:2", "created"),
        ("gw-1:jkt-menteng-0042:1", "duplicate"),
        ("gw-1:jkt-menteng-0042:1", "rejected"),
        ("gw-1:jkt-menteng-0042:3", "created"),
        ("gw-1:jkt-menteng-0042:3", "duplicate"),
        ("gw-1:jkt-menteng-0042:5", "rejected"),
        (None, "rejected"),
        ("gw-1:jkt-menteng-0042:4", "created"),
    ]
    assert results[1]["incident_id"] == known.json()["incident_id"]
    assert results[4]["incident_id"] == results[3]["incident_id"]
    for x in results:
        if x["status"] == "rejected":
            assert (x["incident_id"], x["state"]) == (None, None)
            assert x["error"]
        else:
            assert (x["state"], x["error"]) == ("received", None)
            assert x["incident_id"].startswith("inc-")
    assert "different body" in results[2]["error"]
    assert "location" in results[5]["error"]
    # The rejected ones stopped nothing: every valid new alarm is stored, each in its own incident.
    assert db_rows(api.cfg.db_path, "SELECT seq FROM alarms ORDER BY id") == [(1,), (2,), (3,), (4,)]
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM incidents") == [(4,)]


async def test_a_repeated_batch_creates_nothing(api: Api) -> None:
    batch = [pressed(seq, key=f"gw-1:g:{seq}") for seq in range(1, 21)]
    first = (await post_batch(api, batch)).json()["results"]
    again = (await post_batch(api, batch)).json()["results"]
    assert {x["status"] for x in first} == {"created"}
    assert {x["status"] for x in again} == {"duplicate"}
    assert [x["incident_id"] for x in again] == [x["incident_id"] for x in first]
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(20,)]
    # And each alarm of a batch is also known to the single endpoint.
    r = await api.post_alarm(batch[7])
    assert (r.status_code, r.json()["incident_id"]) == (200, first[7]["incident_id"])


async def test_alarms_of_one_batch_with_one_key_form_one_incident(api: Api) -> None:
    r = await post_batch(
        api,
        [
            pressed(1, "jkt-menteng-0042", key="gw-1:g:1", count=1),
            pressed(2, "jkt-menteng-0050", key="gw-1:g:2", count=1),
            pressed(3, "jkt-menteng-0043", key="gw-1:g:1", count=2, sources=["jkt-menteng-0042", "jkt-menteng-0043"]),
            pressed(4, "jkt-menteng-0042", key="gw-1:g:1", count=3),
            pressed(5, "jkt-menteng-0044", key=None),
        ],
    )
    results = r.json()["results"]
    assert {x["status"] for x in results} == {"created"}
    refs = [x["incident_id"] for x in results]
    assert refs[0] == refs[2] == refs[3]
    assert len({refs[0], refs[1], refs[4]}) == 3
    # The first alarm of the group opened the incident, so it has the lowest number.
    assert refs[0] < refs[1] < refs[4]
    inc = await incident(api, refs[0])
    assert (inc["event_count"], inc["incident_key"], inc["device_id"]) == (3, "gw-1:g:1", "jkt-menteng-0042")
    assert inc["sources"] == ["jkt-menteng-0042", "jkt-menteng-0043"]
    assert [e["seq"] for e in inc["events"]] == [1, 3, 4]
    assert len(inc["history"]) == 1


async def test_a_batch_attaches_to_an_incident_opened_before_it(api: Api) -> None:
    ref = (await api.post_alarm(pressed(1))).json()["incident_id"]
    assert (await api.act(ref, "acknowledge")).status_code == 200
    results = (await post_batch(api, [pressed(2, "jkt-menteng-0043", count=2), pressed(3, count=3)])).json()["results"]
    assert [x["incident_id"] for x in results] == [ref, ref]
    # Both joining buttons are told "acknowledged" at once.
    assert outbox(api.cfg.db_path) == [
        ("jkt-menteng-0042", "gw-1:jkt-menteng-0042:1", "acknowledged"),
        ("jkt-menteng-0043", "gw-1:jkt-menteng-0043:2", "acknowledged"),
        ("jkt-menteng-0042", "gw-1:jkt-menteng-0042:3", "acknowledged"),
    ]


async def test_a_full_batch_is_stored_and_numbers_continue(api: Api) -> None:
    before = (await api.post_alarm(alarm(seq=100_000))).json()["incident_id"]
    batch = [alarm(seq=seq, device=f"dev-{seq % 50:04d}") for seq in range(500)]
    results = (await post_batch(api, batch)).json()["results"]
    assert [x["status"] for x in results] == ["created"] * 500
    numbers = [int(x["incident_id"].removeprefix("inc-")) for x in results]
    start = int(before.removeprefix("inc-")) + 1
    assert numbers == list(range(start, start + 500))
    after = (await api.post_alarm(alarm(seq=100_001))).json()["incident_id"]
    assert int(after.removeprefix("inc-")) == start + 500
    assert db_rows(api.cfg.db_path, "SELECT seq FROM sqlite_sequence WHERE name = 'incidents'") == [(start + 500,)]


@pytest.mark.parametrize("size", [0, 501])
async def test_a_batch_must_have_1_to_500_alarms(api: Api, size: int) -> None:
    r = await post_batch(api, [alarm(seq=seq) for seq in range(size)])
    assert r.status_code == 422
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(0,)]


@pytest.mark.parametrize(
    "body",
    [pytest.param({}, id="no-alarms"), pytest.param({"alarms": {}}, id="not-a-list"), pytest.param([], id="list")],
)
async def test_a_malformed_batch_is_refused(api: Api, body: Any) -> None:
    r = await api.client.post("/api/v1/alarms/batch", json=body, headers=INTAKE)
    assert r.status_code == 422


@pytest.mark.parametrize(
    "headers", [pytest.param({}, id="no-token"), pytest.param({"Authorization": f"Bearer {OPERATOR_TOKEN}"}, id="op")]
)
async def test_a_batch_needs_the_intake_token(api: Api, headers: dict[str, str]) -> None:
    r = await post_batch(api, [alarm()], headers=headers)
    assert r.status_code == 401
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM alarms") == [(0,)]


# One step of a generated intake sequence: (seq, device, key, kind). The same (seq, device) again is
# a repeat of that event: a duplicate with the same kind, a mismatch with another.
_step = st.tuples(
    st.integers(0, 6),
    st.sampled_from(["jkt-menteng-0001", "jkt-menteng-0002"]),
    st.sampled_from([None, "k-closed", "k-acked", "k-new"]),
    st.sampled_from(["medical", "fire"]),
)


@settings(database=None, max_examples=40, deadline=None)  # no example database in the working tree
@given(steps=st.lists(_step, min_size=1, max_size=14))
def test_a_batch_groups_exactly_like_the_same_alarms_sent_one_by_one(
    steps: list[tuple[int, str, str | None, str]],
) -> None:
    now = datetime(2026, 11, 24, 3, 12, 9, tzinfo=UTC)

    async def run(path: Path, batched: bool) -> tuple[list[Any], dict[str, list[tuple]]]:
        store = await Store.open(path)
        try:
            # Before: a closed incident and an acknowledged one, each with a key.
            for seq, key, action in ((900, "k-closed", Action.FALSE_ALARM), (901, "k-acked", Action.ACKNOWLEDGE)):
                out = await store.record_alarm(new_alarm(AlarmIn.model_validate(pressed(seq, key=key))), now=now)
                await store.apply_action(out.incident, action, actor="operator-1", now=now)
            alarms = [
                new_alarm(AlarmIn.model_validate(pressed(seq, device, key=key, kind=kind)))
                for seq, device, key, kind in steps
            ]
            if batched:
                outcomes = await store.record_alarms(alarms, now=now)
            else:
                outcomes = [await store.record_alarm(a, now=now) for a in alarms]
        finally:
            await store.close()
        tables = {
            sql: db_rows(path, sql)
            for sql in (
                "SELECT id, state, device_id, kind, test, incident_key, updated_at FROM incidents ORDER BY id",
                "SELECT event_id, incident_id, kind, incident_key, press_count, sources FROM alarms ORDER BY id",
                "SELECT incident_id, device_id FROM incident_sources ORDER BY id",
                "SELECT event_id, state, body FROM callback_outbox ORDER BY id",
                "SELECT incident_id, actor, from_state, to_state, detail FROM incident_history ORDER BY id",
            )
        }
        return outcomes, tables

    with tempfile.TemporaryDirectory() as folder:
        one_by_one = asyncio.run(run(Path(folder) / "single.sqlite3", batched=False))
        batched = asyncio.run(run(Path(folder) / "batch.sqlite3", batched=True))
    assert batched == one_by_one


# ---- faults ------------------------------------------------------------------------------------


def fault(n: int, device: str = "jkt-menteng-0042", kind: str = "offline", active: bool = True, **changes: Any) -> dict:
    body: dict[str, Any] = {
        "event_id": f"gw-1:{device}:fault:{n}",
        "gateway_id": "gw-1",
        "device_id": device,
        "fault": kind,
        "active": active,
        "at": f"2026-11-24T03:{20 + n:02d}:00Z",
        "detail": {"last_seen_at": "2026-11-24T03:16:58Z", "battery_mv": 3650, "reason": "3 heartbeats missed"},
        "location": {"lat": -6.195733, "lon": 106.832085, "address": "Jl. Menteng Raya 12", "area": "31.71.06.1001"},
    }
    body.update(changes)
    return body


async def active_faults(api: Api) -> list[tuple[str, str]]:
    r = await api.client.get("/api/v1/devices/faults", headers=OPERATOR)
    assert r.status_code == 200, r.text
    return [(f["device_id"], f["fault"]) for f in r.json()]


async def test_a_fault_is_stored_once_and_opens_no_incident(api: Api) -> None:
    first = await post_fault(api, fault(1))
    again = await post_fault(api, fault(1))
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == {"event_id": "gw-1:jkt-menteng-0042:fault:1", "incident_id": None, "state": "received"}
    assert again.content == first.content
    assert (await post_fault(api, fault(1, active=False))).status_code == 422  # same key, other body
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM device_faults") == [(1,)]
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM incidents") == [(0,)]
    assert (await api.client.get("/api/v1/incidents", headers=OPERATOR)).json() == []


async def test_the_active_fault_list_follows_the_latest_reports(api: Api) -> None:
    assert (await post_fault(api, fault(1, "jkt-menteng-0042", "offline"))).status_code == 201
    assert (await post_fault(api, fault(2, "jkt-menteng-0043", "low_battery", location=None))).status_code == 201
    assert (await post_fault(api, fault(3, "jkt-menteng-0042", "tamper"))).status_code == 201
    assert await active_faults(api) == [
        ("jkt-menteng-0042", "tamper"),
        ("jkt-menteng-0043", "low_battery"),
        ("jkt-menteng-0042", "offline"),
    ]
    listed = (await api.client.get("/api/v1/devices/faults", headers=OPERATOR)).json()
    assert listed[2] == {
        "device_id": "jkt-menteng-0042",
        "fault": "offline",
        "active": True,
        "since": "2026-11-24T03:21:00.000Z",
        "at": "2026-11-24T03:21:00.000Z",
        "event_id": "gw-1:jkt-menteng-0042:fault:1",
        "gateway_id": "gw-1",
        "detail": {"last_seen_at": "2026-11-24T03:16:58Z", "battery_mv": 3650, "reason": "3 heartbeats missed"},
        "location": {"lat": -6.195733, "lon": 106.832085, "address": "Jl. Menteng Raya 12", "area": "31.71.06.1001"},
    }
    assert listed[1]["location"] is None

    # The device comes back: its offline fault clears, the others stay.
    assert (await post_fault(api, fault(4, "jkt-menteng-0042", "offline", active=False))).status_code == 201
    assert await active_faults(api) == [("jkt-menteng-0042", "tamper"), ("jkt-menteng-0043", "low_battery")]
    # The history keeps every report.
    assert db_rows(api.cfg.db_path, "SELECT event_id, active FROM device_faults ORDER BY id") == [
        ("gw-1:jkt-menteng-0042:fault:1", 1),
        ("gw-1:jkt-menteng-0043:fault:2", 1),
        ("gw-1:jkt-menteng-0042:fault:3", 1),
        ("gw-1:jkt-menteng-0042:fault:4", 0),
    ]
    # It goes offline again: listed, with a new `since`.
    assert (await post_fault(api, fault(5, "jkt-menteng-0042", "offline"))).status_code == 201
    listed = (await api.client.get("/api/v1/devices/faults", headers=OPERATOR)).json()
    assert (listed[0]["fault"], listed[0]["since"]) == ("offline", "2026-11-24T03:25:00.000Z")


async def test_a_repeated_active_report_keeps_since(api: Api) -> None:
    await post_fault(api, fault(1, kind="low_battery"))
    await post_fault(api, fault(2, kind="low_battery", detail={"battery_mv": 3400}))
    [listed] = (await api.client.get("/api/v1/devices/faults", headers=OPERATOR)).json()
    assert (listed["since"], listed["at"]) == ("2026-11-24T03:21:00.000Z", "2026-11-24T03:22:00.000Z")
    assert listed["detail"] == {"battery_mv": 3400}
    assert listed["event_id"] == "gw-1:jkt-menteng-0042:fault:2"


async def test_a_late_old_report_does_not_reopen_a_cleared_fault(api: Api) -> None:
    # The gateway retries; the "active" of 03:21 may arrive after the "cleared" of 03:22.
    assert (await post_fault(api, fault(2, active=False))).status_code == 201
    assert (await post_fault(api, fault(1, active=True))).status_code == 201
    assert await active_faults(api) == []
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM device_faults") == [(2,)]


async def test_fault_times_in_other_zones_are_compared_as_instants(api: Api) -> None:
    # Current state and ordering compare stored times, which must therefore all be UTC.
    await post_fault(api, fault(1, "jkt-menteng-0042", at="2026-11-24T10:21:00+07:00"))  # 03:21Z
    await post_fault(api, fault(2, "jkt-menteng-0043", at="2026-11-24T03:22:00Z"))
    await post_fault(api, fault(3, "jkt-menteng-0042", active=False, at="2026-11-24T03:20:30-00:30"))  # 03:50Z
    listed = (await api.client.get("/api/v1/devices/faults", headers=OPERATOR)).json()
    assert [(f["device_id"], f["since"]) for f in listed] == [("jkt-menteng-0043", "2026-11-24T03:22:00.000Z")]


async def test_fault_idempotency_key_must_equal_event_id(api: Api) -> None:
    body = fault(1)
    r = await api.client.post("/api/v1/faults", json=body, headers=intake_headers("gw-1:other:fault:1"))
    assert r.status_code == 422
    r = await api.client.post("/api/v1/faults", json=body, headers=INTAKE)
    assert r.status_code == 422
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM device_faults") == [(0,)]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(fault(1, kind="flooded"), id="unknown-fault"),
        pytest.param({**fault(1), "active": "true"}, id="active-string"),
        pytest.param(fault(1, at="2026-11-24T03:20:00"), id="naive-time"),
        pytest.param(fault(1, detail=["x"]), id="detail-not-an-object"),
        pytest.param(fault(1, detail={"x": "y" * 5000}), id="detail-too-big"),
        pytest.param(fault(1, device_id="X"), id="device-malformed"),
    ],
)
async def test_invalid_faults_are_refused(api: Api, body: dict[str, Any]) -> None:
    r = await post_fault(api, body)
    assert r.status_code == 422, r.text
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM device_faults") == [(0,)]


async def test_faults_need_the_right_tokens(api: Api) -> None:
    body = fault(1)
    r = await api.client.post("/api/v1/faults", json=body, headers={**OPERATOR, "Idempotency-Key": body["event_id"]})
    assert r.status_code == 401
    assert (await api.client.get("/api/v1/devices/faults", headers=INTAKE)).status_code == 401
    assert (await api.client.get("/api/v1/devices/faults")).status_code == 401


# ---- schema migration --------------------------------------------------------------------------

# What version 1 stored as the fingerprint of alarm() (computed by the version 1 code). If this
# test fails, repeats of alarms received before an upgrade would be refused as mismatches.
V1_FINGERPRINT = "f669275de48d1612f77a361fde003d27b4207f46fc1a40b14cb937bf9ed286da"


def make_v1_database(path: Path) -> None:
    """A database as version 1 left it: one acknowledged incident (number 7) with one alarm and
    its state report."""
    with closing(sqlite3.connect(path)) as db:
        for statement in store_module.MIGRATIONS[0]:
            db.execute(statement)
        db.execute(
            """INSERT INTO incidents (id, state, device_id, kind, test, lat, lon, address, area, created_at,
                   updated_at, acknowledged_at, acknowledged_by)
               VALUES (7, 'acknowledged', 'jkt-menteng-0042', 'medical', 0, -6.195733, 106.832085,
                   'Jl. Menteng Raya 12', '31.71.06.1001', '2026-11-24T03:12:10.000Z',
                   '2026-11-24T03:12:31.204Z', '2026-11-24T03:12:31.204Z', 'operator-1')"""
        )
        db.execute(
            """INSERT INTO alarms (event_id, gateway_id, device_id, seq, kind, test, lat, lon, address, area,
                   raised_at, received_at, intake_at, fingerprint, incident_id)
               VALUES ('gw-1:jkt-menteng-0042:4711', 'gw-1', 'jkt-menteng-0042', 4711, 'medical', 0,
                   -6.195733, 106.832085, 'Jl. Menteng Raya 12', '31.71.06.1001', '2026-11-24T03:12:09.000Z',
                   '2026-11-24T03:12:09.412Z', '2026-11-24T03:12:10.000Z', ?, 7)""",
            (V1_FINGERPRINT,),
        )
        db.execute(
            """INSERT INTO incident_history (incident_id, at, actor, from_state, to_state, detail)
               VALUES (7, '2026-11-24T03:12:10.000Z', 'gateway:gw-1', NULL, 'new', '{"event_id": "x"}'),
                      (7, '2026-11-24T03:12:31.204Z', 'operator-1', 'new', 'acknowledged', NULL)"""
        )
        db.execute(
            """INSERT INTO callback_outbox (event_id, gateway_id, state, body, created_at, next_attempt_at)
               VALUES ('gw-1:jkt-menteng-0042:4711', 'gw-1', 'acknowledged', '{}', '2026-11-24T03:12:31.204Z', 0)"""
        )
        db.execute("PRAGMA user_version = 1")
        db.commit()


async def test_a_version_1_database_is_migrated_and_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "cc.sqlite3"
    make_v1_database(path)
    async with running_api(path) as api:
        assert db_rows(path, "PRAGMA user_version") == [(store_module.SCHEMA_VERSION,)]
        inc = await incident(api, "inc-000007")
        assert (inc["state"], inc["event_count"], inc["press_count"]) == ("acknowledged", 1, 1)
        assert (inc["sources"], inc["incident_key"]) == (["jkt-menteng-0042"], None)
        assert (inc["events"][0]["incident_key"], inc["events"][0]["sources"]) == (None, None)

        # A gateway that repeats an alarm sent before the upgrade gets the old answer, not a 422.
        again = await api.post_alarm(alarm())
        assert (again.status_code, again.json()["incident_id"]) == (200, "inc-000007")

        # Grouped alarms after the upgrade: numbering continues; the old incident has no key to match.
        first = await api.post_alarm(pressed(4712, key="gw-1:g:1"))
        second = await api.post_alarm(pressed(4713, key="gw-1:g:1", count=2))
        assert first.json()["incident_id"] == second.json()["incident_id"] == "inc-000008"

        # The old incident still takes actions, reporting to its event.
        assert (await api.act("inc-000007", "resolve")).status_code == 200
        assert db_rows(path, "SELECT event_id, state FROM callback_outbox ORDER BY id") == [
            ("gw-1:jkt-menteng-0042:4711", "acknowledged"),
            ("gw-1:jkt-menteng-0042:4711", "resolved"),
        ]


async def test_a_failing_later_migration_leaves_a_version_1_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cc.sqlite3"
    make_v1_database(path)
    schema_before = db_rows(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    broken = (*store_module.MIGRATIONS, ("THIS IS NOT SQL",))
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(broken))
    with pytest.raises(sqlite3.OperationalError):
        await Store.open(path)
    # Version 2's steps ran in the same transaction as the broken one, so they are gone too.
    assert db_rows(path, "PRAGMA user_version") == [(1,)]
    assert db_rows(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema_before
    assert db_rows(path, "SELECT id, state FROM incidents") == [(7, "acknowledged")]


# ---- real process ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_every_button_of_a_grouped_incident_hears_acknowledged(tmp_path: Path) -> None:
    with (
        GatewayStandIn() as gateway,
        CommandCenterProcess(tmp_path, gateway_url=gateway.url, gateway_token=GATEWAY_TOKEN) as cc,
    ):
        batch = [
            pressed(1, "jkt-menteng-0042", count=1),
            pressed(2, "jkt-menteng-0043", count=2, sources=["jkt-menteng-0042", "jkt-menteng-0043"]),
            pressed(3, "jkt-menteng-0044", count=3),
        ]
        r = httpx.post(
            f"{cc.url}/api/v1/alarms/batch",
            json={"alarms": batch},
            headers=cc.batch_headers(),
        )
        assert r.status_code == 200, r.text
        [ref] = {x["incident_id"] for x in r.json()["results"]}
        assert operator_action(cc, ref, "acknowledge").status_code == 200

        received = gateway.wait_for(delivered(3, "acknowledged"))
        assert sorted((x.body["device_id"], x.body["seq"]) for x in received) == [
            ("jkt-menteng-0042", 1),
            ("jkt-menteng-0043", 2),
            ("jkt-menteng-0044", 3),
        ]
        assert {(x.body["incident_id"], x.body["state"]) for x in received} == {(ref, "acknowledged")}

        # A fourth button pressed afterwards joins and is told at once, without another action.
        late = pressed(4, "jkt-menteng-0045", count=4)
        assert (
            httpx.post(f"{cc.url}/api/v1/alarms", json=late, headers=cc.intake_headers(late["event_id"])).json()[
                "incident_id"
            ]
            == ref
        )
        received = gateway.wait_for(delivered(4, "acknowledged"))
        assert received[-1].body["device_id"] == "jkt-menteng-0045"
        assert cc.intake_token not in cc.log()
