"""Schemathesis hooks for tests/test_schemathesis.py, loaded by the CLI (SCHEMATHESIS_HOOKS, set by
tests/support/schemathesis_run.py). They run inside the schemathesis process, not under pytest.

Only the role's credential and rules that the services document but OpenAPI cannot express (one
field or parameter depending on another) belong here; never anything that hides a failure.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from datetime import UTC, date, datetime, timedelta
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

from siaga.commandcenter.config import DEFAULT_AGENCIES

# The headers of the role under test, as a JSON object (absent for the anonymous role).
CREDENTIAL_ENV = "SIAGA_SCHEMATHESIS_HEADERS"
IDEMPOTENCY_KEY = "idempotency-key"


class RoleCredential:
    """The role's credential as schemathesis auth, not as a fixed header (`--header`): schemathesis
    then knows which requests are authenticated, and leaves the credential out of the cases that
    test a missing or wrong one (a fixed header would be added to those too)."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = json.loads(os.environ[CREDENTIAL_ENV])

    def get(self, case: Any, context: Any) -> dict[str, str]:
        return self.headers

    def set(self, case: Any, data: dict[str, str], context: Any) -> None:
        case.headers = {**(case.headers or {}), **data}


if os.environ.get(CREDENTIAL_ENV):
    schemathesis.auth()(RoleCredential)


def _header_safe(value: str) -> bool:
    """A value an HTTP header carries unchanged: visible ASCII and inner spaces."""
    return value == value.strip() and all(" " <= c <= "~" for c in value)


# Body of each event_id used so far in this run: the intake refuses a key used again with another
# body (422, as the IETF Idempotency-Key draft says), so valid requests get keys of their own.
_bodies_by_event_id: dict[str, str] = {}


def _fresh_event_id(body: dict[str, Any], is_alarm: bool) -> None:
    event_id = body.get("event_id")
    if not isinstance(event_id, str):
        return
    n = 0
    while True:
        seen = _bodies_by_event_id.setdefault(event_id, json.dumps(body, sort_keys=True, default=str))
        if seen == json.dumps(body, sort_keys=True, default=str):
            return
        n += 1
        suffix = f"-{n}"
        if is_alarm:  # the key is made of gateway, device and sequence number: change the gateway's id
            gateway_id = body["gateway_id"]
            body["gateway_id"] = gateway_id[: 64 - len(suffix)] + suffix
            _event_id_of_alarm(body)
        else:
            body["event_id"] = body["event_id"][: 160 - len(suffix)] + suffix
        event_id = body["event_id"]


def _event_id_of_alarm(alarm: Any) -> bool:
    """An alarm's event_id is "`<gateway_id>:<device_id>:<seq>`" (AlarmIn.event_id)."""
    if not isinstance(alarm, dict):
        return False
    gateway_id, device_id, seq = alarm.get("gateway_id"), alarm.get("device_id"), alarm.get("seq")
    if type(seq) is float and seq.is_integer():
        seq = int(seq)  # 266.0 is the integer 266 (JSON Schema; the intake takes it so)
    if isinstance(gateway_id, str) and isinstance(device_id, str) and type(seq) is int and "event_id" in alarm:
        alarm["event_id"] = f"{gateway_id}:{device_id}:{seq}"
        return True
    return False


def _follow_intake_rules(case: Any) -> None:
    """Rules of the command center's intake that its OpenAPI document states in words only: an
    alarm's event_id is `<gateway_id>:<device_id>:<seq>`; the Idempotency-Key header of POST
    /api/v1/alarms and /api/v1/faults equals the body's event_id; a key used again must come with
    the same body. Generated requests are made to follow them, so that valid alarms and faults
    reach the store instead of stopping at these rules.

    Requests generated invalid on purpose keep their fault: a body is only changed when it was
    generated valid, the header not when a coverage case makes the header itself invalid (missing,
    empty, too long), nor when the event_id is something no header can carry. Schemathesis
    revalidates a case a hook changed, so a request is counted as valid or invalid by what is sent.
    """
    body = case.body
    path = case.operation.path
    if not isinstance(body, dict) or path not in ("/api/v1/alarms", "/api/v1/alarms/batch", "/api/v1/faults"):
        return
    meta = case.meta
    if meta is None or not meta.is_negative_at(ParameterLocation.BODY):
        alarms = body.get("alarms")
        if path == "/api/v1/alarms/batch" and isinstance(alarms, list):
            for alarm in alarms:
                _event_id_of_alarm(alarm)
        elif path != "/api/v1/alarms/batch":
            is_alarm = path == "/api/v1/alarms" and _event_id_of_alarm(body)
            if is_alarm or path == "/api/v1/faults":
                _fresh_event_id(body, is_alarm)
        case.body = body  # marks the body changed, for revalidation
    headers = case.headers
    name = next((k for k in headers or {} if k.lower() == IDEMPOTENCY_KEY), None)
    event_id = body.get("event_id")
    if name is None or not isinstance(event_id, str) or not _header_safe(event_id):
        return
    target = getattr(meta.phase.data, "parameter", None) if meta is not None else None
    if isinstance(target, str) and target.lower() == IDEMPOTENCY_KEY and meta.generation.mode.is_negative:
        return
    case.headers = {**headers, name: event_id}


