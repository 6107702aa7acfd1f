"""hardware/power.md: the battery-life figures are what power_budget.py computes from the inputs
shown, and every printed step of the arithmetic checks out from the numbers printed beside it."""

from __future__ import annotations

import ast
import importlib.util
import operator
import re
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POWER_MD = ROOT / "hardware" / "power.md"

_spec = importlib.util.spec_from_file_location("siaga_hw_power_budget", ROOT / "hardware" / "power_budget.py")
assert _spec is not None and _spec.loader is not None
budget = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = budget  # dataclasses look their module up while the class is being made
_spec.loader.exec_module(budget)


def test_power_md_is_what_the_script_computes() -> None:
    text = POWER_MD.read_text(encoding="utf-8")
    assert budget.current_block(text) == budget.render(), "run hardware/power_budget.py --write"


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expr: str) -> Decimal:
    """+ - × / and brackets over decimal numbers, nothing else."""
    def walk(node: ast.AST) -> Decimal:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return Decimal(str(node.value))
        raise ValueError(f"unexpected {ast.dump(node)} in {expr!r}")

    return walk(ast.parse(expr.replace("×", "*"), mode="eval").body)


STEP = re.compile(r"^\d+\. `(\w+) = (.+) = ([0-9.+\-×/() ]+) = (-?[0-9.]+)(?: [^`]*)?`$")


def test_every_printed_step_recomputes_from_its_printed_numbers() -> None:
    lines = [line for line in POWER_MD.read_text(encoding="utf-8").splitlines() if re.match(r"^\d+\. `", line)]
    assert len(lines) > 40
    for line in lines:
        m = STEP.match(line)
        assert m, f"step not in the form `name = formula = numbers = result unit`: {line}"
        numbers, shown = m.group(3), m.group(4)
        digits = len(shown.split(".")[1]) if "." in shown else 0
        half_unit = Decimal(1).scaleb(-digits) / 2
        assert abs(evaluate(numbers) - Decimal(shown)) <= half_unit, line


def test_inputs_table_in_power_md_holds_the_values_used() -> None:
    text = POWER_MD.read_text(encoding="utf-8")
    for item in budget.INPUTS:
        assert f"| `{item.symbol}` | {item.value} | {item.unit} |" in text, item.symbol


def test_backup_hours_by_hand() -> None:
    """The ESP32 mains figures again, in floats straight from the inputs, independent of the script's steps."""
    v = {i.symbol: float(i.value) for i in budget.INPUTS}
    text = POWER_MD.read_text(encoding="utf-8")
    tx = v["n_tx"] * v["t_tx"] * v["I_tx"] / 60
    for scenario, radio in (("A1", v["I_rx"]), ("A3", v["f_rx"] * v["I_rx"])):
        board = v["I_cpu"] + radio + tx + v["I_led_pwr"] + v["I_status"] + v["I_q_ldo"]
        idle = v["I_ring"] * v["d_idle"]
        events = v["N_ev"] * (v["I_ring"] * v["t_ring"] + v["I_buzz"] * v["t_buzz"]) / v["H_month"]
        i_batt = v["V_rail"] * (board + idle + events) / v["eta"] / v["V_cell"] + v["I_div"]
        hours = v["n_mains"] * v["C_cell"] * v["k_derate"] / i_batt
        shown = re.search(rf"\| {scenario}\. [^|]*\|[^|]*\|[^|]*\| ([0-9.]+) h of backup \|", text)
        assert shown, scenario
        assert abs(float(shown.group(1)) - hours) < 0.1, scenario


def test_modem_figures_by_hand() -> None:
    """The modem variant (A5, B4) and the brown-out figures (D1), in floats straight from the inputs,
    independent of the script's steps."""
    v = {i.symbol: float(i.value) for i in budget.INPUTS}
    text = POWER_MD.read_text(encoding="utf-8")

    def shown(pattern: str) -> float:
        m = re.search(pattern, text)
        assert m, pattern
        return float(m.group(1))

    def table_current(scenario: str) -> float:
        return shown(rf"\| {scenario}\. [^|]*\|[^|]*\| ([0-9.]+) mA \|")

    sms = (v["n_sms"] + v["N_ev"] / 30) * v["t_sms"] * v["I_sms"] / 86400
    assert 0 < sms < 1, "a daily test SMS must cost well under a milliampere on average"
    for scenario, base in (("A5", "A1"), ("B4", "B1")):
        assert abs(table_current(scenario) - (table_current(base) + v["I_gsm_idle"] + sms)) < 0.02, scenario
    assert abs(table_current("A6") - (table_current("A2") + v["I_lte_idle"] + sms)) < 0.02
    hours = v["n_mains"] * v["C_cell"] * v["k_derate"] / table_current("A5")
    assert abs(shown(r"\| A5\. [^|]*\|[^|]*\|[^|]*\| ([0-9.]+) h of backup \|") - hours) < 0.1
    assert hours < shown(r"\| A1\. [^|]*\|[^|]*\|[^|]*\| ([0-9.]+) h of backup \|")
    days = v["n_solar"] * v["C_cell"] * v["k_derate"] / (table_current("B4") * 24)
    assert abs(shown(r"\| B4\. [^|]*\|[^|]*\|[^|]*\| ([0-9.]+) days without sun") - days) < 0.1

    r_pack = v["R_cell"] / v["n_mains"] + v["R_path"]
    drop = (v["I_peak"] + table_current("A1") / 1000) * r_pack
    assert drop < 0.35, "over the 350 mV the SIM800L hardware design allows: the wiring is too thin"
    assert abs(shown(r"`V_cell_min = [^`]* = ([0-9.]+) V`") - (v["V_min"] + drop)) < 0.01
    assert abs(shown(r"`dV_alone = [^`]* = ([0-9.]+) V`") - v["I_peak"] * v["t_burst"] / v["C_bulk"] * 1000) < 0.01
    assert abs(shown(r"`tau = [^`]* = ([0-9.]+) µs`") - r_pack * v["C_bulk"]) < 1
    # and the prose draws the same conclusions from them
    assert f"about {round(v['V_min'] + drop, 1)} V (open-circuit)" in text
    assert "at least 1000 µF" in text and f"| `C_bulk` | {budget.VALUES['C_bulk']} |" in text
