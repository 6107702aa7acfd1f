"""The gateway's admin API (gateway/api.py), with every HTTP failure turned into a technician's
message. The API never returns a secret; this client never logs one."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import httpx

from . import text
from .errors import EXIT_USAGE, GatewayError, GatewayUnreachable
from .text import t
from .validate import Location

if TYPE_CHECKING:
    from .settings import Settings, TokenSource

log = logging.getLogger(__name__)

# The gateway takes a bundle of at most this many bytes (POST /api/v1/firmware, docs/protocol.md §11).
BUNDLE_MAX_BYTES = 1024 * 1024
# A rollout the gateway halted (too many of its buttons failed): its own exit code, so that a
# script that widens rollouts stops there.
EXIT_HALTED = 6


class BundleRefused(GatewayError):
    """The gateway checked a bundle and refused it (422): `reason` is the one word of docs/ota.md."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str, reason: str) -> None:
        super().__init__(message, hint)
        self.reason = reason


class RolloutHalted(GatewayError):
    """The gateway halted the rollout of this version: too many of its buttons failed."""

    exit_code = EXIT_HALTED

    def __init__(self, message: str, hint: str, rollout: dict[str, Any] | None) -> None:
        super().__init__(message, hint)
        self.rollout = rollout


class GatewayClient:
    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0, token_from: TokenSource | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.token_from = token_from  # where the token came from, for the messages
        # The gateway's refusals carry a `message` in the language asked for (siaga/errortext.py).
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}",
                                                              "Accept-Language": text.current()},
                                  timeout=timeout_s, transport=transport)

    @classmethod
    def of(cls, settings: Settings) -> GatewayClient:
        """A client with the settings' token: the person's own, or the provisioning config's."""
        return cls(settings.gateway_url, settings.admin_token, token_from=settings.token_from)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise GatewayUnreachable(t("gateway.timeout", url=self.url), t("gateway.timeout.hint"),
                                     sent=not isinstance(exc, httpx.ConnectTimeout)) from None
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise GatewayUnreachable(t("gateway.unreachable", url=self.url, reason=reason),
                                     t("gateway.unreachable.hint"),
                                     sent=not isinstance(exc, httpx.ConnectError)) from None
        if resp.status_code in ok:
            return resp
        detail = _detail(resp)
        if resp.status_code == 401:
            raise self._refused_token()
        if resp.status_code == 403:
            raise GatewayError(t("gateway.forbidden", url=self.url, action=_action(method, path), detail=detail),
                               t("gateway.forbidden.hint"))
        if resp.status_code == 429:
            wait = resp.headers.get("Retry-After", "")
            raise GatewayError(t("gateway.throttled", url=self.url),
                               t("gateway.throttled.hint", wait=t("gateway.wait_s", seconds=wait) if wait.isdigit()
                                 else t("gateway.wait_minute")))
        raise GatewayError(t("gateway.answered", status=resp.status_code, request=f"{method} {path}", detail=detail))

    def _refused_token(self) -> GatewayError:
        """The gateway knows no person with this token (401); the message says which token it was."""
        src = self.token_from
        if src is None:
            return GatewayError(t("gateway.token_refused", url=self.url), t("gateway.token_refused.hint"))
        if src.personal:
            return GatewayError(t("gateway.personal_refused", url=self.url, where=src.where),
                                t("gateway.personal_refused.hint"))
        return GatewayError(t("gateway.admin_refused", url=self.url, where=src.where), t("gateway.admin_refused.hint"))

    # ---------------------------------------------------------------- devices

    def devices(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/devices").json()

    def device(self, device_id: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/api/v1/devices/{device_id}", ok=(200, 404))
        return None if resp.status_code == 404 else resp.json()

    def require(self, device_id: str) -> dict[str, Any]:
        found = self.device(device_id)
        if found is None:
            raise GatewayError(t("gateway.no_device", device=device_id), t("gateway.no_device.hint"))
        return found

    def register(self, device_id: str, secret_hex: str, location: Location, site: str | None,
                 phone: str | None = None) -> dict[str, Any]:
        body = {"id": device_id, "secret_hex": secret_hex, "lat": location.lat, "lon": location.lon,
                "address": location.address, "area": location.area, "site": site}
        if phone is not None:  # left out otherwise, so a gateway from before the SMS path takes it too
            body["phone"] = phone
        resp = self._call("POST", "/api/v1/devices", json=body, ok=(201, 409))
        if resp.status_code == 409:
            if phone is not None and phone in _detail(resp):
                raise GatewayError(t("gateway.phone_taken", phone=phone, detail=_detail(resp)),
                                   t("gateway.phone_taken.hint"))
            raise GatewayError(t("provision.id_taken", device=device_id), t("provision.id_taken.hint"))
        log.info("registered %s at %s", device_id, self.url)
        return resp.json()

    def revoke(self, device_id: str) -> bool:
        return bool(self._call("POST", f"/api/v1/devices/{device_id}/revoke").json().get("changed"))

    def rotate(self, device_id: str, secret_hex: str, mode: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/devices/{device_id}/rotate-key",
                          json={"secret_hex": secret_hex, "mode": mode}).json()

    def update(self, device_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        resp = self._call("PATCH", f"/api/v1/devices/{device_id}", json=fields, ok=(200, 409))
        if resp.status_code == 409:  # the only conflict a correction can have: another device's number
            raise GatewayError(t("gateway.phone_taken", phone=fields.get("phone"), detail=_detail(resp)),
                               t("gateway.phone_taken.hint"))
        return resp.json()

    def configure(self, device_id: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Change the button's remote configuration (docs/protocol.md §10); the device as it is after."""
        return self._call("PUT", f"/api/v1/devices/{device_id}/config", json=settings).json()

    def decommission(self, device_id: str) -> bool:
        return bool(self._call("POST", f"/api/v1/devices/{device_id}/decommission").json().get("changed"))

    # ---------------------------------------------------------------- firmware updates over the air

    def publish_firmware(self, data: bytes) -> tuple[bool, dict[str, Any]]:
        """Upload a signed bundle: (new, the bundle as the gateway keeps it); `new` is False when the
        gateway had it already. A refusal raises BundleRefused with the gateway's reason word."""
        resp = self._call("POST", "/api/v1/firmware", content=data, ok=(200, 201, 409, 413, 422),
                          headers={"Content-Type": "application/octet-stream"})
        if resp.status_code == 409:
            raise GatewayError(t("ota.no_ota_section", url=self.url, detail=_detail(resp)),
                               t("ota.no_ota_section.hint"))
        if resp.status_code == 413:
            raise BundleRefused(t("publish.refused", reason="too_large", why=t("ota.reason.too_large")),
                                t("publish.refused.hint"), "too_large")
        if resp.status_code == 422:
            reason = _reason(resp)
            raise BundleRefused(t("publish.refused", reason=reason or "?", why=reason_text(reason, _detail(resp))),
                                t("publish.refused.hint"), reason or "")
        return resp.status_code == 201, resp.json()

    def firmware(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/firmware").json()

    def start_rollout(self, version: str, percent: int, *, max_failed_percent: int | None = None,
                      resume: bool = False, allow_downgrade: bool = False) -> tuple[bool, dict[str, Any]]:
        """Start the rollout of `version` to `percent` of its buttons, or widen (or, `resume`, resume)
        the one under way: (new, the rollout). A halted rollout raises RolloutHalted. The gateway
        refuses a version older than one a button it would reach runs, unless `allow_downgrade`."""
        body: dict[str, Any] = {"version": version, "percent": percent}
        if max_failed_percent is not None:
            body["max_failed_percent"] = max_failed_percent
        if resume:
            body["resume"] = True
        if allow_downgrade:
            body["allow_downgrade"] = True
        resp = self._call("POST", "/api/v1/rollouts", json=body, ok=(200, 201, 404, 409, 422))
        if resp.status_code == 404:
            raise GatewayError(t("rollout.no_bundle", version=version, detail=_detail(resp)),
                               t("rollout.no_bundle.hint"))
        if resp.status_code == 422:
            raise GatewayError(t("rollout.refused", version=version, detail=_detail(resp)), t("rollout.refused.hint"))
        if resp.status_code == 409:
            raise self._conflict(version, percent, resp)
        return resp.status_code == 201, resp.json()

    def _conflict(self, version: str, percent: int, resp: httpx.Response) -> GatewayError:
        """Why the gateway refused a rollout (409): the rollout of that version is halted (its own
        message, from the rollout as the gateway lists it), or another conflict in its words."""
        halted = next((r for r in self.rollouts() if r.get("version") == version and r.get("state") == "halted"), None)
        if halted is None:
            return GatewayError(t("rollout.refused", version=version, detail=_detail(resp)),
                                t("rollout.refused.hint"))
        counts = halted.get("counts") or {}
        return RolloutHalted(
            t("rollout.halted", id=halted.get("id"), version=version,
              failed=counts.get("failed", 0), targeted=halted.get("targeted", 0),
              max_failed=halted.get("max_failed_percent", "?")),
            t("rollout.halted.hint", id=halted.get("id"), version=version, percent=percent), halted)

    def rollouts(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/rollouts").json()

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        resp = self._call("GET", f"/api/v1/rollouts/{rollout_id}", ok=(200, 404))
        if resp.status_code == 404:
            raise GatewayError(t("rollout.unknown", id=rollout_id), t("rollout.unknown.hint"))
        return resp.json()

    def cancel_rollout(self, rollout_id: int) -> dict[str, Any]:
        resp = self._call("POST", f"/api/v1/rollouts/{rollout_id}/cancel", ok=(200, 404, 409))
        if resp.status_code == 404:
            raise GatewayError(t("rollout.unknown", id=rollout_id), t("rollout.unknown.hint"))
        if resp.status_code == 409:
            raise GatewayError(t("rollout.not_cancellable", id=rollout_id, detail=_detail(resp)))
        return resp.json()

    # ---------------------------------------------------------------- alarms and audit

    def alarms(self, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/alarms", params={"device_id": device_id, "limit": limit}).json()

    def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/audit", params={"limit": limit}).json()


def reason_text(reason: str | None, fallback: str = "") -> str:
    """What a reason word of a refused or failed update means (a bundle's, or one a button reported):
    the catalog's sentence; an unknown word: `fallback`, else the word itself."""
    texts = {
        "malformed": t("ota.reason.malformed"),
        "too_large": t("ota.reason.too_large"),
        "unknown_key": t("ota.reason.unknown_key"),
        "bad_signature": t("ota.reason.bad_signature"),
        "wrong_board": t("ota.reason.wrong_board"),
        "boot_too_old": t("ota.reason.boot_too_old"),
        "wrong_hash": t("ota.reason.wrong_hash"),
        "wrong_sha256": t("ota.reason.wrong_sha256"),
        "no_space": t("ota.reason.no_space"),
        "selftest": t("ota.reason.selftest"),
        "crashes": t("ota.reason.crashes"),
        "wrong_mpy": t("ota.reason.wrong_mpy"),
        "stalled": t("ota.reason.stalled"),
    }
    return texts.get(reason or "", fallback or reason or "")


def _reason(resp: httpx.Response) -> str | None:
    """The reason word of a refusal body (`{"detail": ..., "reason": "bad_signature"}`)."""
    try:
        body = resp.json()
    except ValueError:
        return None
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) and re.fullmatch(r"[a-z0-9_]{1,40}", reason) else None


_DEVICE_ACTION = re.compile(r"^/api/v1/devices/([^/]+)(/revoke|/rotate-key|/decommission)?$")


def _action(method: str, path: str) -> str:
    """What a refused request wanted, in words: "to revoke jkt-gambir-0001"."""
    found = _DEVICE_ACTION.match(path)
    if found is not None:
        device_id, what = found.groups()
        if method == "POST" and what == "/revoke":
            return t("gateway.action.revoke", device=device_id)
        if method == "POST" and what == "/rotate-key":
            return t("gateway.action.rotate", device=device_id)
        if method == "POST" and what == "/decommission":
            return t("gateway.action.decommission", device=device_id)
        if method == "PATCH" and what is None:
            return t("gateway.action.change", device=device_id)
    if path == "/api/v1/audit":
        return t("gateway.action.audit")
    if method == "POST" and path == "/api/v1/firmware":
        return t("gateway.action.publish")
    if method == "POST" and path == "/api/v1/rollouts":
        return t("gateway.action.rollout")
    return f"{method} {path}"


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict) and isinstance(body.get("message"), str) and text.current() != "en":
        return body["message"][:300]  # the gateway's own words, in the technician's language
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return str(body)[:200]
