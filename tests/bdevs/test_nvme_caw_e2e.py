"""nvme bdev against a real blockfabric target: FUA writes, flush, and
compare-and-write as a fused Compare + Write pair the remote runs atomically."""

from __future__ import annotations

import os
import socket
import time

import pytest

from blockfabric.actors.loop import EventLoop
from blockfabric.bdevs.base import IoStatus
from blockfabric.bdevs.nvme import NvmeBdev
from blockfabric.transports.nvmf_host.controller import Controller

pytestmark = pytest.mark.e2e
NQN = "nqn.2016-06.io.blockfabric:nvmecaw"
BS = 512


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nvme_bdev_fused_compare_and_write_fua_flush(daemon_factory) -> None:
    d = daemon_factory().start()
    d.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 1024, "block_size": BS})
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "M0"}})
    port = _free_port()
    d.rpc(
        "nvmf_subsystem_add_listener",
        {
            "nqn": NQN,
            "listen_address": {
                "trtype": "tcp",
                "adrfam": "ipv4",
                "traddr": "127.0.0.1",
                "trsvcid": str(port),
            },
        },
    )
    c = Controller("127.0.0.1", port, NQN, nr_io_queues=1)
    c.connect()  # admin queue + I/O queue 1 (the host's own)
    loop = EventLoop("blocking")
    core = min(os.sched_getaffinity(0))
    b = NvmeBdev(
        name="R0n1",
        block_size=BS,
        num_blocks=1024,
        nsid=1,
        ctrlr={
            "state": "enabled",
            "traddr": "127.0.0.1",
            "trsvcid": port,
            "subnqn": NQN,
            "hostnqn": c.hostnqn,
            "hostid": c.hostid.hex(),
            "cntlid": c.cntlid,
            # our qid: 1 + ns_index * len(cores) + 0 = 2 (the host library has qid 1)
            "cores": [core],
            "ns_index": 1,
            "qsize": 32,
            "icd_max": c.icd_max,
        },
    )
    ch = b.open_channel(loop)
    assert ch._qid() == 2

    def run(pred, t=10.0):
        end = time.monotonic() + t
        while not pred() and time.monotonic() < end:
            loop.run_once(0.01)
        assert pred()

    try:
        run(lambda: ch.lq is not None and ch.lq.ready)
        out: list = []
        a, bb, cc = b"A" * BS, b"B" * BS, b"C" * BS
        ch.write(5, memoryview(a), out.append, fua=True)
        run(lambda: len(out) == 1)
        ch.flush(out.append)
        run(lambda: len(out) == 2)
        assert out == [IoStatus.SUCCESS, IoStatus.SUCCESS]
        res: list = []
        ch.compare_and_write(5, memoryview(a), memoryview(bb), lambda s, x: res.append((s, x)))
        run(lambda: len(res) == 1)
        assert res[0] == (IoStatus.SUCCESS, -1)
        probe = bytearray(bb)
        probe[33] = 0
        ch.compare_and_write(
            5, memoryview(bytes(probe)), memoryview(cc), lambda s, x: res.append((s, x))
        )
        run(lambda: len(res) == 2)
        assert res[1] == (IoStatus.MISCOMPARE, 33)
        assert c.read(1, 5, 1, BS) == bb  # the remote medium: the miscompare wrote nothing
    finally:
        ch.close()
        loop.close()
        c.close()
