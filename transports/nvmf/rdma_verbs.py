"""NVMe/RDMA target glue on pyverbs: RDMA CM, PD, CQ, QPs, memory registration.

Owns, per reactor: one `RdmaDevice` per RDMA device it listens on (PD, one
CQ polled by the reactor loop, its completion channel fd in epoll for the
blocking poll mode, the optional SRQ with its receive buffers, the memory
registrations), one `RdmaListener` per listen address it owns (an RDMA CM
event channel whose fd sits in epoll, a listening cm_id), and one
`RdmaConn` per accepted queue pair (the cm_id, an RC QP, receive buffers
unless the SRQ is used, the response capsules, the work-request ids). The
NVMe side of a queue pair is the sans-I/O `RdmaQpair` (rdma.py); this file
implements its `Verbs`.

pyverbs gives no fd of an event or completion channel and no cm_id of an
event, both of which an event loop needs; `_fd_opened_by` finds the fd a
constructor opened (/proc/self/fd before and after), `_cptr` reads the C
pointer a pyverbs object wraps (checked against the object layout at first
use: `RdmaUnsupported` if pyverbs changed).

Memory: the reactor's shared buffer pool segment and each malloc bdev
segment are registered once per device (lazily, when a buffer of theirs is
first used: ``memoryview.obj`` is the segment's mmap), so RDMA READ lands in
pool buffers and RDMA WRITE reads the bdev's memory directly (zero copy).
"""

from __future__ import annotations

import errno
import logging
import mmap
from typing import Any

from ...runtime.loop import EPOLLIN
from ..context import ReactorContext
from . import rdma_proto as R
from .core import NvmfTarget
from .rdma import RDMA
from .rdma_pyverbs import (  # noqa: F401 - re-exported for the driver and tests
    _KEEP,
    RdmaUnsupported,
    _cptr,
    addr_of,
    cm_id_addr,
    comp_channel_fd,
    event_channel_fd,
    event_cm_id,
    event_status,
)
from .rdma_qpair import RdmaQpair, RdmaRequest

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ wr ids
K_RECV, K_READ, K_SEND, K_WRITE = 1, 2, 3, 4


def _wrid(conn: int, kind: int, idx: int) -> int:
    return (conn << 32) | (kind << 28) | idx


class _Region:
    __slots__ = ("start", "end", "mr", "owner")

    def __init__(self, start: int, end: int, mr: Any, owner: Any) -> None:
        self.start, self.end, self.mr, self.owner = start, end, mr, owner


