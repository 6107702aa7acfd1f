"""An API error's English `detail`, said again in the caller's language as `message`.

API clients and tests read `detail`, so its English text stays as every handler raises it. People
read `message`. Rather than pass a catalog key through every `raise HTTPException(...)`, the refusal
shape (siaga/web.py) matches the finished English sentence against the `en` templates of the `api`
catalog and renders the same entry in the caller's language with the values it captured:

    "no incident inc-000017"  ~  "no incident {incident}"  ->  "tidak ada insiden inc-000017"

Each template becomes one regular expression, compiled once, its placeholders named groups. The
templates with the most fixed text are tried first, so that a specific sentence wins over a general
one. tests/test_i18n_api.py proves that every sentence raised in the source has its template.

Who is asking decides the language: a person's stored choice when the service knows it cheaply (it
leaves it on `request.state.language`, or offers `app.state.person_language(request)`), else the
request's Accept-Language, else Bahasa Indonesia.
"""

from __future__ import annotations

import functools
import logging
import re
import string
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from . import i18n

log = logging.getLogger(__name__)

DOMAIN = "api"
# A person's language, when the service knows who is asking (the command center's sessions).
PersonLanguage = Callable[[Any], Awaitable[str | None]]

_unmatched: set[str] = set()


def _pattern(template: str) -> re.Pattern[str]:
    """`template` as a regular expression: its text literal, each placeholder a lazy named group (a
    placeholder used twice must capture the same text twice)."""
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
            seen.add(name)
    return re.compile("^" + "".join(parts) + "$", re.DOTALL)


def _fixed_length(template: str) -> int:
    return sum(len(literal) for literal, _, _, _ in string.Formatter().parse(template))


@functools.cache
def templates() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """(key, compiled English template) of every catalog entry that is a sentence the API raises
    (keys under `error.`), most specific first."""
    entries = [(k, v["en"]) for k, v in i18n.catalog(DOMAIN).items() if k.startswith("error.")]
    entries.sort(key=lambda item: -_fixed_length(item[1]))
    return tuple((key, _pattern(en)) for key, en in entries)


def match(detail: str) -> tuple[str, dict[str, str]] | None:
    """The catalog key whose English template `detail` is, with the values of its placeholders."""
    for key, pattern in templates():
        found = pattern.match(detail)
        if found is not None:
            return key, found.groupdict()
    return None


def message(detail: str, lang: str, status: int) -> str:
    """`detail` in `lang`. A sentence no template knows (a test would have caught it in the source;
    it can only come from a library) falls back to what its status code means."""
    found = match(detail)
    if found is not None:
        key, values = found
        return i18n.text(DOMAIN, key, lang, **{name: _word(value, lang) for name, value in values.items()})
    if detail not in _unmatched and len(_unmatched) < 100:
        _unmatched.add(detail)
        log.warning("no api catalog template matches the error %r", detail[:200])
    generic = f"status.{status}"
    if generic in i18n.catalog(DOMAIN):
        return i18n.text(DOMAIN, generic, lang)
    return i18n.text(DOMAIN, "status.other", lang, status=status)


def _word(value: str, lang: str) -> str:
    """A captured value that is one of the API's words (a state, a role) in `lang`; anything else, an
    id or a number, as it is."""
    key = f"word.{value}"
    return i18n.text(DOMAIN, key, lang) if key in i18n.catalog(DOMAIN) else value


def validation_message(locations: Iterable[Iterable[Any]], lang: str) -> str:
    """One sentence for a 422 from validation: which fields, by their path (`body.agencies.0`)."""
    paths = list(dict.fromkeys(".".join(str(p) for p in loc) for loc in locations))
    if not paths:
        return i18n.text(DOMAIN, "validation.invalid", lang)
    shown = ", ".join(paths[:5]) + (" …" if len(paths) > 5 else "")
    return i18n.text(DOMAIN, "validation.fields", lang, fields=shown)


def from_headers(headers: Mapping[str, str]) -> str:
    return i18n.from_accept_language(headers.get("accept-language"))


async def language_of(request: Any) -> str:
    """The caller's language: the person's choice when known, else Accept-Language, else `id`."""
    chosen = getattr(request.state, "language", None)
    if chosen is None:
        lookup: PersonLanguage | None = getattr(request.app.state, "person_language", None)
        if lookup is not None:
            try:
                chosen = await lookup(request)
            except Exception:  # an error answer must never fail for want of a preference
                log.exception("could not read the person's language")
    if isinstance(chosen, str) and chosen in i18n.LANGUAGES:
        return chosen
    return from_headers(request.headers)
