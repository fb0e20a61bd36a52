"""datain.DataInPacker: the one Data-In packer of both READ paths. Its
one-PDU branch (the fast path's common case) must give the same bytes as the
general loop, and the general loop must follow RFC 7143 11.7 (segment sizes,
F bit per burst, DataSN, offsets, status only in the last PDU)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.iscsi.datain import DataInPacker

ITT, LUN = 0x1234, 0x0001000000000000


def _packer(maxlen: int, burst: int, hd: bool = False, dd: bool = False) -> DataInPacker:
    p = DataInPacker()
    p.configure(maxlen, burst, hd, dd)
    return p


def _bytes(pdus: list[list[Any]]) -> list[bytes]:
    return [b"".join(bytes(x) for x in pdu) for pdu in pdus]


def _decode(raw: bytes, hd: bool = False, dd: bool = False) -> P.Pdu:
    # Data-In is a target opcode (PduReader refuses it): frame it by hand
    dlen = int.from_bytes(raw[5:8], "big")
    off = P.BHS_LEN + (4 if hd else 0)
    return P.Pdu(raw[:48], b"", raw[off : off + dlen])


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 64).map(lambda k: k * 4),
    maxlen=st.sampled_from([512, 1024, 8192, 262144]),
    burst=st.sampled_from([512, 4096, 262144]),
    status=st.sampled_from([0, 2]),
    flags=st.sampled_from([0, P.F_UNDERFLOW, P.F_OVERFLOW]),
    residual=st.integers(0, 4096),
    extra=st.integers(0, 8),
)
def test_fast_branch_equals_general_loop(
    total: int, maxlen: int, burst: int, status: int, flags: int, residual: int, extra: int
) -> None:
    p = _packer(maxlen, burst)
    data = bytes((i * 7) & 0xFF for i in range(total + extra))  # more than asked: cut
    args = (ITT, LUN, [memoryview(data)], total, status, flags, residual, True, 77, 5, 68)
    fast = p.pack(*args)
    p.single = 0  # the general loop only
    general = p.pack(*args)
    assert _bytes(fast) == _bytes(general)


def test_fast_branch_is_taken_and_matches_encode() -> None:
    p = _packer(8192, 262144)
    data = memoryview(bytes(range(256)) * 16)
    out = p.pack(ITT, LUN, [data], 4096, 0, 0, 0, True, 9, 10, 73)
    assert len(out) == 1 and out[0][1] is data  # no copy, no encode
    ref = P.encode(
        P.OP_DATA_IN, P.F_FINAL | P.F_STATUS, 0, 0, LUN, ITT, (P.RSVD_TAG, 9, 10, 73, 0, 0, 0), data
    )
    assert _bytes(out) == _bytes([ref])


def test_general_loop_follows_rfc_7143() -> None:
    p = _packer(1024, 2048)
    pieces = [memoryview(b"a" * 1500), memoryview(b"b" * 3000)]  # 4500 bytes in 2 pieces
    out = p.pack(ITT, LUN, pieces, 4500, 0, P.F_UNDERFLOW, 500, True, 40, 3, 66)
    pdus = [_decode(b) for b in _bytes(out)]
    assert [len(x.data) for x in pdus] == [1024, 1024, 1024, 1024, 404]
    assert [x.buffer_offset for x in pdus] == [0, 1024, 2048, 3072, 4096]
    assert [x.datasn for x in pdus] == [0, 1, 2, 3, 4]
    # F at every MaxBurstLength boundary and at the end; S only on the last
    assert [bool(x.f1 & P.F_FINAL) for x in pdus] == [False, True, False, True, True]
    assert [bool(x.f1 & P.F_STATUS) for x in pdus] == [False] * 4 + [True]
    last = pdus[-1]
    assert last.f1 & P.F_UNDERFLOW and last.w24 == 40 and last.w44 == 500
    assert all(x.w24 == 0 and x.w28 == 3 and x.w32 == 66 for x in pdus[:-1])
    assert b"".join(bytes(x.data) for x in pdus) == b"a" * 1500 + b"b" * 3000


def test_without_collapse_no_status_is_sent() -> None:
    p = _packer(8192, 262144)
    out = p.pack(ITT, LUN, [memoryview(b"z" * 512)], 512, 2, 0, 0, False, 40, 3, 66)
    (pdu,) = [_decode(b) for b in _bytes(out)]
    assert pdu.f1 == P.F_FINAL and pdu.w24 == 0


def test_digests_and_padding_take_the_general_loop() -> None:
    p = _packer(8192, 262144, hd=True, dd=True)
    data = memoryview(b"q" * 1000)
    out = p.pack(ITT, LUN, [data], 1000, 0, 0, 0, True, 1, 2, 3)
    ref = P.encode(
        P.OP_DATA_IN,
        P.F_FINAL | P.F_STATUS,
        0,
        0,
        LUN,
        ITT,
        (P.RSVD_TAG, 1, 2, 3, 0, 0, 0),
        [data],
        True,
        True,
    )
    assert _bytes(out) == _bytes([ref])
    p2 = _packer(8192, 262144)
    out2 = p2.pack(ITT, LUN, [memoryview(b"q" * 1001)], 1001, 0, 0, 0, True, 1, 2, 3)
    assert len(_bytes(out2)[0]) == 48 + 1004  # padded to 4
