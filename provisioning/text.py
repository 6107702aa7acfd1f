"""What the technician reads, in their language: every line, hint and prompt of `siaga` and of
provisioning comes from the `cli` message catalog (siaga/locale/cli.json) through `t`.

The language is chosen once per run: `siaga --lang id|en`, else $SIAGA_LANG, else the locale
($LC_ALL, $LC_MESSAGES, $LANG, the first one set, as POSIX orders them) when it is English, else
Bahasa Indonesia, the language of the people who install the buttons. Kept in this small module so
that `siaga --help` can use it without loading the rest of provisioning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from siaga import i18n

DOMAIN = "cli"
LANG_ENV = "SIAGA_LANG"
_LOCALE_ENVS = ("LC_ALL", "LC_MESSAGES", "LANG")


class _Chosen:
    lang: str | None = None  # set by `use`; None: decided from the environment at each call


def from_environment(env: Mapping[str, str] | None = None) -> str:
    """The language the environment asks for: $SIAGA_LANG, else the locale, else Indonesian."""
    env = os.environ if env is None else env
    if env.get(LANG_ENV):
        return i18n.language(env[LANG_ENV])
    for name in _LOCALE_ENVS:
        if env.get(name):
            return i18n.language(env[name])
    return i18n.DEFAULT_LANGUAGE


def use(lang: str | None) -> str:
    """Fix the language for the rest of the run (`--lang`); None: follow the environment."""
    _Chosen.lang = None if lang is None else i18n.language(lang)
    return current()


def current() -> str:
    return _Chosen.lang if _Chosen.lang is not None else from_environment()


def t(key: str, /, **params: Any) -> str:
    """The text of `key` in the run's language."""
    return i18n.text(DOMAIN, key, current(), **params)
