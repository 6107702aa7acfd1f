"""The errors a technician can act on. Each carries the message to print, a hint that says what to
do next, and the exit code of the `siaga provision` / `siaga devices` commands (docs/technician.md
lists them). Anything else that escapes is a bug in the tool: exit code 70 and, with --verbose, the
traceback."""

from __future__ import annotations

from .text import t

EXIT_OK = 0
EXIT_SELFTEST = 1
EXIT_USAGE = 2
EXIT_BOARD = 3
EXIT_GATEWAY = 4
EXIT_BROKER = 5
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE


class ProvisionError(Exception):
    """A failure with a message for the technician and a hint that says what to do about it."""

    exit_code = EXIT_SELFTEST

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  {self.hint}"


class UsageError(ProvisionError):
    """A flag, CSV cell or config value is missing or invalid; the hint says what to type instead."""

    exit_code = EXIT_USAGE


def _field_name(field: str) -> str:
    """A validator's field (named in English on `Invalid.field`) as the technician reads it."""
    names = {
        "device id": t("field.device_id"),
        "id prefix": t("field.id_prefix"),
        "latitude": t("field.latitude"),
        "longitude": t("field.longitude"),
        "location": t("field.location"),
        "address": t("field.address"),
        "notes": t("field.notes"),
        "area": t("field.area"),
        "site": t("field.site"),
        "phone": t("field.phone"),
        "SMS gateway": t("field.sms_gateway"),
        "kind": t("field.kind"),
        "types": t("field.types"),
        "Wi-Fi SSID": t("field.ssid"),
        "Wi-Fi password": t("field.wifi_password"),
        "device secret": t("field.device_secret"),
        "broker password": t("field.broker_password"),
        "broker host": t("field.broker_host"),
        "broker port": t("field.broker_port"),
        "port": t("field.port"),
        "gateway url": t("field.gateway_url"),
        "support contact": t("field.support"),
        "organisation": t("field.organisation"),
    }
    return names.get(field, field)


class Invalid(UsageError):
    """A validator's verdict: which field, what was given, what to type instead (ESPHome style)."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        shown = repr(value) if isinstance(value, str) else str(value)
        super().__init__(t("invalid.value", field=_field_name(field), value=shown), expected)
        self.field = field
        self.value = value
        self.expected = expected


class BoardError(ProvisionError):
    exit_code = EXIT_BOARD


class WrongPortError(BoardError):
    """The serial port does not exist or cannot be opened."""


class NoBoardError(BoardError):
    """No board was found, or nothing answers on the port."""


class NoMicroPythonError(BoardError):
    """Something answers on the port, but not MicroPython's raw REPL."""


class BoardCodeError(BoardError):
    """Code run on the board raised an exception (the board's traceback is kept in `detail`)."""

    def __init__(self, message: str, hint: str = "", detail: str = "") -> None:
        super().__init__(message, hint)
        self.detail = detail


class BoardWriteError(BoardError):
    """A file could not be written to the board's filesystem, or did not verify."""


class WifiError(BoardError):
    """The board could not join the Wi-Fi network with the credentials given."""


class GatewayError(ProvisionError):
    exit_code = EXIT_GATEWAY


class GatewayUnreachable(GatewayError):
    """No HTTP answer from the gateway at all. `sent` is False when no connection was made, so the
    request cannot have taken effect; after a timeout or a dropped connection it may have."""

    def __init__(self, message: str, hint: str = "", *, sent: bool = True) -> None:
        super().__init__(message, hint)
        self.sent = sent


class BrokerError(ProvisionError):
    exit_code = EXIT_BROKER


class SelfTestError(ProvisionError):
    """The board runs, but the test alarm did not make the round trip."""

    exit_code = EXIT_SELFTEST
