"""NVMe/RDMA host queue pair (sans-I/O).

`RdmaHostQueue` is a `HostQueue` (same command layer: CIDs, slots, the SQE
builders for read/write/connect/properties, callbacks, timeouts) whose wire
is NVMe/RDMA (NVMe-oF transport binding, RDMA part) instead of NVMe/TCP PDUs.
The codecs are the target's (transports/nvmf/rdma_proto.py): the RDMA CM
private data of the connect request (RECFMT 0, QID, HRQSIZE, HSQSIZE,
CNTLID), of the accept (CRQSIZE) and of a reject (status), the keyed SGL
data block descriptor and the in-capsule descriptor.

No verbs here: the queue works on one memory *arena* the glue registered
once (``mem``, its address ``addr`` and remote key ``rkey``; rdma_verbs.py
gives it an mmap registered as one MR, the unit tests a bytearray):

* one command capsule per CID (SQE + up to ``icd_cap`` in-capsule bytes),
* one staging buffer per CID (``stage`` bytes) for data whose buffer is not
  in registered memory: reads land there (the target RDMA WRITEs it) and are
  copied out when the response arrives, write data is copied in before the
  SEND (the target RDMA READs it),
* ``qsize`` receive slots of 16 bytes for the response capsules.

Buffers the glue can name in registered memory (``translate(view)`` gives
``(address, rkey)``, e.g. the shared iobuf pool registered once) are used
in place: no copy. Small writes up to the controller's in-capsule size
(IOCCSZ) travel in the capsule; the Connect command's data never does (the
Linux nvmet-rdma target has no in-capsule data on the admin queue).

Output: ``tx`` holds `Send` work items (CID, arena offset, length) the glue
posts as SENDs; completions come back through ``on_recv(slot, nbytes)``
(a response capsule in receive slot ``slot``: the glue reposts that slot
afterwards) and ``on_send(cid, ok)`` (a SEND finished: its capsule buffer
may be reused). A CID is reused only when both happened.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from ..nvmf import rdma_proto as R
from ..nvmf import spec as S
from .queue import Completion, HostQueue, QueueFull, Request, TransportError

_CQE = S.CQE.unpack_from
_SGL_LEN = struct.Struct("<I")
NULL_KEYED = R.pack_keyed(0, 0, 0)
DEFAULT_STAGE = 1 << 17  # 128 KiB: SPDK's default max_io_size
MAX_KEYED_LEN = (1 << 24) - 1  # the keyed SGL length field is 24 bits

Translate = Callable[[memoryview], "tuple[int, int] | None"]


class Send(NamedTuple):
    """A SEND to post: the capsule of ``cid`` at arena offset ``off``."""

    cid: int
    off: int
    length: int


class RdmaRejected(TransportError):
    """The target refused the RDMA CM connect request (RDMA_CM_REJECT)."""

    def __init__(self, sts: int, detail: str = "") -> None:
        name = R.REJECT_NAMES.get(sts, f"status {sts:#x}" if sts else "no NVMe/RDMA status")
        super().__init__(
            f"connect request rejected by the target: {name}{' (' + detail + ')' if detail else ''}"
        )
        self.sts = sts


class Layout(NamedTuple):
    """Where a queue's parts lie in its arena."""

    nslots: int  # command slots (CIDs)
    csz: int  # bytes per capsule
    stage: int  # bytes per staging buffer
    nrecv: int  # receive slots
    cap_off: int
    stage_off: int
    recv_off: int
    size: int


def layout(qsize: int, icd_cap: int, stage: int) -> Layout:
    """The arena a queue of ``qsize`` entries needs (one slot kept empty)."""
    nslots = qsize - 1
    csz = (R.SQE_SIZE + max(0, icd_cap) + 63) // 64 * 64
    stage = (max(stage, 4096) + 4095) // 4096 * 4096
    cap_off = 0
    stage_off = (nslots * csz + 4095) // 4096 * 4096
    recv_off = stage_off + nslots * stage
    size = recv_off + qsize * R.CQE_SIZE
    return Layout(nslots, csz, stage, qsize, cap_off, stage_off, recv_off, size)


