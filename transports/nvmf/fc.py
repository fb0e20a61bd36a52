"""The NVMe over Fibre Channel entry of the transport ops table (transport.py).

Owns what the supervisor and the core ask of FC without touching an
exchange: ``nvmf_create_transport -t FC`` options with SPDK's names and
defaults (lib/nvmf/fc.c: queue depth 128, admin queue 32, 5 queue pairs per
controller, no in-capsule data, 64 KiB I/O, 4 KiB I/O unit) plus ``lld``
(which low-level driver serves the ports: "loopback", the software LLD of
transports/fc/loopback.py, is the one blockfabric ships); FC transport
addresses (``nn-0x<WWNN>:pn-0x<WWPN>``, adrfam ``fc``, no service id);
listen / stop-listen (the loopback LLD's port is a Unix stream socket in the
run folder owned by the supervisor, accepted connections are handed to
reactors by fd as TCP's are; fc_driver.py takes them there); the Identify
fields (IOCCSZ 4: a 64-byte command, no in-capsule data; IORCSZ 1; SGLs
supported, no offset addressing; MSDBD 1), discovery fields (TRTYPE 2 = FC,
ADRFAM 4 = FC) and per-poll-group statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ...control.errors import RpcError
from ..fc import addr as FA
from ..fc import loopback
from ..fc.lld import LLDS, Lld
from . import spec
from .transport import (
    IdentifyFields,
    ListenAddress,
    ListenHost,
    NvmfTransportOps,
    OptDict,
    OptSpec,
    TransportOptsLike,
    register_transport,
)

if TYPE_CHECKING:
    from .core import NvmfTarget

PROTO = "nvmf-fc"
TRSVCID = "none"  # FC has no service id; SPDK and nvme-cli write "none"

FC_OPTIONS: dict[str, OptSpec] = {
    "max_queue_depth": OptSpec(int, 128, 2, 65535, "max number of outstanding I/O per queue", "-q"),
    "max_io_qpairs_per_ctrlr": OptSpec(int, 4, 1, 65534, "max number of IO qpairs per controller", "-m"),
    "in_capsule_data_size": OptSpec(int, 0, 0, 0, "in-capsule data size (FC-NVMe: none)", "-c"),
    "max_io_size": OptSpec(int, 65536, 4096, 1 << 20, "max I/O size (bytes)", "-i"),
    "io_unit_size": OptSpec(int, 4096, 512, 1 << 20, "I/O unit size (bytes)", "-u"),
    "max_aq_depth": OptSpec(int, 32, 2, 4096, "max number of admin cmds per AQ", "-a"),
    "num_shared_buffers": OptSpec(int, 8192, 0, None, "the number of pooled data buffers available to the transport", "-n"),
    "buf_cache_size": OptSpec(int, 0xFFFFFFFF, 0, 0xFFFFFFFF, "the number of shared buffers to reserve for each poll group", "-b"),
    "dif_insert_or_strip": OptSpec(bool, False, None, None, "DIF insert/strip (not supported over FC: must stay false)", "-f"),
    "abort_timeout_sec": OptSpec(int, 1, 0, None, "abort execution timeout value, in seconds", "-x"),
    "kas": OptSpec(int, 100, 0, 65535, "keep alive support granularity, 100 ms units"),
    "min_kato": OptSpec(int, 10000, 1, None, "minimum keep alive timeout (ms)"),
    # blockfabric: which low-level driver serves FC ports (an HBA vendor's LLD
    # registers itself under its name, see transports/fc/lld.py)
    "lld": OptSpec(str, loopback.NAME, None, None, "FC low-level driver (loopback: software, no HBA)", spdk=False),
    "max_associations": OptSpec(int, 64, 1, 4096, "associations one host port may create on one target port", spdk=False),
    "connect_timeout_ms": OptSpec(int, 10000, 0, 3_600_000, "login + link service + Connect must complete within this (0: off)", spdk=False),
    "h2c_data_timeout_ms": OptSpec(int, 10000, 0, 3_600_000, "write data must arrive within this of the transfer-ready (0: off)", spdk=False),
    "max_connections_per_reactor": OptSpec(int, 1024, 1, 1 << 20, "loopback paths one reactor accepts", spdk=False),
    "max_unsent_bytes": OptSpec(int, 4 << 20, 65536, 1 << 30, "stop reading a loopback path while this many bytes are unsent", spdk=False),
}  # fmt: skip

# options SPDK's rpc.py sends for other transports: accepted, ignored
FC_IGNORED = (
    "zcopy",
    "c2h_success",
    "sock_priority",
    "num_cqe",
    "max_srq_depth",
    "no_srq",
    "acceptor_backlog",
    "no_wr_batching",
    "control_msg_num",
    "acceptor_poll_rate",
    "ack_timeout",
    "data_wr_pool_size",
    "disable_command_passthru",
    "iobuf_small_cache_size",
    "iobuf_large_cache_size",
)


def listener_key(traddr: str) -> str:
    """What FC queue pairs carry as their listener and subsystems match."""
    return f"FC:{traddr}:{TRSVCID}"


class FcTransport(NvmfTransportOps):
    trtype = "FC"
    trtype_code = spec.TRTYPE_FC
    proto = PROTO
    adrfams = ("FC",)
    options = FC_OPTIONS
    ignored_options = FC_IGNORED

    def check(self, conf: OptDict) -> None:
        lld = str(conf["lld"])
        if lld not in LLDS:
            raise ValueError(
                f"parameter 'lld': no FC low-level driver {lld!r} (available: {', '.join(sorted(LLDS))})"
            )
        if conf["dif_insert_or_strip"]:
            raise ValueError("parameter 'dif_insert_or_strip' is not supported by the FC transport")
        mio, unit = int(conf["max_io_size"]), int(conf["io_unit_size"])
        if mio % 4096:
            raise ValueError("parameter 'max_io_size' must be a multiple of 4096")
        if unit > mio:
            raise ValueError("parameter 'io_unit_size' exceeds 'max_io_size'")

    def identify(self, opts: TransportOptsLike, admin: bool) -> IdentifyFields:
        # a 64-byte command capsule (no in-capsule data over FC), a 16-byte
        # response; SGL data blocks supported, no offset addressing (SPDK FC)
        return IdentifyFields(ioccsz=4, iorcsz=1, icdoff=0, sgls=0x1, msdbd=1)

    def check_address(self, la: Mapping[str, object]) -> ListenAddress:
        traddr = la.get("traddr")
        if not isinstance(traddr, str) or not traddr:
            raise ValueError("missing required parameter 'listen_address.traddr'")
        try:
            name = FA.parse_traddr(traddr)
        except FA.FcAddrError as e:
            raise ValueError(f"parameter 'listen_address.traddr': {e}") from None
        fam = str(la.get("adrfam") or "FC")
        if fam.lower() != "fc":
            raise ValueError(f"parameter 'listen_address.adrfam' must be FC, got {fam!r}")
        svc = la.get("trsvcid")
        if svc not in (None, "", TRSVCID):
            raise ValueError(f"parameter 'listen_address.trsvcid': FC has none, got {svc!r}")
        return ListenAddress(self.trtype, "FC", name.traddr, TRSVCID)

    def lld_of(self, host: ListenHost) -> Lld:
        """The LLD the FC transport was created with (``--lld``)."""
        st = getattr(host, "nvmf", None)
        conf = getattr(st, "transports", {}).get(self.trtype) or {}
        name = str(conf.get("lld", loopback.NAME))
        lld = LLDS.get(name)
        if lld is None:
            raise RpcError(-19, f"FC low-level driver {name!r} is not loaded")
        return lld

    def listen(self, host: ListenHost, addr: ListenAddress) -> tuple[str, str]:
        port = FA.parse_traddr(addr.traddr)
        lld = self.lld_of(host)
        why = lld.port_ok(port)
        if why is not None:
            raise RpcError(-22, why)
        lld.listen(host, port)  # loopback: a Unix stream socket the supervisor accepts on
        return listener_key(addr.traddr), TRSVCID

    def stop_listen(self, host: ListenHost, addr: ListenAddress, key: str) -> None:
        try:
            self.lld_of(host).stop_listen(host, FA.parse_traddr(addr.traddr))
        except (RpcError, FA.FcAddrError):
            pass

    def adrfam_code(self, adrfam: str) -> int:
        return 4  # NVMF_ADRFAM_FC

    def treq(self) -> int:
        return spec.TREQ_DISABLE_SQFLOW

    def poll_group_stats(self, target: NvmfTarget) -> dict[str, object]:
        st = target.stats
        return {
            "trtype": self.trtype,
            "current_qpairs": sum(1 for q in target.qpairs if q.transport is self),
            "pending_data_buffer": 0,
            "iobuf_waits": st["iobuf_waits"],
            "fc_ls_rejects": st.get("fc_ls_rejects", 0),
            "fc_aborted_exchanges": st.get("fc_aborted_exchanges", 0),
            "fc_login_timeouts": st.get("fc_login_timeouts", 0),
            "fc_data_timeouts": st.get("fc_data_timeouts", 0),
            "fc_refused_paths": st.get("fc_refused_paths", 0),
        }


FC = FcTransport()
register_transport(FC)
