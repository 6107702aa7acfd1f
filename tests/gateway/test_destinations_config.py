"""[[destinations]] in gateway.toml: what each type reads, what a mistake says, and that no value
in any key does anything but load or name the problem (a ConfigError, never a crash)."""

from __future__ import annotations

import copy
import secrets
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siaga.gateway import config as gwconfig
from siaga.gateway.cap import CapSettings
from siaga.gateway.config import PRIMARY_NAME, GatewayConfig, ReferenceSettings
from siaga.gateway.dc09 import Dc09Settings
from siaga.gateway.destinations import make_adapters
from siaga.gateway.webhooks import WebhookSettings, format_secret
from siaga.settings import ConfigError

OUT, OUT_OLD, IN = secrets.token_bytes(32), secrets.token_bytes(32), secrets.token_bytes(32)
AES = bytes(range(16))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("destinations")
    files = {"mqtt.password": "m" * 20, "admin.token": "a" * 24, "cc.token": "c" * 24, "intake.token": "i" * 24,
             "cap.token": "p" * 24, "out.whsec": format_secret(OUT), "old.whsec": format_secret(OUT_OLD),
             "in.whsec": format_secret(IN), "arc.aes": AES.hex(), "bad.whsec": "not-a-secret", "bad.aes": "abc"}
    for name, text in files.items():
        (base / name).write_text(text + "\n")
    return base


def document(destinations: list[dict[str, Any]], *, commandcenter: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "gateway": {"id": "gw-1", "db": "gw.sqlite3"},
        "mqtt": {"password_file": "mqtt.password"},
        "api": {"admin_token_file": "admin.token", "cc_token_file": "cc.token"},
        "destinations": destinations,
    }
    if commandcenter:
        doc["commandcenter"] = {"url": "http://127.0.0.1:8300", "token_file": "intake.token"}
    return doc


WEBHOOK = {"name": "city", "type": "webhook", "url": "https://cad.kota.example/hook",
           "secret_files": ["out.whsec", "old.whsec"], "inbound_secret_files": ["in.whsec"]}
CAP = {"name": "bpbd", "type": "cap", "url": "https://cap.kota.example/in", "token_file": "cap.token",
       "sender": "siaga@kota.example.go.id"}
DC09 = {"name": "arc", "type": "dc09", "host": "arc.example", "port": 12128, "format": "SIA-DCS",
        "key_file": "arc.aes", "accounts": {"btn-1": "1a2b"}, "zones": {"btn-1": 7}, "link_test_s": 30.0}


def build(doc: dict[str, Any], folder: Path) -> GatewayConfig:
    return gwconfig._build(doc, folder)


def test_every_type_is_read_with_its_secrets_and_its_default_events(folder: Path) -> None:
    cfg = build(document([WEBHOOK, CAP, DC09]), folder)
    by_name = {d.name: d for d in cfg.destinations}
    assert list(by_name) == [PRIMARY_NAME, "city", "bpbd", "arc"]
    assert cfg.primary_destination == PRIMARY_NAME
    assert isinstance(by_name[PRIMARY_NAME].settings, ReferenceSettings)
    assert by_name[PRIMARY_NAME].events == ("alarm", "fault")
    hook = by_name["city"].settings
    assert isinstance(hook, WebhookSettings)
    assert (hook.secrets, hook.inbound_secrets) == ((OUT, OUT_OLD), (IN,))
    assert by_name["city"].events == ("alarm", "fault", "state")
    cap = by_name["bpbd"].settings
    assert isinstance(cap, CapSettings)
    assert (cap.token, cap.sender, by_name["bpbd"].events) == ("p" * 24, "siaga@kota.example.go.id",
                                                               ("alarm", "state"))
    arc = by_name["arc"].settings
    assert isinstance(arc, Dc09Settings)
    assert (arc.key, arc.format, dict(arc.accounts), dict(arc.zones), arc.link_test_s) == (
        AES, "SIA-DCS", {"btn-1": "1A2B"}, {"btn-1": 7}, 30.0)
    assert set(make_adapters(cfg)) == set(by_name)


