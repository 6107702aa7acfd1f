"""The console's words all come from its message catalog (siaga/locale/console.json), and each person
reads it in the language they chose.

The static checks read console.js and index.html as text. They are a net, not a parser: they find
catalog keys written as double-quoted string literals, and words put into the page by the usual
ways (`.textContent = "..."`, `el(tag, cls, "...")`, `button("...")`, `toast("...")`,
`setAttribute("title", "...")`, `alert`/`confirm`). A word built some other way (concatenated from
variables, or passed through a helper not named here) slips through them; the browser test in
tests/test_console_browser.py, which reads every text the page actually shows, catches those.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from siaga import i18n
from siaga.commandcenter.config import CCConfig, Operator, Role
from siaga.settings import ConfigError
from tests.test_commandcenter import (
    OPERATOR,
    OPERATOR2_TOKEN,
    Api,
    _write_config,
    running_api,
)

STATIC = Path(__file__).resolve().parent.parent / "commandcenter" / "static"
JS = (STATIC / "console.js").read_text(encoding="utf-8")
HTML = (STATIC / "index.html").read_text(encoding="utf-8")
CATALOG = i18n.catalog("console")

# A key is lower-case words joined by dots; the first word is a family the catalog has.
FAMILIES = {key.split(".")[0] for key in CATALOG}
KEY_LITERAL = re.compile(r'"([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)"')
WORDS = re.compile(r"[^\W\d_]{2,}")  # two letters in a row: a word, not a unit or a separator


def _js_key_literals() -> set[str]:
    return {k for k in KEY_LITERAL.findall(JS) if k.split(".")[0] in FAMILIES}


_VOID = frozenset({"meta", "link", "input", "br", "img", "hr"})  # elements without an end tag


class _Page(HTMLParser):
    """index.html's keys, and any text or person-facing attribute outside the catalog's reach."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set[str] = set()
        self.stray: list[str] = []
        self.stack: list[bool] = []  # per open element: is it, or is it inside, a data-i18n element

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-i18n"):
            self.keys.add(str(a["data-i18n"]))
        for pair in (a.get("data-i18n-attr") or "").split(","):
            if pair:
                self.keys.add(pair.split(":")[1].strip())
        for name in ("title", "placeholder", "aria-label", "alt"):
            if a.get(name):
                self.stray.append(f"<{tag} {name}={a[name]!r}> (use data-i18n-attr)")
        if tag not in _VOID:
            self.stack.append(bool(a.get("data-i18n")) or any(self.stack[-1:]))

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if WORDS.search(data) and not any(self.stack[-1:]):
            self.stray.append(data.strip())


def _page() -> _Page:
    page = _Page()
    page.feed(HTML)
    return page


def test_every_key_the_console_looks_up_is_in_the_catalog() -> None:
    looked_up = set(re.findall(r'\bt\("([^"]+)"', JS)) | _js_key_literals() | _page().keys
    assert sorted(looked_up - set(CATALOG)) == []
    # Keys are literals, so that this test sees them: never built from pieces at run time.
    assert re.findall(r"\bt\(`", JS) == []


def test_every_catalog_entry_is_used() -> None:
    used = _js_key_literals() | _page().keys
    assert sorted(set(CATALOG) - used) == []


def test_index_html_has_no_words_of_its_own() -> None:
    assert _page().stray == []


# Words put into the page from a string literal instead of the catalog.
_HARD_CODED = [
    re.compile(r"\.(?:textContent|innerText|title|placeholder|innerHTML)\s*=\s*[\"'`]"),
    re.compile(r"\b(?:alert|confirm|prompt|toast)\(\s*[\"'`]"),
    re.compile(r"\bsetAttribute\(\s*\"(?:title|aria-label|placeholder|alt)\",\s*[\"'`]"),
    re.compile(r"\bel\(\s*\"\w+\",\s*[^,()]*,\s*[\"'`]"),
    re.compile(r"\bbutton\(\s*[\"'`]"),
]


def test_console_js_puts_no_literal_words_into_the_page() -> None:
    found = []
    for number, line in enumerate(JS.splitlines(), 1):
        if line.lstrip().startswith("//"):
            continue
        for pattern in _HARD_CODED:
            for m in pattern.finditer(line):
                rest = line[m.end() - 1:]
                literal = re.match(r"([\"'`])(.*?)\1", rest)
                if literal and WORDS.search(literal.group(2)):
                    found.append(f"console.js:{number}: {line.strip()}")
    assert found == []


