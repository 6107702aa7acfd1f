"""The reference command center as an ASGI app: `create_app(cfg)`.

With SQLite the process runs everything itself. With PostgreSQL several processes may share the
database: each serves requests and relays the others' changes to its consoles (live.Relay), and one
of them, elected with an advisory lock (cluster.Leadership), runs the background loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request

from siaga.settings import ConfigError
from siaga.web import (
    KIB,
    Guard,
    StrictRoute,
    flush_every,
    guard_entrance,
)

from . import console, devices, dispatches, events, incidents, intake, models, plumbing, sessions, shifts, supervisor
from .callbacks import CallbackSender, WebhookSender
from .cluster import Leadership
from .config import CCConfig
from .deps import Principal, Services, authenticate
from .domain import rfc3339
from .escalation import Escalator
from .live import Broadcaster, Relay
from .models import Health
from .retention import RetentionTask
from .store import SECOND_WEBHOOK_OUTBOX, Incident, Store, Wake

log = logging.getLogger(__name__)

_health = APIRouter(tags=["health"], route_class=StrictRoute)

# Bodies larger than this are refused with 413 while they arrive, before they are parsed; routes
# that take more (the batch intake) or less (sign-in) say so themselves (docs/security.md).
BODY_MAX = 64 * KIB


@_health.get("/health", summary="Liveness check (no authentication)", response_model=Health)
async def health() -> Health:
    return Health(status="ok")


def create_app(cfg: CCConfig, *, config_path: str | Path | None = None) -> FastAPI:
    """`config_path`: where `cfg` came from; given, SIGHUP re-reads the people and tokens in it
    (`reload_people`)."""
    # Made here rather than in the lifespan, so that the server can end the live streams before it
    # waits for open connections at shutdown (see server.py and close_live_streams).
    broadcaster = Broadcaster()
    models.use_agency_names(cfg.agencies)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await Store.open(cfg.database, password=cfg.db_password, pool_size=cfg.db_pool_size)
        background = _Background(cfg, store, broadcaster)
        relay: Relay | None = None
        leadership: Leadership | None = None
        recorder: asyncio.Task[None] | None = None
        try:
            if store.shared:
                # Listening before the first request is served, so no console misses another
                # process's change; the loops start in whichever process is elected.
                relay = Relay(store, broadcaster, wake=background.wake)
                await relay.start()
                leadership = Leadership(store, on_elected=background.start, on_deposed=background.stop)
                leadership.start()
            else:
                background.start()
            app.state.services = Services(
                config=cfg,
                store=store,
                notify_callbacks=background.notify_callbacks,
                live=broadcaster,
                notify_escalation=background.notify_escalation,
            )
            app.state.leadership = leadership
            app.state.relay = relay
            recorder = asyncio.create_task(
                flush_every(cfg.throttle.record_every_s, lambda: _record_failures(app)), name="failed-attempts"
            )
            if config_path is not None:
                _reload_on_sighup(app, Path(config_path))
            log.info("command center ready (database %s)", store.describe)
            yield
        finally:
            if config_path is not None:
                with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                    asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if recorder is not None:
                recorder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recorder
            broadcaster.close()
            if relay is not None:
                await relay.stop()
            if leadership is not None:
                await leadership.stop()  # stops the loops if this process ran them, then frees the lock
            else:
                await background.stop()
            await store.close()
            log.info("command center stopped")

    app = FastAPI(
        title="Siaga reference command center",
        version="1",
        summary="Receives panic-button alarms from Siaga gateways; operators handle them as incidents.",
        description=(
            "Gateway -> command center is protocol §7 (docs/protocol.md): alarms (one or a batch) and "
            "device faults. State changes made by "
            "operators are reported back with `POST <gateway>/api/v1/cc/state`, retried until the "
            "gateway answers 2xx. People sign in with a personal bearer token (API clients) or a session "
            "cookie from `POST /api/v1/session` (the browser console at `/console`); roles: operator, "
            "supervisor, agency viewer."
        ),
        lifespan=lifespan,
    )
    app.state.config = cfg
    app.state.live = broadcaster
    guard_entrance(app, authenticate, cfg.throttle, BODY_MAX)  # before the routers: they inherit BODY_MAX
    app.state.person_language = _session_language  # the language of error messages (siaga/errortext.py)
    app.include_router(_health)
    app.include_router(intake.router)
    app.include_router(incidents.router)
    app.include_router(devices.router)
    app.include_router(events.router)
    app.include_router(sessions.router)
    app.include_router(supervisor.router)
    app.include_router(plumbing.router)
    app.include_router(shifts.router)
    app.include_router(console.router)
    console.mount_static(app)
    return app


async def _session_language(request: Request) -> str | None:
    """A console session's person's language (their choice, else their account's), for the `message`
    of an error answer; None for API clients and people without one: Accept-Language decides then."""
    principal: Principal | None = getattr(request.state, "principal", None)
    services: Services | None = getattr(request.app.state, "services", None)
    if principal is None or principal.session_hash is None or services is None:
        return None
    account = services.config.operators.get(principal.name)
    return await services.store.get_language(principal.name) or (account.language if account else None)


def close_live_streams(app: FastAPI) -> None:
    """End the console's event streams. A server that waits for open connections before it shuts the
    app down (uvicorn does) must call this first, or every open console delays the shutdown."""
    app.state.live.close()


class _Background:
    """The loops that run in one process: state reports to the gateway, webhook events, escalation,
    the gateways' silence (plumbing.PlumbingSupervisor).
    `start()` and `stop()` may follow each other any number of times (a process that loses and later
    regains the leadership)."""

    def __init__(self, cfg: CCConfig, store: Store, live: Broadcaster) -> None:
        self._cfg = cfg
        self._store = store
        self._live = live
        self._sender: CallbackSender | None = None
        self._webhooks: WebhookSender | None = None
        self._escalator: Escalator | None = None
        self._unanswered: dispatches.UnansweredDispatches | None = None
        self._plumbing: plumbing.PlumbingSupervisor | None = None
        self._second_webhooks: WebhookSender | None = None  # [escalation] second_webhook_url
        self._retention: RetentionTask | None = None

    def start(self) -> None:
        cfg = self._cfg
        if cfg.gateway_urls and cfg.gateway_token is not None:
            self._sender = CallbackSender(
                self._store, gateway_urls=cfg.gateway_urls, gateway_token=cfg.gateway_token, settings=cfg.callbacks
            )
            self._sender.start()
        else:
            # Kept, not dropped: once a gateway is configured, the reports still go out.
            log.warning("no [gateway] configured: state reports are queued but not sent")
        if cfg.escalation.webhook_url is not None:
            # The same store-and-forward sender and retry settings as the state reports.
            self._webhooks = WebhookSender(
                self._store,
                url=cfg.escalation.webhook_url,
                token=cfg.escalation.webhook_token,
                settings=cfg.callbacks,
                secrets=cfg.escalation.webhook_secrets,  # none: the body as stored, unsigned
            )
            self._webhooks.start()
        self._escalator = Escalator(self._store, cfg.escalation, on_escalated=self._escalated)
        self._escalator.start()
        self._unanswered = dispatches.UnansweredDispatches(
            self._store, cfg.dispatch, webhook=cfg.escalation.webhook_url is not None, on_escalated=self._escalated)
        self._unanswered.start()
        self._plumbing = plumbing.PlumbingSupervisor(
            self._store, cfg.plumbing, webhook=cfg.escalation.webhook_url is not None, on_change=self._plumbing_changed)
        self._plumbing.start()
        self._start_second_level_and_retention()

    def _start_second_level_and_retention(self) -> None:
        esc = self._cfg.escalation
        if esc.second_webhook_url is not None and esc.second_after_s > 0:
            self._second_webhooks = WebhookSender(
                self._store, url=esc.second_webhook_url, token=None, settings=self._cfg.callbacks,
                secrets=esc.second_webhook_secrets, outbox=SECOND_WEBHOOK_OUTBOX,
            )
            self._second_webhooks.start()
        self._retention = RetentionTask(self._store, self._cfg.retention)
        self._retention.start()

    async def stop(self) -> None:
        second, self._second_webhooks = self._second_webhooks, None
        retention, self._retention = self._retention, None
        if retention is not None:
            await retention.stop()
        if second is not None:
            await second.stop()
        escalator, webhooks, sender = self._escalator, self._webhooks, self._sender
        unanswered, self._unanswered = self._unanswered, None
        if unanswered is not None:
            await unanswered.stop()
        self._escalator = self._webhooks = self._sender = None
        watcher, self._plumbing = self._plumbing, None
        if watcher is not None:
            await watcher.stop()
        if escalator is not None:
            await escalator.stop()
        if webhooks is not None:
            await webhooks.stop()
        if sender is not None:
            await sender.stop()

    def _escalated(self, found: list[Incident]) -> None:
        self._live.publish_incidents(found, "escalation")
        if self._webhooks is not None:
            self._webhooks.notify()
        if self._second_webhooks is not None:
            self._second_webhooks.notify()

    def _plumbing_changed(self, _changes: list[plumbing.Transition]) -> None:
        if self._webhooks is not None:
            self._webhooks.notify()

    def notify_callbacks(self) -> None:
        """New state reports are queued. In a process that does not run the loops, nothing to do:
        the leader hears of the change through its live.Relay."""
        if self._sender is not None:
            self._sender.notify()

    def notify_escalation(self) -> None:
        if self._escalator is not None:
            self._escalator.notify()
        if self._unanswered is not None:
            self._unanswered.notify()

    def wake(self, what: Iterable[Wake]) -> None:
        """Another process's change gave these loops work (live.Relay)."""
        for loop in what:
            if loop == "callbacks":
                self.notify_callbacks()
            elif loop == "escalation":
                self.notify_escalation()
            elif loop == "webhooks":
                for sender in (self._webhooks, self._second_webhooks):
                    if sender is not None:
                        sender.notify()


async def _record_failures(app: FastAPI) -> None:
    """Failed credentials since the last call, one audit entry per (what, who, address)."""
    guard: Guard = app.state.guard
    taken = guard.failures.take()
    services: Services | None = getattr(app.state, "services", None)
    if not taken or services is None:
        return
    entries = []
    for what, who, address, count, first, last in taken:
        log.warning("%d failed %s as %s from %s", count, what.removesuffix("_failed"), who, address)
        detail = {"attempts": count, "first": rfc3339(datetime.fromtimestamp(first, UTC)),
                  "last": rfc3339(datetime.fromtimestamp(last, UTC))}
        entries.append((rfc3339(datetime.fromtimestamp(last, UTC)), who, what, address, detail))
    await services.store.audit_many(entries)


def reload_people(app: FastAPI, new: CCConfig) -> int:
    """Take the people, their tokens and the intake token from `new` at once; returns how many live
    streams were ended. Sessions and streams made with a token that is no longer someone's current one
    end here (a stream) or at their next request (a session). Other settings need a restart."""
    old: CCConfig = app.state.config
    cfg = dataclasses.replace(
        old, intake_token=new.intake_token, operator_tokens=new.operator_tokens, operators=new.operators
    )
    for name in ("host", "port", "db_path", "db_url", "db_password", "db_pool_size", "gateway_url", "gateway_urls",
                 "callbacks", "agencies", "escalation", "console", "plumbing", "retention", "limits", "throttle",
                 "log_level",
                 "forwarded_allow_ips", "reuse_port", "direct_port"):
        if getattr(new, name) != getattr(old, name):
            log.warning("configuration: %s changed; it takes effect at the next restart", name)
    app.state.config = cfg
    services: Services | None = getattr(app.state, "services", None)
    if services is not None:
        app.state.services = dataclasses.replace(services, config=cfg)

    def stale(p: Principal) -> bool:
        return p.credential is None or cfg.credential(p.name) != p.credential

    ended = app.state.live.end_where(stale)
    log.info("configuration reloaded: %d people; %d live streams of replaced or removed tokens ended",
             len(cfg.operators), ended)
    return ended


def _reload_on_sighup(app: FastAPI, path: Path) -> None:
    def reload() -> None:
        try:
            new = CCConfig.load(path)
        except ConfigError as exc:
            log.error("configuration not reloaded, the running one stays: %s", exc)
            return
        reload_people(app, new)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no SIGHUP here
        log.info("no SIGHUP here: the configuration is read at start only")
