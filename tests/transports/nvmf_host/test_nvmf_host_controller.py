"""Blocking Controller and LoopQueue against a small scripted target over real TCP sockets."""

from __future__ import annotations

import os

import pytest
from nvmf_fake_target import SUBNQN, FakeTarget

from blockfabric.actors.loop import EventLoop
from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host.controller import Controller, LoopQueue, parse_discovery_log
from blockfabric.transports.nvmf_host.queue import NvmeStatusError, TransportError


@pytest.fixture
def target():
    t = FakeTarget()
    yield t
    t.close()


@pytest.mark.parametrize("hdgst,ddgst", [(False, False), (True, True)])
def test_connect_identify_io(target: FakeTarget, hdgst: bool, ddgst: bool) -> None:
    with Controller(
        "127.0.0.1", target.port, SUBNQN, hdgst=hdgst, ddgst=ddgst, nr_io_queues=2, kato_ms=400
    ) as c:
        c.connect()
        assert c.cntlid == 1 and c.id_ctrl is not None and c.id_ctrl.sn == "FAKE0001"
        assert c.icd_max == 8192 and len(c.io) == 2
        assert c.active_namespaces() == [1]
        ns = c.identify_namespace(1)
        assert (ns.nsze, ns.block_size) == (2048, 512)
        big = os.urandom(64 * 512)  # 32 KiB: R2T path, split by MAXH2CDATA 16 KiB
        c.write(1, 100, big, 512)
        small = os.urandom(4096)  # in-capsule
        c.write(1, 10, small, 512, q=1)
        assert c.read(1, 100, 64, 512) == big
        assert c.read(1, 10, 8, 512, q=1) == small
        c.write_zeroes(1, 10, 8)
        assert c.read(1, 10, 8, 512) == bytes(4096)
        c.deallocate(1, [(100, 1)])
        assert c.read(1, 100, 1, 512) == bytes(512)
        c.flush(1)
        assert c.get_features(S.FID_KATO) == 0x1234
        with pytest.raises(NvmeStatusError, match="LBA Out of Range"):
            c.read(1, 2047, 2, 512)
        import time

        time.sleep(0.5)  # the keep-alive thread runs every KATO/2
        assert target.commands.count(S.ADMIN_KEEP_ALIVE) >= 1
        assert c.last_error == ""


def test_discovery_log(target: FakeTarget) -> None:
    with Controller("127.0.0.1", target.port, S.NVME_DISC_SUBSYS_NAME) as c:
        c.connect()
        gen, entries = c.discovery_log()
        assert gen == 5 and len(entries) == 1
        e = entries[0]
        assert (e.trtype, e.traddr, e.trsvcid, e.subnqn) == (
            S.TRTYPE_TCP,
            "127.0.0.1",
            "4420",
            SUBNQN,
        )
    with pytest.raises(ValueError):
        parse_discovery_log(b"\0" * 100)


def test_connect_rejected_subnqn(target: FakeTarget) -> None:
    c = Controller("127.0.0.1", target.port, "nqn.2016-06.io.nope:x")
    with pytest.raises(NvmeStatusError, match="Connect Invalid Parameters"):
        c.connect()
    assert c.admin is None


def test_target_gone_is_transport_error(target: FakeTarget) -> None:
    c = Controller("127.0.0.1", target.port, SUBNQN, timeout=2).connect()
    target.close()
    with pytest.raises(TransportError):
        c.read(1, 0, 1, 512)
    c.close(shutdown=False)


def test_loop_queue_io_and_failure(target: FakeTarget) -> None:
    c = Controller("127.0.0.1", target.port, SUBNQN, nr_io_queues=0).connect()
    loop = EventLoop("busy")
    events: list[str] = []
    lq = LoopQueue(
        loop,
        "127.0.0.1",
        target.port,
        SUBNQN,
        c.hostnqn,
        c.hostid,
        c.cntlid,
        1,
        17,
        True,
        True,
        c.icd_max,
        on_ready=lambda: (events.append("ready"), loop.stop()),
        on_fail=lambda why: (events.append("fail:" + why), loop.stop()),
    )
    loop.run()
    assert events == ["ready"]
    bufs = [memoryview(bytearray(4096)) for _ in range(8)]
    done: list[int] = []

    def cb(_r, status, _res):
        done.append(status)
        if len(done) == 16:
            loop.stop()

    for i in range(8):
        lq.q.write(1, i * 8, 8, memoryview(bytes([i]) * 4096), cb)
    lq.kick()
    for i in range(8):
        lq.q.read(1, i * 8, 8, bufs[i], cb)
    lq.kick()
    loop.run()
    assert done == [0] * 16
    assert [bytes(b[:1]) for b in bufs] == [bytes([i]) for i in range(8)]
    # target goes away: outstanding I/O fails with Host Pathing Error, on_fail runs
    lq.q.read(1, 0, 8, bufs[0], cb)
    lq.kick()
    target.close()
    loop.run()
    assert done[-1] == S.status_field(3, 0x70)
    assert events[-1].startswith("fail:")
    lq.close()
    loop.close()
    c.close(shutdown=False)
