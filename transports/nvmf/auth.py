"""DH-HMAC-CHAP in-band authentication, controller side (NVMe base
specification 2.0, 8.13.5; fabrics Authentication Send 05h / Receive 06h).

`TargetAuth` is the sans-I/O state machine of one queue pair: ``send(payload)``
takes what the host sent with Authentication Send, ``recv(al)`` returns what
Authentication Receive carries back. A failure inside a transaction is not a
command error: the command succeeds and the next Receive returns
AUTH_Failure1 with the reason (as the specification, Linux nvmet and SPDK
do). A new AUTH_Negotiate at any time starts a new transaction
(re-authentication): the queue stays authenticated meanwhile and loses it
when that transaction fails. Keys are looked up when a transaction starts,
so `nvmf_subsystem_set_keys` applies to the next (re-)authentication without
touching connected queues.

The functions at the bottom hook it into the NVMe-oF core: `start` (after a
successful Connect: the AUTHREQ.ATR bit of the Connect response), `execute`
(the two fabrics commands), `gate` (everything else on a queue that must
authenticate and has not: Authentication Required).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...control.keyring import DhchapSecret
from . import auth_msg as M
from . import spec
from .auth_crypto import (
    DH_NULL,
    DHGROUP_IDS,
    DHGROUPS,
    HASH_IDS,
    HASHES,
    DhKey,
    chap_response,
    hash_len,
    random_bytes,
)

if TYPE_CHECKING:
    from .qpair import QueuePair
    from .request import Request

log = logging.getLogger(__name__)

CONNECT_AUTHREQ_ATR = 1 << 17  # Connect response DW0: authentication required
CONNECT_AUTHREQ_ASCR = 1 << 18  # ... with secure channel concatenation (not offered)
DEFAULT_TIMEOUT_S = 120.0  # an unauthenticated queue is closed after this (SPDK's default)

# strongest first: the controller picks the first one the host offers
PREFERRED_HASHES = [0x03, 0x02, 0x01]
PREFERRED_DHGROUPS = [5, 4, 3, 2, 1, 0]
ALL_DIGESTS = ["sha256", "sha384", "sha512"]
ALL_DHGROUPS = list(DHGROUPS.values())

KeyLookup = Callable[[], tuple[DhchapSecret | None, DhchapSecret | None]]

ST_NEGOTIATE = "negotiate"
ST_CHALLENGE = "challenge"
ST_REPLY = "reply"
ST_SUCCESS1 = "success1"
ST_SUCCESS2 = "success2"
ST_FAILURE1 = "failure1"
ST_COMPLETED = "completed"


def digest_ids(names: list[str]) -> set[int]:
    return {HASH_IDS[n] for n in names}


def dhgroup_ids(names: list[str]) -> set[int]:
    return {DHGROUP_IDS[n] for n in names}


class TargetAuth:
    """The controller's side of DH-HMAC-CHAP on one queue pair."""

    def __init__(
        self,
        hostnqn: str,
        subnqn: str,
        keys: KeyLookup,
        digests: set[int],
        dhgroups: set[int],
        seqnum: Callable[[], int],
    ) -> None:
        self.hostnqn = hostnqn
        self.subnqn = subnqn
        self.keys = keys
        self.digests = digests
        self.dhgroups = dhgroups
        self.next_seqnum = seqnum
        self.state = ST_NEGOTIATE
        self.authenticated = False
        self.tid = 0
        self.hash_id = 0
        self.dhgroup = 0
        self.fail_reason = 0
        self.cval = b""
        self.seqnum = 0
        self.dh: DhKey | None = None
        self.r2: bytes | None = None  # our response to the host's challenge C2
        self.transactions = 0  # completed successfully
        self.failures = 0
        self.last_error = ""  # reason of the last failed transaction (for logs)

    # --------------------------------------------------------------- queries
    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "digest": HASHES.get(self.hash_id, "unknown"),
            "dhgroup": DHGROUPS.get(self.dhgroup, "unknown") if self.hash_id else "unknown",
        }

    # ------------------------------------------------------------- internals
    def _fail(self, rce: int, why: str) -> None:
        self.state = ST_FAILURE1
        self.fail_reason = rce
        self.last_error = f"{M.reason_name(rce)}: {why}"
        self.dh = None

    def _lost(self) -> None:
        """A transaction ended without success: the queue is no longer authenticated."""
        self.authenticated = False
        self.failures += 1

    # ------------------------------------------------------------------ send
    def send(self, payload: bytes | memoryview) -> None:
        """An Authentication Send payload (its command fields already checked)."""
        try:
            atype, aid, tid = M.header(payload)
        except M.AuthPayloadError as e:
            return self._fail(e.rce, str(e))
        if atype == M.AUTH_TYPE_COMMON and aid == M.MSG_NEGOTIATE:
            return self._negotiate(payload)
        if atype == M.AUTH_TYPE_DHCHAP and aid == M.MSG_REPLY:
            return self._reply(payload, tid)
        if atype == M.AUTH_TYPE_DHCHAP and aid == M.MSG_SUCCESS2:
            if self.state != ST_SUCCESS2:
                return self._fail(M.RCE_INCORRECT_MESSAGE, f"Success2 in state {self.state}")
            if len(payload) != M.HEADER_SIZE or tid != self.tid:
                return self._fail(M.RCE_INCORRECT_PAYLOAD, "Success2 length or T_ID")
            return self._completed()
        if atype == M.AUTH_TYPE_COMMON and aid == M.MSG_FAILURE2:
            if self.state != ST_SUCCESS2:
                return self._fail(M.RCE_INCORRECT_MESSAGE, f"Failure2 in state {self.state}")
            try:
                _t, _rc, rce = M.decode_failure(payload)
            except M.AuthPayloadError as e:
                return self._fail(e.rce, str(e))
            self.last_error = f"the host refused the controller: {M.reason_name(rce)}"
            self.state = ST_NEGOTIATE
            self.dh = None
            return self._lost()
        self._fail(M.RCE_INCORRECT_MESSAGE, f"message type {atype:#x} id {aid:#x}")

    def _negotiate(self, payload: bytes | memoryview) -> None:
        # a Negotiate (re)starts a transaction in any state
        self.dh = None
        self.r2 = None
        try:
            neg = M.decode_negotiate(payload)
        except M.AuthPayloadError as e:
            self.tid = M.header(payload)[2]
            return self._fail(e.rce, str(e))
        self.tid = neg.tid
        if neg.sc_c != 0:
            return self._fail(M.RCE_CONCAT_MISMATCH, f"SC_C {neg.sc_c}")
        if neg.hashes is None:
            return self._fail(M.RCE_NOT_USABLE, "no DH-HMAC-CHAP protocol descriptor")
        hid = next((h for h in PREFERRED_HASHES if h in self.digests and h in neg.hashes), None)
        if hid is None:
            return self._fail(M.RCE_HASH_UNUSABLE, f"host offers hashes {neg.hashes}")
        dhg = next(
            (g for g in PREFERRED_DHGROUPS if g in self.dhgroups and g in neg.dhgroups), None
        )
        if dhg is None:
            return self._fail(M.RCE_DHGROUP_UNUSABLE, f"host offers DH groups {neg.dhgroups}")
        self.hash_id = hid
        self.dhgroup = dhg
        self.state = ST_CHALLENGE

    def _reply(self, payload: bytes | memoryview, tid: int) -> None:
        if self.state != ST_REPLY:
            return self._fail(M.RCE_INCORRECT_MESSAGE, f"Reply in state {self.state}")
        hl = hash_len(self.hash_id)
        try:
            r = M.decode_reply(payload, hl)
        except M.AuthPayloadError as e:
            return self._fail(e.rce, str(e))
        if r.tid != self.tid:
            return self._fail(M.RCE_INCORRECT_PAYLOAD, f"T_ID {r.tid} != {self.tid}")
        host_key, ctrl_key = self.keys()
        if host_key is None:
            return self._fail(M.RCE_FAILED, "no DH-HMAC-CHAP key for this host")
        skey = b""
        if self.dhgroup != DH_NULL:
            if self.dh is None:
                return self._fail(M.RCE_INCORRECT_MESSAGE, "no DH exchange started")
            try:
                skey = self.dh.shared(r.dhv)
            except ValueError as e:
                return self._fail(M.RCE_INCORRECT_PAYLOAD, str(e))
        elif r.dhv:
            return self._fail(M.RCE_INCORRECT_PAYLOAD, "DH value with the NULL group")
        expect = chap_response(
            host_key,
            self.hash_id,
            self.cval,
            self.seqnum,
            self.tid,
            0,
            b"HostHost",
            self.hostnqn,
            self.subnqn,
            skey,
        )
        if not hmac.compare_digest(expect, r.response):
            return self._fail(M.RCE_FAILED, "the host's response does not match")
        self.r2 = None
        if r.c2 is not None:
            if ctrl_key is None:
                return self._fail(M.RCE_FAILED, "bidirectional requested, no controller key")
            self.r2 = chap_response(
                ctrl_key,
                self.hash_id,
                r.c2,
                r.seqnum,
                self.tid,
                0,
                b"Controller",
                self.subnqn,
                self.hostnqn,
                skey,
            )
        self.dh = None
        self.state = ST_SUCCESS1

    def _completed(self) -> None:
        self.state = ST_COMPLETED
        self.authenticated = True
        self.transactions += 1
        self.last_error = ""

    # ------------------------------------------------------------------ recv
    def recv(self, al: int) -> bytes:
        """The payload of an Authentication Receive of allocation length ``al``."""
        st = self.state
        if st == ST_CHALLENGE:
            out = self._challenge()
        elif st == ST_SUCCESS1:
            hl = hash_len(self.hash_id)
            out = M.encode_success1(self.tid, hl, self.r2)
            if self.r2 is None:
                self._completed()
            else:
                self.state = ST_SUCCESS2
        elif st == ST_FAILURE1:
            out = self._failure1(self.fail_reason)
        else:
            self.last_error = f"Authentication Receive in state {st}"
            out = self._failure1(M.RCE_INCORRECT_MESSAGE)
        if len(out) > al:
            # the host left no room for the message: the transaction fails
            self.last_error = f"allocation length {al} < {len(out)}"
            out = self._failure1(M.RCE_INCORRECT_PAYLOAD)
        return out

    def _failure1(self, rce: int) -> bytes:
        self.state = ST_NEGOTIATE
        self.dh = None
        self._lost()
        return M.encode_failure(M.MSG_FAILURE1, self.tid, rce)

    def _challenge(self) -> bytes:
        hl = hash_len(self.hash_id)
        dhv = b""
        if self.dhgroup != DH_NULL:
            self.dh = DhKey(self.dhgroup)
            dhv = self.dh.public
        self.cval = random_bytes(hl)
        self.seqnum = self.next_seqnum()
        self.state = ST_REPLY
        return M.encode_challenge(
            M.Challenge(self.tid, self.hash_id, self.dhgroup, self.seqnum, self.cval, dhv)
        )


