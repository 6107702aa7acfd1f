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
from .gateway import GatewayClient
from .keystore import Keystore
from .provision import UNIX, unconfigure
from .settings import Settings
from .ui import Rollback, Ui
from .validate import Location

CSV_FIELDS = ("id", "status", "faults", "last_seen", "battery_mv", "rssi", "firmware", "lat", "lon", "address",
              "area", "site", "key_pending", "created")


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
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def row(d: dict[str, Any]) -> dict[str, Any]:
    """One device as a flat record (CSV and the table)."""
    return {"id": d["id"], "status": status(d), "faults": " ".join(d.get("faults") or []),
            "last_seen": _iso(d.get("last_seen_ms")), "battery_mv": d.get("battery_mv") or "",
            "rssi": d.get("rssi") if d.get("rssi") is not None else "", "firmware": d.get("firmware") or "",
            "lat": "" if d.get("lat") is None else f"{d['lat']:.6f}",
            "lon": "" if d.get("lon") is None else f"{d['lon']:.6f}", "address": d.get("address", ""),
            "area": d.get("area", ""), "site": d.get("site") or "",
            "key_pending": "yes" if d.get("key_pending") else "",
            "created": _iso(d.get("created_ms"))}


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
    head = ("ID", "STATUS", "LAST SEEN", "BATTERY", "FW", "LOCATION")
    lines = [head]
    for d in devices:
        st = status(d) + (f" ({', '.join(d['faults'])})" if d.get("faults") and status(d) == "online" else "")
        bat = f"{d['battery_mv'] / 1000:.2f} V" if d.get("battery_mv") else "-"
        where = ", ".join(x for x in (d.get("address", ""), d.get("area", "")) if x)
        if d.get("lat") is not None:
            where += f" ({d['lat']:.5f}, {d['lon']:.5f})"
        lines.append((d["id"], st, _ago(d.get("last_seen_ms"), now_ms), bat, d.get("firmware") or "-", where or "-"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + str(line[-1])
                     for line in lines)


def list_devices(settings: Settings, fmt: str, out: Path | None, ui: Ui) -> int:
    with GatewayClient.of(settings) as gw:
        devices = gw.devices()
    text = {"table": to_table, "csv": to_csv, "geojson": to_geojson,
            "json": lambda ds: json.dumps(ds, indent=1) + "\n"}[fmt](devices)
    if out is not None:
        out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        ui.say(f"wrote {len(devices)} devices to {out}")
    else:
        ui.say(text.rstrip("\n"))
    return 0


def show(settings: Settings, device_id: str, ui: Ui) -> int:
    with GatewayClient.of(settings) as gw:
        d = gw.require(device_id)
        alarms = gw.alarms(device_id, limit=5)
    now_ms = int(time.time() * 1000)
    r = row(d)
    ui.say(f"{d['id']}: {status(d)}" + (f", faults: {r['faults']}" if r["faults"] else ""))
    ui.say(f"  location   {d.get('address') or '-'} / {d.get('area') or '-'} ({r['lat'] or '?'}, {r['lon'] or '?'})"
           + (f", site {d['site']}" if d.get("site") else ""))
    ui.say(f"  last seen  {_ago(d.get('last_seen_ms'), now_ms)} {r['last_seen']}")
    ui.say(f"  battery    {r['battery_mv'] or '-'} mV   signal {r['rssi'] or '-'} dBm   firmware {r['firmware'] or '-'}"
           f"   tamper {'open' if d.get('tamper') else 'closed' if d.get('tamper') is not None else '-'}")
    key = "rotation pending (the board has not used the new key yet)" if d.get("key_pending") else "current"
    ui.say(f"  key        {key}")
    ui.say(f"  registered {r['created']}")
    for a in alarms:
        ui.say(f"  alarm seq={a['seq']} {a['kind']}{' (test)' if a.get('test') else ''} {a['state']} "
               f"received {_iso(a.get('received_ms'))}")
    for entry in Keystore(settings.state_dir).history(device_id)[-5:]:
        ui.say(f"  log        {entry['at']} {entry['event']}" + (f" — {entry['notes']}" if entry.get("notes") else ""))
    return 0


def location_fields(*, latlon: object = None, lat: object = None, lon: object = None, address: object = None,
                    area: object = None, site: object = None) -> dict[str, Any]:
    """The corrections of `siaga devices set-location`, checked, as the gateway's PATCH takes them:
    only what is given (None: not given); `site=""` removes the site."""
    fields: dict[str, Any] = {}
    latlon, lat, lon = (v if v not in (None, "") else None for v in (latlon, lat, lon))
    if latlon is not None:
        if lat is not None or lon is not None:
            raise Invalid("location", latlon, "either --latlon or --lat and --lon, not both")
        lat_e6, lon_e6 = validate.latlon(latlon)
    elif lat is not None or lon is not None:
        if lat is None or lon is None:
            raise Invalid("location", lat if lat is not None else lon, "both --lat and --lon (or --latlon)")
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
        raise UsageError("nothing to change", "give --latlon (or --lat and --lon), --address, --area or --site")
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
    ui.step(f"gateway: {device_id} is now at {where}" + (f", site {d['site']}" if d.get("site") else ", no site"))
    keystore = Keystore(settings.state_dir)
    staged = keystore.staged(device_id)
    if staged is not None:
        loc = staged.location
        lat_e6 = round(fields["lat"] * 1e6) if "lat" in fields else loc.lat_e6
        lon_e6 = round(fields["lon"] * 1e6) if "lon" in fields else loc.lon_e6
        keystore.save_staged(dataclasses.replace(
            staged, location=Location(lat_e6, lon_e6, fields.get("address", loc.address), fields.get("area", loc.area)),
            site=fields.get("site", staged.site)))
        ui.step(f"staged {device_id}: corrected on this laptop too; the board gets the new place at the pole")
    elif fields.keys() & {"lat", "lon", "address", "area"}:
        ui.detail("the button's own alarms carry the place written into it when it was provisioned; the gateway's "
                  "registry (list, export, fault reports) has the new one")
    keystore.log("set-location", device_id, **fields)
    return 0


def revoke(settings: Settings, device_id: str, ui: Ui) -> int:
    logins = BrokerLogins(settings.broker)
    with GatewayClient.of(settings) as gw:
        gw.require(device_id)
        changed = gw.revoke(device_id)
    ui.step(f"gateway: {device_id} {'revoked' if changed else 'was already revoked'}; its messages are refused")
    if logins.managed:
        removed = logins.remove(device_id)
        logins.reload()
        ui.step(f"broker: login {'removed' if removed else 'was already gone'}; the broker reloaded and drops "
                "the device's connection")
    else:
        ui.warn("no [broker] section: the broker login was not removed")
    Keystore(settings.state_dir).forget(device_id)
    Keystore(settings.state_dir).log("revoke", device_id)
    return 0


def decommission(settings: Settings, device_id: str, port: str | None, ui: Ui) -> int:
    logins = BrokerLogins(settings.broker)
    with GatewayClient.of(settings) as gw:
        gw.require(device_id)
        changed = gw.decommission(device_id)
    ui.step(f"gateway: {device_id} {'decommissioned' if changed else 'was already decommissioned'} (history kept)")
    if logins.managed:
        logins.remove(device_id)
        logins.reload()
        ui.step("broker: login removed")
    keystore = Keystore(settings.state_dir)
    keystore.forget(device_id)
    if port:
        board = Board.connect(port, settings.baud)
        try:
            info = board.detect()
            if info.device_id != device_id:
                raise BoardError(f"the board on {port} is {info.device_id or 'not provisioned'}, not {device_id}; "
                                 "it was left as it is")
            unconfigure(board)
            ui.step(f"board on {port}: config and state removed")
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
            raise GatewayError(f"{device_id} is {status(d)}; a revoked device gets no new key",
                               "provision the board as a new device instead")
        new_secret = keystore.pending(device_id) or secrets.token_hex(devconfig.SECRET_BYTES)
        if port is None:
            gw.rotate(device_id, new_secret, "pending")
            keystore.save_pending(device_id, new_secret)
            keystore.log("rotate-pending", device_id)
            ui.step(f"gateway: new key for {device_id} is pending; the old key keeps working until the board has "
                    "the new one")
            ui.step(f"next: plug the board in and run `siaga devices rotate-key {device_id} --port <port>`; the new "
                    f"key waits in {keystore.keys}")
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
        raise BoardError(f"the board on {board.name} is {other or 'not provisioned'}, not {device_id}",
                         "plug in the right board; nothing was changed")
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
        tx.add("new key at the gateway", lambda: gw.rotate(device_id, old_secret, "immediate"))
        board.write_file(CONFIG_PATH, devconfig.render(new_cfg))
        tx.add("new config on the board", restore_board)
        ui.step(f"board: new key and broker password written to {CONFIG_PATH} and verified")
        if logins.managed:
            logins.set(device_id, new_password)
            tx.add("new broker password", restore_login)
            logins.reload()
            ui.step("broker: new password in force; the old one is refused")
        gw.rotate(device_id, new_secret, "immediate")
        ui.step("gateway: new key in force; messages signed with the old key are refused")
        board.reboot()
        if self_test:
            ui.step("board: rebooting")
            selftest.run(board, gw, device_id, broker=f"{settings.devices.broker_host}:{settings.devices.broker_port}",
                         timeout_s=settings.selftest_timeout_s, ui=ui, console_trigger=True,
                         ask_technician=profile.name != UNIX)
            ui.step("self-test passed with the new key")
        tx.commit()
    keystore.forget(device_id)
    keystore.log("rotate", device_id)


def check_format(fmt: str, allowed: tuple[str, ...]) -> str:
    if fmt not in allowed:
        raise UsageError(f"unknown format {fmt!r}", "one of " + ", ".join(allowed))
    return fmt
