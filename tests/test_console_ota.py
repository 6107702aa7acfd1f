"""The firmware of the buttons as the command center sees it: the gateway's report carries a summary of
its rollouts and their buttons (`firmware`, gateway/liveness.py), cut to the bounds the command center
takes and to the report's size; the command center checks, keeps and shows it (GET /api/v1/gateways);
the console's devices view draws it from there, each rollout's buttons under it, every word from its
catalog. The whole path from a real gateway is in tests/test_cli_ota.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import ValidationError

from siaga import i18n
from siaga.commandcenter.plumbing import FirmwareSummary, GatewayReportIn
from siaga.gateway.liveness import (
    FW_DEVICES_MAX,
    FW_ROLLOUTS_MAX,
    FW_VERSIONS_MAX,
    REPORT_BYTES_MAX,
    bounded_firmware,
    fit_report,
)
from tests.support.ccproc import CommandCenterProcess

STATIC = Path(__file__).resolve().parents[1] / "commandcenter" / "static"

ROLLOUT: dict[str, Any] = {
    "id": 3, "version": "0.3.0", "percent": 40, "state": "halted", "max_failed_percent": 20,
    "halted_reason": "failures", "created_ms": 1_795_922_400_000,
    "counts": {"offered": 0, "downloading": 0, "installed": 0, "updated": 0, "failed": 2, "withdrawn": 3},
    "targeted": 5, "eligible": 12,
}
# Its buttons, as the gateway lists them: the failed first (the latest change first), then the rest.
DEVICES: list[dict[str, Any]] = [
    {"device_id": "btn-0007", "rollout": 3, "state": "failed", "detail": "selftest", "firmware": "0.2.0",
     "board": "esp32", "updated_ms": 1_795_924_800_000},
    {"device_id": "btn-0003", "rollout": 3, "state": "failed", "detail": "cosmic_ray", "firmware": "0.2.0",
     "board": "picow", "updated_ms": 1_795_924_700_000},
    {"device_id": "btn-0001", "rollout": 3, "state": "withdrawn", "detail": "halted", "firmware": None,
     "board": "esp32", "updated_ms": 1_795_924_800_000},
]
SUMMARY: dict[str, Any] = {"versions": {"0.2.0": 10, "0.3.0": 2}, "rollouts": [ROLLOUT], "devices": DEVICES,
                           "devices_total": 5}


def report(firmware: Any = None, **more: Any) -> dict[str, Any]:
    body = {"gateway_id": "gw-1", "instance": "gw-1", "version": "1.0", "uptime_s": 5.0,
            "outbox": {"total": 0, "by_destination": {}}, "broker_connected": True,
            "buttons": {"online": 12, "registered": 12}, "at": datetime.now(UTC).isoformat(), **more}
    if firmware is not None:
        body["firmware"] = firmware
    return body


# ---- the gateway side: the summary cut to the command center's bounds --------------------------------


def test_a_summary_as_the_gateway_makes_it_is_sent_as_it_is() -> None:
    assert bounded_firmware(SUMMARY) == SUMMARY
    assert GatewayReportIn.model_validate(report(bounded_firmware(SUMMARY))).firmware == \
        FirmwareSummary.model_validate(SUMMARY)


def test_a_summary_out_of_bounds_is_cut_so_the_report_still_goes() -> None:
    versions = {f"0.{i}.0": i for i in range(100)} | {"": 5, "bad version": 7, "0.1.1": -1, "0.1.2": True}
    rollouts = [dict(ROLLOUT, id=i, halted_reason="\x1b[31mred\x00" + "é" * 400) for i in range(1, 10)]
    rollouts[0:0] = [{"id": 0}, {"id": 2, "version": "0.3.0"}, dict(ROLLOUT, state="paused"),
                     dict(ROLLOUT, percent=float("nan")), dict(ROLLOUT, version="x" * 65),
                     dict(ROLLOUT, counts={"failed": -3}, targeted="5")]
    cut = bounded_firmware({"versions": versions, "rollouts": rollouts})
    # The versions most in service, a proper rollout list, each field within its bounds.
    assert len(cut["versions"]) == FW_VERSIONS_MAX
    assert set(cut["versions"]) == {f"0.{i}.0" for i in range(100 - FW_VERSIONS_MAX, 100)}
    assert [r["id"] for r in cut["rollouts"]] == [3, 1, 2, 3, 4][:FW_ROLLOUTS_MAX]
    odd = cut["rollouts"][0]  # the one with broken counts: zero rather than refused
    assert odd["counts"]["failed"] == 0 and odd["targeted"] == 0
    reason = cut["rollouts"][1]["halted_reason"]
    assert "\x1b" not in reason and "\x00" not in reason and len(reason.encode()) <= 300
    summary = GatewayReportIn.model_validate(report(cut)).firmware
    assert summary is not None and len(summary.rollouts) == FW_ROLLOUTS_MAX
    assert bounded_firmware({"versions": "none", "rollouts": {"id": 1}}) == {"versions": {}, "rollouts": [],
                                                                              "devices": [], "devices_total": 0}


def test_the_buttons_of_a_summary_are_cut_to_the_bound_and_a_wrong_one_left_out() -> None:
    ok = DEVICES[0]
    wrong = [dict(ok, rollout=9), dict(ok, rollout=True), dict(ok, device_id="BTN 1"), dict(ok, state="paused"),
             dict(ok, device_id=None), "btn-0001"]
    odd = dict(ok, device_id="btn-0100", detail="\x1b[31m" + "é" * 60, firmware="zero point two", board="ESP32",
               updated_ms=-5)
    surrogate = dict(ok, device_id="btn-0101", detail="a\ud800b")
    many = [dict(ok, device_id=f"btn-{i:04d}") for i in range(1000, 1000 + FW_DEVICES_MAX)]
    cut = bounded_firmware(dict(SUMMARY, devices=[*wrong, odd, surrogate, *many], devices_total=2000))
    assert len(cut["devices"]) == FW_DEVICES_MAX and cut["devices_total"] == 2000
    first = cut["devices"][0]
    assert first["device_id"] == "btn-0100" and first["firmware"] is None and first["board"] is None
    assert first["updated_ms"] == 0 and "\x1b" not in first["detail"] and len(first["detail"].encode()) <= 64
    assert cut["devices"][1]["detail"] == "ab" and cut["devices"][-1]["device_id"] == f"btn-{997 + FW_DEVICES_MAX}"
    assert GatewayReportIn.model_validate(report(cut)).firmware is not None
    # A total that says less than the list (or nothing) is the list's length.
    assert bounded_firmware(dict(SUMMARY, devices_total="5"))["devices_total"] == len(DEVICES)
    assert bounded_firmware(dict(SUMMARY, devices_total=1))["devices_total"] == len(DEVICES)


# ---- the command center: checked, kept, shown -------------------------------------------------------


def gateways(cc: CommandCenterProcess, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = httpx.get(f"{cc.url}/api/v1/gateways", headers=headers, timeout=5)
    assert r.status_code == 200, r.text
    return list(r.json()["gateways"])


def test_the_command_center_keeps_the_firmware_of_the_latest_report(command_center: CommandCenterProcess) -> None:
    cc = command_center
    url, intake = f"{cc.url}/api/v1/gateways/report", {"Authorization": f"Bearer {cc.intake_token}"}
    ok = httpx.post(url, json=report(SUMMARY), headers=intake, timeout=5)
    assert ok.status_code == 204, ok.text
    [shown] = gateways(cc, cc.operator_headers())
    assert shown["firmware"]["versions"] == SUMMARY["versions"]
    [rollout] = shown["firmware"]["rollouts"]
    assert rollout == ROLLOUT
    assert shown["firmware"]["devices"] == DEVICES and shown["firmware"]["devices_total"] == 5
    # Everyone signed in sees it (the agency's view has no devices tab, but the API is the same).
    assert gateways(cc, cc.agency_headers())[0]["firmware"]["rollouts"][0]["state"] == "halted"

    # A gateway without [ota] (or before it): null; a later report replaces the earlier one.
    assert httpx.post(url, json=report(), headers=intake, timeout=5).status_code == 204
    assert gateways(cc, cc.operator_headers())[0]["firmware"] is None
    fields_unknown_here = {"versions": {"0.3.0": 12}, "rollouts": [], "channels": ["beta"],
                           "devices": [dict(DEVICES[0], signal=-70)]}
    assert httpx.post(url, json=report(fields_unknown_here), headers=intake, timeout=5).status_code == 204
    after = {"versions": {"0.3.0": 12}, "rollouts": [], "devices": [DEVICES[0]], "devices_total": 0}
    assert gateways(cc, cc.operator_headers())[0]["firmware"] == after
    # A report from before the buttons were listed: none, and a total of nothing.
    assert httpx.post(url, json=report({"versions": {"0.3.0": 12}, "rollouts": []}), headers=intake,
                      timeout=5).status_code == 204
    after = {"versions": {"0.3.0": 12}, "rollouts": [], "devices": [], "devices_total": 0}
    assert gateways(cc, cc.operator_headers())[0]["firmware"] == after

    # Out of bounds: refused like any malformed report (the gateway cuts its summary first).
    for wrong in ({"versions": {"0.3.0": -1}}, {"versions": {"": 1}}, {"versions": {"0.3.0": "12"}},
                  {"versions": {f"0.{i}.0": 1 for i in range(65)}},
                  {"rollouts": [dict(ROLLOUT, state="paused")]}, {"rollouts": [dict(ROLLOUT, percent=101)]},
                  {"rollouts": [dict(ROLLOUT, percent="40")]}, {"rollouts": [dict(ROLLOUT, id=0)]},
                  {"rollouts": [dict(ROLLOUT, halted_reason="a\x00b")]},
                  {"rollouts": [dict(ROLLOUT, counts={"failed": -1})]}, {"rollouts": [ROLLOUT] * 9},
                  {"rollouts": ROLLOUT}, "firmware",
                  *({"devices": [dict(DEVICES[0], **bad)]} for bad in (
                      {"device_id": "BTN-1"}, {"device_id": "b"}, {"rollout": 0}, {"rollout": "3"},
                      {"state": "paused"}, {"detail": "x" * 65}, {"detail": "a\nb"}, {"detail": None},
                      {"firmware": "0.3 beta"}, {"firmware": ""}, {"board": "ESP32"}, {"board": "b" * 17},
                      {"updated_ms": -1}, {"updated_ms": "1"})),
                  {"devices": [{k: v for k, v in DEVICES[0].items() if k != "device_id"}]},
                  {"devices": [{k: v for k, v in DEVICES[0].items() if k != "updated_ms"}]},
                  {"devices": DEVICES[0]},
                  {"devices_total": -1}, {"devices_total": "5"}):
        r = httpx.post(url, json=report(wrong), headers=intake, timeout=5)
        assert r.status_code == 422, (wrong, r.text)
    assert gateways(cc, cc.operator_headers())[0]["firmware"] == after
    with pytest.raises(ValidationError, match="at most 500 items"):   # over 16 KiB: refused before it is read
        GatewayReportIn.model_validate(report(dict(SUMMARY, devices=[DEVICES[0]] * (FW_DEVICES_MAX + 1))))

    # A large rollout: the gateway lists as many buttons as the report's size allows, the failed and
    # busy first, and counts them all; the command center takes it as it is.
    many = [dict(DEVICES[0], device_id=f"btn-{i:04d}", detail="wrong_sha256") for i in range(FW_DEVICES_MAX)]
    big = report(bounded_firmware(dict(SUMMARY, devices=many, devices_total=1234)))
    whole = fit_report(big)   # all 500 rows fit the gateway's 96 KiB
    assert whole["firmware"]["devices"] == many
    assert len(json.dumps(whole, ensure_ascii=False, separators=(",", ":")).encode()) <= REPORT_BYTES_MAX
    small = 16 * 1024          # a tighter bound cuts the list to fit, failed and busy rows first
    fitted = fit_report(big, small)
    size = len(json.dumps(fitted, ensure_ascii=False, separators=(",", ":")).encode())
    assert size <= small and size > small - 1024
    listed = fitted["firmware"]["devices"]
    assert 10 < len(listed) < FW_DEVICES_MAX and listed == many[:len(listed)]
    assert fitted["firmware"]["devices_total"] == 1234 and fit_report(fitted, small) == fitted
    assert httpx.post(url, json=fitted, headers=intake, timeout=5).status_code == 204
    shown_now = gateways(cc, cc.operator_headers())[0]["firmware"]
    assert shown_now["devices"] == listed and shown_now["devices_total"] == 1234


def test_the_report_schema_documents_the_bounds() -> None:
    schema = GatewayReportIn.model_json_schema()
    fw = schema["$defs"]["FirmwareSummary"]["properties"]
    assert fw["versions"]["maxProperties"] == FW_VERSIONS_MAX
    assert fw["rollouts"]["maxItems"] >= FW_ROLLOUTS_MAX
    rollout = schema["$defs"]["RolloutSummary"]["properties"]
    assert rollout["state"]["enum"] == ["active", "halted", "done", "cancelled"]
    assert fw["devices"]["maxItems"] == FW_DEVICES_MAX
    device = schema["$defs"]["RolloutDevice"]["properties"]
    assert device["state"]["enum"] == ["offered", "downloading", "installed", "updated", "failed", "withdrawn"]
    assert device["device_id"]["pattern"] and device["detail"]["maxLength"] == 64
    assert {"pattern": "^[!-~]{1,64}$", "type": "string"} in device["firmware"]["anyOf"]


# ---- the console --------------------------------------------------------------------------------------


def test_the_console_draws_the_firmware_panel_from_the_gateways_in_catalog_words() -> None:
    js = (STATIC / "console.js").read_text(encoding="utf-8")
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    catalog = i18n.catalog("console")
    body = js[js.index("function drawFirmware"):js.index("// ---- supervisor")]
    # From the gateways' reports the banner already asks for: no request of its own.
    assert "api(" not in body and "state.gateways" in body
    assert "state.gateways = answer.gateways" in js
    # Each rollout state has its words, in both languages, and the counts name every device state.
    states = re.search(r"const ROLLOUT_STATE_KEYS = \{(.*?)\};", js, re.S).group(1)  # type: ignore[union-attr]
    assert set(re.findall(r"(\w+): \"firmware\.state\.\1\"", states)) == {"active", "halted", "done", "cancelled"}
    assert i18n.placeholders(catalog["firmware.counts"]["en"]) == {
        "offered", "downloading", "installed", "updated", "failed", "withdrawn"}
    assert catalog["firmware.state.halted"] == {"id": "Dihentikan", "en": "Halted"}
    for key in ("firmware.title", "firmware.versions", "firmware.rollouts"):
        assert f'data-i18n="{key}"' in html
    assert 'id="firmware-section"' in html and 'id="firmware-versions"' in html and 'id="firmware-rollouts"' in html
    # Drawn whenever the devices view shows, and again with each answer while it does.
    assert body.count('t("') >= 3 and "val(" in body


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_panel_words_fill_their_placeholders(lang: str) -> None:
    counts = {s: n for n, s in enumerate(("offered", "downloading", "installed", "updated", "failed", "withdrawn"))}
    text = i18n.text("console", "firmware.counts", lang, **counts)
    assert "{" not in text and all(str(n) in text for n in counts.values())
    reason = i18n.text("console", "firmware.halted.failures", lang, failed=2, of=5, limit=20)
    assert "{" not in reason and "2" in reason and "5" in reason and "20 %" in reason


# ---- the panel's drawing, run by Node.js on a stand-in for the page -----------------------------------

NODE = shutil.which("node")
# Just enough of the DOM for the console's table helpers: elements with text, children, dataset.
FAKE_DOM = """
class Node {
  constructor(tag) { this.tagName = tag.toUpperCase(); this.children = []; this.dataset = {}; this.className = "";
    this.own = ""; this.hidden = false; this.colSpan = 1; }
  set textContent(v) { this.children = []; this.own = String(v); }
  get textContent() { return this.own + this.children.map((c) => c.textContent).join(""); }
  append(...nodes) { for (const n of nodes) this.children.push(n); }
  replaceChildren() { this.children = []; this.own = ""; }
  get tBodies() { return this.children.filter((c) => c.tagName === "TBODY"); }
  get rows() { return this.children.filter((c) => c.tagName === "TR"); }
}
const byId = {};
const document = {createElement: (tag) => new Node(tag), body: {dataset: {}}};
const $ = (id) => (byId[id] ||= new Node("div"));
"""
DUMP = """
const cells = (tbl) => tbl.children.flatMap((part) => part.rows.map((tr) => ({
  cls: tr.className, rollout: tr.dataset.rollout || null,
  cells: tr.children.map((td) => ({text: td.textContent, data: "value" in td.dataset
    || td.children.some((c) => "value" in c.dataset)}))})));
