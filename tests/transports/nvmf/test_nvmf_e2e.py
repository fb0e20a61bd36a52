"""End to end over a real TCP socket: raw host <-> driver <-> target on a loop thread."""

from __future__ import annotations

import os
import struct

import pytest

from blockfabric.transports.nvmf import discovery, spec
from blockfabric.transports.nvmf import pdu as P


def _io_client(h, addr, cntlid, hdgst=False, ddgst=False, qid=1, sqsize=127):  # type: ignore[no-untyped-def]
    c = h.Client(addr, hdgst=hdgst, ddgst=ddgst)
    c.icreq()
    cqe = c.connect(qid=qid, cntlid=cntlid, sqsize=sqsize)
    assert cqe.status == 0, spec.split_status(cqe.status)
    return c


@pytest.mark.parametrize("digests", [(False, False), (True, True), (True, False), (False, True)])
def test_full_session(h, target, digests) -> None:  # type: ignore[no-untyped-def]
    rpc, addr = target
    hd, dd = digests
    a = h.Client(addr, hdgst=hd, ddgst=dd)
    ic = a.icreq()
    assert ic[0] == 0 and ic[2:4] == (int(hd), int(dd)) and ic[4] == 131072
    cqe = a.connect(kato=30000)
    assert cqe.status == 0
    cntlid = cqe.result & 0xFFFF
    assert 1 <= cntlid <= 0xFFEF
    # admin commands before CC.EN=1 are a command sequence error
    cqe, _ = a.identify(spec.CNS_CTRL)
    assert spec.split_status(cqe.status)[:2] == (0, spec.SC_CMD_SEQ_ERROR)
    cap = a.prop_get(spec.PROP_CAP, size8=True).result
    assert cap & 0xFFFF == 127 and (cap >> 16) & 1 and (cap >> 37) & 1
    assert a.prop_get(spec.PROP_VS).result == 0x10300
    a.enable()
    cqe, idc = a.identify(spec.CNS_CTRL)
    assert cqe.status == 0 and len(idc) == 4096
    assert struct.unpack_from("<H", idc, 78)[0] == cntlid
    assert idc[4:24].rstrip() == b"SPDK001"
    assert idc[768 : 768 + len(h.SUBNQN)] == h.SUBNQN.encode()
    assert idc[77] == 5  # MDTS: 128 KiB / 4 KiB = 2^5
    assert struct.unpack_from("<I", idc, 1792)[0] == (64 + 4096) // 16  # IOCCSZ
    assert idc[111] == 1
    cqe, lst = a.identify(spec.CNS_ACTIVE_NS_LIST)
    assert struct.unpack_from("<2I", lst, 0) == (1, 0)
    cqe, idns = a.identify(spec.CNS_NS, nsid=1)
    assert struct.unpack_from("<Q", idns, 0)[0] == 2048 and idns[130] == 9
    cqe, desc = a.identify(spec.CNS_NS_DESC_LIST, nsid=1)
    assert cqe.status == 0 and desc[0] == spec.NIDT_NGUID and desc[1] == 16
    # unsupported CNS -> Invalid Field
    cqe, _ = a.identify(0x1C)
    assert spec.split_status(cqe.status)[:2] == (0, spec.SC_INVALID_FIELD)
    # number of queues
    cqe, _ = a.cmd(spec.ADMIN_SET_FEATURES, cdws=(spec.FID_NUM_QUEUES, (3 << 16) | 3))
    assert cqe.status == 0 and cqe.result == (126 << 16) | 126

    io = _io_client(h, addr, cntlid, hd, dd)
    small = os.urandom(4096)
    assert io.write(1, 8, small).status == 0  # in capsule
    big = os.urandom(65536)
    assert io.write(1, 100, big, incapsule=False).status == 0  # R2T
    cqe, back = io.read(1, 8, 4096)
    assert cqe.status == 0 and back == small
    cqe, back = io.read(1, 100, 65536)
    assert cqe.status == 0 and back == big
    bdev = rpc.bdevs["Malloc0"]
    assert bytes(bdev.storage[100 * 512 : 100 * 512 + 65536]) == big
    # out of range / wrong namespace
    cqe, _ = io.read(1, 2047, 1024)
    assert spec.split_status(cqe.status)[:2] == (0, spec.SC_LBA_OUT_OF_RANGE)
    cqe, _ = io.read(7, 0, 512)
    assert spec.split_status(cqe.status)[:2] == (0, spec.SC_INVALID_NS)
    # SMART counts this controller's I/O
    cqe, smart = a.get_log(spec.LID_SMART, 512)
    assert cqe.status == 0
    assert int.from_bytes(smart[64:80], "little") >= 2  # host reads
    assert int.from_bytes(smart[80:96], "little") >= 2  # host writes
    assert int.from_bytes(smart[48:64], "little") == 1  # ceil(69632/512/1000)
    ctrls = rpc.rpc("nvmf_subsystem_get_controllers", {"nqn": h.SUBNQN})
    assert ctrls == [
        {
            "cntlid": cntlid,
            "hostnqn": h.HOSTNQN,
            "hostid": "11111111-2222-3333-4444-555555555555",
            "num_io_qpairs": 1,
        }
    ]
    qps = rpc.rpc("nvmf_subsystem_get_qpairs", {"nqn": h.SUBNQN})
    assert [(q["cntlid"], q["qid"]) for q in qps] == [(cntlid, 0), (cntlid, 1)]
    # shutdown notification
    assert a.prop_set(spec.PROP_CC, 1 | (6 << 16) | (4 << 20) | (1 << 14)).status == 0
    assert (a.prop_get(spec.PROP_CSTS).result >> 2) & 3 == 2
    io.close()
    a.close()
    assert h.wait_for(lambda: not rpc.nvmf.ctrlrs)


