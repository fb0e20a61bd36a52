"""Host-side DH-HMAC-CHAP on a queue: runs an `auth_host.HostAuth`
transaction as Authentication Send / Receive commands of a `HostQueue`
(sans-I/O: the commands go out with the queue's other output, the
completions arrive through ``received``), so the blocking queues and the
event-loop queues share it.

`HostAuthConfig` is what a controller keeps: the secrets and the lists the
host offers (bdev_nvme_attach_controller --dhchap-key / --dhchap-ctrlr-key,
perf's --dhchap-key ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...control.keyring import DhchapSecret, parse_dhchap_secret
from ..nvmf.auth_host import AuthFailed, HostAuth
from .queue import HostQueue, NvmeStatusError, Request

CONNECT_AUTHREQ_ATR = 1 << 17
CONNECT_AUTHREQ_ASCR = 1 << 18

Finish = Callable[[BaseException | None], None]


@dataclass
class HostAuthConfig:
    key: DhchapSecret
    ctrl_key: DhchapSecret | None = None
    digests: list[str] | None = None
    dhgroups: list[str] | None = None
    tids: Any = field(default=None, repr=False)

    @classmethod
    def from_strings(
        cls,
        key: str | None,
        ctrl_key: str | None = None,
        digests: list[str] | None = None,
        dhgroups: list[str] | None = None,
    ) -> HostAuthConfig | None:
        """From DHHC-1 interchange strings (None: no authentication)."""
        if not key:
            if ctrl_key:
                raise ValueError("a DH-HMAC-CHAP controller key needs a host key")
            return None
        return cls(
            parse_dhchap_secret(key),
            parse_dhchap_secret(ctrl_key) if ctrl_key else None,
            digests,
            dhgroups,
        )

    def next_tid(self) -> int:
        if self.tids is None:
            import itertools

            self.tids = itertools.count(1)
        return int(next(self.tids)) & 0xFFFF

    def transaction(self, hostnqn: str, subnqn: str) -> HostAuth:
        return HostAuth(
            hostnqn,
            subnqn,
            self.key,
            self.ctrl_key,
            self.digests,
            self.dhgroups,
            tid=self.next_tid(),
        )


def drive(q: HostQueue, ha: HostAuth, finish: Finish) -> None:
    """Run ``ha`` on ``q``; ``finish(None)`` once authenticated, else
    ``finish(error)`` (AuthFailed, NvmeStatusError or the queue's error)."""

    def go(step: Any) -> None:
        if step is None:
            return finish(None)
        kind, arg = step
        if kind == "send":

            def sent(_r: Request, status: int, _res: int) -> None:
                if status:
                    return finish(NvmeStatusError(status, "Authentication Send"))
                try:
                    nxt = ha.feed(None)
                except AuthFailed as e:
                    return finish(e)
                go(nxt)

            q.auth_send(arg, sent)
        else:
            buf = bytearray(arg)

            def got(r: Request, status: int, _res: int) -> None:
                if status:
                    return finish(NvmeStatusError(status, "Authentication Receive"))
                try:
                    nxt = ha.feed(bytes(buf[: r.xfer]))
                except AuthFailed as e:
                    return finish(e)
                go(nxt)

            q.auth_recv(buf, got)

    try:
        go(ha.start())
    except Exception as e:  # the queue failed under us
        finish(e)


def required(connect_result: int) -> bool:
    """The Connect response asks for authentication (AUTHREQ)."""
    if connect_result & CONNECT_AUTHREQ_ASCR:
        raise AuthFailed("the controller requires secure channel concatenation (not supported)")
    return bool(connect_result & CONNECT_AUTHREQ_ATR)