def test_the_scan_finds_a_hard_coded_word() -> None:
    """The scan above is only worth something if it sees what it looks for."""
    lines = ['b.textContent = "Sound: on";', 'toast(`Note added`);', 'el("td", null, "Offline")',
             'x.setAttribute("aria-label", "Agency");']
    for line in lines:
        assert any(p.search(line) for p in _HARD_CODED), line
    assert not any(p.search('b.textContent = t("sound.on");') for p in _HARD_CODED)


def test_no_template_is_only_placeholders() -> None:
    """The browser test matches shown text against templates; one of placeholders alone would match
    anything. (Data is shown from elements marked data-value, never through a template.)"""
    for key, entry in CATALOG.items():
        for lang in i18n.LANGUAGES:
            assert re.sub(r"\{\w+\}", "", entry[lang]).strip(), f"{key} ({lang}): {entry[lang]!r}"


# ---- the person's language, over the API -----------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    accounts = {"operator-2": Operator("operator-2", Role.OPERATOR, language="en")}
    async with running_api(tmp_path / "cc.sqlite3", operators=accounts) as running:
        yield running


async def test_the_session_reads_indonesian_until_the_person_chooses(api: Api) -> None:
    r = await api.client.get("/api/v1/session", headers=OPERATOR)
    assert (r.status_code, r.json()["language"]) == (200, "id")
    r = await api.client.put("/api/v1/session/language", json={"language": "en"}, headers=OPERATOR)
    assert (r.status_code, r.json()["language"], r.json()["name"]) == (200, "en", "operator-1")
    r = await api.client.get("/api/v1/session", headers=OPERATOR)
    assert r.json()["language"] == "en"
    r = await api.client.put("/api/v1/session/language", json={"language": "id"}, headers=OPERATOR)
    assert (await api.client.get("/api/v1/session", headers=OPERATOR)).json()["language"] == "id"
    # Only a signed-in person has a language to choose.
    assert (await api.client.put("/api/v1/session/language", json={"language": "en"})).status_code == 401


async def test_a_configured_language_applies_until_the_person_chooses_another(api: Api) -> None:
    other = {"Authorization": f"Bearer {OPERATOR2_TOKEN}"}
    assert (await api.client.get("/api/v1/session", headers=other)).json()["language"] == "en"
    await api.client.put("/api/v1/session/language", json={"language": "id"}, headers=other)
    assert (await api.client.get("/api/v1/session", headers=other)).json()["language"] == "id"
    # One person's choice is theirs alone.
    assert (await api.client.get("/api/v1/session", headers=OPERATOR)).json()["language"] == "id"


async def test_a_language_other_than_id_or_en_is_refused_with_a_message(api: Api) -> None:
    for body in ({"language": "fr"}, {"language": ""}, {}, {"language": "en", "x": 1}, ["en"]):
        r = await api.client.put("/api/v1/session/language", json=body, headers=OPERATOR)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"]
    assert (await api.client.get("/api/v1/session", headers=OPERATOR)).json()["language"] == "id"


async def test_the_catalog_is_served_to_the_browser_with_revalidation(api: Api) -> None:
    r = await api.client.get("/console/i18n.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["cache-control"] == "no-cache" and r.headers["etag"]
    served = {k: v for k, v in json.loads(r.content).items() if not k.startswith("_")}
    assert served == CATALOG
    again = await api.client.get("/console/i18n.json", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


def test_an_operator_entry_may_set_a_language_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "op2.token").write_text(OPERATOR2_TOKEN + "\n")
    base = """
[intake]
token_file = "intake.token"
[[operators]]
name = "operator-1"
token_file = "op1.token"
language = "en"
[[operators]]
name = "operator-2"
token_file = "op2.token"
"""
    cfg = CCConfig.load(_write_config(tmp_path, base))
    assert (cfg.operator("operator-1").language, cfg.operator("operator-2").language) == ("en", None)
    with pytest.raises(ConfigError, match="language must be"):
        CCConfig.load(_write_config(tmp_path, base.replace('language = "en"', 'language = "de"')))