# GET /api/v1/stats and /api/v1/export/incidents.csv: "'from' after 'to', or more than 366 days"
# is answered 422 (documented); `to` defaults to today, `from` to six days before `to`.
PERIOD_PATHS = ("/api/v1/stats", "/api/v1/export/incidents.csv")
MAX_DAYS = 366
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2999, 12, 31)  # the days the command center takes


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
    except ValueError:
        return None


def _follow_period_rules(case: Any) -> None:
    """A valid query gets a period the command center accepts: `to` is set (or moved) when the
    generated one, or today's default, would make the period backwards or longer than a year.
    Queries generated invalid on purpose, and days outside the years 1970-2999, are left as they
    are: the command center must refuse those itself."""
    query = case.query
    if case.operation.path not in PERIOD_PATHS or not query or "from" not in query:
        return
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.QUERY):
        return
    first, last = _day(query.get("from")), _day(query.get("to"))
    if first is None or ("to" in query and last is None):
        return
    if not all(FIRST_DAY <= day <= LAST_DAY for day in (first, last) if day is not None):
        return
    if last is None:
        # today's default, with a day's margin for the server's time zone
        today = datetime.now(UTC).date()
        if today - timedelta(days=MAX_DAYS - 2) <= first <= today - timedelta(days=1):
            return
    elif first <= last and (last - first).days < MAX_DAYS:
        return
    case.query = {**query, "to": min(first + timedelta(days=6), LAST_DAY).isoformat()}


# GET /api/v1/shifts and /api/v1/stats/operators: a window [since, until) that is backwards or longer
# than 366 days is answered 422 (documented); `until` defaults to now, `since` to 7 days before it.
WINDOW_PATHS = ("/api/v1/shifts", "/api/v1/stats/operators")


def _time(value: Any) -> datetime | None:
    try:
        found = datetime.fromisoformat(value.upper()) if isinstance(value, str) else None
    except ValueError:
        return None
    return found if found is not None and found.tzinfo is not None else None


def _follow_window_rules(case: Any) -> None:
    """A valid query gets a window the command center accepts: `since` is moved to a day before
    `until` (given, or now) when the generated one is not before it or is more than a year earlier."""
    query = case.query
    if case.operation.path not in WINDOW_PATHS or not query or "since" not in query:
        return
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.QUERY):
        return
    since, until = _time(query.get("since")), _time(query.get("until"))
    if since is None or ("until" in query and until is None):
        return
    end = until or datetime.now(UTC)
    if since < end - timedelta(seconds=1) and end - since < timedelta(days=MAX_DAYS - 1):
        return
    start = end - timedelta(days=1)
    if start.year < FIRST_DAY.year:
        return  # an `until` at the edge of the years taken: left for the service to refuse or take
    case.query = {**query, "since": start.isoformat().replace("+00:00", "Z")}


# POST /api/v1/incidents/{incident_id}/dispatch: an agency id must be one configured (422 otherwise,
# documented); the list depends on the configuration, which the document does not carry. The test
# command center runs with the default agencies.
DISPATCH_PATH = "/api/v1/incidents/{incident_id}/dispatch"
CONFIGURED_AGENCIES = tuple(a.id for a in DEFAULT_AGENCIES)


def _follow_dispatch_rules(case: Any) -> None:
    """A valid body names configured agencies: each other id is replaced by a configured one (the
    same id always by the same one, and the list kept free of repeats)."""
    body = case.body
    if case.operation.path != DISPATCH_PATH or not isinstance(body, dict):
        return
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.BODY):
        return

    def configured(agency: Any) -> Any:
        if not isinstance(agency, str) or agency in CONFIGURED_AGENCIES:
            return agency
        return CONFIGURED_AGENCIES[sum(agency.encode()) % len(CONFIGURED_AGENCIES)]

    if "agency" in body:
        body["agency"] = configured(body["agency"])
    if isinstance(body.get("agencies"), list):
        body["agencies"] = list(dict.fromkeys(configured(a) for a in body["agencies"]))
    case.body = body  # marks the body changed, for revalidation


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Coverage, fuzzing and stateful cases."""
    _follow_dispatch_rules(case)
    _follow_intake_rules(case)
    _follow_period_rules(case)
    _follow_window_rules(case)
    return case


def _client_can_send_host(value: Any) -> bool:
    """Whether the requests library can send a request with this Host header at all. It rebuilds
    the URL from the Host header for its cookie jar (requests.cookies.MockRequest), and a value
    such as "b9u[" makes urllib raise "Invalid IPv6 URL" in the client, before anything is sent."""
    try:
        urllib.parse.urlsplit(f"http://{value}/")
    except ValueError:
        return False
    return True


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    """Drop a generated Host header the client itself cannot send (see _client_can_send_host):
    such a request would never reach the service, so its case tests only the client library."""
    headers = case.headers or {}
    for name in [n for n in headers if n.lower() == "host" and not _client_can_send_host(headers[n])]:
        del headers[name]


@schemathesis.hook
def before_add_examples(context: Any, examples: list[Any]) -> None:
    """The cases built from the examples in the OpenAPI document (no map_case for those)."""
    for case in examples:
        _follow_dispatch_rules(case)
        _follow_intake_rules(case)
        _follow_period_rules(case)
        _follow_window_rules(case)
