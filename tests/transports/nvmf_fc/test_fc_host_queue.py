"""The FC host queue (transports/nvmf_host/fc.py), sans-I/O: frames in, frames out."""

from __future__ import annotations

import struct

import pytest

from blockfabric.transports.fc import frame as F
from blockfabric.transports.fc.addr import FcName
from blockfabric.transports.nvmf import fc_iu as IU
from blockfabric.transports.nvmf import fc_ls as LS
from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host.fc import FcHostQueue, FcLsRejected, default_host_port
from blockfabric.transports.nvmf_host.queue import TransportError

HOST = FcName(0x2000000000000001, 0x1000000000000001)
TGT = FcName(0x2000000000000002, 0x1000000000000002)
AID = 0xABCD << 16


def frames(q: FcHostQueue) -> list[F.Frame]:
    data = b"".join(bytes(b) for b in q.take_tx())
    return F.FrameReader(1 << 20).feed(data)


def logged_in(qid: int = 0) -> FcHostQueue:
    q = FcHostQueue(HOST, TGT, qid, 32, "nqn.x:sub", "nqn.x:host", bytes(16), assoc_id=AID)
    q.start()
    (login,) = frames(q)
    assert login.type == F.T_LOGIN and bytes(login.payload) == HOST.pack() + TGT.pack()
    q.feed(F.encode(F.T_LOGIN_ACC, 0))
    (ls,) = frames(q)
    assert ls.type == F.T_LS_REQ
    req = LS.decode_request(ls.payload)
    if qid == 0:
        assert isinstance(req, LS.CreateAssociation)
        assert (req.subnqn, req.hostnqn, req.sqsize) == ("nqn.x:sub", "nqn.x:host", 31)
        acc = LS.LsAccept(LS.LS_CREATE_ASSOCIATION, AID, AID)
    else:
        assert req == LS.CreateConnection(AID, 0, qid, 31)
        acc = LS.LsAccept(LS.LS_CREATE_CONNECTION, None, AID | qid)
    q.feed(F.encode(F.T_LS_RSP, ls.xid, LS.encode_accept(acc)))
    assert q.ic_done and q.conn_id == AID | qid and q.assoc_id == AID
    return q


def test_cass_then_read_and_write() -> None:
    q = logged_in(0)
    q.icd_max = 4096  # even if the controller said so: FC never sends data in the capsule
    got: list[tuple[int, int]] = []
    dest = memoryview(bytearray(1024))
    q.read(1, 5, 2, dest, lambda r, st, res: got.append((st, res)))
    (cmd,) = frames(q)
    iu = IU.decode_cmd_iu(cmd.payload)
    assert iu.read and iu.data_len == 1024 and iu.conn_id == AID and iu.csn == 1
    assert iu.sqe[0] == S.IO_READ and iu.sqe[39] == S.SGL_TYPE_TRANSPORT
    q.feed(
        F.encode(F.T_DATA, cmd.xid, b"\x11" * 512, 0)
        + F.encode(F.T_DATA, cmd.xid, b"\x22" * 512, 512)
    )
    assert not got
    q.feed(F.encode(F.T_RSP, cmd.xid, IU.GOOD_RSP))
    assert got == [(0, 0)] and bytes(dest) == b"\x11" * 512 + b"\x22" * 512

    wdata = bytes(range(256)) * 8
    q.write(1, 0, 4, memoryview(wdata), lambda r, st, res: got.append((st, res)))
    (cmd,) = frames(q)
    iu = IU.decode_cmd_iu(cmd.payload)
    assert iu.write and iu.data_len == 2048 and iu.csn == 2
    q.feed(F.xfer_rdy(cmd.xid, 0, 2048))
    data = frames(q)
    assert [f.type for f in data] == [F.T_DATA] and bytes(data[0].payload) == wdata
    cqe = S.CQE.pack(7, 3, 0, cmd.xid, 0)
    q.feed(F.encode(F.T_RSP, cmd.xid, IU.encode_ersp_iu(1, 2048, cqe)))
    assert got[-1] == (0, 7) and q.outstanding == 0


