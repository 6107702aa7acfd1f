"""`siaga devices`: the fleet as the gateway sees it, the correction of a device's place
(set-location), and the commands that change a device's standing: revoke, rotate-key,
decommission. Each of those acts on the gateway and the broker together, so that a device the
gateway refuses is refused by the broker too."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import secrets
import time
from pathlib import Path
from typing import Any

from . import devconfig, selftest, validate
from .board import Board
from .brokerlogins import BrokerLogins
from .errors import BoardError, GatewayError, Invalid, UsageError
from .firmware import CONFIG_PATH, profile_for
from .gateway import BUNDLE_MAX_BYTES, BundleRefused, GatewayClient, reason_text
from .keystore import Keystore
from .provision import UNIX, unconfigure
from .settings import Settings
from .text import t
from .ui import Rollback, Ui
from .validate import Location

# The update columns come last, so that a sheet made from an older export keeps its columns' places.
CSV_FIELDS = ("id", "status", "faults", "last_seen", "battery_mv", "rssi", "firmware", "lat", "lon", "address",
              "area", "site", "key_pending", "created", "board", "update_version", "update_state", "update_detail")


def status(d: dict[str, Any]) -> str:
    if d.get("decommissioned"):
        return "decommissioned"
    if d.get("revoked"):
        return "revoked"
    if d.get("last_seen_ms") is None:
        return "never seen"
    if "offline" in (d.get("faults") or []):
        return "offline"
    return "online"


def _iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _ago(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    s = max(0, (now_ms - ms) // 1000)
    if s < 120:
        return t("ago.s", n=s)
    if s < 7200:
        return t("ago.min", n=s // 60)
    if s < 172800:
        return t("ago.h", n=s // 3600)
    return t("ago.d", n=s // 86400)


def row(d: dict[str, Any]) -> dict[str, Any]:
    """One device as a flat record (CSV and the table)."""
    return {"id": d["id"], "status": status(d), "faults": " ".join(d.get("faults") or []),
            "last_seen": _iso(d.get("last_seen_ms")), "battery_mv": d.get("battery_mv") or "",
            "rssi": d.get("rssi") if d.get("rssi") is not None else "", "firmware": d.get("firmware") or "",
            "lat": "" if d.get("lat") is None else f"{d['lat']:.6f}",
            "lon": "" if d.get("lon") is None else f"{d['lon']:.6f}", "address": d.get("address", ""),
            "area": d.get("area", ""), "site": d.get("site") or "",
            "key_pending": "yes" if d.get("key_pending") else "",
            "created": _iso(d.get("created_ms")), "board": d.get("board") or "", **_update(d)}


def _update(d: dict[str, Any]) -> dict[str, str]:
    """The device's latest firmware update (its entry in the newest rollout that reached it), flat."""
    ota = d.get("ota") or {}
    return {"update_version": str(ota.get("version") or ""), "update_state": str(ota.get("state") or ""),
            "update_detail": str(ota.get("detail") or "")}


def update_text(d: dict[str, Any]) -> str:
    """The update column of the table: "0.3.0 updated", "0.3.0 failed: selftest", or "-"."""
    u = _update(d)
    if not u["update_state"]:
        return "-"
    return f"{u['update_version']} {u['update_state']}" + (f": {u['update_detail']}" if u["update_detail"] else "")


def to_csv(devices: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for d in devices:
        writer.writerow(row(d))
    return out.getvalue()


def to_geojson(devices: list[dict[str, Any]]) -> str:
    """RFC 7946: [longitude, latitude]; a device without coordinates has a null geometry."""
    features = []
    for d in devices:
        geometry = None
        if d.get("lat") is not None and d.get("lon") is not None:
            geometry = {"type": "Point", "coordinates": [round(d["lon"], 6), round(d["lat"], 6)]}
        props = row(d)
        for key in ("lat", "lon"):
            props.pop(key)
        props["faults"] = list(d.get("faults") or [])
        props["battery_mv"] = d.get("battery_mv")
        props["rssi"] = d.get("rssi")
        props["key_pending"] = bool(d.get("key_pending"))
        features.append({"type": "Feature", "id": d["id"], "geometry": geometry, "properties": props})
    return json.dumps({"type": "FeatureCollection", "features": features}, ensure_ascii=False, indent=1) + "\n"


def to_table(devices: list[dict[str, Any]]) -> str:
    now_ms = int(time.time() * 1000)
    head = ("ID", t("table.status"), t("table.last_seen"), t("table.battery"), "FW", t("table.board"),
            t("table.update"), t("table.location"))
    lines = [head]
    for d in devices:
        st = status(d) + (f" ({', '.join(d['faults'])})" if d.get("faults") and status(d) == "online" else "")
        bat = f"{d['battery_mv'] / 1000:.2f} V" if d.get("battery_mv") else "-"
        where = ", ".join(x for x in (d.get("address", ""), d.get("area", "")) if x)
        if d.get("lat") is not None:
            where += f" ({d['lat']:.5f}, {d['lon']:.5f})"
        lines.append((d["id"], st, _ago(d.get("last_seen_ms"), now_ms), bat, d.get("firmware") or "-",
                      d.get("board") or "-", update_text(d), where or "-"))
    return _columns(lines)


def _columns(lines: list[tuple[Any, ...]]) -> str:
    """Rows as aligned columns; the last column is not padded."""
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]) - 1)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + str(line[-1])
                     for line in lines)


