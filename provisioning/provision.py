"""`siaga provision`: a blank board on USB becomes a registered, located, tested button.

Steps, cheapest and read-only first, so that most failures leave nothing to undo:

1. board: open the port, enter the raw REPL, read MicroPython's version, platform and .mpy format;
2. gateway: reachable with the admin token; pick the device id;
3. Wi-Fi: the board joins the network with the credentials given (boards with a radio);
4. firmware: sent to the board, only the files whose sha256 differs, as .mpy where possible;
5. identity: broker login and gateway registration (or a pre-staged identity);
6. config: written and verified; the firmware's state folder cleared for the new identity;
7. reboot and self-test: test alarm stored at the gateway, its ack back on the board;
8. label and install log.

Steps 5-7 form one transaction (ui.Rollback): if any of them fails, the config is taken off the
board, the gateway registration is decommissioned and the broker login removed, so no
half-registered device remains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import devconfig, label, selftest
from .board import Board, BoardInfo, find_port
from .brokerlogins import BrokerLogins
from .devconfig import DeviceOptions, Identity
from .errors import BoardError, UsageError
from .firmware import (
    CA_PATH,
    CONFIG_PATH,
    LIB_DIR,
    STATE_DIR,
    BoardProfile,
    build_bundle,
    firmware_dir,
    plan_sync,
    profile_for,
)
from .gateway import GatewayClient
from .keystore import Keystore, StagedDevice
from .settings import Settings, Wifi
from .text import t
from .ui import Rollback, Ui
from .validate import Location

UNIX = "unix"
OTA_FOLDERS = ("ota", "slot")  # lib/siagaboot.py: the boot state and staging, and the A/B slots


@dataclass(frozen=True, slots=True)
class Request:
    port: str | None
    device_id: str | None
    id_prefix: str | None
    location: Location | None          # None: the staged record's
    options: DeviceOptions | None      # None: the staged record's, or the config's defaults
    wifi: Wifi | None
    self_test: bool = True
    force: bool = False
    board_type: str | None = None
    label_path: Path | None = None
    use_mpy: bool | None = None


@dataclass(frozen=True, slots=True)
class Result:
    device_id: str
    files_sent: int
    files_total: int
    bytes_sent: int
    compiled: bool
    selftest: selftest.SelfTestResult | None
    seconds: float
    label: Path


def next_id(prefix: str, taken: set[str]) -> str:
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)$")
    numbers = [int(m.group(1)) for m in map(pattern.match, taken) if m]
    return f"{prefix}-{max(numbers, default=0) + 1:04d}"


def hold_seconds(settings: Settings) -> float:
    """What the label tells residents: the long press plus half a second to spare, rounded up."""
    long_ms = settings.devices.button.get("long_ms", 1500)
    return float(max(2, -(-(long_ms + 500) // 1000)))


def sync_firmware(board: Board, profile: BoardProfile, info: BoardInfo, settings: Settings, ui: Ui,
                  use_mpy: bool | None = None) -> tuple[int, int, int, bool]:
    """Send the firmware files that differ; returns (files sent, files in all, bytes sent, compiled)."""
    fw_dir = settings.firmware_dir or firmware_dir()
    bundle = build_bundle(profile, fw_dir, info.mpy_version, use_mpy=settings.use_mpy if use_mpy is None else use_mpy)
    # What provisioning writes is what the board runs next: the boot state of updates over the air
    # (lib/siagaboot.py) would otherwise keep starting a slot an earlier update installed, and the
    # slots and a staged download only take flash.
    for folder in OTA_FOLDERS:
        board.wipe_folder(folder)
    if bundle.note:
        ui.warn(bundle.note)
    on_board = board.hashes([f.path for f in bundle.files] + list(bundle.stale))
    plan = plan_sync(bundle, on_board, board.listdir(LIB_DIR))
    if info.free_bytes is not None and plan.bytes_to_send > info.free_bytes:
        raise BoardError(t("firmware.no_room", free=info.free_bytes // 1024, needed=plan.bytes_to_send // 1024),
                         t("firmware.no_room.hint"))
    kind = ".mpy" if bundle.compiled else t("firmware.source")
    if not plan.send and not plan.remove:
        ui.step(t("firmware.up_to_date", version=bundle.version, files=len(bundle.files), kind=kind))
        return 0, len(bundle.files), 0, bundle.compiled
    board.makedirs(bundle.folders)
    with ui.bar(plan.bytes_to_send, t("firmware.sending", files=len(plan.send))) as advance:
        for f in plan.send:
            board.write_file(f.path, f.data, advance)
    board.remove(plan.remove)
    ui.step(t("firmware.sent", version=bundle.version, sent=len(plan.send), files=len(bundle.files),
              kib=f"{plan.bytes_to_send / 1024:.1f}", kind=kind, unchanged=plan.unchanged, removed=len(plan.remove)))
    return len(plan.send), len(bundle.files), plan.bytes_to_send, bundle.compiled


def write_config(board: Board, cfg: dict, settings: Settings) -> None:
    if settings.devices.ca_file is not None:
        try:
            ca = settings.devices.ca_file.read_bytes()
        except OSError as exc:
            raise UsageError(t("config.ca_unreadable", path=settings.devices.ca_file, error=exc.strerror)) from None
        board.write_file(CA_PATH, ca)
    board.write_file(CONFIG_PATH, devconfig.render(cfg))


def unconfigure(board: Board) -> None:
    """Take the identity off the board (after a failed self-test, or at decommissioning)."""
    if not board.repl.in_raw:
        board.enter()
    board.remove([CONFIG_PATH, CONFIG_PATH + ".part", CA_PATH])
    board.wipe_folder(STATE_DIR)


def provision(settings: Settings, req: Request, ui: Ui) -> Result:
    keystore = Keystore(settings.state_dir)
    logins = BrokerLogins(settings.broker)
    if not logins.managed:
        ui.warn(t("provision.no_broker_section"))
    staged = keystore.staged(req.device_id) if req.device_id else None
    location = req.location or (staged.location if staged else None)
    if location is None:
        raise UsageError(t("provision.no_location"), t("provision.no_location.hint"))
    options = req.options or (DeviceOptions(staged.kind, staged.types, staged.site, staged.notes) if staged else
                              DeviceOptions(settings.devices.kind, settings.devices.types))
    wifi = req.wifi or settings.wifi

    port_name = req.port or find_port()
    ui.step(t("provision.connecting", port=port_name))
    board = Board.connect(port_name, settings.baud)
    try:
        info = board.detect()
        profile = profile_for(info.platform, req.board_type)
        free = t("provision.board_free", kib=info.free_bytes // 1024) if info.free_bytes is not None else ""
        ui.step(t("provision.board", version=info.version_text, title=profile.title,
                  machine=info.machine or info.platform, mpy=info.mpy_version or t("provision.unknown"), free=free))
        if info.device_id and not req.force and info.device_id != (staged.device_id if staged else None):
            raise UsageError(t("provision.already_provisioned", device=info.device_id),
                             t("provision.already_provisioned.hint", device=info.device_id, port=port_name))
        if profile.name != UNIX and wifi is None:
            raise UsageError(t("provision.no_wifi"), t("provision.no_wifi.hint"))
        with GatewayClient.of(settings) as gw:
            taken = {d["id"] for d in gw.devices()}
            ui.step(t("provision.gateway_reachable", url=settings.gateway_url, devices=len(taken)))
            device_id = _choose_id(req, staged, taken, settings)
            if wifi is not None and info.has_wifi:
                joined = board.wifi_check(wifi.ssid, wifi.password, settings.wifi_timeout_s)
                signal = f", {joined.rssi} dBm" if joined.rssi is not None else ""
                ui.step(t("provision.wifi_joined", ssid=repr(wifi.ssid), seconds=f"{joined.elapsed_ms / 1000:.1f}",
                          signal=signal))
            elif wifi is not None:
                ui.step(t("provision.wifi_no_radio"))
            sent, total, sent_bytes, compiled = sync_firmware(board, profile, info, settings, ui, req.use_mpy)
            result = _register_and_test(board, gw, logins, keystore, settings, req, ui, device_id=device_id,
                                        staged=staged, location=location, options=options, wifi=wifi,
                                        profile=profile)
        seconds = ui.elapsed()
        label_path = req.label_path or keystore.label_path(device_id)
        label.save(label_path, device_id, support=settings.support, organisation=settings.organisation,
                   location=location, hold_s=hold_seconds(settings))
        keystore.log("install", device_id, port=port_name, board=profile.name, micropython=info.version_text,
                     board_uid=info.unique_id, location=location.device_loc(), site=options.site, notes=options.notes,
                     phone=options.phone,
                     files_sent=sent, selftest=None if result is None else {
                         "seq": result.seq, "firmware": result.firmware, "total_s": round(result.total_s, 2),
                         "acked_s": round(result.acked_s, 3)},
                     seconds=round(seconds, 2))
        if result is not None:
            ui.step(t("provision.passed", device=device_id, seconds=f"{seconds:.1f}"))
        else:
            ui.step(t("provision.done_untested", device=device_id))
        ui.step(t("provision.label", path=label_path))
        return Result(device_id, sent, total, sent_bytes, compiled, result, seconds, label_path)
    finally:
        board.close()


def _choose_id(req: Request, staged: StagedDevice | None, taken: set[str], settings: Settings) -> str:
    if staged is not None:
        if staged.device_id not in taken:
            raise UsageError(t("provision.staged_unregistered", device=staged.device_id),
                             t("provision.staged_unregistered.hint",
                               path=Keystore(settings.state_dir).keys / (staged.device_id + ".json")))
        return staged.device_id
    if req.device_id:
        if req.device_id in taken:
            raise UsageError(t("provision.id_taken", device=req.device_id), t("provision.id_taken.hint"))
        return req.device_id
    prefix = req.id_prefix or settings.devices.id_prefix
    if not prefix:
        raise UsageError(t("provision.no_id"), t("provision.no_id.hint"))
    return next_id(prefix, taken)


def _register_and_test(board: Board, gw: GatewayClient, logins: BrokerLogins, keystore: Keystore, settings: Settings,
                       req: Request, ui: Ui, *, device_id: str, staged: StagedDevice | None, location: Location,
                       options: DeviceOptions, wifi: Wifi | None,
                       profile: BoardProfile) -> selftest.SelfTestResult | None:
    identity = (Identity(staged.device_id, staged.secret_hex, staged.mqtt_password) if staged is not None
                else Identity.new(device_id))
    ca_path = CA_PATH if profile.name == UNIX else "/" + CA_PATH
    cfg = devconfig.build(identity, location, settings.devices, options, wifi, ca_path=ca_path,
                          board=profile.name)  # checked first, against this board's limits
    with Rollback(ui) as tx:
        if staged is not None:
            if req.location is not None and req.location != staged.location:
                gw.update(device_id, {"lat": location.lat, "lon": location.lon, "address": location.address,
                                      "area": location.area})
            if options.phone is not None:  # a staged identity gets its SIM's number when the board is built
                gw.update(device_id, {"phone": options.phone})
            ui.step(t("provision.identity_staged", device=device_id))
        else:
            logins.set(device_id, identity.mqtt_password)
            tx.add(t("step.broker_login"), lambda: (logins.remove(device_id), logins.reload()),
                   f"siaga broker remove-user --passwd <password file> {device_id}")
            logins.reload()
            # Undo first: a registration whose answer is lost (a timeout) may still have happened.
            tx.add(t("step.gateway_registration"),
                   lambda: gw.device(device_id) is not None and gw.decommission(device_id),
                   f"siaga devices decommission {device_id}")
            gw.register(device_id, identity.secret_hex, location, options.site, options.phone)
            ui.step(t("provision.identity_registered_both" if logins.managed else "provision.identity_registered",
                      device=device_id))
        tx.add(t("step.board_config"), lambda: unconfigure(board))
        write_config(board, cfg, settings)
        board.wipe_folder(STATE_DIR)
        board.makedirs([STATE_DIR])
        ui.step(t("provision.config_written", path=CONFIG_PATH, size=len(devconfig.render(cfg))))
        if "sms" in cfg:
            ui.step(t("provision.sms_path", phone=options.phone, gateway=cfg["sms"]["gateway"],
                      fallback=cfg["sms"]["fallback_s"], every=cfg["sms"]["test_every_s"]))
        result = None
        board.reboot()
        ui.step(t("provision.rebooting"))
        if req.self_test:
            result = selftest.run(board, gw, device_id, broker=f"{settings.devices.broker_host}:"
                                  f"{settings.devices.broker_port}", timeout_s=settings.selftest_timeout_s, ui=ui,
                                  console_trigger=True, ask_technician=profile.name != UNIX)
        tx.commit()
    if staged is not None:
        keystore.forget(device_id)  # the board has the secret now; this copy is no longer needed
    return result
