"""The technician's command line in two languages (provisioning/text.py, siaga/locale/cli.json):
every key the code looks up exists, no sentence is printed around the catalog, and Bahasa
Indonesia is the default unless --lang, $SIAGA_LANG or an English locale says otherwise."""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from siaga import i18n
from siaga.cli import main
from siaga.provisioning import text
from siaga.provisioning.errors import Invalid
from siaga.provisioning.validate import latitude

ROOT = Path(__file__).resolve().parent.parent
# label.py prints the label's own text, from its own catalog.
MODULES = [ROOT / "siaga" / "cli.py",
           *(p for p in sorted((ROOT / "provisioning").glob("*.py")) if p.name != "label.py")]
# Calls that put their first argument in front of a person.
_SHOWN = {"print", "echo", "secho", "say", "step", "warn", "detail", "prompt", "confirm", "bar"}
_ERRORS = ("Error", "Invalid")  # ProvisionError and its kind, ConfigError: their message and hint
# The raw REPL's parser raises ValueError to its caller, which turns it into a BoardError.
_INTERNAL = {"ValueError"}
_WORD = re.compile(r"[^\W\d_]{2,}")  # two letters make a word; "5.1s" is a unit


def _name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


@functools.cache
def _calls() -> tuple[tuple[str, ast.Call], ...]:
    found = []
    for path in MODULES:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += [(f"{path.relative_to(ROOT)}:{node.lineno}", node) for node in ast.walk(tree)
                  if isinstance(node, ast.Call)]
    return tuple(found)


