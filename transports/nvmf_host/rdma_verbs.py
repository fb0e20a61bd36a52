"""NVMe/RDMA host glue on pyverbs: RDMA CM connect, PD, CQ, QP, one MR per queue.

`RdmaConn` is one host queue pair: an RDMA CM id on its own event channel
(address and route resolution, the connect request carrying the NVMe/RDMA
private data, CONNECT_RESPONSE -> QP to RTR/RTS -> establish, REJECTED ->
the reject status), a PD, one CQ with a completion channel, an RC QP, and
one memory arena (an anonymous mmap) registered once as one MR with remote
read/write access: capsules, staging buffers and receive slots of the
sans-I/O `RdmaHostQueue` (rdma.py) all lie in it. Other memory is
registered once per queue and region (``register(obj)``: e.g. the shared
iobuf segment of a reactor, or a perf worker's buffer pool), never per I/O.

On top of it: `RdmaBlockingQueue` (the `BlockingQueue` of tools, tests,
perf and the supervisor's admin queue) and `RdmaLoopQueue` (the reactor
event-loop queue of bdev_nvme, as `LoopQueue` for TCP). The fd and pointer
helpers (event channel fd, completion channel fd, buffer address) are the
target's (transports/nvmf/rdma_verbs.py).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..nvmf import rdma_proto as R
from ..nvmf.rdma_pyverbs import (
    _KEEP,
    addr_of,
    comp_channel_fd,
    event_channel_fd,
    event_status,
    pyverbs_missing,
)
from .controller import BlockingQueue
from .queue import ST_ABORTED_BY_HOST, ST_HOST_PATH_ERROR, Request, TransportError, status_str
from .rdma import DEFAULT_STAGE, RdmaHostQueue, layout

ACK_TIMEOUT = 16  # local ACK timeout 4.096 us * 2^16 = 268 ms
RECV_BIT = 1 << 40  # wr_id of a receive: RECV_BIT | slot; of a SEND: the CID


def pyverbs_refusal() -> str | None:
    """None when pyverbs loads, else the reason naming the packages."""
    why = pyverbs_missing()
    return None if why is None else f"trtype RDMA needs pyverbs: {why}"


def _wc_status(st: int) -> str:
    try:
        import pyverbs.enums as e

        for k in dir(e.ibv_wc_status):
            if k.startswith("IBV_WC_") and getattr(e, k) == st:
                return k[7:].lower()
    except Exception:  # only a name for a message
        pass
    return "?"


def _debug(msg: str) -> None:
    if os.environ.get("BLOCKFABRIC_RDMA_DEBUG"):
        print(f"nvmf-host-rdma: {msg}", file=sys.stderr, flush=True)


class _Region:
    __slots__ = ("start", "end", "mr")

    def __init__(self, start: int, end: int, mr: Any) -> None:
        self.start, self.end, self.mr = start, end, mr


class RdmaConn:
    """One NVMe/RDMA host queue pair on pyverbs (not thread-safe)."""

    def __init__(
        self,
        traddr: str,
        trsvcid: int | str,
        qid: int,
        qsize: int,
        cntlid: int = 0,
        icd_cap: int = 0,
        stage: int = DEFAULT_STAGE,
        timeout: float = 10.0,
        inflight: int = 0,
    ) -> None:
        why = pyverbs_refusal()
        if why is not None:
            raise TransportError(why)
        import pyverbs.cm_enums as ce
        import pyverbs.cmid as cm

        self.ce = ce
        self.where = f"{traddr}:{trsvcid}"
        self.timeout_ms = max(100, int(timeout * 1000))
        lay = layout(qsize, icd_cap, stage)
        self.arena = mmap.mmap(-1, (lay.size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE)
        self.arena_addr = addr_of(self.arena)
        self.regions: list[_Region] = []
        self.q = RdmaHostQueue(
            qid,
            qsize,
            memoryview(self.arena),
            self.arena_addr,
            0,
            cntlid,
            icd_cap,
            stage,
            self.translate,
            inflight,
        )
        self.closed = False
        self.vqp: Any = None
        self.cq: Any = None
        self.cc: Any = None
        self.cc_fd = -1
        self.pd: Any = None
        self.mr: Any = None
        self.lkey = 0
        self.chan = cm.CMEventChannel()
        self.cm_fd = event_channel_fd(self.chan)
        self.cmid = cm.CMID(creator=self.chan, port_space=ce.RDMA_PS_TCP)
        try:
            ai = cm.AddrInfo(dst=traddr, dst_service=str(trsvcid), port_space=ce.RDMA_PS_TCP)
            self.cmid.resolve_addr(ai, self.timeout_ms)
        except Exception as e:
            self.close()
            raise TransportError(f"RDMA CM cannot resolve {self.where}: {e}") from None

    # ------------------------------------------------------------- memory
    def translate(self, view: memoryview) -> tuple[int, int] | None:
        """(address, rkey) of a view inside memory registered on this queue."""
        try:
            a = addr_of(view)
        except ValueError:
            return None
        end = a + view.nbytes
        for r in self.regions:
            if r.start <= a and end <= r.end:
                return a, int(r.mr.rkey)
        owner = view.obj
        if isinstance(owner, mmap.mmap) and self.pd is not None:  # a shared segment: once
            r2 = self.register(owner)
            if r2 is not None and r2.start <= a and end <= r2.end:
                return a, int(r2.mr.rkey)
        return None

    def register(self, obj: Any) -> _Region | None:
        """Register a whole buffer object (mmap, bytearray) once on this queue."""
        import pyverbs.enums as e
        import pyverbs.mr as mrm

        try:
            mv = memoryview(obj)
            start, n = addr_of(mv), mv.nbytes
            del mv
        except (TypeError, ValueError):
            return None
        for r in self.regions:
            if r.start <= start and start + n <= r.end:
                return r
        access = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE
        mr = mrm.MR(self.pd, n, access, address=start)
        reg = _Region(start, start + n, mr)
        self.regions.append(reg)
        return reg

    # ------------------------------------------------------------- RDMA CM
    def on_cm(self) -> None:
        """Take every pending RDMA CM event (non-blocking)."""
        import pyverbs.cmid as cm

        for _ in range(16):
            if self.closed:
                return
            try:
                ev = cm.CMEvent(self.chan)
            except Exception:
                return  # EAGAIN: nothing pending
            try:
                et = ev.event_type
                pdata = ev.private_data
                st = event_status(ev)
            finally:
                ev.close()
            self._cm_event(et, pdata, st)

    def _cm_event(self, et: int, pdata: Any, st: int) -> None:
        ce = self.ce
        q = self.q
        try:
            if et == ce.RDMA_CM_EVENT_ADDR_RESOLVED:
                self.cmid.resolve_route(self.timeout_ms)
            elif et == ce.RDMA_CM_EVENT_ROUTE_RESOLVED:
                self._setup_and_connect()
            elif et == ce.RDMA_CM_EVENT_CONNECT_RESPONSE:
                self._ready_qp()
                self.cmid.establish()
                q.established(pdata)
            elif et == ce.RDMA_CM_EVENT_ESTABLISHED:
                if not q.ic_done:
                    q.established(pdata)
            elif et == ce.RDMA_CM_EVENT_REJECTED:
                q.rejected(pdata, f"RDMA CM status {st}" if not R.parse_reject(pdata) else "")
            elif et in (
                ce.RDMA_CM_EVENT_ADDR_ERROR,
                ce.RDMA_CM_EVENT_ROUTE_ERROR,
                ce.RDMA_CM_EVENT_UNREACHABLE,
                ce.RDMA_CM_EVENT_CONNECT_ERROR,
            ):
                q.lost(f"RDMA CM cannot reach {self.where} (event {et}, status {st})")
            elif et in (ce.RDMA_CM_EVENT_DISCONNECTED, ce.RDMA_CM_EVENT_DEVICE_REMOVAL):
                q.lost(f"disconnected by the target {self.where}")
        except TransportError:
            raise
        except Exception as e:
            q.lost(f"RDMA CM setup with {self.where} failed: {type(e).__name__}: {e}")

    def _setup_and_connect(self) -> None:
        import pyverbs.cmid as cm
        import pyverbs.cq as cqm
        import pyverbs.enums as e
        import pyverbs.pd as pdm
        import pyverbs.qp as qpm

        q = self.q
        vctx = self.cmid.context
        _KEEP.append(vctx)  # librdmacm's context: never closed by us
        self.pd = pdm.PD(vctx)
        self.cc = cqm.CompChannel(vctx)
        self.cc_fd = comp_channel_fd(self.cc)
        nrecv = q.lay.nrecv
        nsend = q.lay.nslots + 8
        self.cq = cqm.CQ(vctx, nrecv + nsend, None, self.cc, 0)
        self.cq.req_notify()
        reg = self.register(self.arena)
        assert reg is not None
        self.mr = reg.mr
        self.lkey = int(reg.mr.lkey)
        q.rkey = int(reg.mr.rkey)
        cap = qpm.QPCap(max_send_wr=nsend, max_recv_wr=nrecv, max_send_sge=1, max_recv_sge=1)
        init = qpm.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq, cap=cap, sq_sig_all=0)
        self.vqp = qpm.QP(self.pd, init)
        self._init_qp()
        for slot in range(nrecv):
            self._post_recv(slot)
        priv = q.cm_private_data()
        param = cm.ConnParam(
            resources=R.MAX_RD_ATOMIC,
            depth=R.MAX_RD_ATOMIC,
            qp_num=self.vqp.qp_num,
            data_len=len(priv),
            retry=7,
            rnr_retry=7,
        )
        param.set_private_data(priv)
        self.cmid.connect(param)

    def _init_qp(self) -> None:
        """To INIT (again), with remote read/write access: the target RDMA
        READs our write data and RDMA WRITEs read data (before the connect
        the RDMA CM hands out no access flags; librdmacm itself redoes INIT
        when the connect response came, so do we)."""
        import pyverbs.enums as e

        attr, mask = self.cmid.init_qp_attr(e.IBV_QPS_INIT)
        attr.qp_access_flags = (
            e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE
        )
        self.vqp.modify(attr, mask | e.IBV_QP_ACCESS_FLAGS)

    def _ready_qp(self) -> None:
        import pyverbs.enums as e

        self._init_qp()
        for st in (e.IBV_QPS_RTR, e.IBV_QPS_RTS):
            attr, mask = self.cmid.init_qp_attr(st)
            if st == e.IBV_QPS_RTR:
                # the target RDMA READs our memory: we are the responder
                attr.max_dest_rd_atomic = max(attr.max_dest_rd_atomic, R.MAX_RD_ATOMIC)
                mask |= e.IBV_QP_MAX_DEST_RD_ATOMIC
                attr.min_rnr_timer = min(attr.min_rnr_timer or 12, 12)  # 0.64 ms
                mask |= e.IBV_QP_MIN_RNR_TIMER
            else:
                attr.max_rd_atomic = R.MAX_RD_ATOMIC
                mask |= e.IBV_QP_MAX_QP_RD_ATOMIC
                # a lost packet is retransmitted after the local ACK timeout
                # (0 would be never); retry and RNR retry as Linux' host does
                if not attr.timeout or attr.timeout > ACK_TIMEOUT:
                    attr.timeout = ACK_TIMEOUT
                attr.retry_cnt = 7
                attr.rnr_retry = 7
                mask |= e.IBV_QP_TIMEOUT | e.IBV_QP_RETRY_CNT | e.IBV_QP_RNR_RETRY
            self.vqp.modify(attr, mask)
        _debug(
            f"{self.where} qid {self.q.qid}: QP {self.vqp.qp_num} RTS, arena {self.arena_addr:#x}"
            f"+{len(self.arena)} lkey {self.lkey:#x} rkey {self.q.rkey:#x} timeout {attr.timeout}"
        )

    # ------------------------------------------------------------- verbs
    def _post_recv(self, slot: int) -> None:
        import pyverbs.wr as wr

        off = self.q.lay.recv_off + slot * R.CQE_SIZE
        sge = wr.SGE(self.arena_addr + off, R.CQE_SIZE, self.lkey)
        self.vqp.post_recv(wr.RecvWR(wr_id=RECV_BIT | slot, num_sge=1, sg=[sge]))

    def flush(self) -> int:
        """Post the SENDs the queue produced (one post_send for the batch)."""
        if self.closed or self.vqp is None or not self.q.tx:
            return 0
        import pyverbs.enums as e
        import pyverbs.wr as wr

        sends = self.q.take_tx()
        # every SendWR of the chain stays referenced until post_send returned:
        # pyverbs' next_wr is a bare C pointer, a collected middle WR would
        # leave the chain pointing at freed memory
        wrs: list[Any] = []
        first: Any = None
        prev: Any = None
        base, lkey = self.arena_addr, self.lkey
        op, flags = e.IBV_WR_SEND, e.IBV_SEND_SIGNALED
        for s in sends:
            w = wr.SendWR(
                wr_id=s.cid,
                opcode=op,
                num_sge=1,
                sg=[wr.SGE(base + s.off, s.length, lkey)],
                send_flags=flags,
            )
            wrs.append(w)
            if prev is None:
                first = w
            else:
                prev.next_wr = w
            prev = w
        try:
            self.vqp.post_send(first)
        except Exception as ex:
            raise self.q.lost(f"post_send failed: {ex}") from None
        del wrs
        return len(sends)

    def poll(self) -> int:
        """Reap completions; returns how many. TransportError once the queue is dead."""
        q = self.q
        if q.failed is not None:
            raise q.failed
        if self.cq is None:
            return 0
        import pyverbs.enums as e

        n, wcs = self.cq.poll(32)
        if n <= 0:
            return 0
        ok = e.IBV_WC_SUCCESS
        bad = [wc for wc in wcs[:n] if wc.status != ok]
        if bad:  # the first error that is not a flush says why
            why = next((w for w in bad if w.status != e.IBV_WC_WR_FLUSH_ERR), bad[0])
            for wc in wcs[:n]:
                if wc.status == ok and not wc.wr_id & RECV_BIT:
                    q.on_send(wc.wr_id, True)
            raise q.lost(
                f"{'receive' if why.wr_id & RECV_BIT else 'SEND'} completion status "
                f"{why.status} ({_wc_status(why.status)}, vendor error {why.vendor_err:#x}): "
                "connection lost"
            )
        for wc in wcs[:n]:
            wid = wc.wr_id
            if wid & RECV_BIT:
                slot = wid & 0xFFFF
                try:
                    q.on_recv(slot, wc.byte_len)
                finally:
                    if q.failed is None and not self.closed:
                        self._post_recv(slot)
            else:
                q.on_send(wid, True)
        return n

    def wait(self, timeout: float) -> None:
        """Sleep until a completion or a CM event may be pending (at most ``timeout`` s)."""
        fds = [self.cm_fd]
        if self.cq is not None:
            self.cq.req_notify()
            if self.poll():
                return
            fds.append(self.cc_fd)
        r, _, _ = select.select(fds, [], [], max(0.0, timeout))
        if self.cc_fd in r:
            with contextlib.suppress(Exception):
                self.cc.get_cq_event(self.cq)
                self.cq.ack_events(1)
        if self.cm_fd in r:
            self.on_cm()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.vqp is not None:
            with contextlib.suppress(Exception):
                self.cmid.disconnect()
        for o in [self.vqp, *[r.mr for r in self.regions], self.cq, self.cc, self.pd]:
            if o is not None:
                with contextlib.suppress(Exception):
                    o.close()
        self.regions.clear()
        for o in (self.cmid, self.chan):
            with contextlib.suppress(Exception):
                o.close()
        self.vqp = self.cq = None


class _NoSocket:
    """What callers written for TCP may do with ``bq.sock`` (perf's worker)."""

    def __init__(self, conn: RdmaConn) -> None:
        self.conn = conn

    def setblocking(self, _flag: bool) -> None:
        pass  # polling the CQ never blocks

    def fileno(self) -> int:
        return self.conn.cm_fd

    def close(self) -> None:
        self.conn.close()


class RdmaBlockingQueue(BlockingQueue):
    """An `RdmaHostQueue` driven synchronously (tools, perf, the supervisor)."""

    def __init__(
        self,
        traddr: str,
        trsvcid: int | str,
        qid: int,
        qsize: int,
        timeout: float,
        cntlid: int = 0,
        icd_cap: int = 0,
        stage: int = DEFAULT_STAGE,
        inflight: int = 0,
    ) -> None:
        self.timeout = timeout
        self.lock = threading.RLock()
        self.conn = RdmaConn(traddr, trsvcid, qid, qsize, cntlid, icd_cap, stage, timeout, inflight)
        self.q: RdmaHostQueue = self.conn.q  # type: ignore[assignment]  # a HostQueue subclass
        self.sock = _NoSocket(self.conn)  # type: ignore[assignment]  # no socket over RDMA
        self.last_progress = time.monotonic()
        try:
            self._run(lambda: self.q.ic_done, time.monotonic() + timeout, "RDMA CM connect")
        except BaseException:
            self.conn.close()
            raise

    def pump(self) -> int:
        """Post what is queued, reap completions (no waiting)."""
        c = self.conn
        c.flush()
        n = c.poll()
        if n:
            c.flush()
            self.last_progress = time.monotonic()
        return n

    def check_stall(self, timeout_s: float) -> None:
        """TransportError when commands are outstanding and nothing completed
        for ``timeout_s`` (a lost connection the RDMA CM did not report)."""
        q = self.q
        if not q.outstanding:
            self.last_progress = time.monotonic()
            return
        if time.monotonic() - self.last_progress > timeout_s:
            busy = [r.cid for r in q.slots if r.busy]
            sending = [i for i, v in enumerate(q._sending) if v]
            raise q.lost(
                f"no completion for {timeout_s:g} s with {q.outstanding} command(s) outstanding "
                f"(CIDs {busy[:16]}, SENDs not completed {sending[:16]}, stats {q.stats})"
            )

    def _run(self, done: Callable[[], bool], deadline: float, what: str) -> None:
        c = self.conn
        q = self.q
        c.flush()
        while not done():
            if q.failed is not None:
                raise q.failed
            if self.pump():
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {what} within {self.timeout:g} s")
            c.wait(min(left, 0.05))
            if q.failed is not None:
                raise q.failed

    def peek(self) -> str:
        """Why the queue is lost ("" while it is up), without waiting."""
        with self.lock:
            try:
                self.conn.on_cm()
                self.pump()
            except TransportError as e:
                return str(e)
            return str(self.q.failed or "")

    def close(self) -> None:
        self.conn.close()


class RdmaLoopQueue:
    """A non-blocking NVMe/RDMA I/O queue driven by a reactor's `EventLoop`
    (same interface as `LoopQueue`: ``q``, ``ready``, ``kick()``,
    ``abort_expired()``, ``close()``, ``on_ready()``/``on_fail(reason)``)."""

    def __init__(
        self,
        loop: Any,
        traddr: str,
        trsvcid: int | str,
        subnqn: str,
        hostnqn: str,
        hostid: bytes,
        cntlid: int,
        qid: int,
        qsize: int,
        icd_max: int,
        on_ready: Callable[[], Any],
        on_fail: Callable[[str], Any],
        timeout: float = 10.0,
    ) -> None:
        from ...runtime.loop import EPOLLIN

        self.loop = loop
        self.conn = RdmaConn(
            traddr, trsvcid, qid, qsize, cntlid, min(icd_max, 8192), timeout=timeout
        )
        self.q: RdmaHostQueue = self.conn.q
        self.icd_max = icd_max
        self.on_ready, self.on_fail = on_ready, on_fail
        self.subnqn, self.hostnqn, self.hostid, self.cntlid = subnqn, hostnqn, hostid, cntlid
        self.ready = False
        self.closed = False
        self._cc_fd = -1
        self._flush_scheduled = False
        self.q.on_ic = self._after_cm
        loop.add_fd(self.conn.cm_fd, EPOLLIN, self._on_cm)
        self._timer = loop.call_later(timeout, self._connect_timeout)

    def _connect_timeout(self) -> None:
        if not self.ready:
            self._fail("connect timed out")

    def _on_cm(self, _ev: int) -> None:
        from ...runtime.loop import EPOLLIN

        if self.closed:
            return
        try:
            self.conn.on_cm()
        except TransportError as e:
            self._fail(str(e))
            return
        if self.q.failed is not None:
            self._fail(str(self.q.failed))
            return
        if self._cc_fd < 0 and self.conn.cc_fd >= 0:
            self._cc_fd = self.conn.cc_fd
            self.loop.add_fd(self._cc_fd, EPOLLIN, self._on_cq)
            self.loop.add_poller(self._poll)
        self._flush()

    def _after_cm(self) -> None:
        def done(_r: Request, status: int, _res: int) -> None:
            if status:
                self._fail(f"Connect I/O queue {self.q.qid} failed: {status_str(status)}")
                return
            self.q.icd_max = self.icd_max
            self.ready = True
            self._timer.cancel()
            self.on_ready()

        self.q.connect(self.subnqn, self.hostnqn, self.hostid, self.cntlid, 0, done)
        self.kick()

    def _on_cq(self, _ev: int) -> None:
        if self.closed:
            return
        with contextlib.suppress(Exception):
            self.conn.cc.get_cq_event(self.conn.cq)
            self.conn.cq.ack_events(1)
        with contextlib.suppress(Exception):
            self.conn.cq.req_notify()
        while self._poll():
            pass

    def _poll(self) -> int:
        if self.closed:
            return 0
        try:
            n = self.conn.poll()
            if self.q.tx:
                self.conn.flush()
        except TransportError as e:
            self._fail(str(e))
            return 0
        return n

    def kick(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed:
            return
        try:
            self.conn.flush()
        except TransportError as e:
            self._fail(str(e))

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.close()
        self.q.abort_all(ST_HOST_PATH_ERROR)
        self.on_fail(reason)

    def abort_expired(self, timeout_s: float) -> int:
        exp = self.q.expired(time.perf_counter_ns(), int(timeout_s * 1e9))
        if exp:
            self.close()
            self.q.abort_all(ST_ABORTED_BY_HOST)
            self.on_fail(f"{len(exp)} command(s) timed out")
        return len(exp)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ready = False
        self._timer.cancel()
        with contextlib.suppress(Exception):
            self.loop.remove_fd(self.conn.cm_fd)
        if self._cc_fd >= 0:
            with contextlib.suppress(Exception):
                self.loop.remove_fd(self._cc_fd)
            with contextlib.suppress(Exception):
                self.loop.remove_poller(self._poll)
        self.conn.close()
