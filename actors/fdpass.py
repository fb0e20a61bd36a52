"""Handing accepted sockets between processes (SCM_RIGHTS over a Unix socketpair).

One datagram carries one fd plus a msgpack header: [proto, listener, peer,
preread, target_reactor]. ``preread`` holds bytes a reactor already consumed
before it handed the connection on (iSCSI login routing), ``target_reactor``
is only used on the reactor -> supervisor direction.
"""

from __future__ import annotations

import array
import socket
from dataclasses import dataclass

import msgpack

MAX_HEADER = 1 << 16


@dataclass
class Handoff:
    fd: int
    proto: str
    listener: str
    peer: str
    preread: bytes = b""
    target: int = -1


def send_fd(chan: socket.socket, h: Handoff) -> None:
    hdr = msgpack.packb([h.proto, h.listener, h.peer, h.preread, h.target], use_bin_type=True)
    chan.sendmsg([hdr], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [h.fd]))])


def recv_fd(chan: socket.socket) -> Handoff | None:
    """One handoff, or None on EOF. Raises BlockingIOError when none is queued."""
    fds = array.array("i")
    data, anc, _flags, _addr = chan.recvmsg(MAX_HEADER, socket.CMSG_LEN(4 * fds.itemsize))
    if not data and not anc:
        return None
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    if not fds:
        raise ValueError("handoff without a file descriptor")
    proto, listener, peer, preread, target = msgpack.unpackb(data, raw=False)
    return Handoff(fds[0], proto, listener, peer, preread, target)
