"""bdev_nvme across reactor kills of the remote target (issue 9 item 5a, the
"bdev_nvme retries per its reconnect options" part).

Daemon A (2 reactors) exports a malloc bdev over NVMe/TCP. Daemon B imports
it with bdev_nvme_attach_controller (ctrlr_loss_timeout_sec 30,
reconnect_delay_sec 1) and exports the imported bdev again over NVMe/TCP.
`blockfabric perf --verify` runs against B (no reconnect options: B's own
connections never drop) while the reactor of A holding B's admin queue is
SIGKILLed twice. B's channels hold the I/O that was in flight and what is
submitted during the outage and send it again after the reconnect: perf sees
no error and no miscompare. Without the loss timeout the same kill does fail
I/O (the retry is what makes the difference).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dlib
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

NQN_B = "nqn.2016-06.io.blockfabric:reexport"


def _setup(daemon_factory: Any, loss: int) -> tuple[Any, Any, int]:
    a = daemon_factory(mask="0x3", extra=["--max-restarts", "10"]).start()
    aport, bport = dlib.free_port(), dlib.free_port()
    a.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 65536, "block_size": 512})
    dlib.export_nvmf(a, aport, "Malloc0")
    b = daemon_factory(mask="0x1").start()
    b.rpc(
        "bdev_nvme_attach_controller",
        {
            "name": "N1",
            "trtype": "TCP",
            "traddr": "127.0.0.1",
            "trsvcid": str(aport),
            "subnqn": dlib.NQN,
            "ctrlr_loss_timeout_sec": loss,
            "reconnect_delay_sec": 1 if loss else 0,
        },
    )
    b.rpc("nvmf_create_transport", {"trtype": "TCP"})
    b.rpc("nvmf_create_subsystem", {"nqn": NQN_B, "allow_any_host": True})
    b.rpc("nvmf_subsystem_add_ns", {"nqn": NQN_B, "namespace": {"bdev_name": "N1n1"}})
    addr = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(bport)}
    b.rpc("nvmf_subsystem_add_listener", {"nqn": NQN_B, "listen_address": addr})
    return a, b, bport


def _perf(port: int, out: Path, seconds: float) -> subprocess.Popen[str]:
    trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN_B}"
    return subprocess.Popen(
        [
            sys.executable, "-m", "blockfabric.tools.cli", "perf", "-r", trid, "-q", "4",
            "-o", "4096", "-w", "randwrite", "-t", str(seconds), "-P", "1", "--verify",
            "--json", str(out), "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_bdev_nvme_holds_io_across_remote_reactor_kills(
    daemon_factory: Any, tmp_path: Path
) -> None:
    a, b, bport = _setup(daemon_factory, loss=30)
    out = tmp_path / "perf.json"
    p = _perf(bport, out, 16)
    time.sleep(3)
    kills = []
    for _ in range(2):
        kills.append(dlib.kill_reactor(a, dlib.nvme_admin_reactor(a)))
        # B's controller is back before the next kill
        end = time.monotonic() + 20
        while (
            b.rpc("bdev_nvme_get_controllers", {"name": "N1"})[0]["ctrlrs"][0]["state"] != "enabled"
        ):
            assert time.monotonic() < end, "bdev_nvme did not reconnect"
            time.sleep(0.2)
        time.sleep(2.5)
    so, se = p.communicate(timeout=120)
    why = f"rc={p.returncode}\n{so[-2000:]}\n{se[-2000:]}"
    doc = json.loads(out.read_text())
    print(f"kills {kills}\n{so[-800:]}")
    assert p.returncode == 0, why
    assert doc["total"]["errors"] == 0 and doc["total"]["miscompares"] == 0, why
    assert doc["total"]["ios"] > 0, why
    assert "lost" in b.log() or "I/O queue lost" in b.log(), b.log()[-2000:]
    for d in (a, b):
        assert "Traceback" not in d.log(), d.log()[-3000:]


def test_without_loss_timeout_io_fails(daemon_factory: Any, tmp_path: Path) -> None:
    """The control case: ctrlr_loss_timeout_sec 0 fails the I/O of the outage."""
    a, b, bport = _setup(daemon_factory, loss=0)
    out = tmp_path / "perf.json"
    p = _perf(bport, out, 6)
    time.sleep(2.5)
    dlib.kill_reactor(a, dlib.nvme_admin_reactor(a))
    so, se = p.communicate(timeout=120)
    doc = json.loads(out.read_text()) if out.exists() else {"total": {"errors": -1}}
    assert p.returncode != 0 and doc["total"]["errors"] != 0, f"{so[-2000:]}\n{se[-2000:]}"
