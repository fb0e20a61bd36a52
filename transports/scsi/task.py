"""One SCSI command as the transport hands it to the target core.

The transport fills the request half; the LUN fills the result half and calls
the completion callback. Data-in is a list of memoryviews so a read can pass
the bdev's own memory (malloc shared memory) straight to sendmsg.
"""

from __future__ import annotations

from typing import Any, Literal

from .sense import GOOD

Direction = Literal["read", "write", "none"]


class ScsiTask:
    __slots__ = (
        "lun",
        "cdb",
        "initiator_port",
        "target_port",
        "tag",
        "data_out",
        "expected_transfer_length",
        "direction",
        "status",
        "sense",
        "data_in",
        "residual",
        "aborted",
        "transport_ctx",
        "transfer_length",
        "offset",
        "iovs",
    )

    def __init__(
        self,
        lun: int = 0,
        cdb: bytes = b"",
        initiator_port: str = "",
        target_port: str = "",
        tag: int = 0,
        data_out: memoryview | None = None,
        expected_transfer_length: int = 0,
        direction: Direction = "none",
    ) -> None:
        self.lun = lun
        self.cdb = bytes(cdb)
        self.initiator_port = initiator_port
        self.target_port = target_port
        self.tag = tag
        self.data_out = data_out
        self.expected_transfer_length = expected_transfer_length
        self.direction: Direction = direction
        # results
        self.status = GOOD
        self.sense = b""
        self.data_in: list[memoryview] = []
        self.residual = 0  # the transport computes it
        self.aborted = False
        self.transport_ctx: object = None  # free slot for the transport's own bookkeeping
        # bytes of data-out the CDB asked for (writes), so the transport can
        # compute the residual against EDTL; -1 when it does not apply
        self.transfer_length = -1
        # bytes into the command's data transfer this task covers: a transport
        # that moves a WRITE burst by burst runs one task per piece (block
        # aligned); only the piece at 0 reports a unit attention
        self.offset = 0
        # pool buffers (shm/iobuf.IoVec) behind data_in; the transport
        # releases them once the data has been sent
        self.iovs: list[Any] = []

    def data_in_length(self) -> int:
        return sum(len(m) for m in self.data_in)

    def data_out_length(self) -> int:
        return 0 if self.data_out is None else len(self.data_out)

    def set_data(self, data: bytes | bytearray | memoryview, alloc_len: int | None = None) -> None:
        """Return `data` truncated to the CDB's allocation length (SPC-4 4.2.5.6)."""
        mv = memoryview(data)
        if alloc_len is not None and len(mv) > alloc_len:
            mv = mv[:alloc_len]
        self.data_in = [mv] if len(mv) else []

    def check_condition(self, sense: bytes) -> None:
        self.status = 2
        self.sense = sense
        self.data_in = []

    def __repr__(self) -> str:
        return (
            f"ScsiTask(lun={self.lun}, cdb={self.cdb.hex()}, tag={self.tag:#x}, "
            f"status={self.status:#x}, sense={self.sense[:14].hex()})"
        )
