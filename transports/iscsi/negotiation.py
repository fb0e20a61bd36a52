"""Login and text negotiation of one connection, around login.py's sans-I/O
state machine:

* `LoginPhase` feeds Login Request PDUs to `login.Login` and, once it
  succeeds, applies the outcome: a new session, a reinstated one (the old one
  closed) or a joined one (MC/S; a same-CID connection is dropped at ERL 0);
  then the connection enters the full feature phase with the negotiated
  digests and receive limit.
* `TextExchange` answers Text Requests in the full feature phase:
  SendTargets and FFP key negotiation, with C-bit continuation both ways
  (request text capped at 64 KiB, responses cut at MaxRecvDataSegmentLength).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import pdu as P
from . import text
from .discovery import send_targets
from .login import Login, session_queue_depth
from .params import STAGE_FULL_FEATURE, NegotiationError, Negotiator
from .session import Session

if TYPE_CHECKING:
    from .connection import Connection

TEXT_REQUEST_LIMIT = 64 * 1024  # request text gathered across C-bit PDUs


class LoginPhase:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        env = conn.env
        self.login: Login | None = Login(env.view, env.sessions, conn.listener, conn.peer_addr)

    def on_pdu(self, pdu: P.Pdu) -> None:
        c = self.conn
        login = self.login
        assert login is not None
        out = login.on_pdu(pdu)
        if login.failed:
            c.send(out)
            c.close("login failed: " + login.error)
            return
        oc = login.outcome
        if oc is None:
            c.send(out)
            return
        env = c.env
        c.outcome = oc
        c.cid = oc.cid
        c.statsn = oc.statsn
        c.cp = oc.negotiator.conn_params()
        if oc.reinstate is not None:
            old = oc.reinstate
            assert isinstance(old, Session)
            old.close()
            env.sessions.remove(old)
        if oc.join is not None:
            sess = oc.join
            assert isinstance(sess, Session)
            other = sess.connection(oc.cid)
            if other is not None:  # connection reinstatement at ERL 0: drop the old one
                other.close("connection reinstated")
        else:
            sess = Session(
                oc.tsih,
                oc.isid,
                oc.initiator_name,
                oc.target,
                oc.negotiator.session_params(),
                oc.cmdsn,
                oc.pg_tag or 0,
                session_queue_depth(env.view, oc.target),
            )
            env.sessions.add(sess)
        sess.attach(c)
        self.login = None
        c.enter_ffp(sess)
        c.send(out)

    def release(self) -> None:
        self.login = None


class TextExchange:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending = bytearray()  # request text of C-bit PDUs so far
        self.rest = b""  # response text not sent yet (C bit in our response)
        self.ttt = P.RSVD_TAG

    def release(self) -> None:
        self.pending = bytearray()
        self.rest = b""

    def on_pdu(self, pdu: P.Pdu) -> None:
        c = self.conn
        s = c.session
        assert s is not None
        if pdu.ttt != P.RSVD_TAG:
            if pdu.ttt != self.ttt:
                c.reject(pdu.bhs, P.REJ_INVALID_FIELD)
                return
            if not self.rest:
                self.pending += pdu.data
            else:
                self._send(pdu.itt, self.rest)
                return
        else:
            self.pending = bytearray(pdu.data)
            self.rest = b""
        if pdu.cont:
            if len(self.pending) > TEXT_REQUEST_LIMIT:
                c.reject(pdu.bhs, P.REJ_PROTOCOL)
                self.pending = bytearray()
                return
            self.ttt = c.new_ttt()
            sn, exp, mx = c.status_words()
            c.send(c.encode(P.OP_TEXT_RESP, 0, 0, 0, 0, pdu.itt, (self.ttt, sn, exp, mx, 0, 0, 0)))
            return
        try:
            pairs = text.parse(self.pending)
        except text.TextError:
            c.reject(pdu.bhs, P.REJ_PROTOCOL)
            return
        self.pending = bytearray()
        out: list[tuple[str, str]] = []
        oc = c.outcome
        assert oc is not None
        neg = Negotiator(oc.negotiator.ours, discovery=s.discovery, leading=False)
        for k, v in pairs:
            if k == "SendTargets":
                out += send_targets(
                    c.env.view,
                    v,
                    s.initiator_name,
                    c.peer_addr,
                    c.local_addr,
                    None if s.discovery else s.target_name,
                )
        try:
            out += neg.respond([(k, v) for k, v in pairs if k != "SendTargets"], STAGE_FULL_FEATURE)
        except NegotiationError:
            c.reject(pdu.bhs, P.REJ_PROTOCOL)
            return
        if "MaxRecvDataSegmentLength" in neg.declared:
            c.set_max_xmit_dlen(int(neg.declared["MaxRecvDataSegmentLength"]))
        self._send(pdu.itt, text.encode(out))

    def _send(self, itt: int, data: bytes) -> None:
        c = self.conn
        n = max(512, c.cp.max_xmit_dlen)
        chunk, rest = data[:n], data[n:]
        self.rest = rest
        if rest:
            self.ttt = c.new_ttt()
            f1, ttt = P.F_CONT, self.ttt
        else:
            self.ttt = P.RSVD_TAG
            f1, ttt = P.F_FINAL, P.RSVD_TAG
        sn, exp, mx = c.status_words()
        c.send(c.encode(P.OP_TEXT_RESP, f1, 0, 0, 0, itt, (ttt, sn, exp, mx, 0, 0, 0), chunk))