def test_connect_data_goes_in_a_data_phase() -> None:
    q = logged_in(1)
    got: list[int] = []
    q.connect("nqn.x:sub", "nqn.x:host", bytes(16), 3, 0, lambda r, st, res: got.append(st))
    (cmd,) = frames(q)
    iu = IU.decode_cmd_iu(cmd.payload)
    assert iu.write and iu.data_len == S.CONNECT_DATA_SIZE and iu.sqe[0] == S.FABRICS_OPCODE
    assert iu.sqe[39] == S.SGL_TYPE_TRANSPORT  # not in-capsule
    assert struct.unpack_from("<H", iu.sqe, 42)[0] == 1  # qid
    q.feed(F.xfer_rdy(cmd.xid, 0, S.CONNECT_DATA_SIZE))
    (d,) = frames(q)
    assert struct.unpack_from("<H", d.payload, S.CONNECT_DATA_OFF_CNTLID)[0] == 3
    q.feed(F.encode(F.T_RSP, cmd.xid, IU.encode_ersp_iu(1, 1024, S.CQE.pack(3, 1, 1, cmd.xid, 0))))
    assert got == [0] and q.connected


def test_errors_and_short_reads() -> None:
    q = logged_in(0)
    got: list[int] = []
    dest = memoryview(bytearray(512))
    q.read(1, 0, 1, dest, lambda r, st, res: got.append(st))
    (cmd,) = frames(q)
    q.feed(F.encode(F.T_RSP, cmd.xid, IU.GOOD_RSP))  # "success" without the data
    assert got == [S.ST_DATA_TRANSFER_ERROR]
    q.read(1, 0, 1, dest, lambda r, st, res: got.append(st))
    (cmd,) = frames(q)
    cqe = S.CQE.pack(0, 0, 0, cmd.xid, S.ST_LBA_OUT_OF_RANGE | 1)
    q.feed(F.encode(F.T_RSP, cmd.xid, IU.encode_ersp_iu(1, 0, cqe)))
    assert got[-1] == S.ST_LBA_OUT_OF_RANGE  # phase bit dropped
    q.read(1, 0, 1, dest, lambda r, st, res: got.append(st))
    (cmd,) = frames(q)
    q.feed(F.encode(F.T_ABTS, cmd.xid))  # the target aborted it
    assert got[-1] == S.ST_ABORT_REQ and frames(q)[0].type == F.T_BA_ACC
    with pytest.raises(TransportError, match="outside its read buffer"):
        q.feed(F.encode(F.T_DATA, 0, b"x", 0))  # data for no open exchange


@pytest.mark.parametrize(
    "bad, match",
    [
        (F.encode(F.T_DATA, 0, b"x" * 600, 0), "outside"),
        (F.xfer_rdy(0, 0, 4096), "transfer-ready"),
        (F.encode(F.T_RSP, 0, b"\x01" * 12), "bad response"),
        (F.encode(F.T_CMD, 0, bytes(96)), "unexpected"),
        (bytes([77]) + bytes(15), "bad frame"),
    ],
)
def test_protocol_errors_fail_the_queue(bad: bytes, match: str) -> None:
    q = logged_in(0)
    q.read(1, 0, 1, memoryview(bytearray(512)), None)
    frames(q)
    with pytest.raises(TransportError, match=match):
        q.feed(bad)
    with pytest.raises(TransportError):
        q.feed(b"")  # failed for good


def test_ls_reject_and_login_reject() -> None:
    q = FcHostQueue(HOST, TGT, 2, 32, assoc_id=5 << 16)
    q.start()
    q.feed(F.encode(F.T_LOGIN_ACC, 0))
    (ls,) = frames(q)[-1:]
    rj = LS.encode_reject(LS.LS_CREATE_CONNECTION, LS.RJT_RC_INV_ASSOC, LS.RJT_EXP_NONE)
    with pytest.raises(FcLsRejected) as ei:
        q.feed(F.encode(F.T_LS_RSP, ls.xid, rj))
    assert ei.value.reason == LS.RJT_RC_INV_ASSOC and "invalid association" in str(ei.value)
    q2 = FcHostQueue(HOST, TGT, 0, 32)
    q2.start()
    with pytest.raises(TransportError, match="no such port"):
        q2.feed(F.encode(F.T_LOGIN_RJT, 0, b"no such port"))


def test_default_host_port_is_stable() -> None:
    a = default_host_port(bytes(range(16)))
    assert a == default_host_port(bytes(range(16))) and a != default_host_port(bytes(16))
    assert a.traddr.startswith("nn-0x2") and ":pn-0x1" in a.traddr
