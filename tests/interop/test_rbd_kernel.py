"""The Linux 6.1 NVMe/TCP host (QEMU guest, guest/nvme-interop.sh) on an
RBD-backed namespace: discover, connect, O_DIRECT pattern write + verify at
128 KiB and 4 KiB, disconnect; afterwards the data the guest wrote is in Ceph
(read straight from the image) and a fresh blockfabric read agrees."""

from __future__ import annotations

import time
from typing import Any

import khost
import pytest
from bfsetup import bf_nvmf_subsystem, daemon_clean
from ceph_fixtures import ceph  # noqa: F401

from blockfabric.transports.nvmf_host.controller import Controller

pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]

NQN = "nqn.2016-06.io.blockfabric:rbd-kernel"
IMAGE_MB = 64


def test_kernel_nvme_tcp_on_rbd(daemon_factory: Any, ceph: Any, tmp_path: Any) -> None:  # noqa: F811
    khost.require_harness()
    image = ceph.new_image(IMAGE_MB, prefix="kh")
    port = khost.free_port()
    d = daemon_factory(mask="0x3").start()
    d.rpc("bdev_rbd_register_cluster", ceph.cluster_params("ceph"))
    d.rpc(
        "bdev_rbd_create",
        {
            "name": "Rbd0",
            "pool_name": "rbd",
            "rbd_name": image,
            "block_size": 512,
            "cluster_name": "ceph",
        },
    )
    bf_nvmf_subsystem(d, port, NQN, "Rbd0", "BFRBD1")
    run = khost.run_guest(
        "nvme-interop.sh",
        {
            "PORT": port,
            "NQN": NQN,
            "IO_MB": 16,
            # TCG is slow and every 4 KiB is a librbd round trip: 16 MiB at 128 KiB, 4 MiB at 4 KiB
            "BLOCK_SIZES": "128k 4k:4",
            "DO_AEN": 0,
        },
        timeout=600,
        log_path=tmp_path / "guest.log",
    )
    print(run.summary())
    end = time.monotonic() + 15
    while d.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN}) and time.monotonic() < end:
        time.sleep(0.5)
    daemon_clean(d)
    run.require("discover", "connect", "pattern_128k", "pattern_4k", "disconnect")
    f = run.facts
    assert f.get("ns1_bytes") == str(IMAGE_MB << 20), run.explain()
    assert run.rc == 0, run.explain()
    # what the guest wrote is in Ceph, and blockfabric reads the same
    head = ceph.read_image(image, 0, 1 << 20)
    assert head != bytes(len(head)), "the guest's pattern did not reach the image"
    c = Controller("127.0.0.1", port, NQN)
    c.connect()
    try:
        step = 256  # 128 KiB: within MDTS
        got = b"".join(c.read(1, lba, step, 512) for lba in range(0, (1 << 20) // 512, step))
        assert got == head
    finally:
        c.close()
