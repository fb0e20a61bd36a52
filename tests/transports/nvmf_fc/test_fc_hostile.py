"""A hostile FC-NVMe host against a real daemon over the loopback LLD: raw frames.

Every bad exchange gets the right answer (ABTS, or an ERSP with the NVMe
status), nothing else on the association is disturbed, and no pool buffer
is left held."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest
from fclib import HOSTADDR, HOSTNQN, NQN, TRADDR, _ctrl, _setup, _wait

from blockfabric.transports.fc import frame as F
from blockfabric.transports.fc.addr import parse_traddr
from blockfabric.transports.nvmf import fc_iu as IU
from blockfabric.transports.nvmf import fc_ls as LS
from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host.fc import FcBlockingQueue, FcLsRejected


class Raw:
    """An FC-NVMe connection opened by the real host code, then driven by hand."""

    def __init__(self, qid: int = 0, assoc_id: int = 0, qsize: int = 32) -> None:
        self.bq = FcBlockingQueue(
            TRADDR, HOSTADDR, qid, qsize, 5.0, NQN, HOSTNQN, bytes(16), assoc_id
        )
        self.conn_id = self.bq.q.conn_id
        self.sock: socket.socket = self.bq.sock
        self.sock.settimeout(5.0)
        self.reader = F.FrameReader(1 << 20)
        self.got: list[F.Frame] = []

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def cmd(self, xid: int, sqe: bytes, dlen: int, flags: int, conn: int | None = None) -> None:
        iu = IU.encode_cmd_iu(self.conn_id if conn is None else conn, xid, dlen, flags, sqe)
        self.send(F.encode(F.T_CMD, xid, iu))

    def next(self, timeout: float = 5.0) -> F.Frame:
        end = time.monotonic() + timeout
        while not self.got:
            assert time.monotonic() < end, "no frame from the target"
            b = self.sock.recv(1 << 16)
            assert b, "the target closed the path"
            self.got += self.reader.feed(b)
        return self.got.pop(0)

    def quiet(self, t: float = 0.3) -> bool:
        self.sock.settimeout(t)
        try:
            b = self.sock.recv(1 << 16)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5.0)
        self.got += self.reader.feed(b)
        return not self.got

    def close(self) -> None:
        self.sock.close()


def _sqe(
    opcode: int, cid: int, nsid: int = 1, dlen: int = 0, cdw10: int = 0, cdw12: int = 0
) -> bytes:
    sgl = S.pack_sgl(0, dlen, S.SGL_TYPE_TRANSPORT)
    return S.pack_sqe(opcode, cid, nsid, (cdw10, 0, cdw12, 0, 0, 0), sgl, 0x40)


def _status(f: F.Frame) -> int:
    assert f.type == F.T_RSP, f
    r = IU.decode_response(f.payload)
    return 0 if r is None else r.status & 0xFFFE


def test_bad_exchanges(fcd: Any) -> None:
    c = _ctrl(1)  # a healthy controller alongside, on the same nexus
    r = Raw(qid=2, assoc_id=c.assoc_id, qsize=4)
    try:
        # the I/O queue's Connect names another qid than the connection's
        data = bytearray(S.CONNECT_DATA_SIZE)
        data[0:16] = c.hostid
        struct.pack_into("<H", data, S.CONNECT_DATA_OFF_CNTLID, c.cntlid)
        data[256 : 256 + len(NQN)] = NQN.encode()
        data[512 : 512 + len(HOSTNQN)] = HOSTNQN.encode()
        sqe = bytearray(_sqe(S.FABRICS_OPCODE, 1, 0, len(data)))
        sqe[4] = S.FCTYPE_CONNECT
        struct.pack_into("<HHH", sqe, 40, 0, 3, 3)  # recfmt, qid 3 (!), sqsize
        r.cmd(1, bytes(sqe), len(data), IU.FLAG_WRITE)
        assert _status(r.next()) == S.ST_CONNECT_INVALID_PARAM
        # now the right Connect
        struct.pack_into("<HHH", sqe, 40, 0, 2, 3)
        r.cmd(2, bytes(sqe), len(data), IU.FLAG_WRITE)
        f = r.next()
        assert f.type == F.T_XFER_RDY and (f.offset, f.length) == (0, len(data))
        r.send(F.encode(F.T_DATA, 2, bytes(data)))
        assert _status(r.next()) == 0

        # a CMD IU that is not one; one for a connection that does not exist
        r.send(F.encode(F.T_CMD, 3, b"\xfe" + bytes(95)))
        assert (r.next().type, r.got) == (F.T_ABTS, [])
        r.cmd(4, _sqe(S.IO_READ, 4, dlen=512), 512, IU.FLAG_READ, conn=r.conn_id ^ (1 << 40))
        assert r.next().type == F.T_ABTS
        # data length of the IU and of the SGL disagree; direction disagrees with the opcode
        r.cmd(5, _sqe(S.IO_READ, 5, dlen=1024), 512, IU.FLAG_READ)
        assert _status(r.next()) == S.ST_DATA_SGL_LENGTH_INVALID
        r.cmd(6, _sqe(S.IO_READ, 6, dlen=512), 512, IU.FLAG_WRITE)
        assert _status(r.next()) == S.ST_INVALID_FIELD
        # a write larger than max_io_size: refused before any buffer is taken
        big = 1 << 20
        r.cmd(7, _sqe(S.IO_WRITE, 7, dlen=big, cdw12=big // 512 - 1), big, IU.FLAG_WRITE)
        assert _status(r.next()) == S.ST_DATA_SGL_LENGTH_INVALID
        # write data at the wrong offset: the exchange is aborted, no response
        r.cmd(8, _sqe(S.IO_WRITE, 8, dlen=4096, cdw12=7), 4096, IU.FLAG_WRITE)
        f = r.next()
        assert f.type == F.T_XFER_RDY
        r.send(F.encode(F.T_DATA, 8, b"x" * 512, 512))
        assert r.next().type == F.T_ABTS and r.quiet()
        # ABTS from the host while the target waits for write data
        r.cmd(9, _sqe(S.IO_WRITE, 9, dlen=4096, cdw12=7), 4096, IU.FLAG_WRITE)
        assert r.next().type == F.T_XFER_RDY
        r.send(F.encode(F.T_ABTS, 9))
        assert r.next().type == F.T_BA_ACC and r.quiet()
        # the same exchange id twice while open: the exchange is broken, both go
        for x in (10, 11, 12):
            r.cmd(x, _sqe(S.IO_WRITE, x, dlen=512, cdw12=0), 512, IU.FLAG_WRITE)
            assert r.next().type == F.T_XFER_RDY
        r.cmd(10, _sqe(S.IO_READ, 20, dlen=512), 512, IU.FLAG_READ)
        assert r.next().type == F.T_ABTS
        # more commands than the SQ holds (sqsize 3 = 4 entries)
        for x in (13, 14):
            r.cmd(x, _sqe(S.IO_WRITE, x, dlen=512, cdw12=0), 512, IU.FLAG_WRITE)
            assert r.next().type == F.T_XFER_RDY
        r.cmd(15, _sqe(S.IO_READ, 15, dlen=512), 512, IU.FLAG_READ)
        assert r.next().type == F.T_ABTS
        r.send(F.encode(F.T_DATA, 10, bytes([10]) * 512))  # of the aborted one: dropped
        assert r.quiet()
        for x in (11, 12, 13, 14):
            r.send(F.encode(F.T_DATA, x, bytes([x]) * 512))
            assert _status(r.next()) == 0
        # a good read on the same connection, and the healthy controller
        r.cmd(16, _sqe(S.IO_READ, 16, dlen=512, cdw10=0), 512, IU.FLAG_READ)
        f = r.next()
        assert f.type == F.T_DATA and bytes(f.payload) == bytes([14]) * 512
        assert _status(r.next()) == 0
        assert c.read(1, 0, 1, 512) == bytes([14]) * 512
    finally:
        r.close()
        c.close()
    _wait(lambda: not fcd.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN}), what="qpairs gone")
    assert all(x["in_use"] == 0 for x in fcd.rpc("iobuf_get_stats"))


@pytest.mark.parametrize(
    "junk",
    [
        F.encode(F.T_RSP, 1, IU.GOOD_RSP),  # a target-only frame from the host
        F.header(F.T_DATA, 1, 0, 1 << 24),  # a data burst beyond any bound
        F.encode(F.T_LOGIN, 0, bytes(32)),  # a second login
    ],
)
def test_protocol_violations_drop_the_path(fcd: Any, junk: bytes) -> None:
    r = Raw(qid=0)
    r.send(junk)
    with pytest.raises(AssertionError, match="closed the path"):
        r.next()
    r.close()
    _wait(lambda: not fcd.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN}), what="qpairs gone")


def test_silent_hosts_are_timed_out(
    daemon_factory: Any, run_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path that never logs in, a connection that never sends Connect and a
    write whose data never comes hold nothing past the timeouts."""
    monkeypatch.setenv("BLOCKFABRIC_RUN_DIR", str(run_dir))
    d = daemon_factory(mask="0x1").start()
    _setup(d, connect_timeout_ms=500, h2c_data_timeout_ms=500)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(F.socket_path(parse_traddr(TRADDR)))
        t0 = time.monotonic()
        assert s.recv(10) == b""  # closed by the target: no LOGIN
        assert 0.4 < time.monotonic() - t0 < 5
        s.close()
        # an association whose admin queue never sends Connect
        r = Raw(qid=0)
        time.sleep(1.5)  # the association ended with its admin connection
        with pytest.raises(FcLsRejected) as ei:
            FcBlockingQueue(TRADDR, HOSTADDR, 1, 32, 5.0, assoc_id=r.bq.q.assoc_id)
        assert ei.value.reason == LS.RJT_RC_INV_ASSOC
        r.close()
        # a write whose data never comes: aborted, its pool buffers freed
        c = _ctrl(0)
        r = Raw(qid=1, assoc_id=c.assoc_id)
        data = bytearray(S.CONNECT_DATA_SIZE)
        data[0:16] = c.hostid
        struct.pack_into("<H", data, S.CONNECT_DATA_OFF_CNTLID, c.cntlid)
        data[256 : 256 + len(NQN)] = NQN.encode()
        data[512 : 512 + len(HOSTNQN)] = HOSTNQN.encode()
        sqe = bytearray(_sqe(S.FABRICS_OPCODE, 1, 0, len(data)))
        sqe[4] = S.FCTYPE_CONNECT
        struct.pack_into("<HHH", sqe, 40, 0, 1, 31)
        r.cmd(1, bytes(sqe), len(data), IU.FLAG_WRITE)
        assert r.next().type == F.T_XFER_RDY
        r.send(F.encode(F.T_DATA, 1, bytes(data)))
        assert _status(r.next()) == 0
        r.cmd(2, _sqe(S.IO_WRITE, 2, dlen=65536, cdw12=127), 65536, IU.FLAG_WRITE)
        assert r.next().type == F.T_XFER_RDY
        assert any(x["in_use"] for x in d.rpc("iobuf_get_stats"))
        assert r.next(timeout=5).type == F.T_ABTS  # after h2c_data_timeout_ms
        assert r.quiet()
        assert all(x["in_use"] == 0 for x in d.rpc("iobuf_get_stats"))
        r.cmd(3, _sqe(S.IO_READ, 3, dlen=512), 512, IU.FLAG_READ)  # the queue still works
        assert r.next().type == F.T_DATA and _status(r.next()) == 0
        r.close()
        c.close()
        st = d.rpc("nvmf_get_stats")
        fc = [t for pg in st["poll_groups"] for t in pg["transports"] if t["trtype"] == "FC"][0]
        assert fc["fc_login_timeouts"] == 1 and fc["fc_data_timeouts"] == 1
    finally:
        d.stop()
