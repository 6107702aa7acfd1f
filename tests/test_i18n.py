"""The message catalogs (siaga/locale/*.json): every entry in both languages with the same
placeholders, and the lookup rules of siaga/i18n.py."""

from __future__ import annotations

import pytest

from siaga import i18n


def test_the_catalogs_exist() -> None:
    assert {"console", "cli", "api"} <= set(i18n.domains())


@pytest.mark.parametrize("domain", i18n.domains())
def test_every_entry_has_both_languages_with_the_same_placeholders(domain: str) -> None:
    assert i18n.problems(domain) == []
    assert i18n.catalog(domain), f"{domain}.json is empty"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "id"),
        ("", "id"),
        ("en", "en"),
        ("en-US,en;q=0.9", "en"),
        ("id-ID,id;q=0.9,en;q=0.8", "id"),
        ("fr-FR, en;q=0.5, id;q=0.4", "en"),
        ("en;q=0, id", "id"),
        ("en;q=abc, id;q=0.2", "id"),
        ("*", "id"),
        ("ms, jv", "id"),
    ],
)
def test_accept_language_picks_indonesian_unless_english_is_preferred(header: str | None, expected: str) -> None:
    assert i18n.from_accept_language(header) == expected


def test_a_missing_key_falls_back_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    assert i18n.text("console", "no.such.key", "id") == "no.such.key"
    assert "no.such.key" in caplog.text


def test_placeholders_are_filled_and_unknown_ones_left() -> None:
    key, entry = next((k, v) for k, v in i18n.catalog("cli").items() if i18n.placeholders(v["en"]))
    names = i18n.placeholders(entry["en"])
    filled = i18n.text("cli", key, "en", **{n: f"<{n}>" for n in names})
    assert all(f"<{n}>" in filled for n in names)
    assert i18n.text("cli", key, "en") == entry["en"]  # nothing given: the template as it is
    assert i18n.language("EN_gb") == "en" and i18n.language("de") == "id" and i18n.language(None) == "id"
