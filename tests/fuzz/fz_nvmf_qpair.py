"""The command path of an NVMe/TCP queue pair (transports/nvmf/tcp.py and the
admin / fabrics / I/O executors behind it), sans-I/O, against an in-memory
bdev, with the supervisor's controller directory run in-process (the
FakeRpc of tests/transports/nvmf/conftest.py).

Input: byte 0 = start state (bits 0-1: 0 fresh connection, 1 after ICReq,
2 admin queue connected and enabled, 3 I/O queue 1 connected; bit 2 HDGST,
bit 3 DDGST; bit 4 one receive per PDU); byte 1 = where the stream is cut into two receives; the rest
is what the host sends. The connection may answer anything, including a
C2HTermReq, but never raise, never emit a malformed PDU, never hold more
commands than its queue depth."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from fuzzlib import Bytes, adapt_channel, load_path, quiet

from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec
from blockfabric.transports.nvmf.driver import DRIVER
from blockfabric.transports.nvmf.tcp import TcpQpair

_h: Any = load_path("_fz_nvmf_conftest", "transports/nvmf/conftest.py")
adapt_channel(_h.MemChannel)
_env: tuple[Any, str] | None = None


def setup() -> tuple[Any, str]:
    global _env
    if _env is None:
        quiet()
        rpc = _h.FakeRpc(nreactors=1)
        key = _h.setup_target(rpc, bdev_blocks=256)
        _env = (rpc, key)
    return _env


def _j(bufs: Iterable[Any]) -> bytes:
    return b"".join(bytes(x) for x in bufs)


class _Host:
    """Checks every byte the target sends with a host-role PduReader."""

    def __init__(self, qp: TcpQpair) -> None:
        self.qp = qp
        self.reader = P.PduReader(P.HOST, bufsize=4096)
        self.pdus: list[tuple[int, bytes]] = []

    def drain(self, rpc: Any) -> None:
        rpc.pump(3)
        for buf in self.qp.take_output():
            for p in self.reader.feed(buf):  # raises PduError on a malformed PDU
                assert p.ddgst_ok, "target sent a bad data digest"
                self.pdus.append((p.type, bytes(p.hdr)))
                if p.type == P.ICRESP:
                    self.reader.ic_done = True
                    self.reader.hdgst, self.reader.ddgst = self.qp.hdgst, self.qp.ddgst
                    self.reader.rx_pda = self.qp.cpda
        assert len(self.qp.reqs) <= max(self.qp.queue_limit(), 1)


def _cmd(
    opcode: int,
    cid: int,
    nsid: int,
    cdws: tuple[int, ...],
    data: bytes | None,
    hd: bool,
    dd: bool,
    xfer: int = 0,
) -> bytes:
    cd = tuple(cdws) + (0,) * (6 - len(cdws))
    if data is not None:
        sgl = spec.pack_sgl(0, len(data), spec.SGL_TYPE_INCAPSULE)
    else:
        sgl = spec.pack_sgl(0, xfer, spec.SGL_TYPE_TRANSPORT)
    sqe = spec.pack_sqe(opcode, cid, nsid, cd, sgl, 0x40)  # type: ignore[arg-type]
    return _j(P.encode_capsule_cmd(sqe, data, hd, dd))


def connect_data(cntlid: int = 0xFFFF) -> bytes:
    d = bytearray(1024)
    d[0:16] = _h.HOSTID
    struct.pack_into("<H", d, 16, cntlid)
    s = _h.SUBNQN.encode()
    d[256 : 256 + len(s)] = s
    d[512 : 512 + len(_h.HOSTNQN)] = _h.HOSTNQN.encode()
    return bytes(d)


def connect(qid: int, cntlid: int, hd: bool, dd: bool) -> bytes:
    return _cmd(0x7F, 100, spec.FCTYPE_CONNECT, (qid << 16, 31, 0), connect_data(cntlid), hd, dd)


def enable(hd: bool, dd: bool) -> bytes:
    return _cmd(
        0x7F,
        101,
        spec.FCTYPE_PROPERTY_SET,
        (0, spec.PROP_CC, 1 | (6 << 16) | (4 << 20)),
        None,
        hd,
        dd,
    )


def _last_cqe(h: _Host) -> spec.Cqe:
    for t, hdr in reversed(h.pdus):
        if t == P.CAPSULE_RESP:
            return spec.unpack_cqe(hdr, 8)
    raise AssertionError(f"no response: {h.pdus}")


def _open(rpc: Any, key: str, hd: bool, dd: bool, ic: bool) -> _Host:
    h = _Host(TcpQpair(DRIVER.target(rpc.reactors[0]), key, "127.0.0.1:1"))
    if ic:
        h.qp.feed_input(P.encode_icreq(0, hd, dd))
        h.drain(rpc)
    return h


def _pieces(stream: bytes, cut: int, by_pdu: bool) -> Iterable[bytes]:
    """Two receives cut at ``cut``/256, or (bit 4 of byte 0) one receive per
    PDU by its PLEN, as a host that waits for each answer would send."""
    if not by_pdu:
        k = cut * len(stream) // 256
        yield stream[:k]
        yield stream[k:]
        return
    i = 0
    while i < len(stream):
        plen = struct.unpack_from("<I", stream, i + 4)[0] if i + 8 <= len(stream) else 8
        step = max(8, min(plen, len(stream) - i))
        yield stream[i : i + step]
        i += step


def one_input(data: bytes) -> None:
    rpc, key = setup()
    b = Bytes(data)
    cfg = b.u8()
    cut = b.u8()
    stream = b.rest()
    mode, hd, dd = cfg & 3, bool(cfg & 4), bool(cfg & 8)
    hosts: list[_Host] = []
    try:
        h = _open(rpc, key, hd, dd, mode >= 1)
        hosts.append(h)
        if mode >= 2:
            h.qp.feed_input(connect(0, 0xFFFF, hd, dd))
            h.drain(rpc)
            cqe = _last_cqe(h)
            assert cqe.status == 0, cqe
            h.qp.feed_input(enable(hd, dd))
            h.drain(rpc)
            assert _last_cqe(h).status == 0
        if mode == 3:
            cntlid = _last_cqe(hosts[0]).result & 0xFFFF or (hosts[0].qp.cntlid or 0)
            h = _open(rpc, key, hd, dd, True)
            hosts.append(h)
            h.qp.feed_input(connect(1, hosts[0].qp.cntlid or cntlid, hd, dd))
            h.drain(rpc)
            assert _last_cqe(h).status == 0, _last_cqe(h)
        for part in _pieces(stream, cut, bool(cfg & 0x10)):
            h.qp.feed_input(part)
            h.drain(rpc)
    finally:
        for x in reversed(hosts):
            x.qp.close("fuzz done")
        rpc.pump(3)
    assert not rpc.nvmf.ctrlrs if hasattr(rpc.nvmf, "ctrlrs") else True


def seeds() -> Iterable[bytes]:
    out: list[bytes] = []
    for hd, dd in ((False, False), (True, True), (True, False)):
        flags = (4 if hd else 0) | (8 if dd else 0)
        out.append(
            bytes([flags, 0x80])
            + P.encode_icreq(0, hd, dd)
            + connect(0, 0xFFFF, hd, dd)
            + enable(hd, dd)
        )
        # admin: identify controller / namespace list, get log pages, features, keep alive, AER
        adm = b"".join(
            [
                _cmd(spec.ADMIN_IDENTIFY, 1, 0, (1,), None, hd, dd, 4096),
                _cmd(spec.ADMIN_IDENTIFY, 2, 1, (0,), None, hd, dd, 4096),
                _cmd(spec.ADMIN_IDENTIFY, 3, 0, (2,), None, hd, dd, 4096),
                _cmd(spec.ADMIN_GET_LOG_PAGE, 4, 0xFFFFFFFF, (2 | (127 << 16),), None, hd, dd, 512),
                _cmd(spec.ADMIN_GET_LOG_PAGE, 5, 0, (1 | (15 << 16),), None, hd, dd, 64),
                _cmd(spec.ADMIN_KEEP_ALIVE, 6, 0, (), None, hd, dd),
                _cmd(0x0A, 7, 0, (7,), None, hd, dd),  # get features: number of queues
                _cmd(0x09, 8, 0, (7, 0x00030003), None, hd, dd),  # set features
                _cmd(0x0C, 9, 0, (), None, hd, dd),  # AER
                _cmd(0x7F, 10, spec.FCTYPE_PROPERTY_GET, (1, 0), None, hd, dd),
            ]
        )
        out.append(bytes([2 | flags, 0x40]) + adm)
        # I/O: write in capsule, read, write via R2T + H2CData, flush, write zeroes, DSM, compare
        w = _cmd(spec.IO_WRITE, 1, 1, (0, 0, 0), b"\x5a" * 512, hd, dd)
        r = _cmd(spec.IO_READ, 2, 1, (0, 0, 7), None, hd, dd, 4096)
        sgl = spec.pack_sgl(0, 1024, spec.SGL_TYPE_TRANSPORT)
        w2 = _j(
            P.encode_capsule_cmd(
                spec.pack_sqe(spec.IO_WRITE, 3, 1, (8, 0, 1, 0, 0, 0), sgl, 0x40), None, hd, dd
            )
        )  # type: ignore[arg-type]
        h2c = _j(P.encode_data(P.H2C_DATA, 3, 1, 0, b"\xa5" * 1024, hdgst=hd, ddgst=dd))
        io = b"".join(
            [
                w,
                r,
                w2,
                h2c,
                _cmd(0x00, 4, 1, (), None, hd, dd),  # flush
                _cmd(0x08, 5, 1, (16, 0, 7), None, hd, dd),  # write zeroes
                _cmd(0x09, 6, 1, (0, 4), b"\0" * 4 + struct.pack("<IQ", 8, 32), hd, dd),  # DSM
                _cmd(0x05, 7, 1, (0, 0, 0), b"\x5a" * 512, hd, dd),  # compare
            ]
        )
        out.append(bytes([3 | flags, 0x80]) + io)
        out.append(bytes([1 | flags, 0x80]) + connect(0, 0xFFFF, hd, dd))
    # the discovery controller: connect, enable, get the discovery log page
    disc = bytearray(connect_data())
    disc[256:512] = bytes(256)
    dn = b"nqn.2014-08.org.nvmexpress.discovery"
    disc[256 : 256 + len(dn)] = dn
    out.append(
        bytes([0x10, 0x80])
        + P.encode_icreq(0, False, False)
        + _cmd(0x7F, 100, spec.FCTYPE_CONNECT, (0, 31, 0), bytes(disc), False, False)
        + enable(False, False)
        + _cmd(spec.ADMIN_GET_LOG_PAGE, 4, 0, (0x70 | (255 << 16),), None, False, False, 1024)
    )
    # raw streams
    out.append(
        bytes([0, 0])
        + P.encode_icreq(0, False, False)
        + _j(P.encode_data(P.H2C_DATA, 1, 1, 0, b"x" * 8))
    )
    out.append(bytes([2, 0x80]) + P.encode_term_req(P.H2C_TERM_REQ, 1, 0))
    return out + [bytes([x[0] | 0x10]) + x[1:] for x in out]
