"""blockfabric's NVMe/RDMA host in QEMU with Soft-RoCE (issue 10, 5b and 5c).

Each test is one guest boot (GUEST_RDMA=1: the host's userland chrooted on
the guest kernel, rxe0 on 10.0.2.15) running tests/interop/guest/nvme-rdma-host.sh:

* 5c (MODE=bf): blockfabric's RDMA target (2 reactors) and blockfabric's
  RDMA host in the same guest: ``perf -r 'trtype:RDMA ...' --verify`` with
  2 workers (2 I/O queues), QD 8, 4 KiB mixed; a 64 KiB verify run (keyed
  SGLs through staging buffers), a QD 16 read run; non-zero IOPS, no
  miscompare, no error.
* 5b (MODE=kernel): the Linux kernel's nvmet-rdma target (brd namespace), a
  peer nobody here wrote: perf --verify over RDMA; then a blockfabric in the
  guest attaches it with ``bdev_nvme_attach_controller -t rdma`` (start-up
  config), bdev_get_bdevs lists the namespace bdev with trtype RDMA, and it
  is re-exported over NVMe/TCP: perf --verify over TCP goes through the RDMA
  host to the kernel target.
* fault (MODE=fault): perf --verify over RDMA with reconnect options while
  the target reactor holding perf's admin queue is SIGKILLed: the supervisor
  restarts it, perf reconnects its queues, ends (no hang) with rc 0 and no
  miscompare (every acknowledged write read back), as for TCP in
  tests/durability/test_reactor_kill.py.
"""

from __future__ import annotations

import os
from typing import Any

import khost
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(1200)]

GUEST_TIMEOUT = int(os.environ.get("BF_RDMA_GUEST_TIMEOUT", "900"))


def _run(mode: str, **extra: str) -> Any:
    khost.require_harness()
    venv = khost.REPO / ".venv" / "bin" / "python"
    if not venv.exists():
        pytest.skip("no .venv in the checkout (make venv)")
    return khost.run_guest(
        "nvme-rdma-host.sh",
        env={
            "GUEST_RDMA": "1",
            "GUEST_LOGLEVEL": "4",
            "BF_REPO": str(khost.REPO),
            "PORT": "4420",
            "MODE": mode,
            "GUEST_TIMEOUT": str(GUEST_TIMEOUT),
            **extra,
        },
        timeout=GUEST_TIMEOUT,
    )


def _clean(run: Any, name: str) -> None:
    why = run.explain()
    f = run.facts
    assert f.get(f"{name}_rc") == "0", f"{name}: perf rc {f.get(f'{name}_rc')}\n{why}"
    assert int(f.get(f"{name}_iops") or 0) > 0, f"{name}: no IOPS\n{why}"
    assert f.get(f"{name}_errors") == "0", f"{name}: I/O errors\n{why}"


def test_blockfabric_rdma_host_against_blockfabric_target() -> None:
    run = _run("bf")
    run.require("start", "perf-verify", "perf-verify-64k", "perf-read")
    for name in ("v4k", "v64k"):
        _clean(run, name)
        assert run.facts.get(f"{name}_miscompares") == "0", run.explain()
        assert int(run.facts.get(f"{name}_ios") or 0) > 0, run.explain()
    _clean(run, "r4k")
    assert run.rc == 0, run.explain()


def test_blockfabric_rdma_host_against_kernel_nvmet_rdma() -> None:
    run = _run("kernel")
    run.require("nvmet", "perf-verify", "perf-read", "attach", "bdev-listed", "reexport-verify")
    for name in ("kv4k", "tcpv"):
        _clean(run, name)
        assert run.facts.get(f"{name}_miscompares") == "0", run.explain()
    _clean(run, "kr4k")
    assert run.rc == 0, run.explain()


def test_rdma_host_survives_target_reactor_kill() -> None:
    run = _run("fault")
    run.require("start", "reactor-restarted")
    f = run.facts
    why = run.explain()
    assert "killed_reactor" in f, why
    assert f.get("fault_rc") == "0", f"perf did not finish cleanly\n{why}"
    assert f.get("fault_miscompares") == "0", why
    assert int(f.get("fault_reconnects") or 0) >= 1, f"no reconnect reported\n{why}"
    assert int(f.get("fault_ios") or 0) > 0, why
