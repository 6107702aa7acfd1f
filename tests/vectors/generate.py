"""Regenerate protocol_v1.json from CPython's own hmac and json modules.

The expected values come from implementations independent of the firmware core (which builds HMAC
from hashlib and has its own JSON encoder), so agreement means both follow protocol.md, not that
one copies the other. Run: python tests/vectors/generate.py > tests/vectors/protocol_v1.json
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys

SECRETS = {
    "zero": "00" * 32,
    "a": "7d1f3c2b9a8e4f60c3b5a1d2e9f0871623456789abcdef0123456789abcdef01",
    "b": "f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff",
}

LOC = {"lat_e6": -6175392, "lon_e6": 106827153, "addr": "Jl. Medan Merdeka Barat No. 12", "area": "31.71.01.1001"}

BODIES = {
    "alarm": {"v": 1, "type": "alarm", "dev": "jkt-gambir-0001", "seq": 4711, "kind": "medical",
              "test": False, "loc": LOC, "up": 123456, "ts": 1795481766},
    "alarm_no_clock": {"v": 1, "type": "alarm", "dev": "btn-7", "seq": 0, "kind": "general",
                       "test": True, "loc": {"lat_e6": 0, "lon_e6": -1, "addr": "", "area": ""},
                       "up": 0, "ts": None},
    "status": {"v": 1, "type": "status", "dev": "jkt-gambir-0001", "seq": 4712, "bat": 3712, "rssi": -67,
               "fw": "0.1.0", "tamper": True, "outbox": 2, "up": 99, "every": 60},
    "will": {"v": 1, "type": "will", "dev": "jkt-gambir-0001", "seq": 2147483647},
    "ack": {"v": 1, "type": "ack", "dev": "jkt-gambir-0001", "seq": 4711, "state": "acknowledged",
            "inc": "inc-000017", "gts": 1795481766123},
}

ENCODE_ONLY = {
    "escapes": {"s": 'quote " backslash \\ nl \n tab \t cr \r bs \b ff \f bell \x07 del \x7f'},
    "unicode": {"addr": "Jl. Cikini Raya — Menteng, Jakarta Pusat ✓", "ké": "ä"},
    "key_order": {"b": 1, "a": 2, "B": 3, "aa": 4, "_": 5, "a-b": 6},
    "nested": {"z": [1, [2, [3, {"y": None, "x": True}]]], "n": -123456789012, "e": [], "o": {}},
}


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def frame(secret_hex: str, body: bytes) -> bytes:
    mac = hmac.new(bytes.fromhex(secret_hex), body, hashlib.sha256).hexdigest().encode()
    return b"SG1." + mac + b"." + body


def sms_line(secret_hex: str, *fields: str) -> str:
    """A signed SMS line (protocol.md §9): the fields, a space, 128 bits of HMAC-SHA256 in hex."""
    text = " ".join(fields)
    return text + " " + hmac.new(bytes.fromhex(secret_hex), text.encode(), hashlib.sha256).hexdigest()[:32]


def sms_vectors() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Lines the firmware must write exactly (sms_sign), and lines it must read or refuse (sms_open)."""
    a = SECRETS["a"]
    sign: list[dict[str, object]] = [
        {"name": "alarm", "secret": a, "call": ["alarm", "jkt-gambir-0001", 4711, "medical", False,
                                                -6175392, 106827153, 1795481766],
         "text": sms_line(a, "SG1A", "jkt-gambir-0001", "4711", "medical", "0", "-6175392", "106827153",
                          "1795481766")},
        {"name": "alarm_longest", "secret": SECRETS["b"],
         "call": ["alarm", "x" * 32, 2**31 - 1, "disaster", True, -90000000, -180000000, None],
         "text": sms_line(SECRETS["b"], "SG1A", "x" * 32, str(2**31 - 1), "disaster", "1", "-90000000",
                          "-180000000", "-")},
        {"name": "test", "secret": a, "call": ["test", "btn-7", 0], "text": sms_line(a, "SG1T", "btn-7", "0")},
        {"name": "ack", "secret": a, "call": ["ack", "jkt-gambir-0001", 4711, "acknowledged", 1795481766],
         "text": sms_line(a, "SG1K", "jkt-gambir-0001", "4711", "acknowledged", "1795481766")},
        {"name": "ack_test", "secret": a, "call": ["ack", "btn-7", 9, "test", 0],
         "text": sms_line(a, "SG1K", "btn-7", "9", "test", "0")},
    ]
    good = sign[0]["text"]
    assert isinstance(good, str)
    alarm = {"type": "alarm", "dev": "jkt-gambir-0001", "seq": 4711, "kind": "medical", "test": False,
             "lat_e6": -6175392, "lon_e6": 106827153, "ts": 1795481766}
    opened: list[dict[str, object]] = [{"name": "sign/" + str(c["name"]), "secret": c["secret"], "text": c["text"],
                                        "ok": True} for c in sign]
    opened[0]["want"] = alarm
    bad = {
        "wrong_secret": (SECRETS["b"], good, "bad signature"),
        "tampered_seq": (a, good.replace(" 4711 ", " 4712 "), "bad signature"),
        "uppercase_mac": (a, good[:-32] + good[-32:].upper(), "malformed"),
        "short_mac": (a, good[:-1], "malformed"),
        "double_space": (a, good.replace(" medical", "  medical"), "not a Siaga SMS"),
        "other_text": (a, "Sisa pulsa Anda Rp 5.000. Isi ulang sekarang!", "not a Siaga SMS"),
        "empty": (a, "", "not a Siaga SMS"),
        "too_long": (a, good + " " + "x" * 40, "not a Siaga SMS"),
        # Signed correctly, and still refused: each field has one way to be written.
        "leading_zero": (a, sms_line(a, "SG1A", "btn-7", "07", "fire", "0", "1", "2", "-"), "malformed"),
        "plus_sign": (a, sms_line(a, "SG1T", "btn-7", "+7"), "malformed"),
        "minus_zero": (a, sms_line(a, "SG1A", "btn-7", "7", "fire", "0", "-0", "2", "-"), "malformed"),
        "arabic_digits": (a, sms_line(a, "SG1T", "btn-7", "\u0667"), "malformed"),
        "unknown_kind": (a, sms_line(a, "SG1A", "btn-7", "7", "flood", "0", "1", "2", "-"), "malformed"),
        "latitude_range": (a, sms_line(a, "SG1A", "btn-7", "7", "fire", "0", "90000001", "2", "-"), "malformed"),
        "seq_range": (a, sms_line(a, "SG1T", "btn-7", str(2**31)), "malformed"),
        "test_flag": (a, sms_line(a, "SG1A", "btn-7", "7", "fire", "yes", "1", "2", "-"), "malformed"),
        "unknown_state": (a, sms_line(a, "SG1K", "btn-7", "7", "lost", "0"), "malformed"),
        "bad_device": (a, sms_line(a, "SG1T", "Btn-7", "7"), "malformed"),
    }
    for name, (secret, text, reason) in bad.items():
        opened.append({"name": name, "secret": secret, "text": text, "ok": False,
                       "why": reason})
    return sign, opened


