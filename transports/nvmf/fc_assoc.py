"""FC-NVMe target state (sans-I/O): associations, connections, exchanges.

One `FcNexus` exists per I_T nexus, i.e. per remote (host) port logged in to a
local (target) port: FC-NVMe associations belong to that pair, so an
association id is only valid on the nexus that created it (SPDK checks the
same through ``assoc->tgtport`` / ``rport``).

* `FcNexus.handle_ls(payload)` takes one LS request (Create Association,
  Create I/O Connection, Disconnect) and returns the LS response bytes plus
  what changed (`LsOutcome`); every malformed or refused request is answered
  with an LS_RJT carrying the FC-NVMe reason and explanation.
* An association holds its connections, one per NVMe queue (qid 0 = admin,
  created by CASS; I/O queues by CIOC). A connection id is the association
  id with the qid in its low 16 bits (as Linux nvmet-fc builds them), so a
  CMD IU's connection id names its association and queue at once.
* An `Exchange` is one command's life on the wire: opened by a CMD IU,
  optionally a data phase (``DATA_OUT``: the target pulls write data; or
  ``DATA_IN``: the target sends read data), then the response; ``ABORTED``
  when the host sent ABTS or the connection went away while it ran. A
  connection holds at most ``sqsize + 1`` open exchanges: the host cannot
  have more commands outstanding than its queue has slots.

Nothing here touches a socket or a clock; the transport (fc.py) and the LLD
move the bytes.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import fc_iu as IU
from . import fc_ls as LS

QID_MASK = 0xFFFF


class XState(enum.Enum):
    NEW = "new"
    DATA_OUT = "data-out"  # transfer-ready sent, waiting for the host's write data
    EXECUTING = "executing"  # in the NVMe core / the bdev
    DATA_IN = "data-in"  # sending read data
    RESPONDED = "responded"
    ABORTED = "aborted"


_NEXT: dict[XState, frozenset[XState]] = {
    XState.NEW: frozenset({XState.DATA_OUT, XState.EXECUTING, XState.RESPONDED, XState.ABORTED}),
    XState.DATA_OUT: frozenset({XState.EXECUTING, XState.RESPONDED, XState.ABORTED}),
    XState.EXECUTING: frozenset({XState.DATA_IN, XState.RESPONDED, XState.ABORTED}),
    XState.DATA_IN: frozenset({XState.RESPONDED, XState.ABORTED}),
    XState.RESPONDED: frozenset(),
    XState.ABORTED: frozenset(),
}


class ExchangeError(Exception):
    """A protocol error on an exchange (wrong state, data outside the command)."""


@dataclass(slots=True)
class Exchange:
    xid: int  # the LLD's exchange handle (OX_ID on the wire for the loopback LLD)
    conn: Connection
    cmd: IU.CmdIu
    state: XState = XState.NEW
    received: int = 0  # write data bytes received so far
    sent: int = 0  # read data bytes sent so far
    request: object = None  # the core's request, owned by the transport
    path: Any = None  # the LLD path (LldNexus) the exchange arrived on: answers go there
    chunk: int = 0  # write data: index of the buffer chunk being received
    deadline: float = 0.0  # write data must have arrived by then (0: no limit)

    def to(self, state: XState) -> None:
        if state not in _NEXT[self.state]:
            raise ExchangeError(f"exchange {self.xid:#x}: {self.state.value} -> {state.value}")
        self.state = state

    @property
    def done(self) -> bool:
        return self.state in (XState.RESPONDED, XState.ABORTED)

    def accept_data(self, offset: int, n: int) -> None:
        """Write data arrived at ``offset``: it must continue the transfer in
        order and stay inside the command's data length."""
        if self.state is not XState.DATA_OUT:
            raise ExchangeError(f"exchange {self.xid:#x}: data while {self.state.value}")
        if offset != self.received or n <= 0 or offset + n > self.cmd.data_len:
            raise ExchangeError(
                f"exchange {self.xid:#x}: data at {offset}+{n}, expected {self.received}"
                f" within {self.cmd.data_len}"
            )
        self.received += n


