"""The Data-Out / R2T engine of one connection (RFC 7143 11.7-11.8): write
data from immediate data, unsolicited Data-Out (within FirstBurstLength) and
solicited Data-Out answering R2Ts (MaxOutstandingR2T, MaxBurstLength), each
checked for TTT, DataSN, BufferOffset and F bit.

Bounds (issue 8): write data lands in pool buffers (xfer.py) region by
region, never the whole EDTL at once; streamable WRITEs are written chunk by
chunk as their data arrives; at most ``max_r2t_per_connection`` commands hold
burst buffers (the others wait without asking the pool); a command whose
unsolicited data finds the pool empty stalls the connection's input.

The engine works on `Task`s the connection created; it calls back into the
connection only through its public methods (send, reject, execute, complete,
drop_task, stall/unstall)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from . import pdu as P
from .tasks import CHECK_CONDITION, R2T, SENSE_LUN_GONE, Task
from .xfer import Region, iov_get, iov_put

if TYPE_CHECKING:
    from .connection import Connection


class DataOut:
    def __init__(self, conn: Connection, r2t_limit: int) -> None:
        self.conn = conn
        self.ttt_map: dict[int, Task] = {}
        # TTTs of tasks terminated mid-burst: their late Data-Out is dropped quietly
        self.dead_ttts: deque[int] = deque(maxlen=64)
        # commands in their R2T phase (holding or awaiting pool buffers for
        # solicited data): at most r2t_limit, the others wait here without
        # asking the pool, so one connection cannot take it all
        self.r2t_limit = max(1, r2t_limit)
        self.r2t_busy = 0
        self.r2t_waiting: deque[Task] = deque()

    # ------------------------------------------------------------ start
    def start(self, t: Task, pdu: P.Pdu, bs: int, stream_ops: frozenset[int], chunk: int) -> bool:
        """A WRITE with data was accepted: receive it. False when it cannot
        be received in pieces the SCSI core accepts (the caller fails it)."""
        c = self.conn
        s = c.session
        assert s is not None
        sp = s.params
        edtl = t.edtl
        t.last_rx = c.now()
        first = len(pdu.data) if pdu.final else min(edtl, sp.first_burst_length)
        streamable = bool(bs and t.cdb and t.cdb[0] in stream_ops)
        if edtl > chunk and not streamable:
            # the SCSI core needs this command's data in one piece, and no
            # parameter list or CAW buffer is this long
            return False
        if streamable and (edtl > chunk or edtl > first):
            # WRITEs whose data does not all come unsolicited go piece by
            # piece: only the first burst is held before the R2T phase
            t.stream = True
            t.bs = bs
        if not pdu.final:
            t.unsol_open = True
            t.unsol_limit = first
        if first:
            # immediate / unsolicited data comes without asking: its buffer
            # first (the input stalls while the pool has none)
            size = edtl if not t.stream else first
            t.imm_pdu = pdu
            t.wait = c.iobufs.acquire(size, lambda iov, _t=t: self._got_first(_t, iov))
            if t.wait is not None:
                t.imm_pdu = P.Pdu(bytes(pdu.bhs), bytes(pdu.ahs), bytes(pdu.data))
                c.stall(t)
            return True
        self.advance(t)
        return True

    def _got_first(self, t: Task, iov: Any) -> None:
        """The buffer for the immediate + unsolicited data is there."""
        c = self.conn
        t.wait = None
        pdu, t.imm_pdu = t.imm_pdu, None
        if t.dead or c.state == "closed" or pdu is None:
            c.iobufs.release(iov)
            c.unstall(t)
            return
        end = t.edtl if not t.stream else t.unsol_limit or len(pdu.data)
        reg = Region(iov, 0, end)
        t.regions.append(reg)
        t.region = reg
        imm = pdu.data
        if len(imm):
            iov_put(iov.views, 0, imm)
        t.received = len(imm)
        t.next_r2t_offset = t.received
        try:
            if t.stream:
                self._pieces(t, t.received)
            if not t.unsol_open:
                self._region_done(t)
            self.advance(t)
        finally:
            # the PDUs that came after this command run now, in order
            c.unstall(t)

    def advance(self, t: Task) -> None:
        """Issue R2Ts for the data still missing, or execute when complete."""
        if t.dead or t.wait is not None or t.unsol_open:
            return
        c = self.conn
        if t.next_r2t_offset >= t.edtl and not t.r2ts:
            if t.stream:
                self._stream_end(t)
            else:
                c.execute(t)
            return
        s = c.session
        assert s is not None
        sp = s.params
        if t.stream:
            # one R2T sequence at a time; at most one more region still
            # being written while the next one is received
            if t.r2ts or t.region is not None or len(t.regions) > 1:
                return
            if not self._r2t_slot(t):
                return
            off = t.next_r2t_offset
            n = min(sp.max_burst_length, t.edtl - off)
            base = off - len(t.carry)
            t.wait = c.iobufs.acquire(
                off + n - base, lambda iov, _t=t, o=off, k=n: self._got_region(_t, iov, o, k)
            )
            return
        if not t.regions:
            # one region for the whole (<= CHUNK) transfer, then the R2Ts
            if not self._r2t_slot(t):
                return
            t.wait = c.iobufs.acquire(t.edtl, lambda iov, _t=t: self._got_whole(_t, iov))
            return
        while len(t.r2ts) < sp.max_outstanding_r2t and t.next_r2t_offset < t.edtl:
            off = t.next_r2t_offset
            n = min(sp.max_burst_length, t.edtl - off)
            self._send_r2t(t, off, n)

    # ------------------------------------------------- R2T phase slots
    def _r2t_slot(self, t: Task) -> bool:
        if t.r2t_slot:
            return True
        if self.r2t_busy < self.r2t_limit:
            self.r2t_busy += 1
            t.r2t_slot = True
            return True
        if not t.r2t_queued:
            t.r2t_queued = True
            self.r2t_waiting.append(t)
        return False

    def _r2t_release(self, t: Task) -> None:
        if not t.r2t_slot:
            return
        t.r2t_slot = False
        self.r2t_busy -= 1
        c = self.conn
        while self.r2t_waiting and self.r2t_busy < self.r2t_limit and c.state == "ffp":
            nxt = self.r2t_waiting.popleft()
            nxt.r2t_queued = False
            if not nxt.dead:
                c.guard(self.advance, nxt)

    # --------------------------------------------------------- regions
    def _got_whole(self, t: Task, iov: Any) -> None:
        c = self.conn
        t.wait = None
        if t.dead or c.state == "closed":
            c.iobufs.release(iov)
            return
        reg = Region(iov, 0, t.edtl)
        t.regions.append(reg)
        t.region = reg
        self.advance(t)

    def _got_region(self, t: Task, iov: Any, off: int, n: int) -> None:
        c = self.conn
        t.wait = None
        if t.dead or c.state == "closed":
            c.iobufs.release(iov)
            return
        base = off - len(t.carry)
        reg = Region(iov, base, off + n)
        if t.carry:
            iov_put(iov.views, 0, t.carry)
            t.carry = b""
        t.regions.append(reg)
        t.region = reg
        self._send_r2t(t, off, n)

    def _send_r2t(self, t: Task, off: int, n: int) -> None:
        c = self.conn
        ttt = c.new_ttt()
        r = R2T(ttt, off, n, t.r2tsn)
        t.r2tsn += 1
        t.r2ts[ttt] = r
        self.ttt_map[ttt] = t
        t.next_r2t_offset = off + n
        t.last_rx = c.now()
        sn, exp, mx = c.status_words(advance=False)
        c.send(
            c.encode(P.OP_R2T, 0x80, 0, 0, t.lun_field, t.itt, (ttt, sn, exp, mx, r.r2tsn, off, n))
        )

    def _region_done(self, t: Task) -> None:
        """The receiving region has all its data: keep the partial block at
        its end for the next region, let its buffers go once written."""
        reg = t.region
        if reg is None or not t.stream:
            return  # a whole-transfer region stays until the command runs
        t.region = None
        if reg.end < t.edtl:
            tail = reg.end % t.bs
            if tail:
                t.carry = iov_get(reg.iov.views, reg.end - tail - reg.base, tail)
        reg.closed = True
        if reg.release_if_idle(self.conn.iobufs):
            t.regions.remove(reg)

    # ------------------------------------------------- streamed writes
    def _pieces(self, t: Task, rx_end: int) -> None:
        """Hand every complete chunk of the receiving region to the SCSI core
        (whole blocks only; a partial block waits for the next region)."""
        reg = t.region
        if reg is None:
            return
        bs = t.bs
        while t.submitted < rx_end:
            start, cend, view = reg.chunk(t.submitted)
            if rx_end < cend:
                return  # this chunk is not complete yet
            end = cend - cend % bs if (cend == reg.end) else cend
            if end <= t.submitted:
                return
            data = view[t.submitted - start : end - start]
            off = t.submitted
            t.submitted = end
            if t.fail is None:
                self._piece(t, reg, off, data)
            if cend == reg.end:
                return

    def _piece(self, t: Task, reg: Region | None, off: int, data: memoryview) -> None:
        c = self.conn
        s = c.session
        assert s is not None
        dev = c.env.device(s.target_name)
        st = c.scsi_task(t, data, "write")
        st.offset = off
        t.scsi = st
        t.pieces += 1
        t.subs += 1
        t.io += 1
        if reg is not None:
            reg.pending += 1

        def done(task: Any, _t: Task = t, _r: Region | None = reg) -> None:
            c.guard(self._piece_done, _t, _r, task)

        if dev is None:
            st.status = CHECK_CONDITION
            st.sense = SENSE_LUN_GONE
            done(st)
            return
        dev.execute(st, done)

    def _piece_done(self, t: Task, reg: Region | None, st: Any) -> None:
        c = self.conn
        t.subs -= 1
        if reg is not None:
            reg.pending -= 1
            if reg.release_if_idle(c.iobufs) and reg in t.regions:
                t.regions.remove(reg)
        if int(st.status) and t.fail is None:
            t.fail = st
        t.result = st
        c.io_done(t)
        if t.dead or c.state == "closed":
            return
        self.advance(t)

    def _stream_end(self, t: Task) -> None:
        """All data is in: answer once every piece has been written."""
        if t.dead or t.region is not None or t.r2ts or t.next_r2t_offset < t.edtl:
            return
        if t.wait is not None or t.unsol_open:
            return
        if not t.pieces:
            # nothing as long as a block arrived: one (empty) piece still runs
            # the CDB's checks and gives the status
            self._piece(t, None, 0, memoryview(b""))
            return
        if t.subs:
            return
        self.conn.complete(t, t.fail or t.result)

    # ------------------------------------------------------- Data-Out
    def data_out(self, pdu: P.Pdu) -> None:
        c = self.conn
        ttt = pdu.ttt
        if ttt == P.RSVD_TAG:
            t = c.tasks.get(pdu.itt)
            if t is None or not t.unsol_open:
                c.reject(pdu.bhs, P.REJ_INVALID_FIELD)
                return
            if (
                pdu.datasn != t.unsol_datasn
                or pdu.buffer_offset != t.received
                or t.received + pdu.dlen > t.unsol_limit
            ):
                c.seq_error(pdu, "unsolicited Data-Out out of sequence")
                return
            reg = t.region
            assert reg is not None
            iov_put(reg.iov.views, t.received - reg.base, pdu.data)
            t.received += pdu.dlen
            t.unsol_datasn += 1
            t.last_rx = c.now()
            if t.stream:
                self._pieces(t, t.received)
            if pdu.final:
                t.unsol_open = False
                t.next_r2t_offset = t.received
                if t.stream:
                    if t.received < reg.end:
                        reg.end = t.received  # the initiator sent less than FirstBurstLength
                        self._pieces(t, t.received)
                    self._region_done(t)
                self.advance(t)
            return
        t = self.ttt_map.get(ttt)
        if t is None or t.itt != pdu.itt:
            if ttt in self.dead_ttts:
                return  # the rest of a burst whose task was terminated: discard
            c.reject(pdu.bhs, P.REJ_INVALID_FIELD)
            return
        r = t.r2ts[ttt]
        if pdu.datasn != r.datasn:
            # ERL 0 has no recovery for lost Data-Out: reject it and terminate
            # the task (the initiator fails the command); the connection lives on
            c.reject(pdu.bhs, P.REJ_PROTOCOL)
            self.dead_ttts.extend(t.r2ts)
            c.drop_task(t, abort=True)
            return
        if pdu.buffer_offset != r.offset + r.received or r.received + pdu.dlen > r.length:
            c.seq_error(pdu, f"Data-Out DataSN {pdu.datasn}/offset {pdu.buffer_offset} unexpected")
            return
        if pdu.final and r.received + pdu.dlen != r.length:
            c.seq_error(pdu, "Data-Out F bit before the end of the burst")
            return
        reg = t.region
        assert reg is not None
        off = pdu.buffer_offset
        iov_put(reg.iov.views, off - reg.base, pdu.data)
        r.received += pdu.dlen
        r.datasn += 1
        t.received += pdu.dlen
        t.last_rx = c.now()
        if t.stream:
            self._pieces(t, r.offset + r.received)
        if r.received == r.length:
            del t.r2ts[ttt]
            del self.ttt_map[ttt]
            if t.stream:
                self._region_done(t)
            self.advance(t)

    # ------------------------------------------------------- teardown
    def stalled(self, now: float, timeout: float) -> Task | None:
        """A write whose data stopped coming (R2T outstanding, or unsolicited
        data announced) for ``timeout`` seconds."""
        for t in self.conn.tasks.values():
            if (t.r2ts or t.unsol_open) and now - t.last_rx > timeout:
                return t
        return None

    def release(self, t: Task) -> None:
        """The task ends: its write buffers that no bdev write uses any more
        go back now (the others when their write completes), its R2T slot and
        TTTs are freed."""
        c = self.conn
        if t.wait is not None:
            c.iobufs.cancel(t.wait)
            t.wait = None
        t.imm_pdu = None
        t.region = None
        self._r2t_release(t)
        for reg in list(t.regions):
            reg.closed = True
            if reg.release_if_idle(c.iobufs):
                t.regions.remove(reg)
        for ttt in t.r2ts:
            self.ttt_map.pop(ttt, None)
        t.r2ts.clear()
