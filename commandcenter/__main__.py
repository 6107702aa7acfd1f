"""`python -m siaga.commandcenter --config cc.toml`"""

from __future__ import annotations

import argparse
import sys

from siaga.settings import ConfigError

from .server import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m siaga.commandcenter", description="Siaga reference command center")
    parser.add_argument("--config", required=True, help="path of the TOML config (docs/commandcenter.md)")
    args = parser.parse_args(argv)
    try:
        run(args.config)
    except ConfigError as exc:
        print(f"siaga command center: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # uvicorn has already shut down cleanly and re-raised SIGINT; no traceback for Ctrl-C.
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