class RdmaHostQueue(HostQueue):
    """One NVMe queue over one RC queue pair, host side.

    Life cycle: the glue resolves the address and route, posts the receive
    slots (``recv_slots()``), connects with ``cm_private_data()``; then
    ``established(private_data)`` (the accept: CRQSIZE bounds the commands
    in flight; ``ic_done`` turns True) or ``rejected(private_data)``
    (`RdmaRejected` with the reject status); then ``connect(...)`` (the
    Fabrics Connect command) and ordinary commands, as over TCP.
    """

    def __init__(
        self,
        qid: int,
        qsize: int,
        mem: memoryview,
        addr: int,
        rkey: int,
        cntlid: int = 0,
        icd_cap: int = 0,
        stage: int = DEFAULT_STAGE,
        translate: Translate | None = None,
        inflight: int = 0,
    ) -> None:
        super().__init__(qid=qid, qsize=qsize, bufsize=4096)
        self.lay = layout(qsize, icd_cap, stage)
        if mem.nbytes < self.lay.size:
            raise ValueError(f"arena of {mem.nbytes} bytes, {self.lay.size} needed")
        self.mem = mem
        self.addr = addr
        self.rkey = rkey
        self.cm_cntlid = cntlid
        self.icd_cap = self.lay.csz - R.SQE_SIZE
        self.translate = translate
        self.crqsize = 0
        n = self.lay.nslots
        self._sending = [False] * n  # a SEND of this CID not completed yet
        self._held = [False] * n  # completed, CID waits for its SEND completion
        self._staged = [False] * n  # the read lands in the staging buffer
        self._force_keyed = False
        # commands in flight: half the queue by default. A target reposts a
        # receive buffer only once its response's SEND completed, so a host
        # that refills every slot the moment a response lands finds the
        # target's receive queue empty (RNR NAK: the SEND waits out the RNR
        # timer, Soft-RoCE retries late or never); the other half is headroom
        self._limit(inflight or max(1, (qsize - 1) // 2))
        self.stats = {"send": 0, "recv": 0, "incapsule": 0, "keyed": 0, "staged": 0}

    # ------------------------------------------------------------ RDMA CM
    def cm_private_data(self) -> bytes:
        """RDMA_CM_REQUEST private data: HRQSIZE = our receive slots,
        HSQSIZE = the 0's based submission queue size (as Linux sends them)."""
        cntlid = self.cm_cntlid if self.qid else 0
        return R.pack_connect(self.qid, self.lay.nrecv, self.qsize - 1, cntlid)

    def recv_slots(self) -> list[tuple[int, int]]:
        """(arena offset, length) of every receive slot, by slot number."""
        o = self.lay.recv_off
        return [(o + i * R.CQE_SIZE, R.CQE_SIZE) for i in range(self.lay.nrecv)]

    def established(self, private_data: bytes | memoryview | None) -> None:
        """The accept arrived: CRQSIZE (the controller's receive queue) caps
        the commands we keep in flight."""
        crq = R.parse_accept(private_data)
        self.crqsize = crq
        if crq and crq - 1 < self.max_outstanding and self.outstanding == 0:
            self._limit(max(1, crq - 1))
        self.ic_done = True
        if self.on_ic is not None:
            self.on_ic()

    def _limit(self, n: int) -> None:
        """At most ``n`` commands in flight. Every CID stays usable: a command
        that completed before its SEND did holds its CID a little longer, so
        the CIDs outnumber the commands in flight."""
        self.max_outstanding = min(n, len(self.slots))

    @property
    def can_submit(self) -> bool:
        return bool(self._free) and self.outstanding < self.max_outstanding and self.failed is None

    def _alloc(self, cb: Completion | None, ctx: Any) -> Request:
        if self.failed is None and self.outstanding >= self.max_outstanding:
            raise QueueFull(f"queue {self.qid}: {self.max_outstanding} commands in flight")
        return super()._alloc(cb, ctx)

    def rejected(self, private_data: bytes | memoryview | None, detail: str = "") -> RdmaRejected:
        e = RdmaRejected(R.parse_reject(private_data), detail)
        self.failed = e
        return e

    def lost(self, why: str) -> TransportError:
        """The connection is gone (disconnect, QP error, CM error)."""
        if self.failed is None:
            self.failed = TransportError(why)
        return self.failed

    # ------------------------------------------------------ submission
    def connect(
        self,
        subnqn: str,
        hostnqn: str,
        hostid: bytes,
        cntlid: int = 0xFFFF,
        kato_ms: int = 0,
        cb: Completion | None = None,
        disable_sqflow: bool = False,
    ) -> Request:
        """Fabrics Connect; its 1024 data bytes go by keyed SGL (RDMA READ by
        the target), never in the capsule."""
        self._force_keyed = True
        try:
            return super().connect(subnqn, hostnqn, hostid, cntlid, kato_ms, cb, disable_sqflow)
        finally:
            self._force_keyed = False

    def _place(self, r: Request, view: memoryview, incoming: bool) -> tuple[int, int]:
        """(address, key) for data of ``r``: the caller's registered buffer or
        the CID's staging buffer (written data copied in now)."""
        n = view.nbytes
        if n > MAX_KEYED_LEN:
            raise ValueError(f"{n} bytes do not fit one keyed SGL descriptor")
        if self.translate is not None:
            loc = self.translate(view)
            if loc is not None:
                return loc
        lay = self.lay
        if n > lay.stage:
            raise ValueError(
                f"{n} bytes of data in unregistered memory exceed the queue's "
                f"{lay.stage}-byte staging buffer"
            )
        off = lay.stage_off + r.cid * lay.stage
        if incoming:
            self._staged[r.cid] = True
        else:
            self.mem[off : off + n] = view.cast("B") if view.format != "B" else view
        self.stats["staged"] += 1
        return self.addr + off, self.rkey

    def _emit_capsule(self, r: Request, data: Any) -> None:
        h = r.hdr
        cid = r.cid
        lay = self.lay
        off = lay.cap_off + cid * lay.csz
        mem = self.mem
        self._staged[cid] = False
        length = R.SQE_SIZE
        if (
            data is not None
            and not self._force_keyed
            and len(data) <= min(self.icd_max, self.icd_cap)
        ):
            n = len(data)
            h[32:48] = R.pack_incapsule(0, n)
            mem[off + R.SQE_SIZE : off + R.SQE_SIZE + n] = data
            length += n
            self.stats["incapsule"] += 1
        else:
            if data is not None:
                r.wbuf = memoryview(data)
            wv, rv = r.wbuf, r.rbuf
            try:
                if wv is not None and wv.nbytes:
                    a, k = self._place(r, wv, False)
                    h[32:48] = R.pack_keyed(a, wv.nbytes, k)
                    r.wbuf = None  # the target reads it remotely: nothing left to send
                elif rv is not None and rv.nbytes:
                    a, k = self._place(r, rv, True)
                    h[32:48] = R.pack_keyed(a, rv.nbytes, k)
                else:
                    h[32:48] = NULL_KEYED
            except ValueError:
                self._release(r)
                raise
            self.stats["keyed"] += 1
        mem[off : off + R.SQE_SIZE] = h[8:72]
        self._sending[cid] = True
        self.stats["send"] += 1
        self.tx.append(Send(cid, off, length))

    def _release(self, r: Request) -> None:
        """Give back a slot whose command never left (bad buffer)."""
        r.busy = False
        r.cb = None
        r.rbuf = None
        r.wbuf = None
        self.outstanding -= 1
        self._free.append(r.cid)

    # ------------------------------------------------------ completions
    def recv_buffer(self) -> memoryview:
        raise TypeError("an NVMe/RDMA queue receives through on_recv(), not a byte stream")

    def received(self, n: int) -> int:
        raise TypeError("an NVMe/RDMA queue receives through on_recv(), not a byte stream")

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        raise TypeError("an NVMe/RDMA queue receives through on_recv(), not a byte stream")

    def on_recv(self, slot: int, nbytes: int) -> int:
        """A response capsule arrived in receive slot ``slot``; returns the
        commands completed (0 or 1). TransportError for a broken stream."""
        if self.failed is not None:
            raise self.failed
        self.stats["recv"] += 1
        if not 0 <= slot < self.lay.nrecv:
            raise self.lost(f"receive completion for slot {slot}, which does not exist")
        if nbytes != R.CQE_SIZE:
            raise self.lost(f"response capsule of {nbytes} bytes (16 expected)")
        o = self.lay.recv_off + slot * R.CQE_SIZE
        result, _sqhd, _sqid, cid, status = _CQE(self.mem, o)
        if cid >= len(self.slots) or not self.slots[cid].busy:
            raise self.lost(f"response for CID {cid}, which is not outstanding")
        r = self.slots[cid]
        status &= 0xFFFE  # no phase tag on fabrics
        if self._staged[cid]:
            self._staged[cid] = False
            dst = r.rbuf
            if status == 0 and dst is not None:
                n = dst.nbytes
                s = self.lay.stage_off + cid * self.lay.stage
                dst[:n] = self.mem[s : s + n]
        self._complete(r, status, result)
        return 1

    def on_send(self, cid: int, ok: bool) -> None:
        """The SEND of ``cid``'s capsule completed."""
        if not 0 <= cid < len(self._sending):
            return
        self._sending[cid] = False
        if self._held[cid]:
            self._held[cid] = False
            self._free.append(cid)
        if not ok:
            self.lost(f"SEND of CID {cid} failed")

    def _complete(self, r: Request, status: int, result: int) -> None:
        r.busy = False
        cb = r.cb
        r.cb = None
        r.rbuf = None
        r.wbuf = None
        self.outstanding -= 1
        if self._sending[r.cid]:
            self._held[r.cid] = True  # the capsule buffer is still the HCA's
        else:
            self._free.append(r.cid)
        if cb is not None:
            cb(r, status, result)

    def abort_all(self, status: int = 0) -> int:
        from .queue import ST_HOST_PATH_ERROR

        n = super().abort_all(status or ST_HOST_PATH_ERROR)
        # the queue pair is gone: no SEND completion will come
        for cid, held in enumerate(self._held):
            if held:
                self._held[cid] = False
                self._sending[cid] = False
                self._free.append(cid)
        self._sending = [False] * len(self._sending)
        return n