def list_devices(settings: Settings, fmt: str, out: Path | None, ui: Ui) -> int:
    with GatewayClient.of(settings) as gw:
        devices = gw.devices()
    text = {"table": to_table, "csv": to_csv, "geojson": to_geojson,
            "json": lambda ds: json.dumps(ds, indent=1) + "\n"}[fmt](devices)
    if out is not None:
        out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        ui.say(t("list.written", count=len(devices), path=out))
    else:
        ui.say(text.rstrip("\n"))
    return 0


def show(settings: Settings, device_id: str, ui: Ui) -> int:
    with GatewayClient.of(settings) as gw:
        d = gw.require(device_id)
        alarms = gw.alarms(device_id, limit=5)
    now_ms = int(time.time() * 1000)
    r = row(d)
    ui.say(f"{d['id']}: {status(d)}" + (t("show.faults", faults=r["faults"]) if r["faults"] else ""))
    ui.say("  " + t("show.location", address=d.get("address") or "-", area=d.get("area") or "-",
                    lat=r["lat"] or "?", lon=r["lon"] or "?")
           + (t("add.site", site=d["site"]) if d.get("site") else ""))
    ui.say("  " + t("show.last_seen", ago=_ago(d.get("last_seen_ms"), now_ms), at=r["last_seen"]))
    tamper = "-" if d.get("tamper") is None else t("show.tamper_open") if d["tamper"] else t("show.tamper_closed")
    ui.say("  " + t("show.battery", mv=r["battery_mv"] or "-", rssi=r["rssi"] or "-", firmware=r["firmware"] or "-",
                    tamper=tamper))
    ui.say("  " + t("show.key", key=t("show.key_pending") if d.get("key_pending") else t("show.key_current")))
    ui.say("  " + t("show.board", board=d.get("board") or "-"))
    ota = d.get("ota") or {}
    if ota.get("state"):
        detail = explained(str(ota.get("detail") or ""))
        ui.say("  " + t("show.update", rollout=ota.get("rollout"), version=ota.get("version"), state=ota["state"])
               + (f": {detail}" if detail else ""))
    cfg = d.get("config") or {}
    if cfg.get("version"):
        ui.say("  " + t("show.config", version=cfg["version"], applied=cfg["applied"])
               + (t("show.config_rejected", version=cfg["rejected"]) if cfg.get("rejected") is not None else ""))
    if d.get("phone"):
        ui.say("  " + t("show.phone", phone=d["phone"], ago=_ago(d.get("last_sms_ms"), now_ms),
                        at=_iso(d.get("last_sms_ms"))))
    ui.say("  " + t("show.registered", at=r["created"]))
    for a in alarms:
        ui.say("  " + t("show.alarm", seq=a["seq"], kind=a["kind"], test=t("show.test") if a.get("test") else "",
                        state=a["state"], at=_iso(a.get("received_ms"))))
    for entry in Keystore(settings.state_dir).history(device_id)[-5:]:
        ui.say("  " + t("show.log", at=entry["at"], event=entry["event"])
               + (f" — {entry['notes']}" if entry.get("notes") else ""))
    return 0