class RdmaDevice:
    """One device's resources on one reactor: PD, CQ, SRQ, registrations."""

    def __init__(self, driver: Any, ctx: ReactorContext, listen_id: Any, opts: Any) -> None:
        import pyverbs.cq as cq
        import pyverbs.device as dev
        import pyverbs.pd as pd

        self.driver = driver
        self.rctx = ctx
        self.opts = opts
        self.name = str(getattr(listen_id, "dev_name", "") or "rdma")
        # our own wrappers: a listener's close() clears the ones it holds
        self.vctx = dev.Context(cmid=listen_id)
        self.pd = pd.PD(self.vctx)
        self.chan = cq.CompChannel(self.vctx)
        self.chan_fd = comp_channel_fd(self.chan)
        raw = opts.raw
        self.bufsize = R.SQE_SIZE + int(opts.in_capsule_data_size)
        self.cq = cq.CQ(self.vctx, int(raw["num_cqe"]), None, self.chan, 0)
        self.cq.req_notify()
        self.closed = False
        self.regions: list[_Region] = []
        self.conns: dict[int, RdmaConn] = {}  # conn number -> conn
        self.by_qpn: dict[int, RdmaConn] = {}
        self._next = 1
        self.srq: Any = None
        self.srq_bufs: list[memoryview] = []
        self.srq_mr: Any = None
        self.stats = {"recv": 0, "rdma_read": 0, "rdma_write": 0, "send": 0, "bounce": 0}
        self.stats.update(polls=0, completions=0)
        if not raw["no_srq"]:
            self._make_srq(int(raw["max_srq_depth"]))
        ctx.loop.add_fd(self.chan_fd, EPOLLIN, self._on_chan)
        ctx.loop.add_poller(self.poll)
        iob = getattr(ctx, "iobufs", None)
        seg = getattr(getattr(getattr(iob, "pool", None), "segment", None), "buf", None)
        if isinstance(seg, memoryview) and isinstance(seg.obj, mmap.mmap):
            self.register_obj(seg.obj)  # the shared buffer pool, once

    # -- memory ---------------------------------------------------------------
    def register_obj(self, obj: Any) -> _Region | None:
        import pyverbs.enums as e
        import pyverbs.mr as mrm

        for r in self.regions:
            if r.owner is obj:
                return r
        try:
            mv = memoryview(obj)
            start, n = addr_of(mv), mv.nbytes
            del mv
        except (TypeError, ValueError):
            return None
        access = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE
        mr = mrm.MR(self.pd, n, access, address=start)
        r = _Region(start, start + n, mr, obj)
        self.regions.append(r)
        log.info(
            "nvmf-rdma %s: registered %d KiB at %#x (lkey %#x)", self.name, n >> 10, start, mr.lkey
        )
        return r

    def register_once(self, data: memoryview) -> Any:
        """A registration of private memory for one operation (close it after)."""
        import pyverbs.enums as e
        import pyverbs.mr as mrm

        return mrm.MR(self.pd, data.nbytes, e.IBV_ACCESS_LOCAL_WRITE, address=addr_of(data))

    def lkey_for(self, view: memoryview, register: bool = True) -> tuple[int, int] | None:
        """(address, lkey) of a view, registering its segment on first use."""
        a = addr_of(view)
        end = a + view.nbytes
        for r in self.regions:
            if r.start <= a and end <= r.end:
                return a, r.mr.lkey
        if not register:
            return None
        owner = view.obj
        if isinstance(owner, mmap.mmap):  # a shared segment (bdev, pool): once
            r2 = self.register_obj(owner)
            if r2 is not None and r2.start <= a and end <= r2.end:
                return a, r2.mr.lkey
        return None

    def arena(self, nbytes: int) -> tuple[mmap.mmap, Any, int]:
        import pyverbs.enums as e
        import pyverbs.mr as mrm

        m = mmap.mmap(-1, max(nbytes, mmap.PAGESIZE))
        a = addr_of(m)
        mr = mrm.MR(self.pd, len(m), e.IBV_ACCESS_LOCAL_WRITE, address=a)
        return m, mr, a

    def _make_srq(self, depth: int) -> None:
        import pyverbs.srq as srqm

        bs = self.bufsize
        attr = srqm.SrqInitAttr(srqm.SrqAttr(max_wr=depth, max_sge=1))
        self.srq = srqm.SRQ(self.pd, attr)
        m, mr, a = self.arena(depth * bs)
        self.srq_arena, self.srq_mr, self.srq_addr, self.srq_bs = m, mr, a, bs
        view = memoryview(m)
        self.srq_bufs = [view[i * bs : (i + 1) * bs] for i in range(depth)]
        # posted in batches from the loop: thousands of work requests take
        # seconds of Python under emulation, the config answer must not wait
        first = min(depth, 256)
        for i in range(first):
            self.post_srq(i)
        self._post_more(first, depth)

    def _post_more(self, start: int, depth: int) -> None:
        if start >= depth or self.closed:
            return

        def more() -> None:
            end = min(depth, start + 256)
            for i in range(start, end):
                self.post_srq(i)
            self._post_more(end, depth)

        self.rctx.loop.call_soon(more)

    def post_srq(self, slot: int) -> None:
        import pyverbs.wr as wr

        sge = wr.SGE(self.srq_addr + slot * self.srq_bs, self.srq_bs, self.srq_mr.lkey)
        self.srq.post_recv(wr.RecvWR(wr_id=_wrid(0, K_RECV, slot), num_sge=1, sg=[sge]))

    def add_conn(self, conn: RdmaConn) -> int:
        n = self._next
        while n in self.conns or n == 0:
            n = (n + 1) & 0xFFFFFFF
        self._next = (n + 1) & 0xFFFFFFF
        self.conns[n] = conn
        return n

    # -- completions ---------------------------------------------------------
    def _on_chan(self, _ev: int) -> None:
        try:
            self.chan.get_cq_event(self.cq)
        except Exception:
            return  # EAGAIN: nothing to take
        self.cq.ack_events(1)
        self.cq.req_notify()
        while self.poll():
            pass

    def poll(self) -> int:
        import pyverbs.enums as e

        n, wcs = self.cq.poll(32)
        self.stats["polls"] += 1
        if n <= 0:
            return 0
        self.stats["completions"] += n
        ok = e.IBV_WC_SUCCESS
        for wc in wcs[:n]:
            wid = wc.wr_id
            kind = (wid >> 28) & 0xF
            idx = wid & 0xFFFFFFF
            cn = wid >> 32
            if kind == K_RECV and cn == 0:  # SRQ receive: the QP number says whose
                conn = self.by_qpn.get(wc.qp_num)
                if conn is None:
                    if wc.status == ok:
                        self.post_srq(idx)
                    continue
                conn.on_recv(idx, wc, self.srq_bufs[idx], srq=True)
                continue
            conn = self.conns.get(cn)
            if conn is None:
                continue
            try:
                if kind == K_RECV:
                    conn.on_recv(idx, wc, conn.rbufs[idx] if conn.rbufs else memoryview(b""), False)
                elif kind == K_READ:
                    conn.on_read(idx, wc.status == ok)
                elif kind == K_SEND:
                    conn.on_send(idx, wc.status == ok)
                elif wc.status != ok:  # an unsignaled WRITE that failed
                    conn.failed(f"RDMA WRITE status {wc.status}")
            except Exception as ex:
                conn.qp.crash(ex, "a completion")
        return n

    def close(self) -> None:
        """Free the device's verbs objects in dependency order (reactor stop)."""
        self.closed = True
        try:
            self.rctx.loop.remove_fd(self.chan_fd)
        except Exception:
            pass
        try:
            self.rctx.loop.remove_poller(self.poll)
        except Exception:
            pass
        objs = [self.srq, self.srq_mr, self.cq, self.chan] + [r.mr for r in self.regions]
        for o in objs + [self.pd]:
            try:
                if o is not None:
                    o.close()
            except Exception:
                log.debug("nvmf-rdma: close of %r failed", o, exc_info=True)
        self.regions.clear()
        # the context belongs to librdmacm: never closed here, kept to the end
        _KEEP.append(self.vctx)


