"""The provisioning tool's pure parts: validators, the raw-REPL protocol values and conversation (on
a scripted port), the firmware sync plan, the device config, CSV parsing, exports and the label."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from siaga.provisioning import batch, commands, devconfig, fleet, label, settings, validate
from siaga.provisioning.board import BoardInfo
from siaga.provisioning.errors import EXIT_USAGE, GatewayError, Invalid, NoBoardError, NoMicroPythonError, UsageError
from siaga.provisioning.firmware import PROFILES, Bundle, FirmwareFile, build_bundle, firmware_dir, plan_sync
from siaga.provisioning.gateway import GatewayClient
from siaga.provisioning.keystore import Keystore, StagedDevice
from siaga.provisioning.rawrepl import ExecReply, RawPasteReply, RawRepl, find_banner
from siaga.provisioning.settings import DeviceDefaults, TokenSource, Wifi
from siaga.provisioning.ui import Ui
from siagafw.config import load_config
from tests.support.receiver import Answer, HttpReceiver, Request

# ------------------------------------------------------------------------------------------ validators


@pytest.fixture(autouse=True)
def _english(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the tool's English messages (its default is Bahasa Indonesia)."""
    monkeypatch.setenv("SIAGA_LANG", "en")


@pytest.mark.parametrize(("text", "e6"), [
    ("-6.175392", -6175392),
    ("-6,175392", -6175392),          # decimal comma
    ("6.175392 S", -6175392),
    ("S 6.175392", -6175392),
    ("6°10'31.41\"S", -6175392),      # degrees, minutes, seconds
    ("−6.1753925", -6175392),         # Unicode minus; rounded half to even at 1e-6
    (-6.175392, -6175392),
    ("0.0000005", 0),
])
def test_latitude_accepts_what_map_apps_show(text: object, e6: int) -> None:
    assert validate.latitude(text) == e6


@pytest.mark.parametrize(("text", "hint"), [
    ("106.827153", "this looks like a longitude"),
    ("-91", "between -90 and 90"),
    ("abc", "decimal degrees as a map app shows them"),
    ("-6.1 S", "either a minus sign or the letter S"),
    ("nan", "decimal degrees"),
    ("", "decimal degrees"),
])
def test_latitude_errors_say_what_to_type(text: str, hint: str) -> None:
    with pytest.raises(Invalid) as info:
        validate.latitude(text)
    assert info.value.field == "latitude"
    assert hint in info.value.hint


def test_latlon_pair_as_copied_from_a_map() -> None:
    assert validate.latlon("-6.175392, 106.827153") == (-6175392, 106827153)
    assert validate.latlon("-6,175392; 106,827153") == (-6175392, 106827153)
    assert validate.latlon("6.175392S 106.827153E") == (-6175392, 106827153)
    with pytest.raises(Invalid, match="location"):
        validate.latlon("-6.175392")


def test_location_refuses_null_island_and_needs_an_address() -> None:
    with pytest.raises(Invalid, match="0, 0"):
        validate.location(latlon_text="0, 0", address_text="Jl. X", area="31.71.01.1001")
    with pytest.raises(Invalid, match="address"):
        validate.location(latlon_text="-6.1, 106.8", address_text="  ", area="31.71.01.1001")
    loc = validate.location(lat="-6.1", lon="106.8", address_text="  Jl.  Satu \t 1 ", area="3171011001")
    assert (loc.address, loc.area, loc.lat, loc.lon) == ("Jl. Satu 1", "31.71.01.1001", -6.1, 106.8)


def test_address_is_limited_to_what_fits_a_frame() -> None:
    validate.address("é" * 100)  # 200 bytes of UTF-8
    with pytest.raises(Invalid, match="at most 200 bytes"):
        validate.address("é" * 101)


@pytest.mark.parametrize("good", ["jkt-gambir-0001", "JKT-GAMBIR-0001 ", "abc"])
def test_device_id_normalised(good: str) -> None:
    assert validate.device_id(good) == good.strip().lower()


@pytest.mark.parametrize("bad", ["ab", "-abc", "jkt_gambir", "a" * 33, "siaga-gateway"])
def test_device_id_refused(bad: str) -> None:
    with pytest.raises(Invalid):
        validate.device_id(bad)


