"""What a reactor offers the protocol code that runs on it: `ReactorContext`.

Connection handlers (NVMe/TCP queue pairs, iSCSI connections) are created with
a `ReactorContext`. They do their socket I/O through ``ctx.loop`` and their
block I/O through ``ctx.channel(bdev_name)``, the reactor's own lazily opened
I/O channel. Anything that needs state shared by all reactors (the NVMe-oF
controller directory, iSCSI sessions, persistent reservations) is reached by
``ctx.call(...)``, a message to the supervisor actor with a reply callback.

The Protocol lives here, below the actors, so transports are written against
it without importing a reactor; actors/reactor.py implements it (and
actors/context.py re-exports it).

Failure containment (actors/loop.py): an exception in a connection's fd
handler is logged rate-limited and then handed to the connection's error hook
-- ``ctx.loop.add_fd(fd, mask, handler, on_error=conn.fail)``, or simply an
``on_loop_error(exc)`` method on the object whose bound method is the handler
-- which should close that connection (NVMe/TCP C2HTermReq, iSCSI drop) and
free its requests and buffers. Periodic jobs use ``ctx.loop.call_every``.
When another reactor dies, drivers get ``<proto>.reactor_died {reactor: N}``
through ``on_event``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..bdevs.base import Bdev, IoChannel
from ..runtime.loop import Loop
from ..shm.iobuf import IoBufs

ReplyCallback = Callable[[bool, Any], None]  # (ok, result-or-error-text)


class ReactorContext(Protocol):
    @property
    def loop(self) -> Loop:
        """This reactor's event loop (read-only: actors/loop.py EventLoop)."""
        ...

    reactor_id: int
    instance: str
    # the latest configuration snapshot (ConfigUpdate), as plain dicts
    nvmf_config: dict[str, Any]
    iscsi_config: dict[str, Any]
    generation: int

    def bdev(self, name: str) -> Bdev | None: ...

    def channel(self, name: str) -> IoChannel | None:
        """This reactor's channel to bdev ``name`` (opened on first use), or
        None if no such bdev exists or it is being removed."""
        ...

    def call(self, op: str, args: dict[str, Any], cb: ReplyCallback, timeout: float = 5.0) -> None:
        """Ask the supervisor actor; ``cb(ok, result)`` runs on this reactor's
        loop when the reply arrives, or ``cb(False, "timeout")``."""
        ...

    num_reactors: int
    state_dir: str
    # this reactor's transfer buffers (the shared pool, FIFO waits): every
    # buffer a host can make us hold comes from here (shm/iobuf.py)
    iobufs: IoBufs

    def handoff(
        self, sock: Any, reactor_id: int, proto: str, listener: str, preread: bytes
    ) -> None:
        """Move a connection to another reactor; the socket is ours no more."""
        ...

    def notify(self, op: str, args: dict[str, Any]) -> None:
        """Tell the supervisor something; no reply."""
        ...
