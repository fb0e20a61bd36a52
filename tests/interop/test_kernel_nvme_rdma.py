"""NVMe/RDMA against the Linux kernel in QEMU with Soft-RoCE (issue 10 item 5).

One guest boot (GUEST_RDMA=1: the host's userland chrooted on the guest
kernel, rxe0 on 10.0.2.15): blockfabric runs inside the guest from this
checkout and its .venv with 2 reactors and an NVMe/RDMA listener on
10.0.2.15; the kernel's nvme-rdma host discovers it (TRTYPE rdma + RDMA
TSAS), connects with 2 I/O queues, writes/reads/compares a pattern (1 MiB
blocks and 4 KiB blocks), sees a namespace hot-added while connected and does
I/O on it, disconnects, and the target's queue pairs are gone.

blockfabric's own RDMA host (perf, bdev_nvme -t rdma) against the kernel
nvmet-rdma target and against blockfabric: test_nvme_rdma_host.py.
"""

from __future__ import annotations

import os

import khost
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]

CHECKS = [
    "start", "listen", "discover", "connect", "pattern", "pattern-4k", "hot-add",
    "pattern-ns2", "disconnect", "qpairs-gone",
]  # fmt: skip


def test_kernel_nvme_rdma_host_against_blockfabric_target() -> None:
    khost.require_harness()
    venv = khost.REPO / ".venv" / "bin" / "python"
    if not venv.exists():
        pytest.skip("no .venv in the checkout (make venv)")
    run = khost.run_guest(
        "nvme-rdma-target.sh",
        env={
            "GUEST_RDMA": "1",
            "GUEST_LOGLEVEL": "4",
            "BF_REPO": str(khost.REPO),
            "PORT": "4420",
            "IO_MB": "8",
            "GUEST_TIMEOUT": os.environ.get("BF_RDMA_GUEST_TIMEOUT", "600"),
        },
        timeout=int(os.environ.get("BF_RDMA_GUEST_TIMEOUT", "600")),
    )
    run.require(*CHECKS)
    why = run.explain()
    assert run.facts.get("qpairs") == "3", f"admin + 2 I/O queues expected\n{why}"
    assert run.rc == 0, why
