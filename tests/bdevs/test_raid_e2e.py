"""Acceptance: raid1 on a real 2-reactor daemon under `blockfabric perf --verify`.

Phase 1: perf --verify (NVMe/TCP, 2 queues: one per reactor) on a raid1 of
EE_Malloc0 (an error bdev on Malloc0) and Malloc1; mid-run every I/O to
EE_Malloc0 starts failing. The host sees no error and no miscompare, the
array reports itself degraded. Phase 2: Malloc2 is added and rebuilt while
perf --verify runs again; once the rebuild completed the members hold the
same bytes (read straight from their shared memory), Malloc1 is removed and
a last perf --verify is served from the rebuilt Malloc2 alone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from blockfabric.control.client import RpcClientError
from blockfabric.shm.segment import SharedSegment

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

NQN = "nqn.2016-06.io.blockfabric:raid1"
SECONDS = float(os.environ.get("BLOCKFABRIC_RAID_SECONDS", "8"))
BLOCKS = 65536  # 32 MiB of 512 B


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _export(d: Any, bdev: str, port: int) -> None:
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True, "serial_number": "BFR1"})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": bdev}})
    d.rpc(
        "nvmf_subsystem_add_listener",
        {
            "nqn": NQN,
            "listen_address": {
                "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)
            },
        },
    )  # fmt: skip


def _perf(port: int, out: Path, seconds: float) -> subprocess.Popen[str]:
    trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"
    args = ["-r", trid, "-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", str(seconds)]
    args += ["-P", "2", "--verify", "--json", str(out), "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-m", "blockfabric.tools.cli", "perf", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    so, se = p.communicate(timeout=SECONDS + 120)
    why = f"rc={p.returncode}\n{so[-3000:]}\n{se[-3000:]}"
    assert p.returncode == 0, why
    doc = json.loads(out.read_text())
    tot = doc["total"]
    assert doc["verify"] is True
    assert tot["errors"] == 0, why
    assert tot["miscompares"] == 0, why
    assert tot["ios"] > 0, why
    return doc


def _raid(d: Any) -> dict[str, Any]:
    [r] = d.rpc("bdev_raid_get_bdevs", {"category": "all"})
    return r  # type: ignore[no-any-return]


def _member_bytes(d: Any, name: str) -> bytes:
    seg = SharedSegment.attach(f"blockfabric.{d.name}.malloc.{name}")
    try:
        return bytes(seg.buf[: BLOCKS * 512])
    finally:
        seg.close()


def test_raid1_member_fails_mid_run_then_rebuilds(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(mask="0x3").start()
    for n in ("Malloc0", "Malloc1", "Malloc2"):
        d.rpc("bdev_malloc_create", {"name": n, "num_blocks": BLOCKS, "block_size": 512})
    assert d.rpc("bdev_error_create", {"base_name": "Malloc0"}) == "EE_Malloc0"
    assert d.rpc(
        "bdev_raid_create",
        {"name": "Raid1", "raid_level": "1", "base_bdevs": "EE_Malloc0 Malloc1"},
    )
    port = _free_port()
    _export(d, "Raid1", port)
    claimed = {b["name"]: b["claimed"] for b in d.rpc("bdev_get_bdevs")}
    assert claimed == {
        "Malloc0": True, "Malloc1": True, "Malloc2": False, "EE_Malloc0": True, "Raid1": True
    }  # fmt: skip

    # phase 1: a member fails mid-run
    p = _perf(port, tmp_path / "p1.json", SECONDS)
    time.sleep(SECONDS / 3)
    assert d.rpc(
        "bdev_error_inject_error",
        {"name": "EE_Malloc0", "io_type": "all", "error_type": "failure", "num": 1 << 30},
    )
    doc = _finish(p, tmp_path / "p1.json")
    r = _raid(d)
    assert r["state"] == "online" and r["degraded"] is True, r
    assert r["num_base_bdevs_operational"] == 1 and r["num_base_bdevs_discovered"] == 1
    assert [m["state"] for m in r["base_bdevs_list"]] == ["failed", "online"], r
    assert r["base_bdevs_list"][0]["io_errors"] >= 1
    print(f"phase 1 (member failed mid-run): {doc['total']['ios']} I/Os, 0 errors")

    # phase 2: a replacement, rebuilt under load
    p = _perf(port, tmp_path / "p2.json", SECONDS)
    time.sleep(SECONDS / 4)
    assert d.rpc("bdev_raid_add_base_bdev", {"raid_bdev": "Raid1", "base_bdev": "Malloc2"})
    seen_rebuild = threading.Event()
    t_end = time.monotonic() + SECONDS + 60
    while time.monotonic() < t_end:
        r = _raid(d)
        if "process" in r:
            seen_rebuild.set()
        elif r["base_bdevs_list"][0]["state"] == "online":
            break
        time.sleep(0.05)
    assert r["base_bdevs_list"][0]["name"] == "Malloc2" and not r["degraded"], r
    doc = _finish(p, tmp_path / "p2.json")
    print(f"phase 2 (rebuild under load): {doc['total']['ios']} I/Os, seen={seen_rebuild.is_set()}")
    # quiet now: the rebuilt member holds exactly the survivor's bytes
    assert _member_bytes(d, "Malloc2") == _member_bytes(d, "Malloc1")
    # EE_Malloc0 is free again (not claimed) and can go
    assert d.rpc("bdev_error_delete", {"name": "EE_Malloc0"}) is True

    # phase 3: only the rebuilt member left
    assert d.rpc("bdev_raid_remove_base_bdev", {"name": "Malloc1"}) is True
    p = _perf(port, tmp_path / "p3.json", SECONDS / 2)
    _finish(p, tmp_path / "p3.json")
    r = _raid(d)
    assert [m["name"] for m in r["base_bdevs_list"]] == ["Malloc2", None], r
    # the last member cannot be removed; a claimed bdev cannot be deleted
    with pytest.raises(RpcClientError, match="last online member"):
        d.rpc("bdev_raid_remove_base_bdev", {"name": "Malloc2"})
    with pytest.raises(RpcClientError, match="claimed by raid bdev Raid1"):
        d.rpc("bdev_malloc_delete", {"name": "Malloc2"})
    log = d.log()
    assert "Traceback" not in log, log[-4000:]