def test_large_read_splits_and_compare(h, target) -> None:  # type: ignore[no-untyped-def]
    rpc, addr = target
    a = h.Client(addr)
    cntlid = a.admin_setup()
    io = _io_client(h, addr, cntlid)
    data = os.urandom(131072)
    assert io.write(1, 0, data).status == 0
    cqe, back = io.read(1, 0, 131072)
    assert back == data
    # compare: equal, then different
    cqe, _ = io.cmd(spec.IO_COMPARE, nsid=1, cdws=(0, 0, 7), data=data[:4096])
    assert cqe.status == 0
    cqe, _ = io.cmd(spec.IO_COMPARE, nsid=1, cdws=(0, 0, 7), data=bytes(4096))
    assert spec.split_status(cqe.status)[:2] == (2, spec.SC_COMPARE_FAILURE)
    # dataset management deallocate -> unmap
    rng = struct.pack("<IIQ", 0, 8, 16)
    cqe, _ = io.cmd(spec.IO_DSM, nsid=1, cdws=(0, 1 << 2), data=rng)
    assert cqe.status == 0 and (16, 8) in rpc.bdevs["Malloc0"].zeroed
    cqe, _ = io.cmd(spec.IO_WRITE_ZEROES, nsid=1, cdws=(32, 0, 3))
    assert cqe.status == 0 and (32, 4) in rpc.bdevs["Malloc0"].zeroed
    cqe, _ = io.cmd(spec.IO_FLUSH, nsid=1)
    assert cqe.status == 0
    cqe, _ = io.cmd(0x7E, nsid=1)
    assert spec.split_status(cqe.status)[:2] == (0, spec.SC_INVALID_OPCODE)
    # fused compare-and-write
    cur = bytes(rpc.bdevs["Malloc0"].storage[0:512])
    new = os.urandom(512)
    c1 = io.submit(spec.IO_COMPARE, nsid=1, cdws=(0, 0, 0), data=cur, flags=(1 << 6) | 1)
    c2 = io.submit(spec.IO_WRITE, nsid=1, cdws=(0, 0, 0), data=new, flags=(1 << 6) | 2)
    assert io.wait(c1)[0].status == 0 and io.wait(c2)[0].status == 0
    assert bytes(rpc.bdevs["Malloc0"].storage[0:512]) == new
    c1 = io.submit(spec.IO_COMPARE, nsid=1, cdws=(0, 0, 0), data=cur, flags=(1 << 6) | 1)
    c2 = io.submit(spec.IO_WRITE, nsid=1, cdws=(0, 0, 0), data=cur, flags=(1 << 6) | 2)
    assert spec.split_status(io.wait(c1)[0].status)[:2] == (2, spec.SC_COMPARE_FAILURE)
    assert spec.split_status(io.wait(c2)[0].status)[:2] == (0, spec.SC_FUSED_FAIL)
    assert bytes(rpc.bdevs["Malloc0"].storage[0:512]) == new
    io.close()
    a.close()


