# Checks the firmware's Ed25519 verifier and SHA-512 against ed25519_v1.json. Runs unchanged under
# CPython and under the MicroPython unix port:
#   MICROPYPATH=firmware/lib micropython tests/vectors/check_ed25519.py tests/vectors/ed25519_v1.json
# Every signature is checked twice: by verify() and by Verify stepped one loop iteration at a time.
# Prints one line per failure and a closing "N passed, M failed"; exits 1 on any failure.
import binascii
import sys

from siagafw import ed25519


def run(vectors):
    results = []  # (name, ok, detail)
    for case in vectors["verify"]:
        public = binascii.unhexlify(case["public"])
        message = binascii.unhexlify(case["message"])
        signature = binascii.unhexlify(case["signature"])
        got = ed25519.verify(public, message, signature)
        stepper = ed25519.Verify(public, message, signature)
        steps = 0
        stepped = None
        while stepped is None and steps < 1000:
            stepped = stepper.step(1)
            steps += 1
        ok = got is case["valid"] and stepped is case["valid"]
        results.append(("verify/" + case["name"], ok, "%r %r after %d steps" % (got, stepped, steps)))
    for case in vectors["sha512"]:
        got = binascii.hexlify(ed25519.sha512(binascii.unhexlify(case["data"]))).decode()
        results.append(("sha512/%d" % (len(case["data"]) // 2), got == case["sha512"], got))
    return results


if __name__ == "__main__":
    # The report of the protocol vectors' checker: this folder is on the path as the script's own.
    from check import main

    sys.exit(1 if main(sys.argv[1], run) else 0)
