"""What the services' configuration loaders share: reading a TOML file and its secrets, and turning
every mistake in it into one line that names the setting (`section.key`) and says what to write.

A service describes its file with a strict pydantic schema (`parse`), or checks its tables by hand
with `check_keys`; either way an unknown key is reported with the nearest known one, because a typo
that is silently ignored switches a setting back to its default without anyone noticing.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import re
import tomllib
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, TypeVar

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message says which and what to do."""


class SettingError(ValueError):
    """Raised by a schema's own validators: `key` of the table being validated is wrong.

    A validator of a whole table cannot point pydantic at one key; `parse` reads `key` from here so
    that the message still names `section.key`.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


# ---- files ------------------------------------------------------------------------------------


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist: check the path, or start from the example file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {_os_problem(exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text: save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}{_where_in(p, str(exc))}") from None


# The start of a line that names a key or a table. Only that part of a broken line is repeated:
# the rest may be a secret someone wrote inline by mistake.
_KEY_AT = re.compile(r"\s*(\[{1,2}\s*[A-Za-z0-9_.\- \"]+\]{0,2}|[A-Za-z0-9_.\-\"]+(?=\s*=))")


def _where_in(path: Path, message: str) -> str:
    """', in the line of <key>' for a TOML error message "... (at line N, column M)"."""
    found = re.search(r"at line (\d+)", message)
    if found is None:
        return ""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    n = int(found.group(1))
    key = _KEY_AT.match(lines[n - 1]) if 0 < n <= len(lines) else None
    return f", in the line of {key.group(1).strip()}" if key else ""


def load_config(path: str | Path, build: Callable[[dict[str, Any], Path], T]) -> T:
    """Read the TOML file `path` and return `build(document, folder)`, where `folder` is the file's
    own folder (relative paths in a config file are relative to it). A ConfigError out of `build`
    is prefixed with the file's name, so that a service log says which file to fix."""
    p = Path(path)
    doc = load_toml(p)
    try:
        return build(doc, p.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{p.name}: {exc}") from None


def readable_file(path: Path, key: str) -> Path:
    """`path` if it can be opened for reading, else a ConfigError naming `key` and the fix."""
    try:
        with path.open("rb"):
            return path
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {_os_problem(exc)}") from None


def _os_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file; create it or correct the path"
    if exc.errno == errno.EACCES:
        return "permission denied; let the user the service runs as read it"
    if exc.errno == errno.EISDIR:
        return "it is a folder; give the path of a file"
    return exc.strerror or str(exc)


def load_secret(section: Mapping[str, Any], name: str, *, base: Path | None = None, where: str = "") -> str:
    """Read secret `name` from `<name>_file` (a path) or `<name>_env` (an environment variable).

    Secrets are never accepted inline in a config file or on a command line, where they end up in
    shell history, process listings and backups. `where` is the table's name, for the messages.
    """
    def key(k: str) -> str:
        return f"{where}.{k}" if where else k

    file_key, env_key = f"{name}_file", f"{name}_env"
    if name in section:
        raise ConfigError(_inline_secret(key(name), key(file_key), key(env_key)))
    if file_key in section and env_key in section:
        raise ConfigError(f"{key(file_key)} and {key(env_key)} are both set: keep one of them")
    for k in (file_key, env_key):
        if not isinstance(section.get(k, ""), str) or section.get(k) == "":
            raise ConfigError(wrong_type(key(k), "a non-empty string in double quotes", section[k]))
    if file_key in section:
        path = Path(section[file_key])
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key(file_key)}: cannot read {path}: {_os_problem(exc)}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{key(file_key)}: {path} is not UTF-8 text") from None
        if not value:
            raise ConfigError(f"{key(file_key)}: {path} is empty; write the secret into it")
    elif env_key in section:
        value = os.environ.get(section[env_key], "").strip()
        if not value:
            raise ConfigError(
                f"{key(env_key)}: environment variable {section[env_key]} is empty or unset; set it for the service"
            )
    else:
        raise ConfigError(f"missing {key(file_key)} or {key(env_key)}: name the file or variable that holds it")
    return value


