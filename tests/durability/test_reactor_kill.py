"""Reactor kills under load (issue 9 item 5a).

A 2-reactor target exports a malloc bdev over NVMe/TCP and two iSCSI target
nodes (one homed on each reactor). Load: `blockfabric perf --verify` with 4
worker processes and reconnect options, and one iSCSI pattern writer per
node (write, read back, compare; log in again after a drop and read back
every acknowledged write). Meanwhile the reactor that homes node "kill" is
SIGKILLed every few seconds; the supervisor restarts it each time.

Expected: every host on the killed reactor reconnects; zero miscompares
everywhere (every acknowledged write reads back); the writer on the other
reactor never sees its connection drop and keeps completing I/O.

The victim is the reactor holding perf's admin queue. An NVMe-oF controller
spans reactors (admin queue on one, I/O queues round-robin), so its first
kill takes the whole controller down and every perf worker reconnects (later
kills hit perf only where its new queues landed): the "never drops" check is
made on the iSCSI host, whose session lives entirely on the other reactor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dlib
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

KILLS = int(os.environ.get("BLOCKFABRIC_REACTOR_KILLS", "3"))
KILL_EVERY = 3.0


def _node_lcores(d: Any) -> dict[str, int]:
    out = {}
    for c in d.rpc("iscsi_get_connections"):
        out[c["target_node_name"].rsplit(":", 1)[-1]] = int(c["lcore_id"])
    return out


def test_reactor_kills_under_load(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(mask="0x3", extra=["--max-restarts", str(KILLS + 5)]).start()
    nport, iport = dlib.free_port(), dlib.free_port()
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 131072, "block_size": 512})
    d.rpc("bdev_malloc_create", {"name": "Malloc1", "num_blocks": 8192, "block_size": 512})
    d.rpc("bdev_malloc_create", {"name": "Malloc2", "num_blocks": 8192, "block_size": 512})
    dlib.export_nvmf(d, nport, "Malloc0")
    dlib.export_iscsi(d, iport, {"n0": "Malloc1", "n1": "Malloc2"})
    base = "iqn.2016-06.io.blockfabric"
    writers = {n: dlib.IscsiPatternWriter(iport, f"{base}:{n}").start() for n in ("n0", "n1")}
    try:
        seconds = KILLS * KILL_EVERY + 6
        out = tmp_path / "perf.json"
        trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{nport} subnqn:{dlib.NQN}"
        perf = subprocess.Popen(
            [
                sys.executable, "-m", "blockfabric.tools.cli", "perf", "-r", trid,
                "-q", "8", "-o", "4096", "-w", "randwrite", "-t", str(seconds), "-P", "4",
                "--verify", "--json", str(out), "--quiet",
                "--ctrlr-loss-timeout-sec", "30", "--reconnect-delay-sec", "0.2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        # the victim: the reactor with perf's admin queue (its first kill
        # takes the controller down); the iSCSI node homed there is the
        # victim writer, the other node's writer must never notice
        victim = dlib.nvme_admin_reactor(d)
        homes = _node_lcores(d)
        assert set(homes) == {"n0", "n1"} and homes["n0"] != homes["n1"], homes
        victim_node = next(n for n, r in homes.items() if r == victim)
        survivor = next(n for n in homes if n != victim_node)
        time.sleep(3)
        placement = [
            (q["qid"], q["thread"]) for q in d.rpc("nvmf_subsystem_get_qpairs", {"nqn": dlib.NQN})
        ]
        kills = []
        survivor_ios = [writers[survivor].ios]
        for _ in range(KILLS):
            kills.append(dlib.kill_reactor(d, victim))
            time.sleep(KILL_EVERY)
            survivor_ios.append(writers[survivor].ios)
        so, se = perf.communicate(timeout=seconds + 120)
    finally:
        for w in writers.values():
            w.stop()
    why = f"perf rc={perf.returncode}\n{so[-3000:]}\n{se[-3000:]}"
    doc = json.loads(out.read_text())
    tot = doc["total"]
    print(f"kills {kills} victim {victim} placement {placement}\nperf total {tot}\n{so[-1500:]}")
    print("workers", [(w["worker"], w["reconnects"], w["ios"]) for w in doc["workers"]])
    for n, w in writers.items():
        print(f"iscsi {n}: drops {w.drops} ios {w.ios} miscompares {w.miscompares} {w.recoveries}")
    # NVMe: reconnected, every acknowledged write read back, nothing wrong
    assert perf.returncode == 0, why
    assert tot["miscompares"] == 0 and tot["errors"] == 0, why
    assert tot["reconnects"] >= 1 and doc["ctrlr_resets"] >= 1, why
    assert tot["audited_units"] > 0, why
    # iSCSI on the killed reactor: logged in again each time, no miscompare
    v, s = writers[victim_node], writers[survivor]
    assert not v.error and not s.error, (v.error, s.error)
    assert v.drops >= 1 and v.miscompares == 0, (v.drops, v.bad)
    # the other reactor's host never dropped and kept doing I/O throughout
    assert s.drops == 0 and s.miscompares == 0, (s.drops, s.bad)
    assert all(b > a for a, b in zip(survivor_ios, survivor_ios[1:], strict=False)), survivor_ios
    st = dlib.reactors(d)
    assert len(st) == 2, st
    log = d.log()
    assert "Traceback" not in log, log[-3000:]
