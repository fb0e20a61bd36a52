"""Tracepoints in shared memory: one lock-free single-writer ring per process.

The instance's trace segment ``blockfabric.NAME.trace`` (/dev/shm, in the
manifest like every other object; kept after a SIGKILL until ``blockfabric
shm cleanup`` so a crash can be analysed) holds a header, then one ring per
reactor and a last one for the supervisor (RPCs)::

    header  (HDR_SIZE bytes, a multiple of 4 KiB)
      0  magic "BFTRACE1"            8  version u32, record size u32
     16  rings u32, entries u32     24  tpoint group mask u64 (the one word
                                        every process reads: RPCs write it)
     32  created: wall-clock ns u64, monotonic ns u64 (the records' clock)
     48  instance name (16 bytes, NUL padded)
     64  ring descriptors, RING_DESC bytes each:
           pid u32, role u32 (0 reactor, 1 supervisor), core i32, pad u32,
           write index u64 (seq of the last complete record), pid start time
    rings   (rings x entries x RECORD_SIZE bytes)

A record is RECORD_SIZE (64) bytes: ``seq, ts, tpoint, _, a0, obj, a1, a2,
a3, seq`` (``<QQHHIQQQQQ``): the sequence number opens and closes it, the
timestamp is ``time.perf_counter_ns()`` (CLOCK_MONOTONIC, the same clock in
every process, so rings merge by time), ``tpoint`` is ``group << 6 | n`` as
in SPDK, ``obj`` the object (queue pair, connection, bdev channel, RPC), and
``a0`` (CID / ITT) ``a1`` (LBA) ``a2`` (length) ``a3`` (opcode, status...)
its arguments. Slot of seq ``s``: ``s & (entries - 1)``.

Writer (one per ring, never blocks, never allocates): pack the record in
field order (struct writes the opening seq first and the closing one last),
then publish the write index. Reader: read the index, copy the ring, read the
index again; a record is taken when its two seq fields agree, its slot is
its seq's slot, it was complete before the copy started (seq <= first index)
and could not be overwritten while copying (seq > second index + 1 -
entries). Records of a ring whose writer is dead (SIGKILL) are all taken
when their two seq fields agree: the one a writer died in is torn (its
closing seq is the old one) and dropped.

The data path tests one int: ``if TRACE.mask & G_NVMF_TCP: TRACE.rec(...)``
(``TRACE`` is this process's `Tracer`, mask 0 until a reactor attaches its
ring). The mask lives in the segment header; the RPCs write it and tell
every reactor to reload it (``framework.trace_mask``), and each reactor also
reloads it every second (a restarted reactor reads it when it attaches).
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

from . import names
from .segment import SharedSegment

MAGIC = b"BFTRACE1"
VERSION = 1
RECORD_SIZE = 64
DEFAULT_ENTRIES = 32768  # per ring, like SPDK's --num-trace-entries
MIN_ENTRIES = 16
MAX_ENTRIES = 1 << 22
TAG = "trace"

REC = struct.Struct("<QQHHIQQQQQ")
assert REC.size == RECORD_SIZE
_HDR = struct.Struct("<8sIIIIQQQ16s")  # up to the instance name: 64 bytes
RING_DESC = 64
_RING = struct.Struct("<IIiIQd")  # pid role core pad widx pid_ctime
OFF_MASK = 24
OFF_RINGS = 64
OFF_WIDX_IN_DESC = 16
ROLE_REACTOR, ROLE_SUPERVISOR = 0, 1
_U64 = struct.Struct("<Q")

# ---------------------------------------------------------------- groups ---
# SPDK's group ids (include/spdk_internal/trace_defs.h) where SPDK has the
# group; "nvmf" (connections, controllers, keep-alive) and "rpc" are ours.
GROUPS: dict[str, int] = {
    "iscsi_conn": 0x1,
    "scsi": 0x2,
    "bdev": 0x3,
    "nvmf_rdma": 0x4,
    "nvmf_tcp": 0x5,
    "nvmf_fc": 0x8,
    "nvmf": 0x13,
    "rpc": 0x14,
}
GROUP_ALIASES = {"iscsi": "iscsi_conn"}
ALL_GROUPS_MASK = sum(1 << g for g in GROUPS.values())

G_ISCSI = 1 << GROUPS["iscsi_conn"]
G_SCSI = 1 << GROUPS["scsi"]
G_BDEV = 1 << GROUPS["bdev"]
G_NVMF_RDMA = 1 << GROUPS["nvmf_rdma"]
G_NVMF_TCP = 1 << GROUPS["nvmf_tcp"]
G_NVMF_FC = 1 << GROUPS["nvmf_fc"]
G_NVMF = 1 << GROUPS["nvmf"]
G_RPC = 1 << GROUPS["rpc"]


def _tp(group: str, n: int) -> int:
    return GROUPS[group] << 6 | n


# The request phases of every NVMe-oF transport share one layout: tpoint
# base of the transport's group + REQ_*; the core records them with the
# queue pair's ``tp_bit``/``tp_base`` (transport_group), so RDMA and FC
# requests are traced by the same hooks as TCP ones.
REQ_PDU = 0  # a command capsule / PDU arrived        a2 = PDU length, a3 = PDU type
REQ_NEW = 1  # command parsed                          a1 = LBA, a2 = bytes, a3 = opcode
REQ_SUBMIT = 2  # handed to the bdev                  a1 = LBA, a2 = bytes
REQ_DONE = 3  # the bdev (or the core) completed it   a3 = status
REQ_DATA = 4  # controller-to-host data queued        a2 = bytes, a3 = 1 when it carries success
REQ_RESP = 5  # response capsule queued               a3 = status
REQ_H2C = 6  # host data arrived (R2T / H2CData)      a2 = bytes
QP_FLUSH = 7  # bytes left for the socket (obj: qpair) a2 = bytes sent so far on the qpair
QP_NEW = 8  # a queue pair was accepted               obj = qpair
QP_CLOSE = 9  # a queue pair closed

TP_NVMF_TCP = GROUPS["nvmf_tcp"] << 6
TP_NVMF_RDMA = GROUPS["nvmf_rdma"] << 6
TP_NVMF_FC = GROUPS["nvmf_fc"] << 6

# iSCSI (iscsi_conn): obj = connection, a0 = ITT
TP_ISCSI_PDU = _tp("iscsi_conn", 0)  # a2 = data length, a3 = opcode
TP_ISCSI_CMD = _tp("iscsi_conn", 1)  # a1 = LBA, a2 = EDTL, a3 = CDB opcode
TP_ISCSI_SUBMIT = _tp("iscsi_conn", 2)  # a1 = LBA, a2 = bytes
TP_ISCSI_DONE = _tp("iscsi_conn", 3)  # a3 = status
TP_ISCSI_DATAIN = _tp("iscsi_conn", 4)  # a2 = bytes, a3 = 1 with the status collapsed in
TP_ISCSI_RESP = _tp("iscsi_conn", 5)  # a3 = SCSI status
TP_ISCSI_LOGIN = _tp("iscsi_conn", 8)  # connection entered full feature phase
TP_ISCSI_CLOSE = _tp("iscsi_conn", 9)
# SCSI core: obj = the SCSI device (target node), a0 = task tag
TP_SCSI_TASK = _tp("scsi", 0)  # a1 = LUN, a2 = expected transfer length, a3 = CDB opcode
TP_SCSI_DONE = _tp("scsi", 1)  # a3 = status
# bdev layer: obj = the channel (its BDEV_OPEN record carries the name)
TP_BDEV_START = _tp("bdev", 0)  # a1 = LBA, a2 = bytes, a3 = 1 read 2 write
TP_BDEV_DONE = _tp("bdev", 1)  # a1 = LBA, a2 = bytes, a3 = status
TP_BDEV_OPEN = _tp("bdev", 2)  # a1..a3 = the bdev name (24 bytes)
# controllers and connections (nvmf): obj = cntlid or qpair
TP_CTRLR_CREATE = _tp("nvmf", 0)  # obj = cntlid, a0 = qpair
TP_CTRLR_DESTROY = _tp("nvmf", 1)  # obj = cntlid
TP_KATO_EXPIRED = _tp("nvmf", 2)  # obj = cntlid, a1 = KATO ms
TP_QP_CONNECT = _tp("nvmf", 3)  # obj = qpair, a0 = qid, a1 = cntlid
TP_QP_DISCONNECT = _tp("nvmf", 4)  # obj = qpair, a0 = qid, a1 = cntlid
# RPCs (supervisor ring): obj = call number, a1..a3 = method name
TP_RPC_START = _tp("rpc", 0)
TP_RPC_DONE = _tp("rpc", 1)  # a0 = 0 ok, 1 error

_REQ_NAMES = {
    REQ_PDU: "PDU_RECV",
    REQ_NEW: "REQ_NEW",
    REQ_SUBMIT: "BDEV_SUBMIT",
    REQ_DONE: "BDEV_DONE",
    REQ_DATA: "DATA_SENT",
    REQ_RESP: "RESP_SENT",
    REQ_H2C: "H2C_DATA",
    QP_FLUSH: "FLUSH",
    QP_NEW: "QP_NEW",
    QP_CLOSE: "QP_CLOSE",
}


@dataclass(frozen=True)
class Tpoint:
    name: str
    group: str
    obj: str  # what the object id names
    args: tuple[str, ...]  # names of a0 a1 a2 a3 that mean something
    phase: str = ""  # the request phase it ends ("" : not a request phase)
    string: bool = False  # a1..a3 hold a name (24 bytes)


TPOINTS: dict[int, Tpoint] = {}
for _base, _g, _p in (
    (TP_NVMF_TCP, "nvmf_tcp", "TCP"),
    (TP_NVMF_RDMA, "nvmf_rdma", "RDMA"),
    (TP_NVMF_FC, "nvmf_fc", "FC"),
):
    for _n, _nm in _REQ_NAMES.items():
        _args: tuple[str, ...] = {
            REQ_PDU: ("cid", "", "len", "type"),
            REQ_NEW: ("cid", "lba", "len", "opc"),
            REQ_SUBMIT: ("cid", "lba", "len"),
            REQ_DONE: ("cid", "", "", "status"),
            REQ_DATA: ("cid", "", "len", "success"),
            REQ_RESP: ("cid", "", "", "status"),
            REQ_H2C: ("cid", "", "len"),
            QP_FLUSH: ("", "", "sent"),
            QP_NEW: ("",),
            QP_CLOSE: ("qid",),
        }[_n]
        TPOINTS[_base | _n] = Tpoint(
            f"{_p}_{_nm}", _g, "qpair", _args, _nm if _n <= REQ_H2C else ""
        )
TPOINTS.update(
    {
        TP_ISCSI_PDU: Tpoint("ISCSI_PDU_RECV", "iscsi_conn", "conn", ("itt", "", "len", "opc"), "PDU_RECV"),
        TP_ISCSI_CMD: Tpoint("ISCSI_CMD_NEW", "iscsi_conn", "conn", ("itt", "lba", "len", "cdb0"), "REQ_NEW"),
        TP_ISCSI_SUBMIT: Tpoint("ISCSI_BDEV_SUBMIT", "iscsi_conn", "conn", ("itt", "lba", "len"), "BDEV_SUBMIT"),
        TP_ISCSI_DONE: Tpoint("ISCSI_BDEV_DONE", "iscsi_conn", "conn", ("itt", "", "", "status"), "BDEV_DONE"),
        TP_ISCSI_DATAIN: Tpoint("ISCSI_DATAIN_SENT", "iscsi_conn", "conn", ("itt", "", "len", "status_in"), "DATA_SENT"),
        TP_ISCSI_RESP: Tpoint("ISCSI_RESP_SENT", "iscsi_conn", "conn", ("itt", "", "", "status"), "RESP_SENT"),
        TP_ISCSI_LOGIN: Tpoint("ISCSI_CONN_FFP", "iscsi_conn", "conn", ("cid",)),
        TP_ISCSI_CLOSE: Tpoint("ISCSI_CONN_CLOSE", "iscsi_conn", "conn", ()),
        TP_SCSI_TASK: Tpoint("SCSI_TASK_START", "scsi", "device", ("tag", "lun", "len", "cdb0")),
        TP_SCSI_DONE: Tpoint("SCSI_TASK_DONE", "scsi", "device", ("tag", "", "", "status")),
        TP_BDEV_START: Tpoint("BDEV_IO_START", "bdev", "channel", ("", "lba", "len", "type")),
        TP_BDEV_DONE: Tpoint("BDEV_IO_DONE", "bdev", "channel", ("", "lba", "len", "status")),
        TP_BDEV_OPEN: Tpoint("BDEV_CHANNEL_OPEN", "bdev", "channel", (), string=True),
        TP_CTRLR_CREATE: Tpoint("CTRLR_CREATE", "nvmf", "cntlid", ("qpair",)),
        TP_CTRLR_DESTROY: Tpoint("CTRLR_DESTROY", "nvmf", "cntlid", ()),
        TP_KATO_EXPIRED: Tpoint("KEEP_ALIVE_EXPIRED", "nvmf", "cntlid", ("", "kato_ms")),
        TP_QP_CONNECT: Tpoint("QPAIR_CONNECT", "nvmf", "qpair", ("qid", "cntlid")),
        TP_QP_DISCONNECT: Tpoint("QPAIR_DISCONNECT", "nvmf", "qpair", ("qid", "cntlid")),
        TP_RPC_START: Tpoint("RPC_START", "rpc", "call", (), string=True),
        TP_RPC_DONE: Tpoint("RPC_DONE", "rpc", "call", ("error",), string=True),
    }
)  # fmt: skip
# the phases of one request, in order (a request may skip some)
PHASES = ("PDU_RECV", "REQ_NEW", "H2C_DATA", "BDEV_SUBMIT", "BDEV_DONE", "DATA_SENT", "RESP_SENT")


def transport_group(trtype: str) -> tuple[int, int]:
    """(mask bit, tpoint base) of an NVMe-oF transport's request tracepoints."""
    g = {"TCP": "nvmf_tcp", "RDMA": "nvmf_rdma", "FC": "nvmf_fc"}.get(trtype.upper(), "nvmf_tcp")
    return 1 << GROUPS[g], GROUPS[g] << 6