# ==================================================================== core hooks
def _keys_of(qp: QueuePair) -> tuple[DhchapSecret | None, DhchapSecret | None]:
    """The current keys of the queue's host on its subsystem (the newest
    configuration snapshot: rotation applies to the next transaction)."""
    cur = qp.target.subsystem(qp.subsys.nqn) if qp.subsys is not None else None
    if cur is None:
        return None, None
    return cur.dhchap_keys(qp.hostnqn)


class _Seq:
    """Sequence numbers of one reactor: a random start, then +1 (never 0)."""

    n = int.from_bytes(random_bytes(4), "little")

    @classmethod
    def next(cls) -> int:
        cls.n = (cls.n + 1) & 0xFFFFFFFF or 1
        return cls.n


def start(qp: QueuePair) -> int:
    """After a successful Connect of ``qp`` (qid, subsys and hostnqn set):
    arm authentication when the host has a DH-HMAC-CHAP key on the
    subsystem. Returns the AUTHREQ bits for the Connect response's DW0."""
    ss = qp.subsys
    if ss is None or ss.is_discovery:
        return 0
    host_key, _ = ss.dhchap_keys(qp.hostnqn)
    if host_key is None:
        return 0
    qp.auth = TargetAuth(
        qp.hostnqn,
        ss.nqn,
        lambda: _keys_of(qp),
        digest_ids(ss.dhchap_digests),
        dhgroup_ids(ss.dhchap_dhgroups),
        _Seq.next,
    )
    _arm_timeout(qp)
    return CONNECT_AUTHREQ_ATR


