"""libiscsi's iscsi-test-cu (615 test runs, 134 suites) against blockfabric and Debian tgtd.

Both get a 64 MiB RAM-backed LUN (blockfabric: Malloc0, LUN 0, 2 reactors;
tgtd: file in /dev/shm, LUN 1).  Acceptance: blockfabric fails no test at all,
every distinct test tgt passes blockfabric passes, and blockfabric skips fewer
tests as "not implemented".  CUnit reports a test that skipped as "passed": the
table counts passed (ran, no skip), failed and skipped separately.
The comparison goes to bench/results/iscsi-conformance.{json,md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import cunit
import khost
import pytest
from bfsetup import BF_BASE, bf_iscsi_node, bf_iscsi_portal, daemon_clean, malloc
from peers import Tgtd, TgtTarget

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
LUN_MB = 64
# per target; a full run against tgtd takes ~40 s here
RUN_TIMEOUT = float(os.environ.get("BF_CONFORMANCE_TIMEOUT", "900"))

SAMPLE = """
Suite: CompareAndWrite
  Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
passed
  Test: Miscompare ...passed
Suite: GetLBAStatus
  Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed
FAILED
    1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
  Test: UnmapSingle ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
passed
Suite: Reserve6
  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense. UNIT_ATTENTION
Suite: CompareAndWrite
  Test: Simple ...passed

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      3      3    n/a      0        0
               tests      6      6      5      1        0
"""


def test_cunit_verbose_parser() -> None:
    """The parser ties skips/failures to tests and agrees with CUnit's own summary."""
    r = cunit.parse_verbose(SAMPLE, "sample")
    assert r.consistency_error() is None
    assert len(r.cases) == 6 and len(r.tests) == 5
    assert r.failed == ["GetLBAStatus.BeyondEol"]
    assert (
        r.tests["GetLBAStatus.BeyondEol"]
        .failures[1]
        .startswith("test_get_lba_status_beyond_eol.c:38")
    )
    assert r.not_implemented == ["CompareAndWrite.Simple"]
    assert r.skipped_other == ["GetLBAStatus.UnmapSingle"]
    assert "Reserve6.LUNReset" in r.passed  # a teardown message after the verdict
    # a skip is not a pass: Simple and UnmapSingle skipped, BeyondEol failed
    c = counts(r)
    assert (c["passed"], c["failed"], c["skipped"]) == (2, 1, 2), c
    assert (c["skipped_not_implemented"], c["skipped_other"]) == (1, 1)
    bad = cunit.parse_verbose(
        SAMPLE.replace("tests      6      6      5", "tests      6      6      6")
    )
    assert bad.consistency_error() is not None
    assert cunit.parse_verbose("crashed").consistency_error() is not None


def _tool_version() -> str:
    p = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "libiscsi-bin"], capture_output=True, text=True
    )
    return p.stdout.strip() or "unknown"


def counts(r: cunit.CunitRun) -> dict[str, int]:
    """Distinct tests as passed (ran and passed, no skip), failed, skipped
    (a skip is not a pass: CUnit reports a skipped test as passed)."""
    failed = set(r.failed)
    skipped = (set(r.not_implemented) | set(r.skipped_other)) - failed
    passed = r.passed - skipped
    assert len(passed) + len(failed) + len(skipped) == len(r.tests)
    return {
        "distinct": len(r.tests),
        "passed": len(passed),
        "failed": len(failed),
        "skipped": len(skipped),
        "skipped_not_implemented": len(set(r.not_implemented) - failed),
        "skipped_other": len(set(r.skipped_other) - set(r.not_implemented) - failed),
    }