def _inline_secret(name: str, file_key: str, env_key: str) -> str:
    return f"{name} must not be written inline: put it in a file named by {file_key}, or in {env_key}"


# ---- keys -------------------------------------------------------------------------------------


def unknown_setting(key: str, known: Collection[str], where: str = "", elsewhere: Iterable[str] = (),
                    *, table: bool = True) -> str:
    """The message for `key`, which table `where` ("" for the top level of the file) does not know.

    `elsewhere`: the tables that do have a key of that name (a key written under the wrong header);
    `table`: a top-level `key` is itself a table (`[key]`), not a plain `key = value`.
    """
    def name(k: str) -> str:
        if where:
            return f"{where}.{k}"
        return f"[{k}]" if table else k

    if where and f"{key}_file" in known:
        return _inline_secret(name(key), name(f"{key}_file"), name(f"{key}_env"))
    # A near spelling first ("prot"), then a shortened name ("sup" for "supervision").
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6) or sorted(
        k for k in known if len(key) >= 3 and (k.startswith(key) or key.startswith(k)))
    if close:
        return f"unknown setting {name(key)}: did you mean {name(close[0])}?"
    tables = " or ".join(f"[{t}]" for t in sorted(elsewhere))
    if tables:
        return f"unknown setting {name(key)}: it belongs in {tables}; move it under that header"
    return f"unknown setting {name(key)}: known here are {', '.join(sorted(known))}"


def check_keys(table: Mapping[str, Any], known: Collection[str], where: str = "",
               tables: Mapping[str, Collection[str]] | None = None) -> None:
    """Refuse the first key of `table` that is not in `known` (for loaders that check by hand).

    `tables`: the keys of every table of the file, to point a key under the wrong header to its own.
    """
    unknown = sorted(set(table) - set(known))
    if unknown:
        key = unknown[0]
        elsewhere = [name for name, keys in (tables or {}).items() if name != where and key in keys]
        raise ConfigError(unknown_setting(key, known, where, elsewhere, table=isinstance(table[key], dict)))


# ---- a schema's errors as one line --------------------------------------------------------------


def parse(schema: type[M], doc: Mapping[str, Any], *, example: str) -> M:
    """Validate a TOML document with a strict pydantic schema; the first problem becomes a ConfigError.

    Every table is a model with `extra="forbid"` and `strict=True` (TOML has types; `port = "1883"`
    is a mistake, not a port). A field's `examples`, or else its default, show what to write;
    `example` names the example file that lists every table.
    """
    try:
        return schema.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt key is also a missing one ("ulr" for "url"): the spelling is the news.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        raise ConfigError(_explain(schema, first, example)) from None


def _explain(schema: type[BaseModel], error: ErrorDetails, example: str) -> str:
    loc = tuple(error["loc"])
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    parent, field = _locate(schema, loc)
    name = _dotted(loc)
    leaf = str(loc[-1]) if loc else ""
    hint = _hint(leaf, field)

    if kind == "extra_forbidden":
        known = parent.model_fields if parent is not None else {}
        where = _dotted(loc[:-1])
        return unknown_setting(leaf, known, where, _tables_with(schema, leaf), table=isinstance(value, dict))
    if kind == "missing":
        if _table_model(field) is not None:
            return f"missing table [{name}]: add it ({example} shows its settings)"
        return f"missing setting {name}: add it under [{_dotted(loc[:-1])}]" + (f", {hint}" if hint else "")
    if kind in _EXPECTED:
        what = _EXPECTED[kind]
        if what == "a table":
            return f"{name} must be a table: write [{name}] on a line of its own, with its settings below it"
        return wrong_type(name, what, value) + (f"; {hint}" if hint else "")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{name} is {_literal(value)}: it must be {_range(field, ctx)}"
    if kind == "finite_number":
        return f"{name} is {_literal(value)}: give a finite number" + (f", {hint}" if hint else "")
    if kind == "literal_error":
        # pydantic quotes the choices as Python does; TOML strings take double quotes.
        choices = str(ctx.get("expected", "a documented value")).replace("'", '"')
        return f"{name} is {_literal(value)}: use {choices}"
    if kind == "string_too_short":
        return f"{name} is empty: give a value" + (f", {hint}" if hint else "")
    if kind == "value_error":
        cause = ctx.get("error")
        if isinstance(cause, SettingError):
            return f"{_dotted((*loc, cause.key))} {cause}"
        return f"{name} is {_literal(value)}: {cause}"
    return f"{name}: {error['msg']}"


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string in double quotes",
    "list_type": "an array",
    "model_type": "a table", "model_attributes_type": "a table", "dict_type": "a table",
}


