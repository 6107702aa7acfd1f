"""Values any client can send never make the command center answer 5xx (issue 13): numbers beyond
SQLite's 64-bit integers in paths and queries, days and times near year 1 or 9999 (which overflow
when made UTC or when a day or an offset is added), and bad entries in a batch, which are rejected
alone while the batch's valid entries are stored. The accepted ranges are those of
docs/commandcenter.md, "Accepted values".

Everything runs the app in-process (httpx.ASGITransport with the real lifespan and a real SQLite
file, as in tests/test_commandcenter.py). The generated sweep shares one app per module, driven from
Hypothesis's synchronous examples through one asyncio.Runner, and posts arbitrary JSON into every
field of the intake's and the operators' bodies.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from siaga import contract
from siaga.commandcenter import intake
from siaga.commandcenter.app import create_app
from siaga.commandcenter.config import ConsoleSettings
from siaga.commandcenter.models import DAY_PATTERN, TIME_PATTERN, AlarmIn, FaultIn
from tests.test_commandcenter import (
    INTAKE_TOKEN,
    OPERATOR,
    Api,
    alarm,
    db_rows,
    intake_headers,
    make_config,
    running_api,
)
from tests.test_commandcenter_console import ROLES, SUPERVISOR

INTAKE = {"Authorization": f"Bearer {INTAKE_TOKEN}"}
_seqs = itertools.count(1)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "cc.sqlite3", **ROLES) as running:
        yield running


def fault(n: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": f"gw-1:jkt-menteng-0042:fault:{n}",
        "gateway_id": "gw-1",
        "device_id": "jkt-menteng-0042",
        "fault": "offline",
        "active": True,
        "at": "2026-11-24T03:20:00Z",
        "detail": {"reason": "3 heartbeats missed", "battery_mv": 3650},
    }
    body.update(changes)
    return body


def as_json(body: Any) -> bytes:
    """JSON with \\u escapes, the only way a lone surrogate can travel (httpx's json= refuses it)."""
    return json.dumps(body).encode()


def running_openapi() -> dict[str, Any]:
    """The OpenAPI document (building it opens no database)."""
    return create_app(make_config(Path("cc.sqlite3"), **ROLES)).openapi()


def is_error_shape(r: httpx.Response) -> bool:
    return isinstance(r.json(), dict) and "detail" in r.json()


# ---- 1. numbers beyond 64 bits ---------------------------------------------------------------------

# Each names no incident: beyond 2**63 - 1 (the largest SQLite integer), past int()'s 4300 digits,
# and digits of another script (which the \d of the id's pattern would take).
FAR_IDS = [f"inc-{2**63}", "inc-99999999999999999999", f"inc-{2**64}", "inc-" + "9" * 5000,
           "inc-" + "\u0660" * 5 + "\u0661"]
INCIDENT_REQUESTS = [("GET", "", None), ("POST", "/acknowledge", None), ("POST", "/resolve", {"note": "x"}),
                     ("POST", "/false-alarm", None), ("POST", "/dispatch", {"agency": "fire"}),
                     ("POST", "/notes", {"note": "x"}), ("POST", "/refer", {"channel": "LAPOR!"})]


@pytest.mark.parametrize(("method", "suffix", "body"), INCIDENT_REQUESTS)
async def test_incident_numbers_beyond_64_bits_are_not_found(api: Api, method: str, suffix: str,
                                                             body: dict[str, Any] | None) -> None:
    await api.new_incident()
    for ref in (*FAR_IDS, f"inc-{2**63 - 1}"):
        r = await api.client.request(method, f"/api/v1/incidents/{ref}{suffix}", json=body, headers=OPERATOR)
        assert r.status_code == 404, (ref[:40], r.text[:300])
        assert r.json()["detail"].startswith("no incident inc-")


async def test_audit_before_id_beyond_64_bits_is_422(api: Api) -> None:
    for before_id in (2**63, 2**64, 10**30):
        r = await api.client.get(f"/api/v1/audit?before_id={before_id}", headers=SUPERVISOR)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["query", "before_id"]
    r = await api.client.get(f"/api/v1/audit?before_id={2**63 - 1}", headers=SUPERVISOR)
    assert r.status_code == 200, r.text


async def test_every_integer_query_parameter_is_bounded(api: Api) -> None:
    for path in ("/api/v1/incidents?limit={n}", "/api/v1/devices/faults?limit={n}", "/api/v1/audit?limit={n}",
                 "/api/v1/audit?before_id={n}"):
        for n in (2**63, -(2**63) - 1, 10**30, -1, 0):
            r = await api.client.get(path.format(n=n), headers=SUPERVISOR)
            assert r.status_code == 422, (path, n, r.text)
            assert is_error_shape(r)


# ---- 2. and 4. days and times near year 1 and 9999, times without a zone -----------------------------

# Near year 1 and 9999, just outside 1970–2999, and not YYYY-MM-DD (pydantic alone takes "0" as 1970-01-01).
FAR_DAYS = [("0001-01-01", "0001-01-01"), ("0001-01-01", None), (None, "0001-01-02"), ("9999-12-31", "9999-12-31"),
            ("9999-12-25", None), (None, "9999-12-31"), ("1969-12-31", "1970-01-01"), ("2999-12-31", "3000-01-01"),
            (None, "0"), ("1700000000", None), ("2026-1-1", None), (" 2026-01-01", None)]


def _period(first: str | None, last: str | None) -> str:
    return "&".join(f"{k}={v}" for k, v in (("from", first), ("to", last)) if v is not None)


@pytest.mark.parametrize("zone", ["Asia/Jakarta", "Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"])
async def test_stats_and_export_days_near_year_1_or_9999_are_422(tmp_path: Path, zone: str) -> None:
    async with running_api(tmp_path / "cc.sqlite3", console=ConsoleSettings(timezone=zone), **ROLES) as api:
        for path in ("/api/v1/stats", "/api/v1/export/incidents.csv"):
            for first, last in FAR_DAYS:
                r = await api.client.get(f"{path}?{_period(first, last)}", headers=SUPERVISOR)
                assert r.status_code == 422, (path, first, last, r.text)
                assert "a day is YYYY-MM-DD, in the years 1970–2999" in r.json()["detail"][0]["msg"]
            # The first and last accepted days, at +14 h and -11 h; `to` alone starts 6 days earlier.
            for query in ("from=1970-01-01&to=1970-01-01", "from=2999-12-31&to=2999-12-31", "to=1970-01-01",
                          "from=2999-01-01&to=2999-12-31"):
                r = await api.client.get(f"{path}?{query}", headers=SUPERVISOR)
                assert r.status_code == 200, (path, query, r.text)


# Each is refused for every time field of the intake: years outside 1970–2999 as written, near the
# ends of Python's datetime (where the offset makes UTC overflow), naive (no time zone), year 1
# included, and what is not RFC 3339 text (pydantic alone takes a Unix time or a space for the T).
BAD_TIMES: list[Any] = [
    "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00-23:59", "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59Z", "9999-12-31T23:59:59+23:59", "1969-12-31T23:59:59.999Z", "1969-12-31T23:00:00-01:00",
    "3000-01-01T00:00:00Z", "3000-01-01T00:59:59+01:00", "0001-01-01T00:00:00", "2026-11-24T03:12:09",
    "9999-12-31T23:59:59", "0001-01-01", "1700000000", 1700000000, 0, -62135596800, "2026-11-24 03:12:09Z",
    "2026-11-24T03:12Z", "2026-11-24T03:12:60Z", "2026-11-24T03:12:09+0700", "2026-02-30T00:00:00Z",
]
GOOD_TIMES = ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00+14:00", "2999-12-31T23:59:59.999Z",
              "2999-12-31T23:59:59-23:59", "2026-11-24T10:12:09+07:00", "2026-11-24t03:12:09.123456789z"]


