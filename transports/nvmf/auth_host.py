"""DH-HMAC-CHAP in-band authentication, host side (NVMe base specification
2.0, 8.13.5): the sans-I/O state machine of one queue pair's transaction.

`HostAuth` says what to do next as a `Step`: ``("send", payload)`` (an
Authentication Send with that payload) or ``("recv", al)`` (an
Authentication Receive of allocation length ``al``); the caller runs the
command and calls ``feed`` with the received payload (``None`` after a
send). ``feed`` returns the next step, or None once the queue is
authenticated; it raises `AuthFailed` when the controller refused (its
AUTH_Failure1 reason) or the host refused the controller (after the
AUTH_Failure2 step was sent). The queue layers (transports/nvmf_host) drive
it over a blocking socket or an event loop.
"""

from __future__ import annotations

import hmac

from ...control.keyring import DhchapSecret
from . import auth_msg as M
from .auth_crypto import (
    DH_NULL,
    DHGROUP_IDS,
    HASH_IDS,
    HASHES,
    DhKey,
    chap_response,
    dh_value_len,
    hash_len,
    random_bytes,
)

Step = tuple[str, "bytes | int"]
RECV_AL = M.MAX_MESSAGE


class AuthFailed(Exception):
    """Authentication did not succeed; ``rce`` is the reason explanation."""

    def __init__(self, msg: str, rce: int = M.RCE_FAILED, by_controller: bool = True) -> None:
        super().__init__(msg)
        self.rce = rce
        self.by_controller = by_controller