def test_types_kind_area_site_wifi() -> None:
    assert validate.type_buttons("medical, fire") == ("medical", "fire")
    with pytest.raises(Invalid, match="at most once"):
        validate.type_buttons("fire,fire")
    with pytest.raises(Invalid, match="medical, fire, crime, disaster"):
        validate.type_buttons("police")
    assert validate.kind("Medical") == "medical"
    assert validate.area_code("317101") == "31.71.01"
    with pytest.raises(Invalid):
        validate.area_code("31 71")
    assert validate.site("") is None
    assert validate.wifi_password("") == ""
    with pytest.raises(Invalid) as info:
        validate.wifi_password("short")
    assert "short" not in str(info.value)  # a password is never echoed


# ------------------------------------------------------------------------------------------ raw REPL values


def test_exec_reply_parses_output_and_traceback() -> None:
    raw = b"2\r\n\x04Traceback (most recent call last):\r\n  File \"<stdin>\"\r\nOSError: 28\r\n\x04>"
    assert ExecReply.complete_length(raw[:-1]) is None
    assert ExecReply.complete_length(raw + b"rest") == len(raw)
    reply = ExecReply.from_bytes(raw)
    assert (reply.stdout, reply.ok, reply.exception) == ("2\n", False, "OSError: 28")
    assert ExecReply.from_bytes(ExecReply("a\n", "").to_bytes()) == ExecReply("a\n", "")
    with pytest.raises(ValueError, match="incomplete"):
        ExecReply.from_bytes(b"2\x04")


def test_raw_paste_reply() -> None:
    assert RawPasteReply.from_bytes(b"R\x01\x80\x00") == RawPasteReply(True, 128)
    assert RawPasteReply.from_bytes(b"R\x00") == RawPasteReply(False, 0)
    assert RawPasteReply(True, 256).to_bytes() == b"R\x01\x00\x01"
    with pytest.raises(ValueError, match="not a raw-paste reply"):
        RawPasteReply.from_bytes(b"raw REPL")


def test_banner_with_doubled_carriage_returns() -> None:
    data = b">>> \r\r\nraw REPL; CTRL-B to exit\r\r\n>"
    assert find_banner(data) == len(data)
    assert find_banner(b"raw REPL; CTRL-B to exit\r\n") is None


class ScriptedPort:
    """A board that answers each write with prepared bytes (bellows-style: bytes in, bytes out)."""

    def __init__(self, answers: dict[bytes, bytes], *, paste_window: int | None = 32) -> None:
        self.answers = answers
        self.paste_window = paste_window
        self.timeout = 0.0
        self.written = bytearray()
        self.inbox = bytearray()
        self.code = bytearray()
        self.pasting = False
        self.pasted_since_ack = 0

    @property
    def in_waiting(self) -> int:
        return len(self.inbox)

    def read(self, size: int = 1) -> bytes:
        data = bytes(self.inbox[:size])
        del self.inbox[:size]
        return data

    def write(self, data: bytes) -> int:
        self.written += data
        if self.pasting:
            for byte in data:
                if byte == 4:
                    self.pasting = False
                    self.inbox += b"\x04" + self.answers.get(bytes(self.code), b"\x04NameError\x04>")
                    self.code.clear()
                else:
                    self.code.append(byte)
                    self.pasted_since_ack += 1
                    if self.paste_window and self.pasted_since_ack == self.paste_window:
                        self.pasted_since_ack = 0
                        self.inbox += b"\x01"
            return len(data)
        if data == b"\x05A\x01":
            if self.paste_window:
                self.pasting = True
                self.pasted_since_ack = 0
                self.inbox += b"R\x01" + struct.pack("<H", self.paste_window)
            else:
                self.inbox += b"R\x00"
            return len(data)
        if data.endswith(b"\x04") and not self.paste_window and self.code + data[:-1]:
            code = bytes(self.code + data[:-1])
            self.code.clear()
            self.inbox += b"OK" + self.answers.get(code, b"\x04NameError\x04>")
            return len(data)
        if data in (b"\r\x03\x03", b"\x01", b"\x02") and data in self.answers:
            self.inbox += self.answers[data]
        elif not self.paste_window and data not in (b"\r\x03\x03", b"\x01"):
            self.code += data
        return len(data)

    def close(self) -> None:
        pass


BANNER = {b"\x01": b"\r\nraw REPL; CTRL-B to exit\r\n>"}