def location_fields(*, latlon: object = None, lat: object = None, lon: object = None, address: object = None,
                    area: object = None, site: object = None) -> dict[str, Any]:
    """The corrections of `siaga devices set-location`, checked, as the gateway's PATCH takes them:
    only what is given (None: not given); `site=""` removes the site."""
    fields: dict[str, Any] = {}
    latlon, lat, lon = (v if v not in (None, "") else None for v in (latlon, lat, lon))
    if latlon is not None:
        if lat is not None or lon is not None:
            raise Invalid("location", latlon, t("valid.latlon_twice"))
        lat_e6, lon_e6 = validate.latlon(latlon)
    elif lat is not None or lon is not None:
        if lat is None or lon is None:
            raise Invalid("location", lat if lat is not None else lon, t("valid.both_lat_lon"))
        lat_e6, lon_e6 = validate.latitude(lat), validate.longitude(lon)
    if latlon is not None or lat is not None:
        place = Location(lat_e6, lon_e6, "", "")  # refuses "0, 0"
        fields |= {"lat": place.lat, "lon": place.lon}
    if address is not None:
        fields["address"] = validate.address(address)
    if area is not None:
        fields["area"] = validate.area_code(area)
    if site is not None:
        fields["site"] = validate.site(site)  # "" gives None: the site is removed
    if not fields:
        raise UsageError(t("set_location.nothing"), t("set_location.nothing.hint"))
    return fields


def set_location(settings: Settings, device_id: str, fields: dict[str, Any], ui: Ui) -> int:
    """Correct a registered device's place at the gateway (only `fields` change); a device staged on
    this laptop gets the same correction, so that the board is written with it at the pole."""
    with GatewayClient.of(settings) as gw:
        gw.require(device_id)
        d = gw.update(device_id, fields)
    where = f"{d.get('address') or '-'} / {d.get('area') or '-'}"
    if d.get("lat") is not None:
        where += f" ({d['lat']:.6f}, {d['lon']:.6f})"
    ui.step(t("set_location.now_at", device=device_id, where=where)
            + (t("add.site", site=d["site"]) if d.get("site") else t("set_location.no_site")))
    keystore = Keystore(settings.state_dir)
    staged = keystore.staged(device_id)
    if staged is not None:
        loc = staged.location
        lat_e6 = round(fields["lat"] * 1e6) if "lat" in fields else loc.lat_e6
        lon_e6 = round(fields["lon"] * 1e6) if "lon" in fields else loc.lon_e6
        keystore.save_staged(dataclasses.replace(
            staged, location=Location(lat_e6, lon_e6, fields.get("address", loc.address), fields.get("area", loc.area)),
            site=fields.get("site", staged.site)))
        ui.step(t("set_location.staged", device=device_id))
    elif fields.keys() & {"lat", "lon", "address", "area"} and (d.get("config") or {}).get("version"):
        ui.detail(t("set_location.sent_to_button", device=device_id, version=d["config"]["version"]))
    keystore.log("set-location", device_id, **fields)
    return 0


WIFI_NETWORKS_MAX = 3   # the button's own limit (siagafw/config.py)


