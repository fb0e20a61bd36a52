"""The sans-I/O queue pair state machine driven by scripted bytes (no sockets)."""

from __future__ import annotations

import struct

import pytest

from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec
from blockfabric.transports.nvmf.driver import DRIVER
from blockfabric.transports.nvmf.tcp import TcpQpair


def _j(bufs) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join(bytes(b) for b in bufs)


class Host:
    """Scripted host: feeds bytes to a TcpQpair, decodes what comes back."""

    def __init__(self, h, rpc, key, hd=False, dd=False) -> None:  # type: ignore[no-untyped-def]
        self.h, self.rpc = h, rpc
        self.qp = TcpQpair(DRIVER.target(rpc.reactors[0]), key, "127.0.0.1:1")
        self.hd, self.dd = hd, dd
        self.reader = P.PduReader(P.HOST)
        self.raw_out: list = []  # type: ignore[type-arg]

    def send(self, raw: bytes) -> list[P.Pdu]:
        out = self.qp.feed(raw)
        self.rpc.pump()
        out += self.qp.take_output()
        self.raw_out += out
        return self.reader.feed(_j(out))

    def icreq(self) -> None:
        [p] = self.send(P.encode_icreq(0, self.hd, self.dd))
        assert p.type == P.ICRESP
        self.reader.ic_done, self.reader.hdgst, self.reader.ddgst = True, self.hd, self.dd

    def cmd(
        self, opcode, cid=1, nsid=0, cdws=(0,) * 6, data=None, incapsule=True, flags=0x40, dptr=None
    ):  # type: ignore[no-untyped-def]
        cd = tuple(cdws) + (0,) * (6 - len(cdws))
        if dptr is None:
            if data is not None and incapsule:
                dptr = spec.pack_sgl(0, len(data), spec.SGL_TYPE_INCAPSULE)
            else:
                dptr = spec.pack_sgl(0, len(data) if data else 0, spec.SGL_TYPE_TRANSPORT)
        sqe = spec.pack_sqe(opcode, cid, nsid, cd, dptr, flags)
        return self.send(
            _j(P.encode_capsule_cmd(sqe, data if incapsule else None, self.hd, self.dd))
        )

    def connect_data(self, subnqn=None, cntlid=0xFFFF) -> bytes:  # type: ignore[no-untyped-def]
        d = bytearray(1024)
        d[0:16] = self.h.HOSTID
        struct.pack_into("<H", d, 16, cntlid)
        s = (subnqn or self.h.SUBNQN).encode()
        d[256 : 256 + len(s)] = s
        d[512 : 512 + len(self.h.HOSTNQN)] = self.h.HOSTNQN.encode()
        return bytes(d)

    def connect(self, qid=0, cntlid=0xFFFF, sqsize=31, incapsule=True) -> spec.Cqe:  # type: ignore[no-untyped-def]
        pdus = self.cmd(
            0x7F,
            cid=100,
            nsid=1,
            cdws=(qid << 16, sqsize, 0),
            data=self.connect_data(cntlid=cntlid),
            incapsule=incapsule,
        )
        if not incapsule:
            [r2t] = pdus
            assert r2t.type == P.R2T
            cccid, ttag, off, ln = P.parse_data_hdr(r2t.hdr)
            assert (cccid, off, ln) == (100, 0, 1024)
            pdus = self.send(
                _j(
                    P.encode_data(
                        P.H2C_DATA,
                        100,
                        ttag,
                        0,
                        self.connect_data(cntlid=cntlid),
                        hdgst=self.hd,
                        ddgst=self.dd,
                    )
                )
            )
        [p] = pdus
        return spec.unpack_cqe(p.hdr, 8)

    def term(self) -> tuple[int, int, bytes]:
        raw = _j(self.raw_out)
        i = 0
        while i < len(raw):
            t, _f, _hl, _pdo, plen = P.CH.unpack_from(raw, i)
            if t == P.C2H_TERM_REQ:
                fes, fei = P.parse_term(raw[i : i + 24])
                return fes, fei, raw[i + 24 : i + plen]
            i += plen
        raise AssertionError("no C2HTermReq")


@pytest.fixture
def tgt(h):  # type: ignore[no-untyped-def]
    rpc = h.FakeRpc(nreactors=1)
    key = h.setup_target(rpc)
    yield rpc, key
    rpc.stop()


def _fresh_works(h, rpc, key) -> None:  # type: ignore[no-untyped-def]
    x = Host(h, rpc, key)
    x.icreq()
    assert x.connect().status == 0


