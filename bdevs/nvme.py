"""nvme bdev: a namespace of a remote NVMe-oF (TCP) controller.

The supervisor owns the admin queue (bdevs/nvme_rpc.py); the description it
broadcasts carries what a reactor needs to open its OWN I/O queue pair to
the remote controller (address, NQNs, host id, controller id, digests, the
qid to use). Each reactor connects lazily when it first opens its channel
(SPDK's per-thread channel), on its event loop with a non-blocking socket.

FUA is passed on (CDW12 bit 30 of Write) and flush is an NVMe Flush, so the
remote controller makes the data durable; reads given ``into`` land in it
directly (the host library receives C2HData straight into the buffer).

When the connection is lost, outstanding and new I/O fail with
IoStatus.FAILED and the channel reconnects every ``reconnect_delay_sec``;
the supervisor decides when the controller is gone for good
(``ctrlr_loss_timeout_sec``) and removes the bdevs.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any

from ..transports.nvmf import spec as S
from .base import Bdev, Callback, IoChannel, IoStatus, ReadCallback

log = logging.getLogger(__name__)


def _io_status(status: int) -> IoStatus:
    if status == 0:
        return IoStatus.SUCCESS
    sct, sc, _ = S.split_status(status)
    if sct == S.SCT_GENERIC and sc == S.SC_LBA_OUT_OF_RANGE:
        return IoStatus.OUT_OF_RANGE
    if sct == S.SCT_MEDIA and sc == S.SC_COMPARE_FAILURE:
        return IoStatus.MISCOMPARE
    if sct == S.SCT_GENERIC and sc == S.SC_INVALID_OPCODE:
        return IoStatus.UNSUPPORTED
    return IoStatus.FAILED


class _Join:
    """Completes a split I/O once all its pieces are back (first error wins)."""

    __slots__ = ("cb", "left", "status")

    def __init__(self, cb: Callback, pieces: int) -> None:
        self.cb = cb
        self.left = pieces
        self.status = IoStatus.SUCCESS

    def done(self, st: IoStatus) -> None:
        if st and not self.status:
            self.status = st
        self.left -= 1
        if self.left == 0:
            self.cb(self.status)


class NvmeChannel(IoChannel):
    def __init__(self, bdev: NvmeBdev, loop: Any) -> None:
        super().__init__(bdev)
        self.nbdev = bdev
        self.loop = loop
        self.lq: Any = None
        self.waiting: deque[Any] = deque()  # I/O waiting for a connection or a free slot
        self.connected_gen = -1
        self.closed = False
        self.last_error = ""
        self._retry: Any = None
        if loop is not None:
            self._connect()

    # ---------------------------------------------------------- connection
    def _connect(self) -> None:
        from ..transports.nvmf_host.controller import LoopQueue
        from ..transports.nvmf_host.queue import TransportError

        c = self.nbdev.ctrlr
        self._retry = None
        if self.closed or self.lq is not None:
            return
        if c.get("state") != "enabled":
            self._schedule_retry()
            return
        try:
            self.lq = LoopQueue(
                self.loop,
                c["traddr"],
                c["trsvcid"],
                c["subnqn"],
                c["hostnqn"],
                bytes.fromhex(c["hostid"]),
                c["cntlid"],
                self._qid(),
                c.get("qsize", 128),
                c.get("hdgst", False),
                c.get("ddgst", False),
                c.get("icd_max", 0),
                self._on_ready,
                self._on_fail,
                timeout=5.0,
            )
            self.connected_gen = c.get("gen", 0)
        except TransportError as e:
            self._on_fail(str(e))

    def _qid(self) -> int:
        """A queue id unique per (reactor, namespace): reactors are pinned,
        so this process's core tells which reactor it is."""
        c = self.nbdev.ctrlr
        cores = c.get("cores") or [0]
        try:
            mine = min(os.sched_getaffinity(0))
            ridx = cores.index(mine) if mine in cores else 0
        except OSError:
            ridx = 0
        return 1 + c.get("ns_index", 0) * len(cores) + ridx

    def _on_ready(self) -> None:
        self.last_error = ""
        self._drain_waiting()

    def _on_fail(self, reason: str) -> None:
        if self.last_error != reason:
            log.warning("bdev %s: I/O queue lost: %s", self.bdev.name, reason)
        self.last_error = reason
        if self.lq is not None:
            self.lq.close()
        self.lq = None
        while self.waiting:
            self._fail_op(self.waiting.popleft())
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self.closed or self._retry is not None or self.loop is None:
            return
        delay = max(0.1, float(self.nbdev.ctrlr.get("reconnect_delay_sec", 1) or 1))
        self._retry = self.loop.call_later(delay, self._connect)

    def _fail_op(self, op: tuple[Any, ...]) -> None:
        kind, cb = op[0], op[1]
        if kind == "read":
            cb(IoStatus.FAILED, None)
        else:
            cb(IoStatus.FAILED)

    # ---------------------------------------------------------- submission
    def _usable(self) -> bool:
        c = self.nbdev.ctrlr
        if (
            c.get("gen", 0) != self.connected_gen
            and self.lq is not None
            and c.get("state") == "enabled"
        ):
            # the supervisor reconnected the controller (new cntlid): start over
            self.lq.close()
            self.q_abort()
            self.lq = None
            self._connect()
        return c.get("state") == "enabled" and (self.lq is not None or self._retry is None)

    def q_abort(self) -> None:
        if self.lq is not None:
            from ..transports.nvmf_host.queue import ST_HOST_PATH_ERROR

            self.lq.q.abort_all(ST_HOST_PATH_ERROR)

    def _start(self, op: tuple[Any, ...]) -> None:
        if self.closed or not self._usable():
            self._fail_op(op)
            return
        lq = self.lq
        if lq is None or not lq.ready or not lq.q.can_submit or self.waiting:
            self.waiting.append(op)
            return
        self._issue(op)

    def _issue(self, op: tuple[Any, ...]) -> None:
        lq = self.lq
        q = lq.q
        nsid = self.nbdev.nsid
        kind, cb = op[0], op[1]
        if kind == "read":
            _, _, lba, nlb, into = op
            n = nlb * self.bdev.block_size
            buf = into[:n] if into is not None else memoryview(bytearray(n))
            q.read(nsid, lba, nlb, buf, self._done_read, (cb, buf))
        elif kind == "write":
            _, _, lba, data, fua = op
            q.write(nsid, lba, len(data) // self.bdev.block_size, data, self._done, cb, fua=fua)
        elif kind == "flush":
            q.submit(S.IO_FLUSH, nsid, cb=self._done, ctx=cb)
        elif kind == "zeroes":
            _, _, lba, nlb = op
            q.submit(
                S.IO_WRITE_ZEROES,
                nsid,
                (lba & 0xFFFFFFFF, lba >> 32, nlb - 1, 0, 0, 0),
                self._done,
                cb,
            )
        elif kind == "unmap":
            import struct

            _, _, lba, nlb = op
            ranges = []
            while nlb:
                n = min(nlb, 0xFFFFFFFF)
                ranges.append(struct.pack("<IIQ", 0, n, lba))
                lba += n
                nlb -= n
            q.submit(
                S.IO_DSM,
                nsid,
                (len(ranges) - 1, 1 << 2, 0, 0, 0, 0),
                self._done,
                cb,
                write_from=b"".join(ranges),
            )
        self.in_flight += 1
        lq.kick()

    def _drain_waiting(self) -> None:
        lq = self.lq
        while self.waiting and lq is not None and lq.ready and lq.q.can_submit:
            self._issue(self.waiting.popleft())

    def _done(self, r: Any, status: int, _res: int) -> None:
        self.in_flight -= 1
        st = _io_status(status)
        if st:
            self.stats.io_errors += 1
        r.ctx(st)
        if self.waiting:
            self._drain_waiting()

    def _done_read(self, r: Any, status: int, _res: int) -> None:
        self.in_flight -= 1
        cb, buf = r.ctx
        st = _io_status(status)
        if st:
            self.stats.io_errors += 1
            cb(st, None)
        else:
            cb(st, buf)
        if self.waiting:
            self._drain_waiting()

    def _max_blocks(self) -> int:
        mx = int(self.nbdev.ctrlr.get("max_xfer") or 0)
        return mx // self.bdev.block_size if mx else 0

    def _do_read(
        self, offset_blocks: int, num_blocks: int, cb: ReadCallback, into: memoryview | None = None
    ) -> None:
        mb = self._max_blocks()
        if not mb or num_blocks <= mb:
            self._start(("read", cb, offset_blocks, num_blocks, into))
            return
        # larger than the remote's MDTS: split like SPDK's NVMe driver, one
        # buffer for the whole transfer, completed when every piece is back
        bs = self.bdev.block_size
        whole = (
            into[: num_blocks * bs] if into is not None else memoryview(bytearray(num_blocks * bs))
        )
        join = _Join(lambda st: cb(st, whole if not st else None), -(-num_blocks // mb))
        for lba in range(offset_blocks, offset_blocks + num_blocks, mb):
            n = min(mb, offset_blocks + num_blocks - lba)
            dst = whole[(lba - offset_blocks) * bs : (lba - offset_blocks + n) * bs]

            def piece(st: IoStatus, data: memoryview | None) -> None:
                join.done(st)  # landed in ``dst`` directly

            self._start(("read", piece, lba, n, dst))

    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        mb = self._max_blocks()
        bs = self.bdev.block_size
        if not mb or len(data) <= mb * bs:
            self._start(("write", cb, offset_blocks, data, fua))
            return
        join = _Join(cb, -(-len(data) // (mb * bs)))
        for i, off in enumerate(range(0, len(data), mb * bs)):
            piece = data[off : off + mb * bs]
            self._start(("write", join.done, offset_blocks + i * mb, piece, fua))

    def _do_flush(self, cb: Callback) -> None:
        self._start(("flush", cb))

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self._start(("zeroes", cb, offset_blocks, num_blocks))

    def _do_unmap(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self._start(("unmap", cb, offset_blocks, num_blocks))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.lq is not None:
            lq, self.lq = self.lq, None
            lq.close()
            lq.q.abort_all()
        while self.waiting:
            self._fail_op(self.waiting.popleft())


class NvmeBdev(Bdev):
    """One namespace of a remote controller; ``ctrlr`` is the plain-data
    connection description shared by every namespace bdev of it."""

    MODULE = "nvme"
    PRODUCT = "NVMe disk"

    def __init__(
        self, *args: Any, ctrlr: dict[str, Any] | None = None, nsid: int = 1, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.ctrlr: dict[str, Any] = ctrlr or {}
        self.nsid = nsid
        self.product_name = self.PRODUCT

    def _description(self) -> dict[str, Any]:
        return {"nsid": self.nsid, "ctrlr": dict(self.ctrlr)}

    def _restore(self, d: dict[str, Any]) -> None:
        self.nsid = d["nsid"]
        self.ctrlr = dict(d["ctrlr"])

    def update_description(self, d: dict[str, Any]) -> None:
        """A new snapshot from the supervisor (reconnected controller, state)."""
        self.ctrlr.update(d.get("ctrlr", {}))

    def open_channel(self, loop: Any = None) -> IoChannel:
        return NvmeChannel(self, loop)

    def driver_specific(self) -> dict[str, Any]:
        c = self.ctrlr
        return {
            "nvme": [
                {
                    "trid": {
                        "trtype": "TCP",
                        "adrfam": c.get("adrfam", "IPv4"),
                        "traddr": c.get("traddr"),
                        "trsvcid": str(c.get("trsvcid")),
                        "subnqn": c.get("subnqn"),
                    },
                    "ctrlr_data": {"cntlid": c.get("cntlid")},
                    "ns_data": {"id": self.nsid},
                }
            ]
        }