@pytest.mark.parametrize("window", [32, None], ids=["raw-paste", "standard"])
def test_raw_repl_runs_code_with_flow_control(window: int | None) -> None:
    code = "print(" + "1+" * 40 + "1)"  # longer than two windows
    port = ScriptedPort({**BANNER, code.encode(): b"41\r\n\x04\x04>"}, paste_window=window)
    repl = RawRepl(port)
    repl.enter()
    assert repl.run(code) == "41\n"
    assert repl.run(code) == "41\n"  # the mode found on the first run is kept
    assert port.written.count(b"\x05A\x01") == (2 if window else 1)


def test_raw_repl_tells_silence_from_another_firmware() -> None:
    with pytest.raises(NoBoardError, match="nothing answers"):
        RawRepl(ScriptedPort({}), name="/dev/ttyUSB0").enter(attempts=1, timeout_s=0.05)
    with pytest.raises(NoMicroPythonError, match="it sent: 'ERROR'"):
        RawRepl(ScriptedPort({b"\x01": b"\r\nERROR\r\n"})).enter(attempts=1, timeout_s=0.05)


# ------------------------------------------------------------------------------------------ firmware


def test_board_info_names_the_mpy_version() -> None:
    info = BoardInfo.from_json('{"impl": "micropython", "ver": [1, 29, 0], "platform": "esp32", "mpy": 2822}')
    assert (info.mpy_version, info.version_text, info.device_id) == ("6.3", "1.29.0", None)
    old = BoardInfo.from_json('{"impl": "micropython", "ver": [1, 19], "platform": "rp2", "mpy": 6}')
    assert old.mpy_version == "6"


def test_bundle_compiles_modules_but_not_entry_points() -> None:
    bundle = build_bundle(PROFILES["esp32"], firmware_dir(), "6.3")
    paths = {f.path for f in bundle.files}
    assert {"boot.py", "main.py", "hal.mpy", "pins.mpy", "shell.mpy", "lib/siagafw/app.mpy"} <= paths
    assert not any("manifest" in p for p in paths)  # the frozen-build manifest stays on the computer
    assert all(f.data[:2] == b"M\x06" for f in bundle.files if f.path.endswith(".mpy"))
    assert "lib/siagafw/app.py" in bundle.stale  # a stale source would shadow the .mpy
    again = build_bundle(PROFILES["esp32"], firmware_dir(), "6.3")
    assert [f.sha256 for f in again.files] == [f.sha256 for f in bundle.files]  # reproducible
    source = build_bundle(PROFILES["picow"], firmware_dir(), "6.3", use_mpy=False)
    assert not source.compiled and all(f.path.endswith(".py") for f in source.files)
    unknown = build_bundle(PROFILES["picow"], firmware_dir(), "9.9")
    assert not unknown.compiled and "cannot write .mpy version 9.9" in unknown.note


def test_sync_plan_sends_only_what_differs_and_removes_shadows() -> None:
    a, b = FirmwareFile("main.py", b"main", "x"), FirmwareFile("lib/siagafw/app.mpy", b"M\x06app", "y")
    bundle = Bundle((a, b), ("main.mpy", "lib/siagafw/app.py"), True, "0.2.0")
    plan = plan_sync(bundle, {"main.py": a.sha256, "lib/siagafw/app.mpy": "0" * 64, "lib/siagafw/app.py": "1" * 64,
                              "main.mpy": None}, ["app.mpy", "app.py", "old.mpy", "notes.txt"])
    assert [f.path for f in plan.send] == ["lib/siagafw/app.mpy"]
    assert plan.remove == ("lib/siagafw/app.py", "lib/siagafw/old.mpy")
    assert (plan.unchanged, plan.bytes_to_send) == (1, len(b.data))


# ------------------------------------------------------------------------------------------ config, CSV, export, label


def defaults(**kw: object) -> DeviceDefaults:
    base: dict = {"broker_host": "mqtt.example", "broker_port": 8883, "ca_file": Path("ca.crt"),
                  "server_hostname": None, "id_prefix": None, "kind": "general", "types": (), "heartbeat_s": 60,
                  "button": {"long_ms": 1500}, "extra": {"buzzer": "passive"}}
    base.update(kw)
    return DeviceDefaults(**base)


