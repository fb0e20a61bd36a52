"""The NVMe-oF transport ops table: what each transport (TCP, RDMA, FC) supplies.

Modelled on SPDK's ``spdk_nvmf_transport_ops`` and Linux nvmet's
``nvmet_fabrics_ops``. The core (core, admin, fabrics, io, discovery, router,
request, qpair, state, rpc) only talks to a transport through this table and
through the `QueuePair` hooks (qpair.py); it never imports a transport module.

A transport module defines one `NvmfTransportOps` subclass and registers an
instance with `register_transport` at import. The registry loads the module of
a trtype lazily (``TRANSPORT_MODULES``), so ``nvmf_create_transport -t RDMA``
works without the core naming the module in an import; a transport whose
module is missing or refuses to load (``TransportUnavailable``, e.g. no
pyverbs) is refused with that reason.

Supervisor side: options (SPDK names and defaults, validation),
``check_address`` / ``listen`` / ``stop_listen`` for
``nvmf_subsystem_add_listener``, discovery log fields (TRTYPE, ADRFAM, TREQ,
TSAS). Reactor side: Identify fields (IOCCSZ, IORCSZ, ICDOFF, SGLS, MSDBD),
``poll_group_stats`` (one entry of ``nvmf_get_stats``
poll_groups[].transports[]); queue pairs are subclasses of
`qpair.QueuePair` created by the transport's own reactor-side code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from . import spec

if TYPE_CHECKING:
    from .core import NvmfTarget

# option values are plain msgpack-able scalars
OptValue = int | bool | str | float
OptDict = dict[str, OptValue]


class TransportUnavailable(Exception):
    """The transport exists but cannot run here (missing package, no device)."""


class UnknownTransport(ValueError):
    pass


@dataclass(frozen=True)
class OptSpec:
    """One ``nvmf_create_transport`` option: SPDK's name, type, default, bounds."""

    type: type
    default: OptValue
    lo: int | None = None
    hi: int | None = None
    help: str = ""
    short: str = ""  # SPDK rpc.py short option (e.g. "-u"), for the CLI
    negate: bool = False  # rpc.py's store_false switch (e.g. -o/--c2h-success)
    spdk: bool = True  # False: a blockfabric extension rpc.py does not have


@dataclass(frozen=True)
class IdentifyFields:
    """The transport-dependent fields of Identify Controller (NVMe-oF 1.1, 4.1)."""

    ioccsz: int  # I/O queue command capsule size, 16-byte units (>= 4)
    iorcsz: int  # I/O queue response capsule size, 16-byte units (>= 1)
    icdoff: int = 0  # in-capsule data offset, 16-byte units
    sgls: int = 0x1 | (1 << 20)  # SGL support (byte 536): supported + offset addressing
    msdbd: int = 1  # maximum SGL data block descriptors
    fcatt: int = 0  # 0: dynamic controller model


@dataclass(frozen=True)
class ListenAddress:
    """A validated ``listen_address`` (SPDK's spdk_nvme_transport_id subset)."""

    trtype: str  # "TCP", "RDMA", "FC"
    adrfam: str  # "IPv4", "IPv6", "FC", ...
    traddr: str
    trsvcid: str

    def as_dict(self) -> dict[str, str]:
        return {
            "trtype": self.trtype,
            "adrfam": self.adrfam,
            "traddr": self.traddr,
            "trsvcid": self.trsvcid,
        }


class ListenHost(Protocol):
    """What the supervisor offers a transport's ``listen``: socket listeners
    handed to reactors by fd (TCP). A transport without sockets keeps its own
    listening objects and reaches reactors with ``send_event``/``gather``."""

    def add_listener(self, proto: str, addr: str, port: int, family: str = "ipv4") -> str: ...

    def remove_listener(self, proto: str, addr: str, port: int) -> None: ...

    def send_event(self, reactor_id: int | None, op: str, args: dict[str, object]) -> None: ...


ADRFAM_CODES = {
    "ipv4": spec.ADRFAM_IPV4,
    "ipv6": spec.ADRFAM_IPV6,
    "ib": 3,
    "fc": 4,
    "intra_host": 0xFE,
}