def parse_groups(spec: str) -> int:
    """``-e`` value: group names or masks, comma separated ("nvmf_tcp,bdev",
    "all", "0x28"); SPDK's ``name:tpoint_mask`` form is accepted for the
    group part (tracepoints are enabled per group)."""
    mask = 0
    for part in str(spec).split(","):
        part = part.strip().split(":", 1)[0].strip()
        if not part:
            continue
        mask |= group_mask(part)
    return mask


def group_mask(name: str) -> int:
    n = name.strip().lower()
    if n == "all":
        return ALL_GROUPS_MASK
    n = GROUP_ALIASES.get(n, n)
    if n in GROUPS:
        return 1 << GROUPS[n]
    try:
        v = int(n, 16)  # a bare number is a hex mask, as SPDK's -e reads it
    except ValueError:
        raise ValueError(
            f"unknown tpoint group {name!r}: choose from {', '.join(GROUPS)}, all, or a mask"
        ) from None
    if v < 0 or v & ~ALL_GROUPS_MASK:
        raise ValueError(f"tpoint group mask {name} names groups that do not exist")
    return v


def pack_name(s: str) -> tuple[int, int, int]:
    b = s.encode("utf-8", "replace")[:24].ljust(24, b"\0")
    return struct.unpack("<QQQ", b)


