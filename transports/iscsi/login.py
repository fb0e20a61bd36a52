"""The login phase (RFC 7143 sections 6.3 and 11.12-11.13) as a sans-I/O state
machine: Login Request PDUs in, encoded Login Response PDUs out.

It checks the stages (SecurityNegotiation -> LoginOperationalNegotiation ->
FullFeaturePhase) and T/C bits, finds the target and checks access (initiator
groups and netmasks through the portal group the connection arrived on), runs
AuthMethod/CHAP, negotiates the operational keys and decides whether the
connection starts a new session, reinstates one, or joins one (MC/S).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from . import pdu as P
from . import text
from .chap import AuthError, ChapSecret, ChapTarget
from .nodes import AuthPolicy, ConfigView, TargetView
from .params import (
    STAGE_FULL_FEATURE,
    STAGE_OPERATIONAL,
    STAGE_SECURITY,
    NegotiationError,
    Negotiator,
    target_values,
)

# status class / detail (RFC 7143 11.13.5)
ST_SUCCESS = (0, 0)
ST_INITIATOR_ERROR = (2, 0)
ST_AUTH_FAILED = (2, 1)
ST_AUTHORIZATION_FAILED = (2, 2)
ST_NOT_FOUND = (2, 3)
ST_UNSUPPORTED_VERSION = (2, 5)
ST_TOO_MANY_CONNECTIONS = (2, 6)
ST_MISSING_PARAMETER = (2, 7)
ST_CANT_INCLUDE = (2, 8)
ST_SESSION_TYPE = (2, 9)
ST_NO_SESSION = (2, 0x0A)
ST_INVALID_DURING_LOGIN = (2, 0x0B)
ST_TARGET_ERROR = (3, 0)
ST_SERVICE_UNAVAILABLE = (3, 1)
ST_OUT_OF_RESOURCES = (3, 2)

TEXT_LIMIT = (
    16 * 1024
)  # login text across C-bit PDUs (real logins: < 4 KiB; an 8 KiB CHAP value fits)


def session_queue_depth(view: ConfigView, target: TargetView | None) -> int:
    """Commands one session may have outstanding (the CmdSN window): the
    target node's queue depth, capped by the global MaxQueueDepth."""
    if target is None:
        return 1
    cap = int(view.options.get("max_queue_depth", 64) or 64)
    return max(1, min(target.queue_depth, cap))


class LoginFailed(Exception):
    def __init__(self, status: tuple[int, int], message: str) -> None:
        super().__init__(message)
        self.status = status


class SessionLike(Protocol):
    tsih: int
    isid: int
    initiator_name: str
    target_name: str
    max_connections: int
    exp_cmdsn: int
    discovery: bool

    def connection_count(self) -> int: ...


class SessionTable(Protocol):
    """The reactor's sessions (process-local: a target's sessions live on its
    home reactor)."""

    def by_tsih(self, tsih: int) -> SessionLike | None: ...

    def find(self, initiator_name: str, isid: int, target_name: str) -> SessionLike | None: ...

    def alloc_tsih(self) -> int: ...

    def count(self) -> int: ...


@dataclass
class LoginOutcome:
    """What the connection needs once the login completed."""

    discovery: bool
    initiator_name: str
    initiator_alias: str
    target: TargetView | None
    isid: int
    tsih: int
    cid: int
    join: SessionLike | None  # existing session this connection joins (MC/S)
    reinstate: SessionLike | None  # existing session to close (reinstatement)
    negotiator: Negotiator
    cmdsn: int
    statsn: int  # next StatSN for this connection
    pg_tag: int | None
    chap_user: str = ""
    keys: dict[str, str] = field(default_factory=dict)


