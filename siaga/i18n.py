"""Message catalogs: every sentence a person reads, in Bahasa Indonesia (the default) and English.

One JSON file per domain in `siaga/locale/` (`console.json` for the operator console, `cli.json` for
the technician's command line, `api.json` for API error messages meant for people, ...). Each maps a
key to its text in both languages, side by side, so that a translator sees them together and a test
(tests/test_i18n.py) can prove none is missing:

    {"incident.acknowledge": {"id": "Terima", "en": "Acknowledge"}}

The same files are the Python side's catalogs and the browser's: the console fetches its domain as
JSON and looks keys up itself. Placeholders are named, in braces (`{device}`), as str.format takes
them; both languages of a key must use the same names. Keys starting with `_` are comments.

A key missing at run time never stops a process: the English text is used, then the key itself, and
the miss is logged once. Tests make sure that does not happen.
"""

from __future__ import annotations

import functools
import json
import logging
import string
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

LANGUAGES = ("id", "en")
DEFAULT_LANGUAGE = "id"

_missed: set[tuple[str, str, str]] = set()


def domains() -> list[str]:
    """The catalogs there are, by name (`console`, `cli`, ...)."""
    folder = resources.files("siaga") / "locale"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


@functools.cache
def catalog(domain: str) -> dict[str, dict[str, str]]:
    """The entries of one catalog (comment keys left out)."""
    raw = (resources.files("siaga") / "locale" / f"{domain}.json").read_text(encoding="utf-8")
    entries = json.loads(raw)
    return {k: v for k, v in entries.items() if not k.startswith("_")}


def language(value: str | None) -> str:
    """`value` as one of LANGUAGES: `en`, `en-US`, `EN_gb` are English; anything else Indonesian."""
    if value and value.strip().lower().replace("_", "-").split("-")[0] == "en":
        return "en"
    return DEFAULT_LANGUAGE


def from_accept_language(header: str | None) -> str:
    """The language of an HTTP Accept-Language header: the first of `id` or `en` in the client's
    order of preference (q values honoured), Indonesian when it names neither."""
    if not header:
        return DEFAULT_LANGUAGE
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        base = tag.strip().lower().split("-")[0]
        if base in LANGUAGES and q > 0:
            ranked.append((-q, i, base))
    return min(ranked)[2] if ranked else DEFAULT_LANGUAGE


def text(domain: str, key: str, lang: str = DEFAULT_LANGUAGE, /, **params: Any) -> str:
    """The text of `key` in `lang`, its placeholders filled from `params`."""
    entry = catalog(domain).get(key)
    template = None
    if entry is not None:
        template = entry.get(language(lang)) or entry.get("en")
    if template is None:
        if (domain, key, lang) not in _missed:
            _missed.add((domain, key, lang))
            log.error("message catalog %s has no text for %r in %s", domain, key, lang)
        return key
    if not params:
        return template
    try:
        return template.format_map(_Params(params))
    except (ValueError, IndexError):
        return template


def both(domain: str, key: str, /, **params: Any) -> str:
    """Bahasa Indonesia with the English beside it, `id / en`: for text that cannot know its reader
    (a printed label, a log line a technician reads on a serial console)."""
    ind, eng = text(domain, key, "id", **params), text(domain, key, "en", **params)
    return ind if ind == eng else f"{ind} / {eng}"


def placeholders(template: str) -> set[str]:
    """The names of a template's placeholders; raises ValueError for a malformed template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def problems(domain: str) -> list[str]:
    """What is wrong with a catalog: a language missing or empty, placeholders that differ."""
    found = []
    for key, entry in catalog(domain).items():
        if not isinstance(entry, dict):
            found.append(f"{domain}:{key}: not an object of languages")
            continue
        for lang in LANGUAGES:
            if not isinstance(entry.get(lang), str) or not entry[lang].strip():
                found.append(f"{domain}:{key}: no {lang} text")
        try:
            names = {lang: placeholders(entry[lang]) for lang in LANGUAGES if isinstance(entry.get(lang), str)}
        except ValueError as exc:
            found.append(f"{domain}:{key}: malformed placeholder ({exc})")
            continue
        if len({frozenset(v) for v in names.values()}) > 1:
            found.append(f"{domain}:{key}: placeholders differ between languages: {names}")
    return found


class _Params(dict[str, Any]):
    """Leaves an unknown placeholder as it is instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