def _words(expr: ast.expr) -> str | None:
    """The words of a literal or f-string written in the code (None: the text comes from elsewhere)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    if isinstance(expr, ast.JoinedStr):
        return "".join(v.value for v in expr.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    if isinstance(expr, ast.BinOp):
        return " ".join(w for w in (_words(expr.left), _words(expr.right)) if w)
    return None


def _keys(expr: ast.expr) -> list[str]:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.IfExp):  # t("a" if x else "b"): both are used
        return _keys(expr.body) + _keys(expr.orelse)
    return []


def used_keys() -> dict[str, str]:
    """Every key given to `t(...)`, with where."""
    keys = {}
    for where, call in _calls():
        if _name(call) == "t" and call.args:
            keys |= dict.fromkeys(_keys(call.args[0]), where)
    return keys


def test_the_scan_sees_the_lookups() -> None:
    keys = used_keys()
    assert "provision.passed" in keys and "revoke.done" in keys and "revoke.already" in keys


def test_every_key_the_code_uses_is_in_the_catalog_and_every_entry_is_used() -> None:
    keys, catalog = used_keys(), i18n.catalog("cli")
    assert sorted(f"{where}: {key}" for key, where in keys.items() if key not in catalog) == []
    assert sorted(k for k in set(catalog) - set(keys) if not k.startswith("help.")) == []


def _help_texts(command: click.Command) -> Iterator[str]:
    if command.help:
        yield inspect.cleandoc(command.help)
    ctx = click.Context(command)
    yield from (p.help for p in command.get_params(ctx) if isinstance(p, click.Option) and p.help)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from _help_texts(sub)


def test_every_help_text_has_its_translation_and_every_translation_its_text() -> None:
    texts = set(_help_texts(main))
    english = {entry["en"]: key for key, entry in i18n.catalog("cli").items() if key.startswith("help.")}
    assert sorted(texts - set(english)) == []
    assert sorted(english[e] for e in set(english) - texts) == []


def test_help_is_shown_in_the_chosen_language() -> None:
    plain: dict[str, str | None] = {"SIAGA_LANG": None, "LC_ALL": None, "LC_MESSAGES": None, "LANG": None}
    shown = CliRunner().invoke(main, ["devices", "revoke", "--help"], env=plain).output
    assert "Cabut perangkat di gateway dan broker" in shown and "Jangan minta konfirmasi." in shown
    shown = CliRunner().invoke(main, ["--lang", "en", "--help"], env=plain).output
    assert "Debug logging and full tracebacks." in shown and "Show this message and exit." in shown
    text.use(None)


def _shown_args(call: ast.Call) -> list[ast.expr]:
    """The arguments of a call that a person reads: a message and a hint."""
    name = _name(call)
    if name == "Invalid":  # Invalid(field, value, expected): the field is named in the code's English
        return call.args[2:3]
    if name in _SHOWN or (name.endswith(_ERRORS) and name not in _INTERNAL):
        return call.args[:2]
    return []


def test_no_sentence_is_shown_without_the_catalog() -> None:
    bare = []
    for where, call in _calls():
        for arg in _shown_args(call):
            words = _words(arg)
            if words is not None and _WORD.search(words):
                bare.append(f"{where}: {_name(call)}({words[:60]!r})")
    assert bare == []


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "id"),
    ({"LANG": "C.UTF-8"}, "id"),
    ({"LANG": "en_US.UTF-8"}, "en"),
    ({"LC_ALL": "id_ID.UTF-8", "LANG": "en_GB.UTF-8"}, "id"),
    ({"SIAGA_LANG": "en", "LANG": "id_ID.UTF-8"}, "en"),
    ({"SIAGA_LANG": "id", "LC_ALL": "en_US.UTF-8"}, "id"),
])
def test_the_language_comes_from_siaga_lang_then_the_locale(env: dict[str, str], expected: str) -> None:
    assert text.from_environment(env) == expected


def _remove_user(tmp_path: Path, *options: str, env: dict[str, str | None]) -> str:
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    done = CliRunner().invoke(main, [*options, "broker", "remove-user", "--passwd", str(passwd), "jkt-0001"], env=env)
    assert done.exit_code == 2, done.output
    return done.output


def test_the_command_line_speaks_indonesian_unless_told_otherwise(tmp_path: Path) -> None:
    plain: dict[str, str | None] = {"SIAGA_LANG": None, "LC_ALL": None, "LC_MESSAGES": None, "LANG": None}
    assert "jkt-0001 tidak punya login di" in _remove_user(tmp_path, env=plain)
    assert "jkt-0001 has no login in" in _remove_user(tmp_path, env=plain | {"LANG": "en_US.UTF-8"})
    assert "jkt-0001 has no login in" in _remove_user(tmp_path, "--lang", "en", env=plain | {"SIAGA_LANG": "id"})
    assert "tidak punya login" in _remove_user(tmp_path, "--lang", "id", env=plain | {"SIAGA_LANG": "en"})
    text.use(None)


def test_a_validator_says_what_to_type_in_the_chosen_language(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIAGA_LANG", raising=False)
    monkeypatch.setenv("LC_ALL", "id_ID.UTF-8")
    with pytest.raises(Invalid) as err:
        latitude("91")
    assert err.value.field == "latitude"  # the field's name in the code stays English
    assert err.value.message == "lintang: '91' tidak sah" and "lintang berada antara -90 dan 90" in err.value.hint
    monkeypatch.setenv("SIAGA_LANG", "en")
    with pytest.raises(Invalid) as err:
        latitude("91")
    assert err.value.message == "latitude: '91' is not valid"


def test_the_demo_looks_up_only_keys_its_catalog_has() -> None:
    """siaga/demo.py's narration (`_t`), and the simulator page's words, server side and in its script."""
    from siaga import demo_web

    catalog = i18n.catalog("demo")
    narration = ast.parse((ROOT / "siaga" / "demo.py").read_text(encoding="utf-8"))
    keys = {k for node in ast.walk(narration) if isinstance(node, ast.Call) and _name(node) == "_t" and node.args
            for k in _keys(node.args[0])}
    keys |= set(re.findall(r"""\bt\('([a-z_.]+)'\)""", demo_web.PAGE))
    keys |= set(re.findall(r'"((?:page|button)\.[a-z_]+)"', (ROOT / "siaga" / "demo_web.py").read_text()))
    assert "say.stopped" in keys and "page.intro" in keys
    assert sorted(keys - set(catalog)) == []
    states = {"no_network", "idle", "armed", "sending", "received", "acknowledged", "dispatched", "resolved",
              "false_alarm"}
    assert {f"state.{s}" for s in states} | {f"led.{s}" for s in states} <= set(catalog)
