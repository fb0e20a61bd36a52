"""The discovery service: the Discovery Log Page (log identifier 70h).

Owns the page layout (1024-byte header: GENCTR, NUMREC, RECFMT; 1024-byte
entries: TRTYPE, ADRFAM, SUBTYPE, TREQ, PORTID, CNTLID, ASQSZ, EFLAGS, TRSVCID,
SUBNQN, TRADDR, TSAS) and which entries a host sees: one per listener of every
NVM subsystem the host may access, plus a "current discovery subsystem" entry
for the port the host is connected to (as Linux nvmet does). The allowed
command set of a discovery controller is enforced in admin.py.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from . import spec
from .nqn import DISCOVERY_NQN

if TYPE_CHECKING:
    from .core import NvmfTarget

HDR_SIZE = 1024
ENTRY_SIZE = 1024
AQ_DEPTH = 32  # ASQSZ advertised, like nvmet's NVME_AQ_DEPTH


def _adrfam(li: dict[str, Any]) -> int:
    fam = str(li.get("adrfam", "IPv4")).lower()
    return spec.ADRFAM_IPV6 if fam == "ipv6" else spec.ADRFAM_IPV4


def _portid(key: str, ports: dict[str, int]) -> int:
    # a stable small number per listen address
    if key not in ports:
        ports[key] = len(ports)
    return ports[key]


def entry(li: dict[str, Any], subnqn: str, subtype: int, portid: int, eflags: int = 0) -> bytearray:
    e = bytearray(ENTRY_SIZE)
    rdma = str(li.get("trtype", "TCP")).upper() == "RDMA"
    struct.pack_into(
        "<BBBBHHHH",
        e,
        0,
        spec.TRTYPE_RDMA if rdma else spec.TRTYPE_TCP,
        _adrfam(li),
        subtype,
        spec.TREQ_DISABLE_SQFLOW,  # like nvmet: secure channel not specified
        portid,
        spec.CNTLID_DYNAMIC,
        AQ_DEPTH,
        eflags,
    )
    svc = str(li.get("trsvcid", "")).encode("ascii", "replace")[:32]
    e[32:64] = svc.ljust(32, b" ")
    nqn = subnqn.encode("utf-8")[:256]
    e[256 : 256 + len(nqn)] = nqn
    addr = str(li.get("traddr", "")).encode("ascii", "replace")[:256]
    e[512:768] = addr.ljust(256, b" ")
    if rdma:
        # RDMA TSAS: QPTYPE reliable connected, PRTYPE not specified, CMS RDMA_CM, PKEY 0
        e[768:772] = bytes((spec.RDMA_QPTYPE_CONNECTED, spec.RDMA_PRTYPE_NOT_SPECIFIED,
                            spec.RDMA_CMS_RDMA_CM, 0))  # fmt: skip
    # TCP TSAS: SECTYPE 0 (no security)
    return e


def entries_for(target: NvmfTarget, hostnqn: str, listener: str) -> list[bytearray]:
    ports: dict[str, int] = {}
    all_keys = sorted(
        {k for ss in target.subsystems.values() for k in ss.listener_keys}
        | ({listener} if listener else set())
    )
    for k in all_keys:
        _portid(k, ports)
    out: list[bytearray] = []
    # the discovery subsystem itself on the port in use (current discovery subsystem)
    disc = target.subsystems.get(DISCOVERY_NQN)
    cur = None
    for ss in target.subsystems.values():
        for li in ss.listeners:
            if li.get("key", f"{li['traddr']}:{li['trsvcid']}") == listener:
                cur = li
                break
        if cur is not None:
            break
    if cur is None and listener:
        tr, addr = ("RDMA", listener[5:]) if listener.startswith("rdma:") else ("TCP", listener)
        host, _, port = addr.rpartition(":")
        cur = {"traddr": host, "trsvcid": port, "adrfam": "IPv6" if ":" in host else "IPv4"}
        cur["trtype"] = tr
    if cur is not None:
        out.append(
            entry(
                cur,
                DISCOVERY_NQN,
                spec.SUBTYPE_CURRENT_DISCOVERY,
                ports[listener],
                spec.DISC_EFLAGS_DUPRETINFO | spec.DISC_EFLAGS_EPCSD,
            )
        )
    for nqn in sorted(target.subsystems):
        ss = target.subsystems[nqn]
        if ss.is_discovery or not ss.host_allowed(hostnqn):
            continue
        for li in ss.listeners:
            key = li.get("key", f"{li['traddr']}:{li['trsvcid']}")
            out.append(entry(li, nqn, spec.SUBTYPE_NVME, ports[key]))
    del disc
    return out


def log_page(target: NvmfTarget, hostnqn: str, listener: str) -> bytearray:
    ents = entries_for(target, hostnqn, listener)
    page = bytearray(HDR_SIZE)
    struct.pack_into("<QQH", page, 0, target.genctr, len(ents), 0)
    for e in ents:
        page += e
    return page


def parse_log_page(page: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a discovery log page (tests and the host library use it)."""
    genctr, numrec, recfmt = struct.unpack_from("<QQH", page, 0)
    recs = []
    for i in range(numrec):
        off = HDR_SIZE + i * ENTRY_SIZE
        if off + ENTRY_SIZE > len(page):
            break
        t, fam, sub, treq, portid, cntlid, asqsz, eflags = struct.unpack_from(
            "<BBBBHHHH", page, off
        )
        recs.append(
            {
                "trtype": t,
                "adrfam": fam,
                "subtype": sub,
                "treq": treq,
                "portid": portid,
                "cntlid": cntlid,
                "asqsz": asqsz,
                "eflags": eflags,
                "trsvcid": bytes(page[off + 32 : off + 64]).rstrip(b" \0").decode(),
                "subnqn": spec.cstr(page, off + 256, 256).decode(),
                "traddr": bytes(page[off + 512 : off + 768]).rstrip(b" \0").decode(),
                "sectype": page[off + 768],
            }
        )
    return {"genctr": genctr, "numrec": numrec, "recfmt": recfmt, "entries": recs}