@dataclass(slots=True)
class Connection:
    conn_id: int
    assoc: Association
    qid: int
    sqsize: int  # 0's based, as in the LS
    ersp_ratio: int
    exchanges: dict[int, Exchange] = field(default_factory=dict)
    rsn: int = 0  # response sequence number of the next ERSP
    sq_count: int = 0  # commands completed (for the ERSP ratio)
    qpair: object = None  # the core's queue pair, owned by the transport

    def open_exchange(self, xid: int, cmd: IU.CmdIu) -> Exchange:
        if xid in self.exchanges:
            raise ExchangeError(f"exchange {xid:#x} already open")
        if len(self.exchanges) > self.sqsize:
            raise ExchangeError(
                f"connection {self.conn_id:#x}: more than {self.sqsize + 1} commands outstanding"
            )
        x = Exchange(xid, self, cmd)
        self.exchanges[xid] = x
        return x

    def response(self, x: Exchange, cqe: bytes, status: int, xfrd: int, force_ersp: bool) -> bytes:
        """The response IU closing ``x`` (good response or ERSP)."""
        x.to(XState.RESPONDED)
        self.exchanges.pop(x.xid, None)
        self.sq_count += 1
        if force_ersp or IU.need_ersp(
            status, xfrd, x.cmd.data_len, cqe, self.sq_count, self.ersp_ratio
        ):
            self.rsn += 1
            return IU.encode_ersp_iu(self.rsn, xfrd, cqe)
        return IU.GOOD_RSP

    def abort_all(self) -> list[Exchange]:
        out = []
        for x in self.exchanges.values():
            if not x.done:
                x.state = XState.ABORTED
            out.append(x)
        self.exchanges.clear()
        return out


@dataclass(slots=True)
class Association:
    assoc_id: int
    hostnqn: str
    subnqn: str
    hostid: bytes
    cntlid: int
    connections: dict[int, Connection] = field(default_factory=dict)  # by qid


@dataclass(slots=True)
class LsOutcome:
    response: bytes
    created: Connection | None = None  # a new connection (admin with CASS, I/O with CIOC)
    removed: list[Connection] = field(default_factory=list)  # DISC: connections to close
    rejected: LS.LsReject | None = None


class NexusLimits:
    """Bounds one nexus enforces (from the transport's options)."""

    __slots__ = ("max_associations", "max_aq_depth", "max_queue_depth", "max_qpairs_per_ctrlr")

    def __init__(
        self,
        max_associations: int = 64,
        max_aq_depth: int = 32,
        max_queue_depth: int = 128,
        max_qpairs_per_ctrlr: int = 128,
    ) -> None:
        self.max_associations = max_associations
        self.max_aq_depth = max_aq_depth
        self.max_queue_depth = max_queue_depth
        self.max_qpairs_per_ctrlr = max_qpairs_per_ctrlr


# (subnqn) -> reason/explanation to reject with, or None when it is served here
SubsystemCheck = Callable[[str, str], tuple[int, int, str] | None]