def _expect_term(host: Host, fes: int, fei: int) -> bytes:
    got_fes, got_fei, echoed = host.term()
    assert (got_fes, got_fei) == (fes, fei)
    assert host.qp.want_close
    return echoed


def test_pdu_before_icreq(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    x = Host(h, rpc, key)
    x.cmd(spec.ADMIN_KEEP_ALIVE)
    _expect_term(x, P.FES_PDU_SEQUENCE_ERROR, 0)
    _fresh_works(h, rpc, key)


@pytest.mark.parametrize(("field", "fei"), [("pfv", 8), ("hpda", 10)])
def test_icreq_parameters(h, tgt, field, fei) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    x = Host(h, rpc, key)
    raw = P.encode_icreq(hpda=32) if field == "hpda" else P.encode_icreq(pfv=1)
    x.send(raw)
    echoed = _expect_term(x, P.FES_INVALID_HEADER_FIELD, fei)
    assert echoed == raw[: len(echoed)] and echoed
    _fresh_works(h, rpc, key)


def test_connect_via_r2t_with_digests(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    x = Host(h, rpc, key, hd=True, dd=True)
    x.icreq()
    cqe = x.connect(incapsule=False)
    assert cqe.status == 0 and cqe.cid == 100


def _io_host(h, rpc, key, **kw):  # type: ignore[no-untyped-def]
    a = Host(h, rpc, key, **kw)
    a.icreq()
    cntlid = a.connect().result
    [p] = a.cmd(0x7F, cid=2, nsid=0, cdws=(0, spec.PROP_CC, 1 | (6 << 16) | (4 << 20)))
    assert spec.unpack_cqe(p.hdr, 8).status == 0
    io = Host(h, rpc, key, **kw)
    io.icreq()
    assert io.connect(qid=1, cntlid=cntlid, sqsize=15).status == 0
    return a, io


@pytest.mark.parametrize(
    ("mutate", "fes", "fei"),
    [
        (
            lambda cid, ttag, datao, datal: (cid, ttag + 1, datao, datal),
            P.FES_INVALID_HEADER_FIELD,
            10,
        ),
        (
            lambda cid, ttag, datao, datal: (cid + 1, ttag, datao, datal),
            P.FES_INVALID_HEADER_FIELD,
            8,
        ),
        (
            lambda cid, ttag, datao, datal: (cid, ttag, datao + 512, datal),
            P.FES_DATA_OUT_OF_RANGE,
            12,
        ),
        (
            lambda cid, ttag, datao, datal: (cid, ttag, datao, datal * 2),
            P.FES_DATA_OUT_OF_RANGE,
            16,
        ),
    ],
)
def test_h2c_data_errors(h, tgt, mutate, fes, fei) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, io = _io_host(h, rpc, key)
    [r2t] = io.cmd(spec.IO_WRITE, cid=7, nsid=1, cdws=(0, 0, 7), data=bytes(4096), incapsule=False)
    cccid, ttag, off, ln = P.parse_data_hdr(r2t.hdr)
    assert (cccid, off, ln) == (7, 0, 4096)
    cid, ttag2, datao, datal = mutate(cccid, ttag, 0, ln)
    io.send(_j(P.encode_data(P.H2C_DATA, cid, ttag2, datao, bytes(datal))))
    _expect_term(io, fes, fei)
    # the admin queue is unaffected; a new I/O queue on the same controller works
    io2 = Host(h, rpc, key)
    io2.icreq()
    assert io2.connect(qid=2, cntlid=a.qp.cntlid, sqsize=15).status == 0


def test_h2c_split_in_two_pdus(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, io = _io_host(h, rpc, key)
    payload = bytes(range(256)) * 32
    [r2t] = io.cmd(spec.IO_WRITE, cid=9, nsid=1, cdws=(10, 0, 15), data=payload, incapsule=False)
    _c, ttag, _o, _l = P.parse_data_hdr(r2t.hdr)
    assert io.send(_j(P.encode_data(P.H2C_DATA, 9, ttag, 0, payload[:3000], last=False))) == []
    [p] = io.send(_j(P.encode_data(P.H2C_DATA, 9, ttag, 3000, payload[3000:])))
    assert spec.unpack_cqe(p.hdr, 8).status == 0
    assert bytes(rpc.bdevs["Malloc0"].storage[5120 : 5120 + 8192]) == payload


def test_data_digest_error_fails_only_the_command(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, io = _io_host(h, rpc, key, dd=True)
    sqe = spec.pack_sqe(
        spec.IO_WRITE, 3, 1, (0, 0, 0, 0, 0, 0), spec.pack_sgl(0, 512, spec.SGL_TYPE_INCAPSULE)
    )
    raw = bytearray(_j(P.encode_capsule_cmd(sqe, b"z" * 512, ddgst=True)))
    raw[-1] ^= 0x55
    [p] = io.send(bytes(raw))
    cqe = spec.unpack_cqe(p.hdr, 8)
    assert spec.split_status(cqe.status) == (0, spec.SC_TRANSIENT_TRANSPORT_ERROR, False)
    assert not io.qp.want_close
    assert bytes(rpc.bdevs["Malloc0"].storage[:512]) == bytes(512)


@pytest.mark.parametrize(
    ("dptr", "flags", "sc"),
    [
        (spec.pack_sgl(0, 512, 0x20), 0x40, spec.SC_SGL_INVALID_TYPE),  # segment descriptor
        (spec.pack_sgl(0, 512, 0x01), 0x00, spec.SC_INVALID_FIELD),  # PRP
        (spec.pack_sgl(0, 1 << 20, 0x5A), 0x40, spec.SC_DATA_SGL_LENGTH_INVALID),  # > max_io_size
        (spec.pack_sgl(600, 512, 0x01), 0x40, spec.SC_SGL_INVALID_OFFSET),
        (
            spec.pack_sgl(0, 1024, 0x01),
            0x40,
            spec.SC_DATA_SGL_LENGTH_INVALID,
        ),  # longer than the capsule
    ],
)
def test_sgl_errors(h, tgt, dptr, flags, sc) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, io = _io_host(h, rpc, key)
    inc = dptr[15] != 0x5A
    [p] = io.cmd(
        spec.IO_WRITE,
        cid=4,
        nsid=1,
        cdws=(0, 0, 0),
        data=bytes(512),
        dptr=dptr,
        flags=flags,
        incapsule=inc,
    )
    cqe = spec.unpack_cqe(p.hdr, 8)
    assert spec.split_status(cqe.status)[:2] == (0, sc)
    assert cqe.cid == 4 and cqe.sqid == 1


def test_io_queue_icd_limit(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, io = _io_host(h, rpc, key)
    [p] = io.cmd(spec.IO_WRITE, cid=4, nsid=1, cdws=(0, 0, 15), data=bytes(8192))
    assert spec.split_status(spec.unpack_cqe(p.hdr, 8).status)[:2] == (
        0,
        spec.SC_DATA_SGL_LENGTH_INVALID,
    )


def test_cid_conflict_and_sqhd(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, io = _io_host(h, rpc, key)
    [r2t] = io.cmd(spec.IO_WRITE, cid=5, nsid=1, cdws=(0, 0, 0), data=bytes(512), incapsule=False)
    [p] = io.cmd(spec.IO_FLUSH, cid=5, nsid=1)
    cqe = spec.unpack_cqe(p.hdr, 8)
    assert spec.split_status(cqe.status)[:2] == (0, spec.SC_CMDID_CONFLICT)
    [p] = io.cmd(spec.IO_FLUSH, cid=6, nsid=1)
    cqe = spec.unpack_cqe(p.hdr, 8)
    assert cqe.status == 0 and cqe.sqhd == 3  # three SQEs consumed on a 16-entry queue


def test_async_bdev_zero_copy_read(h) -> None:  # type: ignore[no-untyped-def]
    rpc = h.FakeRpc(nreactors=1)
    try:
        key = h.setup_target(rpc)
        bdev = h.MemBdev("Async0", 256, async_loop=rpc.loop)
        rpc.bdevs["Async0"] = bdev
        rpc.rpc(
            "nvmf_subsystem_add_ns",
            {"nqn": h.SUBNQN, "namespace": {"bdev_name": "Async0", "nsid": 2}},
        )
        a, io = _io_host(h, rpc, key)
        data = bytes(range(256)) * 2
        [p] = io.cmd(
            spec.IO_WRITE, cid=8, nsid=2, cdws=(3, 0, 0), data=data
        )  # completes via call_soon
        assert spec.unpack_cqe(p.hdr, 8).status == 0
        assert bytes(bdev.storage[1536:2048]) == data
        before = len(io.raw_out)
        pdus = io.cmd(
            spec.IO_READ,
            cid=9,
            nsid=2,
            cdws=(3, 0, 0),
            data=None,
            incapsule=False,
            dptr=spec.pack_sgl(0, 512, 0x5A),
        )
        assert [p.type for p in pdus] == [P.C2H_DATA, P.CAPSULE_RESP]
        sent = io.raw_out[before:]
        assert any(isinstance(b, memoryview) and b.obj is bdev.storage for b in sent)  # zero copy
        assert bytes(pdus[0].data) == data  # type: ignore[arg-type]
    finally:
        rpc.stop()


def test_namespace_not_ready_after_hot_remove(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, io = _io_host(h, rpc, key)
    ch = rpc.reactors[0].channel("Malloc0")
    ch.removed = True  # the supervisor announced the removal, config not yet updated
    [p] = io.cmd(spec.IO_READ, cid=4, nsid=1, cdws=(0, 0, 0), dptr=spec.pack_sgl(0, 512, 0x5A))
    assert spec.split_status(spec.unpack_cqe(p.hdr, 8).status)[:2] == (0, spec.SC_NS_NOT_READY)
    rpc.remove_bdev("Malloc0")
    rpc.pump()
    [p] = io.cmd(spec.IO_READ, cid=5, nsid=1, cdws=(0, 0, 0), dptr=spec.pack_sgl(0, 512, 0x5A))
    assert spec.split_status(spec.unpack_cqe(p.hdr, 8).status)[:2] == (0, spec.SC_INVALID_NS)
    assert rpc.nvmf.subsystems[h.SUBNQN]["namespaces"] == {}


def test_admin_features_and_logs(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, io = _io_host(h, rpc, key)

    def cq(pdus):  # type: ignore[no-untyped-def]
        return spec.unpack_cqe(pdus[-1].hdr, 8)

    rd = spec.pack_sgl(0, 4096, 0x5A)
    # host identifier: 128-bit only
    pd = a.cmd(
        spec.ADMIN_GET_FEATURES, cid=10, cdws=(spec.FID_HOST_ID, 1), dptr=spec.pack_sgl(0, 16, 0x5A)
    )
    assert bytes(pd[0].data) == h.HOSTID  # type: ignore[arg-type]
    assert (
        spec.split_status(
            cq(a.cmd(spec.ADMIN_GET_FEATURES, cid=11, cdws=(spec.FID_HOST_ID, 0))).status
        )[1]
        == spec.SC_INVALID_FIELD
    )
    assert cq(a.cmd(spec.ADMIN_SET_FEATURES, cid=12, cdws=(spec.FID_VOLATILE_WC, 0))).status == 0
    assert cq(a.cmd(spec.ADMIN_GET_FEATURES, cid=13, cdws=(spec.FID_VOLATILE_WC,))).result == 0
    assert (
        cq(a.cmd(spec.ADMIN_GET_FEATURES, cid=14, cdws=(spec.FID_TEMP_THRESHOLD,))).result == 0x157
    )
    st = cq(
        a.cmd(spec.ADMIN_SET_FEATURES, cid=15, cdws=(spec.FID_ARBITRATION | (1 << 31), 0))
    ).status
    assert spec.split_status(st)[:2] == (1, spec.SC_FEATURE_NOT_SAVEABLE)
    assert (
        spec.split_status(cq(a.cmd(spec.ADMIN_GET_FEATURES, cid=16, cdws=(0x7E,))).status)[1]
        == spec.SC_INVALID_FIELD
    )
    assert cq(a.cmd(spec.ADMIN_ABORT, cid=17, cdws=(1 << 16 | 1,))).result == 1  # not aborted
    assert spec.split_status(cq(a.cmd(0xC0, cid=18)).status)[1] == spec.SC_INVALID_OPCODE
    # supported logs, effects, unsupported log
    pd = a.cmd(
        spec.ADMIN_GET_LOG_PAGE, cid=19, cdws=(0 | (255 << 16),), dptr=spec.pack_sgl(0, 1024, 0x5A)
    )
    sup = struct.unpack_from("<6I", bytes(pd[0].data), 0)  # type: ignore[arg-type]
    assert sup == (1, 1, 1, 1, 1, 1)
    pd = a.cmd(spec.ADMIN_GET_LOG_PAGE, cid=20, cdws=(5 | (1023 << 16),), dptr=rd)
    eff = bytes(pd[0].data)  # type: ignore[arg-type]
    assert struct.unpack_from("<I", eff, 1024 + 4)[0] == 3  # write: CSUPP | LBCC
    st = cq(a.cmd(spec.ADMIN_GET_LOG_PAGE, cid=21, cdws=(0x0C | (1023 << 16),), dptr=rd)).status
    assert spec.split_status(st)[:2] == (1, spec.SC_INVALID_LOG_PAGE)
    # the error log recorded the failures, newest first
    pd = a.cmd(
        spec.ADMIN_GET_LOG_PAGE, cid=22, cdws=(1 | (15 << 16),), dptr=spec.pack_sgl(0, 64, 0x5A)
    )
    cnt, sqid, cid, status = struct.unpack_from("<QHHH", bytes(pd[0].data), 0)  # type: ignore[arg-type]
    assert cid == 21 and sqid == 0 and cnt >= 4 and status == st
    # fw slot
    pd = a.cmd(
        spec.ADMIN_GET_LOG_PAGE, cid=23, cdws=(3 | (127 << 16),), dptr=spec.pack_sgl(0, 512, 0x5A)
    )
    assert bytes(pd[0].data)[0] == 1  # type: ignore[index]
    # identify CNS 06 (NVM) and 08
    pd = a.cmd(spec.ADMIN_IDENTIFY, cid=24, cdws=(spec.CNS_CS_CTRL, 0), dptr=rd)
    assert cq(pd).status == 0 and bytes(pd[0].data) == bytes(4096)  # type: ignore[arg-type]
    pd = a.cmd(spec.ADMIN_IDENTIFY, cid=25, nsid=1, cdws=(spec.CNS_CS_INDEP_NS,), dptr=rd)
    assert bytes(pd[0].data)[14] == 1  # type: ignore[index]
    st = cq(
        a.cmd(spec.ADMIN_IDENTIFY, cid=26, nsid=0xFFFFFFFF, cdws=(spec.CNS_NS,), dptr=rd)
    ).status
    assert spec.split_status(st)[1] == spec.SC_INVALID_NS
    pd = a.cmd(spec.ADMIN_IDENTIFY, cid=27, nsid=9, cdws=(spec.CNS_NS,), dptr=rd)
    assert cq(pd).status == 0 and bytes(pd[0].data) == bytes(4096)  # inactive: zeros  # type: ignore[arg-type]
    # property errors
    st = cq(a.cmd(0x7F, cid=28, nsid=spec.FCTYPE_PROPERTY_GET, cdws=(0, 0x30))).status
    assert spec.split_status(st)[1] == spec.SC_INVALID_FIELD
    st = cq(io.cmd(0x7F, cid=29, nsid=spec.FCTYPE_PROPERTY_GET, cdws=(0, 0x1C))).status
    assert spec.split_status(st)[1] == spec.SC_INVALID_OPCODE
    st = cq(a.cmd(0x7F, cid=30, nsid=spec.FCTYPE_DISCONNECT)).status
    assert spec.split_status(st)[1] == spec.SC_INVALID_OPCODE


def test_cc_reset_tears_down_io_queues(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, io = _io_host(h, rpc, key)
    cntlid = a.qp.cntlid
    [p] = a.cmd(0x7F, cid=40, nsid=0, cdws=(0, spec.PROP_CC, 0))
    assert spec.unpack_cqe(p.hdr, 8).status == 0
    rpc.pump()
    assert io.qp.closed and not a.qp.closed
    assert rpc.nvmf.ctrlrs[(h.SUBNQN, cntlid)].qpairs == {}
    [p] = a.cmd(0x7F, cid=41, nsid=spec.FCTYPE_PROPERTY_GET, cdws=(0, spec.PROP_CSTS))
    assert spec.unpack_cqe(p.hdr, 8).result & 1 == 0
    # I/O connect is refused until re-enabled
    io2 = Host(h, rpc, key)
    io2.icreq()
    assert io2.connect(qid=1, cntlid=cntlid).status != 0


def test_zero_copy_h2c_releases_reader_buffer(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, io = _io_host(h, rpc, key)
    payload = b"\xa5" * 8192
    [r2t] = io.cmd(spec.IO_WRITE, cid=9, nsid=1, cdws=(0, 0, 15), data=payload, incapsule=False)
    _c, ttag, _o, _l = P.parse_data_hdr(r2t.hdr)
    [p] = io.send(_j(P.encode_data(P.H2C_DATA, 9, ttag, 0, payload)))
    assert spec.unpack_cqe(p.hdr, 8).status == 0
    assert bytes(rpc.bdevs["Malloc0"].storage[:8192]) == payload
    # a synchronous bdev is done with the PDU view: the reader may reuse its buffer
    assert not io.qp.reader._exported()
    assert io.qp.reqs == {} and io.qp.ttags == {}
