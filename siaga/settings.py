"""Small helpers shared by the services' configuration loaders."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message says which and what to do."""


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None


def load_secret(section: dict[str, Any], name: str, *, base: Path | None = None) -> str:
    """Read secret `name` from `<name>_file` (a path) or `<name>_env` (an environment variable).

    Secrets are never accepted inline in a config file or on a command line, where they end up in
    shell history, process listings and backups.
    """
    file_key, env_key = f"{name}_file", f"{name}_env"
    if name in section:
        raise ConfigError(f"'{name}' must not be written inline: use '{file_key}' or '{env_key}'")
    if file_key in section:
        path = Path(section[file_key])
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {file_key} {path}: {exc.strerror}") from None
    elif env_key in section:
        value = os.environ.get(section[env_key], "").strip()
        if not value:
            raise ConfigError(f"environment variable {section[env_key]} (from {env_key}) is empty or unset")
    else:
        raise ConfigError(f"missing '{file_key}' or '{env_key}'")
    if not value:
        raise ConfigError(f"secret '{name}' is empty")
    return value
