"""Regenerate ed25519_v1.json: known answers for the firmware's Ed25519 verifier and its SHA-512.

RFC 8032 §7.1 TEST 1, 2 and 3 as published (their public keys and signatures are re-derived here
with the `cryptography` package, which checks the transcription), signatures `cryptography` makes
with fixed seeds over digests and messages around SHA-512's block edges, and copies that must be
refused (a bit flipped in R, in S, in the message; another key; S not reduced; R not a point). The
SHA-512 answers come from CPython's hashlib. Everything is deterministic (Ed25519 signing is), so
the test suite checks that the file is what this script makes.
Run: python tests/vectors/generate_ed25519.py > tests/vectors/ed25519_v1.json
"""

from __future__ import annotations

import hashlib
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

L = 2**252 + 27742317777372353535851937790883648493

# RFC 8032 §7.1: secret key, public key, message, signature (hex).
RFC8032 = (
    ("rfc8032-test1",
     "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
     "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("rfc8032-test2",
     "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("rfc8032-test3",
     "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
     "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
)


def seed(label: str) -> bytes:
    return hashlib.sha256(b"siaga ed25519 vectors " + label.encode()).digest()


def message(label: str, n: int) -> bytes:
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(label.encode() + i.to_bytes(4, "big")).digest()
        i += 1
    return out[:n]


def key(secret: bytes) -> tuple[Ed25519PrivateKey, str]:
    k = Ed25519PrivateKey.from_private_bytes(secret)
    return k, k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def flip(hex_text: str, byte: int) -> str:
    b = bytearray(bytes.fromhex(hex_text))
    b[byte] ^= 1
    return b.hex()


def case(name: str, public: str, msg: str, sig: str, valid: bool) -> dict[str, object]:
    return {"name": name, "public": public, "message": msg, "signature": sig, "valid": valid}


def verify_cases() -> list[dict[str, object]]:
    cases = []
    for name, secret, public, msg, sig in RFC8032:
        k, derived = key(bytes.fromhex(secret))
        assert derived == public and k.sign(bytes.fromhex(msg)).hex() == sig, name
        cases.append(case(name, public, msg, sig, True))
        cases.append(case(name + "-r-flipped", public, msg, flip(sig, 3), False))
        cases.append(case(name + "-s-flipped", public, msg, flip(sig, 40), False))
        cases.append(case(name + "-other-message", public, msg + "00", sig, False))
    fleet, fleet_pub = key(seed("fleet"))
    other, other_pub = key(seed("other"))
    for n in (32, 0, 1, 55, 111, 112, 127, 128, 239, 240, 300):
        msg = message(f"m{n}", n).hex()
        sig = fleet.sign(bytes.fromhex(msg)).hex()
        cases.append(case(f"fleet-{n}-bytes", fleet_pub, msg, sig, True))
    digest = hashlib.sha256(b'{"v":1}').digest().hex()
    sig = fleet.sign(bytes.fromhex(digest)).hex()
    cases.append(case("digest-other-key", other_pub, digest, sig, False))
    cases.append(case("digest-signed-by-other", fleet_pub, digest, other.sign(bytes.fromhex(digest)).hex(), False))
    s = int.from_bytes(bytes.fromhex(sig[64:]), "little")
    cases.append(case("s-not-reduced", fleet_pub, digest, sig[:64] + (s + L).to_bytes(32, "little").hex(), False))
    cases.append(case("r-not-a-point", fleet_pub, digest, "ff" * 31 + "7f" + sig[64:], False))
    cases.append(case("public-not-a-point", "ff" * 31 + "7f", digest, sig, False))
    cases.append(case("short-signature", fleet_pub, digest, sig[:126], False))
    return cases


def sha512_cases() -> list[dict[str, str]]:
    out = []
    for n in (0, 3, 111, 112, 128, 200):
        data = message(f"s{n}", n)
        out.append({"data": data.hex(), "sha512": hashlib.sha512(data).hexdigest()})
    return out


def main() -> None:
    print(json.dumps({"verify": verify_cases(), "sha512": sha512_cases()}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
