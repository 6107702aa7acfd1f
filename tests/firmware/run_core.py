# Runs core_tests.py under MicroPython: micropython run_core.py <scratch dir>
# Prints "FAIL <name>: <error>" per failure and a closing "N passed, M failed"; exits 1 on failure.
import os
import sys

import core_tests


def main(scratch):
    failed = 0
    for i, test in enumerate(core_tests.TESTS):
        tmp = scratch + "/t%d" % i
        os.mkdir(tmp)
        try:
            test(tmp)
        except Exception as exc:  # report every failure, then carry on with the next test
            failed += 1
            print("FAIL %s: %s %s" % (test.__name__, type(exc).__name__, exc))
    print("%d passed, %d failed" % (len(core_tests.TESTS) - failed, failed))
    return failed


sys.exit(1 if main(sys.argv[1]) else 0)