def config_settings(*, heartbeat_s: object = None, retry: object = None, reconnect: object = None,
                    sms_fallback_s: object = None, sms_test_every_s: object = None,
                    wifi: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The changes of `siaga devices configure`, as the gateway's PUT .../config takes them: only what
    is given (None: not given). The gateway checks the bounds (the button's own). wifi: (ssid,
    password) pairs, the whole list the button will try."""
    out: dict[str, Any] = {}
    if wifi:
        out["wifi"] = {"networks": [{"ssid": ssid, "password": password} for ssid, password in wifi]}
    if heartbeat_s is not None:
        out["heartbeat_s"] = _whole(heartbeat_s, "heartbeat-s")
    for name, value in (("retry", retry), ("reconnect", reconnect)):
        if value is not None:
            parts = str(value).split(",")
            if len(parts) != 2:
                raise Invalid(name, value, t("configure.backoff"))
            out[name] = {"first_ms": _whole(parts[0], name), "max_ms": _whole(parts[1], name)}
    sms = {k: _whole(v, "sms-" + k.replace("_", "-")) for k, v in (("fallback_s", sms_fallback_s),
                                                                   ("test_every_s", sms_test_every_s)) if v is not None}
    if sms:
        out["sms"] = sms
    if not out:
        raise UsageError(t("configure.nothing"), t("configure.nothing.hint"))
    return out


def _whole(value: object, field: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise Invalid(field, value, t("configure.whole_number")) from None


def configure(settings: Settings, device_id: str, changes: dict[str, Any], ui: Ui) -> int:
    """Send a button settings through the gateway (its remote configuration, docs/protocol.md §10)."""
    with GatewayClient.of(settings) as gw:
        gw.require(device_id)
        d = gw.configure(device_id, changes)
    ui.step(t("configure.sent", device=device_id, version=d["config"]["version"], keys=", ".join(sorted(changes))))
    if "wifi" in changes:  # the install log keeps the networks' names, never a password
        changes = {**changes, "wifi": [n["ssid"] for n in changes["wifi"]["networks"]]}
    Keystore(settings.state_dir).log("configure", device_id, **changes)
    return 0


def set_phone(settings: Settings, device_id: str, phone: str | None, ui: Ui) -> int:
    """Register a button's SIM number at the gateway (a new or replaced SIM), or remove it (None): the
    gateway takes the button's SMS from that number alone. The button's config keeps the gateway's
    number, which does not change with the button's SIM."""
    with GatewayClient.of(settings) as gw:
        gw.require(device_id)
        gw.update(device_id, {"phone": phone})
    ui.step(t("set_phone.now", device=device_id, phone=phone) if phone else t("set_phone.removed", device=device_id))
    Keystore(settings.state_dir).log("set-phone", device_id, phone=phone)
    return 0


def revoke(settings: Settings, device_id: str, ui: Ui) -> int:
    logins = BrokerLogins(settings.broker)
    with GatewayClient.of(settings) as gw:
        gw.require(device_id)
        changed = gw.revoke(device_id)
    ui.step(t("revoke.done" if changed else "revoke.already", device=device_id))
    if logins.managed:
        removed = logins.remove(device_id)
        logins.reload()
        ui.step(t("revoke.login_removed" if removed else "revoke.login_gone"))
    else:
        ui.warn(t("revoke.no_broker_section"))
    Keystore(settings.state_dir).forget(device_id)
    Keystore(settings.state_dir).log("revoke", device_id)
    return 0


def decommission(settings: Settings, device_id: str, port: str | None, ui: Ui) -> int:
    logins = BrokerLogins(settings.broker)
    with GatewayClient.of(settings) as gw:
        gw.require(device_id)
        changed = gw.decommission(device_id)
    ui.step(t("decommission.done" if changed else "decommission.already", device=device_id))
    if logins.managed:
        logins.remove(device_id)
        logins.reload()
        ui.step(t("decommission.login_removed"))
    keystore = Keystore(settings.state_dir)
    keystore.forget(device_id)
    if port:
        board = Board.connect(port, settings.baud)
        try:
            info = board.detect()
            if info.device_id != device_id:
                raise BoardError(t("decommission.wrong_board", port=port, found=info.device_id or
                                   t("board.not_provisioned"), device=device_id))
            unconfigure(board)
            ui.step(t("decommission.board_cleared", port=port))
        finally:
            board.close()
    keystore.log("decommission", device_id)
    return 0


def rotate_key(settings: Settings, device_id: str, port: str | None, self_test: bool, ui: Ui) -> int:
    keystore = Keystore(settings.state_dir)
    logins = BrokerLogins(settings.broker)
    with GatewayClient.of(settings) as gw:
        d = gw.require(device_id)
        if d.get("revoked") or d.get("decommissioned"):
            raise GatewayError(t("rotate.not_active", device=device_id, status=status(d)), t("rotate.not_active.hint"))
        new_secret = keystore.pending(device_id) or secrets.token_hex(devconfig.SECRET_BYTES)
        if port is None:
            gw.rotate(device_id, new_secret, "pending")
            keystore.save_pending(device_id, new_secret)
            keystore.log("rotate-pending", device_id)
            ui.step(t("rotate.pending", device=device_id))
            ui.step(t("rotate.next", device=device_id, path=keystore.keys))
            return 0
        board = Board.connect(port, settings.baud)
        try:
            _rotate_on_board(board, gw, logins, keystore, settings, device_id, new_secret, self_test, ui)
        finally:
            board.close()
    return 0


def _rotate_on_board(board: Board, gw: GatewayClient, logins: BrokerLogins, keystore: Keystore, settings: Settings,
                     device_id: str, new_secret: str, self_test: bool, ui: Ui) -> None:
    info = board.detect()
    profile = profile_for(info.platform)
    raw = board.read_file(CONFIG_PATH)
    try:
        old_cfg = json.loads(raw or b"")
    except ValueError:
        old_cfg = None
    if not isinstance(old_cfg, dict) or old_cfg.get("dev") != device_id:
        other = old_cfg.get("dev") if isinstance(old_cfg, dict) else None
        raise BoardError(t("rotate.wrong_board", port=board.name, found=other or t("board.not_provisioned"),
                           device=device_id), t("rotate.wrong_board.hint"))
    assert raw is not None
    old_secret, old_password = old_cfg["secret"], old_cfg["mqtt"].get("password", "")
    new_password = secrets.token_urlsafe(24)
    new_cfg = devconfig.with_new_keys(old_cfg, new_secret, new_password)

    def restore_board() -> None:
        if not board.repl.in_raw:
            board.enter()
        board.write_file(CONFIG_PATH, raw)

    def restore_login() -> None:
        logins.set(device_id, old_password)
        logins.reload()

    with Rollback(ui) as tx:
        # Pending first: both keys verify while the board is being rewritten.
        gw.rotate(device_id, new_secret, "pending")
        tx.add(t("step.new_key"), lambda: gw.rotate(device_id, old_secret, "immediate"))
        board.write_file(CONFIG_PATH, devconfig.render(new_cfg))
        tx.add(t("step.new_config"), restore_board)
        ui.step(t("rotate.written", path=CONFIG_PATH))
        if logins.managed:
            logins.set(device_id, new_password)
            tx.add(t("step.new_password"), restore_login)
            logins.reload()
            ui.step(t("rotate.password_in_force"))
        gw.rotate(device_id, new_secret, "immediate")
        ui.step(t("rotate.key_in_force"))
        board.reboot()
        if self_test:
            ui.step(t("rotate.rebooting"))
            selftest.run(board, gw, device_id, broker=f"{settings.devices.broker_host}:{settings.devices.broker_port}",
                         timeout_s=settings.selftest_timeout_s, ui=ui, console_trigger=True,
                         ask_technician=profile.name != UNIX)
            ui.step(t("rotate.selftest_passed"))
        tx.commit()
    keystore.forget(device_id)
    keystore.log("rotate", device_id)


def check_format(fmt: str, allowed: tuple[str, ...]) -> str:
    if fmt not in allowed:
        raise UsageError(t("format.unknown", format=repr(fmt)), t("valid.one_of", choices=", ".join(allowed)))
    return fmt


# ---- firmware updates over the air (docs/protocol.md §11) ---------------------------------------------

ROLLOUT_STATES = ("offered", "downloading", "installed", "updated", "failed", "withdrawn")


def explained(detail: str) -> str:
    """A reason word a button or the gateway gave, with what it means: "selftest (the new firmware
    did not pass ...)"; any other detail as it is."""
    why = reason_text(detail)
    return f"{detail} ({why})" if detail and why != detail else detail


def publish(settings: Settings, path: Path, ui: Ui) -> int:
    """Upload a signed bundle to the gateway, which checks it as a button would and keeps it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(t("publish.unreadable", path=path, error=exc.strerror)) from None
    if len(data) > BUNDLE_MAX_BYTES:
        raise BundleRefused(t("publish.refused", reason="too_large", why=reason_text("too_large")),
                            t("publish.too_large.hint", size=len(data), max=BUNDLE_MAX_BYTES), "too_large")
    with GatewayClient.of(settings) as gw:
        new, bundle = gw.publish_firmware(data)
    files = bundle.get("files")  # how many (a list of them from a gateway that lists them)
    ui.say(t("publish.done" if new else "publish.known", id=bundle.get("id"), version=bundle.get("version"),
             board=bundle.get("board"), files=files if isinstance(files, int) else len(files or ()),
             size=bundle.get("size", len(data))))
    ui.detail(t("publish.next", version=bundle.get("version")))
    return 0


def _counts(r: dict[str, Any]) -> str:
    counts = r.get("counts") or {}
    return " ".join(f"{state}={counts.get(state, 0)}" for state in ROLLOUT_STATES)


def update(settings: Settings, version: str, percent: int, max_failed_percent: int | None, resume: bool,
           ui: Ui, *, allow_downgrade: bool = False) -> int:
    """Start the rollout of a published version to `percent` of the buttons it is for, or widen the
    one under way; `resume` resumes one the gateway halted. The gateway refuses a version older than
    one a button it would reach runs, unless `allow_downgrade`."""
    with GatewayClient.of(settings) as gw:
        new, r = gw.start_rollout(version, percent, max_failed_percent=max_failed_percent, resume=resume,
                                  allow_downgrade=allow_downgrade)
    ui.say(t("update.started" if new else "update.resumed" if resume else "update.widened", id=r.get("id"),
             version=r.get("version", version), percent=r.get("percent", percent), targeted=r.get("targeted", "?"),
             eligible=r.get("eligible", "?"), max_failed=r.get("max_failed_percent", "?")))
    ui.detail(t("update.follow", id=r.get("id")))
    return 0


def halted_text(r: dict[str, Any]) -> str:
    """Why a rollout stopped, in the reader's language, from the gateway's code and the rollout's
    numbers: "2 of 5 buttons failed, more than 20%", "cancelled"."""
    reason = r.get("halted_reason")
    counts = r.get("counts") or {}
    if reason == "failures":
        of = _number(r.get("targeted")) - _number(counts.get("withdrawn"))
        return t("rollout.reason.failures", failed=_number(counts.get("failed")), of=of,
                 max_failed=r.get("max_failed_percent", "?"))
    if reason == "cancelled":
        return t("rollout.reason.cancelled")
    return str(reason or "-")


def _number(value: Any) -> int:
    return value if type(value) is int else 0


def state_text(r: dict[str, Any]) -> str:
    """A rollout's state in the reader's words (the gateway's word when it is one this CLI does not know)."""
    state = str(r.get("state") or "-")
    texts = {"active": t("rollout.state.active"), "halted": t("rollout.state.halted"),
             "done": t("rollout.state.done"), "cancelled": t("rollout.state.cancelled")}
    return texts.get(state, state)


def rollouts_table(rollouts: list[dict[str, Any]]) -> str:
    head = ("ID", t("table.version"), "%", t("table.state"), t("table.targeted"), t("table.counts"))
    lines: list[tuple[Any, ...]] = [head]
    for r in rollouts:
        lines.append((r.get("id"), r.get("version"), r.get("percent"), state_text(r),
                      f"{r.get('targeted', 0)}/{r.get('eligible', 0)}", _counts(r)))
    return _columns(lines)


def list_rollouts(settings: Settings, fmt: str, ui: Ui) -> int:
    with GatewayClient.of(settings) as gw:
        found = gw.rollouts()
    if fmt == "json":
        ui.say(json.dumps(found, indent=1))
        return 0
    if not found:
        ui.say(t("rollouts.none"))
        return 0
    ui.say(rollouts_table(found))
    for r in found:
        if r.get("state") == "halted":
            ui.say(t("rollouts.halted_line", id=r.get("id"), reason=halted_text(r)))
    return 0


def show_rollout(settings: Settings, rollout_id: int, fmt: str, ui: Ui) -> int:
    with GatewayClient.of(settings) as gw:
        r = gw.rollout(rollout_id)
    if fmt == "json":
        ui.say(json.dumps(r, indent=1))
        return 0
    ui.say(t("rollout.head", id=r.get("id"), version=r.get("version"), percent=r.get("percent"),
             state=state_text(r), targeted=r.get("targeted", 0), eligible=r.get("eligible", 0),
             max_failed=r.get("max_failed_percent", "?"), created=_iso(r.get("created_ms"))))
    if r.get("state") == "halted":
        ui.say("  " + t("rollout.halted_reason", reason=halted_text(r)))
    elif r.get("state") == "cancelled" and r.get("halted_reason") == "failures":
        ui.say("  " + t("rollout.cancelled_after_halt", reason=halted_text(r)))
    ui.say("  " + _counts(r))
    devices = r.get("devices") or []
    if not devices:
        ui.say("  " + t("rollout.no_devices"))
        return 0
    now_ms = int(time.time() * 1000)
    lines: list[tuple[Any, ...]] = [(t("table.device"), t("table.state"), t("table.changed"), t("table.detail"))]
    for dev in sorted(devices, key=lambda x: str(x.get("device_id"))):
        lines.append((dev.get("device_id"), dev.get("state"), _ago(dev.get("updated_ms"), now_ms),
                      explained(str(dev.get("detail") or "")) or "-"))
    ui.say(_columns(lines))
    return 0


def cancel_rollout(settings: Settings, rollout_id: int, ui: Ui) -> int:
    with GatewayClient.of(settings) as gw:
        r = gw.cancel_rollout(rollout_id)
    ui.step(t("rollout.cancelled", id=rollout_id, version=r.get("version"), state=state_text(r)))
    return 0