class Login:
    def __init__(
        self,
        view: ConfigView,
        sessions: SessionTable,
        listener: str,
        peer_addr: str,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.view = view
        self.sessions = sessions
        self.listener = listener
        self.peer_addr = peer_addr
        self.opts = options if options is not None else view.options
        self.pg_tag = view.pg_of_listener(listener)
        self.stage = STAGE_SECURITY
        self.first = True
        self.isid = 0
        self.tsih = 0
        self.cid = 0
        self.itt = 0
        self.cmdsn = 0
        self.statsn = 0
        self.pending_text = bytearray()
        self.keys: dict[str, str] = {}
        self.discovery = False
        self.target: TargetView | None = None
        self.policy = AuthPolicy()
        self.auth_method: str | None = None
        self.chap: ChapTarget | None = None
        self.authenticated = False
        self.negotiator: Negotiator | None = None
        self.join: SessionLike | None = None
        self.reinstate: SessionLike | None = None
        self.outcome: LoginOutcome | None = None
        self.failed = False
        self.error = ""  # why, when failed

    # ------------------------------------------------------------------
    def on_pdu(self, pdu: P.Pdu) -> list[P.Buffer]:
        """Handle one Login Request; returns the encoded Login Response. After
        it, ``outcome`` is set when the login completed and ``failed`` when
        the connection must close."""
        if self.failed or self.outcome is not None:
            return []
        try:
            return self._on_pdu(pdu)
        except LoginFailed as e:
            self.failed = True
            self.error = str(e)
            return self._response(pdu, 0, b"", e.status)
        except (NegotiationError, text.TextError) as e:
            self.failed = True
            self.error = str(e)
            st = (
                (e.status_class, e.detail)
                if isinstance(e, NegotiationError)
                else ST_INITIATOR_ERROR
            )
            return self._response(pdu, 0, b"", st)

    def _on_pdu(self, pdu: P.Pdu) -> list[P.Buffer]:
        if pdu.opcode != P.OP_LOGIN_REQ:
            raise LoginFailed(ST_INVALID_DURING_LOGIN, f"opcode 0x{pdu.opcode:02x} during login")
        if pdu.b3 > 0:  # Version-min above what we speak (0)
            raise LoginFailed(ST_UNSUPPORTED_VERSION, "unsupported iSCSI version")
        if self.first:
            self.isid, self.tsih, self.cid, self.itt = pdu.isid, pdu.tsih, pdu.cid, pdu.itt
            self.cmdsn = pdu.cmdsn
            self.statsn = pdu.exp_statsn
        elif (pdu.isid, pdu.tsih, pdu.cid) != (
            self.isid,
            self.tsih,
            self.cid,
        ) or pdu.itt != self.itt:
            raise LoginFailed(ST_INITIATOR_ERROR, "ISID/TSIH/CID/ITT changed during login")
        csg, nsg = pdu.csg, pdu.nsg
        if csg == 2 or csg == STAGE_FULL_FEATURE:
            raise LoginFailed(ST_INITIATOR_ERROR, f"invalid CSG {csg}")
        if csg != self.stage and not (self.first and csg == STAGE_OPERATIONAL):
            raise LoginFailed(
                ST_INVALID_DURING_LOGIN, f"CSG {csg} but the login is in stage {self.stage}"
            )
        if pdu.transit and pdu.cont:
            raise LoginFailed(ST_INITIATOR_ERROR, "T and C bits both set")
        if pdu.transit and (nsg == 2 or nsg <= csg):
            raise LoginFailed(ST_INITIATOR_ERROR, f"invalid NSG {nsg} from CSG {csg}")
        self.stage = csg
        self.pending_text += pdu.data
        if len(self.pending_text) > TEXT_LIMIT:
            raise LoginFailed(ST_INITIATOR_ERROR, "login text too long")
        if pdu.cont:
            # more text follows: answer with an empty response to ask for it
            return self._response(pdu, csg << 2, b"", ST_SUCCESS)
        pairs = text.parse(self.pending_text)
        self.pending_text = bytearray()
        out: list[tuple[str, str]] = []
        if self.first:
            out += self._first(pairs)
            self.first = False
        for k, v in pairs:
            self.keys.setdefault(k, v)
        if csg == STAGE_SECURITY:
            out += self._security(pairs, pdu.transit)
        else:
            if self.policy.methods() == ["CHAP"] and not self.authenticated:
                raise LoginFailed(ST_AUTH_FAILED, "CHAP is required")
            self.authenticated = True
        assert self.negotiator is not None
        op_pairs = [
            (k, v) for k, v in pairs if not (csg == STAGE_SECURITY and k.startswith("CHAP_"))
        ]
        out += self.negotiator.respond(op_pairs, STAGE_SECURITY if csg == 0 else STAGE_OPERATIONAL)
        transit = pdu.transit and self.authenticated
        if transit and nsg == STAGE_FULL_FEATURE:
            # a key goes at most once per PDU: after a Reject of the initiator's
            # MaxRecvDataSegmentLength ours is not declared (the default applies)
            answered = {k for k, _ in out}
            out += [kv for kv in self._finish() if kv[0] not in answered]
        f1 = csg << 2
        if transit:
            f1 |= P.F_TRANSIT | nsg
            self.stage = nsg
        resp = self._response(pdu, f1, text.encode(out), ST_SUCCESS)
        return resp

    def _first(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        keys = dict(pairs)
        iname = keys.get("InitiatorName")
        if not iname:
            raise LoginFailed(ST_MISSING_PARAMETER, "InitiatorName missing")
        stype = keys.get("SessionType", "Normal")
        if stype not in ("Normal", "Discovery"):
            raise LoginFailed(ST_SESSION_TYPE, f"session type {stype!r} not supported")
        self.discovery = stype == "Discovery"
        out: list[tuple[str, str]] = []
        if self.pg_tag is None:
            raise LoginFailed(ST_NOT_FOUND, f"no portal group for listener {self.listener}")
        if self.discovery:
            self.policy = self.view.discovery_auth
            ours: dict[str, str] = self._target_values(None)
        else:
            tname = keys.get("TargetName")
            if not tname:
                raise LoginFailed(ST_MISSING_PARAMETER, "TargetName missing")
            t = self.view.target(tname)
            if t is None:
                raise LoginFailed(ST_NOT_FOUND, f"target {tname} not found")
            if not self.view.may_access(t, self.pg_tag, iname, self.peer_addr):
                raise LoginFailed(
                    ST_AUTHORIZATION_FAILED, f"{iname} at {self.peer_addr} may not access {tname}"
                )
            self.target = t
            self.policy = t.auth
            ours = self._target_values(t)
            out.append(("TargetPortalGroupTag", str(self.pg_tag)))
            if t.alias:
                out.append(("TargetAlias", t.alias))
        tname_key = self.target.name if self.target else ""
        if self.tsih:
            sess = self.sessions.by_tsih(self.tsih)
            if (
                sess is None
                or sess.isid != self.isid
                or sess.initiator_name.lower() != iname.lower()
                or sess.target_name.lower() != tname_key.lower()
            ):
                raise LoginFailed(ST_NO_SESSION, f"no session with TSIH {self.tsih}")
            if sess.connection_count() >= sess.max_connections:
                raise LoginFailed(ST_TOO_MANY_CONNECTIONS, "too many connections in session")
            self.join = sess
        else:
            old = self.sessions.find(iname, self.isid, tname_key)
            if (
                old is not None
                and not self.discovery
                and not self.opts.get("allow_duplicated_isid", False)
            ):
                self.reinstate = old
            maxs = int(self.opts.get("max_sessions", 128))
            if old is None and self.sessions.count() >= maxs:
                raise LoginFailed(ST_OUT_OF_RESOURCES, "too many sessions")
        self.negotiator = Negotiator(ours, discovery=self.discovery, leading=self.join is None)
        return out

    def _target_values(self, t: TargetView | None) -> dict[str, str]:
        o = self.opts
        return target_values(
            header_digest=bool(t and t.header_digest),
            data_digest=bool(t and t.data_digest),
            max_connections=int(o.get("max_connections_per_session", 2)),
            initial_r2t=bool(o.get("initial_r2t", True)),
            immediate_data=bool(o.get("immediate_data", True)),
            max_recv_data_segment_length=int(o.get("max_recv_data_segment_length", 65536)),
            max_burst_length=int(o.get("max_burst_length", 1048576)),
            first_burst_length=int(o.get("first_burst_length", 8192)),
            default_time2wait=int(o.get("default_time2wait", 2)),
            default_time2retain=int(o.get("default_time2retain", 20)),
            max_outstanding_r2t=int(o.get("max_r2t_per_connection", 4)),
            error_recovery_level=int(o.get("error_recovery_level", 0)),
        )

    def _security(self, pairs: list[tuple[str, str]], transit: bool) -> list[tuple[str, str]]:
        keys = dict(pairs)
        out: list[tuple[str, str]] = []
        if "AuthMethod" in keys and self.auth_method is None:
            offered = [x.strip() for x in keys["AuthMethod"].split(",")]
            mine = self.policy.methods()
            if mine == ["CHAP", "None"] and not self.view.chap_secrets(self.policy.chap_group):
                mine = ["None"]  # CHAP is optional and no secret exists: it could only fail
            pick = next((m for m in offered if m in mine), None)
            if pick is None:
                raise LoginFailed(ST_AUTH_FAILED, f"AuthMethod {keys['AuthMethod']} not acceptable")
            self.auth_method = pick
            out.append(("AuthMethod", pick))
            if pick == "CHAP":
                self.chap = ChapTarget(self._lookup_secret, mutual=self.policy.mutual_chap)
        if self.auth_method == "CHAP":
            assert self.chap is not None
            try:
                out += self.chap.step(keys)
            except AuthError as e:
                raise LoginFailed(ST_AUTH_FAILED, str(e)) from e
            self.authenticated = self.chap.done
        elif self.auth_method == "None":
            self.authenticated = True
        elif transit:
            # no AuthMethod sent: the default None, unless CHAP is required
            if "None" not in self.policy.methods():
                raise LoginFailed(ST_AUTH_FAILED, "CHAP is required")
            self.auth_method = "None"
            self.authenticated = True
        elif any(k.startswith("CHAP_") for k in keys):
            raise LoginFailed(ST_INITIATOR_ERROR, "CHAP keys before AuthMethod=CHAP")
        return out

    def _lookup_secret(self, user: str) -> ChapSecret | None:
        for s in self.view.chap_secrets(self.policy.chap_group):
            if s.get("user") == user:
                return ChapSecret(
                    s["user"], s["secret"], s.get("muser", "") or "", s.get("msecret", "") or ""
                )
        return None

    def _finish(self) -> list[tuple[str, str]]:
        assert self.negotiator is not None
        missing = self.negotiator.digest_required_missing()
        if missing is not None and not self.discovery:
            raise LoginFailed(ST_INITIATOR_ERROR, f"{missing}=CRC32C is required by the target")
        out = self.negotiator.declare_mrdsl()
        if self.join is not None:
            if self.cmdsn != self.join.exp_cmdsn:
                # RFC: a connection joining a session carries the session's CmdSN;
                # libiscsi/open-iscsi do, so a mismatch is only logged in practice
                pass
            tsih = self.join.tsih
        else:
            tsih = self.sessions.alloc_tsih()
        self.tsih_final = tsih
        self.outcome = LoginOutcome(
            discovery=self.discovery,
            initiator_name=self.keys.get("InitiatorName", ""),
            initiator_alias=self.keys.get("InitiatorAlias", ""),
            target=self.target,
            isid=self.isid,
            tsih=tsih,
            cid=self.cid,
            join=self.join,
            reinstate=self.reinstate,
            negotiator=self.negotiator,
            cmdsn=self.cmdsn,
            statsn=0,  # set below, after the final response takes its StatSN
            pg_tag=self.pg_tag,
            chap_user=self.chap.user if self.chap else "",
            keys=dict(self.keys),
        )
        return out

    def _response(
        self, pdu: P.Pdu, f1: int, data: bytes, status: tuple[int, int]
    ) -> list[P.Buffer]:
        statsn = self.statsn
        self.statsn = (self.statsn + 1) & 0xFFFFFFFF
        tsih = self.tsih
        if self.outcome is not None:
            tsih = self.outcome.tsih
            self.outcome.statsn = self.statsn
        exp = self.join.exp_cmdsn if self.join is not None else self.cmdsn
        qd = session_queue_depth(self.view, self.target)
        lun = (self.isid << 16) | tsih
        w = (
            0,
            statsn,
            exp,
            (exp + max(qd, 1) - 1) & 0xFFFFFFFF,
            (status[0] << 24) | (status[1] << 16),
            0,
            0,
        )
        return P.encode(P.OP_LOGIN_RESP, f1, 0, 0, lun, self.itt, w, data)