def test_the_reference_console_is_optional_and_a_destination_can_be_primary(folder: Path) -> None:
    cfg = build(document([CAP, {**WEBHOOK, "primary": True}], commandcenter=False), folder)
    assert [d.name for d in cfg.destinations] == ["bpbd", "city"]
    assert cfg.primary_destination == "city"
    # Without [commandcenter] and without its token nobody can report states at /api/v1/cc/state.
    doc = document([WEBHOOK], commandcenter=False)
    del doc["api"]["cc_token_file"]
    cfg = build(doc, folder)
    assert len(cfg.cc_callback_token) >= 32 and cfg.primary_destination == "city"


MISTAKES = [
    ("a key of another type", [{**CAP, "secret_files": ["out.whsec"]}], ["destinations[0]", "secret_files",
                                                                          "not a setting of a cap destination"]),
    ("a missing url", [{k: v for k, v in WEBHOOK.items() if k != "url"}], ["url", "missing"]),
    ("faults to CAP", [{**CAP, "events": ["alarm", "fault"]}], ["events", "not device faults"]),
    ("a kind twice", [{**WEBHOOK, "events": ["alarm", "alarm"]}], ["events", "once"]),
    ("two primaries", [{**WEBHOOK, "primary": True}, {**CAP, "primary": True}], ["more than one", "primary"]),
    ("one name twice", [WEBHOOK, {**CAP, "name": "city"}], ["'city'", "twice"]),
    ("the reference console's name", [{**CAP, "name": PRIMARY_NAME}], ["[commandcenter]"]),
    ("a secret written inline", [{**WEBHOOK, "secret": "whsec_abc"}], ["never written in the file"]),
    ("not a whsec secret", [{**WEBHOOK, "secret_files": ["bad.whsec"]}], ["destinations[0] (city)", "whsec_"]),
    ("a missing secret file", [{**WEBHOOK, "secret_files": ["gone.whsec"]}], ["secret_files", "no such file"]),
    ("an AES key of the wrong length", [{**DC09, "key_file": "bad.aes"}], ["(arc)", "32, 48 or 64 hex"]),
    ("an account that is not hex", [{**DC09, "accounts": {"btn-1": "zz"}}], ["(arc)", "accounts"]),
    ("a name with a space", [{**CAP, "name": "bpbd kota"}], ["destinations[0]", "name"]),
    ("an unknown type", [{**CAP, "type": "fax"}], ["destinations[0]", "type"]),
    ("a table that is a string", ["cap"], ["destinations[0] must be a table"]),
]


@pytest.mark.parametrize(("mistake", "entries", "expected"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_names_the_entry_and_the_key(folder: Path, mistake: str, entries: list[Any],
                                                expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        build(document(copy.deepcopy(entries)), folder)
    for part in expected:
        assert part in str(caught.value), (part, str(caught.value))


def test_nowhere_to_forward_is_refused(folder: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere to forward"):
        build(document([], commandcenter=False), folder)


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=6)
KEYS = sorted({*WEBHOOK, *CAP, *DC09, "events", "primary", "timeout_s", "tolerance_s", "receiver", "line_prefix",
               "account_default", "account_length", "gateway_account", "partition", "location", "radius_km",
               "geocode_name", "restriction", "contact", "sender_name", "token_env"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from([WEBHOOK, CAP, DC09]), key=st.sampled_from(KEYS), value=toml_values)
def test_any_value_in_any_key_loads_or_is_named(folder: Path, base: dict[str, Any], key: str, value: Any) -> None:
    entry = {**copy.deepcopy(base), key: value}
    if value is None:
        del entry[key]
    try:
        cfg = build(document([entry]), folder)
    except ConfigError as exc:
        message = str(exc)
    else:
        assert len(cfg.destinations) == 2
        make_adapters(cfg)  # and what loaded makes its adapters
        return
    assert message.strip(), "an empty message"
