from __future__ import annotations

pytest_plugins = ["tests.support.mosquitto", "tests.support.ccproc", "tests.support.system", "tests.support.postgres"]