class FcNexus:
    """The associations of one (host port, target port) pair."""

    def __init__(
        self,
        limits: NexusLimits,
        check: SubsystemCheck,
        id_source: Callable[[], int] | None = None,
    ) -> None:
        self.limits = limits
        self.check = check
        self.assocs: dict[int, Association] = {}
        self.conns: dict[int, Connection] = {}
        self._new_id = id_source or (lambda: secrets.randbits(48) << 16)

    def conn(self, conn_id: int) -> Connection | None:
        return self.conns.get(conn_id)

    def handle_ls(self, payload: bytes | bytearray | memoryview) -> LsOutcome:
        try:
            req = LS.decode_request(payload)
            if isinstance(req, LS.CreateAssociation):
                return self._cass(req)
            if isinstance(req, LS.CreateConnection):
                return self._cioc(req)
            return self._disc(req)
        except LS.LsReject as e:
            return LsOutcome(LS.reject_for(e), rejected=e)

    def _check_queue(self, ls_cmd: int, sqsize: int, ersp: int, maxdepth: int) -> None:
        # sqsize is 0's based; a queue needs at least 2 entries
        if sqsize < 1 or sqsize + 1 > maxdepth:
            raise LS.LsReject(
                LS.RJT_RC_INV_PARAM,
                LS.RJT_EXP_INV_SQSIZE,
                f"SQ size {sqsize + 1} outside 2..{maxdepth}",
                ls_cmd,
            )
        if ersp >= sqsize:
            raise LS.LsReject(
                LS.RJT_RC_INV_PARAM,
                LS.RJT_EXP_INV_ERSP_RAT,
                f"ERSP ratio {ersp} not below the SQ size {sqsize}",
                ls_cmd,
            )

    def _cass(self, req: LS.CreateAssociation) -> LsOutcome:
        cmd = LS.LS_CREATE_ASSOCIATION
        self._check_queue(cmd, req.sqsize, req.ersp_ratio, self.limits.max_aq_depth)
        bad = self.check(req.subnqn, req.hostnqn)
        if bad is not None:
            raise LS.LsReject(bad[0], bad[1], bad[2], cmd)
        if len(self.assocs) >= self.limits.max_associations:
            raise LS.LsReject(
                LS.RJT_RC_UNAB,
                LS.RJT_EXP_INSUF_RES,
                f"{len(self.assocs)} associations on this port pair already",
                cmd,
            )
        aid = self._new_id() & ~QID_MASK
        while aid == 0 or aid in self.assocs:
            aid = (secrets.randbits(48) << 16) & ~QID_MASK
        a = Association(aid, req.hostnqn, req.subnqn, req.hostid, req.cntlid)
        self.assocs[aid] = a
        c = self._add_conn(a, 0, req.sqsize, req.ersp_ratio)
        return LsOutcome(LS.encode_accept(LS.LsAccept(cmd, aid, c.conn_id)), created=c)

    def _assoc(self, ls_cmd: int, aid: int) -> Association:
        a = self.assocs.get(aid)
        if a is None:
            raise LS.LsReject(
                LS.RJT_RC_INV_ASSOC, LS.RJT_EXP_NONE, f"no association {aid:#x}", ls_cmd
            )
        return a

    def _cioc(self, req: LS.CreateConnection) -> LsOutcome:
        cmd = LS.LS_CREATE_CONNECTION
        a = self._assoc(cmd, req.assoc_id)
        if req.qid == 0 or req.qid > self.limits.max_qpairs_per_ctrlr - 1:
            raise LS.LsReject(
                LS.RJT_RC_INV_PARAM,
                LS.RJT_EXP_INV_QUEUE_ID,
                f"qid {req.qid} outside 1..{self.limits.max_qpairs_per_ctrlr - 1}",
                cmd,
            )
        if req.qid in a.connections:
            raise LS.LsReject(
                LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_QUEUE_ID, f"qid {req.qid} exists", cmd
            )
        self._check_queue(cmd, req.sqsize, req.ersp_ratio, self.limits.max_queue_depth)
        c = self._add_conn(a, req.qid, req.sqsize, req.ersp_ratio)
        return LsOutcome(LS.encode_accept(LS.LsAccept(cmd, None, c.conn_id)), created=c)

    def _disc(self, req: LS.Disconnect) -> LsOutcome:
        cmd = LS.LS_DISCONNECT
        a = self._assoc(cmd, req.assoc_id)
        removed = self.drop_association(a)
        return LsOutcome(LS.encode_accept(LS.LsAccept(cmd)), removed=removed)

    def _add_conn(self, a: Association, qid: int, sqsize: int, ersp: int) -> Connection:
        c = Connection(a.assoc_id | qid, a, qid, sqsize, ersp)
        a.connections[qid] = c
        self.conns[c.conn_id] = c
        return c

    def drop_connection(self, c: Connection) -> None:
        """A connection's queue pair went away (the core closed it)."""
        c.abort_all()
        self.conns.pop(c.conn_id, None)
        c.assoc.connections.pop(c.qid, None)

    def drop_association(self, a: Association) -> list[Connection]:
        conns = list(a.connections.values())
        for c in conns:
            self.drop_connection(c)
        self.assocs.pop(a.assoc_id, None)
        return conns

    def drop_all(self) -> list[Connection]:
        """The nexus went away (link down, host logged out)."""
        out: list[Connection] = []
        for a in list(self.assocs.values()):
            out += self.drop_association(a)
        return out