def _locate(schema: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model that holds the last element of `loc`, and that element's field (None when unknown)."""
    model: type[BaseModel] | None = schema
    field: FieldInfo | None = None
    for i, part in enumerate(loc):
        if model is None or not isinstance(part, str):
            return None, None
        field = model.model_fields.get(part)
        if i == len(loc) - 1:
            return model, field
        model = _table_model(field)
    return model, field


def _table_model(field: FieldInfo | None) -> type[BaseModel] | None:
    """The model of a table's field, also of an optional table (`X | None`)."""
    kind = field.annotation if field is not None else None
    for candidate in (kind, *typing.get_args(kind)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _tables_with(schema: type[BaseModel], key: str) -> list[str]:
    tables = []
    for table, field in schema.model_fields.items():
        model = _table_model(field)
        if model is not None and key in model.model_fields:
            tables.append(table)
    return tables


def _dotted(loc: Iterable[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _hint(key: str, field: FieldInfo | None) -> str:
    """'e.g. port = 1883', from the field's examples or its default."""
    if field is None:
        return ""
    if field.examples:
        sample = field.examples[0]
    elif field.default is not PydanticUndefined and field.default is not None:
        sample = field.default
    else:
        return ""
    return f"e.g. {key} = {_literal(sample)}"


def _range(field: FieldInfo | None, ctx: Mapping[str, Any]) -> str:
    bounds = list(field.metadata) if field is not None else []
    low = next((b for b in bounds if isinstance(b, annotated_types.Ge | annotated_types.Gt)), None)
    high = next((b for b in bounds if isinstance(b, annotated_types.Le | annotated_types.Lt)), None)
    if isinstance(low, annotated_types.Ge) and isinstance(high, annotated_types.Le):
        return f"from {low.ge} to {high.le}"
    parts = []
    if isinstance(low, annotated_types.Ge):
        parts.append(f"at least {low.ge}")
    elif isinstance(low, annotated_types.Gt):
        parts.append(f"more than {low.gt}")
    if isinstance(high, annotated_types.Le):
        parts.append(f"at most {high.le}")
    elif isinstance(high, annotated_types.Lt):
        parts.append(f"less than {high.lt}")
    if not parts:  # no metadata to read (a constraint on an inner type): pydantic's own bound
        words = {"gt": "more than", "ge": "at least", "lt": "less than", "le": "at most"}
        parts = [f"{words[k]} {v}" for k, v in ctx.items() if k in words]
    return " and ".join(parts)


def wrong_type(name: str, expected: str, value: object) -> str:
    """'server.port must be an integer, not a string ("8300")'."""
    return f"{name} must be {expected}, not {_toml_type(value)}"


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a number"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list):
        kind = "an array"
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, datetime | date | time):
        kind = "a date or time"
    else:
        return type(value).__name__
    return f"{kind} ({_literal(value)})"


def _literal(value: object, limit: int = 60) -> str:
    """`value` as it would be written in TOML, shortened to `limit` characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        text = "[" + ", ".join(_literal(v, limit) for v in value) + "]"
    elif isinstance(value, datetime | date | time):
        text = value.isoformat()
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