def unpack_name(a1: int, a2: int, a3: int) -> str:
    return struct.pack("<QQQ", a1, a2, a3).rstrip(b"\0").decode("utf-8", "replace")


_OBJ_IDS = iter(range(1, 1 << 62))


def new_object_id() -> int:
    """A process-unique object id (queue pair, connection, channel)."""
    return next(_OBJ_IDS)


# ---------------------------------------------------------------- layout ---
def header_size(rings: int) -> int:
    return (OFF_RINGS + rings * RING_DESC + 4095) // 4096 * 4096


def segment_size(rings: int, entries: int) -> int:
    return header_size(rings) + rings * entries * RECORD_SIZE


def check_entries(entries: int) -> int:
    if (
        not isinstance(entries, int)
        or entries < MIN_ENTRIES
        or entries > MAX_ENTRIES
        or entries & (entries - 1)
    ):
        raise ValueError(
            f"--num-trace-entries must be a power of 2 in {MIN_ENTRIES}..{MAX_ENTRIES}, not {entries}"
        )
    return entries


def create_segment(
    instance: str, rings: int, entries: int = DEFAULT_ENTRIES, mask: int = 0
) -> SharedSegment:
    """The instance's trace segment (supervisor, at start)."""
    check_entries(entries)
    seg = SharedSegment.create(instance, TAG, segment_size(rings, entries), hugepages="never")
    _HDR.pack_into(
        seg.buf, 0, MAGIC, VERSION, RECORD_SIZE, rings, entries, mask,
        time.time_ns(), time.perf_counter_ns(), instance.encode()[:16],
    )  # fmt: skip
    return seg


