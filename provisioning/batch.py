"""Batch pre-staging from a CSV file: many devices registered at the gateway and the broker in one
go, without boards, with their labels printed ahead of the installation day. Each identity is kept
in the laptop's keystore until `siaga provision --port ... --id <id>` writes it to a board.

The CSV has a header row. Columns (any order; unknown columns are refused so typos show):

    id        device id; empty: the next free number after --id-prefix
    latlon    "-6.175392, 106.827153" -- or the two columns lat and lon
    address   street address
    area      administrative-area code (kelurahan or kecamatan)
    site      optional: buttons of one site report one incident
    notes     optional: install notes
    types     optional: fitted type buttons, "medical fire"
    kind      optional: what the SOS button reports (general)

Every row is checked before anything is registered, and all problems are reported at once with
their row numbers. Registration is all or nothing.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

from . import label, validate
from .brokerlogins import BrokerLogins
from .devconfig import DeviceOptions, Identity
from .errors import Invalid, UsageError
from .gateway import GatewayClient
from .keystore import Keystore, StagedDevice
from .provision import hold_seconds, next_id
from .settings import Settings
from .text import t
from .ui import Rollback, Ui

COLUMNS = {"id", "lat", "lon", "latlon", "address", "area", "site", "notes", "types", "kind"}
MAX_ROWS = 2000


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    device_id: str | None
    location: validate.Location
    options: DeviceOptions


def parse(text: str, settings: Settings) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))  # spreadsheets often add a BOM
    header = {(h or "").strip().lower() for h in reader.fieldnames or []}
    unknown = header - COLUMNS
    if not reader.fieldnames:
        raise UsageError(t("batch.empty"), t("batch.empty.hint"))
    if unknown:
        raise UsageError(t("batch.unknown_columns", columns=", ".join(sorted(unknown))),
                         t("batch.unknown_columns.hint", columns=", ".join(sorted(COLUMNS))))
    rows: list[Row] = []
    problems: list[str] = []
    for n, raw in enumerate(reader, start=2):
        cells = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        if not any(cells.values()):
            continue
        try:
            loc = validate.location(lat=cells.get("lat"), lon=cells.get("lon"), latlon_text=cells.get("latlon"),
                                    address_text=cells.get("address"), area=cells.get("area"))
            options = DeviceOptions(validate.kind(cells.get("kind") or settings.devices.kind),
                                    validate.type_buttons(cells.get("types")) if cells.get("types")
                                    else settings.devices.types,
                                    validate.site(cells.get("site")), validate.notes(cells.get("notes")))
            dev_id = validate.device_id(cells["id"]) if cells.get("id") else None
            rows.append(Row(n, dev_id, loc, options))
        except Invalid as exc:
            problems.append(t("batch.row_problem", row=n, message=exc.message, hint=exc.hint))
    if len(rows) > MAX_ROWS:
        problems.append(t("batch.too_many_rows", rows=len(rows), most=MAX_ROWS))
    ids = [r.device_id for r in rows if r.device_id]
    problems += [t("batch.duplicate_id", device=d) for d in sorted({d for d in ids if ids.count(d) > 1})]
    if problems:
        raise UsageError(t("batch.problems", count=len(problems)) + "\n  " + "\n  ".join(problems))
    if not rows:
        raise UsageError(t("batch.no_devices"))
    return rows


def stage(settings: Settings, csv_path: Path, id_prefix: str | None, ui: Ui) -> list[StagedDevice]:
    try:
        text = Path(csv_path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(t("batch.unreadable", path=csv_path, error=exc.strerror)) from None
    rows = parse(text, settings)
    keystore = Keystore(settings.state_dir)
    logins = BrokerLogins(settings.broker)
    if not logins.managed:
        ui.warn(t("batch.no_broker_section"))
    prefix = id_prefix or settings.devices.id_prefix
    staged: list[StagedDevice] = []
    with GatewayClient.of(settings) as gw:
        taken = {d["id"] for d in gw.devices()}
        ui.step(t("provision.gateway_reachable", url=settings.gateway_url, devices=len(taken)))
        clash = sorted(r.device_id for r in rows if r.device_id in taken)
        if clash:
            raise UsageError(t("batch.clash", devices=", ".join(clash)), t("batch.clash.hint"))
        if any(r.device_id is None for r in rows) and not prefix:
            raise UsageError(t("batch.no_id"), t("batch.no_id.hint"))
        with Rollback(ui) as tx, ui.bar(len(rows), t("batch.registering", count=len(rows))) as advance:
            for row in rows:
                device_id = row.device_id or next_id(prefix or "", taken)
                taken.add(device_id)
                identity = Identity.new(device_id)
                dev = StagedDevice(device_id, identity.secret_hex, identity.mqtt_password, row.location,
                                   row.options.site, row.options.notes, row.options.kind, row.options.types,
                                   int(time.time() * 1000))
                keystore.save_staged(dev)
                tx.add(t("step.keystore_entry", device=device_id), lambda d=device_id: keystore.forget(d))
                logins.set(device_id, identity.mqtt_password)
                tx.add(t("step.broker_login_of", device=device_id), lambda d=device_id: logins.remove(d))
                gw.register(device_id, identity.secret_hex, row.location, row.options.site)
                tx.add(t("step.gateway_registration_of", device=device_id), lambda d=device_id: gw.decommission(d),
                       f"siaga devices decommission {device_id}")
                staged.append(dev)
                advance(1)
            # Removed logins take effect at a reload too: reload once after the rollback's removals.
            tx.add(t("step.broker_reload"), logins.reload)
            logins.reload()
            tx.commit()
    for dev in staged:
        label.save(keystore.label_path(dev.device_id), dev.device_id, support=settings.support,
                   organisation=settings.organisation, location=dev.location, hold_s=hold_seconds(settings))
        keystore.log("staged", dev.device_id, location=dev.location.device_loc(), site=dev.site, notes=dev.notes)
    ui.step(t("batch.staged", count=len(staged), path=keystore.labels))
    return staged


def example_csv() -> str:
    """A small example, for the docs and `--batch-example`."""
    rows = [("jkt-gambir-0101", "-6.175392, 106.827153", "Jl. Medan Merdeka Barat 12", "31.71.01.1001",
             "pole by the bus stop"),
            ("", "-6.1702, 106.8240", "Pasar Baru, Jl. Pasar Baru 1", "31.71.01.1003", "market entrance, east")]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["id", "latlon", "address", "area", "notes"])
    w.writerows(rows)
    return out.getvalue()

