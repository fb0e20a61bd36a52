"""In-process end to end: the iSCSI driver on an EventLoop behind a real
127.0.0.1 socket, the real SCSI layer over a RAM bdev, and a raw initiator."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from blockfabric.actors.loop import EPOLLIN, EventLoop
from blockfabric.bdevs.base import Bdev, IoChannel, IoStatus
from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.iscsi import text
from blockfabric.transports.iscsi.driver import DRIVER
from blockfabric.transports.iscsi.state import IscsiState, Portal

INIT = "iqn.1994-05.com.redhat:e2e"


class RamChannel(IoChannel):
    """Zero-copy RAM channel (malloc's behaviour without shared memory)."""

    def __init__(self, bdev: RamBdev) -> None:
        super().__init__(bdev)
        self.mem = memoryview(bdev.mem)

    def _do_read(self, off: int, n: int, cb: Any, into: Any = None) -> None:
        cb(IoStatus.SUCCESS, self.mem[off * 512 : (off + n) * 512])

    def _do_write(self, off: int, data: memoryview, cb: Any, fua: bool = False) -> None:
        self.mem[off * 512 : off * 512 + len(data)] = data
        cb(IoStatus.SUCCESS)

    def _do_write_zeroes(self, off: int, n: int, cb: Any) -> None:
        self.mem[off * 512 : (off + n) * 512] = bytes(n * 512)
        cb(IoStatus.SUCCESS)


class RamBdev(Bdev):
    def __init__(self, name: str, blocks: int) -> None:
        super().__init__(name=name, block_size=512, num_blocks=blocks)
        self.mem = bytearray(blocks * 512)

    def open_channel(self, loop: Any = None) -> IoChannel:
        return RamChannel(self)

    def detach(self) -> None:
        pass


class Ctx:
    def __init__(
        self, loop: EventLoop, rid: int, snap: dict[str, Any], bdevs: dict[str, Bdev], n: int
    ) -> None:
        self.loop = loop
        self.reactor_id = rid
        self.num_reactors = n
        self.instance = "test"
        self.iscsi_config = snap
        self.nvmf_config: dict[str, Any] = {}
        self.generation = 1
        self.bdevs = bdevs
        self.chans: dict[str, IoChannel] = {}
        self.handoffs: list[int] = []
        self.peers: dict[int, Ctx] = {}

    def bdev(self, name: str) -> Bdev | None:
        return self.bdevs.get(name)

    def channel(self, name: str) -> IoChannel | None:
        if name not in self.chans and name in self.bdevs:
            self.chans[name] = self.bdevs[name].open_channel(self.loop)
        return self.chans.get(name)

    def handoff(
        self, sock: socket.socket, rid: int, proto: str, listener: str, preread: bytes
    ) -> None:
        self.handoffs.append(rid)
        DRIVER.accept(self.peers[rid], sock, listener, preread=preread)  # type: ignore[arg-type]


class Target:
    def __init__(self, reactors: int = 1, home: int = 0) -> None:
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.key = f"127.0.0.1:{self.port}"
        st = IscsiState(num_reactors=reactors)
        st.set_options(nop_in_interval=0)
        st.add_portal_group(1, [Portal("127.0.0.1", str(self.port), self.key)])
        st.add_initiator_group(1, ["ANY"], ["127.0.0.1/32"])
        st._rr = home
        st.create_target_node("disk1", "E2E", {0: "Ram0"}, [(1, 1)], 32)
        self.bdev = RamBdev("Ram0", 256)
        self.loop = EventLoop("blocking")
        snap = st.snapshot()
        self.ctxs = [
            Ctx(self.loop, i, snap, {"Ram0": self.bdev}, reactors) for i in range(reactors)
        ]
        for c in self.ctxs:
            c.peers = {x.reactor_id: x for x in self.ctxs}
            DRIVER.on_config(c)  # type: ignore[arg-type]
        self.loop.add_fd(self.lsock.fileno(), EPOLLIN, self._accept)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def _accept(self, _ev: int) -> None:
        try:
            s, _ = self.lsock.accept()
        except BlockingIOError:
            return
        DRIVER.accept(self.ctxs[0], s, self.key)  # type: ignore[arg-type]

    def stop(self) -> None:
        done = threading.Event()

        def _fin() -> None:
            for c in self.ctxs:
                DRIVER.shutdown(c)  # type: ignore[arg-type]
            self.loop.stop()
            done.set()

        self.loop.call_soon(_fin)
        # wake the blocking loop
        socket.create_connection(("127.0.0.1", self.port)).close()
        done.wait(5)
        self.thread.join(5)
        self.loop.remove_fd(self.lsock.fileno())
        self.lsock.close()
        self.loop.close()


class Initiator:
    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.cmdsn = 1
        self.statsn = 0
        self.itt = 0

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            c = self.s.recv(n - len(buf))
            if not c:
                raise ConnectionError("closed")
            buf += c
        return buf

    def recv(self) -> P.Pdu:
        bhs = self.recv_exact(48)
        p = P.Pdu(bhs)
        p.data = self.recv_exact(p.dlen + P.pad_len(p.dlen))[: p.dlen]
        return p

    def send(self, raw: bytes) -> None:
        self.s.sendall(raw)

    def login(self, keys: list[tuple[str, str]], ops: list[tuple[str, str]]) -> P.Pdu:
        self.send(
            P.encode_request(
                P.OP_LOGIN_REQ, 0x80 | 1, 0x1234 << 16, 0, (0, 1, 0, 0, 0, 0, 0), text.encode(keys)
            )
        )
        r = self.recv()
        assert r.w36 >> 16 == 0, hex(r.w36)
        self.send(
            P.encode_request(
                P.OP_LOGIN_REQ,
                0x80 | (1 << 2) | 3,
                0x1234 << 16,
                0,
                (0, 1, r.w24 + 1, 0, 0, 0, 0),
                text.encode(ops),
            )
        )
        r = self.recv()
        assert r.w36 >> 16 == 0 and r.transit and r.nsg == 3
        return r

    def scsi(
        self, cdb: bytes, edtl: int, read: bool = False, write: bool = False, data: bytes = b""
    ) -> tuple[P.Pdu, bytes]:
        self.itt += 1
        itt = self.itt
        f1 = 0x80 | (0x40 if read else 0) | (0x20 if write else 0) | 1
        w = (edtl, self.cmdsn, 0) + struct.unpack(">4I", cdb.ljust(16, b"\0"))
        self.cmdsn += 1
        self.send(P.encode_request(P.OP_SCSI_CMD, f1, 0, itt, w))
        got = bytearray()
        while True:
            r = self.recv()
            assert r.itt == itt
            if r.opcode == P.OP_R2T:
                off, n = r.w40, r.w44
                for i in range(0, n, 8192):
                    k = min(8192, n - i)
                    fin = 0x80 if i + k == n else 0
                    self.send(
                        P.encode_request(
                            P.OP_DATA_OUT,
                            fin,
                            0,
                            itt,
                            (r.ttt, 0, 0, 0, i // 8192, off + i, 0),
                            data[off + i : off + i + k],
                        )
                    )
                continue
            if r.opcode == P.OP_DATA_IN:
                got += r.data
                if r.f1 & P.F_STATUS:
                    return r, bytes(got)
                continue
            assert r.opcode == P.OP_SCSI_RESP
            return r, bytes(got)


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.stop()


TARGET = "iqn.2016-06.io.blockfabric:disk1"


def test_discovery_and_io(target: Target) -> None:
    ini = Initiator(target.port)
    ini.login(
        [("InitiatorName", INIT), ("SessionType", "Discovery"), ("AuthMethod", "None")],
        [("MaxRecvDataSegmentLength", "8192")],
    )
    ini.send(
        P.encode_request(
            P.OP_TEXT_REQ, 0x80, 0, 9, (P.RSVD_TAG, 1, 0, 0, 0, 0, 0), b"SendTargets=All\0"
        )
    )
    r = ini.recv()
    assert text.parse(r.data) == [
        ("TargetName", TARGET),
        ("TargetAddress", f"127.0.0.1:{target.port},1"),
    ]
    ini.send(P.encode_request(P.OP_LOGOUT_REQ, 0x80, 0, 10, (0, 2, 0, 0, 0, 0, 0), immediate=True))
    assert ini.recv().opcode == P.OP_LOGOUT_RESP
    assert ini.s.recv(1) == b""  # the target closed the connection
    ini.s.close()

    ini = Initiator(target.port)
    ini.login(
        [("InitiatorName", INIT), ("TargetName", TARGET), ("AuthMethod", "None")],
        [
            ("ImmediateData", "No"),
            ("MaxRecvDataSegmentLength", "8192"),
            ("MaxBurstLength", "16384"),
        ],
    )
    r, data = ini.scsi(bytes([0x12, 0, 0, 0, 96, 0]), 96, read=True)
    assert r.b3 == 0 and data[0] == 0 and data[2] >= 5
    # the standard INQUIRY data is shorter than 96 bytes: underflow residual
    assert r.f1 & P.F_UNDERFLOW and r.w44 == 96 - len(data)
    # the first media command reports the power-on unit attention
    for _ in range(3):
        r, _ = ini.scsi(bytes(6), 0)
        if r.b3 == 0:
            break
    assert r.b3 == 0
    payload = bytes(range(256)) * 128  # 32 KiB: two R2T bursts
    cdb = bytes([0x2A, 0]) + struct.pack(">I", 8) + b"\0" + struct.pack(">H", 64) + b"\0"
    r, _ = ini.scsi(cdb, len(payload), write=True, data=payload)
    assert r.b3 == 0, r.data
    assert bytes(target.bdev.mem[8 * 512 : 8 * 512 + len(payload)]) == payload
    cdb = bytes([0x28, 0]) + struct.pack(">I", 8) + b"\0" + struct.pack(">H", 64) + b"\0"
    r, data = ini.scsi(cdb, len(payload), read=True)
    assert r.b3 == 0 and data == payload
    ini.s.close()


def test_handoff_to_home_reactor() -> None:
    t = Target(reactors=2, home=1)
    try:
        ini = Initiator(t.port)
        ini.login(
            [("InitiatorName", INIT), ("TargetName", TARGET), ("AuthMethod", "None")],
            [("MaxRecvDataSegmentLength", "8192")],
        )
        assert t.ctxs[0].handoffs == [1]
        r, _ = ini.scsi(bytes([0x12, 0, 0, 0, 36, 0]), 36, read=True)
        assert r.b3 == 0
        ini.s.close()
    finally:
        t.stop()
