"""The gateway's admin API (gateway/api.py), with every HTTP failure turned into a technician's
message. The API never returns a secret; this client never logs one."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import httpx

from .errors import GatewayError, GatewayUnreachable
from .validate import Location

if TYPE_CHECKING:
    from .settings import Settings, TokenSource

log = logging.getLogger(__name__)


class GatewayClient:
    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0, token_from: TokenSource | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.token_from = token_from  # where the token came from, for the messages
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
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
            raise GatewayUnreachable(f"the gateway at {self.url} did not answer in time",
                                     "check the laptop's network (VPN, hotspot) and the [gateway] url",
                                     sent=not isinstance(exc, httpx.ConnectTimeout)) from None
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise GatewayUnreachable(f"cannot reach the gateway at {self.url} ({reason})",
                                     "check the laptop's network (VPN, hotspot) and the [gateway] url in the "
                                     "provisioning config", sent=not isinstance(exc, httpx.ConnectError)) from None
        if resp.status_code in ok:
            return resp
        detail = _detail(resp)
        if resp.status_code == 401:
            raise self._refused_token()
        if resp.status_code == 403:
            raise GatewayError(f"the gateway at {self.url} refused {_action(method, path)} (403): {detail}",
                               "the role of the person whose token this is may not do it: a technician may list, "
                               "show, export, add and provision devices and correct their place (set-location); "
                               "revoke, rotate-key, decommission and the audit log need an administrator: ask one "
                               "to do it with their own token")
        if resp.status_code == 429:
            wait = resp.headers.get("Retry-After", "")
            raise GatewayError(f"the gateway at {self.url} refuses requests from this address for a while "
                               "(429), after too many wrong tokens",
                               f"wait{f' {wait} s' if wait.isdigit() else ' a minute'}, and check the token "
                               "first (--token-file, $SIAGA_TOKEN or [gateway] admin_token_file / admin_token_env)")
        raise GatewayError(f"the gateway answered {resp.status_code} to {method} {path}: {detail}")

    def _refused_token(self) -> GatewayError:
        """The gateway knows no person with this token (401); the message says which token it was."""
        src = self.token_from
        if src is None:
            return GatewayError(f"the gateway at {self.url} refused the token (personal or admin)",
                                "give your personal token with --token-file or $SIAGA_TOKEN, or check [gateway] "
                                "admin_token_file / admin_token_env in the provisioning config")
        if src.personal:
            return GatewayError(f"the gateway at {self.url} refused your personal token (from {src.where})",
                                "it may be mistyped, or rotated or revoked at the gateway: ask the gateway's "
                                "administrator for your current token, put it alone on one line into a file of "
                                "mode 600 and give that with --token-file (or put it in $SIAGA_TOKEN)")
        return GatewayError(f"the gateway at {self.url} refused the admin token of the provisioning config "
                            f"({src.where})",
                            "the token there is not the gateway's: check that file or variable with the gateway's "
                            "administrator, or give your personal token with --token-file or $SIAGA_TOKEN")

    # ---------------------------------------------------------------- devices

    def devices(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/devices").json()

    def device(self, device_id: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/api/v1/devices/{device_id}", ok=(200, 404))
        return None if resp.status_code == 404 else resp.json()

    def require(self, device_id: str) -> dict[str, Any]:
        found = self.device(device_id)
        if found is None:
            raise GatewayError(f"the gateway has no device {device_id}", "`siaga devices list` shows the devices")
        return found

    def register(self, device_id: str, secret_hex: str, location: Location, site: str | None) -> dict[str, Any]:
        body = {"id": device_id, "secret_hex": secret_hex, "lat": location.lat, "lon": location.lon,
                "address": location.address, "area": location.area, "site": site}
        resp = self._call("POST", "/api/v1/devices", json=body, ok=(201, 409))
        if resp.status_code == 409:
            raise GatewayError(f"device {device_id} is already registered at the gateway",
                               "choose another id, or leave --id out to get the next free number")
        log.info("registered %s at %s", device_id, self.url)
        return resp.json()

    def revoke(self, device_id: str) -> bool:
        return bool(self._call("POST", f"/api/v1/devices/{device_id}/revoke").json().get("changed"))

    def rotate(self, device_id: str, secret_hex: str, mode: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/devices/{device_id}/rotate-key",
                          json={"secret_hex": secret_hex, "mode": mode}).json()

    def update(self, device_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", f"/api/v1/devices/{device_id}", json=fields).json()

    def decommission(self, device_id: str) -> bool:
        return bool(self._call("POST", f"/api/v1/devices/{device_id}/decommission").json().get("changed"))

    # ---------------------------------------------------------------- alarms and audit

    def alarms(self, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/alarms", params={"device_id": device_id, "limit": limit}).json()

    def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/audit", params={"limit": limit}).json()


_DEVICE_ACTION = re.compile(r"^/api/v1/devices/([^/]+)(/revoke|/rotate-key|/decommission)?$")


def _action(method: str, path: str) -> str:
    """What a refused request wanted, in words: "to revoke jkt-gambir-0001"."""
    found = _DEVICE_ACTION.match(path)
    if found is not None:
        device_id, what = found.groups()
        if method == "POST" and what == "/revoke":
            return f"to revoke {device_id}"
        if method == "POST" and what == "/rotate-key":
            return f"a new key for {device_id}"
        if method == "POST" and what == "/decommission":
            return f"to decommission {device_id}"
        if method == "PATCH" and what is None:
            return f"to change {device_id}"
    if path == "/api/v1/audit":
        return "to show the audit log"
    return f"{method} {path}"


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return str(body)[:200]