def test_device_config_passes_the_firmware_parser_and_hides_secrets() -> None:
    ident = devconfig.Identity.new("jkt-gambir-0001")
    loc = validate.location(latlon_text="-6.175392, 106.827153", address_text="Jl. Kebon Sirih 2 — Menteng",
                            area="31.71.01.1001")
    cfg = devconfig.build(ident, loc, defaults(), devconfig.DeviceOptions("general", ("fire",)),
                          Wifi("Kelurahan", "password123"))
    parsed = load_config(devconfig.render(cfg).decode())
    assert parsed["mqtt"]["tls"] == {"ca": "ca.crt", "server_hostname": "mqtt.example"}
    assert parsed["loc"]["addr"] == "Jl. Kebon Sirih 2 — Menteng" and parsed["buzzer"] == "passive"
    assert devconfig.render(cfg).isascii()
    assert ident.secret_hex not in repr(ident) and "password123" not in repr(Wifi("K", "password123"))
    with pytest.raises(UsageError, match="refused by the firmware"):
        devconfig.build(ident, loc, defaults(heartbeat_s=1), devconfig.DeviceOptions("general", ()), None)


def test_csv_rows_without_ids_and_with_lat_lon_columns(tmp_path: Path) -> None:
    class S:  # the parts of Settings the parser reads
        devices = defaults(types=("medical",))

    rows = batch.parse("\ufefflat,lon,address,area,types\n-6.1,106.8,Jl. A,31.71.01.1001,\n"
                       "-6.2,106.9,Jl. B,31.71.01.1002,fire\n", S())  # type: ignore[arg-type]
    assert [(r.device_id, r.location.lat_e6, r.options.types) for r in rows] == [
        (None, -6100000, ("medical",)), (None, -6200000, ("fire",))]
    with pytest.raises(UsageError, match="unknown CSV column"):
        batch.parse("id,latitude\n", S())  # type: ignore[arg-type]


def test_exports_csv_and_geojson() -> None:
    devices = [{"id": "a-001", "lat": -6.1, "lon": 106.8, "address": "Jl. A, 1", "area": "31.71", "faults": ["tamper"],
                "last_seen_ms": 1_700_000_000_000, "battery_mv": 3900, "rssi": -60, "firmware": "0.2.0",
                "revoked": False, "decommissioned": False, "site": None, "key_pending": False, "created_ms": 0},
               {"id": "b-002", "lat": None, "lon": None, "address": "", "area": "", "faults": [], "last_seen_ms": None,
                "revoked": True, "decommissioned": False, "created_ms": 0}]
    geo = json.loads(fleet.to_geojson(devices))
    assert geo["features"][0]["geometry"]["coordinates"] == [106.8, -6.1]
    assert geo["features"][1]["geometry"] is None and geo["features"][1]["properties"]["status"] == "revoked"
    lines = fleet.to_csv(devices).splitlines()
    assert lines[0].startswith("id,status,faults,last_seen") and '"Jl. A, 1"' in lines[1]
    assert "online (tamper)" in fleet.to_table(devices)


def test_label_is_a_printable_png_with_the_qr_payload(tmp_path: Path) -> None:
    from PIL import Image

    path = label.save(tmp_path / "l.png", "jkt-gambir-0001", support="Call 112",
                      location=validate.Location(-6175392, 106827153, "Jl. X", "31.71.01.1001"))
    with Image.open(path) as img:
        assert img.size == (732, 1181) and img.info["dpi"][0] == pytest.approx(300, abs=0.01)
    assert label.qr_payload("jkt-gambir-0001", "Call 112") == "Siaga jkt-gambir-0001\nDukungan / Support: Call 112"
    pdf = label.save(tmp_path / "l.pdf", "jkt-gambir-0001", support="Call 112")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_label_words_come_from_the_catalog_indonesian_first_and_match_the_sign() -> None:
    from siaga import i18n

    words = i18n.catalog("label")
    lines = label.instructions(1.5)
    assert lines[0] == (words["hold"]["id"].format(seconds="1.5"), words["hold"]["en"].format(seconds="1.5"))
    assert lines[1:] == [(words[k]["id"], words[k]["en"]) for k in ("cancel", *label.LIGHTS)]
    # "An operator has seen it" and "help is on the way" are both on the label, and told apart.
    assert {"light.acknowledged", "light.dispatched"} <= set(label.LIGHTS)
    assert words["light.acknowledged"]["id"] != words["light.dispatched"]["id"]
    # The enclosure sign says the same, Bahasa Indonesia with the English beside it.
    sign = (Path(__file__).parent.parent / "hardware" / "enclosure.md").read_text(encoding="utf-8")
    for key in label.LIGHTS:
        assert f"{words[key]['id']}  /  {words[key]['en']}" in sign, key


