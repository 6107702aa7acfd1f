"""Process entry point: `siaga gateway run --config gateway.toml`, or without the `siaga` command
`python -m siaga.gateway.server --config gateway.toml`.

A configuration error is one line on standard error and exit status 2, with no traceback: the line
names the setting and says what to write.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from siaga import logs
from siaga.settings import ConfigError

from .config import GatewayConfig
from .destinations import make_adapters
from .service import Gateway
from .store import open_store

log = logging.getLogger(__name__)

CONFIG_ERROR = 2  # as `siaga` and the command center exit on a configuration error


async def serve(cfg: GatewayConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    store = open_store(cfg.db, group_window_ms=cfg.incident_window_s * 1000)
    gateway = Gateway(cfg, store, adapters=make_adapters(cfg))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m siaga.gateway.server", description="Siaga gateway")
    parser.add_argument("--config", required=True, help="path of the TOML config (gateway/gateway.example.toml)")
    args = parser.parse_args(argv)
    logs.setup()
    try:
        run(args.config)
    except ConfigError as exc:
        print(f"siaga gateway: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
