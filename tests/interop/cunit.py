"""Run libiscsi's iscsi-test-cu and parse its per-test results.

Why the verbose text and not `-x` (CUnit XML): the XML names every test and
its result, but libiscsi prints "[SKIPPED] ... is not implemented" on stdout
and in XML mode stdout carries no test names, so a skip cannot be tied to a
test.  Verbose mode (`-v`, libiscsi's default) prints "Suite: S", then
"  Test: T ..." + the test's messages + "passed"/"FAILED" per test, and a
CUnit "Run Summary" that the parser cross-checks its own counts against.
parse_xml() reads the XML results too (used to cross-check in unit tests).
"""

from __future__ import annotations

import re
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

NOT_IMPLEMENTED = re.compile(r"not (?:working/)?implemented|not supported", re.I)
_MARK = re.compile(r"^Suite: (?P<suite>\S+)\s*$|^  Test: (?P<test>.+?) \.\.\.|^Run Summary:", re.M)
# the verdict follows "..." directly or starts a line after the test's messages;
# teardown messages may follow it on the same line
_RESULT = re.compile(r"^(passed|FAILED)\b|(?:^|[^\w\[\]])(passed|FAILED)$")
_SUMMARY = re.compile(r"^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", re.M)


@dataclass
class CaseResult:
    name: str  # Suite.Test
    passed: bool
    skips: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def skipped_not_implemented(self) -> bool:
        return any(NOT_IMPLEMENTED.search(s) for s in self.skips)


@dataclass
class CunitRun:
    target: str
    rc: int
    seconds: float
    output: str
    cases: list[CaseResult]  # every test run, in order (some suites run in several families)
    summary: tuple[int, int, int, int] | None  # total, ran, passed, failed (CUnit's own)

    @property
    def tests(self) -> dict[str, CaseResult]:
        """Distinct Suite.Test -> result; a test run several times passes only if every run passed."""
        out: dict[str, CaseResult] = {}
        for c in self.cases:
            prev = out.get(c.name)
            if prev is None or (prev.passed and not c.passed):
                out[c.name] = c
        return out

    @property
    def passed(self) -> set[str]:
        return {n for n, t in self.tests.items() if t.passed}

    @property
    def failed(self) -> list[str]:
        return sorted(n for n, t in self.tests.items() if not t.passed)

    @property
    def not_implemented(self) -> list[str]:
        return sorted(n for n, t in self.tests.items() if t.skipped_not_implemented)

    @property
    def skipped_other(self) -> list[str]:
        return sorted(n for n, t in self.tests.items() if t.skips and not t.skipped_not_implemented)

    @property
    def runs_passed(self) -> int:
        return sum(c.passed for c in self.cases)

    @property
    def runs_not_implemented(self) -> int:
        return sum(c.skipped_not_implemented for c in self.cases)

    def consistency_error(self) -> str | None:
        """None when the parsed counts agree with CUnit's Run Summary."""
        if self.summary is None:
            return "no CUnit Run Summary in the output (crashed or killed?)"
        total, ran, npass, nfail = self.summary
        mine = (len(self.cases), self.runs_passed, len(self.cases) - self.runs_passed)
        if mine != (ran, npass, nfail):
            return f"parsed ran/passed/failed {mine} != CUnit summary {(ran, npass, nfail)}"
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "rc": self.rc,
            "seconds": round(self.seconds, 1),
            "test_runs": len(self.cases),
            "test_runs_passed": self.runs_passed,
            "test_runs_failed": len(self.cases) - self.runs_passed,
            "test_runs_skipped_not_implemented": self.runs_not_implemented,
            "distinct_tests": len(self.tests),
            "passed": len(self.passed),
            "failed": len(self.failed),
            "skipped_not_implemented": len(self.not_implemented),
            "skipped_other_reason": len(self.skipped_other),
            "failing_tests": {n: self.tests[n].failures for n in self.failed},
            "not_implemented_tests": self.not_implemented,
            "cunit_summary": self.summary,
        }


def parse_verbose(text: str, target: str = "", rc: int = 0, seconds: float = 0.0) -> CunitRun:
    cases: list[CaseResult] = []
    suite = "?"
    marks = list(_MARK.finditer(text))
    for i, m in enumerate(marks):
        if m.group("suite"):
            suite = m.group("suite")
            continue
        if not m.group("test"):
            break  # Run Summary
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        block = text[m.end() : end]
        lines = block.splitlines()
        result = None
        for ln in lines:
            r = _RESULT.search(ln.rstrip())
            if r:
                result = r.group(1) or r.group(2)
                break
        cases.append(
            CaseResult(
                name=f"{suite}.{m.group('test').strip()}",
                passed=result == "passed",
                skips=[s.strip() for s in re.findall(r"\[SKIPPED\]([^\n]*)", block)],
                failures=[s.strip() for s in re.findall(r"\[FAILED\]([^\n]*)", block)]
                + [s.strip() for s in re.findall(r"^\s+\d+\. (\S+:\d+ .*)$", block, re.M)],
            )
        )
    sm = _SUMMARY.search(text)
    summary = (int(sm[1]), int(sm[2]), int(sm[3]), int(sm[4])) if sm else None
    return CunitRun(target, rc, seconds, text, cases, summary)


def parse_xml(path: Path) -> dict[str, bool]:
    """Suite.Test -> passed, from CUnitAutomated-Results.xml."""
    root = ET.parse(path).getroot()
    out: dict[str, bool] = {}
    for suite in root.iter("CUNIT_RUN_SUITE"):
        sname = (suite.findtext(".//SUITE_NAME") or "?").strip()
        for rec in suite.iter("CUNIT_RUN_TEST_RECORD"):
            for child in rec:
                tname = (child.findtext("TEST_NAME") or "?").strip()
                key = f"{sname}.{tname}"
                ok = child.tag == "CUNIT_RUN_TEST_SUCCESS"
                # a failing test has one record per failed assertion
                out[key] = out.get(key, True) and ok
    return out


def run_test_cu(
    url: str, target: str, timeout: float, log_path: Path | None = None, tests: str | None = None
) -> CunitRun:
    """iscsi-test-cu -d (destructive tests allowed) -v [-t TESTS] against URL; killed after timeout."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            ["iscsi-test-cu", "-d", "-v", *(["-t", tests] if tests else []), url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
        )
        rc, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        raw = e.stdout or b""
        out = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        rc, out = 124, out + f"\n[iscsi-test-cu killed after {timeout:.0f}s]"
    if log_path is not None:
        log_path.write_text(out)
    return parse_verbose(out, target, rc, time.monotonic() - t0)