def test_label_content_fits_above_its_bottom_margin() -> None:
    # The example of docs/technician.md (docs/label-example.png): every line of text, a long support
    # contact, the address and the organisation; the last 2 mm must stay blank, not hold clipped text.
    img = label.render("jkt-gambir-0007", support="Call 112 or WhatsApp +62 811 0000 112",
                       organisation="Command Center 112 DKI Jakarta",
                       location=validate.Location(-6175392, 106827153, "Jl. Medan Merdeka Barat 12, Gambir",
                                                  "31.71.01.1001"))
    bottom = img.crop((0, img.height - round(2 / 25.4 * label.DPI), img.width, img.height)).convert("L")
    assert bottom.getextrema() == (255, 255)


# ------------------------------------------------------------------- the token for the gateway's admin API

CONFIG_TOKEN, FILE_TOKEN, ENV_TOKEN = "config-admin-token-0123456789", "siti-file-token-0123456789", \
    "siti-env-token-0123456789"


def prov_config(folder: Path, gateway: str = 'admin_token_file = "admin-token"') -> Path:
    """A minimal provisioning config whose [gateway] table has the lines `gateway` besides the url."""
    (folder / "admin-token").write_text(CONFIG_TOKEN + "\n", encoding="utf-8")
    path = folder / "siaga-provision.toml"
    path.write_text(f'[gateway]\nurl = "http://127.0.0.1:8081"\n{gateway}\n\n[devices]\nbroker_host = "127.0.0.1"\n\n'
                    '[label]\nsupport = "Call 112"\n', encoding="utf-8")
    return path


