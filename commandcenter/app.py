"""The reference command center as an ASGI app: `create_app(cfg)`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from . import devices, incidents, intake
from .callbacks import CallbackSender
from .config import CCConfig
from .deps import Services
from .models import Health
from .store import Store

log = logging.getLogger(__name__)

_health = APIRouter(tags=["health"])


@_health.get("/health", summary="Liveness check (no authentication)", response_model=Health)
async def health() -> Health:
    return Health(status="ok")


def create_app(cfg: CCConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await Store.open(cfg.db_path)
        sender: CallbackSender | None = None
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
            app.state.services = Services(
                config=cfg, store=store, notify_callbacks=sender.notify if sender else _nothing
            )
            log.info("command center ready (database %s)", cfg.db_path)
            yield
        finally:
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
            "gateway answers 2xx."
        ),
        lifespan=lifespan,
    )
    app.state.config = cfg
    app.include_router(_health)
    app.include_router(intake.router)
    app.include_router(incidents.router)
    app.include_router(devices.router)
    return app


def _nothing() -> None:
    return None
