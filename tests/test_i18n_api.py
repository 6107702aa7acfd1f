"""API error messages for people (siaga/errortext.py, siaga/locale/api.json): every English sentence
raised in the source has a catalog template, and real answers carry `message` in the caller's
language beside the unchanged English `detail`."""

from __future__ import annotations

import ast
import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from siaga import errortext, i18n
from tests.test_commandcenter import OPERATOR, OPERATOR_TOKEN, Api, alarm, intake_headers, running_api

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("commandcenter", "gateway", "siaga")
# Calls whose argument at this position (or `detail=`) is an error sentence a person may read.
_RAISERS = {"HTTPException": 1, "FastAPIHTTPException": 1, "forbidden": 0, "error_json": 1}
_SAMPLE = "X9"  # what an f-string's {expression} stands for when the sentence is matched


def _callee(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _detail_arg(node: ast.Call, position: int) -> ast.expr | None:
    for kw in node.keywords:
        if kw.arg == "detail":
            return kw.value
    return node.args[position] if len(node.args) > position else None


def _sample(expr: ast.expr) -> str | None:
    """The sentence of a literal or f-string, its expressions replaced by a sample value; None for
    anything else (a variable: the sentence is made elsewhere)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    if isinstance(expr, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else _SAMPLE for v in expr.values)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):  # "a" "b" split over lines
        left, right = _sample(expr.left), _sample(expr.right)
        return None if left is None or right is None else left + right
    return None


@functools.cache
def raised_sentences() -> tuple[tuple[str, int, str], ...]:
    """(file, line, sentence) of every error raised with a literal or f-string detail."""
    return tuple(_scan())


def _scan() -> Iterator[tuple[str, int, str]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and (name := _callee(node)) in _RAISERS:
                    arg = _detail_arg(node, _RAISERS[name])
                    sentence = None if arg is None else _sample(arg)
                    if sentence is not None:
                        yield str(path.relative_to(ROOT)), node.lineno, sentence


def test_the_scan_finds_the_raises_it_must() -> None:
    found = {s for _, _, s in raised_sentences()}
    assert "method not allowed" in found and f"no incident {_SAMPLE}" in found


def test_every_raised_sentence_has_a_catalog_template() -> None:
    missing = [f"{f}:{line}: {s!r}" for f, line, s in raised_sentences() if errortext.match(s) is None]
    hint = "add these to siaga/locale/api.json (placeholders for the {...} parts):\n"
    assert missing == [], hint + "\n".join(missing)


def test_each_template_matches_its_own_sentences_and_no_other_template_takes_them() -> None:
    for key, entry in i18n.catalog("api").items():
        if key.startswith("error."):
            values = {name: f"v{i}x" for i, name in enumerate(sorted(i18n.placeholders(entry["en"])))}
            assert errortext.match(entry["en"].format(**values)) == (key, values), key


def test_a_sentence_is_rendered_with_its_values_in_either_language() -> None:
    key, values = errortext.match("no incident inc-000017") or ("", {})
    assert values == {"incident": "inc-000017"}
    assert errortext.message("no incident inc-000017", "en", 404) == "no incident inc-000017"
    indonesian = errortext.message("no incident inc-000017", "id", 404)
    assert "inc-000017" in indonesian and indonesian == i18n.text("api", key, "id", incident="inc-000017")
    assert errortext.message("something no template knows", "id", 404) == i18n.text("api", "status.404", "id")


# ---- real answers ------------------------------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "cc.sqlite3") as running:
        yield running


@pytest.mark.parametrize(("header", "lang"), [(None, "id"), ("en-GB,en;q=0.9", "en"), ("fr, id;q=0.5", "id")])
async def test_a_refusal_keeps_its_english_detail_and_adds_a_message_in_the_callers_language(
        api: Api, header: str | None, lang: str) -> None:
    headers = OPERATOR | ({"Accept-Language": header} if header else {})
    r = await api.client.get("/api/v1/incidents/inc-424242", headers=headers)
    assert r.status_code == 404
    assert r.json() == {"detail": "no incident inc-424242",
                        "message": i18n.text("api", "error.incident.not_found", lang, incident="inc-424242")}


async def test_the_entrance_and_a_state_conflict_answer_in_indonesian_by_default(api: Api) -> None:
    r = await api.client.get("/api/v1/incidents")  # refused by the entrance, before any handler
    assert r.status_code == 401 and r.json()["detail"] == "missing or invalid bearer token"
    assert r.json()["message"] == "token bearer tidak ada atau tidak sah"
    incident = await api.new_incident()
    r = await api.act(incident, "resolve")  # a new incident must be acknowledged first
    assert r.status_code == 409
    assert r.json()["message"] == f"{incident} berstatus baru; tidak dapat menjadi selesai"


async def test_a_validation_error_names_the_fields_in_the_callers_language(api: Api) -> None:
    body = alarm(seq="not a number", location={"lat": "north"})
    r = await api.client.post("/api/v1/alarms", json=body, headers=intake_headers(body["event_id"]) |
                              {"Accept-Language": "en"})
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], list)  # unchanged for API clients
    message = r.json()["message"]
    assert message.startswith("Not valid: ") and "body.seq" in message and "body.location.lat" in message
    r = await api.client.post("/api/v1/alarms", json=body, headers=intake_headers(body["event_id"]))
    assert r.json()["message"].startswith("Isian tidak sah: ")


async def test_the_error_shape_documents_message() -> None:
    from commandcenter.models import ErrorOut

    assert ErrorOut.model_json_schema()["properties"]["message"]["anyOf"][0] == {"type": "string"}


async def test_a_console_session_gets_its_persons_language_over_the_browsers(api: Api) -> None:
    r = await api.client.post("/api/v1/session", json={"name": "operator-1", "token": OPERATOR_TOKEN})
    assert r.status_code == 200, r.text
    csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
    r = await api.client.put("/api/v1/session/language", json={"language": "en"}, headers=csrf)
    assert r.status_code == 200, r.text
    r = await api.client.get("/api/v1/incidents/inc-424242", headers={"Accept-Language": "id"})
    assert r.json()["message"] == "no incident inc-424242"
    # A bearer-token client has no stored choice: its Accept-Language decides.
    r = await api.client.get("/api/v1/incidents/inc-424242", headers=OPERATOR | {"Accept-Language": "id"})
    assert r.json()["message"] == "tidak ada insiden inc-424242"
