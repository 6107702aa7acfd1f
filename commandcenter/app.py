"""The reference command center as an ASGI app: `create_app(cfg)`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from . import console, devices, incidents, intake, live, sessions, supervisor
from .callbacks import CallbackSender, WebhookSender
from .config import CCConfig
from .deps import Services
from .escalation import Escalator
from .live import Broadcaster
from .models import Health
from .store import Incident, Store

log = logging.getLogger(__name__)

_health = APIRouter(tags=["health"])


@_health.get("/health", summary="Liveness check (no authentication)", response_model=Health)
async def health() -> Health:
    return Health(status="ok")


def create_app(cfg: CCConfig) -> FastAPI:
    # Made here rather than in the lifespan, so that the server can end the live streams before it
    # waits for open connections at shutdown (see server.py and close_live_streams).
    broadcaster = Broadcaster()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await Store.open(cfg.db_path)
        sender: CallbackSender | None = None
        webhooks: WebhookSender | None = None
        escalator: Escalator | None = None
        try:
            if cfg.gateway_url is not None and cfg.gateway_token is not None:
                sender = CallbackSender(
                    store,
                    gateway_url=cfg.gateway_url,
                    gateway_token=cfg.gateway_token,
                    settings=cfg.callbacks,
                )
                sender.start()
            else:
                # Kept, not dropped: once a gateway is configured, the reports still go out.
                log.warning("no [gateway] configured: state reports are queued but not sent")
            if cfg.escalation.webhook_url is not None:
                # The same store-and-forward sender and retry settings as the state reports.
                webhooks = WebhookSender(
                    store, url=cfg.escalation.webhook_url, token=cfg.escalation.webhook_token, settings=cfg.callbacks
                )
                webhooks.start()

            def escalated(found: list[Incident]) -> None:
                broadcaster.publish_incidents(found, "escalation")
                if webhooks is not None:
                    webhooks.notify()

            escalator = Escalator(store, cfg.escalation, on_escalated=escalated)
            escalator.start()
            app.state.services = Services(
                config=cfg,
                store=store,
                notify_callbacks=sender.notify if sender else _nothing,
                live=broadcaster,
                notify_escalation=escalator.notify,
            )
            log.info("command center ready (database %s)", cfg.db_path)
            yield
        finally:
            broadcaster.close()
            if escalator is not None:
                await escalator.stop()
            if webhooks is not None:
                await webhooks.stop()
            if sender is not None:
                await sender.stop()
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
    app.include_router(_health)
    app.include_router(intake.router)
    app.include_router(incidents.router)
    app.include_router(devices.router)
    app.include_router(live.router)
    app.include_router(sessions.router)
    app.include_router(supervisor.router)
    app.include_router(console.router)
    console.mount_static(app)
    return app


def close_live_streams(app: FastAPI) -> None:
    """End the console's event streams. A server that waits for open connections before it shuts the
    app down (uvicorn does) must call this first, or every open console delays the shutdown."""
    app.state.live.close()


def _nothing() -> None:
    return None
