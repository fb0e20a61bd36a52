"""FC-NVMe codecs: CMD IU / ERSP, link services, FC addresses, loopback frames.

Round trips and malformed input (hypothesis): every decoder either returns
the value encoded or raises its one documented error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockfabric.transports.fc import addr as FA
from blockfabric.transports.fc import frame as F
from blockfabric.transports.nvmf import fc_iu as IU
from blockfabric.transports.nvmf import fc_ls as LS

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
nqn = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FFF, blacklist_categories=("Cs",)),
    min_size=1,
    max_size=60,
).filter(lambda s: len(s.encode()) < 256)


# ------------------------------------------------------------------ CMD IU
@given(
    u64,
    u32,
    u32,
    st.sampled_from([IU.FLAG_READ, IU.FLAG_WRITE]),
    st.binary(min_size=64, max_size=64),
)
def test_cmd_iu_round_trip(conn: int, csn: int, dlen: int, flags: int, sqe: bytes) -> None:
    b = IU.encode_cmd_iu(conn, csn, dlen, flags, sqe)
    assert len(b) == IU.CMD_IU_LEN
    assert b[0] == 0xFD and b[1] == 0x28 and struct.unpack(">H", b[2:4])[0] == 24
    iu = IU.decode_cmd_iu(b)
    assert (iu.conn_id, iu.csn, iu.data_len, iu.flags, iu.sqe) == (conn, csn, dlen, flags, sqe)


def test_cmd_iu_no_data() -> None:
    iu = IU.decode_cmd_iu(IU.encode_cmd_iu(1, 2, 0, 0, bytes(64)))
    assert not iu.read and not iu.write and iu.data_len == 0


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda b: b[:95], "length"),
        (lambda b: b"\xfe" + b[1:], "format id"),
        (lambda b: b[:1] + b"\x08" + b[2:], "FC id"),
        (lambda b: b[:2] + b"\x00\x17" + b[4:], "length field"),
        (lambda b: b[:7] + b"\x03" + b[8:], "flags"),
        (lambda b: b[:7] + b"\x00" + b[8:], "without a data direction"),
    ],
)
def test_cmd_iu_malformed(mutate, why: str) -> None:  # type: ignore[no-untyped-def]
    good = IU.encode_cmd_iu(1, 2, 4096, IU.FLAG_READ, bytes(64))
    with pytest.raises(IU.IuError, match=why):
        IU.decode_cmd_iu(mutate(good))


@given(st.binary(max_size=200))
def test_cmd_iu_garbage(b: bytes) -> None:
    try:
        IU.decode_cmd_iu(b)
    except IU.IuError:
        pass


# ----------------------------------------------------------- responses
@given(u32, u32, st.binary(min_size=16, max_size=16))
def test_ersp_round_trip(rsn: int, xfrd: int, cqe: bytes) -> None:
    b = IU.encode_ersp_iu(rsn, xfrd, cqe)
    assert len(b) == 32 and struct.unpack(">H", b[2:4])[0] == 8
    r = IU.decode_response(b)
    assert r is not None and (r.rsn, r.xfrd_len, r.cqe) == (rsn, xfrd, cqe)


def test_good_response() -> None:
    assert IU.decode_response(IU.GOOD_RSP) is None
    with pytest.raises(IU.IuError):
        IU.decode_response(b"\x01" + bytes(11))
    with pytest.raises(IU.IuError):
        IU.decode_response(bytes(20))


@given(st.binary(max_size=64))
def test_response_garbage(b: bytes) -> None:
    try:
        IU.decode_response(b)
    except IU.IuError:
        pass


def test_need_ersp() -> None:
    ok = bytes(16)
    assert not IU.need_ersp(0, 4096, 4096, ok, 1, 8)
    assert IU.need_ersp(0, 4096, 4096, ok, 8, 8)  # ratio reached
    assert IU.need_ersp(0x0004, 4096, 4096, ok, 1, 8)  # error status
    assert IU.need_ersp(0, 512, 4096, ok, 1, 8)  # short transfer
    assert IU.need_ersp(0, 0, 0, b"\x01" + bytes(15), 1, 8)  # dw0 result
    assert not IU.need_ersp(1, 0, 0, ok, 1, 0)  # phase bit alone, ratio 0 = never


# ------------------------------------------------------------ link services
requests = st.one_of(
    st.builds(LS.CreateAssociation, u16, u16, u16, st.binary(min_size=16, max_size=16), nqn, nqn),
    st.builds(LS.CreateConnection, u64, u16, u16, u16),
    st.builds(LS.Disconnect, u64),
)


@given(requests)
def test_ls_request_round_trip(req: LS.LsRequest) -> None:
    b = LS.encode_request(req)
    if isinstance(req, LS.CreateAssociation):
        assert len(b) == LS.CASS_RQST_LEN == 1024
    elif isinstance(req, LS.CreateConnection):
        assert len(b) == LS.CIOC_RQST_LEN
    else:
        assert len(b) == LS.DISC_RQST_LEN
    assert LS.decode_request(b) == req


@given(
    st.one_of(
        st.builds(LS.LsAccept, st.just(LS.LS_CREATE_ASSOCIATION), u64, u64),
        st.builds(LS.LsAccept, st.just(LS.LS_CREATE_CONNECTION), st.none(), u64),
        st.builds(LS.LsAccept, st.just(LS.LS_DISCONNECT)),
    )
)
def test_ls_accept_round_trip(acc: LS.LsAccept) -> None:
    assert LS.decode_response(LS.encode_accept(acc)) == acc


@given(st.integers(3, 5), st.integers(0, 255), st.integers(0, 255))
def test_ls_reject_round_trip(cmd: int, rc: int, exp: int) -> None:
    r = LS.decode_response(LS.encode_reject(cmd, rc, exp))
    assert r == LS.LsRejected(cmd, rc, exp, 0)


def test_cass_without_padding_is_accepted() -> None:
    """Linux checks the CASS descriptor only up to the end of the subsystem NQN."""
    full = LS.encode_request(LS.CreateAssociation(0, 0xFFFF, 31, bytes(16), "h", "s"))
    short = bytearray(full[: 8 + 8 + LS.CASS_DESC_MIN_LEN])
    struct.pack_into(">I", short, 4, len(short) - 8)
    struct.pack_into(">I", short, 12, LS.CASS_DESC_MIN_LEN)
    assert LS.decode_request(bytes(short)).subnqn == "s"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "payload, reason, exp",
    [
        (b"", LS.RJT_RC_INVAL, LS.RJT_EXP_INV_LEN),
        (bytes([0x09, 0, 0, 0, 0, 0, 0, 0]), LS.RJT_RC_INVAL, LS.RJT_EXP_NONE),  # unknown command
        (bytes([0x03, 0, 0, 0, 0, 0, 0, 9]), LS.RJT_RC_INVAL, LS.RJT_EXP_INV_LEN),  # list length
    ],
)
def test_ls_reject_reasons(payload: bytes, reason: int, exp: int) -> None:
    with pytest.raises(LS.LsReject) as ei:
        LS.decode_request(payload)
    assert (ei.value.reason, ei.value.explanation) == (reason, exp)


def test_ls_bad_nqns() -> None:
    good = bytearray(LS.encode_request(LS.CreateAssociation(0, 0xFFFF, 31, bytes(16), "h", "s")))
    host_off = 8 + 8 + 2 + 2 + 36 + 2 + 2 + 4 + 16
    bad = bytearray(good)
    bad[host_off : host_off + 256] = b"x" * 256  # no NUL terminator
    with pytest.raises(LS.LsReject) as ei:
        LS.decode_request(bytes(bad))
    assert ei.value.explanation == LS.RJT_EXP_INV_HOSTNQN
    bad = bytearray(good)
    bad[host_off + 256] = 0  # empty subsystem NQN
    with pytest.raises(LS.LsReject) as ei:
        LS.decode_request(bytes(bad))
    assert ei.value.explanation == LS.RJT_EXP_INV_SUBNQN
    bad = bytearray(good)
    bad[host_off : host_off + 2] = b"\xff\xfe"
    with pytest.raises(LS.LsReject) as ei:
        LS.decode_request(bytes(bad))
    assert ei.value.explanation == LS.RJT_EXP_INV_HOSTNQN


@settings(max_examples=300)
@given(st.binary(max_size=1100))
def test_ls_request_garbage(b: bytes) -> None:
    try:
        LS.decode_request(b)
    except LS.LsReject as e:
        LS.decode_response(LS.reject_for(e))  # the answer always encodes


@given(requests, st.integers(0, 1100), st.integers(0, 255))
def test_ls_request_mutated(req: LS.LsRequest, pos: int, val: int) -> None:
    b = bytearray(LS.encode_request(req))
    b[pos % len(b)] = val
    try:
        LS.decode_request(bytes(b))
    except LS.LsReject:
        pass


@given(st.binary(max_size=200))
def test_ls_response_garbage(b: bytes) -> None:
    try:
        LS.decode_response(b)
    except LS.LsError:
        pass


# ------------------------------------------------------------------ address
@given(st.integers(1, (1 << 64) - 1), st.integers(1, (1 << 64) - 1))
def test_traddr_round_trip(nn: int, pn: int) -> None:
    n = FA.FcName(nn, pn)
    assert FA.parse_traddr(n.traddr) == n
    assert (
        FA.parse_traddr(n.traddr.upper().replace("NN-0X", "nn-0x").replace("PN-0X", "pn-0x")) == n
    )
    assert FA.FcName.unpack(n.pack()) == n


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "nn-0x2000000000000001",
        "pn-0x1000000000000001:nn-0x2000000000000001",
        "nn-0x200000000000001:pn-0x1000000000000001",
        "nn-0x2000000000000001:pn-0x10000000000000011",
        "nn-0x0000000000000000:pn-0x1000000000000001",
        "nn-2000000000000001:pn-1000000000000001",
    ],
)
def test_traddr_invalid(bad: str) -> None:
    with pytest.raises(FA.FcAddrError):
        FA.parse_traddr(bad)


# ------------------------------------------------------------ loopback frames
frames = st.lists(
    st.one_of(
        st.tuples(st.just(F.T_CMD), u32, st.just(0), st.binary(min_size=96, max_size=96)),
        st.tuples(st.just(F.T_DATA), u32, u32, st.binary(min_size=1, max_size=300)),
        st.tuples(st.just(F.T_LS_REQ), u32, st.just(0), st.binary(max_size=300)),
        st.tuples(st.just(F.T_RSP), u32, st.just(0), st.sampled_from([bytes(12), bytes(32)])),
        st.tuples(st.just(F.T_ABTS), u32, st.just(0), st.just(b"")),
    ),
    max_size=8,
)


@given(frames, st.lists(st.integers(1, 64), max_size=20))
def test_frames_round_trip_any_split(fs, cuts) -> None:  # type: ignore[no-untyped-def]
    stream = b"".join(F.encode(t, x, p, o) for t, x, o, p in fs)
    r = F.FrameReader(max_payload=512)
    got = []
    pos = 0
    for c in [*cuts, len(stream)]:
        got += r.feed(stream[pos : pos + c])
        pos += c
    got += r.feed(stream[pos:])
    assert [(f.type, f.xid, f.offset, bytes(f.payload)) for f in got] == [
        (t, x, o, p) for t, x, o, p in fs
    ]
    assert r.pending == 0


def test_frame_bounds_before_buffering() -> None:
    r = F.FrameReader(max_payload=4096)
    with pytest.raises(F.FrameError, match="payload"):
        r.feed(F.header(F.T_DATA, 1, 0, 4097))  # refused on the header alone
    with pytest.raises(F.FrameError, match="payload"):
        F.FrameReader(4096).feed(F.header(F.T_CMD, 1, 0, 97))
    with pytest.raises(F.FrameError, match="unknown"):
        F.FrameReader(4096).feed(bytes([99]) + bytes(15))
    with pytest.raises(F.FrameError, match="reserved"):
        F.FrameReader(4096).feed(bytes([F.T_CMD, 1]) + bytes(14))
    with pytest.raises(F.FrameError, match="XFER_RDY"):
        F.FrameReader(4096).feed(F.xfer_rdy(1, 0, 0))
    with pytest.raises(F.FrameError, match="without data"):
        F.FrameReader(4096).feed(F.header(F.T_DATA, 1, 0, 0))
    with pytest.raises(F.FrameError, match="LOGIN"):
        F.FrameReader(4096).feed(F.encode(F.T_LOGIN, 0, bytes(31)))


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_frames_garbage(b: bytes) -> None:
    r = F.FrameReader(max_payload=256)
    try:
        r.feed(b)
    except F.FrameError:
        return
    assert r.pending < F.HDR_LEN + 256