def set_mask(buf: Any, mask: int) -> None:
    _U64.pack_into(buf, OFF_MASK, mask)


def get_mask(buf: Any) -> int:
    return int(_U64.unpack_from(buf, OFF_MASK)[0])


@dataclass
class Header:
    version: int
    record_size: int
    rings: int
    entries: int
    mask: int
    created_ns: int
    mono_ns: int
    instance: str

    @classmethod
    def parse(cls, buf: Any, full: bool = True) -> Header:
        if len(buf) < OFF_RINGS:
            raise ValueError("not a blockfabric trace: too short")
        magic, ver, rsz, rings, entries, mask, wall, mono, inst = _HDR.unpack_from(buf, 0)
        if magic != MAGIC:
            raise ValueError("not a blockfabric trace (bad magic)")
        if ver != VERSION or rsz != RECORD_SIZE:
            raise ValueError(f"trace version {ver} / record size {rsz} not understood")
        if (
            not 0 < rings <= 1024
            or not MIN_ENTRIES <= entries <= MAX_ENTRIES
            or entries & (entries - 1)
        ):
            raise ValueError(f"corrupt trace header: {rings} rings x {entries} entries")
        h = cls(
            ver, rsz, rings, entries, mask, wall, mono, inst.rstrip(b"\0").decode(errors="replace")
        )
        if full and len(buf) < segment_size(rings, entries):
            raise ValueError(
                f"trace truncated: {len(buf)} bytes, its header says {segment_size(rings, entries)}"
            )
        return h