@pytest.mark.parametrize("field", ["received_at", "raised_at", "fault.at"])
async def test_times_outside_the_accepted_range_are_422(api: Api, field: str) -> None:
    for value in BAD_TIMES:
        r = await _post_with_time(api, field, value)
        assert r.status_code == 422, (field, value, r.text)
        assert r.json()["detail"][0]["loc"][-1] == field.removeprefix("fault.")
    for value in GOOD_TIMES:
        r = await _post_with_time(api, field, value)
        assert r.status_code == 201, (field, value, r.text)
        if field != "fault.at":
            r = await api.client.get(f"/api/v1/incidents/{r.json()['incident_id']}", headers=OPERATOR)
            assert r.status_code == 200, r.text
    r = await api.client.get("/api/v1/devices/faults", headers=OPERATOR)
    assert r.status_code == 200, r.text


async def _post_with_time(api: Api, field: str, value: Any) -> httpx.Response:
    n = next(_seqs)
    if field == "fault.at":
        body = fault(n, at=value)
        return await api.client.post("/api/v1/faults", json=body, headers=intake_headers(body["event_id"]))
    return await api.post_alarm(alarm(seq=n, **{field: value}))


def test_the_time_rule_is_one_function_and_the_openapi_patterns_say_the_same() -> None:
    """siaga/contract.py decides; the models apply it, and their patterns in the OpenAPI document
    accept exactly the same years (a schema-valid value is one the command center takes)."""
    assert contract.time_problem(datetime(1, 1, 1)) == "has no time zone"
    assert contract.time_problem(datetime(2026, 1, 1)) == "has no time zone"
    assert contract.time_problem(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23)))) is not None
    assert contract.time_problem(datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=23)))) is not None
    assert contract.time_problem(datetime(1970, 1, 1, tzinfo=timezone(timedelta(hours=14)))) is None
    assert contract.time_problem(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) is not None
    assert contract.time_problem(datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) is None
    assert contract.time_problem(datetime(3000, 1, 1, tzinfo=UTC)) is not None
    # The extremes convert to UTC and take a day more without overflowing.
    for t in (datetime(contract.YEAR_MIN, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59))),
              datetime(contract.YEAR_MAX, 12, 31, 23, 59, tzinfo=timezone(-timedelta(hours=23, minutes=59)))):
        assert abs(t.astimezone(UTC) + timedelta(days=1) - t) == timedelta(days=1)
    for year in range(10_000):
        allowed = contract.day_problem(date(max(year, 1), 1, 1)) is None
        assert (re.fullmatch(TIME_PATTERN, f"{year:04d}-01-01T00:00:00Z") is not None) == allowed, year
        assert (re.fullmatch(DAY_PATTERN, f"{year:04d}-01-01") is not None) == allowed, year
    openapi = running_openapi()
    alarm_in, fault_in = (openapi["components"]["schemas"][m]["properties"] for m in ("AlarmIn", "FaultIn"))
    for schema in (alarm_in["received_at"], alarm_in["raised_at"]["anyOf"][0], fault_in["at"]):
        assert (schema["format"], schema["pattern"]) == ("date-time", TIME_PATTERN)
    for path in ("/api/v1/stats", "/api/v1/export/incidents.csv"):
        assert [p["schema"]["pattern"] for p in openapi["paths"][path]["get"]["parameters"]] == [DAY_PATTERN] * 2


