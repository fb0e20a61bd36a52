"""nvme bdev: a namespace of a remote NVMe-oF (TCP) controller.

The supervisor owns the admin queue (bdevs/nvme_rpc.py); the description it
broadcasts carries what a reactor needs to open its OWN I/O queue pair to
the remote controller (address, NQNs, host id, controller id, digests, the
qid to use). Each reactor connects lazily when it first opens its channel
(SPDK's per-thread channel), on its event loop with a non-blocking socket.

FUA is passed on (CDW12 bit 30 of Write) and flush is an NVMe Flush, so the
remote controller makes the data durable; reads given ``into`` land in it
directly (the host library receives C2HData straight into the buffer).

When the connection is lost the channel reconnects every
``reconnect_delay_sec``. With ``ctrlr_loss_timeout_sec`` set (non-zero, as
SPDK's bdev_nvme) the I/O that was outstanding on the lost queue and the I/O
submitted meanwhile wait and are sent again once the queue is back (a plain
write or read may be repeated; the host was never told it completed);
``fast_io_fail_timeout_sec`` (else the loss timeout) after the loss they fail
with IoStatus.FAILED, and so does new I/O until the queue is back. Without
it (0, the default) outstanding and new I/O fail at once. The supervisor
decides when the controller is gone for good (``ctrlr_loss_timeout_sec``)
and removes the bdevs.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any

from ..transports.nvmf import spec as S
from .base import (
    Bdev,
    Callback,
    CompareCallback,
    IoChannel,
    IoStatus,
    ReadCallback,
    first_difference,
)

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


FUA_BIT = 1 << 30  # Write CDW12


class _Fused:
    """The two halves of a fused Compare-and-Write; completes once both are back."""

    __slots__ = ("ch", "cb", "lba", "nlb", "cmp", "st")

    def __init__(self, ch: NvmeChannel, cb: CompareCallback, lba: int, nlb: int, cmp: memoryview):
        self.ch = ch
        self.cb = cb
        self.lba = lba
        self.nlb = nlb
        self.cmp = cmp
        self.st: list[int | None] = [None, None]

    def done(self, half: int, status: int) -> None:
        self.st[half] = status
        if None in self.st:
            return
        cst, wst = _io_status(self.st[0] or 0), _io_status(self.st[1] or 0)
        if cst == IoStatus.MISCOMPARE:
            self._locate()
        elif cst or wst:
            self.ch.stats.io_errors += 1
            self.cb(cst or wst, -1)
        else:
            self.cb(IoStatus.SUCCESS, -1)

    def _locate(self) -> None:
        """The remote says only "compare failure": read to find the offset."""

        def got(st: IoStatus, data: memoryview | None) -> None:
            d = first_difference(data, self.cmp) if not st and data is not None else -1
            self.cb(IoStatus.MISCOMPARE, max(d, 0))

        self.ch.read(self.lba, self.nlb, got)


def _tls_entry(c: dict[str, Any]) -> Any:
    """The TLS PSK of the controller's queues (derived in the supervisor)."""
    if not c.get("tls_identity"):
        return None
    from ..transports.tls.psk import PskEntry

    return PskEntry(c["tls_identity"], c["tls_suite"], bytes(c["tls_key"]))


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
        self._fail_timer: Any = None  # fails the waiting I/O when the outage lasts too long
        self._io_fail = False  # past fast_io_fail_timeout_sec: fail new I/O until reconnected
        if loop is not None:
            self._connect()

    def _holds_io(self) -> bool:
        """I/O waits for the reconnect (bdev_nvme's ctrlr_loss_timeout_sec != 0)."""
        c = self.nbdev.ctrlr
        return (
            not self.closed
            and not self._io_fail
            and self.loop is not None
            and float(c.get("ctrlr_loss_timeout_sec") or 0) != 0
            and c.get("state") in ("enabled", "failed", "connecting")
        )

    def _arm_fail_timer(self) -> None:
        if self._fail_timer is not None or self.loop is None:
            return
        c = self.nbdev.ctrlr
        t = float(c.get("fast_io_fail_timeout_sec") or 0) or float(
            c.get("ctrlr_loss_timeout_sec") or 0
        )
        if t > 0:
            self._fail_timer = self.loop.call_later(t, self._fail_waiting)

    def _fail_waiting(self) -> None:
        self._fail_timer = None
        if self.lq is not None and self.lq.ready:
            return
        self._io_fail = True
        while self.waiting:
            self._fail_op(self.waiting.popleft())

    # ---------------------------------------------------------- connection
    def _connect(self) -> None:
        from ..transports.nvmf_host.auth import HostAuthConfig
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
            if c.get("trtype") == "RDMA":
                from ..transports.nvmf_host.rdma_verbs import RdmaLoopQueue

                self.lq = RdmaLoopQueue(
                    self.loop,
                    c["traddr"],
                    c["trsvcid"],
                    c["subnqn"],
                    c["hostnqn"],
                    bytes.fromhex(c["hostid"]),
                    c["cntlid"],
                    self._qid(),
                    c.get("qsize", 128),
                    c.get("icd_max", 0),
                    self._on_ready,
                    self._on_fail,
                    timeout=5.0,
                )
                self.connected_gen = c.get("gen", 0)
                return
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
                fc=(c["host_traddr"], c["assoc_id"]) if c.get("trtype") == "FC" else None,
                tls=_tls_entry(c),
                dhchap=HostAuthConfig.from_strings(*c["dhchap"]) if c.get("dhchap") else None,
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
        self._io_fail = False
        if self._fail_timer is not None:
            self._fail_timer.cancel()
            self._fail_timer = None
        self._drain_waiting()

    def _on_fail(self, reason: str) -> None:
        if self.last_error != reason:
            log.warning("bdev %s: I/O queue lost: %s", self.bdev.name, reason)
        self.last_error = reason
        if self.lq is not None:
            self.lq.close()
        self.lq = None
        if self._holds_io():
            self._arm_fail_timer()  # the waiting I/O is sent again after the reconnect
        else:
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
        elif kind == "caw":
            cb(IoStatus.FAILED, -1)
        else:
            cb(IoStatus.FAILED)

    @staticmethod
    def _fits(q: Any, op: tuple[Any, ...]) -> bool:
        """Room for ``op`` on the queue: a fused pair needs two slots at once."""
        if op[0] == "caw":
            return bool(q.can_submit) and q.max_outstanding - q.outstanding >= 2
        return bool(q.can_submit)

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
        if self._holds_io():
            if self.lq is None:
                self._arm_fail_timer()
            return True
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
        if lq is None or not lq.ready or not self._fits(lq.q, op) or self.waiting:
            self.waiting.append(op)
            return
        self._issue(op)

    def _issue(self, op: tuple[Any, ...]) -> None:
        lq = self.lq
        q = lq.q
        nsid = self.nbdev.nsid
        kind = op[0]
        if kind == "read":
            _, _, lba, nlb, into = op
            n = nlb * self.bdev.block_size
            buf = into[:n] if into is not None else memoryview(bytearray(n))
            q.read(nsid, lba, nlb, buf, self._done_read, (op, buf))
        elif kind == "write":
            _, _, lba, data, fua = op
            q.write(nsid, lba, len(data) // self.bdev.block_size, data, self._done, op, fua=fua)
        elif kind == "flush":
            q.submit(S.IO_FLUSH, nsid, cb=self._done, ctx=op)
        elif kind == "caw":
            # fused Compare + Write, back to back on this queue: the remote
            # controller runs them atomically (against every host and queue)
            _, cb, lba, cmp, wr, fua = op
            nlb = len(wr) // self.bdev.block_size
            cdws = (lba & 0xFFFFFFFF, lba >> 32, nlb - 1, 0, 0, 0)
            wcdws = (lba & 0xFFFFFFFF, lba >> 32, (nlb - 1) | (FUA_BIT if fua else 0), 0, 0, 0)
            pair = _Fused(self, cb, lba, nlb, cmp)
            q.submit_sqe(
                S.pack_sqe(S.IO_COMPARE, 0, nsid, cdws, flags=(S.PSDT_SGL << 6) | S.FUSE_FIRST),
                self._done_fused,
                (pair, 0),
                write_from=cmp,
            )
            q.submit_sqe(
                S.pack_sqe(S.IO_WRITE, 0, nsid, wcdws, flags=(S.PSDT_SGL << 6) | S.FUSE_SECOND),
                self._done_fused,
                (pair, 1),
                write_from=wr,
            )
            self.in_flight += 1  # two commands
        elif kind == "zeroes":
            _, _, lba, nlb = op
            q.submit(
                S.IO_WRITE_ZEROES,
                nsid,
                (lba & 0xFFFFFFFF, lba >> 32, nlb - 1, 0, 0, 0),
                self._done,
                op,
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
                op,
                write_from=b"".join(ranges),
            )
        self.in_flight += 1
        lq.kick()

    def _drain_waiting(self) -> None:
        lq = self.lq
        while self.waiting and lq is not None and lq.ready and self._fits(lq.q, self.waiting[0]):
            self._issue(self.waiting.popleft())

    def _requeue(self, op: tuple[Any, ...], status: int) -> bool:
        """An I/O lost with its queue pair waits for the reconnect."""
        from ..transports.nvmf_host.queue import ST_HOST_PATH_ERROR

        if status != ST_HOST_PATH_ERROR or not self._holds_io():
            return False
        self.waiting.append(op)
        return True

    def _done(self, r: Any, status: int, _res: int) -> None:
        self.in_flight -= 1
        op = r.ctx
        if self._requeue(op, status):
            return
        st = _io_status(status)
        if st:
            self.stats.io_errors += 1
        op[1](st)
        if self.waiting:
            self._drain_waiting()

    def _done_fused(self, r: Any, status: int, _res: int) -> None:
        self.in_flight -= 1
        pair, half = r.ctx
        pair.done(half, status)
        if self.waiting:
            self._drain_waiting()

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        mb = self._max_blocks()
        if mb and len(write) > mb * self.bdev.block_size:
            cb(IoStatus.FAILED, -1)  # a fused pair cannot be split
            return
        self._start(("caw", cb, offset_blocks, compare, write, fua))

    def _done_read(self, r: Any, status: int, _res: int) -> None:
        self.in_flight -= 1
        op, buf = r.ctx
        if self._requeue(op, status):
            return
        cb = op[1]
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
        if self._fail_timer is not None:
            self._fail_timer.cancel()
            self._fail_timer = None
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
                        "trtype": c.get("trtype", "TCP"),
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
