"""The command center's escalation webhook signed after Standard Webhooks (`[escalation]
webhook_secret_file`): the real app in-process escalates an incident and a real HTTP receiver checks
every delivery with the specification's reference package (`standardwebhooks`) and against
docs/schemas/webhook-alarm.escalated.json; a retry keeps its id and body; without a secret the
delivery is what it always was. Also the configuration of the secrets."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import jsonschema_rs
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from siaga.commandcenter.callbacks import signed_body
from siaga.commandcenter.config import CallbackSettings, CCConfig, EscalationSettings
from siaga.gateway.webhooks import format_secret
from siaga.settings import ConfigError
from tests.support.receiver import Answer, HttpReceiver, Request
from tests.test_commandcenter import INTAKE_TOKEN, OPERATOR_TOKEN, db_rows, running_api

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "schemas" / "webhook-alarm.escalated.json"
VALIDATOR = jsonschema_rs.Draft202012Validator(json.loads(SCHEMA.read_text()), validate_formats=True)
OLD_KEY, NEW_KEY = bytes(range(32)), bytes(range(200, 232))
OLD, NEW = format_secret(OLD_KEY), format_secret(NEW_KEY)
HOOK_TOKEN = "hook-" + "h" * 24
FAST = CallbackSettings(initial_backoff_s=0.05, max_backoff_s=0.1, idle_poll_s=0.5)


@dataclass
class Delivery:
    headers: dict[str, str]  # names in lower case
    body: bytes  # as received, before any parsing
    status: int  # what the receiver answered
    verified_by: list[str]  # the secrets (of those the receiver holds) that verified it
    problem: str | None  # why a secret did not verify it, or why the payload is wrong


class Receiver(HttpReceiver):
    """A city's system on a free loopback port. Answers the statuses of `answers` in turn, then 204.
    Every request is checked with each secret in `secrets` by the reference package, and the payload
    of a verified one against the schema. A 500 is held until the clock has passed the second of
    the request's webhook-timestamp, so that the retry is made in a later second."""

    def __init__(self, secrets: list[str], answers: list[int] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self._secrets = secrets
        self._answers = iter(answers or [])
        self._cond = threading.Condition()
        super().__init__(self._check, path="/hooks/escalation")

    def _check(self, request: Request) -> Answer:
        body, headers = request.body, request.headers
        verified, problem = [], None
        for i, secret in enumerate(self._secrets):
            try:
                Webhook(secret).verify(body, headers)
                verified.append(secret)
            except WebhookVerificationError as exc:
                problem = f"secret {i}: {exc}"
        if verified:
            try:
                VALIDATOR.validate(json.loads(body))
            except jsonschema_rs.ValidationError as exc:
                problem = f"schema: {exc}"
        status = next(self._answers, 204)
        if status == 500 and "webhook-timestamp" in headers:
            while time.time() < int(headers["webhook-timestamp"]) + 1:
                time.sleep(0.02)
        return Answer(status, after=lambda: self._record(Delivery(headers, body, status, verified, problem)))

    def _record(self, delivery: Delivery) -> None:
        with self._cond:
            self.deliveries.append(delivery)
            self._cond.notify_all()

    def wait_for_success(self, timeout_s: float = 5.0) -> list[Delivery]:
        with self._cond:
            if not self._cond.wait_for(lambda: any(d.status == 204 for d in self.deliveries), timeout_s):
                raise AssertionError(f"no delivery answered 204 within {timeout_s} s: {self.deliveries}")
            return list(self.deliveries)


async def escalate_one(escalation: EscalationSettings, rx: Receiver, db: Path) -> tuple[str, str, list[Delivery]]:
    """(incident ref, the stored webhook body, the deliveries up to the first success) of one incident
    left unacknowledged under `escalation`, in the real app."""
    async with running_api(db, escalation=escalation, callbacks=FAST) as api:
        ref = await api.new_incident(seq=1)
        deliveries = await asyncio.to_thread(rx.wait_for_success)
    [(key, stored)] = db_rows(db, "SELECT incident_id, body FROM webhook_outbox")
    assert key == ref
    return ref, stored, deliveries


async def test_a_signed_escalation_is_verified_by_the_reference_package_and_fits_the_schema(tmp_path: Path) -> None:
    with Receiver([OLD, NEW]) as rx:
        # Signed with both secrets of a rotation: a receiver holding either one accepts it.
        escalation = EscalationSettings(after_s=0.1, webhook_url=rx.url, webhook_token=HOOK_TOKEN,
                                        webhook_secrets=(NEW_KEY, OLD_KEY))
        ref, stored, [got] = await escalate_one(escalation, rx, tmp_path / "cc.sqlite3")
    assert got.problem is None, got.problem
    assert got.verified_by == [OLD, NEW]
    assert len(got.headers["webhook-signature"].split()) == 2
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    assert got.headers["authorization"] == f"Bearer {HOOK_TOKEN}"  # the bearer token goes along
    assert got.headers["content-type"] == "application/json"

    payload = json.loads(got.body)
    old_body = json.loads(stored)
    assert payload["type"] == "alarm.escalated"
    assert payload["timestamp"] == old_body["at"] == payload["data"]["at"]
    assert payload["data"] == {k: v for k, v in old_body.items() if k != "event"}
    assert payload["data"]["incident"]["id"] == ref
    assert got.headers["webhook-id"] == payload["data"]["event_id"] == f"{ref}:escalated"
    assert got.body == signed_body(stored)[1]  # compact JSON: the bytes signed are the bytes sent

    # The signature covers the body: one byte changed and the reference package refuses it.
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(got.body.replace(b'"medical"', b'"medicaL"'), got.headers)


async def test_a_retry_keeps_the_webhook_id_and_body_with_a_new_timestamp(tmp_path: Path) -> None:
    with Receiver([NEW], answers=[500]) as rx:
        escalation = EscalationSettings(after_s=0.1, webhook_url=rx.url, webhook_secrets=(NEW_KEY,))
        ref, _, deliveries = await escalate_one(escalation, rx, tmp_path / "cc.sqlite3")
    first, retry = deliveries
    assert (first.status, retry.status) == (500, 204)
    assert first.problem is None and retry.problem is None, (first.problem, retry.problem)
    assert first.verified_by == retry.verified_by == [NEW]
    assert first.headers["webhook-id"] == retry.headers["webhook-id"] == f"{ref}:escalated"
    assert first.body == retry.body
    assert int(retry.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert retry.headers["webhook-signature"] != first.headers["webhook-signature"]
    assert "authorization" not in retry.headers  # no token configured: the signature alone
    [(attempts, done)] = db_rows(tmp_path / "cc.sqlite3", "SELECT attempts, delivered_at FROM webhook_outbox")
    assert attempts == 2 and done is not None


async def test_without_a_secret_the_escalation_body_is_sent_as_before(tmp_path: Path) -> None:
    with Receiver([]) as rx:
        escalation = EscalationSettings(after_s=0.1, webhook_url=rx.url, webhook_token=HOOK_TOKEN)
        ref, stored, [got] = await escalate_one(escalation, rx, tmp_path / "cc.sqlite3")
    assert got.body == stored.encode()  # the stored body, byte for byte
    body = json.loads(got.body)
    assert (body["event"], body["event_id"], body["incident"]["id"]) == ("incident.escalated", f"{ref}:escalated", ref)
    assert not any(name.startswith("webhook-") for name in got.headers)
    assert got.headers["authorization"] == f"Bearer {HOOK_TOKEN}"
    assert got.headers["content-type"] == "application/json"


# ---- configuration ---------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "intake.token").write_text(INTAKE_TOKEN + "\n")
    (tmp_path / "op1.token").write_text(OPERATOR_TOKEN + "\n")
    (tmp_path / "hook.token").write_text(HOOK_TOKEN + "\n")
    (tmp_path / "old.whsec").write_text(OLD + "\n")
    (tmp_path / "new.whsec").write_text(NEW + "\n")
    return tmp_path


def load(folder: Path, escalation: str) -> CCConfig:
    path = folder / "cc.toml"
    path.write_text('[intake]\ntoken_file = "intake.token"\n[[operators]]\nname = "operator-1"\n'
                    f'token_file = "op1.token"\n[escalation]\n{escalation}\n')
    return CCConfig.load(path)


URL = 'webhook_url = "https://alerts.example.org/siaga"'


def test_config_reads_one_secret_from_a_file_or_the_environment_or_several(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load(folder, f'{URL}\nwebhook_secret_file = "new.whsec"\nwebhook_token_file = "hook.token"')
    assert cfg.escalation.webhook_secrets == (NEW_KEY,)
    assert cfg.escalation.webhook_token == HOOK_TOKEN
    monkeypatch.setenv("CC_HOOK_SECRET", OLD)
    assert load(folder, f'{URL}\nwebhook_secret_env = "CC_HOOK_SECRET"').escalation.webhook_secrets == (OLD_KEY,)
    cfg = load(folder, f'{URL}\nwebhook_secret_files = ["new.whsec", "{folder / "old.whsec"}"]')
    assert cfg.escalation.webhook_secrets == (NEW_KEY, OLD_KEY)
    assert "webhook_secrets" not in repr(cfg)  # never in a log line or a traceback
    assert load(folder, URL).escalation.webhook_secrets == ()  # not configured: unsigned, as before


@pytest.mark.parametrize(
    ("escalation", "message"),
    [
        ('webhook_secret_file = "new.whsec"', "webhook secret without webhook_url"),
        (f'{URL}\nwebhook_secret_file = "bad.whsec"', r"escalation\.webhook_secret_file: .*whsec_"),
        (f'{URL}\nwebhook_secret_file = "short.whsec"', r"escalation\.webhook_secret_file: .*18 bytes"),
        (f'{URL}\nwebhook_secret_file = "nobase64.whsec"', r"escalation\.webhook_secret_file: .*not base64"),
        (f'{URL}\nwebhook_secret_env = "CC_HOOK_UNSET"', r"escalation\.webhook_secret_env: .*empty or unset"),
        (f'{URL}\nwebhook_secret_files = ["new.whsec", "bad.whsec"]', r"webhook_secret_files\[1\]: .*whsec_"),
        (f'{URL}\nwebhook_secret_files = ["missing.whsec"]', r"webhook_secret_files\[0\]: cannot read"),
        (f'{URL}\nwebhook_secret_files = []', "webhook_secret_files"),
        (f'{URL}\nwebhook_secret_files = ["new.whsec"]\nwebhook_secret_file = "old.whsec"', "leave out"),
        (f'{URL}\nwebhook_secret_files = ["new.whsec", "new.whsec"]', "twice"),
        (f'{URL}\nwebhook_secret_file = "new.whsec"\nwebhook_token_file = "new.whsec"', "token must differ"),
        (f'{URL}\nwebhook_secret = "{NEW}"', "inline"),
        (f'{URL}\nwebhook_secrets_file = "new.whsec"', "webhook_secrets_file"),
    ],
)
def test_config_refuses_a_bad_secret_by_naming_the_key_never_the_secret(
    folder: Path, escalation: str, message: str
) -> None:
    (folder / "bad.whsec").write_text("sk_live_not-a-standard-webhooks-secret\n")
    (folder / "short.whsec").write_text(format_secret(b"k" * 24)[:-8] + "\n")  # 18 bytes
    (folder / "nobase64.whsec").write_text("whsec_%%%%-not-base64-%%%%\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load(folder, escalation)
    for text in ("sk_live_not", NEW[6:], "%%%%-not-base64"):
        assert text not in str(caught.value)


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="without webhook_url"):
        EscalationSettings(webhook_secrets=(NEW_KEY,))
    with pytest.raises(ConfigError, match="24 to 64 bytes"):
        EscalationSettings(webhook_url="http://x", webhook_secrets=(b"short",))