def _arm_timeout(qp: QueuePair) -> None:
    """A queue that is not authenticated within the timeout is closed."""
    loop = getattr(qp.target.ctx, "loop", None)
    if loop is None:
        return
    kato = qp.ctrl.kato_ms / 1000.0 if qp.ctrl is not None and qp.ctrl.kato_ms else 0.0
    timeout = kato or DEFAULT_TIMEOUT_S

    def expired() -> None:
        a = qp.auth
        if a is not None and not a.authenticated and not qp.closed:
            qp.hlog.event(logging.WARNING, "DH-HMAC-CHAP: not authenticated within %gs", timeout)
            qp.close("authentication timed out")

    t = loop.call_later(timeout, expired)
    qp.auth_timer = t


def stop(qp: QueuePair) -> None:
    t = getattr(qp, "auth_timer", None)
    if t is not None:
        t.cancel()
        qp.auth_timer = None


def _check_fields(req: Request, length: int) -> bool:
    cdw10 = req.sqe.cdw10
    spsp0 = (cdw10 >> 8) & 0xFF
    spsp1 = (cdw10 >> 16) & 0xFF
    secp = (cdw10 >> 24) & 0xFF
    if secp != M.SECP_NVME or spsp0 != M.SPSP0 or spsp1 != M.SPSP1:
        req.complete(spec.ST_INVALID_FIELD)
        return False
    if length == 0 or length > M.MAX_MESSAGE or length != req.sgl_len:
        req.complete(spec.ST_INVALID_FIELD)
        return False
    return True


