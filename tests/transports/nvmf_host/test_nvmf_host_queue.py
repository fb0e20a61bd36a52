"""Sans-I/O host queue pair against scripted controller PDUs (built with pdu.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host import queue as Q


def tx_bytes(q: Q.HostQueue) -> bytes:
    return b"".join(bytes(b) for b in q.take_tx())


def ctrl_reader(hdgst: bool = False, ddgst: bool = False) -> P.PduReader:
    r = P.PduReader(role=P.CONTROLLER)
    r.ic_done = True
    r.hdgst = hdgst
    r.ddgst = ddgst
    return r


def up(
    hdgst: bool = False,
    ddgst: bool = False,
    qsize: int = 8,
    maxh2c: int = 8192,
    cpda: int = 0,
    icd: int = 0,
) -> tuple[Q.HostQueue, P.PduReader]:
    q = Q.HostQueue(qid=1, qsize=qsize, hdgst=hdgst, ddgst=ddgst)
    q.start()
    icreq = tx_bytes(q)
    assert len(icreq) == 128 and icreq[0] == P.ICREQ
    _pfv, _hpda, hd, dd, _ = P.parse_ic(icreq)
    assert (hd, dd) == (int(hdgst), int(ddgst))
    q.feed(P.encode_icresp(cpda, hdgst, ddgst, maxh2c))
    assert q.ic_done and q.hdgst == hdgst and q.ddgst == ddgst
    q.icd_max = icd
    return q, ctrl_reader(hdgst, ddgst)


def join(bufs: list) -> bytes:
    return b"".join(bytes(b) for b in bufs)


def test_icresp_negotiation_and_bad_maxh2cdata() -> None:
    q = Q.HostQueue()
    q.start()
    q.take_tx()
    with pytest.raises(Q.TransportError, match="MAXH2CDATA"):
        q.feed(P.encode_icresp(0, False, False, 1000))
    term = tx_bytes(q)
    assert term[0] == P.H2C_TERM_REQ
    assert P.parse_term(term)[0] == P.FES_INVALID_HEADER_FIELD
    # a digest the host did not ask for is refused
    q = Q.HostQueue()
    q.start()
    with pytest.raises(Q.TransportError, match="digest"):
        q.feed(P.encode_icresp(0, True, False, 8192))


@pytest.mark.parametrize(
    "hdgst,ddgst", [(False, False), (True, True), (True, False), (False, True)]
)
def test_read_c2h_reassembly_and_resp(hdgst: bool, ddgst: bool) -> None:
    q, ctl = up(hdgst, ddgst)
    dest = memoryview(bytearray(8192))
    done: list[tuple[int, int]] = []
    r = q.read(1, 0x1_0000_0005, 16, dest, lambda req, s, res: done.append((req.cid, s)))
    pdus = ctl.feed(tx_bytes(q))
    assert len(pdus) == 1 and pdus[0].type == P.CAPSULE_CMD
    sqe = S.unpack_sqe(pdus[0].hdr, 8)
    assert sqe.opcode == S.IO_READ and sqe.nsid == 1 and sqe.cid == r.cid
    assert (sqe.cdw10, sqe.cdw11, sqe.cdw12) == (5, 1, 15)
    sgl = S.unpack_sgl(sqe.dptr)
    assert (sgl.length, sgl.type, sgl.subtype) == (
        8192,
        S.SGL_TRANSPORT_DATA_BLOCK,
        S.SGL_SUBTYPE_TRANSPORT,
    )
    payload = bytes(range(256)) * 32
    wire = join(
        P.encode_data(P.C2H_DATA, r.cid, 0, 0, payload[:4096], last=False, hdgst=hdgst, ddgst=ddgst)
    )
    wire += join(
        P.encode_data(
            P.C2H_DATA, r.cid, 0, 4096, payload[4096:], last=True, hdgst=hdgst, ddgst=ddgst
        )
    )
    wire += join(P.encode_capsule_resp(r.cid, 0, hdgst=hdgst))
    # byte-by-byte arrival must give the same result
    for i in range(0, len(wire), 7):
        q.feed(wire[i : i + 7])
    assert done == [(r.cid, 0)]
    assert bytes(dest) == payload
    assert q.outstanding == 0


def test_c2h_success_flag_completes_without_resp() -> None:
    q, _ = up()
    dest = memoryview(bytearray(512))
    done = []
    r = q.read(1, 0, 1, dest, lambda req, s, res: done.append(s))
    q.take_tx()
    assert (
        q.feed(join(P.encode_data(P.C2H_DATA, r.cid, 0, 0, b"\x5a" * 512, last=True, success=True)))
        == 1
    )
    assert done == [0] and bytes(dest) == b"\x5a" * 512


def test_data_digest_error_fails_only_that_command() -> None:
    q, _ = up(ddgst=True)
    dest = memoryview(bytearray(512))
    done = []
    r = q.read(1, 0, 1, dest, lambda req, s, res: done.append(s))
    q.take_tx()
    wire = bytearray(join(P.encode_data(P.C2H_DATA, r.cid, 0, 0, b"\1" * 512, ddgst=True)))
    wire[-1] ^= 0xFF
    q.feed(bytes(wire) + join(P.encode_capsule_resp(r.cid, 0)))
    assert done == [S.ST_TRANSIENT_TRANSPORT_ERROR]
    assert Q.status_name(done[0]) == "Transient Transport Error"
    assert q.failed is None  # the queue lives on


def test_header_digest_error_is_fatal() -> None:
    q, _ = up(hdgst=True)
    wire = bytearray(join(P.encode_capsule_resp(0, 0, hdgst=True)))
    wire[-1] ^= 1
    with pytest.raises(Q.TransportError, match="Header Digest"):
        q.feed(bytes(wire))
    term = tx_bytes(q)
    assert term[0] == P.H2C_TERM_REQ and P.parse_term(term)[0] == P.FES_HDGST_ERROR


@pytest.mark.parametrize("hdgst,ddgst", [(False, False), (True, True)])
def test_write_r2t_h2cdata_respects_maxh2cdata(hdgst: bool, ddgst: bool) -> None:
    q, ctl = up(hdgst, ddgst, maxh2c=4096)
    data = memoryview(bytes(range(256)) * 48)  # 12 KiB > icd_max 0: R2T path
    done = []
    r = q.write(1, 10, 24, data, lambda req, s, res: done.append(s))
    (cmd,) = ctl.feed(tx_bytes(q))
    assert cmd.data is None
    sqe = S.unpack_sqe(cmd.hdr, 8)
    assert sqe.opcode == S.IO_WRITE and sqe.cdw12 == 23
    # the controller asks for the second half first
    q.feed(join(P.encode_r2t(r.cid, 7, 6144, 6144, hdgst=hdgst)))
    pdus = ctl.feed(tx_bytes(q))
    assert [p.type for p in pdus] == [P.H2C_DATA, P.H2C_DATA]
    got = [P.parse_data_hdr(p.hdr) for p in pdus]
    assert got == [(r.cid, 7, 6144, 4096), (r.cid, 7, 10240, 2048)]
    assert [bool(p.flags & P.FLAG_DATA_LAST) for p in pdus] == [False, True]
    assert all(p.ddgst_ok for p in pdus)
    assert bytes(pdus[0].data) + bytes(pdus[1].data) == bytes(data[6144:])
    q.feed(join(P.encode_capsule_resp(r.cid, 0, hdgst=hdgst)))
    assert done == [0]


def test_r2t_out_of_range_is_fatal() -> None:
    q, _ = up()
    r = q.write(1, 0, 1, memoryview(bytes(512)), None)
    q.take_tx()
    with pytest.raises(Q.TransportError, match="outside the write buffer"):
        q.feed(join(P.encode_r2t(r.cid, 1, 256, 512)))
    assert P.parse_term(tx_bytes(q))[0] == P.FES_DATA_OUT_OF_RANGE


def test_incapsule_write_with_cpda() -> None:
    q, _ = up(cpda=3, icd=8192)
    data = memoryview(b"\xab" * 4096)
    q.write(2, 0, 8, data, None)
    rd = ctrl_reader()
    rd.rx_pda = 3
    (cmd,) = rd.feed(tx_bytes(q))
    assert cmd.pdo == 80  # 72 rounded up to 16 bytes
    assert bytes(cmd.data) == bytes(data)
    sgl = S.unpack_sgl(S.unpack_sqe(cmd.hdr, 8).dptr)
    assert (sgl.type, sgl.subtype, sgl.length) == (S.SGL_DATA_BLOCK, S.SGL_SUBTYPE_OFFSET, 4096)


def test_c2h_term_req_is_fatal_with_fes_name() -> None:
    q, _ = up()
    r = q.read(1, 0, 1, memoryview(bytearray(512)), None)
    with pytest.raises(Q.TransportError, match="Data Transfer Limit Exceeded"):
        q.feed(P.encode_term_req(P.C2H_TERM_REQ, P.FES_DATA_LIMIT_EXCEEDED, 4))
    assert q.failed is not None and not q.can_submit
    got = []
    r.cb = lambda req, s, res: got.append(s)
    assert q.abort_all() == 1 and got == [Q.ST_HOST_PATH_ERROR]
    assert Q.status_name(got[0]) == "Host Pathing Error"


def test_queue_depth_flow_control_and_cid_reuse() -> None:
    q, _ = up(qsize=4)
    reqs = [q.read(1, i, 1, memoryview(bytearray(512)), None) for i in range(3)]
    assert not q.can_submit
    with pytest.raises(Q.QueueFull):
        q.read(1, 0, 1, memoryview(bytearray(512)), None)
    q.take_tx()
    q.feed(join(P.encode_capsule_resp(reqs[1].cid, S.ST_LBA_OUT_OF_RANGE)))
    assert q.can_submit and q.outstanding == 2
    r = q.read(1, 0, 1, memoryview(bytearray(512)), None)
    assert r.cid == reqs[1].cid


def test_status_names_and_unknown_cid() -> None:
    q, _ = up()
    seen = []
    r = q.submit(S.ADMIN_IDENTIFY, cb=lambda req, s, res: seen.append(s))
    q.take_tx()
    q.feed(join(P.encode_capsule_resp(r.cid, S.ST_INVALID_FIELD)))
    assert Q.status_name(seen[0]) == "Invalid Field in Command"
    assert "dnr" in Q.status_str(seen[0])
    assert Q.status_name(S.ST_LBA_OUT_OF_RANGE) == "LBA Out of Range"
    assert Q.status_name(S.ST_NS_NOT_READY) == "Namespace Not Ready"
    with pytest.raises(Q.TransportError, match="unknown CID"):
        q.feed(join(P.encode_capsule_resp(5, 0)))


def test_connect_capsule_layout() -> None:
    q = Q.HostQueue(qid=0, qsize=32)
    q.start()
    q.take_tx()
    q.feed(P.encode_icresp(0, False, False, 131072))
    hostid = bytes(range(16))
    done = []
    r = q.connect(
        "nqn.sub", "nqn.host", hostid, kato_ms=10000, cb=lambda req, s, res: done.append(res)
    )
    (cmd,) = ctrl_reader().feed(tx_bytes(q))
    assert cmd.hdr[8] == S.FABRICS_OPCODE and cmd.hdr[12] == S.FCTYPE_CONNECT
    recfmt, qid, sqsize, cattr, kato = struct.unpack_from("<HHHBxI", cmd.hdr, 8 + 40)
    assert (recfmt, qid, sqsize, kato) == (0, 0, 31, 10000)
    d = bytes(cmd.data)
    assert len(d) == 1024 and d[:16] == hostid
    assert struct.unpack_from("<H", d, 16)[0] == 0xFFFF
    assert S.cstr(d, 256, 256) == b"nqn.sub" and S.cstr(d, 512, 256) == b"nqn.host"
    q.feed(join(P.encode_capsule_resp(r.cid, 0, result=7)))
    assert q.connected and q.cntlid == 7 and done == [7]


def test_advance_partial_send() -> None:
    bufs = [b"abc", memoryview(b"defg"), bytearray(b"hi")]
    assert join(Q.advance(list(bufs), 0)) == b"abcdefghi"
    assert join(Q.advance(list(bufs), 4)) == b"efghi"
    assert join(Q.advance(list(bufs), 7)) == b"hi"
    assert Q.advance(list(bufs), 9) == []


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=20000),
    cuts=st.lists(st.integers(1, 5000), max_size=12),
    hdgst=st.booleans(),
    ddgst=st.booleans(),
)
def test_property_c2h_any_split(data: bytes, cuts: list[int], hdgst: bool, ddgst: bool) -> None:
    q, _ = up(hdgst, ddgst, qsize=4)
    dest = memoryview(bytearray(len(data)))
    done = []
    r = q.read(1, 0, 1, dest, lambda req, s, res: done.append(s))
    q.take_tx()
    wire = b""
    off = 0
    for c in [*cuts, len(data)]:
        if off >= len(data):
            break
        n = min(c, len(data) - off)
        wire += join(
            P.encode_data(
                P.C2H_DATA,
                r.cid,
                0,
                off,
                data[off : off + n],
                last=off + n == len(data),
                success=off + n == len(data),
                hdgst=hdgst,
                ddgst=ddgst,
            )
        )
        off += n
    q.feed(wire)
    assert done == [0] and bytes(dest) == data


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(min_size=8, max_size=300))
def test_property_garbage_never_crashes(junk: bytes) -> None:
    q, _ = up()
    try:
        q.feed(junk)
    except Q.TransportError as e:
        assert q.failed is e or q.failed is not None