def _markdown(tgt: cunit.CunitRun, bf: cunit.CunitRun, regressions: list[str], ok: bool) -> str:
    t, b = counts(tgt), counts(bf)
    rows = [
        ("test runs (suite families counted separately)", len(tgt.cases), len(bf.cases)),
        ("distinct tests", t["distinct"], b["distinct"]),
        ("passed (ran, no skip)", t["passed"], b["passed"]),
        ("failed", t["failed"], b["failed"]),
        ("skipped", t["skipped"], b["skipped"]),
        ("skipped: not implemented", t["skipped_not_implemented"], b["skipped_not_implemented"]),
        ("skipped: another reason", t["skipped_other"], b["skipped_other"]),
        ("wall time (s)", f"{tgt.seconds:.0f}", f"{bf.seconds:.0f}"),
    ]
    out = [
        f"# iSCSI conformance: libiscsi iscsi-test-cu {_tool_version()}",
        "",
        f"64 MiB RAM LUN each; blockfabric with 2 reactors. Acceptance: {'PASS' if ok else 'FAIL'}",
        "",
        "| | tgt (Debian tgtd) | blockfabric |",
        "|---|---:|---:|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Failing on tgt: {', '.join(tgt.failed) or '-'}",
        "",
        f"Failing on blockfabric: {', '.join(bf.failed) or '-'}",
        "",
        f"Passed by tgt but not by blockfabric: {', '.join(regressions) or '-'}",
        "",
        f"Not implemented on blockfabric: {', '.join(bf.not_implemented) or '-'}",
        "",
    ]
    return "\n".join(out)


@pytest.mark.interop
@pytest.mark.timeout(int(2 * RUN_TIMEOUT + 120))
def test_libiscsi_conformance_vs_tgt(daemon_factory: Any, tmp_path: Path) -> None:
    khost.require_tools("iscsi-test-cu", "tgtd", "tgtadm")
    # peer first: the same tool, the same LUN size
    port = khost.free_port()
    iqn = f"iqn.2024-01.io.interop:conformance-{port}"
    with Tgtd(port, [TgtTarget(iqn, LUN_MB)]):
        tgt = cunit.run_test_cu(
            f"iscsi://127.0.0.1:{port}/{iqn}/1", "tgt", RUN_TIMEOUT, tmp_path / "tgt.txt"
        )
    assert tgt.consistency_error() is None, (
        f"tgt run: {tgt.consistency_error()}\n{tgt.output[-3000:]}"
    )

    port = khost.free_port()
    d = daemon_factory(mask="0x3").start()
    bf_iscsi_portal(d, port)
    malloc(d, "Malloc0", LUN_MB)
    bf_iscsi_node(d, "disk1", "Malloc0")
    bf = cunit.run_test_cu(
        f"iscsi://127.0.0.1:{port}/{BF_BASE}:disk1/0",
        "blockfabric",
        RUN_TIMEOUT,
        tmp_path / "bf.txt",
    )
    log = d.log()

    regressions = sorted(tgt.passed - bf.passed)
    ok = (
        not regressions
        and not bf.failed
        and len(bf.not_implemented) < len(tgt.not_implemented)
        and bf.consistency_error() is None
    )
    report = {
        "tool": f"libiscsi-bin {_tool_version()} iscsi-test-cu -d",
        "lun_mb": LUN_MB,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "acceptance": {
            "rule": "blockfabric fails no test; every test tgt passes, blockfabric passes; "
            "blockfabric skips fewer tests as not implemented",
            "passed": ok,
            "counts": {"tgt": counts(tgt), "blockfabric": counts(bf)},
            "passed_by_tgt_not_by_blockfabric": regressions,
        },
        "tgt": tgt.as_dict(),
        "blockfabric": bf.as_dict(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "iscsi-conformance.json").write_text(json.dumps(report, indent=2) + "\n")
    md = _markdown(tgt, bf, regressions, ok)
    (RESULTS / "iscsi-conformance.md").write_text(md)
    print(md)

    assert bf.consistency_error() is None, (
        f"blockfabric run: {bf.consistency_error()} (rc={bf.rc})\n{bf.output[-3000:]}\n--- daemon log ---\n{log[-3000:]}"
    )
    failing = "\n".join(f"  {n}: {bf.tests[n].failures[:3]}" for n in bf.failed)
    assert not bf.failed, f"blockfabric fails {len(bf.failed)} libiscsi tests:\n{failing}"
    detail = "\n".join(
        f"  {n}: {bf.tests[n].failures[:3] if n in bf.tests else 'not run'}" for n in regressions
    )
    assert not regressions, (
        f"{len(regressions)} tests pass on tgt but not on blockfabric:\n{detail}"
    )
    assert len(bf.not_implemented) < len(tgt.not_implemented), (
        f"blockfabric skips {len(bf.not_implemented)} tests as not implemented, tgt {len(tgt.not_implemented)}: "
        f"{bf.not_implemented}"
    )
    daemon_clean(d)
