"""The tool's own records in the state folder:

    keys/<id>.json    0600: the identity of a device registered but not yet written to a board
                      (batch pre-staging), or a rotated key waiting for the board (rotate-key
                      --mode pending). The gateway never gives a secret back, so until the board
                      has it, this file is the only copy. Deleted once the board has it.
    installs.jsonl    one line per install, rotation or decommission: what, when, where, self-test
                      figures. No secrets.
    labels/<id>.png   printed labels.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .validate import Location


@dataclass(frozen=True, slots=True)
class StagedDevice:
    device_id: str
    secret_hex: str = field(repr=False)
    mqtt_password: str = field(repr=False)
    location: Location
    site: str | None = None
    notes: str = ""
    kind: str = "general"
    types: tuple[str, ...] = ()
    staged_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["location"] = asdict(self.location)
        d["types"] = list(self.types)
        d["state"] = "staged"
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StagedDevice:
        return cls(d["device_id"], d["secret_hex"], d["mqtt_password"], Location(**d["location"]), d.get("site"),
                   d.get("notes", ""), d.get("kind", "general"), tuple(d.get("types", ())), d.get("staged_ms", 0))


class Keystore:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)
        self.keys = self.root / "keys"
        self.labels = self.root / "labels"

    def _key_path(self, device_id: str) -> Path:
        return self.keys / f"{device_id}.json"

    def _write_private(self, path: Path, data: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _read(self, device_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._key_path(device_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    # ---------------------------------------------------------------- staged identities

    def save_staged(self, dev: StagedDevice) -> None:
        self._write_private(self._key_path(dev.device_id), dev.to_json())

    def staged(self, device_id: str) -> StagedDevice | None:
        d = self._read(device_id)
        return StagedDevice.from_json(d) if d and d.get("state") == "staged" else None

    def staged_ids(self) -> list[str]:
        return sorted(p.stem for p in self.keys.glob("*.json") if self.staged(p.stem) is not None)

    # ---------------------------------------------------------------- pending rotations

    def save_pending(self, device_id: str, secret_hex: str) -> None:
        self._write_private(self._key_path(device_id), {"device_id": device_id, "state": "pending",
                                                        "pending_secret_hex": secret_hex,
                                                        "since_ms": int(time.time() * 1000)})

    def pending(self, device_id: str) -> str | None:
        d = self._read(device_id)
        return d["pending_secret_hex"] if d and d.get("state") == "pending" else None

    def forget(self, device_id: str) -> bool:
        try:
            self._key_path(device_id).unlink()
            return True
        except FileNotFoundError:
            return False

    # ---------------------------------------------------------------- log and labels

    def log(self, event: str, device_id: str, **fields: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, "device_id": device_id,
                 **fields}
        with (self.root / "installs.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")

    def history(self, device_id: str) -> list[dict[str, Any]]:
        path = self.root / "installs.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("device_id") == device_id:
                out.append(entry)
        return out

    def label_path(self, device_id: str, fmt: str = "png") -> Path:
        self.labels.mkdir(parents=True, exist_ok=True)
        return self.labels / f"{device_id}.{fmt}"
