"""From the configuration's destinations to their adapters (docs/integration.md).

Each type of destination has its settings dataclass next to its adapter; `settings_of` turns a
checked [[destinations]] entry into them (secrets read from their files), `make_adapters` builds
one adapter per destination. The adapters' modules are imported only when a destination uses
them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .adapters import Accepted, Adapter, ReferenceAdapter
from .codec import Alarm, Location
from .config import Destination, GatewayConfig, ReferenceSettings
from .events import alarm_event
from .store import OutboundEvent

if TYPE_CHECKING:
    from .config import DestinationTable

# (file names, key) -> the secrets in them
ReadSecrets = Callable[[list[str], str], tuple[str, ...]]


def make_adapter(dest: Destination, gateway_id: str) -> Adapter:
    s = dest.settings
    if dest.type == "siaga":
        assert isinstance(s, ReferenceSettings)
        return ReferenceAdapter(s.url, s.token, timeout_s=s.timeout_s)
    if dest.type == "cap":
        from .cap import CapAdapter
        return CapAdapter(s, gateway_id)
    if dest.type == "webhook":
        from .webhooks import WebhookAdapter
        return WebhookAdapter(s, gateway_id)
    if dest.type == "dc09":
        from .dc09 import Dc09Adapter
        return Dc09Adapter(s, gateway_id)
    raise ValueError(f"unknown destination type {dest.type!r}")


def make_adapters(cfg: GatewayConfig) -> dict[str, Adapter]:
    return {d.name: make_adapter(d, cfg.gateway_id) for d in cfg.destinations}


def settings_of(t: DestinationTable, token: str | None, read_secrets: ReadSecrets) -> Any:
    """The settings of a cap, webhook or dc09 destination; ValueError names what is wrong. Keys
    not given keep the settings class's default."""
    given = {k: v for k, v in t.model_dump().items() if v is not None and k in t.model_fields_set}
    if t.type == "cap":
        from .cap import CapSettings
        assert t.url is not None
        return CapSettings(url=t.url, token=token, timeout_s=t.timeout_s, **_pick(given, (
            "sender", "sender_name", "geocode_name", "restriction", "contact", "radius_km")))
    if t.type == "webhook":
        from .webhooks import WebhookSettings, parse_secret
        assert t.url is not None
        assert t.secret_files is not None
        outgoing = tuple(parse_secret(x) for x in read_secrets(t.secret_files, "secret_files"))
        inbound = tuple(parse_secret(x) for x in read_secrets(t.inbound_secret_files or [], "inbound_secret_files"))
        return WebhookSettings(url=t.url, secrets=outgoing, inbound_secrets=inbound, timeout_s=t.timeout_s,
                               **_pick(given, ("tolerance_s",)))
    if t.type == "dc09":
        from .dc09 import Dc09Settings, key_from_hex
        assert t.host is not None
        assert t.port is not None
        key = key_from_hex(read_secrets([t.key_file], "key_file")[0]) if t.key_file is not None else None
        return Dc09Settings(host=t.host, port=t.port, key=key, timeout_s=t.timeout_s, **_pick(given, (
            "format", "receiver", "line_prefix", "accounts", "account_default", "account_length", "gateway_account",
            "zones", "partition", "location", "link_test_s")))
    raise ValueError(f"unknown destination type {t.type!r}")


def _pick(given: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: given[k] for k in keys if k in given}


TEST_DEVICE = "siaga-test"


def probe_event(gateway_id: str, now_ms: int, device_id: str = TEST_DEVICE) -> OutboundEvent:
    """A test-mode alarm as the gateway would forward it: `test` true, so every destination shows
    it as a test (CAP status Test, DC-09 a test report, the reference console a test incident),
    with a new event id each time (sequence number from the clock) so none takes it for a resend."""
    seq = (now_ms // 1000) % 2**31
    alarm = Alarm(device_id=device_id, seq=seq, kind="general", test=True,
                  location=Location(0, 0, "test of the connection", ""), raised_ts=now_ms // 1000,
                  uptime_ms=0, body=b"")
    event_id, body = alarm_event(gateway_id, alarm, now_ms, 0, 1, [device_id], None)
    return OutboundEvent(0, "alarm", event_id, device_id, body, 0, None, now_ms)


async def probe_destination(cfg: GatewayConfig, name: str, *, device_id: str = TEST_DEVICE,
                           now_ms: int | None = None) -> tuple[bool, str]:
    """Send one test alarm to destination `name` as the running gateway would, and say what it
    answered: (confirmed, a line for the technician)."""
    dest = cfg.destination(name)
    if dest is None:
        known = ", ".join(d.name for d in cfg.destinations) or "none"
        return False, f"no destination {name!r} in the configuration (configured: {known})"
    event = probe_event(cfg.gateway_id, int(time.time() * 1000) if now_ms is None else now_ms, device_id)
    adapter = make_adapter(dest, cfg.gateway_id)
    started = time.perf_counter()
    try:
        [outcome] = await adapter.deliver([event])
    finally:
        await adapter.aclose()
    took = (time.perf_counter() - started) * 1000
    if isinstance(outcome, Accepted):
        ref = f", its reference {outcome.incident_id}" if outcome.incident_id else ""
        return True, f"{name} ({dest.type}) confirmed test alarm {event.event_id} in {took:.0f} ms{ref}"
    verdict = "will be retried by the gateway" if outcome.retry else "refused for good"
    return False, f"{name} ({dest.type}) did not confirm test alarm {event.event_id} ({verdict}): {outcome.error}"
