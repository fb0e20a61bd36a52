"""Two iSCSI sessions on a 2-reactor blockfabric doing I/O at once, with data checks.

Two long-lived iscsi-perf sessions (one per target node, reading continuously)
must land on different reactors (iscsi_get_connections lcore_id); meanwhile
two loops of iscsi-test-cu data-verifying suites (CompareAndWrite,
WriteVerify10/16: the target compares the data; Read10) run concurrently on
the two LUNs and must pass every time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import cunit
import khost
import pytest
from bfsetup import BF_BASE, bf_iscsi_node, bf_iscsi_portal, daemon_clean, malloc

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

SUITES = "SCSI.CompareAndWrite,SCSI.WriteVerify10,SCSI.WriteVerify16,SCSI.Read10"
LOOPS = 4


def _perf(url: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["iscsi-perf", "-i", name, "-m", "8", "-b", "8", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(p: subprocess.Popen[bytes]) -> str:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGINT)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
    return (p.stdout.read() if p.stdout else b"").decode(errors="replace")[-600:]


def test_two_sessions_two_reactors(daemon_factory: Any, tmp_path: Path) -> None:
    khost.require_tools("iscsi-test-cu", "iscsi-perf")
    port = khost.free_port()
    d = daemon_factory(mask="0x3").start()
    bf_iscsi_portal(d, port)
    urls = []
    for i in (1, 2):
        malloc(d, f"Malloc{i}", 32)
        bf_iscsi_node(d, f"disk{i}", f"Malloc{i}")
        urls.append(f"iscsi://127.0.0.1:{port}/{BF_BASE}:disk{i}/0")

    perfs = [_perf(u, f"iqn.2024-01.io.interop:perf{i}") for i, u in enumerate(urls)]
    runs: dict[int, list[cunit.CunitRun]] = {0: [], 1: []}
    try:
        conns: list[dict[str, Any]] = []
        end = time.monotonic() + 20
        while time.monotonic() < end:
            conns = [
                c
                for c in d.rpc("iscsi_get_connections")
                if "perf" in str(c.get("initiator_name", ""))
            ]
            if len(conns) == 2:
                break
            time.sleep(0.2)
        assert len(conns) == 2, (
            f"iscsi-perf sessions seen by the target: {conns}\n{[_stop(p) for p in perfs]}"
        )

        def loop(i: int) -> None:
            for n in range(LOOPS):
                r = cunit.run_test_cu(
                    urls[i], f"disk{i + 1}", 60, tmp_path / f"cu{i}-{n}.txt", SUITES
                )
                runs[i].append(r)

        threads = [threading.Thread(target=loop, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        during: list[list[dict[str, Any]]] = []
        while any(t.is_alive() for t in threads):
            during.append(d.rpc("iscsi_get_connections"))
            time.sleep(0.2)
        for t in threads:
            t.join()
        alive = [p.poll() is None for p in perfs]
    finally:
        perf_out = [_stop(p) for p in perfs]

    print(f"perf connections: {conns}")
    print(f"max concurrent connections during the verify loops: {max(map(len, during), default=0)}")
    for i in (0, 1):
        for r in runs[i]:
            assert r.consistency_error() is None, (
                f"{r.target}: {r.consistency_error()}\n{r.output[-2000:]}"
            )
            bad = {n: r.tests[n].failures[:2] for n in r.failed}
            assert not bad, f"{r.target} failed while the other session ran: {bad}"
        assert len(runs[i]) == LOOPS
    assert all(alive), f"iscsi-perf session died during the run: {perf_out}"
    lcores = [c.get("lcore_id") for c in conns]
    assert None not in lcores, f"iscsi_get_connections has no lcore_id: {conns}"
    assert len(set(lcores)) == 2, f"both sessions on one reactor: {conns}"
    daemon_clean(d)