class RdmaConn:
    """One accepted RC queue pair: implements rdma_qpair.Verbs for its RdmaQpair."""

    def __init__(
        self,
        dev: RdmaDevice,
        cmid: Any,
        target: NvmfTarget,
        creq: R.ConnectRequest,
        depth: int,
        listener: str,
    ) -> None:
        import pyverbs.enums as e
        import pyverbs.qp as qpm
        import pyverbs.wr as wr

        self.wr = wr
        self.e = e
        self.dev = dev
        self.cmid = cmid
        self.cm_ptr = _cptr(cmid)
        self.closed = False
        self.destroyed = False
        self.num = dev.add_conn(self)
        self.depth = depth
        peer = cm_id_addr(self.cm_ptr, True)
        self.qp = RdmaQpair(target, RDMA, self, depth, listener, peer, creq.qid)
        self.qp.stats = dev.stats  # counted per device (poll group statistics)
        nsend = depth * 3 + 8  # READ + WRITE + SEND per command, and some slack
        use_srq = dev.srq is not None
        cap = qpm.QPCap(
            max_send_wr=nsend,
            max_recv_wr=1 if use_srq else depth,
            max_send_sge=8,
            max_recv_sge=1,
        )
        init = qpm.QPInitAttr(
            qp_type=e.IBV_QPT_RC,
            scq=dev.cq,
            rcq=dev.cq,
            srq=dev.srq if use_srq else None,
            cap=cap,
            sq_sig_all=0,
        )
        self.vqp = qpm.QP(dev.pd, init)
        self.qpn = self.vqp.qp_num
        dev.by_qpn[self.qpn] = self
        bs = dev.bufsize
        self.bs = bs
        self.rbufs: list[memoryview] = []
        if not use_srq:
            m, mr, a = dev.arena(depth * bs)
            self.rarena, self.rmr, self.raddr = m, mr, a
            v = memoryview(m)
            self.rbufs = [v[i * bs : (i + 1) * bs] for i in range(depth)]
        # response capsules: one 16-byte slot per possible outstanding SEND
        self.nslots = depth + 8
        m2, mr2, a2 = dev.arena(self.nslots * R.CQE_SIZE)
        self.sarena, self.smr, self.saddr = m2, mr2, a2
        self.sview = memoryview(m2)
        self.free_slots = list(range(self.nslots - 1, -1, -1))
        self.send_tok: dict[int, tuple[Any, Any]] = {}  # slot -> (token, ad hoc MR)
        self.reads: dict[int, RdmaRequest] = {}
        self.read_mrs: dict[int, list[Any]] = {}
        self._next_read = 0
        for st in (e.IBV_QPS_INIT, e.IBV_QPS_RTR, e.IBV_QPS_RTS):
            attr, mask = cmid.init_qp_attr(st)
            if st == e.IBV_QPS_RTS:
                attr.max_rd_atomic = R.MAX_RD_ATOMIC
                mask |= e.IBV_QP_MAX_QP_RD_ATOMIC
            self.vqp.modify(attr, mask)
        if not use_srq:
            for i in range(depth):
                self.repost(i)

    # -- Verbs -------------------------------------------------------------------
    def lkey(self, data: memoryview) -> int | None:
        k = self.dev.lkey_for(data)
        return None if k is None else k[1]

    def _sges(self, views: list[memoryview], keep: list[Any]) -> list[Any]:
        out = []
        for v in views:
            k = self.dev.lkey_for(v)
            if k is None:  # a private bounded buffer (no pool): registered for this READ
                mr = self.dev.register_once(v)
                keep.append(mr)
                k = (addr_of(v), mr.lkey)
            out.append(self.wr.SGE(k[0], v.nbytes, k[1]))
        return out

    def post_read(self, req: RdmaRequest, views: list[memoryview], addr: int, key: int) -> None:
        if self.closed:
            self.dev.rctx.loop.call_soon(lambda: self.qp.read_done(req, False))
            return
        idx = self._next_read
        while idx in self.reads:
            idx = (idx + 1) & 0xFFFFFFF
        self._next_read = (idx + 1) & 0xFFFFFFF
        keep: list[Any] = []
        sges = self._sges(views, keep)
        w = self.wr.SendWR(
            wr_id=_wrid(self.num, K_READ, idx),
            opcode=self.e.IBV_WR_RDMA_READ,
            num_sge=len(sges),
            sg=sges,
            send_flags=self.e.IBV_SEND_SIGNALED,
        )
        w.set_wr_rdma(key, addr)
        self.reads[idx] = req
        if keep:
            self.read_mrs[idx] = keep
        self.vqp.post_send(w)

    def post_response(
        self, data: memoryview | None, addr: int, key: int, cqe: bytes, token: Any
    ) -> None:
        e, wr = self.e, self.wr
        if self.closed or not self.free_slots:
            if not self.closed:
                log.warning("nvmf-rdma %s: no response slot free: disconnecting", self.qp.peer)
                self.qp.close("response slots exhausted")
            self.dev.rctx.loop.call_soon(lambda: self.qp.send_done(token, False))
            return
        adhoc = None
        first: Any = None
        if data is not None and data.nbytes:
            k = self.dev.lkey_for(data)
            if k is None:  # a private bounce copy: registered for this WRITE only
                adhoc = self.dev.register_once(data)
                k = (addr_of(data), adhoc.lkey)
            first = wr.SendWR(
                wr_id=_wrid(self.num, K_WRITE, 0),
                opcode=e.IBV_WR_RDMA_WRITE,
                num_sge=1,
                sg=[wr.SGE(k[0], data.nbytes, k[1])],
                send_flags=0,
            )
            first.set_wr_rdma(key, addr)
        slot = self.free_slots.pop()
        off = slot * R.CQE_SIZE
        self.sview[off : off + R.CQE_SIZE] = cqe
        send = wr.SendWR(
            wr_id=_wrid(self.num, K_SEND, slot),
            opcode=e.IBV_WR_SEND,
            num_sge=1,
            sg=[wr.SGE(self.saddr + off, R.CQE_SIZE, self.smr.lkey)],
            send_flags=e.IBV_SEND_SIGNALED,
        )
        self.send_tok[slot] = (token, (adhoc, data) if adhoc is not None else None)
        if first is not None:
            first.next_wr = send
            self.vqp.post_send(first)
        else:
            self.vqp.post_send(send)

    def repost(self, slot: int) -> None:
        if self.closed:
            return
        if self.dev.srq is not None:
            self.dev.post_srq(slot)
            return
        sge = self.wr.SGE(self.raddr + slot * self.bs, self.bs, self.rmr.lkey)
        self.vqp.post_recv(self.wr.RecvWR(wr_id=_wrid(self.num, K_RECV, slot), num_sge=1, sg=[sge]))

    def disconnect(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.cmid.disconnect()
        except Exception:
            pass
        # flushed completions arrive meanwhile; then free everything
        self.dev.rctx.loop.call_later(0.5, self.destroy)

    # -- completions -------------------------------------------------------------
    def on_recv(self, slot: int, wc: Any, buf: memoryview, srq: bool) -> None:
        if wc.status != self.e.IBV_WC_SUCCESS:
            if srq and not self.closed:
                self.dev.post_srq(slot)
            if not self.qp.closed:
                self.qp.close(f"receive status {wc.status}")
            return
        if self.closed:
            if srq:
                self.dev.post_srq(slot)
            return
        self.qp.capsule(slot, buf, wc.byte_len)

    def on_read(self, idx: int, ok: bool) -> None:
        for mr in self.read_mrs.pop(idx, ()):
            try:
                mr.close()
            except Exception:
                pass
        req = self.reads.pop(idx, None)
        if req is not None:
            self.qp.read_done(req, ok)

    def on_send(self, slot: int, ok: bool) -> None:
        tok = self.send_tok.pop(slot, None)
        self.free_slots.append(slot)
        if tok is None:
            return
        token, adhoc = tok
        if adhoc is not None:
            try:
                adhoc[0].close()
            except Exception:
                pass
        self.qp.send_done(token, ok)

    def failed(self, why: str) -> None:
        if not self.qp.closed:
            self.qp.close(why)

    def cm_event(self, etype: int) -> None:
        import pyverbs.cm_enums as ce

        if etype == ce.RDMA_CM_EVENT_ESTABLISHED:
            return
        if etype in (
            ce.RDMA_CM_EVENT_DISCONNECTED,
            ce.RDMA_CM_EVENT_DEVICE_REMOVAL,
            ce.RDMA_CM_EVENT_CONNECT_ERROR,
            ce.RDMA_CM_EVENT_UNREACHABLE,
        ):
            if not self.qp.closed:
                self.qp.close("disconnected by the host")
            elif not self.closed:
                self.disconnect()

    def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        self.closed = True
        dev = self.dev
        for req in list(self.reads.values()):
            self.qp.read_done(req, False)
        self.reads.clear()
        for slot in list(self.send_tok):
            self.on_send(slot, False)
        self.qp.flushed()
        dev.by_qpn.pop(self.qpn, None)
        dev.conns.pop(self.num, None)
        dev.driver.by_cm.pop(self.cm_ptr, None)
        try:
            self.vqp.close()
        except Exception:
            log.debug("nvmf-rdma: QP close failed", exc_info=True)
        try:
            self.cmid.close()
        except Exception:
            log.debug("nvmf-rdma: cm_id close failed", exc_info=True)
        for m in ("rmr", "smr"):
            mr = getattr(self, m, None)
            if mr is not None:
                try:
                    mr.close()
                except Exception:
                    pass


class RdmaListener:
    """A listening cm_id on one reactor, with its event channel in epoll."""

    def __init__(
        self,
        driver: Any,
        ctx: ReactorContext,
        key: str,
        traddr: str,
        trsvcid: int,
        backlog: int = 100,
    ) -> None:
        import pyverbs.cm_enums as ce
        import pyverbs.cmid as cm

        self.driver = driver
        self.ctx = ctx
        self.key = key
        self.chan = cm.CMEventChannel()
        self.fd = event_channel_fd(self.chan)
        self.lid = cm.CMID(creator=self.chan, port_space=ce.RDMA_PS_TCP)
        ai = cm.AddrInfo(
            src=traddr, src_service=str(trsvcid), port_space=ce.RDMA_PS_TCP, flags=ce.RAI_PASSIVE
        )
        self.lid.bind_addr(ai)
        self.lid.listen(backlog)
        self.dev = driver.device(ctx, self.lid)
        ctx.loop.add_fd(self.fd, EPOLLIN, self._on_events)
        log.info(
            "nvmf-rdma: reactor %d listening on %s:%s (%s)",
            ctx.reactor_id,
            traddr,
            trsvcid,
            self.dev.name,
        )

    def _on_events(self, _ev: int) -> None:
        import pyverbs.cmid as cm

        for _ in range(64):
            try:
                ev = cm.CMEvent(self.chan)
            except Exception as e:
                if getattr(e, "error_code", errno.EAGAIN) not in (errno.EAGAIN, 0):
                    log.debug("nvmf-rdma: get_cm_event: %s", e)
                return
            try:
                self.driver.handle_event(self, ev)
            except Exception:
                log.exception("nvmf-rdma: CM event handling failed")
            finally:
                try:
                    ev.close()  # ack (a no-op if already acked)
                except Exception:
                    pass

    def close(self) -> None:
        try:
            self.ctx.loop.remove_fd(self.fd)
        except Exception:
            pass
        try:
            self.lid.close()
        except Exception:
            log.debug("nvmf-rdma: listener close failed", exc_info=True)