class HostAuth:
    def __init__(
        self,
        hostnqn: str,
        subnqn: str,
        key: DhchapSecret,
        ctrl_key: DhchapSecret | None = None,
        digests: list[str] | None = None,
        dhgroups: list[str] | None = None,
        tid: int = 0,
        seqnum: int = 0,
    ) -> None:
        self.hostnqn = hostnqn
        self.subnqn = subnqn
        self.key = key
        self.ctrl_key = ctrl_key
        self.digests = [HASH_IDS[d] for d in (digests or list(HASH_IDS))]
        self.dhgroups = [DHGROUP_IDS[g] for g in (dhgroups or list(DHGROUP_IDS))]
        self.tid = tid & 0xFFFF
        self.seqnum = seqnum or (int.from_bytes(random_bytes(4), "little") or 1)
        self.state = "start"
        self.hash_id = 0
        self.dhgroup = 0
        self.c2 = b""
        self.skey = b""
        self._error: AuthFailed | None = None

    @property
    def digest(self) -> str:
        return HASHES.get(self.hash_id, "")

    @property
    def dhgroup_name(self) -> str:
        return {v: k for k, v in DHGROUP_IDS.items()}.get(self.dhgroup, "")

    def start(self) -> Step:
        self.state = "negotiate"
        return ("send", M.encode_negotiate(self.tid, self.digests, self.dhgroups))

    def _refuse(self, rce: int, why: str) -> Step:
        """The host refuses the controller: AUTH_Failure2, then AuthFailed."""
        self._error = AuthFailed(f"{M.reason_name(rce)}: {why}", rce, by_controller=False)
        self.state = "failure2"
        return ("send", M.encode_failure(M.MSG_FAILURE2, self.tid, rce))

    def _check_failure1(self, data: bytes, want: int) -> None:
        try:
            atype, aid, _tid = M.header(data)
        except M.AuthPayloadError as e:
            raise AuthFailed(str(e), M.RCE_INCORRECT_PAYLOAD) from None
        if atype == M.AUTH_TYPE_COMMON and aid == M.MSG_FAILURE1:
            _t, _rc, rce = M.decode_failure(data)
            raise AuthFailed(f"refused by the controller: {M.reason_name(rce)}", rce)
        if atype != M.AUTH_TYPE_DHCHAP or aid != want:
            raise AuthFailed(f"unexpected message {atype:#x}/{aid:#x}", M.RCE_INCORRECT_MESSAGE)

    def feed(self, data: bytes | None) -> Step | None:
        st = self.state
        if st == "negotiate":
            self.state = "challenge"
            return ("recv", RECV_AL)
        if st == "challenge":
            assert data is not None
            self._check_failure1(data, M.MSG_CHALLENGE)
            return self._on_challenge(data)
        if st == "reply":
            self.state = "success1"
            return ("recv", RECV_AL)
        if st == "success1":
            assert data is not None
            self._check_failure1(data, M.MSG_SUCCESS1)
            return self._on_success1(data)
        if st == "success2":
            self.state = "done"
            return None
        if st == "failure2":
            self.state = "failed"
            assert self._error is not None
            raise self._error
        raise RuntimeError(f"HostAuth.feed in state {st}")

    def _on_challenge(self, data: bytes) -> Step:
        try:
            c = M.decode_challenge(data)
        except M.AuthPayloadError as e:
            return self._refuse(e.rce, str(e))
        if c.tid != self.tid:
            return self._refuse(M.RCE_INCORRECT_MESSAGE, f"T_ID {c.tid} != {self.tid}")
        if c.hash_id not in self.digests:
            return self._refuse(M.RCE_HASH_UNUSABLE, f"hash {c.hash_id:#x} was not offered")
        if c.dhgroup not in self.dhgroups:
            return self._refuse(M.RCE_DHGROUP_UNUSABLE, f"DH group {c.dhgroup:#x} not offered")
        hl = hash_len(c.hash_id)
        if len(c.cval) != hl or c.seqnum == 0:
            return self._refuse(M.RCE_INCORRECT_PAYLOAD, "HL or sequence number")
        self.hash_id, self.dhgroup = c.hash_id, c.dhgroup
        dhv = b""
        if c.dhgroup != DH_NULL:
            if len(c.dhv) != dh_value_len(c.dhgroup):
                return self._refuse(M.RCE_INCORRECT_PAYLOAD, f"DHVLEN {len(c.dhv)}")
            dh = DhKey(c.dhgroup)
            try:
                self.skey = dh.shared(c.dhv)
            except ValueError as e:
                return self._refuse(M.RCE_INCORRECT_PAYLOAD, str(e))
            dhv = dh.public
        elif c.dhv:
            return self._refuse(M.RCE_INCORRECT_PAYLOAD, "DH value with the NULL group")
        resp = chap_response(
            self.key,
            c.hash_id,
            c.cval,
            c.seqnum,
            self.tid,
            0,
            b"HostHost",
            self.hostnqn,
            self.subnqn,
            self.skey,
        )
        c2: bytes | None = None
        seq = 0
        if self.ctrl_key is not None:
            self.c2 = c2 = random_bytes(hl)
            seq = self.seqnum
        self.state = "reply"
        return ("send", M.encode_reply(M.Reply(self.tid, resp, c2, seq, dhv)))

    def _on_success1(self, data: bytes) -> Step | None:
        try:
            tid, _hl, r2 = M.decode_success1(data)
        except M.AuthPayloadError as e:
            return self._refuse(e.rce, str(e))
        if tid != self.tid:
            return self._refuse(M.RCE_INCORRECT_MESSAGE, f"T_ID {tid} != {self.tid}")
        if self.ctrl_key is None:
            self.state = "done"
            return None
        if r2 is None:
            return self._refuse(M.RCE_FAILED, "the controller did not answer our challenge")
        expect = chap_response(
            self.ctrl_key,
            self.hash_id,
            self.c2,
            self.seqnum,
            self.tid,
            0,
            b"Controller",
            self.subnqn,
            self.hostnqn,
            self.skey,
        )
        if not hmac.compare_digest(expect, r2):
            return self._refuse(M.RCE_FAILED, "the controller's response does not match")
        self.state = "success2"
        return ("send", M.encode_success2(self.tid))

    @property
    def done(self) -> bool:
        return self.state == "done"