def main() -> None:
    encode = [{"name": n, "obj": o, "canonical": canonical(o).decode()}
              for n, o in {**BODIES, **ENCODE_ONLY}.items()]
    frames = []
    for sname, secret in SECRETS.items():
        for bname, body in BODIES.items():
            frames.append({"name": f"{bname}/{sname}", "secret": secret, "obj": body,
                           "frame_hex": frame(secret, canonical(body)).hex()})
    good = frame(SECRETS["a"], canonical(BODIES["alarm"]))
    tampered_body = good.replace(b'"seq":4711', b'"seq":4712')
    flipped_mac = good[:4] + (b"0" if good[4:5] != b"0" else b"1") + good[5:]
    verify = [
        {"name": "valid", "secret": SECRETS["a"], "frame_hex": good.hex(), "body": canonical(BODIES["alarm"]).decode()},
        {"name": "wrong_secret", "secret": SECRETS["b"], "frame_hex": good.hex(), "body": None},
        {"name": "tampered_body", "secret": SECRETS["a"], "frame_hex": tampered_body.hex(), "body": None},
        {"name": "flipped_mac", "secret": SECRETS["a"], "frame_hex": flipped_mac.hex(), "body": None},
        {"name": "uppercase_mac", "secret": SECRETS["a"],
         "frame_hex": (good[:4] + good[4:68].upper() + good[68:]).hex(), "body": None},
        {"name": "bad_tag", "secret": SECRETS["a"], "frame_hex": (b"SG2." + good[4:]).hex(), "body": None},
        {"name": "no_dot", "secret": SECRETS["a"], "frame_hex": (good[:68] + b"x" + good[69:]).hex(), "body": None},
        {"name": "truncated", "secret": SECRETS["a"], "frame_hex": good[:60].hex(), "body": None},
        {"name": "empty", "secret": SECRETS["a"], "frame_hex": "", "body": None},
        {"name": "oversize", "secret": SECRETS["a"],
         "frame_hex": frame(SECRETS["a"], canonical({"pad": "x" * 1000})).hex(), "body": None},
        {"name": "max_size", "secret": SECRETS["a"],
         "frame_hex": frame(SECRETS["a"], canonical({"pad": "x" * (1024 - 69 - 10)})).hex(),
         "body": canonical({"pad": "x" * (1024 - 69 - 10)}).decode()},
    ]
    coords = [
        {"text": "-6.175392", "e6": -6175392}, {"text": "106.827153", "e6": 106827153},
        {"text": "0", "e6": 0}, {"text": "+1.5", "e6": 1500000}, {"text": "-0.000001", "e6": -1},
        {"text": "180.0", "e6": 180000000}, {"text": " 12.34 ", "e6": 12340000},
        {"text": "1.1234567", "e6": None}, {"text": "abc", "e6": None}, {"text": "1.2.3", "e6": None},
        {"text": "", "e6": None}, {"text": "1e5", "e6": None}, {"text": "-", "e6": None},
    ]
    device_ids = [
        {"id": "jkt-gambir-0001", "valid": True}, {"id": "btn", "valid": True}, {"id": "0abc", "valid": True},
        {"id": "ab", "valid": False}, {"id": "-abc", "valid": False}, {"id": "Abc", "valid": False},
        {"id": "a/b/c", "valid": False}, {"id": "a+b", "valid": False}, {"id": "a#b", "valid": False},
        {"id": "x" * 32, "valid": True}, {"id": "x" * 33, "valid": False}, {"id": "ab c", "valid": False},
    ]
    ranks = [{"state": s, "rank": i} for i, s in
             enumerate(["received", "undelivered", "acknowledged", "dispatched", "resolved", "false_alarm"])]
    ranks += [{"state": "bogus", "rank": -1}, {"state": "", "rank": -1}]
    sms_sign, sms_open = sms_vectors()
    json.dump({"version": 1, "encode": encode, "frames": frames, "verify": verify, "coordinates": coords,
               "device_ids": device_ids, "state_ranks": ranks, "sms_sign": sms_sign, "sms_open": sms_open},
              sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