def test_c2h_success_when_sq_flow_disabled(h, target) -> None:  # type: ignore[no-untyped-def]
    rpc, addr = target
    a = h.Client(addr)
    cntlid = a.admin_setup()
    io = h.Client(addr)
    io.icreq()
    assert io.connect(qid=1, cntlid=cntlid, sqsize=15, cattr=spec.CATTR_DISABLE_SQ_FLOW).status == 0
    io.write(1, 0, b"\x5a" * 4096)
    cid = io.submit(spec.IO_READ, nsid=1, cdws=(0, 0, 7), read_len=4096, incapsule=False)
    pdu = io.recv_pdu()
    assert (
        pdu.type == P.C2H_DATA and pdu.flags & P.FLAG_DATA_SUCCESS and pdu.flags & P.FLAG_DATA_LAST
    )
    assert bytes(pdu.data) == b"\x5a" * 4096  # type: ignore[arg-type]
    # no CapsuleResp follows: the next PDU answers the next command
    cqe, _ = io.cmd(spec.IO_FLUSH, nsid=1)
    assert cqe.status == 0 and cqe.cid != cid
    io.close()
    a.close()


def test_connect_errors(h, target) -> None:  # type: ignore[no-untyped-def]
    rpc, addr = target
    c = h.Client(addr)
    c.icreq()
    cqe = c.connect(subnqn="nqn.2016-06.io.spdk:nope")
    assert spec.split_status(cqe.status)[:2] == (1, spec.SC_CONNECT_INVALID_PARAM)
    assert cqe.result == (1 << 16) | 256
    cqe = c.connect(sqsize=0)
    assert (
        spec.split_status(cqe.status)[:2] == (1, spec.SC_CONNECT_INVALID_PARAM) and cqe.result == 44
    )
    cqe = c.connect(sqsize=128)  # max_aq_depth 128 -> sqsize <= 127
    assert cqe.result == 44
    cqe = c.connect(cntlid=5)
    assert cqe.result == (1 << 16) | 16
    cqe = c.connect(qid=1, cntlid=77)
    assert cqe.result == (1 << 16) | 16
    # host access control
    rpc.rpc("nvmf_subsystem_allow_any_host", {"nqn": h.SUBNQN, "allow_any_host": False})
    cqe = c.connect()
    assert spec.split_status(cqe.status)[:2] == (1, spec.SC_CONNECT_INVALID_HOST)
    assert cqe.result == (1 << 16) | 512
    rpc.rpc("nvmf_subsystem_add_host", {"nqn": h.SUBNQN, "host": h.HOSTNQN})
    cqe = c.connect()
    assert cqe.status == 0
    cntlid = cqe.result
    c.enable()
    # qid beyond max_io_qpairs_per_ctrlr, duplicate qid
    d = h.Client(addr)
    d.icreq()
    assert d.connect(qid=128, cntlid=cntlid).result == 42
    assert d.connect(qid=1, cntlid=cntlid, hostnqn="nqn.2016-06.io.spdk:other").status != 0
    assert d.connect(qid=1, cntlid=cntlid).status == 0
    e = h.Client(addr)
    e.icreq()
    assert e.connect(qid=1, cntlid=cntlid).result == 42
    # removing the host disconnects its controller and queues
    rpc.rpc("nvmf_subsystem_remove_host", {"nqn": h.SUBNQN, "host": h.HOSTNQN})
    assert c.is_closed() and d.is_closed()
    assert h.wait_for(lambda: not rpc.nvmf.ctrlrs)
    for x in (c, d, e):
        x.close()


def test_keep_alive_expiry_frees_cntlid(h) -> None:  # type: ignore[no-untyped-def]
    rpc = h.FakeRpc(nreactors=2)
    rpc.start()
    try:
        key = h.setup_target(rpc, kas=1)  # 100 ms granularity
        host, _, port = key.rpartition(":")
        addr = (host, int(port))
        a = h.Client(addr)
        cntlid = a.admin_setup(kato=300)
        io = _io_client(h, addr, cntlid)
        assert (h.SUBNQN, cntlid) in rpc.nvmf.ctrlrs
        cqe, _ = a.cmd(spec.ADMIN_GET_FEATURES, cdws=(spec.FID_KATO,))
        assert cqe.result == 300
        # keep alives hold it up
        for _ in range(4):
            assert a.cmd(spec.ADMIN_KEEP_ALIVE)[0].status == 0
            import time

            time.sleep(0.1)
        assert (h.SUBNQN, cntlid) in rpc.nvmf.ctrlrs
        # silence: torn down within KATO (+ loop granularity)
        assert a.is_closed(timeout=2.0)
        assert io.is_closed(timeout=2.0)
        assert (h.SUBNQN, cntlid) not in rpc.nvmf.ctrlrs
        a.close()
        io.close()
        # the cntlid is reusable (round robin moves on, but it is free)
        assert rpc.nvmf.alloc_cntlid(h.SUBNQN) is not None
    finally:
        rpc.stop()


