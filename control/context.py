"""What RPC handlers and supervisor-side actor handlers get: the `RpcContext`.

The supervisor is the single writer of the target's configuration. An RPC
handler validates, mutates the protocol state (``ctx.nvmf``, ``ctx.iscsi``,
``ctx.bdevs``), then calls ``ctx.config_changed()``, which sends the new
snapshot to every reactor and returns once all have applied it — so when an
RPC answers, every reactor already acts on the new configuration.

Reactors reach supervisor-side actors with ``ctx.call(op, ...)`` (see
actors/context.py); those ops are served by functions registered here with
`supervisor_op`, e.g. the NVMe-oF controller directory ("nvmf.create_ctrlr").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    # typing only: control imports no layer at run time (tests/test_layering.py
    # allows exactly this one)
    from ..bdevs.base import Bdev


class ProtocolState(Protocol):
    """Supervisor-side configuration of one protocol (nvmf, iscsi)."""

    def snapshot(self) -> dict[str, Any]:
        """Plain-data view sent to the reactors in ConfigUpdate."""
        ...

    def save_config(self) -> list[dict[str, Any]]:
        """[{"method": ..., "params": ...}, ...] that recreate this state."""
        ...


class RpcContext(Protocol):
    instance: str
    state_dir: str  # per-instance folder for persistent files (e.g. PR APTPL)
    bdevs: dict[str, Bdev]

    # the protocol states (transports.nvmf.state.NvmfState,
    # transports.iscsi.state.IscsiState): handlers narrow them with isinstance
    @property
    def nvmf(self) -> ProtocolState: ...

    @property
    def iscsi(self) -> ProtocolState: ...

    num_reactors: int

    def config_changed(self) -> None: ...

    def gather(self, op: str, args: dict[str, Any], timeout: float = 5.0) -> list[Any]:
        """Send Event(op, args) to every reactor as a request, return the list of
        their answers (driver.on_event return values), in reactor order."""
        ...

    def send_event(self, reactor_id: int | None, op: str, args: dict[str, Any]) -> None:
        """Fire-and-forget event to one reactor, or all when reactor_id is None."""
        ...

    def add_listener(self, proto: str, addr: str, port: int, family: str = "ipv4") -> str:
        """Open (or share) a listening socket; connections accepted there go to
        the reactors as proto ``proto``. Returns the listener key
        "ADDR:PORT". Raises RpcError when the address cannot be bound."""
        ...

    def remove_listener(self, proto: str, addr: str, port: int) -> None: ...

    def remove_bdev(self, name: str) -> None:
        """Hot-remove: reactors fail new I/O, finish in-flight I/O, close their
        channels; then the memory is released. Protocol states get
        ``on_bdev_removed(name)`` first so LUNs/namespaces can go."""
        ...


# op -> fn(ctx, reactor_id, args) -> result (raise RpcError/ValueError for errors)
SupervisorOp = Callable[[RpcContext, int, dict[str, Any]], Any]
SUPERVISOR_OPS: dict[str, SupervisorOp] = {}


def supervisor_op(name: str) -> Callable[[SupervisorOp], SupervisorOp]:
    def deco(fn: SupervisorOp) -> SupervisorOp:
        SUPERVISOR_OPS[name] = fn
        return fn

    return deco