# ---- 3. a batch rejects a bad entry alone ------------------------------------------------------------

# Every kind of bad entry; each batch below puts valid alarms around them.
BAD_ALARMS: list[Any] = [
    None, 1, "gw-1:jkt-menteng-0042:1", [], {}, {"event_id": 7},
    {"event_id": "\ud800"},  # a lone surrogate: cannot be echoed in the result
    "received_at:0001-01-01T00:00:00+01:00", "raised_at:9999-12-31T23:59:59-01:00", "received_at:0001-01-01T00:00:00",
    "seq:" + str(2**63), "seq:-1", "press_count:" + str(2**64), "battery_mv:" + str(-(2**63) - 1),
    "incident_key:k\udc00", "kind:\u0000", "location:null", "sources:[\"\\ud800\"]", "event_id:gw-1:other:1",
]
BAD_FAULTS: list[Any] = [
    None, 1, [], {}, {"event_id": "\ud800"}, "at:0001-01-01T00:00:00+01:00", "at:9999-12-31T23:59:59-01:00",
    "at:0001-01-01T00:00:00", "event_id:gw-1:f:\ud800", "detail:{\"\\ud800\": 1}", "detail:{\"a\": \"\\udfff\"}",
    "detail:[]", "active:\"yes\"", "fault:\"on_fire\"", "location:{\"lat\": 91}",
    "detail:" + "[" * 300 + "]" * 300, "detail:" + "{\"a\": " * 300 + "1" + "}" * 300,
]


