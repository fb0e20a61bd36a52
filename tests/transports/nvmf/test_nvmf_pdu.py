"""NVMe/TCP PDU codec: layouts, round trips, digests, framing errors, fuzzing."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec


def _join(bufs: list) -> bytes:  # type: ignore[type-arg]
    return b"".join(bytes(b) for b in bufs)


def _ctrl_reader(hd: bool = False, dd: bool = False, **kw) -> P.PduReader:  # type: ignore[no-untyped-def]
    r = P.PduReader(P.CONTROLLER, max_data={P.CAPSULE_CMD: 8192, P.H2C_DATA: 131072}, **kw)
    r.ic_done, r.hdgst, r.ddgst = True, hd, dd
    return r


def test_icreq_layout() -> None:
    b = P.encode_icreq(hpda=3, hdgst=True, ddgst=False, maxr2t=7)
    assert len(b) == 128
    assert b[:8] == bytes([0, 0, 128, 0]) + struct.pack("<I", 128)
    assert struct.unpack_from("<HBBI", b, 8) == (0, 3, 1, 7)
    r = P.PduReader(P.CONTROLLER)
    [p] = r.feed(b)
    assert p.type == P.ICREQ and P.parse_ic(p.hdr) == (0, 3, 1, 0, 7)


def test_icresp_layout() -> None:
    b = P.encode_icresp(0, True, True, 131072)
    assert b[0] == 1 and b[2] == 128 and struct.unpack_from("<HBBI", b, 8) == (0, 0, 3, 131072)


def test_capsule_cmd_with_digests_and_padding() -> None:
    sqe = spec.pack_sqe(spec.IO_WRITE, 9, 1, (0, 0, 7, 0, 0, 0))
    data = bytes(range(256)) * 2
    bufs = P.encode_capsule_cmd(sqe, memoryview(data), hdgst=True, ddgst=True, cpda=3)
    assert any(isinstance(b, memoryview) for b in bufs)  # payload not copied
    raw = _join(bufs)
    t, flags, hlen, pdo, plen = P.CH.unpack_from(raw, 0)
    assert (t, flags, hlen) == (P.CAPSULE_CMD, P.FLAG_HDGSTF | P.FLAG_DDGSTF, 72)
    assert pdo == 80 and pdo % 16 == 0  # (CPDA+1)*4 = 16-byte alignment
    assert plen == pdo + len(data) + 4 == len(raw)
    assert struct.unpack_from("<I", raw, 72)[0] == crc32c(raw[:72])
    assert struct.unpack_from("<I", raw, plen - 4)[0] == crc32c(data)
    r = _ctrl_reader(True, True)
    r.rx_pda = 3
    [p] = r.feed(raw)
    assert p.ddgst_ok and bytes(p.data) == data  # type: ignore[arg-type]
    assert spec.unpack_sqe(p.hdr, 8).cid == 9


def test_capsule_resp_and_r2t_and_term() -> None:
    raw = _join(P.encode_capsule_resp(5, spec.ST_INVALID_FIELD, 0x1234, 3, 1, hdgst=True))
    assert len(raw) == 28
    hr = P.PduReader(P.HOST)
    hr.ic_done, hr.hdgst = True, True
    [p] = hr.feed(raw)
    cqe = spec.unpack_cqe(p.hdr, 8)
    assert (cqe.cid, cqe.status, cqe.result, cqe.sqhd, cqe.sqid) == (
        5,
        spec.ST_INVALID_FIELD,
        0x1234,
        3,
        1,
    )
    raw = _join(P.encode_r2t(5, 77, 0, 65536))
    hr = P.PduReader(P.HOST)
    hr.ic_done = True
    [p] = hr.feed(raw)
    assert P.parse_data_hdr(p.hdr) == (5, 77, 0, 65536)
    t = P.encode_term_req(P.C2H_TERM_REQ, 4, 12, b"x" * 200)
    assert len(t) == 24 + 128 and P.parse_term(t) == (4, 12)


def test_status_field_encoding() -> None:
    s = spec.status_field(spec.SCT_MEDIA, spec.SC_COMPARE_FAILURE, dnr=True)
    assert s == (0x285 << 1) | 0x8000
    assert spec.split_status(s) == (2, 0x85, True)
    assert spec.status_name(1, 0x84) == "Connect Invalid Host"


def test_sqe_cqe_sizes() -> None:
    assert spec.SQE.size == 64 and spec.CQE.size == 16
    sgl = spec.pack_sgl(0, 4096, spec.SGL_TYPE_TRANSPORT)
    d = spec.unpack_sgl(sgl)
    assert (d.length, d.type, d.subtype) == (4096, 5, 0xA)


def test_data_digest_mismatch_is_reported_not_raised() -> None:
    sqe = spec.pack_sqe(spec.IO_WRITE, 1, 1)
    raw = bytearray(_join(P.encode_capsule_cmd(sqe, b"a" * 512, ddgst=True)))
    raw[-1] ^= 0xFF
    [p] = _ctrl_reader(False, True).feed(raw)
    assert not p.ddgst_ok


def _err(raw: bytes, reader: P.PduReader | None = None) -> P.PduError:
    r = reader or _ctrl_reader()
    with pytest.raises(P.PduError) as ei:
        r.feed(raw)
    # sticky: the reader refuses to continue after a fatal error
    with pytest.raises(P.PduError):
        list(r.pdus())
    return ei.value


SQE = spec.pack_sqe(spec.ADMIN_KEEP_ALIVE, 1)


@pytest.mark.parametrize(
    ("raw", "fes", "fei"),
    [
        (P.CH.pack(0x0B, 0, 24, 0, 24) + bytes(16), P.FES_INVALID_HEADER_FIELD, 0),  # unknown type
        (
            P.CH.pack(P.CAPSULE_RESP, 0, 24, 0, 24) + bytes(16),
            P.FES_INVALID_HEADER_FIELD,
            0,
        ),  # wrong direction
        (P.encode_icreq(), P.FES_PDU_SEQUENCE_ERROR, 0),  # second ICReq
        (P.CH.pack(P.CAPSULE_CMD, 0, 70, 0, 72) + SQE, P.FES_INVALID_HEADER_FIELD, 2),  # HLEN
        (
            P.CH.pack(P.CAPSULE_CMD, 0, 72, 0, 60) + SQE,
            P.FES_INVALID_HEADER_FIELD,
            4,
        ),  # PLEN < HLEN
        (
            P.CH.pack(P.CAPSULE_CMD, 0, 72, 8, 80) + SQE + bytes(8),
            P.FES_INVALID_HEADER_FIELD,
            3,
        ),  # PDO
        (
            P.CH.pack(P.CAPSULE_CMD, 0, 72, 74, 80) + SQE + bytes(8),
            P.FES_INVALID_HEADER_FIELD,
            3,
        ),  # PDO align
        (
            P.CH.pack(P.CAPSULE_CMD, P.FLAG_HDGSTF, 72, 0, 76) + SQE + bytes(4),
            P.FES_INVALID_HEADER_FIELD,
            1,
        ),
        (
            P.CH.pack(P.CAPSULE_CMD, 0, 72, 72, 72 + 9000) + SQE + bytes(9000),
            P.FES_DATA_LIMIT_EXCEEDED,
            4,
        ),
        (P.CH.pack(P.H2C_DATA, 0, 24, 0, 24) + bytes(16), P.FES_INVALID_HEADER_FIELD, 4),  # no data
        (
            P.DATA_HDR.pack(P.H2C_DATA, 0, 24, 24, 24 + 8, 1, 1, 0, 9) + bytes(8),
            P.FES_INVALID_HEADER_FIELD,
            16,
        ),
        (P.CH.pack(P.H2C_TERM_REQ, 0, 24, 0, 24 + 200) + bytes(216), P.FES_INVALID_HEADER_FIELD, 4),
        (P.CH.pack(P.CAPSULE_CMD, 0, 72, 0, 1 << 30) + SQE, P.FES_DATA_LIMIT_EXCEEDED, 4),
    ],
)
def test_framing_errors(raw: bytes, fes: int, fei: int) -> None:
    e = _err(raw)
    assert (e.fes, e.fei) == (fes, fei), e.msg
    assert e.header == raw[: min(len(raw), 128)][: len(e.header)] and e.header


def test_before_icreq_is_sequence_error() -> None:
    r = P.PduReader(P.CONTROLLER)
    e = _err(_join(P.encode_capsule_cmd(SQE)), r)
    assert (e.fes, e.fei) == (P.FES_PDU_SEQUENCE_ERROR, 0)


def test_header_digest_error() -> None:
    raw = bytearray(_join(P.encode_capsule_cmd(SQE, hdgst=True)))
    raw[10] ^= 1  # corrupt the SQE
    e = _err(bytes(raw), _ctrl_reader(hd=True))
    assert (e.fes, e.fei) == (P.FES_HDGST_ERROR, 72)


def test_byte_by_byte_and_buffer_reuse() -> None:
    r = _ctrl_reader(True, True, bufsize=4096)
    pdus = []
    for i in range(50):
        sqe = spec.pack_sqe(spec.IO_WRITE, i, 1)
        pdus.append(_join(P.encode_capsule_cmd(sqe, bytes([i]) * (i * 40 + 1), True, True)))
    stream = b"".join(pdus)
    got = []
    kept = []
    for k in range(0, len(stream), 7):
        for p in r.feed(stream[k : k + 7]):
            got.append((spec.unpack_sqe(p.hdr, 8).cid, bytes(p.data)))  # type: ignore[arg-type]
            if p.data is not None and len(kept) < 5:
                kept.append((bytes(p.data), p.data))  # a live view must never be overwritten
    assert got == [(i, bytes([i]) * (i * 40 + 1)) for i in range(50)]
    for want, view in kept:
        assert bytes(view) == want


_sqe = st.binary(min_size=64, max_size=64)


@settings(max_examples=200, deadline=None)
@given(
    sqe=_sqe,
    data=st.one_of(st.none(), st.binary(min_size=1, max_size=3000)),
    hd=st.booleans(),
    dd=st.booleans(),
    pda=st.integers(0, 31),
    chunk=st.integers(1, 600),
)
def test_roundtrip_capsule(
    sqe: bytes, data: bytes | None, hd: bool, dd: bool, pda: int, chunk: int
) -> None:
    raw = _join(P.encode_capsule_cmd(sqe, data, hd, dd, pda))
    r = _ctrl_reader(hd, dd)
    r.max_data[P.CAPSULE_CMD] = 4096
    r.rx_pda = pda
    out = []
    for i in range(0, len(raw), chunk):
        out += [
            (bytes(p.hdr[8:]), None if p.data is None else bytes(p.data), p.ddgst_ok)
            for p in r.feed(raw[i : i + chunk])
        ]
    assert out == [(sqe, data, True)]


@settings(max_examples=200, deadline=None)
@given(
    cid=st.integers(0, 0xFFFF),
    ttag=st.integers(0, 0xFFFF),
    off=st.integers(0, 1 << 20),
    data=st.binary(min_size=1, max_size=5000),
    hd=st.booleans(),
    dd=st.booleans(),
    last=st.booleans(),
    success=st.booleans(),
)
def test_roundtrip_c2h(
    cid: int, ttag: int, off: int, data: bytes, hd: bool, dd: bool, last: bool, success: bool
) -> None:
    raw = _join(P.encode_data(P.C2H_DATA, cid, ttag, off, data, last, success, hd, dd))
    r = P.PduReader(P.HOST)
    r.ic_done, r.hdgst, r.ddgst = True, hd, dd
    [p] = r.feed(raw)
    assert P.parse_data_hdr(p.hdr) == (cid, ttag, off, len(data))
    assert bytes(p.data) == data and p.ddgst_ok  # type: ignore[arg-type]
    assert (
        bool(p.flags & P.FLAG_DATA_LAST) == last and bool(p.flags & P.FLAG_DATA_SUCCESS) == success
    )


@settings(max_examples=500, deadline=None)
@given(
    blob=st.binary(max_size=2000),
    ic_done=st.booleans(),
    hd=st.booleans(),
    dd=st.booleans(),
    role=st.sampled_from([P.CONTROLLER, P.HOST]),
    chunk=st.integers(1, 300),
)
def test_fuzz_reader_only_raises_pdu_error(
    blob: bytes, ic_done: bool, hd: bool, dd: bool, role: str, chunk: int
) -> None:
    r = P.PduReader(
        role, max_data={P.CAPSULE_CMD: 1024, P.H2C_DATA: 1024, P.C2H_DATA: 1024}, bufsize=512
    )
    r.ic_done, r.hdgst, r.ddgst = ic_done, hd, dd
    try:
        for i in range(0, len(blob), chunk):
            for p in r.feed(blob[i : i + chunk]):
                assert p.plen >= p.hlen and len(p.hdr) == p.hlen
    except P.PduError as e:
        assert e.fes in (1, 2, 3, 4, 5, 6)
        assert 0 <= e.fei < 256


@settings(max_examples=300, deadline=None)
@given(prefix=st.binary(min_size=8, max_size=8), tail=st.binary(max_size=200))
def test_fuzz_headers_after_valid_icreq(prefix: bytes, tail: bytes) -> None:
    r = P.PduReader(P.CONTROLLER, max_data={P.CAPSULE_CMD: 8192})
    [ic] = r.feed(P.encode_icreq())
    r.ic_done = True
    try:
        r.feed(prefix + tail)
    except P.PduError:
        pass
