from __future__ import annotations

import pytest

pytest_plugins = ["tests.support.mosquitto", "tests.support.ccproc", "tests.support.system", "tests.support.postgres"]

# The files that take longest (minutes, not seconds: services in processes, a browser, schemathesis
# per role), slowest first. The suite runs on three xdist workers that take whole files in collection
# order (pyproject.toml); a long file handed out last keeps one worker busy while the others have
# nothing left, so these are collected first and the short ones fill in around them. Order only:
# a file missing here still runs, after these.
SLOW_FIRST = (
    "test_schemathesis.py",
    "test_console_browser.py",
    "test_destinations.py",
    "test_ota_e2e.py",
    "test_gateway_ota.py",
    "test_firmware_ota.py",
    "test_commandcenter_postgres.py",
    "test_gateway_cluster.py",
    "test_firmware_integration.py",
    "test_commandcenter.py",
    "test_gateway_people.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: the rest keep their order
