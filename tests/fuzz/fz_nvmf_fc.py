"""FC-NVMe codecs and target LS handling (transports/nvmf/fc_ls.py, fc_iu.py,
fc_assoc.py) and the loopback LLD's framing (transports/fc/frame.py).

Input: byte 0 selects the parser (0: LS requests into one FcNexus, 1: CMD
IU, 2: response IU, 3: LS response, else: loopback frames); byte 1 = where
the input is cut (frames: into two receives; LS: into two requests). The
only documented errors are IuError/LsError/FrameError; every LS request
must be answered with an LS_ACC or LS_RJT that decodes."""

from __future__ import annotations

from collections.abc import Iterable

from fuzzlib import Bytes

from blockfabric.transports.fc import frame as F
from blockfabric.transports.nvmf import fc_assoc as A
from blockfabric.transports.nvmf import fc_iu as IU
from blockfabric.transports.nvmf import fc_ls as LS

SUBNQN = "nqn.2016-06.io.spdk:cnode1"


def _check(sub: str, _host: str) -> tuple[int, int, str] | None:
    if sub != SUBNQN:
        return (LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_SUBNQN, "unknown subsystem")
    return None


def _ls(parts: list[bytes]) -> None:
    nx = A.FcNexus(A.NexusLimits(max_associations=4), _check)
    for p in parts:
        out = nx.handle_ls(p)
        resp = LS.decode_response(out.response)
        if isinstance(resp, LS.LsRejected):
            assert out.rejected is not None and out.created is None
        else:
            assert out.rejected is None
    assert len(nx.assocs) <= 4
    for c in nx.conns.values():
        assert c.conn_id & A.QID_MASK == c.qid and c.assoc.assoc_id in nx.assocs


def _frames(stream: bytes, k: int) -> list[tuple[int, int, int, int, bytes]] | str:
    r = F.FrameReader(max_payload=8192)
    got: list[tuple[int, int, int, int, bytes]] = []
    try:
        for c in (stream[:k], stream[k:]):
            for f in r.feed(c):
                got.append((f.type, f.xid, f.offset, f.length, bytes(f.payload)))
    except F.FrameError as e:
        return str(e)
    assert r.pending < F.HDR_LEN + 8192
    return got


def one_input(data: bytes) -> None:
    b = Bytes(data)
    sel = b.u8()
    cut = b.u8()
    rest = b.rest()
    k = cut * len(rest) // 256
    if sel == 0:
        _ls([rest[:k], rest[k:]])
    elif sel == 1:
        try:
            iu = IU.decode_cmd_iu(rest)
        except IU.IuError:
            return
        assert (
            IU.decode_cmd_iu(IU.encode_cmd_iu(iu.conn_id, iu.csn, iu.data_len, iu.flags, iu.sqe))
            == iu
        )
    elif sel == 2:
        try:
            IU.decode_response(rest)
        except IU.IuError:
            pass
    elif sel == 3:
        try:
            LS.decode_response(rest)
        except LS.LsError:
            pass
    else:
        whole = _frames(rest, len(rest))
        split = _frames(rest, k)
        if isinstance(whole, str):
            assert isinstance(split, str)
        else:
            assert whole == split, "framing depends on how the bytes arrive"


def seeds() -> Iterable[bytes]:
    cass = LS.encode_request(
        LS.CreateAssociation(
            8, 0xFFFF, 31, b"\x01" * 16, "nqn.2014-08.org.nvmexpress:uuid:x", SUBNQN
        )
    )
    yield bytes([0, 0xFF]) + cass
    yield bytes([0, 0x80]) + cass + LS.encode_request(LS.CreateConnection(1 << 16, 8, 1, 127))
    yield bytes([0, 0x80]) + cass + LS.encode_request(LS.Disconnect(1 << 16))
    sqe = bytes(range(64))
    yield bytes([1, 0]) + IU.encode_cmd_iu(0x10001, 1, 4096, IU.FLAG_READ, sqe)
    yield bytes([2, 0]) + IU.encode_ersp_iu(1, 4096, bytes(16))
    yield bytes([2, 0]) + IU.GOOD_RSP
    yield bytes([3, 0]) + LS.encode_accept(LS.LsAccept(LS.LS_CREATE_ASSOCIATION, 1 << 16, 1 << 16))
    yield bytes([3, 0]) + LS.encode_reject(LS.LS_CREATE_CONNECTION, LS.RJT_RC_INV_ASSOC, 0)
    login = F.encode(F.T_LOGIN, 0, bytes(range(32)))
    cmd = F.encode(F.T_CMD, 5, IU.encode_cmd_iu(0x10001, 1, 512, IU.FLAG_WRITE, sqe))
    yield (
        bytes([4, 0x40])
        + login
        + cmd
        + F.xfer_rdy(5, 0, 512)
        + F.encode(F.T_DATA, 5, b"\x5a" * 512)
    )
    yield bytes([4, 0x90]) + F.encode(F.T_LS_REQ, 1, cass) + F.encode(F.T_RSP, 5, IU.GOOD_RSP)
