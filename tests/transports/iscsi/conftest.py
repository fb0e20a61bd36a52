"""Shared fixtures for the iSCSI tests: a configured IscsiState, a fake SCSI
device, and a harness that drives a sans-I/O Connection like an initiator."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.iscsi import text
from blockfabric.transports.iscsi.connection import Connection
from blockfabric.transports.iscsi.nodes import ConfigView
from blockfabric.transports.iscsi.session import SessionRegistry
from blockfabric.transports.iscsi.state import IscsiState, Portal
from blockfabric.transports.scsi.task import ScsiTask

TARGET = "iqn.2016-06.io.blockfabric:disk1"
INIT = "iqn.1994-05.com.redhat:client"
ISID = 0x23D000000001
BS = 512


def make_state(
    netmask: str = "127.0.0.1/32", initiators: list[str] | None = None, **opts: Any
) -> IscsiState:
    st = IscsiState()
    if opts:
        st.set_options(**opts)
    st.add_portal_group(1, [Portal("127.0.0.1", "3260", "127.0.0.1:3260")])
    st.add_initiator_group(2, initiators or ["ANY"], [netmask])
    st.create_target_node("disk1", "Data Disk1", {0: "Malloc0"}, [(1, 2)], 64)
    return st


class _NoBdev:
    """A bdev whose writes are never cut into pool chunks (block size 0)."""

    block_size = 0
    num_blocks = 0


class FakeLun:
    """The LunLike interface (transports/iscsi/tasks.py) for protocol tests."""

    bdev: Any = _NoBdev()
    max_transfer_blocks = 0
    stage_reads = False
    fast_channel = None

    def channel_getter(self) -> Any:
        return None

    def io_error(self, task: Any, st: Any, read: bool) -> None:
        task.check_condition(bytes([0x70, 0, 4, 0, 0, 0, 0, 10] + [0] * 4 + [0x44, 0, 0, 0, 0, 0]))

    def __init__(self) -> None:
        self.aborted: list[tuple[int, str]] = []
        self.resets = 0

    def abort_task(self, tag: int, ip: str, on_done: Any = None) -> bool:
        self.aborted.append((tag, ip))
        if on_done is not None:
            on_done()
        return True

    def abort_task_set(self, ip: str | None = None, on_done: Any = None) -> int:
        if on_done is not None:
            on_done()
        return 0

    def reset(self, on_done: Any = None) -> None:
        self.resets += 1
        if on_done is not None:
            on_done()


class FakeDevice:
    """READ(10)/WRITE(10)/TEST UNIT READY/INQUIRY on a 64-block RAM disk."""

    def __init__(self) -> None:
        self.blocks = bytearray(64 * BS)
        self.luns = {0: FakeLun()}
        self.defer = False
        self.pending: list[tuple[ScsiTask, Any]] = []
        self.executed: list[ScsiTask] = []
        self.lost: list[tuple[str, str]] = []

    def nexus_lost(self, ip: str, tp: str) -> None:
        self.lost.append((ip, tp))

    def get_lun(self, lun_id: int) -> Any:
        return self.luns.get(lun_id)

    def fast_lun(self, lun_id: int, nexus: Any) -> Any:
        return None  # every command takes the generic path

    def target_reset(self, on_done: Any = None) -> None:
        for lun in self.luns.values():
            lun.reset()
        if on_done is not None:
            on_done()

    def execute(self, task: ScsiTask, done: Any) -> None:
        self.executed.append(task)
        if self.defer:
            self.pending.append((task, done))
            return
        self.run(task)
        done(task)

    def run(self, task: ScsiTask) -> None:
        cdb = task.cdb
        op = cdb[0]
        if task.lun not in self.luns:
            task.check_condition(
                bytes([0x70, 0, 5, 0, 0, 0, 0, 10] + [0] * 4 + [0x25, 0, 0, 0, 0, 0])
            )
            return
        if op == 0x28:
            lba, n = struct.unpack(">I", cdb[2:6])[0], struct.unpack(">H", cdb[7:9])[0]
            task.data_in = [memoryview(self.blocks)[lba * BS : (lba + n) * BS]]
        elif op == 0x2A:
            lba, n = struct.unpack(">I", cdb[2:6])[0], struct.unpack(">H", cdb[7:9])[0]
            task.transfer_length = n * BS
            d = task.data_out
            k = min(len(d) if d is not None else 0, n * BS)
            if d is not None:
                self.blocks[lba * BS : lba * BS + k] = d[:k]
        elif op == 0x00:
            pass
        elif op == 0x12:
            task.set_data(bytes([0, 0, 5, 2, 31]) + b"\0" * 31, struct.unpack(">H", cdb[3:5])[0])
        else:
            task.check_condition(
                bytes([0x70, 0, 5, 0, 0, 0, 0, 10] + [0] * 4 + [0x20, 0, 0, 0, 0, 0])
            )


class Env:
    def __init__(self, state: IscsiState) -> None:
        self.view = ConfigView(state.snapshot())
        self.sessions = SessionRegistry()
        self.dev = FakeDevice()

    def device(self, name: str) -> Any:
        return self.dev if self.view.target(name) else None

    def make_task(self, **kw: Any) -> ScsiTask:
        return ScsiTask(**kw)


def login_req(
    keys: list[tuple[str, str]],
    csg: int = 1,
    nsg: int = 3,
    transit: bool = True,
    isid: int = ISID,
    tsih: int = 0,
    cid: int = 0,
    itt: int = 1,
    cmdsn: int = 1,
    expstatsn: int = 0,
    cont: bool = False,
    vmin: int = 0,
) -> bytes:
    f1 = (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | (nsg if transit else 0)
    return P.encode_request(
        P.OP_LOGIN_REQ,
        f1,
        (isid << 16) | tsih,
        itt,
        (cid << 16, cmdsn, expstatsn, 0, 0, 0, 0),
        text.encode(keys),
        b3=vmin,
    )


def decode(bufs: list[Any], hd: bool = False, dd: bool = False) -> P.Pdu:
    raw = b"".join(bytes(b) for b in bufs)
    p = P.Pdu(raw[:48])
    off = 48 + p.ahs_len + (4 if hd else 0)
    p.data = raw[off : off + p.dlen]
    return p


class Harness:
    def __init__(
        self, state: IscsiState | None = None, peer: str = "127.0.0.1", env: Env | None = None
    ) -> None:
        self.state = state or make_state()
        self.env = env or Env(self.state)
        self.out: list[list[Any]] = []
        self.closed: list[str] = []
        self.conn = Connection(
            self.env, "127.0.0.1:3260", peer, "127.0.0.1", self.out.append, self.closed.append
        )
        self.cmdsn = 1
        self.itt = 0x100

    def feed(self, data: bytes) -> list[P.Pdu]:
        n = len(self.out)
        self.conn.feed(data)
        cp = self.conn.cp
        return [decode(b, cp.header_digest, cp.data_digest) for b in self.out[n:]]

    def login(self, extra: list[tuple[str, str]] | None = None, **kw: Any) -> P.Pdu:
        keys = [
            ("InitiatorName", INIT),
            ("TargetName", TARGET),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ]
        r = self.feed(login_req(keys, csg=0, nsg=1, **kw))
        assert r[0].w36 >> 16 == 0, f"status {r[0].w36 >> 16:#x}"
        ops = [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
        ]
        r = self.feed(login_req(ops + (extra or []), csg=1, nsg=3, **kw))
        assert r[0].w36 >> 16 == 0, f"status {r[0].w36 >> 16:#x}"
        assert self.conn.state == "ffp"
        return r[0]

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def cmd(
        self,
        cdb: bytes,
        edtl: int,
        read: bool = False,
        write: bool = False,
        data: bytes = b"",
        final: bool = True,
        cmdsn: int | None = None,
        itt: int | None = None,
        lun: int = 0,
        immediate: bool = False,
    ) -> list[P.Pdu]:
        f1 = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | 1
        if cmdsn is None:
            cmdsn = self.cmdsn
            if not immediate:
                self.cmdsn += 1
        itt = self.next_itt() if itt is None else itt
        bhs_cdb = cdb.ljust(16, b"\0")
        w = (edtl, cmdsn, 0) + struct.unpack(">4I", bhs_cdb)
        return self.feed(
            P.encode_request(
                P.OP_SCSI_CMD, f1, P.int_to_lun(lun), itt, w, data, immediate=immediate
            )
        )

    def data_out(
        self, itt: int, ttt: int, datasn: int, offset: int, data: bytes, final: bool
    ) -> list[P.Pdu]:
        w = (ttt, 0, 0, 0, datasn, offset, 0)
        return self.feed(P.encode_request(P.OP_DATA_OUT, 0x80 if final else 0, 0, itt, w, data))


def read10(lba: int, n: int) -> bytes:
    return bytes([0x28, 0]) + struct.pack(">I", lba) + b"\0" + struct.pack(">H", n) + b"\0"


def write10(lba: int, n: int) -> bytes:
    return bytes([0x2A, 0]) + struct.pack(">I", lba) + b"\0" + struct.pack(">H", n) + b"\0"


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
def kit() -> Any:
    """This module, so test files can use its helpers (importlib import mode
    does not let them import conftest directly)."""
    import sys

    return sys.modules[__name__]