def test_discovery_per_host(h) -> None:  # type: ignore[no-untyped-def]
    rpc = h.FakeRpc(nreactors=1)
    rpc.start()
    try:
        key = h.setup_target(rpc)
        host, _, port = key.rpartition(":")
        addr = (host, int(port))
        other = "nqn.2016-06.io.spdk:cnode2"
        rpc.rpc("nvmf_create_subsystem", {"nqn": other})
        rpc.rpc(
            "nvmf_subsystem_add_listener",
            {
                "nqn": other,
                "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": port},
            },
        )
        c = h.Client(addr)
        c.icreq()
        cqe = c.connect(subnqn=spec.NVME_DISC_SUBSYS_NAME, kato=0)
        assert cqe.status == 0
        c.enable()
        cqe, idc = c.identify(spec.CNS_CTRL)
        assert idc[111] == 2  # discovery controller
        cqe, _ = c.identify(spec.CNS_NS, nsid=1)
        assert spec.split_status(cqe.status)[:2] == (0, spec.SC_INVALID_FIELD)
        cqe, _ = c.cmd(spec.IO_READ)  # opcode 02 == Get Log Page on admin; use Abort
        cqe, _ = c.cmd(spec.ADMIN_ABORT)
        assert spec.split_status(cqe.status)[:2] == (0, spec.SC_INVALID_OPCODE)
        cqe, hdr = c.get_log(spec.LID_DISCOVERY, 1024)
        genctr, numrec = struct.unpack_from("<QQ", hdr, 0)
        assert numrec == 2  # current discovery subsystem + cnode1 (cnode2 denies this host)
        cqe, page = c.get_log(spec.LID_DISCOVERY, 1024 * (1 + numrec))
        log = discovery.parse_log_page(page)
        subs = [(e["subtype"], e["subnqn"], e["traddr"], e["trsvcid"]) for e in log["entries"]]
        assert subs == [
            (3, spec.NVME_DISC_SUBSYS_NAME, "127.0.0.1", port),
            (2, h.SUBNQN, "127.0.0.1", port),
        ]
        assert all(
            e["trtype"] == 3 and e["cntlid"] == 0xFFFF and e["adrfam"] == 1 for e in log["entries"]
        )
        # offset read of the second entry only
        cqe, ent = c.get_log(spec.LID_DISCOVERY, 1024, offset=2048)
        assert ent == page[2048:3072]
        # allowing the host changes the page and genctr; AEN when enabled
        cqe, _ = c.cmd(spec.ADMIN_SET_FEATURES, cdws=(spec.FID_ASYNC_EVENT_CONFIG, 1 << 31))
        assert cqe.status == 0
        aer = c.submit(spec.ADMIN_ASYNC_EVENT)
        rpc.rpc("nvmf_subsystem_add_host", {"nqn": other, "host": h.HOSTNQN})
        cqe, _ = c.wait(aer)
        assert cqe.status == 0 and cqe.result == (0x70 << 16) | (0xF0 << 8) | 2
        cqe, hdr = c.get_log(spec.LID_DISCOVERY, 1024)
        assert struct.unpack_from("<QQ", hdr, 0)[1] == 3
        assert struct.unpack_from("<Q", hdr, 0)[0] > genctr
        c.close()
    finally:
        rpc.stop()


