# Checks the firmware core against protocol_v1.json. Runs unchanged under CPython and under the
# MicroPython unix port (so: no f-strings with format specs, no pathlib, no bytes.fromhex):
#   MICROPYPATH=firmware/lib micropython tests/vectors/check.py tests/vectors/protocol_v1.json
#   python tests/vectors/check.py tests/vectors/protocol_v1.json   (with siagafw importable)
# Prints one line per failure and a closing "N passed, M failed"; exits 1 on any failure.
import binascii
import json
import sys

from siagafw import proto, sms


def run(vectors):
    results = []  # (name, ok, detail)

    def check(name, ok, detail=""):
        results.append((name, bool(ok), detail))

    for case in vectors["encode"]:
        got = proto.encode(case["obj"])
        want = case["canonical"].encode()
        check("encode/" + case["name"], got == want, repr(got))
    for case in vectors["frames"]:
        signer = proto.Signer(proto.secret_from_hex(case["secret"]))
        got = signer.seal(proto.encode(case["obj"]))
        check("seal/" + case["name"], got == binascii.unhexlify(case["frame_hex"]), repr(got[:80]))
    for case in vectors["verify"]:
        signer = proto.Signer(proto.secret_from_hex(case["secret"]))
        got = signer.open(binascii.unhexlify(case["frame_hex"]))
        want = None if case["body"] is None else case["body"].encode()
        check("open/" + case["name"], got == want, repr(got))
    for case in vectors["coordinates"]:
        try:
            got = proto.parse_degrees_e6(case["text"])
        except ValueError:
            got = None
        check("coord/" + repr(case["text"]), got == case["e6"], repr(got))
    for case in vectors["device_ids"]:
        check("devid/" + case["id"], proto.valid_device_id(case["id"]) == case["valid"])
    for case in vectors["state_ranks"]:
        check("rank/" + case["state"], proto.state_rank(case["state"]) == case["rank"])
    for case in vectors.get("sms_sign", ()):
        signer = proto.Signer(proto.secret_from_hex(case["secret"]))
        call = case["call"]
        if call[0] == "alarm":
            got = sms.alarm_text(signer, *call[1:])
        elif call[0] == "test":
            got = sms.test_text(signer, *call[1:])
        else:
            got = sms.ack_text(signer, *call[1:])
        check("sms_sign/" + case["name"], got == case["text"] and len(got) <= sms.MAX_TEXT, got)
    for case in vectors.get("sms_open", ()):
        signer = proto.Signer(proto.secret_from_hex(case["secret"]))
        got = sms.open(signer, case["text"])
        if case["ok"]:
            ok = got is not None and got == case.get("want", got) and sms.why(signer, case["text"]) is None
        else:
            reason = sms.why(signer, case["text"]) or ""
            ok = got is None and reason.startswith(case["why"])
        check("sms_open/" + case["name"], ok, repr(got))
    return results


def main(path, checks=run):
    """Run `checks` (a function of the vectors giving (name, ok, detail) triples) on the vectors at
    path and print the report; the number of failures. check_ed25519.py reports through it too."""
    with open(path) as f:
        vectors = json.load(f)
    results = checks(vectors)
    failed = 0
    for name, ok, detail in results:
        if not ok:
            failed += 1
            print("FAIL " + name + " " + detail)
    print("%d passed, %d failed" % (len(results) - failed, failed))
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1]) else 0)