@dataclass
class RingInfo:
    index: int
    pid: int
    role: int
    core: int
    widx: int
    pid_ctime: float

    @property
    def label(self) -> str:
        return "supervisor" if self.role == ROLE_SUPERVISOR else f"reactor {self.index}"


def ring_info(buf: Any, i: int) -> RingInfo:
    pid, role, core, _pad, widx, ct = _RING.unpack_from(buf, OFF_RINGS + i * RING_DESC)
    return RingInfo(i, pid, role, core, widx, ct)


def ring_offset(h: Header, i: int) -> int:
    return header_size(h.rings) + i * h.entries * RECORD_SIZE


# ---------------------------------------------------------------- writer ---
_now = time.perf_counter_ns
_pack = REC.pack_into
_packq = _U64.pack_into


class Tracer:
    """This process's writer of one ring. ``mask`` is a plain int attribute:
    the data path tests it before calling `rec`."""

    def __init__(self) -> None:
        self.mask = 0
        self.seg: SharedSegment | None = None
        self.buf: Any = None
        self.base = 0
        self.slot_mask = 0
        self.seq = 0
        self.widx_off = 0
        self.ring = -1
        self.drops = 0

    @property
    def attached(self) -> bool:
        return self.seg is not None

    def attach(
        self, seg: SharedSegment, ring: int, role: int = ROLE_REACTOR, core: int = -1
    ) -> None:
        """Become the writer of ring ``ring`` (a restarted reactor continues
        after the highest sequence number left in it)."""
        h = Header.parse(seg.buf)
        if not 0 <= ring < h.rings:
            raise ValueError(f"trace ring {ring} out of range (segment has {h.rings})")
        self.seg, self.buf, self.ring = seg, seg.buf, ring
        self.base = ring_offset(h, ring)
        self.slot_mask = h.entries - 1
        self.widx_off = OFF_RINGS + ring * RING_DESC + OFF_WIDX_IN_DESC
        last = ring_info(seg.buf, ring).widx
        for rec in REC.iter_unpack(seg.buf[self.base : self.base + h.entries * RECORD_SIZE]):
            if rec[0] == rec[9] and rec[0] > last:
                last = rec[0]
        self.seq = last
        try:
            from .manifest import process_ctime

            ct = process_ctime()
        except Exception:
            ct = 0.0
        _RING.pack_into(seg.buf, OFF_RINGS + ring * RING_DESC, os.getpid(), role, core, 0, last, ct)
        self.reload()

    def reload(self) -> int:
        """Read the group mask from the segment (RPCs change it there)."""
        if self.buf is not None:
            self.mask = get_mask(self.buf)
        return self.mask

    def detach(self) -> None:
        self.mask = 0
        self.buf = None
        seg, self.seg = self.seg, None
        if seg is not None:
            seg.close()

    def rec(
        self, tp: int, obj: int = 0, a0: int = 0, a1: int = 0, a2: int = 0, a3: int = 0
    ) -> None:
        n = self.seq + 1
        self.seq = n
        try:
            _pack(
                self.buf,
                self.base + (n & self.slot_mask) * 64,
                n,
                _now(),
                tp,
                0,
                a0,
                obj,
                a1,
                a2,
                a3,
                n,
            )
        except struct.error:  # an argument out of range: keep its low bits
            m = 0xFFFFFFFFFFFFFFFF
            _pack(
                self.buf, self.base + (n & self.slot_mask) * 64, n, _now(), tp & 0xFFFF, 0,
                a0 & 0xFFFFFFFF, obj & m, a1 & m, a2 & m, a3 & m, n,
            )  # fmt: skip
        except TypeError:  # detached meanwhile (shutdown)
            self.drops += 1
            return
        _packq(self.buf, self.widx_off, n)

    def rec_name(self, tp: int, obj: int, name: str, a0: int = 0) -> None:
        a1, a2, a3 = pack_name(name)
        self.rec(tp, obj, a0, a1, a2, a3)