def test_aen_on_namespace_add(h, target) -> None:  # type: ignore[no-untyped-def]
    rpc, addr = target
    a = h.Client(addr)
    a.admin_setup()
    cqe, _ = a.cmd(spec.ADMIN_SET_FEATURES, cdws=(spec.FID_ASYNC_EVENT_CONFIG, 1 << 8))
    assert cqe.status == 0
    aers = [a.submit(spec.ADMIN_ASYNC_EVENT) for _ in range(4)]
    cqe, _ = a.cmd(spec.ADMIN_ASYNC_EVENT)
    assert spec.split_status(cqe.status)[:2] == (1, spec.SC_ASYNC_LIMIT)
    rpc.bdevs["Malloc1"] = h.MemBdev("Malloc1", 1024)
    assert (
        rpc.rpc(
            "nvmf_subsystem_add_ns",
            {"nqn": h.SUBNQN, "namespace": {"bdev_name": "Malloc1", "nsid": 5}},
        )
        == 5
    )
    cqe, _ = a.wait(aers[0])
    assert cqe.result == (0x04 << 16) | 2
    cqe, page = a.get_log(spec.LID_CHANGED_NS, 4096)
    assert struct.unpack_from("<2I", page, 0) == (5, 0)
    cqe, page = a.get_log(spec.LID_CHANGED_NS, 4096)
    assert struct.unpack_from("<I", page, 0)[0] == 0  # cleared by the read
    cqe, lst = a.identify(spec.CNS_ACTIVE_NS_LIST)
    assert struct.unpack_from("<3I", lst, 0) == (1, 5, 0)
    rpc.rpc("nvmf_subsystem_remove_ns", {"nqn": h.SUBNQN, "nsid": 5})
    cqe, _ = a.wait(aers[1])
    assert cqe.result == (0x04 << 16) | 2
    a.close()


def test_queue_depth_overflow(h, target) -> None:  # type: ignore[no-untyped-def]
    rpc, addr = target
    a = h.Client(addr)
    cntlid = a.admin_setup()
    io = h.Client(addr)
    io.icreq()
    assert io.connect(qid=1, cntlid=cntlid, sqsize=3).status == 0  # 4 entries
    # 4 writes waiting for R2T data stay outstanding; the 5th overflows
    for i in range(5):
        io.submit(spec.IO_WRITE, nsid=1, cdws=(i * 8, 0, 7), data=bytes(4096), incapsule=False)
    with pytest.raises(h.TermReq) as ei:
        while True:
            io.recv_pdu()
    assert ei.value.fes == P.FES_PDU_SEQUENCE_ERROR
    assert io.is_closed()
    io.close()
    # the association itself survives: a new I/O queue works
    io2 = _io_client(h, addr, cntlid, qid=2)
    assert io2.write(1, 0, bytes(512)).status == 0
    io2.close()
    a.close()


_KA = spec.pack_sqe(spec.ADMIN_KEEP_ALIVE, 1)


@pytest.mark.parametrize(
    ("after_ic", "raw", "fes", "fei", "hd"),
    [
        (False, b"".join(P.encode_capsule_cmd(_KA)), P.FES_PDU_SEQUENCE_ERROR, 0, False),
        (True, P.CH.pack(0x0B, 0, 24, 0, 24) + bytes(16), P.FES_INVALID_HEADER_FIELD, 0, False),
        (True, P.CH.pack(P.CAPSULE_CMD, 0, 72, 0, 64) + _KA, P.FES_INVALID_HEADER_FIELD, 4, False),
        (True, P.encode_icreq(), P.FES_PDU_SEQUENCE_ERROR, 0, False),
        (
            True,
            P.CH.pack(P.CAPSULE_CMD, P.FLAG_HDGSTF, 72, 0, 76) + _KA + b"\0\0\0\0",
            P.FES_HDGST_ERROR,
            72,
            True,
        ),
        (
            True,
            P.DATA_HDR.pack(P.H2C_DATA, 0, 24, 24, 28, 1, 5, 0, 4) + b"abcd",
            P.FES_INVALID_HEADER_FIELD,
            10,
            False,
        ),
        (
            True,
            P.CH.pack(P.CAPSULE_CMD, 0, 72, 72, 72 + 9000) + _KA + bytes(9000),
            P.FES_DATA_LIMIT_EXCEEDED,
            4,
            False,
        ),
    ],
)
def test_malformed_pdu_gets_termreq_and_close(h, target, after_ic, raw, fes, fei, hd) -> None:  # type: ignore[no-untyped-def]
    rpc, addr = target
    c = h.Client(addr, hdgst=hd)
    if after_ic:
        c.icreq()
    c.send(raw)
    with pytest.raises(h.TermReq) as ei:
        c.recv_pdu()
    assert (ei.value.fes, ei.value.fei) == (fes, fei)
    assert c.is_closed()
    c.close()
    # the target keeps serving
    d = h.Client(addr)
    d.admin_setup()
    d.close()
