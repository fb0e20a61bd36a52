"""What an iSCSI connection knows about a command (`Task`, `R2T`), the SCSI
status and sense data the transport raises itself, and the explicit
interfaces it uses of the SCSI core (`DeviceLike`, `LunLike`) and of the
reactor glue (`ConnEnv`). Every call into the SCSI core goes through these
Protocols: nothing is looked up by name at run time."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import pdu as P
from .nodes import ConfigView
from .session import SessionRegistry

if TYPE_CHECKING:
    from ...bdevs.base import Bdev, IoChannel, IoStatus
    from .xfer import Region

# SCSI status / sense for errors the transport raises itself
CHECK_CONDITION = 0x02
TASK_SET_FULL = 0x28
SENSE_INVALID_FIELD_CDB = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0])
SENSE_LUN_GONE = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25, 0x00, 0, 0, 0, 0])
SENSE_HW_ERROR = bytes([0x70, 0, 0x04, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x44, 0x00, 0, 0, 0, 0])

Done = Callable[[], None]


class LunLike(Protocol):
    """The part of `scsi.lun.ScsiLun` a connection uses."""

    bdev: Bdev
    max_transfer_blocks: int
    stage_reads: bool
    channel_getter: Callable[[], IoChannel | None]
    fast_channel: IoChannel | None  # kept by the batched READ path (fastread.py)

    def abort_task(self, tag: int, initiator_port: str, on_done: Done | None = None) -> bool: ...

    def abort_task_set(
        self, initiator_port: str | None = None, on_done: Done | None = None
    ) -> int: ...

    def reset(self, on_done: Done | None = None) -> None: ...

    def io_error(self, task: Any, st: IoStatus, read: bool) -> None: ...


class DeviceLike(Protocol):
    """The part of `scsi.device.ScsiDevice` a connection uses."""

    def execute(self, task: Any, done: Callable[[Any], None]) -> None: ...

    def fast_lun(self, lun_id: int, nexus: Any) -> LunLike | None:
        """The LUN object when a plain READ may bypass the SCSI core, else None."""
        ...

    def get_lun(self, lun_id: int) -> LunLike | None: ...

    def target_reset(self, on_done: Done | None = None) -> None: ...

    def nexus_lost(self, initiator_port: str, target_port: str) -> None: ...


class ConnEnv(Protocol):
    """What a connection needs from the reactor glue (the driver)."""

    view: ConfigView
    sessions: SessionRegistry
    iobufs: Any  # shm.iobuf.IoBufs, or None (unit tests: heap buffers)
    stats: dict[str, int]

    def device(self, target_name: str) -> DeviceLike | None: ...

    def make_task(self, **kw: Any) -> Any: ...


def block_size(lun: LunLike | None, chunk: int) -> int:
    """Block size of a LUN when its writes can be cut into pool chunks."""
    if lun is None:
        return 0
    bs = lun.bdev.block_size
    return bs if 0 < bs <= chunk and chunk % bs == 0 else 0


class R2T:
    __slots__ = ("ttt", "offset", "length", "received", "datasn", "r2tsn")

    def __init__(self, ttt: int, offset: int, length: int, r2tsn: int) -> None:
        self.ttt = ttt
        self.offset = offset
        self.length = length
        self.received = 0
        self.datasn = 0
        self.r2tsn = r2tsn


class Task:
    __slots__ = (
        "itt",
        "lun",
        "lun_field",
        "cdb",
        "edtl",
        "direction",
        "received",
        "next_r2t_offset",
        "r2ts",
        "r2tsn",
        "unsol_open",
        "unsol_datasn",
        "unsol_limit",
        "scsi",
        "dead",
        "conn",
        "slot",
        "stream",
        "bs",
        "region",
        "regions",
        "wait",
        "carry",
        "submitted",
        "subs",
        "pieces",
        "fail",
        "result",
        "io",
        "waiters",
        "last_rx",
        "imm_pdu",
        "r2t_slot",
        "r2t_queued",
        "staged",
    )

    def __init__(self, itt: int, lun_field: int, cdb: bytes, edtl: int, direction: str) -> None:
        self.itt = itt
        self.lun_field = lun_field
        self.lun = P.lun_to_int(lun_field)
        self.cdb = cdb
        self.edtl = edtl
        self.direction = direction
        self.received = 0
        self.next_r2t_offset = 0
        self.r2ts: dict[int, R2T] = {}
        self.r2tsn = 0
        self.unsol_open = False
        self.unsol_datasn = 0
        self.unsol_limit = 0
        self.scsi: Any = None
        self.dead = False
        self.conn: Any = None  # the Connection that owns it
        # the command-window slot this task holds: 0 none, 1 CmdSN, 2 immediate
        self.slot = 0
        # write data (xfer.py): the region receiving now, every region still
        # holding pool buffers, a pending pool request
        self.stream = False  # written to the bdev piece by piece
        self.bs = 0
        self.region: Region | None = None
        self.regions: list[Region] = []
        self.wait: Any = None
        self.carry = b""  # partial block at the end of the previous region
        self.submitted = 0  # transfer bytes handed to the SCSI core (streamed)
        self.subs = 0  # SCSI pieces in flight
        self.pieces = 0  # SCSI pieces issued
        self.fail: Any = None  # the first piece that did not end GOOD
        self.result: Any = None  # the last piece (its transfer_length)
        self.io = 0  # SCSI executions / bdev reads in flight for this task
        self.waiters: list[Done] = []  # run when io drops to 0
        self.last_rx = 0.0  # last data progress (R2T / Data-Out timeout)
        self.imm_pdu: P.Pdu | None = None
        self.r2t_slot = False  # one of the connection's max_r2t_per_connection
        self.r2t_queued = False
        self.staged = 0  # pool bytes its READ stages (bdevs that copy)