class NvmfTransportOps:
    """Base of every transport's ops table (subclass, set the class fields,
    override what differs). One instance per transport, shared by the
    supervisor and every reactor of the process that imported it."""

    trtype: str = ""  # SPDK's trtype string, upper case: "TCP"
    trtype_code: int = 0  # discovery log / error log TRTYPE (spec.TRTYPE_*)
    proto: str = ""  # reactor driver / listener protocol name: "nvmf-tcp"
    adrfams: tuple[str, ...] = ("IPv4", "IPv6")
    options: Mapping[str, OptSpec] = {}
    # options SPDK's rpc.py may send for other transports: accepted, ignored
    ignored_options: tuple[str, ...] = ()

    def unavailable(self) -> str | None:
        """Why this transport cannot run here (e.g. "python3-pyverbs is not
        installed"), or None. The module must import without its optional
        dependencies so its options are declared for the RPC and the CLI;
        ``nvmf_create_transport`` refuses with this reason."""
        return None

    # -- options --------------------------------------------------------------
    def defaults(self) -> OptDict:
        d: OptDict = {"trtype": self.trtype}
        d.update({k: o.default for k, o in self.options.items()})
        return d

    def validate(self, given: Mapping[str, object]) -> OptDict:
        """Defaults + ``given`` (None values skipped), each value bounded;
        raises ValueError with the message the RPC returns."""
        conf = self.defaults()
        for k, v in given.items():
            if v is None or k == "trtype":
                continue
            o = self.options.get(k)
            if o is None:
                if k in self.ignored_options:
                    continue
                raise ValueError(f"parameter '{k}' is not an option of transport {self.trtype}")
            if o.type is bool:
                if not isinstance(v, bool):
                    raise ValueError(f"parameter '{k}' must be a boolean")
            elif o.type is int:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"parameter '{k}' must be an integer")
                if o.lo is not None and v < o.lo or o.hi is not None and v > o.hi:
                    hi = o.hi if o.hi is not None else "inf"
                    raise ValueError(f"parameter '{k}' must be in [{o.lo}, {hi}], got {v}")
            elif not isinstance(v, o.type):
                raise ValueError(f"parameter '{k}' must be of type {o.type.__name__}")
            conf[k] = v  # type: ignore[assignment]  # checked against o.type above
        self.check(conf)
        conf["trtype"] = self.trtype
        return conf

    def check(self, conf: OptDict) -> None:
        """Cross-option checks (raise ValueError)."""

    # -- Identify -------------------------------------------------------------
    def identify(self, opts: TransportOptsLike, admin: bool) -> IdentifyFields:
        """Identify Controller's transport fields for a controller whose
        queues use this transport (``admin``: a discovery controller)."""
        return IdentifyFields(ioccsz=(64 + opts.in_capsule_data_size) // 16, iorcsz=1)

    # -- addresses, listeners, discovery ----------------------------------------
    def check_address(self, la: Mapping[str, object]) -> ListenAddress:
        """Validate a ``listen_address`` (keys trtype adrfam traddr trsvcid,
        already checked for unknown keys); IP transports take a port."""
        traddr = la.get("traddr")
        if not isinstance(traddr, str) or not traddr:
            raise ValueError("missing required parameter 'listen_address.traddr'")
        svc = la.get("trsvcid")
        if svc is None:
            raise ValueError("missing required parameter 'listen_address.trsvcid'")
        try:
            port = int(str(svc))
        except ValueError:
            raise ValueError(
                f"parameter 'listen_address.trsvcid' must be a port number, got {svc!r}"
            ) from None
        if not 0 <= port <= 65535:
            raise ValueError(f"parameter 'listen_address.trsvcid' out of range: {port}")
        fam = str(la.get("adrfam", "IPv6" if ":" in traddr else "IPv4"))
        names = {a.lower(): a for a in self.adrfams}
        if fam.lower() not in names:
            raise ValueError(
                f"parameter 'listen_address.adrfam' must be one of "
                f"{', '.join(self.adrfams)}, got {fam!r}"
            )
        return ListenAddress(self.trtype, names[fam.lower()], traddr, str(port))

    def listen(self, host: ListenHost, addr: ListenAddress) -> tuple[str, str]:
        """Start listening (supervisor); returns (key, trsvcid actually used).
        ``key`` is what queue pairs of this listener carry as ``listener``
        (and what the subsystem's listener list is matched against)."""
        raise NotImplementedError

    def stop_listen(self, host: ListenHost, addr: ListenAddress, key: str) -> None:
        raise NotImplementedError

    def adrfam_code(self, adrfam: str) -> int:
        return ADRFAM_CODES.get(adrfam.lower(), spec.ADRFAM_IPV4)

    def treq(self) -> int:
        """Discovery log TREQ (secure channel not specified; SQ flow control
        disable supported, as Linux nvmet advertises)."""
        return spec.TREQ_DISABLE_SQFLOW

    def tsas(self, listener: Mapping[str, object]) -> bytes:
        """Discovery log TSAS (256 bytes, transport specific)."""
        return bytes(256)

    # -- statistics -------------------------------------------------------------
    def poll_group_stats(self, target: NvmfTarget) -> dict[str, object]:
        """This transport's entry in a poll group of ``nvmf_get_stats``."""
        return {"trtype": self.trtype}


class TransportOptsLike(Protocol):
    @property
    def in_capsule_data_size(self) -> int: ...


# trtype -> module that registers it (imported on first use)
TRANSPORT_MODULES: dict[str, str] = {
    "TCP": "blockfabric.transports.nvmf.tcp_ops",
    "RDMA": "blockfabric.transports.nvmf.rdma",
    "FC": "blockfabric.transports.nvmf.fc",
}

# trtype -> the reactor-side driver module (a transports.base.TransportDriver
# registered under ops.proto), imported by every reactor at start
# (actors/reactor.py load_drivers); absent modules are skipped
REACTOR_DRIVERS: dict[str, str] = {
    "TCP": "blockfabric.transports.nvmf.driver",
    "RDMA": "blockfabric.transports.nvmf.rdma_driver",
    "FC": "blockfabric.transports.nvmf.fc_driver",
}

_REGISTRY: dict[str, NvmfTransportOps] = {}
_UNAVAILABLE: dict[str, str] = {}


def register_transport(ops: NvmfTransportOps) -> None:
    _REGISTRY[ops.trtype.upper()] = ops


def unregister_transport(trtype: str) -> None:
    """Forget a registered transport (tests that plug in their own)."""
    _REGISTRY.pop(trtype.upper(), None)
    _UNAVAILABLE.pop(trtype.upper(), None)


def get_transport(trtype: str) -> NvmfTransportOps:
    """The ops of ``trtype`` (case-insensitive), importing its module once.
    Raises UnknownTransport with the reason a user should see."""
    tt = str(trtype).upper()
    ops = _REGISTRY.get(tt)
    if ops is not None:
        return ops
    if tt in _UNAVAILABLE:
        raise UnknownTransport(_UNAVAILABLE[tt])
    mod = TRANSPORT_MODULES.get(tt)
    if mod is None:
        known = ", ".join(sorted(TRANSPORT_MODULES))
        raise UnknownTransport(f"Transport type '{trtype}' is not supported (known: {known})")
    try:
        importlib.import_module(mod)
    except TransportUnavailable as e:
        _UNAVAILABLE[tt] = f"Transport type '{tt}' is not available: {e}"
        raise UnknownTransport(_UNAVAILABLE[tt]) from None
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == mod:
            why = f"Transport type '{tt}' is not supported by this build (no module {mod})"
        else:
            why = f"Transport type '{tt}' is not available: {e}"
        _UNAVAILABLE[tt] = why
        raise UnknownTransport(why) from None
    ops = _REGISTRY.get(tt)
    if ops is None:
        raise UnknownTransport(f"Transport type '{tt}': module {mod} registered nothing")
    return ops


def find_transport(trtype: str) -> NvmfTransportOps | None:
    try:
        return get_transport(trtype)
    except UnknownTransport:
        return None


def registered() -> dict[str, NvmfTransportOps]:
    return dict(_REGISTRY)


def loadable() -> list[NvmfTransportOps]:
    """Every transport whose ops module imports here (for declaring the
    union of their options), in TRANSPORT_MODULES order."""
    out = []
    for tt in TRANSPORT_MODULES:
        ops = find_transport(tt)
        if ops is not None:
            out.append(ops)
    return out
