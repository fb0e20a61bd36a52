"""NVMe/TCP PDU framing (transports/nvmf/pdu.py PduReader), both roles.

Input: byte 0 = negotiated state (bit 0 host role, bit 1 IC done, bit 2
HDGST, bit 3 DDGST, bits 4-5 PDA); byte 1 = where the stream is cut into two
receives; the rest is the byte stream. The only documented error is PduError
(a C2HTermReq/H2CTermReq reason); every PDU returned must respect the limits."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from fuzzlib import Bytes

from blockfabric.transports.nvmf import pdu as P

MAX_DATA = 8192


def _reader(cfg: int) -> P.PduReader:
    role = P.HOST if cfg & 1 else P.CONTROLLER
    limits = {P.CAPSULE_CMD: MAX_DATA, P.H2C_DATA: MAX_DATA, P.C2H_DATA: MAX_DATA}
    r = P.PduReader(role, max_data=limits, bufsize=4096)
    r.ic_done = bool(cfg & 2)
    r.hdgst = bool(cfg & 4)
    r.ddgst = bool(cfg & 8)
    r.rx_pda = (cfg >> 4) & 3
    r.max_plen = 1 << 16
    return r


def _check(r: P.PduReader, p: P.Pdu) -> None:
    assert p.type in r.accepts
    assert len(p.hdr) == p.hlen == P.HLEN[p.type]
    assert p.plen <= r.max_plen
    if p.data is not None:
        assert len(p.data) <= max(MAX_DATA, P.TERM_REQ_MAX_DATA)
        if p.type in (P.H2C_DATA, P.C2H_DATA):
            assert P.parse_data_hdr(p.hdr)[3] == len(p.data)
    if p.type in (P.ICREQ, P.ICRESP):
        P.parse_ic(p.hdr)
    elif p.type in (P.H2C_TERM_REQ, P.C2H_TERM_REQ):
        P.parse_term(p.hdr)
    elif p.type in (P.H2C_DATA, P.C2H_DATA, P.R2T):
        P.parse_data_hdr(p.hdr)


def _run(cfg: int, chunks: Iterable[bytes]) -> list[tuple[int, int, bytes, bytes | None]]:
    """Frame like TcpQpair does: recv_into get_buffer(), commit, next_pdu()
    until None (PduReader.feed, a test helper, drops the PDUs before a fatal
    one in the same call)."""
    r = _reader(cfg)
    got: list[tuple[int, int, bytes, bytes | None]] = []
    try:
        for c in chunks:
            mv = memoryview(c)
            while mv:
                buf = r.get_buffer()
                n = min(len(buf), len(mv))
                buf[:n] = mv[:n]
                del buf
                mv = mv[n:]
                r.commit(n)
                while (p := r.next_pdu()) is not None:
                    _check(r, p)
                    data = None if p.data is None else bytes(p.data)
                    got.append((p.type, p.flags, bytes(p.hdr), data))
                    if p.type in (P.ICREQ, P.ICRESP):
                        r.ic_done = True  # what the owner does after the IC exchange
                    del p
    except P.PduError as e:
        assert 0 < e.fes <= P.FES_UNSUPPORTED_PARAMETER and len(e.header) <= P.TERM_REQ_MAX_DATA
        # a failed reader keeps failing
        try:
            r.next_pdu()
        except P.PduError:
            pass
        else:
            raise AssertionError("reader recovered after a fatal error") from None
        got.append((-1, e.fes, e.header, None))
    assert r.buffered <= r.max_plen + 65536
    return got


def one_input(data: bytes) -> None:
    b = Bytes(data)
    cfg = b.u8()
    cut = b.u8()
    stream = b.rest()
    k = cut * len(stream) // 256
    whole = _run(cfg, [stream])
    split = _run(cfg, [stream[:k], stream[k:]])
    assert whole == split, "framing depends on how the bytes arrive"


def seeds() -> Iterable[bytes]:
    from blockfabric.transports.nvmf import spec

    def j(bufs: Iterable[bytes | bytearray | memoryview]) -> bytes:
        return b"".join(bytes(x) for x in bufs)

    sqe = spec.pack_sqe(
        spec.ADMIN_IDENTIFY,
        1,
        0,
        (1, 0, 0, 0, 0, 0),
        spec.pack_sgl(0, 4096, spec.SGL_TYPE_TRANSPORT),
        0x40,
    )
    for hd in (False, True):
        for dd in (False, True):
            cfg = 2 | (4 if hd else 0) | (8 if dd else 0)
            yield bytes([0, 0x80]) + P.encode_icreq(0, hd, dd)
            yield bytes([cfg, 0x40]) + j(P.encode_capsule_cmd(sqe, None, hd, dd))
            yield bytes([cfg, 0x40]) + j(P.encode_capsule_cmd(sqe, b"\x11" * 512, hd, dd))
            yield bytes([cfg, 0x20]) + j(
                P.encode_data(P.H2C_DATA, 1, 2, 0, b"\x22" * 1024, hdgst=hd, ddgst=dd)
            )
            yield bytes([cfg | 1, 0x30]) + j(
                P.encode_data(P.C2H_DATA, 1, 0, 0, b"\x33" * 100, success=True, hdgst=hd, ddgst=dd)
            )
            yield bytes([cfg | 1, 0x10]) + j(P.encode_capsule_resp(1, 0, 0, hdgst=hd))
            yield bytes([cfg | 1, 0x10]) + j(P.encode_r2t(1, 2, 0, 4096, hdgst=hd))
    yield bytes([0x12, 0x50]) + j(P.encode_capsule_cmd(sqe, b"\x44" * 100, cpda=1))
    yield bytes([2, 0x50]) + P.encode_term_req(P.H2C_TERM_REQ, 2, 0, b"x" * 30)
    yield bytes([1, 0x50]) + P.encode_icresp(0, False, False, 131072) + j(P.encode_capsule_resp(7))
    yield bytes([2, 0x50]) + struct.pack("<BBBBI", P.CAPSULE_CMD, 0, 72, 72, 0xFFFFFFFF)
