"""Run the schemathesis CLI against a live service and turn its report into a readable test failure.

    result = run_schemathesis(f"{cc.url}/openapi.json", role="operator", headers=cc.operator_headers(),
                              workdir=tmp_path, server_logs=[cc.log_path])
    assert result.passed, result.explain()

The CLI runs in a subprocess (the interpreter of this venv) with tests/schemathesis.toml, the hooks
of tests/support/schemathesis_hooks.py and `--checks all`; its JSON report gives the failures
grouped by check, its text output the reproducing curl command of each. Exceptions the services
logged during the run are collected too, so that a 500 comes with its cause.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).resolve().parent.parent / "schemathesis.toml"
HOOKS = Path(__file__).resolve().parent / "schemathesis_hooks.py"
CREDENTIAL_ENV = "SIAGA_SCHEMATHESIS_HEADERS"  # read by the hooks
TIMEOUT_S = 300.0  # a run takes seconds; this only bounds a hung service

# The final line of a logged traceback: "ValueError: ...", "sqlite3.OperationalError: ...".
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Overflow|Invalid)\w*(?::.*)?$")


@dataclass
class SchemathesisRun:
    role: str
    schema_url: str
    command: list[str]
    returncode: int
    output: str
    report: dict[str, Any]
    seconds: float
    server_exceptions: Counter[str] = field(default_factory=Counter)

    @property
    def passed(self) -> bool:
        ops = self.report.get("operations", {})
        return (
            self.returncode == 0
            and bool(self.report.get("complete"))
            and not self.report.get("failures")
            and not self.report.get("errors")
            and ops.get("errored", 0) == 0
            and ops.get("tested", 0) > 0
        )

    def summary(self) -> str:
        """One line per check that failed, with the operations it failed on."""
        lines = []
        for failure in self.report.get("failures", []):
            ops = ", ".join(failure.get("operations", []))
            lines.append(f"  {failure['code']} {failure['title']} [{failure.get('severity', '?')}]"
                         f" x{failure.get('count', '?')}: {ops}")
        for error in self.report.get("errors", []):
            lines.append(f"  ERROR {json.dumps(error, ensure_ascii=False)[:500]}")
        return "\n".join(lines)

    def details(self) -> str:
        """The CLI's FAILURES and WARNINGS sections: each failure with its response and a curl command."""
        start = self.output.find("=== FAILURES ===")
        if start < 0:
            start = self.output.find("=== ERRORS ===")
        end = self.output.find("=== SUMMARY ===")
        if start < 0:
            return self.output[-20_000:]
        start = self.output.rfind("\n", 0, start) + 1
        return self.output[start:end if end > start else None].rstrip()

    def explain(self) -> str:
        ops = self.report.get("operations", {})
        cases = self.report.get("test_cases", {})
        head = [
            f"schemathesis as {self.role!r} against {self.schema_url}: exit code {self.returncode}, "
            f"{cases.get('generated', '?')} cases, {cases.get('unique_failures', '?')} unique failures, "
            f"{ops.get('tested', '?')}/{ops.get('selected', '?')} operations tested "
            f"({ops.get('errored', '?')} errored), {self.seconds:.1f} s",
            "failures by check:",
            self.summary() or "  (none in the report)",
        ]
        if self.server_exceptions:
            head.append("exceptions in the service's log during the run:")
            head += [f"  {n} x {line}" for line, n in self.server_exceptions.most_common()]
        head.append("command: " + " ".join(self.command))
        return "\n".join(head) + "\n\n" + self.details()


def run_schemathesis(
    schema_url: str,
    *,
    role: str,
    headers: Mapping[str, str],
    workdir: Path,
    server_logs: Sequence[Path] = (),
    extra_args: Sequence[str] = (),
) -> SchemathesisRun:
    """Run `schemathesis run SCHEMA_URL --checks all`, authenticated with `headers` (none: anonymous).

    `workdir` gets the reports and schemathesis's own files (.hypothesis), so nothing is written
    into the repository.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    json_report = workdir / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color",
        "run", schema_url,
        "--checks", "all",
        "--report", "json,junit",
        "--report-dir", str(workdir),
        "--report-json-path", str(json_report),
        "--report-junit-path", str(workdir / "junit.xml"),
    ]
    command += list(extra_args)
    env = _env()
    if headers:
        # Given to the auth provider in the hooks, which schemathesis leaves out of the cases that
        # test a missing credential (a `--header` would be sent with every request).
        env[CREDENTIAL_ENV] = json.dumps(dict(headers))

    offsets = {path: _size(path) for path in server_logs}
    started = time.monotonic()
    proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, errors="replace",
                          timeout=TIMEOUT_S, env=env, check=False)
    seconds = time.monotonic() - started
    output = proc.stdout + (f"\n--- stderr ---\n{proc.stderr}" if proc.stderr.strip() else "")
    (workdir / "output.txt").write_text(output, encoding="utf-8")
    try:
        report = json.loads(json_report.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        report = {}
    exceptions: Counter[str] = Counter()
    for path, offset in offsets.items():
        exceptions.update(_logged_exceptions(path, offset))
    return SchemathesisRun(role, schema_url, command, proc.returncode, output, report, seconds, exceptions)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SCHEMATHESIS_", "PYTEST_")) and k != CREDENTIAL_ENV}
    # No colour codes in the report; separator lines as wide as pytest's.
    return {**env, "SCHEMATHESIS_HOOKS": str(HOOKS), "COLUMNS": "120", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _logged_exceptions(path: Path, offset: int) -> Counter[str]:
    """The last line of each traceback written to `path` after `offset`."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return Counter()
    found: Counter[str] = Counter()
    in_traceback = False
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and _EXCEPTION_LINE.match(line):
            found[line[:300]] += 1
            in_traceback = False
    return found