def execute(req: Request, fctype: int) -> None:
    """Authentication Send / Receive on any queue that completed Connect."""
    qp = req.qp
    a: TargetAuth | None = qp.auth
    if a is None:
        # this host has no key here: nothing to authenticate
        return req.complete(spec.ST_CMD_SEQ_ERROR)
    length = req.sqe.cdw11  # TL (send) / AL (receive)
    if not _check_fields(req, length):
        return
    was = a.authenticated
    if fctype == spec.FCTYPE_AUTH_SEND:
        data = req.data
        if data is None or len(data) < length:
            return req.complete(spec.ST_INVALID_FIELD)
        a.send(data[:length])
        req.data = None
        req.complete(0)
    else:
        out = a.recv(length)
        if a.authenticated and not was:
            stop(qp)
            _hostlog(qp, "DH-HMAC-CHAP: authenticated (%s, %s)", a)
        elif a.last_error and out[1] == M.MSG_FAILURE1:
            qp.hlog.event(logging.WARNING, "DH-HMAC-CHAP failed: %s", a.last_error)
        req.complete_with_data(out)
        return
    if a.last_error and a.state == ST_NEGOTIATE and was and not a.authenticated:
        qp.hlog.event(logging.WARNING, "DH-HMAC-CHAP failed: %s", a.last_error)


def _hostlog(qp: QueuePair, msg: str, a: TargetAuth) -> None:
    d = a.describe()
    qp.hlog.event(logging.INFO, msg, d["digest"], d["dhgroup"])


def gate(req: Request) -> bool:
    """True when the command may run; otherwise it was completed with
    Authentication Required (the queue must authenticate first)."""
    a: TargetAuth | None = req.qp.auth
    if a is None or a.authenticated:
        return True
    req.complete(spec.ST_AUTH_REQUIRED)
    return False