def token_file(folder: Path, token: str = FILE_TOKEN, mode: int = 0o600) -> Path:
    path = folder / "my.token"
    path.write_text(token + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


def test_the_token_is_the_files_then_the_environments_then_the_configs(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, own = prov_config(tmp_path), token_file(tmp_path)
    monkeypatch.setenv("SIAGA_TOKEN", ENV_TOKEN)
    s = settings.load(cfg, token_file=own)
    assert (s.admin_token, s.token_from) == (FILE_TOKEN, TokenSource(True, f"--token-file {own}", own))
    s = settings.load(cfg)
    assert (s.admin_token, s.token_from) == (ENV_TOKEN, TokenSource(True, "$SIAGA_TOKEN"))
    for unset in ("", "  \n"):  # empty is not set: the shared admin token of the config
        monkeypatch.setenv("SIAGA_TOKEN", unset)
        s = settings.load(cfg)
        assert (s.admin_token, s.token_from) == (CONFIG_TOKEN,
                                                 TokenSource(False, f"[gateway] admin_token_file of {cfg}"))
    monkeypatch.delenv("SIAGA_TOKEN")
    assert settings.load(cfg).admin_token == CONFIG_TOKEN
    assert FILE_TOKEN not in repr(settings.load(cfg, token_file=own))


def test_a_personal_token_makes_the_configs_admin_token_optional(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIAGA_TOKEN", raising=False)
    own = token_file(tmp_path)
    # No admin token at all, or one that names the variable for the personal token.
    for gateway in ("", 'admin_token_env = "SIAGA_TOKEN"', 'admin_token_file = "missing"'):
        cfg = prov_config(tmp_path, gateway)
        assert settings.load(cfg, token_file=own).admin_token == FILE_TOKEN
        monkeypatch.setenv("SIAGA_TOKEN", ENV_TOKEN)
        assert settings.load(cfg).admin_token == ENV_TOKEN
        monkeypatch.delenv("SIAGA_TOKEN")
    # An admin token written into the config is refused all the same.
    with pytest.raises(UsageError, match="must not be written inline") as err:
        settings.load(prov_config(tmp_path, 'admin_token = "inline-token-0123456789"'), token_file=own)
    assert "inline-token-0123456789" not in str(err.value)


def test_no_token_at_all_names_the_three_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SIAGA_TOKEN", raising=False)
    cfg = prov_config(tmp_path, "")
    with pytest.raises(UsageError) as err:
        settings.load(cfg)
    assert err.value.exit_code == EXIT_USAGE
    for way in ("--token-file", "$SIAGA_TOKEN", "admin_token_file", "admin_token_env", str(cfg)):
        assert way in err.value.message, way
    for way in ("--token-file", "$SIAGA_TOKEN", "admin_token_file / admin_token_env"):
        assert way in err.value.hint, way
    # A config token that cannot be read says the other two ways as well.
    monkeypatch.setenv("SIAGA_TOKEN", "")
    (tmp_path / "env").mkdir()
    with pytest.raises(UsageError, match="environment variable SIAGA_TOKEN is empty") as err:
        settings.load(prov_config(tmp_path / "env", 'admin_token_env = "SIAGA_TOKEN"'))
    assert "--token-file" in err.value.hint
    # Through the command: one line and the hint, exit status 2, nothing else.
    assert commands.dispatch("devices list", {"config": str(cfg)}) == EXIT_USAGE
    assert "error: no token for the gateway's admin API" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["short secret", "with a space 0123456789", "two\nlines-0123456789abc", ""])
def test_something_that_is_not_a_token_is_refused_without_echoing_it(tmp_path: Path, content: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = prov_config(tmp_path)
    with pytest.raises(UsageError, match=r"my\.token does not hold a token") as err:
        settings.load(cfg, token_file=token_file(tmp_path, content))
    secret_part = content.strip().split()[0] if content.strip() else None
    if secret_part is not None:
        assert secret_part not in str(err.value).replace(str(tmp_path), "")
        monkeypatch.setenv("SIAGA_TOKEN", content)
        with pytest.raises(UsageError, match=r"\$SIAGA_TOKEN does not hold a token") as err:
            settings.load(cfg)
        assert secret_part not in str(err.value)
    with pytest.raises(UsageError, match=r"cannot read .*nope, the file with your token"):
        settings.load(cfg, token_file=tmp_path / "nope")


def test_a_token_file_others_can_read_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = prov_config(tmp_path)
    own = token_file(tmp_path, mode=0o644)
    assert commands._settings({"config": str(cfg), "token_file": str(own)}, Ui()).admin_token == FILE_TOKEN
    err = capsys.readouterr().err
    assert f"chmod 600 {own}" in err and FILE_TOKEN not in err
    own.chmod(0o600)
    commands._settings({"config": str(cfg), "token_file": str(own)}, Ui())
    assert capsys.readouterr().err == ""


def test_set_location_is_a_command_of_the_table_and_the_cli_names_the_same_variable() -> None:
    from siaga import cli

    assert commands.COMMANDS["devices set-location"] is commands.cmd_set_location
    assert cli.TOKEN_ENV == settings.TOKEN_ENV
    names = ({f"devices {n}" for n in cli.devices.commands} | {"provision", "firmware publish"}
             | {f"fleet {n}" for n in cli.fleet_group.commands})
    assert names == set(commands.COMMANDS)
    for name in names:
        group, _, sub = name.partition(" ")
        command = cli.main.commands[group].commands[sub] if sub else cli.main.commands[group]
        assert "token_file" in {p.name for p in command.params}, name


def test_set_location_fields() -> None:
    assert fleet.location_fields(latlon="-6.2, 106.8", site="pasar-baru") == {"lat": -6.2, "lon": 106.8,
                                                                              "site": "pasar-baru"}
    assert fleet.location_fields(lat="-6,2", lon="106.8", address="Jl. Baru 2", area="3171011001") == {
        "lat": -6.2, "lon": 106.8, "address": "Jl. Baru 2", "area": "31.71.01.1001"}
    assert fleet.location_fields(site="") == {"site": None}  # removes the site
    for kwargs, problem in [({}, "nothing to change"), ({"latlon": "-6.2, 106.8", "lat": "-6.2"}, "not both"),
                            ({"lat": "-6.2"}, "both --lat and --lon"), ({"latlon": "0, 0"}, "0, 0")]:
        with pytest.raises(UsageError) as err:
            fleet.location_fields(**kwargs)
        assert problem in str(err.value), kwargs


def answering(status: int, body: object) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, json=body))


@pytest.mark.parametrize(("source", "message", "hint"), [
    (TokenSource(True, "--token-file /home/siti/siaga.token"),
     "refused your personal token (from --token-file /home/siti/siaga.token)", "ask the gateway's administrator"),
    (TokenSource(True, "$SIAGA_TOKEN"), "refused your personal token (from $SIAGA_TOKEN)", "--token-file"),
    (TokenSource(False, "[gateway] admin_token_file of p.toml"),
     "refused the admin token of the provisioning config ([gateway] admin_token_file of p.toml)", "--token-file"),
    (None, "refused the token (personal or admin)", "admin_token_file"),
])
def test_a_refused_token_says_which_and_what_to_do(source: TokenSource | None, message: str, hint: str) -> None:
    with GatewayClient("http://gw.test", "secret-token-0123456789", token_from=source,
                       transport=answering(401, {"detail": "unknown token"})) as gw, \
            pytest.raises(GatewayError) as err:
        gw.devices()
    assert message in err.value.message and hint in err.value.hint
    assert "secret-token-0123456789" not in str(err.value)


def test_a_refused_role_says_who_may() -> None:
    detail = {"detail": "siti has the role technician; this needs an administrator"}
    with GatewayClient("http://gw.test", "siti-token-0123456789", token_from=TokenSource(True, "$SIAGA_TOKEN"),
                       transport=answering(403, detail)) as gw:
        with pytest.raises(GatewayError) as err:
            gw.revoke("jkt-gambir-0001")
        assert err.value.message == ("the gateway at http://gw.test refused to revoke jkt-gambir-0001 (403): siti has "
                                     "the role technician; this needs an administrator")
        assert "a technician may list, show, export, add" in err.value.hint and "ask one" in err.value.hint
        with pytest.raises(GatewayError, match="refused to decommission jkt-gambir-0001"):
            gw.decommission("jkt-gambir-0001")
        with pytest.raises(GatewayError, match="refused a new key for jkt-gambir-0001"):
            gw.rotate("jkt-gambir-0001", "00" * 32, "pending")


@pytest.fixture
def fake_gateway() -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    """A stand-in for the gateway's device routes in a thread: (its URL, the requests it got)."""
    seen: list[tuple[str, str, Any]] = []
    device: dict[str, Any] = {"id": "jkt-gambir-0042", "lat": -6.1, "lon": 106.8, "address": "Jl. Lama 1",
                              "area": "31.71", "site": None}

    def answer(request: Request) -> Answer:
        if request.method == "PATCH":
            body = json.loads(request.body)
            seen.append(("PATCH", request.path, body))
            device.update(body)
        else:
            seen.append((request.method, request.path, request.headers.get("authorization")))
        return Answer(200, json.dumps(device).encode(), {"Content-Type": "application/json"})

    with HttpReceiver(answer) as server:
        yield server.url, seen


def test_set_location_corrects_the_gateway_and_a_staged_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              fake_gateway: tuple[str, list[tuple[str, str, Any]]],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    url, seen = fake_gateway
    monkeypatch.delenv("SIAGA_TOKEN", raising=False)
    cfg = prov_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("http://127.0.0.1:8081", url) + '[provisioning]\nstate_dir = "state"\n')
    keystore = Keystore(tmp_path / "state")
    keystore.save_staged(StagedDevice("jkt-gambir-0042", "ab" * 32, "pw-0123456789abcdef",
                                      validate.Location(-6100000, 106800000, "Jl. Lama 1", "31.71"), notes="pole"))
    opts = {"config": str(cfg), "token_file": str(token_file(tmp_path)), "device_id": "JKT-GAMBIR-0042",
            "latlon": "-6.175392, 106.827153", "site": "pasar-baru"}
    assert commands.dispatch("devices set-location", opts) == 0
    assert seen == [("GET", "/api/v1/devices/jkt-gambir-0042", f"Bearer {FILE_TOKEN}"),
                    ("PATCH", "/api/v1/devices/jkt-gambir-0042",
                     {"lat": -6.175392, "lon": 106.827153, "site": "pasar-baru"})]
    staged = keystore.staged("jkt-gambir-0042")
    assert staged is not None
    assert (staged.location, staged.site, staged.notes) == (
        validate.Location(-6175392, 106827153, "Jl. Lama 1", "31.71"), "pasar-baru", "pole")
    assert keystore.history("jkt-gambir-0042")[-1]["event"] == "set-location"
    out = capsys.readouterr().out
    assert "jkt-gambir-0042 is now at Jl. Lama 1 / 31.71 (-6.175392, 106.827153), site pasar-baru" in out
    # Nothing typed that is wrong reaches the gateway.
    assert commands.dispatch("devices set-location", {**opts, "latlon": None, "site": None}) == EXIT_USAGE
    assert len(seen) == 2