TRACE = Tracer()


# ---------------------------------------------------------------- reader ---
@dataclass
class Record:
    ring: int
    seq: int
    ts: int  # monotonic ns
    tpoint: int
    obj: int
    a0: int
    a1: int
    a2: int
    a3: int

    @property
    def tp(self) -> Tpoint | None:
        return TPOINTS.get(self.tpoint)

    @property
    def name(self) -> str:
        t = TPOINTS.get(self.tpoint)
        return t.name if t is not None else f"TPOINT_{self.tpoint:#x}"

    @property
    def group(self) -> str:
        g = self.tpoint >> 6
        return next((n for n, v in GROUPS.items() if v == g), f"group{g:#x}")


def _ring_alive(info: RingInfo) -> bool:
    """The ring's writer still runs (then records may change while read)."""
    from .procs import pid_alive

    return pid_alive(info.pid, info.pid_ctime or None)


def read_ring(
    buf: Any, h: Header, i: int, after: int = 0, live: bool | None = None
) -> tuple[list[Record], int]:
    """Records of ring ``i`` with seq > ``after``, in seq order, and the
    number of torn or overwritten slots that were skipped. ``live`` None:
    judged from the ring's writer pid."""
    info = ring_info(buf, i)
    if live is None:
        live = _ring_alive(info)
    off = ring_offset(h, i)
    size = h.entries * RECORD_SIZE
    w1 = ring_info(buf, i).widx
    raw = bytes(buf[off : off + size])
    w2 = ring_info(buf, i).widx
    lo = w2 + 1 - h.entries if live else 0
    hi = w1 if live else (1 << 64)
    out: list[Record] = []
    torn = 0
    m = h.entries - 1
    for slot, (s, ts, tp, _p, a0, obj, a1, a2, a3, s2) in enumerate(REC.iter_unpack(raw)):
        if s == 0 and s2 == 0:
            continue  # never written
        if s != s2 or s & m != slot:
            torn += 1
            continue
        if s <= after:
            continue
        if s > hi or s < lo:
            torn += 1
            continue
        out.append(Record(i, s, ts, tp, obj, a0, a1, a2, a3))
    out.sort(key=lambda r: r.seq)
    return out, torn


@dataclass
class Snapshot:
    header: Header
    rings: list[RingInfo]
    records: list[Record]  # every ring, merged in time order
    torn: int
    source: str

    def by_ring(self) -> dict[int, list[Record]]:
        out: dict[int, list[Record]] = {i.index: [] for i in self.rings}
        for r in self.records:
            out.setdefault(r.ring, []).append(r)
        return out


def snapshot(buf: Any, source: str = "", live: bool | None = None) -> Snapshot:
    h = Header.parse(buf)
    rings = [ring_info(buf, i) for i in range(h.rings)]
    recs: list[Record] = []
    torn = 0
    for i in range(h.rings):
        r, t = read_ring(buf, h, i, live=live)
        recs += r
        torn += t
    recs.sort(key=lambda r: (r.ts, r.ring, r.seq))
    return Snapshot(h, rings, recs, torn, source)


def segment_path(instance: str) -> str:
    return str(names.shm_path(instance, TAG))


def open_live(instance: str) -> SharedSegment:
    """Map a live (or leftover) instance's trace segment."""
    return SharedSegment.attach(names.object_name(instance, TAG))


def read_file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def close_quietly(seg: SharedSegment | None) -> None:
    if seg is not None:
        with contextlib.suppress(Exception):
            seg.close()
