"""Transport registry: how a reactor turns an accepted socket into protocol state.

A transport module registers a `TransportDriver` under its protocol name
("nvmf-tcp", "iscsi"; "nvmf-rdma" or "nvmf-fc" would plug in the same way). The
supervisor owns listening sockets and hands each accepted connection to a
reactor (SCM_RIGHTS); the reactor calls ``driver.accept(ctx, sock, listener)``.

Supervisor messages addressed to a protocol (``Event``/``ControllerCall`` whose
op starts with the protocol prefix, e.g. "nvmf." or "iscsi.") go to
``driver.on_event`` on every reactor; ``driver.on_config`` runs after each
configuration snapshot; ``driver.stats`` feeds the get_* RPCs.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol

from .context import ReactorContext


class TransportDriver(Protocol):
    proto: str

    def accept(
        self, ctx: ReactorContext, sock: socket.socket, listener: str, preread: bytes = b""
    ) -> None:
        """Take over an accepted connection. ``preread`` holds bytes another
        reactor already read from it before handing it on (iSCSI login
        routing to the target node's home reactor)."""
        ...

    def on_config(self, ctx: ReactorContext) -> None: ...

    def on_event(self, ctx: ReactorContext, op: str, args: dict[str, Any]) -> Any:
        """Handle a supervisor event; the return value is sent back for
        requests (queries such as "nvmf.get_qpairs")."""
        ...

    def shutdown(self, ctx: ReactorContext) -> None:
        """Close every connection (the reactor is stopping)."""
        ...


DRIVERS: dict[str, TransportDriver] = {}


def register_driver(driver: TransportDriver) -> None:
    DRIVERS[driver.proto] = driver