# ------------------------------------------------------------------------------------------ the SMS path (issue 17)


def test_a_sims_number_and_the_sms_object_of_the_device_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIAGA_LANG", "en")
    for typed in ("+6281234567890", "+62 812-3456-7890", "006281234567890", "+62 (812) 3456.7890"):
        assert validate.phone(typed) == "+6281234567890"
    for bad in ("081234567890", "6281234567890", "+62812", "+0281234567890", "+6281234567890123", "", None):
        with pytest.raises(Invalid, match=r"SIM number") as refused:
            validate.phone(bad)
        assert "+6281234567890" in refused.value.expected and "E.164" in refused.value.expected
    # --phone and the gateway's number go together; the config's [devices] sms_gateway is the default.
    plain = defaults()
    with_number = defaults(sms_gateway="+6281100000001", sms_fallback_s=45, sms_test_every_s=43200)

    class S:
        devices = plain

    assert commands._sms_path({}, S) == (None, None)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="--sms-gateway was given without --phone"):
        commands._sms_path({"sms_gateway": "+6281100000001"}, S)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="SMS number is not known"):
        commands._sms_path({"phone": "+6281234567890"}, S)  # type: ignore[arg-type]
    assert commands._sms_path({"phone": "+62 812 3456 7890", "sms_gateway": "+6281100000009"}, S) == (  # type: ignore[arg-type]
        "+6281234567890", "+6281100000009")
    S.devices = with_number
    assert commands._sms_path({"phone": "+6281234567890"}, S) == ("+6281234567890", "+6281100000001")  # type: ignore[arg-type]
    # The device config gets its "sms" object from the gateway's number and the config's timings,
    # and the firmware's own parser takes it.
    ident = devconfig.Identity.new("pdg-0001")
    loc = validate.location(latlon_text="-0.947100, 100.417200", address_text="Jl. Sudirman 1", area="13.71")
    options = devconfig.DeviceOptions("general", (), phone="+6281234567890", sms_gateway="+6281100000001")
    cfg = devconfig.build(ident, loc, with_number, options, None)
    assert cfg["sms"] == {"gateway": "+6281100000001", "fallback_s": 45, "test_every_s": 43200}
    assert load_config(devconfig.render(cfg).decode())["sms"]["gateway"] == "+6281100000001"
    assert "sms" not in devconfig.build(ident, loc, with_number, devconfig.DeviceOptions("general", ()), None)


