"""The FC-NVMe low-level driver (LLD) interface: what a vendor HBA driver
provides to blockfabric's FC transport, and what the transport provides back.

Modelled on SPDK's nvmf_fc LLD API (lib/nvmf/fc.c, fc_ls.c and
``spdk_nvmf_fc_lld_ops`` in nvmf_fc.h): the LLD owns the hardware (ports,
logins, exchange resources, DMA), the FC transport owns the FC-NVMe protocol
(associations, connections, exchanges' NVMe meaning) and the NVMe-oF core
owns the commands.

Direction of calls::

    LLD  --FcUpcalls-->  FC transport (transports/nvmf/fc.py)  --> NVMe-oF core
    LLD  <--LldNexus---  FC transport

* The LLD calls `FcUpcalls` when something arrives: a remote port logged in
  (``nexus_up``, after PLOGI/PRLI with the FC-NVMe service parameters) or out
  (``nexus_down``: every association of that nexus is torn down), an NVMe LS
  request (``ls_request``), a CMD IU opening an exchange (``cmd_iu``), write
  data requested earlier landed (``data_done``), or the host aborted an
  exchange (``abts``).
* The transport calls `LldNexus` to answer: the LS response
  (``xmt_ls_rsp``, closes the LS exchange), pull write data into a buffer
  it owns (``recv_data``: the LLD sends the transfer-ready and DMAs the
  data into ``buf``, then calls ``data_done``), send read data from buffers
  it owns (``send_data``), send the response IU closing the exchange
  (``xmt_rsp``), abort an exchange (``abort``) or log the remote port out
  (``logout``).

The life of an exchange (one NVMe command)::

    host: CMD IU ------------> LLD -> upcalls.cmd_iu(nexus, xid, iu)
                                      transport: decode, find the connection,
                                      open Exchange, build the core's request
    [write] transport -> nexus.recv_data(xid, buf, 0)  (buf from ctx.iobufs)
    host <- XFER_RDY, host: DATA -> LLD copies/DMAs into buf
                                      upcalls.data_done(nexus, xid, True)
                                      transport -> core: execute
    [read]  core completes -> transport -> nexus.send_data(xid, 0, [bufs])
            transport -> nexus.xmt_rsp(xid, good response or ERSP IU)
    LLD frees the exchange after the response went out. ABTS from the host:
    upcalls.abts(nexus, xid): the transport drops the exchange (its request
    completes into nothing) and the LLD answers the BA_ACC.

Rules an LLD must follow: upcalls are made on the reactor that owns the
nexus (never from another thread; an LLD with its own interrupt threads
queues events and delivers them from ``poll``); buffers passed to
``recv_data``/``send_data`` stay valid until ``data_done`` / ``xmt_rsp``; an
exchange id is unique within a nexus while it is open; payloads passed to
upcalls are only valid during the call (the transport copies what it keeps).
"""

from __future__ import annotations

from typing import Any, Protocol

from .addr import FcName


class LldNexus(Protocol):
    """The LLD's handle for one logged-in remote port on one local port."""

    local: FcName
    remote: FcName

    def xmt_ls_rsp(self, xid: int, payload: bytes) -> None:
        """Send the response of LS exchange ``xid`` (LS_ACC or LS_RJT)."""
        ...

    def recv_data(self, xid: int, buf: memoryview, offset: int) -> None:
        """Pull ``len(buf)`` bytes of write data of exchange ``xid`` starting at
        relative offset ``offset`` into ``buf``; ``data_done`` follows."""
        ...

    def send_data(self, xid: int, offset: int, bufs: list[memoryview]) -> None:
        """Send read data of exchange ``xid`` from relative offset ``offset``."""
        ...

    def xmt_rsp(self, xid: int, iu: bytes) -> None:
        """Send the response IU (good response or ERSP) and close ``xid``."""
        ...

    def abort(self, xid: int) -> None:
        """Abort exchange ``xid`` (ABTS to the host)."""
        ...

    def logout(self) -> None:
        """Log the remote port out (closes every exchange of the nexus)."""
        ...


class FcUpcalls(Protocol):
    """What the FC transport provides to an LLD."""

    def nexus_up(self, nexus: LldNexus) -> bool:
        """A remote port logged in; False refuses it (e.g. unknown local port)."""
        ...

    def nexus_down(self, nexus: LldNexus) -> None: ...

    def ls_request(self, nexus: LldNexus, xid: int, payload: memoryview) -> None: ...

    def cmd_iu(self, nexus: LldNexus, xid: int, iu: memoryview) -> None: ...

    def data_done(self, nexus: LldNexus, xid: int, ok: bool) -> None: ...

    def abts(self, nexus: LldNexus, xid: int) -> None: ...


class Lld(Protocol):
    """A low-level driver: registered by name with `register_lld`, chosen by
    ``nvmf_create_transport -t FC --lld NAME`` (the loopback LLD is "loopback").

    Supervisor side: ``port_ok`` / ``listen`` / ``stop_listen`` for
    ``nvmf_subsystem_add_listener -t fc`` (bring a local port online for
    NVMe, take it offline). Reactor side: ``reactor_start(ctx, upcalls)`` when
    the FC transport appears in a reactor's configuration (an HBA LLD opens
    its hardware queues there and registers their fds or a poller with
    ``ctx.loop``, then reports logins with ``upcalls.nexus_up``) and
    ``reactor_stop(ctx)`` at reactor shutdown."""

    name: str

    def port_ok(self, port: FcName) -> str | None:
        """None when this LLD can serve local port ``port`` (``add_listener``),
        otherwise why not (e.g. no HBA port with that WWPN)."""
        ...

    def listen(self, host: Any, port: FcName) -> None:
        """Bring ``port`` online (``host`` is the supervisor's ListenHost);
        raise an RpcError with the reason when it cannot."""
        ...

    def stop_listen(self, host: Any, port: FcName) -> None: ...

    def reactor_start(self, ctx: Any, upcalls: FcUpcalls) -> None: ...

    def reactor_stop(self, ctx: Any) -> None: ...


LLDS: dict[str, Lld] = {}


def register_lld(lld: Lld) -> None:
    LLDS[lld.name] = lld
