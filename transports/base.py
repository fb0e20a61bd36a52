"""Reactor drivers: how a reactor turns connections into protocol state.

A transport module registers a `TransportDriver` under its protocol name
("nvmf-tcp", "nvmf-rdma", "nvmf-fc", "iscsi"). For socket transports the
supervisor owns listening sockets and hands each accepted connection to a
reactor (SCM_RIGHTS); the reactor calls ``driver.accept(ctx, sock, listener)``.
A transport whose connections are not file descriptors (RDMA CM IDs, an FC
LLD's associations) creates its queue pairs itself from ``on_config`` /
``on_event``; the NVMe-oF side of that contract (ops table, queue-pair hooks)
is transports/nvmf/transport.py and qpair.py, and every reactor imports the
NVMe-oF drivers named in ``transport.REACTOR_DRIVERS``.

Supervisor messages go to ``driver.on_event`` on every reactor: an op whose
prefix is exactly a driver's proto ("nvmf-rdma.listen") to that driver, else
to the first driver of the protocol family ("nvmf.*", "iscsi.*"; NVMe-oF
drivers share the reactor's NvmfTarget, so any of them answers for all);
``driver.on_config`` runs after each configuration snapshot.
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