def test_the_phone_is_registered_and_a_number_taken_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIAGA_LANG", "en")
    bodies: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if body.get("phone") == "+6281200000009":
            return httpx.Response(409, json={"detail": "phone +6281200000009 is registered to device pdg-0007 already"})
        return httpx.Response(201, json={"id": body["id"], "phone": body.get("phone")})

    loc = validate.location(latlon_text="-0.9471, 100.4172", address_text="Jl. Sudirman 1", area="13.71")
    with GatewayClient("http://gw", "t", transport=httpx.MockTransport(answer)) as gw:
        gw.register("pdg-0001", "ab" * 32, loc, None)
        gw.register("pdg-0002", "ab" * 32, loc, None, "+6281200000002")
        with pytest.raises(GatewayError, match="refused the number \\+6281200000009") as taken:
            gw.register("pdg-0003", "ab" * 32, loc, None, "+6281200000009")
    assert "phone" not in bodies[0] and bodies[1]["phone"] == "+6281200000002"  # an older gateway takes the first
    assert "pdg-0007" in taken.value.message and "decommission" in (taken.value.hint or "")


def test_set_phone_registers_a_replaced_sim_or_removes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         fake_gateway: tuple[str, list[tuple[str, str, Any]]],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    url, seen = fake_gateway
    monkeypatch.delenv("SIAGA_TOKEN", raising=False)
    monkeypatch.setenv("SIAGA_LANG", "en")
    cfg = prov_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("http://127.0.0.1:8081", url) + '[provisioning]\nstate_dir = "state"\n')
    opts = {"config": str(cfg), "token_file": str(token_file(tmp_path)), "device_id": "jkt-gambir-0042"}
    assert commands.dispatch("devices set-phone", {**opts, "number": "+62 812-0000-0042"}) == 0
    assert commands.dispatch("devices set-phone", {**opts, "remove": True}) == 0
    assert [s for s in seen if s[0] == "PATCH"] == [
        ("PATCH", "/api/v1/devices/jkt-gambir-0042", {"phone": "+6281200000042"}),
        ("PATCH", "/api/v1/devices/jkt-gambir-0042", {"phone": None})]
    out = capsys.readouterr().out
    assert "jkt-gambir-0042's SIM is now +6281200000042" in out and "SIM number removed" in out
    # Neither or both, or a national number: refused before anything reaches the gateway.
    for wrong in ({}, {"number": "+6281200000042", "remove": True}, {"number": "081200000042"}):
        assert commands.dispatch("devices set-phone", {**opts, **wrong}) == EXIT_USAGE
    assert len(seen) == 4
