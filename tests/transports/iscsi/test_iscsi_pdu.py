"""PDU codec, PduReader framing and text parsing."""

from __future__ import annotations

import struct

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.iscsi import text


def test_encode_layout_and_padding() -> None:
    bufs = P.encode(
        P.OP_DATA_IN,
        0x81,
        0,
        0,
        P.int_to_lun(3),
        0x11223344,
        (1, 2, 3, 4, 5, 6, 7),
        [memoryview(b"abc"), b"de"],
    )
    raw = b"".join(bytes(b) for b in bufs)
    assert raw[0] == 0x25 and raw[1] == 0x81
    assert raw[4] == 0 and raw[5:8] == b"\x00\x00\x05"
    assert raw[8:10] == b"\x00\x03"
    assert struct.unpack(">I", raw[16:20])[0] == 0x11223344
    assert struct.unpack(">7I", raw[20:48]) == (1, 2, 3, 4, 5, 6, 7)
    assert raw[48:] == b"abcde\0\0\0"
    # data-in views travel as they are: no concatenation
    assert any(isinstance(b, memoryview) for b in bufs)


def test_digests() -> None:
    bufs = P.encode(P.OP_NOP_IN, 0x80, data=b"hello", header_digest=True, data_digest=True)
    raw = b"".join(bytes(b) for b in bufs)
    assert len(raw) == 48 + 4 + 8 + 4
    assert struct.unpack("<I", raw[48:52])[0] == crc32c.crc32c(raw[:48])
    assert struct.unpack("<I", raw[60:64])[0] == crc32c.crc32c(b"hello\0\0\0")


def test_reader_round_trip_byte_by_byte() -> None:
    req = P.encode_request(
        P.OP_SCSI_CMD, 0xC1, P.int_to_lun(1), 9, (512, 7, 8, 0x28000000, 0, 0, 0), b"x" * 13
    )
    r = P.PduReader()
    got: list[P.Pdu] = []
    for i in range(len(req) * 2):
        got += r.feed_bytes(req[i % len(req) : i % len(req) + 1])  # type: ignore[arg-type]
    assert len(got) == 2
    p = got[0]
    assert isinstance(p, P.Pdu)
    assert (p.opcode, p.itt, p.edtl, p.cmdsn, p.exp_statsn) == (P.OP_SCSI_CMD, 9, 512, 7, 8)
    assert P.lun_to_int(p.lun) == 1 and p.cdb[0] == 0x28 and bytes(p.data) == b"x" * 13


def test_reader_digests_and_errors() -> None:
    r = P.PduReader(header_digest=True, data_digest=True)
    req = P.encode_request(
        P.OP_NOP_OUT,
        0x80,
        0,
        1,
        (P.RSVD_TAG, 0, 0, 0, 0, 0, 0),
        b"abcd",
        header_digest=True,
        data_digest=True,
    )
    assert len(r.feed_bytes(req)) == 1
    bad = bytearray(req)
    bad[-1] ^= 1
    out = r.feed_bytes(bytes(bad))
    assert (
        isinstance(out[0], P.PduError) and out[0].reason == P.REJ_DATA_DIGEST and not out[0].fatal
    )
    assert len(r.feed_bytes(req)) == 1  # still framed
    bad = bytearray(req)
    bad[49] ^= 1
    out = r.feed_bytes(bytes(bad))
    assert isinstance(out[0], P.PduError) and out[0].fatal and r.broken


def test_reader_rejects_oversized_segment() -> None:
    r = P.PduReader(max_recv_dlen=512)
    out = r.feed_bytes(P.encode_request(P.OP_NOP_OUT, 0x80, 0, 1, (0,) * 7, b"a" * 1024))
    assert (
        isinstance(out[0], P.PduError)
        and out[0].fatal
        and "MaxRecvDataSegmentLength" in str(out[0])
    )


def test_lun_formats() -> None:
    assert P.lun_to_int(P.int_to_lun(5)) == 5
    assert P.lun_to_int(P.int_to_lun(300)) == 300
    assert P.lun_to_int(0xC000 << 48) == 0xFFFF


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=200), max_size=20))
def test_reader_fuzz_never_crashes(chunks: list[bytes]) -> None:
    r = P.PduReader(max_recv_dlen=1024, header_digest=bool(len(chunks) % 2))
    for c in chunks:
        for item in r.feed_bytes(c):
            if isinstance(item, P.PduError):
                assert item.reason in (P.REJ_PROTOCOL, P.REJ_NOT_SUPPORTED, P.REJ_DATA_DIGEST)
            else:
                assert item.dlen == len(item.data) <= 1024


@given(st.lists(st.tuples(st.integers(0, 0x3F), st.binary(max_size=300)), max_size=5))
def test_reader_frames_valid_streams(items: list[tuple[int, bytes]]) -> None:
    stream = b"".join(P.encode_request(P.OP_TEXT_REQ, 0x80, 0, i, (0,) * 7, d) for i, d in items)
    out = P.PduReader().feed_bytes(stream)
    assert [(p.itt, bytes(p.data)) for p in out] == items  # type: ignore[union-attr]


# ------------------------------------------------------------------ text
def test_text_parse_and_encode() -> None:
    pairs = [("InitiatorName", "iqn.1994-05.com.redhat:x"), ("X-a.b", ""), ("SendTargets", "All")]
    assert text.parse(text.encode(pairs)) == pairs
    assert text.parse(b"A=1\0B=2") == [("A", "1"), ("B", "2")]


@pytest.mark.parametrize(
    "raw",
    [
        b"NoEquals\0",
        b"A=1\0A=2\0",
        b"=v\0",
        ("K" * 64).encode() + b"=1\0",
        b"K=" + b"v" * 256 + b"\0",
        b"K y=1\0",
        b"K=\xff\0",
    ],
)
def test_text_errors(raw: bytes) -> None:
    with pytest.raises(text.TextError):
        text.parse(raw)


def test_text_long_values_allowed_for_chap() -> None:
    assert text.parse(b"CHAP_C=0x" + b"a" * 2000 + b"\0")[0][0] == "CHAP_C"


@given(st.binary(max_size=400))
def test_text_fuzz(raw: bytes) -> None:
    try:
        out = text.parse(raw)
    except text.TextError:
        return
    assert len({k for k, _ in out if k not in ("TargetAddress", "TargetName")}) == len(
        [k for k, _ in out if k not in ("TargetAddress", "TargetName")]
    )
