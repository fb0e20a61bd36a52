"""The NVMe/RDMA entry of the transport ops table (transport.py).

Owns what the supervisor and the core ask of RDMA without touching a verb:
``nvmf_create_transport -t RDMA`` options with SPDK's names, short options
and defaults (lib/nvmf/rdma.c SPDK_NVMF_RDMA_DEFAULT_*), the refusal when
pyverbs is missing (naming the Debian package), the Identify fields (IOCCSZ
from the in-capsule data size, IORCSZ 1, ICDOFF 0, keyed SGL data blocks +
offset addressing, MSDBD 1), listen / stop-listen (no socket: the listener
lives in the snapshot and the owning reactor opens an RDMA CM id for it,
rdma_driver.py), the discovery TSAS (RC QP, RDMA CM) and the per-poll-group
statistics.

Module map of the transport: rdma_proto.py (CM private data, keyed SGL:
sans-I/O codec), rdma_qpair.py (the queue pair state machine, sans-I/O),
rdma_verbs.py (pyverbs glue: CM, PD, CQ, QPs, MRs), rdma_driver.py (the
reactor driver "nvmf-rdma").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from . import spec
from .rdma_proto import SGLS
from .rdma_pyverbs import PYVERBS_PACKAGES, pyverbs_missing  # noqa: F401 - re-exported
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

PROTO = "nvmf-rdma"

RDMA_OPTIONS: dict[str, OptSpec] = {
    # name: OptSpec(type, default, min, max, rpc.py help, rpc.py short option)
    "max_queue_depth": OptSpec(int, 128, 2, 4096, "Max number of outstanding I/O per queue", "-q"),
    "max_io_qpairs_per_ctrlr": OptSpec(int, 127, 1, 65534, "Max number of IO qpairs per controller", "-m"),
    "in_capsule_data_size": OptSpec(int, 4096, 0, 65536, "Max number of in-capsule data size", "-c"),
    "max_io_size": OptSpec(int, 131072, 4096, 1 << 24, "Max I/O size (bytes)", "-i"),
    "io_unit_size": OptSpec(int, 8192, 512, 1 << 24, "I/O unit size (bytes)", "-u"),
    "max_aq_depth": OptSpec(int, 128, 2, 4096, "Max number of admin cmds per AQ", "-a"),
    "num_shared_buffers": OptSpec(int, 4095, 0, None, "The number of pooled data buffers available to the transport", "-n"),
    "buf_cache_size": OptSpec(int, 32, 0, 0xFFFFFFFF, "The number of shared buffers to reserve for each poll group", "-b"),
    "dif_insert_or_strip": OptSpec(bool, False, None, None, "Enable DIF insert/strip", "-f"),
    "abort_timeout_sec": OptSpec(int, 1, 0, None, "Abort execution timeout value, in seconds", "-x"),
    "num_cqe": OptSpec(int, 4096, 16, 1 << 20, "The number of CQ entries. Only used when no_srq=true (RDMA only)", "-d"),
    "max_srq_depth": OptSpec(int, 4096, 2, 65536, "Max number of outstanding I/O per SRQ (RDMA only)", "-s"),
    "no_srq": OptSpec(bool, False, None, None, "Disable per-thread shared receive queue (RDMA only)", "-r"),
    "acceptor_backlog": OptSpec(int, 100, 1, 65535, "Pending connections allowed at one time (RDMA only)", "-l"),
    "no_wr_batching": OptSpec(bool, False, None, None, "Disable work requests batching (RDMA only)", "-w"),
    "kas": OptSpec(int, 100, 0, 65535),
    "min_kato": OptSpec(int, 10000, 1, None),
    # blockfabric extension
    "max_connections_per_reactor": OptSpec(int, 1024, 1, 1 << 20, "RDMA queue pairs one reactor serves (beyond: rejected, no resources)", spdk=False),
}  # fmt: skip

# TCP / vfio-user only options SPDK's rpc.py may send with -t RDMA: accepted, ignored
RDMA_IGNORED = (
    "zcopy",
    "c2h_success",
    "sock_priority",
    "control_msg_num",
    "acceptor_poll_rate",
    "ack_timeout",
    "data_wr_pool_size",
    "disable_command_passthru",
    "disable_mappable_bar0",
    "disable_adaptive_irq",
    "disable_shadow_doorbells",
    "iobuf_small_cache_size",
    "iobuf_large_cache_size",
    "masked_oncs",
    "masked_fuses",
)


def listener_key(traddr: str, trsvcid: str) -> str:
    return f"RDMA:{traddr}:{trsvcid}"


class RdmaTransport(NvmfTransportOps):
    trtype = "RDMA"
    trtype_code = spec.TRTYPE_RDMA
    proto = PROTO
    adrfams = ("IPv4", "IPv6")
    options = RDMA_OPTIONS
    ignored_options = RDMA_IGNORED

    def unavailable(self) -> str | None:
        return pyverbs_missing()

    def check(self, conf: OptDict) -> None:
        icd, mio = int(conf["in_capsule_data_size"]), int(conf["max_io_size"])
        if icd % 16:
            raise ValueError("parameter 'in_capsule_data_size' must be a multiple of 16")
        if mio % 4096:
            raise ValueError("parameter 'max_io_size' must be a multiple of 4096")
        if icd > mio:
            raise ValueError("parameter 'in_capsule_data_size' exceeds 'max_io_size'")

    def identify(self, opts: TransportOptsLike, admin: bool) -> IdentifyFields:
        return IdentifyFields(
            ioccsz=(64 + opts.in_capsule_data_size) // 16, iorcsz=1, icdoff=0, sgls=SGLS, msdbd=1
        )

    def check_address(self, la: Mapping[str, object]) -> ListenAddress:
        addr = super().check_address(la)
        if addr.trsvcid == "0":
            raise ValueError("parameter 'listen_address.trsvcid': RDMA needs a fixed port")
        if addr.traddr in ("0.0.0.0", "::"):
            raise ValueError(
                "parameter 'listen_address.traddr': RDMA listens on the address of an RDMA "
                "device (e.g. the rxe/RoCE netdev's address), not a wildcard"
            )
        return addr

    def listen(self, host: ListenHost, addr: ListenAddress) -> tuple[str, str]:
        # the owning reactor opens the RDMA CM id when the snapshot has it
        return listener_key(addr.traddr, addr.trsvcid), addr.trsvcid

    def stop_listen(self, host: ListenHost, addr: ListenAddress, key: str) -> None:
        return None  # the owning reactor closes its cm_id with the next snapshot

    def tsas(self, listener: Mapping[str, object]) -> bytes:
        # RDMA_QPTYPE reliable connected, RDMA_PRTYPE not specified, RDMA_CMS RDMA_CM, PKEY 0
        return bytes((1, 1, 1, 0)) + bytes(252)

    def poll_group_stats(self, target: NvmfTarget) -> dict[str, object]:
        st = target.stats
        rs: dict[str, int] = getattr(target, "rdma_stats", {})
        return {
            "trtype": self.trtype,
            "current_qpairs": sum(1 for q in target.qpairs if q.transport is self),
            "pending_data_buffer": 0,
            "refused_connections": rs.get("rejected", 0),
            "iobuf_waits": st["iobuf_waits"],
            "devices": [
                {
                    "name": rs_name,
                    "polls": d.get("polls", 0),
                    "completions": d.get("completions", 0),
                    "requests": d.get("recv", 0),
                    "rdma_read": d.get("rdma_read", 0),
                    "rdma_write": d.get("rdma_write", 0),
                    "send": d.get("send", 0),
                    "bounce": d.get("bounce", 0),
                }
                for rs_name, d in getattr(target, "rdma_devices", {}).items()
            ],
        }


RDMA = RdmaTransport()
register_transport(RDMA)
