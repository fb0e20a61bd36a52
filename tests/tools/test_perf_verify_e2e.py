"""Acceptance: `blockfabric perf --verify` against a real 2-reactor daemon.

4 worker processes (-P 4) write, read back and compare for
BLOCKFABRIC_VERIFY_SECONDS (default 60) over NVMe/TCP, once without and
once with header + data digests; zero miscompares, zero errors, I/O done.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bftest import _seq

SECONDS = float(os.environ.get("BLOCKFABRIC_VERIFY_SECONDS", "60"))
NQN = "nqn.2016-06.io.blockfabric:verify"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(int(SECONDS) + 180)]


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # tests/tools/conftest.py points run_dir at a tmp path for in-process tests;
    # a daemon needs a short one (ipc:// socket paths are limited to 107 bytes)
    d = Path(f"/tmp/bf-{os.getpid()}-v{next(_seq)}")
    d.mkdir(mode=0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("digests", [[], ["-H", "-I"]], ids=["plain", "hdgst+ddgst"])
def test_perf_verify_4_workers(daemon_factory: Any, tmp_path: Path, digests: list[str]) -> None:
    port = _free_port()
    d = daemon_factory(mask="0x3").start()
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 131072, "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True, "serial_number": "BFV1"})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
    d.rpc(
        "nvmf_subsystem_add_listener",
        {
            "nqn": NQN,
            "listen_address": {
                "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)
            },
        },
    )  # fmt: skip
    out = tmp_path / "perf.json"
    trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"
    args = ["-r", trid, "-q", "8", "-o", "4096", "-w", "randwrite", "-t", str(SECONDS)]
    args += ["-P", "4", "--verify", "--json", str(out), "--quiet", *digests]
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "blockfabric.tools.cli", "perf", *args],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    took = time.monotonic() - t0
    why = f"rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert p.returncode == 0, why
    doc = json.loads(out.read_text())
    tot = doc["total"]
    print(f"perf {digests or 'plain'}: {took:.1f}s, {tot['ios']} I/Os, {tot['iops']:.0f} IOPS")
    assert doc["verify"] is True and doc["hdgst"] == bool(digests) and doc["ddgst"] == bool(digests)
    assert tot["miscompares"] == 0, why
    assert tot["errors"] == 0, why
    assert tot["ios"] > 0, why
    assert len(doc["workers"]) == 4 and all(w["ios"] > 0 for w in doc["workers"]), doc["workers"]
    # the controllers are gone after perf exits, the daemon is healthy
    end = time.monotonic() + 10
    while d.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN}) and time.monotonic() < end:
        time.sleep(0.2)
    assert d.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN}) == []
    log = d.log()
    assert "Traceback" not in log, log[-4000:]
