"""Tests of dispatches to several agencies per incident, and of agencies that answer on screen: the
real app in-process (real lifespan, real SQLite file), two agencies with accounts of their own
(fire, ambulance) and the others without; the state reports the dispatches cause are read from the
callback outbox, and the `dispatch.unanswered` webhook body is checked against its JSON schema as
the receiver gets it (signed_body)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from siaga.commandcenter import stats
from siaga.commandcenter.callbacks import signed_body
from siaga.commandcenter.config import CCConfig, DispatchSettings, EscalationSettings, Operator, Role
from siaga.commandcenter.deps import Principal
from siaga.commandcenter.dispatches import UnansweredDispatches
from siaga.commandcenter.domain import (
    Action,
    DispatchStatus,
    IncidentState,
    can_move_dispatch,
    incident_moves,
    needs_dispatch,
    utc_now,
)
from siaga.commandcenter.store import DispatchExistsError, InvalidDispatchMoveError, Store
from siaga.settings import ConfigError
from tests.test_commandcenter import (
    OPERATOR,
    OPERATOR2_TOKEN,
    OPERATOR_TOKEN,
    Api,
    alarm,
    db_rows,
    intake_headers,
    running_api,
)
from tests.test_commandcenter_postgres import NOW, new_alarm, rows

FIRE_TOKEN = "damkar-" + "f" * 24
AMBULANCE_TOKEN = "ambulans-" + "a" * 24
FIRE = {"Authorization": f"Bearer {FIRE_TOKEN}"}
AMBULANCE = {"Authorization": f"Bearer {AMBULANCE_TOKEN}"}
SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "schemas" / "webhook-dispatch.unanswered.json"
KEY = "gw-1:g:7"

ACCOUNTS: dict[str, Any] = {
    "operator_tokens": {OPERATOR_TOKEN: "operator-1", OPERATOR2_TOKEN: "operator-2", FIRE_TOKEN: "damkar-1",
                        AMBULANCE_TOKEN: "ambulans-1"},
    "operators": {
        "operator-1": Operator("operator-1"),
        "operator-2": Operator("operator-2"),
        "damkar-1": Operator("damkar-1", Role.AGENCY, "fire"),
        "ambulans-1": Operator("ambulans-1", Role.AGENCY, "ambulance"),
    },
}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "cc.sqlite3", **ACCOUNTS) as running:
        yield running


async def acknowledged(api: Api, presses: int = 1, seq: int = 1) -> str:
    """An acknowledged incident of `presses` alarm events (grouped by the gateway's key)."""
    ref = None
    for n in range(presses):
        body = alarm(seq=seq + n, device=f"jkt-menteng-{n:04d}", incident_key=f"{KEY}:{seq}",
                     press_count=n + 1, sources=[f"jkt-menteng-{i:04d}" for i in range(n + 1)])
        r = await api.client.post("/api/v1/alarms", json=body, headers=intake_headers(body["event_id"]))
        assert r.status_code == 201, r.text
        assert ref in (None, r.json()["incident_id"])
        ref = r.json()["incident_id"]
    assert ref is not None
    assert (await api.act(ref, "acknowledge")).status_code == 200
    return ref


async def set_status(api: Api, ref: str, agency: str, headers: dict[str, str], status: str,
                     **body: Any) -> httpx.Response:
    return await api.client.post(f"/api/v1/incidents/{ref}/dispatches/{agency}", json={"status": status, **body},
                                 headers=headers)


def statuses(incident: dict[str, Any]) -> dict[str, str]:
    return {d["agency"]: d["status"] for d in incident["dispatches"]}


def reports(api: Api, state: str) -> int:
    """State reports queued for the gateway with this state."""
    [(n,)] = db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM callback_outbox WHERE state = ?", (state,))
    return n


# ---- the rules, pure -----------------------------------------------------------------------------


def test_dispatch_moves_go_forward_only_and_decline_before_a_unit_is_committed() -> None:
    order = [DispatchStatus.REQUESTED, DispatchStatus.ACCEPTED, DispatchStatus.EN_ROUTE, DispatchStatus.ON_SCENE,
             DispatchStatus.DONE]
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            assert can_move_dispatch(a, b) is (j > i), (a, b)
    declinable = {s for s in DispatchStatus if can_move_dispatch(s, DispatchStatus.DECLINED)}
    assert declinable == {DispatchStatus.REQUESTED, DispatchStatus.ACCEPTED}
    assert not any(can_move_dispatch(DispatchStatus.DECLINED, s) for s in DispatchStatus)


def test_incident_moves_follow_its_dispatches() -> None:
    s, ack, disp = DispatchStatus, IncidentState.ACKNOWLEDGED, IncidentState.DISPATCHED
    assert incident_moves(ack, [s.REQUESTED, s.REQUESTED]) == ()
    assert [a.value for a in incident_moves(ack, [s.REQUESTED, s.ACCEPTED])] == ["dispatched"]
    assert [a.value for a in incident_moves(ack, [s.DONE])] == ["dispatched", "resolved"]
    assert incident_moves(disp, [s.DONE, s.ON_SCENE]) == ()
    assert [a.value for a in incident_moves(disp, [s.DONE, s.DECLINED])] == ["resolved"]
    assert incident_moves(disp, [s.DECLINED]) == ()
    assert incident_moves(IncidentState.RESOLVED, [s.DONE]) == ()
    assert needs_dispatch(ack, [s.DECLINED, s.DECLINED])
    assert not needs_dispatch(ack, [s.DECLINED, s.REQUESTED])
    assert not needs_dispatch(ack, [])
    assert not needs_dispatch(IncidentState.RESOLVED, [s.DECLINED])


def test_dispatch_settings_refuse_a_wait_out_of_range() -> None:
    assert DispatchSettings().accept_within_s == 120
    for bad in (0, -1, 86_401):
        with pytest.raises(ConfigError, match="accept_within_s"):
            DispatchSettings(accept_within_s=bad)


def test_the_config_file_reads_agencies_in_both_languages_and_the_dispatch_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, token in (("CC_INTAKE", "i" * 24), ("CC_OPERATOR", OPERATOR_TOKEN), ("CC_FIRE", FIRE_TOKEN)):
        monkeypatch.setenv(name, token)
    config = tmp_path / "cc.toml"
    config.write_text("""
[intake]
token_env = "CC_INTAKE"
[[operators]]
name = "operator-1"
token_env = "CC_OPERATOR"
[[operators]]
name = "damkar-1"
role = "agency"
agency = "fire"
token_env = "CC_FIRE"
[[agencies]]
id = "fire"
name = "Damkar Jakarta Pusat"
name_en = "Central Jakarta fire service"
[[agencies]]
id = "ambulance"
name = "Ambulans Gawat Darurat"
[dispatch]
accept_within_s = 45
""")
    cfg = CCConfig.load(config)
    assert [(a.id, a.name_en) for a in cfg.agencies] == [("fire", "Central Jakarta fire service"), ("ambulance", None)]
    assert cfg.dispatch.accept_within_s == 45
    assert (cfg.answers_on_screen("fire"), cfg.answers_on_screen("ambulance")) == (True, False)


# ---- the API -------------------------------------------------------------------------------------


async def test_settings_say_which_agencies_answer_on_screen(api: Api) -> None:
    agencies = (await api.client.get("/api/v1/console/settings", headers=OPERATOR)).json()["agencies"]
    by_id = {a["id"]: a for a in agencies}
    assert {"fire", "ambulance", "police", "disaster", "public-order", "sar", "transport", "electricity",
            "water"} <= set(by_id)
    assert [a for a in by_id if by_id[a]["answers_on_screen"]] == ["fire", "ambulance"]
    assert by_id["fire"]["name_en"] == "Fire and rescue (Damkar)" != by_id["fire"]["name"]
    own = (await api.client.get("/api/v1/console/settings", headers=FIRE)).json()["agencies"]
    assert [(a["id"], a["answers_on_screen"]) for a in own] == [("fire", True)]


async def test_two_agencies_answer_on_screen_and_the_incident_follows(api: Api) -> None:
    ref = await acknowledged(api, presses=2)
    r = await api.act(ref, "dispatch", agencies=["fire", "ambulance"], note="two cars")
    assert r.status_code == 200, r.text
    inc = r.json()
    # Both wait for their agency: the incident stays acknowledged and the buttons hear nothing new.
    assert (inc["state"], statuses(inc), inc["agency"]) == ("acknowledged", {"fire": "requested",
                                                                            "ambulance": "requested"}, "fire")
    assert [d["agency_name"] for d in inc["dispatches"]] == ["Pemadam Kebakaran dan Penyelamatan (Damkar)",
                                                             "Dinas Kesehatan / ambulans"]
    assert reports(api, "dispatched") == 0

    inc = (await set_status(api, ref, "fire", FIRE, "accepted")).json()
    assert (inc["state"], inc["dispatched_by"]) == ("dispatched", "damkar-1")
    assert reports(api, "dispatched") == 2  # one per alarm event of the incident
    inc = (await set_status(api, ref, "ambulance", AMBULANCE, "accepted")).json()
    assert reports(api, "dispatched") == 2  # already dispatched: nothing new for the buttons

    for status in ("en_route", "on_scene", "done"):
        r = await set_status(api, ref, "fire", FIRE, status)
        assert r.status_code == 200, r.text
    assert r.json()["state"] == "dispatched"  # the ambulance is still out
    assert (await set_status(api, ref, "ambulance", AMBULANCE, "on_scene")).status_code == 200  # skips en_route
    inc = (await set_status(api, ref, "ambulance", AMBULANCE, "done", note="patient handed over")).json()
    assert (inc["state"], inc["closed_by"]) == ("resolved", "ambulans-1")
    assert reports(api, "resolved") == 2
    fire = inc["dispatches"][0]
    assert all(fire[f"{s}_at"] for s in ("accepted", "en_route", "on_scene", "done"))
    assert fire["declined_at"] is None and fire["updated_by"] == "damkar-1"

    # Each agency still opens the incident, closed as it is; its detail holds every step.
    detail = (await api.client.get(f"/api/v1/incidents/{ref}", headers=AMBULANCE)).json()
    steps = [(h["agency"], h["actor"], h["from_status"], h["to_status"]) for h in detail["dispatch_history"]]
    assert steps[:2] == [("fire", "operator-1", None, "requested"), ("ambulance", "operator-1", None, "requested")]
    assert steps[-2:] == [("ambulance", "ambulans-1", "accepted", "on_scene"),
                          ("ambulance", "ambulans-1", "on_scene", "done")]
    assert len(steps) == 2 + 4 + 3
    assert {"note": "patient handed over", "agencies": ["ambulance"]} in [h["detail"] for h in detail["history"]]
    listed = (await api.client.get("/api/v1/incidents", headers=FIRE)).json()
    assert [i["id"] for i in listed] == [ref]


async def test_an_agency_sees_and_sets_only_its_own_dispatches(api: Api) -> None:
    ref = await acknowledged(api)
    other = await acknowledged(api, seq=10)
    assert (await api.act(ref, "dispatch", agencies=["fire", "ambulance"])).status_code == 200
    assert (await api.act(other, "dispatch", agencies=["ambulance"])).status_code == 200
    # Another agency's dispatch, and an incident without a dispatch to it, do not exist for it.
    assert (await set_status(api, ref, "ambulance", FIRE, "accepted")).status_code == 404
    assert (await set_status(api, other, "fire", FIRE, "accepted")).status_code == 404
    assert (await api.client.get(f"/api/v1/incidents/{other}", headers=FIRE)).status_code == 404
    assert [i["id"] for i in (await api.client.get("/api/v1/incidents", headers=FIRE)).json()] == [ref]
    # Agency accounts answer; they do not dispatch.
    assert (await api.act(other, "dispatch", headers=FIRE, agencies=["fire"])).status_code == 403
    # An operator answers for any agency (the room phoned it).
    inc = (await set_status(api, ref, "ambulance", OPERATOR, "accepted")).json()
    assert statuses(inc) == {"fire": "requested", "ambulance": "accepted"}
    assert inc["dispatches"][1]["updated_by"] == "operator-1"
    assert (await set_status(api, ref, "police", OPERATOR, "accepted")).status_code == 404  # never dispatched


async def test_every_agency_declining_hands_the_incident_back_to_the_room(api: Api) -> None:
    ref = await acknowledged(api)
    assert (await api.act(ref, "dispatch", agencies=["fire", "ambulance"])).status_code == 200
    r = await set_status(api, ref, "fire", FIRE, "declined")
    assert r.status_code == 422 and "reason" in r.text
    inc = (await set_status(api, ref, "fire", FIRE, "declined", reason="all units out")).json()
    assert (inc["needs_dispatch"], inc["dispatches"][0]["reason"]) == (False, "all units out")
    # Accepted, then declined (the unit broke down before leaving): the incident stays dispatched.
    assert (await set_status(api, ref, "ambulance", AMBULANCE, "accepted")).json()["state"] == "dispatched"
    inc = (await set_status(api, ref, "ambulance", AMBULANCE, "declined", reason="vehicle fault")).json()
    assert (inc["state"], inc["needs_dispatch"]) == ("dispatched", True)
    newer = await api.new_incident(seq=50)  # unacknowledged, and newer: still listed after it
    listed = (await api.client.get("/api/v1/incidents", headers=OPERATOR)).json()
    assert [i["id"] for i in listed[:2]] == [ref, newer]

    # Asked again, the fire service has a new dispatch; the declined one stays in the record.
    inc = (await api.act(ref, "dispatch", agencies=["fire"])).json()
    assert (inc["needs_dispatch"], [(d["agency"], d["status"]) for d in inc["dispatches"]]) == (
        False, [("fire", "declined"), ("ambulance", "declined"), ("fire", "requested")])
    assert (await set_status(api, ref, "fire", FIRE, "accepted")).json()["dispatches"][2]["status"] == "accepted"
    # Only the ambulance's answer was declined: it may be asked again, the fire service may not.
    assert (await api.act(ref, "dispatch", agencies=["fire"])).status_code == 409


async def test_moves_that_go_back_or_skip_the_rules_are_refused(api: Api) -> None:
    ref = await acknowledged(api)
    assert (await api.act(ref, "dispatch", agencies=["fire"])).status_code == 200
    assert (await set_status(api, ref, "fire", FIRE, "en_route")).status_code == 200
    for status, extra in (("accepted", {}), ("en_route", {}), ("declined", {"reason": "late"})):
        r = await set_status(api, ref, "fire", FIRE, status, **extra)
        assert r.status_code == 409, (status, r.text)
        assert "en_route" in r.json()["detail"]
    for body in ({"status": "requested"}, {"status": "declined"}, {"status": "done", "x": 1},
                 {"status": "declined", "reason": " "}, {"status": "declined", "reason": None}):
        r = await api.client.post(f"/api/v1/incidents/{ref}/dispatches/fire", json=body, headers=FIRE)
        assert r.status_code == 422, (body, r.text)
    # Twice the same agency, an agency not configured, both forms at once, nothing: refused.
    assert (await api.act(ref, "dispatch", agencies=["fire"])).status_code == 409
    assert (await api.act(ref, "dispatch", agencies=["police", "police"])).status_code == 422
    r = await api.act(ref, "dispatch", agencies=["police", "brimob"])
    assert r.status_code == 422 and "brimob" in r.json()["detail"]
    assert (await api.act(ref, "dispatch", agencies=[])).status_code == 422
    assert (await api.act(ref, "dispatch", note="nobody named")).status_code == 422
    assert db_rows(api.cfg.db_path, "SELECT COUNT(*) FROM dispatches WHERE agency = 'police'") == [(0,)]
    # Not from new, nor from a closed incident.
    fresh = await api.new_incident(seq=60)
    assert (await api.act(fresh, "dispatch", agencies=["police"])).status_code == 409
    assert (await api.act(fresh, "false-alarm")).status_code == 200
    assert (await api.act(fresh, "dispatch", agencies=["police"])).status_code == 409


async def test_the_room_dispatches_for_agencies_it_phones(api: Api) -> None:
    ref = await acknowledged(api)
    # The older form, to an agency without an account: accepted at once, the buttons told.
    inc = (await api.act(ref, "dispatch", agency="police")).json()
    assert (inc["state"], statuses(inc), inc["agency"]) == ("dispatched", {"police": "accepted"}, "police")
    assert reports(api, "dispatched") == 1
    # `accepted: true`: the room phoned an agency that also answers on screen.
    # Both forms in one body make one list, each agency once.
    inc = (await api.act(ref, "dispatch", agency="fire", agencies=["fire", "sar"], accepted=True)).json()
    assert statuses(inc) == {"police": "accepted", "fire": "accepted", "sar": "accepted"}
    assert (inc["agency"], reports(api, "dispatched")) == ("police", 1)
    # The operator closes out each dispatch for its agency; the last one resolves the incident.
    for agency in ("police", "fire", "sar"):
        inc = (await set_status(api, ref, agency, OPERATOR, "done", reason=f"{agency} finished")).json()
    assert (inc["state"], inc["closed_by"]) == ("resolved", "operator-1")
    # A reason besides a decline stays in the history; the dispatch's own `reason` is a decline's.
    assert [d["reason"] for d in inc["dispatches"]] == [None, None, None]
    detail = (await api.client.get(f"/api/v1/incidents/{ref}", headers=OPERATOR)).json()
    assert [h["reason"] for h in detail["dispatch_history"] if h["to_status"] == "done"] == [
        "police finished", "fire finished", "sar finished"]
    audit = [a for (a,) in db_rows(api.cfg.db_path, "SELECT action FROM audit_log ORDER BY id")]
    assert audit.count("dispatch_requested") == 2 and audit.count("dispatch_done") == 3


# ---- unanswered dispatches -------------------------------------------------------------------------


async def test_an_unanswered_dispatch_escalates_once_with_a_webhook_that_fits_the_schema(tmp_path: Path) -> None:
    escalation = EscalationSettings(webhook_url="http://127.0.0.1:9/hooks")  # delivery is not under test
    async with running_api(tmp_path / "cc.sqlite3", escalation=escalation, **ACCOUNTS) as api:
        ref = await acknowledged(api)
        assert (await api.act(ref, "dispatch", agencies=["fire", "police"])).status_code == 200
        store = api.app.state.services.store
        seen: list[list[str]] = []
        unanswered = UnansweredDispatches(store, DispatchSettings(accept_within_s=60), webhook=True,
                                          on_escalated=lambda found: seen.append([i.ref for i in found]))
        now = utc_now()
        assert await unanswered.run_once(now + timedelta(seconds=59)) == []
        found = await unanswered.run_once(now + timedelta(seconds=61))
        assert [(i.ref, d.agency) for i, d in found] == [(ref, "fire")]  # police was accepted by the room
        assert seen == [[ref]]
        assert await unanswered.run_once(now + timedelta(seconds=600)) == []  # once

        detail = (await api.client.get(f"/api/v1/incidents/{ref}", headers=FIRE)).json()
        assert detail["dispatches"][0]["escalated_at"] is not None
        assert detail["dispatches"][0]["status"] == "requested"  # still the agency's to answer
        [entry] = [h for h in detail["history"] if h["kind"] == "escalation"]
        assert (entry["actor"], entry["detail"], entry["to_state"]) == ("system:escalation", {"dispatch": "fire"},
                                                                        "dispatched")
        [(target, audited)] = db_rows(api.cfg.db_path,
                                      "SELECT target, detail FROM audit_log WHERE action = 'dispatch_escalated'")
        assert (target, json.loads(audited)) == (ref, {"agency": "fire", "after_s": 60})
        [(key, kind, stored)] = db_rows(api.cfg.db_path, "SELECT incident_id, kind, body FROM webhook_outbox")
    assert (key, kind) == (ref, "dispatch.unanswered")
    msg_id, sent = signed_body(stored)
    payload = json.loads(sent)
    validator = jsonschema_rs.Draft202012Validator(json.loads(SCHEMA.read_text()), validate_formats=True)
    validator.validate(payload)
    assert payload["type"] == "dispatch.unanswered"
    assert msg_id == payload["data"]["event_id"]
    assert (payload["data"]["agency"], payload["data"]["after_s"]) == ("fire", 60)
    assert payload["data"]["incident"]["id"] == ref
    # The schema is not a formality: a body without its agency is refused.
    del payload["data"]["agency"]
    assert not validator.is_valid(payload)


async def test_the_leader_escalates_an_unanswered_dispatch_live_to_the_agency(tmp_path: Path) -> None:
    async with running_api(tmp_path / "cc.sqlite3", dispatch=DispatchSettings(accept_within_s=1),
                           **ACCOUNTS) as api:
        ref = await acknowledged(api)
        live = api.app.state.services.live
        fire = live.subscribe(Principal("damkar-1", Role.AGENCY, "fire"))
        police = live.subscribe(Principal("polisi-1", Role.AGENCY, "police"))
        try:
            assert (await api.act(ref, "dispatch", agencies=["fire"])).status_code == 200
            events = []
            async with asyncio.timeout(5):
                while not events or events[-1].type != "escalation":
                    event = await fire.queue.get()
                    assert event is not None
                    events.append(event)
            data = json.loads(events[-1].data)
            assert data["id"] == ref and data["dispatches"][0]["escalated_at"] is not None
            assert police.queue.empty()  # another agency hears nothing of it
        finally:
            live.unsubscribe(fire)
            live.unsubscribe(police)


# ---- both engines --------------------------------------------------------------------------------



async def test_the_store_runs_dispatches_alike_on_both_engines(store_target: str | Path) -> None:
    store = await Store.open(store_target)
    try:
        [a, b] = await store.record_alarms([new_alarm(1, key="g"), new_alarm(2, "jkt-menteng-0043", key="g")],
                                           now=NOW)
        number = a.incident
        await store.apply_action(number, Action.ACKNOWLEDGE, actor="operator-1", now=NOW)
        at = [NOW + timedelta(seconds=s) for s in range(0, 1000, 100)]
        inc = await store.request_dispatches(
            number, [("fire", DispatchStatus.REQUESTED), ("police", DispatchStatus.ACCEPTED)], actor="operator-1",
            now=at[1])
        assert (inc.state, [d.status.value for d in inc.dispatches]) == (IncidentState.DISPATCHED,
                                                                         ["requested", "accepted"])
        with pytest.raises(DispatchExistsError):
            await store.request_dispatches(number, [("fire", DispatchStatus.REQUESTED)], actor="operator-1",
                                           now=at[2])
        assert await store.next_unanswered_due(within_s=120) == at[1] + timedelta(seconds=120)
        [(escalated, dispatch)] = await store.escalate_unanswered(now=at[3], within_s=120)
        assert (escalated.number, dispatch.agency, dispatch.escalated_at) == (number, "fire", at[3])
        assert await store.escalate_unanswered(now=at[4], within_s=120) == []
        assert await store.next_unanswered_due(within_s=120) is None
        await store.set_dispatch_status(number, "police", DispatchStatus.EN_ROUTE, actor="operator-2", now=at[4])
        with pytest.raises(InvalidDispatchMoveError):  # a unit on its way does not decline
            await store.set_dispatch_status(number, "police", DispatchStatus.DECLINED, actor="operator-2", now=at[4],
                                            reason="late")
        await store.set_dispatch_status(number, "fire", DispatchStatus.ON_SCENE, actor="damkar-1", now=at[5])
        await store.set_dispatch_status(number, "police", DispatchStatus.DONE, actor="operator-2", now=at[6])
        done = await store.set_dispatch_status(number, "fire", DispatchStatus.DONE, actor="damkar-1", now=at[7])
        assert (done.state, done.closed_by, done.closed_at) == (IncidentState.RESOLVED, "damkar-1", at[7])
        [listed] = await store.list_incidents(agency="police")
        assert listed.dispatches == done.dispatches
        assert await store.list_incidents(agency="ambulance") == []
        history = await store.dispatch_history(number)
        assert [(h.agency, h.from_status, h.to_status.value) for h in history] == [
            ("fire", None, "requested"), ("police", None, "accepted"),
            ("police", DispatchStatus.ACCEPTED, "en_route"), ("fire", DispatchStatus.REQUESTED, "on_scene"),
            ("police", DispatchStatus.EN_ROUTE, "done"), ("fire", DispatchStatus.ON_SCENE, "done")]
    finally:
        await store.close()
    assert rows(store_target, "SELECT event_id, state FROM callback_outbox ORDER BY id") == [
        (a.event_id, "acknowledged"), (b.event_id, "acknowledged"),
        (a.event_id, "dispatched"), (b.event_id, "dispatched"),
        (a.event_id, "resolved"), (b.event_id, "resolved"),
    ]


# ---- figures -------------------------------------------------------------------------------------


async def test_an_incident_sent_to_two_agencies_counts_in_each_agencys_figures_unless_declined(api: Api) -> None:
    both = await acknowledged(api, seq=1)
    one = await acknowledged(api, seq=2)
    for ref, agencies in ((both, ["police", "ambulance"]), (one, ["fire", "police"])):
        r = await api.client.post(f"/api/v1/incidents/{ref}/dispatch", json={"agencies": agencies},
                                  headers=OPERATOR)
        assert r.status_code == 200, r.text
    assert (await set_status(api, one, "fire", FIRE, "declined", reason="semua unit bertugas")).status_code == 200
    store = api.app.state.services.store
    incidents = [await store.get_incident(int(ref.removeprefix("inc-"))) for ref in (both, one)]
    assert [stats.agencies_of(i) for i in incidents if i] == [["police", "ambulance"], ["police"]]
    groups = {g.key: g.incidents for g in stats.figures_by_each([i for i in incidents if i], stats.agencies_of)}
    assert groups == {"ambulance": 1, "police": 2}
