"""State reports from a city's system: `POST /api/v1/destinations/{name}/state`, signed the
Standard Webhooks way (gateway/webhooks.py) with the destination's `inbound_secrets`.

When the city's own system acknowledges, dispatches or closes an alarm it received as a webhook,
it tells the gateway, which relays the state to the button like a state from the reference command
center (docs/integration-webhooks.md, "State reports"). The body:

    {"type": "alarm.state_changed", "timestamp": "2026-11-24T03:13:00Z",
     "data": {"device_id": "jkt-menteng-0042", "seq": 4711, "state": "acknowledged",
              "incident_id": "CITY-2291", "by": "operator 7", "at": "2026-11-24T03:13:00Z"}}

`state` is acknowledged, dispatched, resolved or false_alarm; `incident_id` and `by` may be null or
left out; fields the gateway does not know are ignored. docs/schemas/webhook-state-report.json is
its JSON Schema (the same as in the OpenAPI document).

In order, before anything is stored:

    404  no webhook destination of that name, or it has no inbound secrets
    429  this address sent too many requests that failed the signature check
    413  the body is over 64 KiB (counted while it arrives)
    401  a signature header is missing, no signature matches, or the timestamp is more than
         tolerance_s (default 300 s) from the gateway's clock; written to the audit log
         (bad_signature, or replay for a correct signature at the wrong time)
    422  signed, but not JSON or not the body above; written to the audit log (malformed)
    404  no such alarm at this gateway
    200  {"state": <the alarm's state now>, "changed": <this report moved it forward>}

The signature is checked on the raw bytes before they are parsed: an unsigned body is never read
as JSON. A report sent again, with the same `webhook-id` or not, is answered 200 with `changed:
false`: an alarm's state only moves forward, so a repeat (the sender's retry, or a replay within
the tolerance) changes nothing, and no list of seen ids is kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from siaga import contract
from siaga.web import KIB, Guard, StrictRoute, client_address, loads_strict

from .codec import RejectReason
from .webhooks import HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookRefused, WebhookSettings, verify

INBOUND_BODY_MAX = 64 * KIB
DEVICE_ID = r"^[a-z0-9][a-z0-9-]{2,31}$"
_DEVICE_ID = re.compile(DEVICE_ID)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The scheme named in a 401's WWW-Authenticate (RFC 9110 §11.6.1 asks for one): the Standard
# Webhooks signature headers. A name of this API, not a registered scheme.
AUTH_SCHEME = "Webhook-Signature"

ReportedState = Literal["acknowledged", "dispatched", "resolved", "false_alarm"]
Text64 = Annotated[str, AfterValidator(contract.text_checker(256)), Field(max_length=64),
                   contract.text_schema(256, 64)]
Time = Annotated[datetime, AfterValidator(contract.time_checker), Field(strict=True), WithJsonSchema(
    {"type": "string", "format": "date-time", "pattern": f"^{contract.YEAR_RE}-"})]


class StateReportData(BaseModel):
    """What happened to which alarm: the button's id and the alarm's `seq` (both are in the alarm
    event's data), the new state, and the city's reference and who acted, if it has them."""

    device_id: str = Field(pattern=DEVICE_ID)
    seq: Annotated[int, BeforeValidator(contract.json_integer)] = Field(strict=True, ge=0, le=contract.SEQ_MAX)
    state: ReportedState
    incident_id: Text64 | None = Field(default=None, description="the city's reference for the incident")
    by: Text64 | None = Field(default=None, description="who acted: an operator's name or a unit")
    at: Time = Field(description="when the state changed: RFC 3339 with a time zone, in the years "
                                 f"{contract.YEAR_MIN}-{contract.YEAR_MAX}")


class StateReportIn(BaseModel):
    """A Standard Webhooks payload of type alarm.state_changed."""

    model_config = ConfigDict(title="StateReport")

    type: Literal["alarm.state_changed"]
    timestamp: Time = Field(description="when the state changed (the sender's event time)")
    data: StateReportData


class StateReportOut(BaseModel):
    state: str = Field(description="the alarm's state at the gateway now (an older report does not move it back)")
    changed: bool = Field(description="false: the alarm already had this state or a later one")


class WebhookErrorOut(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what is wrong: a sentence, or a list of validation errors (loc, msg, type)")
    message: str | None = Field(None, description="the same in the caller's language (Accept-Language, else "
                                "Bahasa Indonesia), for people to read")


# ---- what the router needs of the gateway (gateway/service.py has it) ------------------------------

class _Destination(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def settings(self) -> object: ...


class _Config(Protocol):
    @property
    def destinations(self) -> Sequence[_Destination]: ...


class _Stored(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def changed(self) -> bool: ...


class InboundGateway(Protocol):
    @property
    def cfg(self) -> _Config: ...
    @property
    def clock(self) -> Callable[[], int]: ...  # milliseconds since 1970

    async def audit(self, reason: RejectReason, device_id: str | None, topic: str, detail: str) -> None: ...

    async def command_center_state(self, device_id: str, seq: int, state: str, incident_id: str | None,
                                   by: str | None, at_ms: int, *, source: str) -> _Stored | None: ...


def report_settings(gw: InboundGateway, name: str) -> WebhookSettings | None:
    """The settings of webhook destination `name` if it takes state reports (has inbound secrets)."""
    for dest in gw.cfg.destinations:
        if dest.name == name and dest.type == "webhook" and isinstance(dest.settings, WebhookSettings):
            return dest.settings if dest.settings.inbound_secrets else None
    return None


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON Schema with its `$defs` put in place: the OpenAPI document gets the body's
    schema whole (the route reads the raw body, so FastAPI does not list the models itself)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            # FastAPI's OpenAPI document leaves out every null, "default": null too: so does this.
            return {k: walk(v) for k, v in node.items() if not (k == "default" and v is None)}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


def state_report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a state report, as docs/schemas/webhook-state-report.json
    has it and the OpenAPI document shows it."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **_inline(StateReportIn.model_json_schema())}


def _refusal(why: str) -> dict[str, Any]:
    return {"model": WebhookErrorOut, "description": why}


_HEADERS = [
    # Visible ASCII, as the verifier takes them: a header carries nothing else unchanged (and a generator
    # of requests, such as schemathesis, need not guess).
    {"name": HEADER_ID, "in": "header", "required": True, "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
     "description": "the report's unique id (the same on the sender's retries)"},
    {"name": HEADER_TIMESTAMP, "in": "header", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"},
     "description": "Unix seconds of this attempt; refused when further than the tolerance from the gateway's clock"},
    {"name": HEADER_SIGNATURE, "in": "header", "required": True,
     "schema": {"type": "string", "pattern": "^[!-~]+( [!-~]+)*$"},
     "description": "space-separated `v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>` signatures"},
]

_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: {**_refusal("a signature header is missing, no signature matches one of the destination's "
                          "inbound secrets, or the timestamp is outside the tolerance (default 5 minutes)"),
          "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": AUTH_SCHEME}}},
    404: _refusal("no webhook destination of this name takes state reports, or it has no such alarm"),
    413: _refusal(f"the body is larger than {INBOUND_BODY_MAX // KIB} KiB"),
    422: _refusal("signed, but not JSON or not a state report (the list says what is wrong)"),
    429: {**_refusal("too many requests with a wrong signature from this address"),
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
}


def inbound_router(gw: InboundGateway) -> APIRouter:
    """The route by which city systems report states; include it in the gateway's app."""
    router = APIRouter(route_class=StrictRoute, max_body_size=INBOUND_BODY_MAX)
    # The destinations that take reports, as the OpenAPI document's examples of `name`.
    reporting = [d.name for d in gw.cfg.destinations if report_settings(gw, d.name) is not None] or ["cad-kota"]

    @router.post(
        "/api/v1/destinations/{name}/state",
        summary="A city's system reports an alarm's state (a signed webhook)",
        description="Signed like the gateway's own webhooks (Standard Webhooks: `webhook-id`, "
                    "`webhook-timestamp`, `webhook-signature`), with the destination's inbound secrets; no bearer "
                    "token. The signature is checked before the body is parsed. A repeated report is answered "
                    "200 with `changed: false`.",
        responses=_ANSWERS,
        openapi_extra={"parameters": _HEADERS, "requestBody": {
            "required": True, "content": {"application/json": {"schema": _inline(StateReportIn.model_json_schema())}}}},
    )
    async def report_state(request: Request, name: str = Path(  # a default: evaluated here, with `reporting`
            examples=reporting, description="the destination's name in gateway.toml")) -> StateReportOut:
        settings = report_settings(gw, name)
        if settings is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook destination {name} takes state reports")
        topic = f"webhook:{name}"
        guard: Guard | None = getattr(request.app.state, "guard", None)
        address = client_address(request)
        if guard is not None:
            guard.check_address(address)
        body = await request.body()
        try:
            verify(settings.inbound_secrets, request.headers, body, gw.clock() / 1000, settings.tolerance_s)
        except WebhookRefused as refused:
            if guard is not None:
                guard.failed("webhook_signature_failed", topic, address)
            reason = RejectReason.REPLAY if refused.stale else RejectReason.BAD_SIGNATURE
            await gw.audit(reason, None, topic, refused.reason)
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"webhook refused: {refused.reason}",
                                headers={"WWW-Authenticate": AUTH_SCHEME}) from None
        report = await _parse(gw, topic, body)
        data = report.data
        at_ms = (data.at - _EPOCH) // timedelta(milliseconds=1)
        stored = await gw.command_center_state(data.device_id, data.seq, data.state, data.incident_id, data.by,
                                               at_ms, source=name)
        if stored is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alarm {data.device_id}:{data.seq}")
        return StateReportOut(state=stored.state, changed=stored.changed)

    return router


async def _parse(gw: InboundGateway, topic: str, body: bytes) -> StateReportIn:
    """The signed body as a report, or 422 (and an audit entry naming the device, if it said one)."""
    try:
        value = loads_strict(body)
    except ValueError as exc:  # json.JSONDecodeError
        await gw.audit(RejectReason.MALFORMED, None, topic, f"not JSON: {exc}")
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error",
                                       "ctx": {"error": str(exc)[:200]}}]) from None
    try:
        # Validated from the text (now known to be strict JSON): JSON's rules apply, so a time is a
        # string, never a number of seconds.
        return StateReportIn.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        data = value.get("data") if isinstance(value, dict) else None
        device = data.get("device_id") if isinstance(data, dict) else None
        device_id = device if isinstance(device, str) and _DEVICE_ID.fullmatch(device) else None
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        await gw.audit(RejectReason.MALFORMED, device_id, topic, f"not a state report: {where}: {first['msg']}")
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
