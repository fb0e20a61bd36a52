"""The NVMe/TCP entry of the transport ops table (transport.py).

Owns what the supervisor and the core ask of TCP without touching a socket
of a connection: ``nvmf_create_transport -t TCP`` options with SPDK's names
and defaults (plus blockfabric's hostile-host bounds), the Identify fields
(IOCCSZ from the in-capsule data size, IORCSZ 1, ICDOFF 0, SGLs with offset
addressing, MSDBD 1), listen / stop-listen (a listening socket owned by the
supervisor, accepted connections passed to reactors by fd: driver.py takes
them there), the discovery entry fields and the per-poll-group statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ...control.errors import RpcError
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

PROTO = "nvmf-tcp"

TCP_OPTIONS: dict[str, OptSpec] = {
    # name: OptSpec(type, default, min, max, rpc.py help, rpc.py short option)
    "max_queue_depth": OptSpec(int, 128, 2, 65535, "Max number of outstanding I/O per queue", "-q"),
    "max_io_qpairs_per_ctrlr": OptSpec(int, 127, 1, 65534, "Max number of IO qpairs per controller", "-m"),
    "in_capsule_data_size": OptSpec(int, 4096, 0, 131072, "Max number of in-capsule data size", "-c"),
    "max_io_size": OptSpec(int, 131072, 4096, 1 << 24, "Max I/O size (bytes)", "-i"),
    "io_unit_size": OptSpec(int, 131072, 512, 1 << 24, "I/O unit size (bytes)", "-u"),
    "max_aq_depth": OptSpec(int, 128, 2, 4096, "Max number of admin cmds per AQ", "-a"),
    "num_shared_buffers": OptSpec(int, 511, 0, None, "The number of pooled data buffers available to the transport", "-n"),
    "buf_cache_size": OptSpec(int, 0xFFFFFFFF, 0, 0xFFFFFFFF, "The number of shared buffers to reserve for each poll group", "-b"),
    "dif_insert_or_strip": OptSpec(bool, False, None, None, "Enable DIF insert/strip (TCP)", "-f"),
    "zcopy": OptSpec(bool, False, None, None, "Use zero-copy operations if the underlying bdev supports them", "-z"),
    "c2h_success": OptSpec(bool, True, None, None, "Disable C2H success optimization (TCP)", "-o", negate=True),
    "sock_priority": OptSpec(int, 0, 0, 16, "The sock priority of the tcp connection (TCP)", "-y"),
    "abort_timeout_sec": OptSpec(int, 1, 0, None, "Abort execution timeout value, in seconds", "-x"),
    "control_msg_num": OptSpec(int, 32, 1, None, "The number of control messages per poll group (TCP)", "-e"),
    "acceptor_poll_rate": OptSpec(int, 10000, 0, None, "Polling interval of the acceptor for pending connections (usec)"),
    "ack_timeout": OptSpec(int, 0, 0, None),
    "data_wr_pool_size": OptSpec(int, 0, 0, None),
    "disable_command_passthru": OptSpec(bool, False, None, None),
    # keep-alive granularity in 100 ms units (Identify KAS); KATO is rounded
    # up to a multiple of it, like SPDK (default 100 = 10 s)
    "kas": OptSpec(int, 100, 0, 65535),
    "min_kato": OptSpec(int, 10000, 1, None),
    # blockfabric extensions (hostile hosts, issue 8); 0 disables a timeout
    "connect_timeout_ms": OptSpec(int, 10000, 0, 3_600_000, "ICReq + Connect must complete within this (ms, 0: off)", spdk=False),
    "h2c_data_timeout_ms": OptSpec(int, 10000, 0, 3_600_000, "H2CData must arrive within this of the R2T (ms, 0: off)", spdk=False),
    "max_unsent_bytes": OptSpec(int, 4 << 20, 65536, 1 << 30, "Stop reading a connection while this many response bytes are unsent", spdk=False),
    "max_connections_per_reactor": OptSpec(int, 1024, 1, 1 << 20, "Connections one reactor accepts (beyond: refused)", spdk=False),
}  # fmt: skip

# RDMA / vfio-user only options SPDK's rpc.py may send with -t TCP: accepted, ignored
TCP_IGNORED = (
    "num_cqe",
    "max_srq_depth",
    "no_srq",
    "acceptor_backlog",
    "no_wr_batching",
    "disable_mappable_bar0",
    "disable_adaptive_irq",
    "disable_shadow_doorbells",
    "iobuf_small_cache_size",
    "iobuf_large_cache_size",
    "masked_oncs",
    "masked_fuses",
)


class TcpTransport(NvmfTransportOps):
    trtype = "TCP"
    trtype_code = spec.TRTYPE_TCP
    proto = PROTO
    adrfams = ("IPv4", "IPv6")
    options = TCP_OPTIONS
    ignored_options = TCP_IGNORED

    def check(self, conf: OptDict) -> None:
        icd, mio = int(conf["in_capsule_data_size"]), int(conf["max_io_size"])
        if icd % 16:
            raise ValueError("parameter 'in_capsule_data_size' must be a multiple of 16")
        if mio % 4096:
            raise ValueError("parameter 'max_io_size' must be a multiple of 4096")
        if icd > mio:
            raise ValueError("parameter 'in_capsule_data_size' exceeds 'max_io_size'")

    def identify(self, opts: TransportOptsLike, admin: bool) -> IdentifyFields:
        # IOCCSZ/IORCSZ in 16-byte units, ICDOFF 0, MSDBD 1; SGLs supported
        # with the address as an offset into the capsule (in-capsule data)
        return IdentifyFields(
            ioccsz=(64 + opts.in_capsule_data_size) // 16,
            iorcsz=1,
            icdoff=0,
            sgls=0x1 | (1 << 20),
            msdbd=1,
        )

    def tsas(self, listener: Mapping[str, object]) -> bytes:
        # TCP TSAS: SECTYPE (byte 0) TLS 1.3 on a --secure-channel listener
        sectype = spec.TCP_SECTYPE_TLS13 if listener.get("secure_channel") else 0
        return bytes([sectype]).ljust(256, b"\0")

    def listen(self, host: ListenHost, addr: ListenAddress) -> tuple[str, str]:
        # raises RpcError (e.g. -98 address in use), passed on to the RPC caller
        key = host.add_listener(PROTO, addr.traddr, int(addr.trsvcid), addr.adrfam.lower())
        port = key.rpartition(":")[2]
        return key, port if port.isdigit() else addr.trsvcid

    def stop_listen(self, host: ListenHost, addr: ListenAddress, key: str) -> None:
        try:
            host.remove_listener(PROTO, addr.traddr, int(addr.trsvcid))
        except RpcError:
            pass

    def poll_group_stats(self, target: NvmfTarget) -> dict[str, object]:
        st = target.stats
        return {
            "trtype": self.trtype,
            "current_qpairs": sum(1 for q in target.qpairs if q.transport is self),
            "pending_data_buffer": 0,
            "connect_timeouts": st["connect_timeouts"],
            "h2c_timeouts": st["h2c_timeouts"],
            "refused_connections": st["refused_connections"],
            "iobuf_waits": st["iobuf_waits"],
        }


TCP = TcpTransport()
register_transport(TCP)
