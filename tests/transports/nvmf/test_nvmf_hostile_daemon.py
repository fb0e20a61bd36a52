"""Hostile hosts against a REAL daemon (issue 8): the Get Log Page / Identify
memory bombs, idle and half-open connections, a host that gets an R2T and
never sends the data, the per-reactor connection cap. In each, a well-behaved
host connected at the same time keeps completing I/O and the reactor's RSS
stays under a printed bound."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import psutil
import pytest

from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec
from blockfabric.transports.nvmf.nqn import DISCOVERY_NQN

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NQN = "nqn.2016-06.io.blockfabric:hostile"
GOOD = "nqn.2014-08.org.nvmexpress:uuid:33333333-0000-0000-0000-00000000000a"
BAD = "nqn.2014-08.org.nvmexpress:uuid:33333333-0000-0000-0000-00000000000b"
RSS_GROWTH_BOUND = 48 << 20  # what the attacks below may add to a reactor's RSS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _daemon(daemon_factory: Any, mask: str = "0x1", **topts: Any) -> tuple[Any, tuple[str, int]]:
    port = _free_port()
    d = daemon_factory(mask=mask).start()
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 8192, "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "TCP", **topts})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True, "serial_number": "BFH1"})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
    addr = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": addr})
    return d, ("127.0.0.1", port)


class Good:
    """A well-behaved host: admin + one I/O queue, verified 4 KiB writes/reads."""

    def __init__(self, h: Any, addr: tuple[str, int], hostnqn: str = GOOD) -> None:
        self.admin = h.Client(addr)
        self.cntlid = self.admin.admin_setup(subnqn=NQN, hostnqn=hostnqn)
        self.io = h.Client(addr)
        self.io.icreq()
        cqe = self.io.connect(subnqn=NQN, hostnqn=hostnqn, qid=1, cntlid=self.cntlid)
        assert cqe.status == 0, spec.split_status(cqe.status)
        self.n = 0

    def check(self) -> None:
        data = os.urandom(4096)
        lba = 8 * (self.n % 512)
        self.n += 1
        assert self.io.write(1, lba, data).status == 0
        cqe, back = self.io.read(1, lba, 4096)
        assert cqe.status == 0 and back == data, "the well-behaved host's I/O broke"

    def close(self) -> None:
        self.io.close()
        self.admin.close()


def _reactor_rss(d: Any) -> dict[int, int]:
    st = d.rpc("blockfabric_get_status")
    return {r["pid"]: psutil.Process(r["pid"]).memory_info().rss for r in st["reactors"]}


def _stats(d: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for g in d.rpc("nvmf_get_stats")["poll_groups"]:
        for k, v in g.items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    return total


def _pool_in_use(d: Any) -> int:
    """Buffers the reactors hold from the shared pool."""
    return sum(int(r["in_use"]) for r in d.rpc("iobuf_get_stats"))


def _pool_drained(d: Any) -> None:
    end = time.monotonic() + 5
    n = _pool_in_use(d)
    while n and time.monotonic() < end:
        time.sleep(0.05)
        n = _pool_in_use(d)
    assert not n, f"{n} pool buffers still held after the attackers left"


def _status(cqe: Any) -> tuple[int, int]:
    sct, sc = spec.split_status(cqe.status)[:2]
    return sct, sc


def test_log_page_and_identify_bombs(h: Any, daemon_factory: Any) -> None:
    d, addr = _daemon(daemon_factory)
    good = Good(h, addr)
    good.check()
    rss0 = _reactor_rss(d)
    attackers = []
    for _ in range(2):
        disc = h.Client(addr)
        disc.admin_setup(subnqn=DISCOVERY_NQN, hostnqn=BAD)
        nvm = h.Client(addr)
        nvm.admin_setup(subnqn=NQN, hostnqn=BAD)
        attackers += [disc, nvm]
    numd = 0xFFFFFFFF  # NUMD 0's based: 16 GiB
    for _round in range(20):
        for c in attackers:
            for sgl in (4096, 131072):
                cqe, data = c.cmd(
                    spec.ADMIN_GET_LOG_PAGE,
                    nsid=0xFFFFFFFF,
                    cdws=(spec.LID_DISCOVERY | ((numd & 0xFFFF) << 16), numd >> 16, 0, 0),
                    read_len=sgl,
                )
                assert _status(cqe) == (0, spec.SC_DATA_SGL_LENGTH_INVALID) and not data
            # Identify with a transfer length far above MDTS, and with MDTS itself
            cqe, data = c.cmd(spec.ADMIN_IDENTIFY, cdws=(spec.CNS_CTRL,), read_len=0xFFFFFFFF)
            assert _status(cqe) == (0, spec.SC_DATA_SGL_LENGTH_INVALID) and not data
            cqe, data = c.cmd(spec.ADMIN_IDENTIFY, cdws=(spec.CNS_CTRL,), read_len=131072)
            assert cqe.status == 0 and len(data) == 4096
        good.check()
    rss1 = _reactor_rss(d)
    growth = max(rss1[p] - rss0.get(p, rss1[p]) for p in rss1)
    print(
        f"Get Log Page NUMD=0xFFFFFFFF x {20 * 2 * len(attackers)} + Identify x "
        f"{20 * 2 * len(attackers)}: reactor RSS {max(rss0.values()) >> 20} -> "
        f"{max(rss1.values()) >> 20} MiB (growth {growth >> 10} KiB, bound "
        f"{RSS_GROWTH_BOUND >> 20} MiB)"
    )
    assert growth < RSS_GROWTH_BOUND
    for c in attackers:
        c.close()
    good.check()
    good.close()
    _pool_drained(d)
    assert "Traceback" not in d.log()


def test_host_that_never_reads_responses(h: Any, daemon_factory: Any) -> None:
    """Backpressure: a host floods 128 KiB Get Log Page commands and never reads;
    the reactor stops reading it once max_unsent_bytes are queued, so its RSS
    stays bounded, while another host keeps doing I/O; nothing is lost."""
    d, addr = _daemon(daemon_factory, max_unsent_bytes=1 << 20)
    good = Good(h, addr)
    good.check()
    rss0 = _reactor_rss(d)
    flood = h.Client(addr)
    flood.admin_setup(subnqn=NQN, hostnqn=BAD)
    n, size = 800, 131072
    numd = size // 4 - 1
    cdw10 = spec.LID_ERROR | ((numd & 0xFFFF) << 16)
    cids = [
        flood.submit(
            spec.ADMIN_GET_LOG_PAGE, nsid=0xFFFFFFFF, cdws=(cdw10, numd >> 16), read_len=size
        )
        for _ in range(n)
    ]  # 100 MiB of responses asked for
    for _ in range(20):
        good.check()
    time.sleep(0.5)
    rss1 = _reactor_rss(d)
    growth = max(rss1[p] - rss0.get(p, rss1[p]) for p in rss1)
    print(
        f"{n} x 128 KiB Get Log Page never read ({n * size >> 20} MiB asked): reactor RSS "
        f"growth {growth >> 10} KiB (bound {RSS_GROWTH_BOUND >> 20} MiB)"
    )
    assert growth < RSS_GROWTH_BOUND
    # the host finally reads: every command is answered, in full
    for cid in cids:
        cqe, data = flood.wait(cid)
        assert cqe.status == 0 and len(data) == size
    flood.close()
    good.check()
    good.close()
    _pool_drained(d)


def test_idle_and_half_open_connections_closed(h: Any, daemon_factory: Any) -> None:
    d, addr = _daemon(daemon_factory, connect_timeout_ms=500)
    good = Good(h, addr)
    idle = [socket.create_connection(addr, timeout=5) for _ in range(20)]
    half = h.Client(addr)
    half.icreq()  # ICReq, never a Connect
    t0 = time.monotonic()
    for s in idle:
        s.settimeout(5)
        assert s.recv(1) == b"", "an idle connection was not closed"
        s.close()
    assert half.is_closed(timeout=5)
    took = time.monotonic() - t0
    half.close()
    print(f"21 connections without ICReq/Connect closed {took:.2f} s after they opened")
    assert 0.3 < took < 4.0
    # the connected host was not touched (it is older than the timeout)
    good.check()
    assert _stats(d)["connect_timeouts"] >= 21
    good.close()


def test_r2t_never_answered(h: Any, daemon_factory: Any) -> None:
    d, addr = _daemon(daemon_factory, mask="0x3", h2c_data_timeout_ms=500)
    good = Good(h, addr)
    bad_admin = h.Client(addr)
    cntlid = bad_admin.admin_setup(subnqn=NQN, hostnqn=BAD)
    bad = h.Client(addr)
    bad.icreq()
    assert bad.connect(subnqn=NQN, hostnqn=BAD, qid=1, cntlid=cntlid).status == 0
    # a 64 KiB write: the target answers with an R2T, we never send the data
    cid = bad.submit(spec.IO_WRITE, nsid=1, cdws=(0, 0, 127), data=bytes(65536), incapsule=False)
    t0 = time.monotonic()
    r2t = bad.recv_pdu()

    assert r2t.type == P.R2T
    while time.monotonic() - t0 < 0.3:
        good.check()  # the other host keeps doing I/O meanwhile
    resp = bad.recv_pdu()
    assert resp.type == P.CAPSULE_RESP
    cqe = spec.unpack_cqe(resp.hdr, 8)
    assert cqe.cid == cid and _status(cqe) == (0, spec.SC_TRANSIENT_TRANSPORT_ERROR)
    assert bad.is_closed(timeout=3)
    took = time.monotonic() - t0
    print(f"R2T never answered: command failed and connection closed after {took:.2f} s")
    bad.close()
    bad_admin.close()
    for _ in range(20):
        good.check()
    assert _stats(d)["h2c_timeouts"] == 1
    good.close()
    _pool_drained(d)
    assert "Traceback" not in d.log()


def test_connection_cap_per_reactor(h: Any, daemon_factory: Any) -> None:
    d, addr = _daemon(daemon_factory, max_connections_per_reactor=3)
    good = Good(h, addr)  # two connections
    third = socket.create_connection(addr, timeout=5)
    time.sleep(0.2)
    refused = socket.create_connection(addr, timeout=5)
    refused.settimeout(5)
    try:
        assert refused.recv(1) == b""
    except ConnectionResetError:
        pass
    refused.close()
    good.check()
    assert _stats(d)["refused_connections"] == 1
    assert "max_connections_per_reactor" in d.log()
    third.close()
    good.close()


def test_aio_bdev_data_path_uses_the_pool(h: Any, daemon_factory: Any, tmp_path: Any) -> None:
    """An aio (copying) bdev over NVMe/TCP: reads land in pool buffers
    (read(into=)), R2T and in-capsule writes come from the pool, FUA and
    write-through writes complete; every buffer is back at the end."""
    port = _free_port()
    d = daemon_factory(mask="0x1").start()
    f = tmp_path / "aio.img"
    f.write_bytes(bytes(4 << 20))
    d.rpc("bdev_aio_create", {"filename": str(f), "name": "Aio0", "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Aio0"}})
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": la})
    good = Good(h, ("127.0.0.1", port))
    before = sum(int(r["acquires"]) for r in d.rpc("iobuf_get_stats"))
    for i in range(8):
        good.check()  # 4 KiB in-capsule write + read
        data = os.urandom(65536)
        assert good.io.write(1, 2048 + 128 * i, data, incapsule=False).status == 0  # R2T
        cqe, back = good.io.read(1, 2048 + 128 * i, 65536)
        assert cqe.status == 0 and back == data
    # FUA write, then VWC = 0 (write-through) and back
    fua = good.io.cmd(spec.IO_WRITE, nsid=1, cdws=(0, 0, 7 | (1 << 30)), data=b"\x5a" * 4096)[0]
    assert fua.status == 0
    for vwc in (0, 1):
        cqe, _ = good.admin.cmd(spec.ADMIN_SET_FEATURES, cdws=(spec.FID_VOLATILE_WC, vwc))
        assert cqe.status == 0
        assert (
            good.admin.cmd(spec.ADMIN_GET_FEATURES, cdws=(spec.FID_VOLATILE_WC,))[0].result == vwc
        )
        good.check()
    assert good.io.cmd(spec.IO_FLUSH, nsid=1)[0].status == 0
    after = sum(int(r["acquires"]) for r in d.rpc("iobuf_get_stats"))
    # every one of the 8 x (write + read + R2T write + read) plus the rest used the pool
    print(f"aio over NVMe/TCP: {after - before} pool acquisitions for 34 data commands")
    assert after - before >= 32, (before, after)
    assert f.read_bytes()[:4096] == b"\x5a" * 4096  # the FUA write is on the file
    good.close()
    _pool_drained(d)
    assert "Traceback" not in d.log()


def test_vwc_fua_flush_survive_power_fail(h: Any, daemon_factory: Any) -> None:
    """Issue 9 on the NVMe side, through a volatile write cache bdev in a
    2-reactor daemon: a plain write is lost at power-fail (so the test can
    fail), a FUA write, a flushed write and every write while VWC = 0 (set on
    the admin queue, honoured by the I/O queue on the other reactor) survive."""
    port = _free_port()
    d = daemon_factory(mask="0x3").start()
    d.rpc("bdev_malloc_create", {"name": "Base0", "num_blocks": 8192, "block_size": 512})
    d.rpc("bdev_wcache_create", {"base_bdev_name": "Base0", "name": "WC0"})
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "WC0"}})
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": la})
    good = Good(h, ("127.0.0.1", port))
    threads = {q["qid"]: q["thread"] for q in d.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})}
    assert threads[0] != threads[1], f"admin and I/O queue on one reactor: {threads}"
    io, admin = good.io, good.admin

    def write(lba: int, fill: int, fua: bool = False) -> bytes:
        data = bytes([fill]) * 4096
        cdw12 = 7 | ((1 << 30) if fua else 0)
        assert io.cmd(spec.IO_WRITE, nsid=1, cdws=(lba, 0, cdw12), data=data)[0].status == 0
        return data

    def survives(lba: int, data: bytes) -> bool:
        cqe, back = io.read(1, lba, 4096)
        assert cqe.status == 0
        return back == data

    flushed = write(16, 0x33)
    assert io.cmd(spec.IO_FLUSH, nsid=1)[0].status == 0
    fua = write(8, 0x22, fua=True)
    plain = write(0, 0x11)  # after the flush and the FUA write: volatile
    d.rpc("bdev_wcache_power_fail", {"name": "WC0"})
    assert not survives(0, plain), "a plain write survived: the cache model is not volatile"
    assert survives(8, fua), "FUA write lost"
    assert survives(16, flushed), "flushed write lost"
    assert admin.cmd(spec.ADMIN_SET_FEATURES, cdws=(spec.FID_VOLATILE_WC, 0))[0].status == 0
    wt = [write(32 + 8 * i, 0x50 + i) for i in range(4)]  # no FUA, no flush
    d.rpc("bdev_wcache_power_fail", {"name": "WC0"})
    assert all(survives(32 + 8 * i, w) for i, w in enumerate(wt)), "VWC = 0 write lost"
    assert admin.cmd(spec.ADMIN_SET_FEATURES, cdws=(spec.FID_VOLATILE_WC, 1))[0].status == 0
    again = write(64, 0x66)
    d.rpc("bdev_wcache_power_fail", {"name": "WC0"})
    assert not survives(64, again), "VWC back to 1 but writes still durable at once"
    good.close()