def _bad(kind: str, spec: Any, n: int) -> Any:
    """A bad entry from its spec: a literal, or 'field:value' applied to a valid body (value as JSON
    if it parses, else as a string)."""
    if not isinstance(spec, str) or ":" not in spec or spec.startswith("gw-1"):
        return spec
    field, raw = spec.split(":", 1)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    base = alarm(seq=n) if kind == "alarm" else fault(n)
    base[field] = value
    return base


@pytest.mark.parametrize("kind", ["alarm", "fault"])
async def test_a_batch_rejects_each_bad_entry_alone_and_stores_the_valid_ones(api: Api, kind: str) -> None:
    specs = BAD_ALARMS if kind == "alarm" else BAD_FAULTS
    entries: list[Any] = []
    valid: list[int] = []
    for spec in specs:
        n = next(_seqs)
        valid.append(len(entries))
        entries.append(alarm(seq=n) if kind == "alarm" else fault(n))
        entries.append(_bad(kind, spec, next(_seqs)))
    n = next(_seqs)
    valid.append(len(entries))
    entries.append(alarm(seq=n) if kind == "alarm" else fault(n))

    path, key = ("/api/v1/alarms/batch", "alarms") if kind == "alarm" else ("/api/v1/faults/batch", "faults")
    r = await api.client.post(path, content=as_json({key: entries}),
                              headers={**INTAKE, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(entries)
    for i, result in enumerate(results):
        if i in valid:
            assert (result["status"], result["error"]) == ("created", None), (i, result)
        else:
            assert result["status"] == "rejected", (i, entries[i], result)
            assert result["error"], result
    stored = {row[0] for row in db_rows(api.cfg.db_path, "SELECT event_id FROM alarms" if kind == "alarm"
                                        else "SELECT event_id FROM device_faults")}
    assert stored == {entries[i]["event_id"] for i in valid}
    assert results[specs.index({"event_id": "\ud800"}) * 2 + 1]["event_id"] is None


async def test_an_entry_that_passes_validation_but_cannot_be_stored_is_rejected_alone(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second lock: whatever turning a valid body into the store's record raises (a time that
    cannot be made UTC, as before the models refused those) rejects that entry, not the batch."""
    real = intake.new_alarm

    def overflowing(a: AlarmIn) -> Any:
        if a.seq == 13:
            raise OverflowError("date value out of range")
        return real(a)

    monkeypatch.setattr(intake, "new_alarm", overflowing)
    batch = [alarm(seq=12), alarm(seq=13), alarm(seq=14)]
    r = await api.client.post("/api/v1/alarms/batch", json={"alarms": batch}, headers=INTAKE)
    assert r.status_code == 200, r.text
    assert [(x["event_id"], x["status"]) for x in r.json()["results"]] == [
        ("gw-1:jkt-menteng-0042:12", "created"), ("gw-1:jkt-menteng-0042:13", "rejected"),
        ("gw-1:jkt-menteng-0042:14", "created")]
    assert r.json()["results"][1]["error"] == "alarm: cannot be stored (OverflowError)"
    r = await api.post_alarm(alarm(seq=13))
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "the body cannot be stored (OverflowError)"


def _nested(depth: int) -> dict[str, Any]:
    detail: dict[str, Any] = {"reason": "x"}
    for _ in range(depth - 1):
        detail = {"a": detail}
    return detail


async def test_a_fault_detail_nested_too_deeply_is_422(api: Api) -> None:
    """Stored, a detail nested past pydantic's 255 levels could not be serialised again (the
    idempotency fingerprint, the fault list): 500. The bound is 32 levels, the top object included."""
    for depth, status in ((32, 201), (33, 422), (300, 422)):
        body = fault(next(_seqs), detail=_nested(depth))
        r = await api.client.post("/api/v1/faults", json=body, headers=intake_headers(body["event_id"]))
        assert r.status_code == status, (depth, r.text[:300])
    r = await api.client.get("/api/v1/devices/faults", headers=OPERATOR)
    assert r.status_code == 200, r.text[:300]


async def test_a_lone_surrogate_in_a_fault_detail_is_422(api: Api) -> None:
    """Pydantic refuses lone surrogates in str fields; `detail` is free-form, so FaultIn checks it:
    before, it reached SQLite, which cannot store it (UnicodeEncodeError, 500)."""
    for detail in ({"a": "\ud800"}, {"\udfff": 1}, {"a": [{"b": "x\ud800"}]}):
        with pytest.raises(ValidationError, match="surrogate"):
            FaultIn.model_validate(fault(1, detail=detail))
        body = fault(next(_seqs), detail=detail)
        r = await api.client.post("/api/v1/faults", content=as_json(body),
                                  headers={**intake_headers(body["event_id"]), "Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert is_error_shape(r)
    assert FaultIn.model_validate(fault(1, detail={"a": "\U0001f6a8 \u0000"})).detail == {"a": "\U0001f6a8 \u0000"}


# ---- 5. the sweep: arbitrary JSON in every field -------------------------------------------------------

_floats = st.floats()  # NaN and ±Infinity too: JSON does not allow them, and the body is refused
_ints = st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**53, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**30)]) \
    | st.integers(-(2**70), 2**70)
_odd_text = st.sampled_from(["", "\u0000", "a\u0000b", "\u202e", "x" * 5000, "é" * 201, "1970-01-01T00:00:00Z",
                             "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00",
                             "gw-1:jkt-menteng-0042:1", "inc-000001", "NaN", "1e400"])
# Any text, lone surrogates (which only JSON's \u escape can carry) and control characters included.
_text = _odd_text | st.text(st.characters(exclude_categories=[]), max_size=40) \
    | st.text(st.sampled_from("a\u0000\ud800\udfff漢🚨"), max_size=20)


def _json(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | _ints | floats | _text
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                        max_leaves=8)


_values = _json(_floats)
# non-finite numbers: shared error handler (siaga/web.py). A body with NaN or Infinity is not JSON,
# so the shared parser refuses the whole batch (422), not the one entry.
_finite_values = _json(st.floats(allow_nan=False, allow_infinity=False))
# For the time fields, times from all of Python's range (years 1 to 9999) with offsets up to the
# largest RFC 3339 allows, or none, besides any JSON at all.
_offsets = st.none() | st.sampled_from([timezone(timedelta(hours=h, minutes=m)) for h, m in
                                        ((0, 0), (7, 0), (23, 59), (-23, -59), (-1, 0), (14, 0))])
_times = st.datetimes(timezones=_offsets).map(datetime.isoformat) | st.sampled_from(BAD_TIMES + GOOD_TIMES)
TIME_FIELDS = frozenset({"raised_at", "received_at", "at"})


def _value_for(field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (_times | values) if field in TIME_FIELDS else values


ALARM_FIELDS = ["event_id", "gateway_id", "device_id", "seq", "kind", "test", "location", "location.lat",
                "location.lon", "location.address", "location.area", "raised_at", "received_at", "incident_key",
                "press_count", "sources", "sources.0", "battery_mv", "extra", "*"]
FAULT_FIELDS = ["event_id", "gateway_id", "device_id", "fault", "active", "at", "detail", "detail.battery_mv",
                "detail.reason", "location", "location.lat", "location.address", "extra", "*"]


def _replace(body: dict[str, Any], field: str, value: Any) -> Any:
    """body with `field` (dotted; `*` is the whole body) set to value."""
    if field == "*":
        return value
    body = json.loads(json.dumps(body))
    *parents, last = field.split(".")
    target: Any = body
    for p in parents:
        target = target.setdefault(p, {})
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return body


def _key(body: Any, default: str) -> str:
    """The Idempotency-Key a gateway would send: the body's event_id, when a header can carry it."""
    event_id = body.get("event_id") if isinstance(body, dict) else None
    if isinstance(event_id, str) and event_id.isascii() and event_id.isprintable() and 0 < len(event_id) <= 200:
        return event_id.strip() or default
    return default


class Client:
    """The in-process app for synchronous Hypothesis examples: each request runs on one event loop,
    which keeps the app (its store, its background tasks) between examples."""

    def __init__(self, runner: asyncio.Runner, http: httpx.AsyncClient) -> None:
        self._runner = runner
        self._http = http

    def get(self, url: str, headers: dict[str, str]) -> httpx.Response:
        return self._runner.run(self._http.get(url, headers=headers))

    def post(self, url: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        return self._runner.run(self._http.post(url, content=content, headers=headers))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    app = running_api(tmp_path_factory.mktemp("values") / "cc.sqlite3", **ROLES)
    with asyncio.Runner() as runner:
        api = runner.run(app.__aenter__())
        try:
            yield Client(runner, api.client)
        finally:
            runner.run(app.__aexit__(None, None, None))


def _post(client: Client, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    r = client.post(path, content=as_json(body), headers={**headers, "Content-Type": "application/json"})
    assert r.status_code < 500, (path, body, r.text[:500])
    if r.status_code >= 400:
        assert is_error_shape(r), r.text[:500]
    return r


def _still_answers(client: Client) -> None:
    for path, headers in (("/health", {}), ("/api/v1/incidents?limit=5", OPERATOR),
                          ("/api/v1/devices/faults", OPERATOR)):
        r = client.get(path, headers=headers)
        assert r.status_code == 200, (path, r.text[:500])


_SWEEP = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_SWEEP
@given(kind=st.sampled_from(["alarm", "fault"]), data=st.data())
def test_arbitrary_json_in_any_intake_field_is_never_a_server_error(client: Client, kind: str,
                                                                    data: st.DataObject) -> None:
    n = next(_seqs)
    name = data.draw(st.sampled_from(ALARM_FIELDS if kind == "alarm" else FAULT_FIELDS), label="field")
    value = data.draw(_value_for(name, _values), label="value")
    if kind == "alarm":
        body = _replace(alarm(seq=n, incident_key=f"k-{n}", sources=["jkt-menteng-0042"]), name, value)
        r = _post(client, "/api/v1/alarms", body, {**INTAKE, "Idempotency-Key": _key(body, f"k{n}")})
        event(f"alarm: {r.status_code}")
        if r.status_code == 201:
            got = client.get(f"/api/v1/incidents/{r.json()['incident_id']}", headers=OPERATOR)
            assert got.status_code == 200, got.text[:500]
    else:
        body = _replace(fault(n), name, value)
        r = _post(client, "/api/v1/faults", body, {**INTAKE, "Idempotency-Key": _key(body, f"k{n}")})
        event(f"fault: {r.status_code}")
    _still_answers(client)


@_SWEEP
@given(kind=st.sampled_from(["alarm", "fault"]), data=st.data())
def test_arbitrary_json_in_a_batch_entry_rejects_at_most_that_entry(client: Client, kind: str,
                                                                    data: st.DataObject) -> None:
    first, bad, last = next(_seqs), next(_seqs), next(_seqs)
    name = data.draw(st.sampled_from(ALARM_FIELDS if kind == "alarm" else FAULT_FIELDS), label="field")
    value = data.draw(_value_for(name, _finite_values), label="value")
    if kind == "alarm":
        entries = [alarm(seq=first), _replace(alarm(seq=bad), name, value), alarm(seq=last)]
        r = _post(client, "/api/v1/alarms/batch", {"alarms": entries}, INTAKE)
    else:
        entries = [fault(first), _replace(fault(bad), name, value), fault(last)]
        r = _post(client, "/api/v1/faults/batch", {"faults": entries}, INTAKE)
    assert r.status_code == 200, r.text[:500]
    results = r.json()["results"]
    assert [x["status"] for x in (results[0], results[2])] == ["created", "created"], results
    assert results[1]["status"] in ("created", "duplicate", "rejected")
    event(f"{kind} entry: {results[1]['status']}")
    _still_answers(client)


_ACTIONS = [("acknowledge", "note"), ("resolve", "note"), ("false-alarm", "note"), ("dispatch", "agency"),
            ("dispatch", "note"), ("notes", "note"), ("refer", "channel"), ("refer", "reference"), ("refer", "note")]


@_SWEEP
@given(action=st.sampled_from(_ACTIONS), field=st.sampled_from(["field", "extra", "*"]), value=_values)
def test_arbitrary_json_in_an_operator_action_is_never_a_server_error(client: Client, action: tuple[str, str],
                                                                      field: str, value: Any) -> None:
    n = next(_seqs)
    created = _post(client, "/api/v1/alarms", alarm(seq=n), {**INTAKE, "Idempotency-Key": f"gw-1:jkt-menteng-0042:{n}"})
    ref = created.json()["incident_id"]
    path, name = action
    if path in ("resolve", "dispatch"):
        _post(client, f"/api/v1/incidents/{ref}/acknowledge", None, OPERATOR)
    valid: dict[str, Any] = {"agency": "fire"} if path == "dispatch" else {"note": "on site"}
    if path == "refer":
        valid = {"channel": "LAPOR!", "reference": "LPR-2026-0412", "note": "bukan darurat"}
    body = _replace(valid, name if field == "field" else field, value)
    _post(client, f"/api/v1/incidents/{ref}/{path}", body, OPERATOR)
    got = client.get(f"/api/v1/incidents/{ref}", headers=OPERATOR)
    assert got.status_code == 200, got.text[:500]
    _still_answers(client)


# Text a URL can carry (UTF-8: no lone surrogates), numbers, and days of every year.
_query_values = _odd_text | st.text(st.characters(exclude_categories=["Cs"]), max_size=30) | _ints.map(str) \
    | st.dates().map(lambda d: d.isoformat())
_QUERIES = ["/api/v1/incidents?limit={v}", "/api/v1/incidents?state={v}", "/api/v1/devices/faults?limit={v}",
            "/api/v1/stats?from={v}", "/api/v1/stats?to={v}", "/api/v1/stats?from={v}&to={v}",
            "/api/v1/export/incidents.csv?from={v}", "/api/v1/export/incidents.csv?to={v}",
            "/api/v1/audit?limit={v}", "/api/v1/audit?before_id={v}", "/api/v1/incidents/{v}",
            "/api/v1/incidents/inc-{v}"]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(query=st.sampled_from(_QUERIES), value=_query_values)
def test_arbitrary_query_and_path_values_are_never_a_server_error(client: Client, query: str, value: str) -> None:
    url = query.replace("{v}", quote(value, safe=""))
    r = client.get(url, headers=SUPERVISOR)
    assert r.status_code < 500, (url, r.text[:500])
    if r.status_code >= 400:
        assert is_error_shape(r), r.text[:500]


def test_the_sweep_leaves_the_database_readable(client: Client) -> None:
    """After everything above: what was stored reads back (the lists, the figures, the export)."""
    year = "from=2026-01-01&to=2026-12-31"
    for path in ("/api/v1/incidents?limit=1000", "/api/v1/devices/faults?limit=10000", "/api/v1/audit?limit=1000",
                 f"/api/v1/stats?{year}", f"/api/v1/export/incidents.csv?{year}"):
        r = client.get(path, headers=SUPERVISOR)
        assert r.status_code == 200, (path, r.text[:500])


async def test_an_integer_written_with_a_zero_fraction_is_that_integer(api: Api) -> None:
    # JSON Schema counts 7.0 as an integer, so the OpenAPI document's `integer` accepts it; strings,
    # booleans and fractions stay refused.
    r = await api.post_alarm(alarm(seq=9901) | {"seq": 9901.0, "press_count": 1.0, "battery_mv": 3700.0})
    assert r.status_code == 201, r.text
    for bad in ("9902", True, 9902.5):
        r = await api.post_alarm(alarm(seq=9902) | {"seq": bad})
        assert r.status_code == 422, (bad, r.text)
