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
from .transport import NvmfTransportOps, find_transport

if TYPE_CHECKING:
    from .core import NvmfTarget

HDR_SIZE = 1024
ENTRY_SIZE = 1024
AQ_DEPTH = 32  # ASQSZ advertised, like nvmet's NVME_AQ_DEPTH


def _key(li: dict[str, Any]) -> str:
    return str(li.get("key", f"{li['traddr']}:{li['trsvcid']}"))


def _portid(key: str, ports: dict[str, int]) -> int:
    # a stable small number per listen address
    if key not in ports:
        ports[key] = len(ports)
    return ports[key]


def entry(
    li: dict[str, Any],
    subnqn: str,
    subtype: int,
    portid: int,
    eflags: int = 0,
    tr: NvmfTransportOps | None = None,
) -> bytearray | None:
    """One log entry for listener ``li``, its fields from the listener's
    transport (None when that transport is not loaded in this process)."""
    if tr is None:
        tr = find_transport(str(li.get("trtype", "")))
        if tr is None:
            return None
    e = bytearray(ENTRY_SIZE)
    struct.pack_into(
        "<BBBBHHHH",
        e,
        0,
        tr.trtype_code,
        tr.adrfam_code(str(li.get("adrfam", "IPv4"))),
        subtype,
        tr.treq() | (spec.TREQ_SECURE_REQUIRED if li.get("secure_channel") else 0),
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
    tsas = tr.tsas(li)[:256]
    e[768 : 768 + len(tsas)] = tsas
    return e


def entries_for(
    target: NvmfTarget, hostnqn: str, listener: str, tr: NvmfTransportOps
) -> list[bytearray]:
    """The entries a host connected on ``listener`` (a listener key of
    transport ``tr``) sees."""
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
            if _key(li) == listener:
                cur = li
                break
        if cur is not None:
            break
    if cur is None and listener:
        host, _, port = listener.rpartition(":")
        if host.startswith(tr.trtype + ":"):  # non-TCP keys carry their trtype
            host = host[len(tr.trtype) + 1 :]
        fam = "IPv6" if ":" in host else "IPv4"
        cur = {"trtype": tr.trtype, "traddr": host, "trsvcid": port, "adrfam": fam}
    if cur is not None:
        e = entry(
            cur,
            DISCOVERY_NQN,
            spec.SUBTYPE_CURRENT_DISCOVERY,
            ports[listener],
            spec.DISC_EFLAGS_DUPRETINFO | spec.DISC_EFLAGS_EPCSD,
            tr,
        )
        if e is not None:
            out.append(e)
    for nqn in sorted(target.subsystems):
        ss = target.subsystems[nqn]
        if ss.is_discovery or not ss.host_allowed(hostnqn):
            continue
        for li in ss.listeners:
            e = entry(li, nqn, spec.SUBTYPE_NVME, ports[_key(li)])
            if e is not None:
                out.append(e)
    del disc
    return out


def log_page(target: NvmfTarget, hostnqn: str, listener: str, tr: NvmfTransportOps) -> bytearray:
    ents = entries_for(target, hostnqn, listener, tr)
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