const buttons = () => $("firmware-rollouts").tBodies.flatMap((b) => b.rows)
  .filter((tr) => tr.className === "rollout-buttons").map((tr) => ({rollout: tr.dataset.rolloutButtons,
    span: tr.children[0].colSpan, rows: tr.children[0].children.filter((c) => c.tagName === "TABLE").flatMap(cells),
    more: tr.children[0].children.filter((c) => c.className === "rollout-more").map((c) => c.textContent)}));
drawFirmware();
console.log(JSON.stringify({hidden: $("firmware-section").hidden, versions: cells($("firmware-versions")),
  rollouts: cells($("firmware-rollouts")).filter((r) => r.cls !== "rollout-buttons"), buttons: buttons(),
  count: document.body.dataset.firmwareRollouts}));
"""


def _js_function(js: str, name: str) -> str:
    start = js.index(f"  function {name}(")
    return js[start:js.index("\n  }\n", start) + 4]


def draw(gateways: list[dict[str, Any]], lang: str) -> dict[str, Any]:
    """The firmware panel as console.js draws it for these gateways (GET /api/v1/gateways)."""
    js = (STATIC / "console.js").read_text(encoding="utf-8")
    consts = js[js.index("  const ROLLOUT_STATE_KEYS = {"):js.index("  const REFERRAL_CHANNEL")]
    panel = js[js.index("  /** The buttons' firmware"):js.index("  // ---- supervisor")]
    state = {"lang": lang, "catalog": i18n.catalog("console"), "gateways": gateways,
             "settings": {"timezone": "Asia/Jakarta"}}
    script = "\n".join([FAKE_DOM, f"const state = {json.dumps(state)};", consts, "const formatters = new Map();",
                        *(_js_function(js, f) for f in ("t", "el", "val", "table", "fillTable", "fmtTime",
                                                         "formatter", "zoneOptions")), panel, DUMP])
    done = subprocess.run([NODE or "node", "-e", script], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def gateway(gateway_id: str, instance: str, at: str, firmware: dict[str, Any] | None) -> dict[str, Any]:
    return {"gateway_id": gateway_id, "instance": instance, "last_report_at": at, "firmware": firmware}


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_panel_shows_versions_and_rollouts_in_the_chosen_language(lang: str) -> None:
    stale = {"versions": {"0.1.0": 99}, "rollouts": []}
    drawn = draw([gateway("gw-1", "gw-1a", "2026-11-24T03:00:00Z", stale),
                  gateway("gw-1", "gw-1b", "2026-11-24T03:00:05Z", SUMMARY),  # the latest of gw-1
                  gateway("gw-2", "gw-2", "2026-11-24T03:00:01Z", None)], lang)
    assert drawn["hidden"] is False and drawn["count"] == "1"
    assert [[c["text"] for c in r["cells"]] for r in drawn["versions"][1:]] == [["gw-1", "0.2.0", "10"],
                                                                                ["gw-1", "0.3.0", "2"]]
    head, row = drawn["rollouts"]
    assert [c["text"] for c in head["cells"]] == [tx(k, lang) for k in ("col.gateway", "col.version", "col.percent",
                                                                        "col.state", "col.buttons_by_state")]
    assert (row["cls"], row["rollout"]) == ("rollout-halted", "3")
    gw, version, percent, state, counts = row["cells"]
    assert [gw["text"], version["text"], percent["text"]] == ["gw-1", "0.3.0", "40 %"]
    assert gw["data"] and version["data"] and percent["data"]  # data, never translated
    # The reason is a code the console says in the reader's words, with the rollout's numbers:
    # 2 failed of the 2 not withdrawn (5 targeted, 3 withdrawn at the halt).
    assert state["text"] == tx("firmware.state.halted", lang) + tx("firmware.halted.failures", lang, failed=2, of=2,
                                                                   limit=20)
    assert counts["text"] == tx("firmware.targeted", lang, targeted=5, eligible=12) + tx(
        "firmware.counts", lang, **ROLLOUT["counts"])
    assert not state["data"] and not counts["data"]  # words, from the catalog


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_under_each_rollout_its_buttons_failed_first_with_the_reason_in_words(lang: str) -> None:
    other = dict(ROLLOUT, id=4, version="0.3.1", state="active", halted_reason=None, targeted=1)
    mine = {"device_id": "btn-0042", "rollout": 4, "state": "downloading", "detail": "", "firmware": "0.3.0",
            "board": "esp32", "updated_ms": 1_795_924_800_000}
    drawn = draw([gateway("gw-1", "gw-1", "2026-11-24T03:00:05Z", dict(SUMMARY, rollouts=[ROLLOUT, other],
                                                                        devices=[*DEVICES, mine], devices_total=6)),
                  gateway("gw-2", "gw-2", "2026-11-24T03:00:05Z", dict(SUMMARY, devices=[], devices_total=0)),
                  gateway("gw-3", "gw-3", "2026-11-24T03:00:05Z", {"versions": {}, "rollouts": [ROLLOUT]})], lang)
    # A row of buttons under each rollout of gw-1; none for a gateway that lists none (gw-2: all shown,
    # gw-3: from before the list).
    assert [r["rollout"] for r in drawn["rollouts"][1:]] == ["3", "4", "3", "3"]
    assert [(b["rollout"], b["span"]) for b in drawn["buttons"]] == [("3", 5), ("4", 5)]
    halted, active = drawn["buttons"]
    head, *rows = halted["rows"]
    assert [c["text"] for c in head["cells"]] == [tx(k, lang) for k in ("col.device", "col.state", "col.firmware",
                                                                        "col.reason", "col.changed")]
    # In the gateway's order (the failed first), the failed ones marked; words from the catalog, an
    # unknown reason word as the button said it, the firmware and the time as data.
    assert [(r["cls"], r["cells"][0]["text"]) for r in rows] == [
        ("button-failed", "btn-0007"), ("button-failed", "btn-0003"), ("button-withdrawn", "btn-0001")]
    device, state, firmware, reason, changed = rows[0]["cells"]
    assert device["data"] and firmware["data"] and changed["data"]
    assert (state["text"], state["data"]) == (tx("firmware.device.failed", lang), False)
    assert firmware["text"] == "0.2.0"
    assert (reason["text"], reason["data"]) == (tx("firmware.reason.selftest", lang), False)
    when = datetime.fromtimestamp(1_795_924_800, ZoneInfo("Asia/Jakarta"))  # the room's time zone
    assert str(when.year) in changed["text"] and f"{when.hour:02d}" in changed["text"]
    assert f"{when.minute:02d}" in changed["text"]
    assert (rows[1]["cells"][3]["text"], rows[1]["cells"][3]["data"]) == ("cosmic_ray", True)
    withdrawn = rows[2]["cells"]
    assert withdrawn[1]["text"] == tx("firmware.device.withdrawn", lang)
    assert withdrawn[2]["text"] == "–" and withdrawn[3]["text"] == ""   # no firmware reported; not a failure
    # The gateway listed 4 of its 6: the halted rollout has 5 buttons, 3 of them shown.
    assert halted["more"] == [tx("firmware.more", lang, n=2)]
    [row] = active["rows"][1:]
    assert row["cls"] == "button-downloading" and row["cells"][1]["text"] == tx("firmware.device.downloading", lang)
    assert active["more"] == []


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_every_reason_a_button_reports_has_its_words(lang: str) -> None:
    js = (STATIC / "console.js").read_text(encoding="utf-8")
    block = js[js.index("const UPDATE_REASON_KEYS"):js.index("const BUTTON_COLUMNS")]
    words = set(re.findall(r"(\w+): \"firmware\.reason\.\1\"", block))
    assert words == {"malformed", "too_large", "unknown_key", "bad_signature", "wrong_board", "boot_too_old",
                     "wrong_hash", "wrong_sha256", "no_space", "wrong_mpy", "stalled", "selftest", "crashes"}
    cli = i18n.catalog("cli")
    for word in words:   # the words the command line explains too
        assert f"ota.reason.{word}" in cli
        assert tx(f"firmware.reason.{word}", lang) != f"firmware.reason.{word}"
    states = js[js.index("const DEVICE_STATE_KEYS"):js.index("// Why a button's update failed")]
    assert set(re.findall(r"(\w+): \"firmware\.device\.\1\"", states)) == {
        "offered", "downloading", "installed", "updated", "failed", "withdrawn"}


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_the_panel_is_hidden_without_firmware_and_says_when_nothing_is_under_way() -> None:
    assert draw([gateway("gw-1", "gw-1", "2026-11-24T03:00:00Z", None)], "id")["hidden"] is True
    assert draw([], "en")["hidden"] is True
    drawn = draw([gateway("gw-1", "gw-1", "2026-11-24T03:00:00Z", {"versions": {}, "rollouts": []})], "en")
    assert drawn["hidden"] is False
    assert [c["text"] for c in drawn["versions"][1]["cells"]] == [tx("firmware.no_versions", "en")]
    assert [c["text"] for c in drawn["rollouts"][1]["cells"]] == [tx("firmware.no_rollouts", "en")]


def tx(key: str, lang: str, **params: Any) -> str:
    return i18n.text("console", key, lang, **params)
