"""The firmware of the buttons as the command center sees it: the gateway's report carries a summary of
its rollouts (`firmware`, gateway/liveness.py), cut to the bounds the command center takes; the command
center checks, keeps and shows it (GET /api/v1/gateways); the console's devices view draws it from
there, every word from its catalog. The whole path from a real gateway is in tests/test_cli_ota.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from siaga import i18n
from siaga.commandcenter.plumbing import FirmwareSummary, GatewayReportIn
from siaga.gateway.liveness import FW_ROLLOUTS_MAX, FW_VERSIONS_MAX, bounded_firmware
from tests.support.ccproc import CommandCenterProcess

STATIC = Path(__file__).resolve().parents[1] / "commandcenter" / "static"

ROLLOUT: dict[str, Any] = {
    "id": 3, "version": "0.3.0", "percent": 40, "state": "halted", "max_failed_percent": 20,
    "halted_reason": "failures", "created_ms": 1_795_922_400_000,
    "counts": {"offered": 0, "downloading": 0, "installed": 0, "updated": 0, "failed": 2, "withdrawn": 3},
    "targeted": 5, "eligible": 12,
}
SUMMARY: dict[str, Any] = {"versions": {"0.2.0": 10, "0.3.0": 2}, "rollouts": [ROLLOUT]}


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
    assert bounded_firmware({"versions": "none", "rollouts": {"id": 1}}) == {"versions": {}, "rollouts": []}


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
    # Everyone signed in sees it (the agency's view has no devices tab, but the API is the same).
    assert gateways(cc, cc.agency_headers())[0]["firmware"]["rollouts"][0]["state"] == "halted"

    # A gateway without [ota] (or before it): null; a later report replaces the earlier one.
    assert httpx.post(url, json=report(), headers=intake, timeout=5).status_code == 204
    assert gateways(cc, cc.operator_headers())[0]["firmware"] is None
    fields_unknown_here = {"versions": {"0.3.0": 12}, "rollouts": [], "channels": ["beta"]}
    assert httpx.post(url, json=report(fields_unknown_here), headers=intake, timeout=5).status_code == 204
    assert gateways(cc, cc.operator_headers())[0]["firmware"] == {"versions": {"0.3.0": 12}, "rollouts": []}

    # Out of bounds: refused like any malformed report (the gateway cuts its summary first).
    for wrong in ({"versions": {"0.3.0": -1}}, {"versions": {"": 1}}, {"versions": {"0.3.0": "12"}},
                  {"versions": {f"0.{i}.0": 1 for i in range(65)}},
                  {"rollouts": [dict(ROLLOUT, state="paused")]}, {"rollouts": [dict(ROLLOUT, percent=101)]},
                  {"rollouts": [dict(ROLLOUT, percent="40")]}, {"rollouts": [dict(ROLLOUT, id=0)]},
                  {"rollouts": [dict(ROLLOUT, halted_reason="a\x00b")]},
                  {"rollouts": [dict(ROLLOUT, counts={"failed": -1})]}, {"rollouts": [ROLLOUT] * 9},
                  {"rollouts": ROLLOUT}, "firmware"):
        r = httpx.post(url, json=report(wrong), headers=intake, timeout=5)
        assert r.status_code == 422, (wrong, r.text)
    assert gateways(cc, cc.operator_headers())[0]["firmware"] == {"versions": {"0.3.0": 12}, "rollouts": []}


def test_the_report_schema_documents_the_bounds() -> None:
    schema = GatewayReportIn.model_json_schema()
    fw = schema["$defs"]["FirmwareSummary"]["properties"]
    assert fw["versions"]["maxProperties"] == FW_VERSIONS_MAX
    assert fw["rollouts"]["maxItems"] >= FW_ROLLOUTS_MAX
    rollout = schema["$defs"]["RolloutSummary"]["properties"]
    assert rollout["state"]["enum"] == ["active", "halted", "done", "cancelled"]


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
drawFirmware();
console.log(JSON.stringify({hidden: $("firmware-section").hidden, versions: cells($("firmware-versions")),
  rollouts: cells($("firmware-rollouts")), count: document.body.dataset.firmwareRollouts}));
"""


def _js_function(js: str, name: str) -> str:
    start = js.index(f"  function {name}(")
    return js[start:js.index("\n  }\n", start) + 4]


def draw(gateways: list[dict[str, Any]], lang: str) -> dict[str, Any]:
    """The firmware panel as console.js draws it for these gateways (GET /api/v1/gateways)."""
    js = (STATIC / "console.js").read_text(encoding="utf-8")
    consts = re.search(r"  const ROLLOUT_STATE_KEYS = \{.*?\};\n", js, re.S).group(0)  # type: ignore[union-attr]
    panel = js[js.index("  /** The buttons' firmware"):js.index("  // ---- supervisor")]
    state = {"lang": lang, "catalog": i18n.catalog("console"), "gateways": gateways}
    script = "\n".join([FAKE_DOM, f"const state = {json.dumps(state)};", consts,
                        *(_js_function(js, f) for f in ("t", "el", "val", "table")), panel, DUMP])
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
def test_the_panel_is_hidden_without_firmware_and_says_when_nothing_is_under_way() -> None:
    assert draw([gateway("gw-1", "gw-1", "2026-11-24T03:00:00Z", None)], "id")["hidden"] is True
    assert draw([], "en")["hidden"] is True
    drawn = draw([gateway("gw-1", "gw-1", "2026-11-24T03:00:00Z", {"versions": {}, "rollouts": []})], "en")
    assert drawn["hidden"] is False
    assert [c["text"] for c in drawn["versions"][1]["cells"]] == [tx("firmware.no_versions", "en")]
    assert [c["text"] for c in drawn["rollouts"][1]["cells"]] == [tx("firmware.no_rollouts", "en")]


def tx(key: str, lang: str, **params: Any) -> str:
    return i18n.text("console", key, lang, **params)
