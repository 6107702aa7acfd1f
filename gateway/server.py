"""Process entry point: `siaga gateway run --config gateway.toml`."""

from __future__ import annotations

import asyncio
import logging
import signal

from siaga import logs

from .adapters import ReferenceAdapter
from .config import GatewayConfig
from .service import Gateway
from .store import SQLiteStore

log = logging.getLogger(__name__)


async def serve(cfg: GatewayConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(cfg, SQLiteStore(cfg.db_path), ReferenceAdapter(cfg.cc_url, cfg.cc_token))
    await gateway.run(stop)


def run(config_path: str) -> None:
    cfg = GatewayConfig.load(config_path)
    if cfg.log_format == "json":
        logs.use_json()
    try:
        import uvloop  # a faster event loop; measured in docs/performance.md
    except ImportError:
        asyncio.run(serve(cfg))
    else:
        uvloop.run(serve(cfg))
