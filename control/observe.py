"""One snapshot of a running target for `blockfabric top`, the Prometheus
exporter and the web dashboard (issue 13).

Everything comes from the existing RPCs (bdev_get_iostat, nvmf_get_stats,
iscsi_get_stats, framework_get_reactors, iobuf_get_stats, ...): the reactors
keep plain counters, the supervisor gathers them when an RPC asks, so a
snapshot costs the data path nothing between scrapes. ``rates`` turns two
snapshots into per-second figures (IOPS, MiB/s, average latency, busy %).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Call = Callable[[str, Any], Any]

# Upper bounds (ns) of the per-bdev latency histogram buckets, Prometheus
# ``le`` semantics; one more bucket counts everything slower (+Inf). A
# completion costs one bisect and one list increment (issue 13).
LATENCY_BOUNDS_NS: tuple[int, ...] = tuple(
    int(us * 1000)
    for us in (
        10, 25, 50, 100, 250, 500,
        1_000, 2_500, 5_000, 10_000, 25_000, 50_000,
        100_000, 250_000, 500_000, 1_000_000,
    )
)  # fmt: skip


# what a snapshot holds -> the RPC that answers it (params None)
_PLAIN = {
    "status": "blockfabric_get_status",
    "reactors": "framework_get_reactors",
    "iostat": "bdev_get_iostat",
    "iobuf": "iobuf_get_stats",
    "nvmf_stats": "nvmf_get_stats",
    "subsystems": "nvmf_get_subsystems",
    "iscsi_stats": "iscsi_get_stats",
    "target_nodes": "iscsi_get_target_nodes",
    "iscsi_connections": "iscsi_get_connections",
    "bdevs": "bdev_get_bdevs",
}


def collect(call: Call) -> dict[str, Any]:
    """Ask the target for everything; a part whose RPC fails (no NVMe-oF
    transport yet, an older daemon) is empty and its error is kept."""
    snap: dict[str, Any] = {"time": time.monotonic(), "wall": time.time(), "errors": {}}
    for key, method in _PLAIN.items():
        try:
            snap[key] = call(method, None)
        except Exception as e:  # one part missing must not hide the others
            snap[key] = None
            snap["errors"][key] = str(e)
    qpairs: dict[str, list[dict[str, Any]]] = {}
    for s in snap.get("subsystems") or []:
        nqn = s.get("nqn", "")
        if s.get("subtype") == "Discovery":
            continue
        try:
            qpairs[nqn] = call("nvmf_subsystem_get_qpairs", {"nqn": nqn}) or []
        except Exception as e:
            snap["errors"][f"qpairs {nqn}"] = str(e)
    snap["qpairs"] = qpairs
    return snap


def bdev_stats(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """bdev name -> its bdev_get_iostat entry."""
    ios = snap.get("iostat") or {}
    return {b["name"]: b for b in ios.get("bdevs", []) if isinstance(b, dict)}


def _avg_us(ticks: int, ops: int) -> float:
    return ticks / ops / 1000.0 if ops > 0 else 0.0


def rates(prev: dict[str, Any] | None, cur: dict[str, Any]) -> dict[str, Any]:
    """Per-second figures between two snapshots (all zero without ``prev``):
    ``bdevs`` name -> read/write IOPS, MiB/s, average latency (us) of the
    interval; ``reactors`` lcore -> ``busy_pct`` (polls that found work),
    ``cpu_pct`` (the process's CPU time) and ``polls_s`` of the interval."""
    dt = cur["time"] - prev["time"] if prev else 0.0
    out_b: dict[str, dict[str, float]] = {}
    before = bdev_stats(prev) if prev else {}
    for name, b in bdev_stats(cur).items():
        p = before.get(name)
        if p is None or dt <= 0:
            out_b[name] = {
                "read_iops": 0.0,
                "write_iops": 0.0,
                "iops": 0.0,
                "read_mibs": 0.0,
                "write_mibs": 0.0,
                "mibs": 0.0,
                "read_lat_us": _avg_us(b["read_latency_ticks"], b["num_read_ops"]),
                "write_lat_us": _avg_us(b["write_latency_ticks"], b["num_write_ops"]),
            }
            continue
        dr = b["num_read_ops"] - p["num_read_ops"]
        dw = b["num_write_ops"] - p["num_write_ops"]
        rb = b["bytes_read"] - p["bytes_read"]
        wb = b["bytes_written"] - p["bytes_written"]
        out_b[name] = {
            "read_iops": dr / dt,
            "write_iops": dw / dt,
            "iops": (dr + dw) / dt,
            "read_mibs": rb / dt / 2**20,
            "write_mibs": wb / dt / 2**20,
            "mibs": (rb + wb) / dt / 2**20,
            "read_lat_us": _avg_us(b["read_latency_ticks"] - p["read_latency_ticks"], dr),
            "write_lat_us": _avg_us(b["write_latency_ticks"] - p["write_latency_ticks"], dw),
        }
    out_r: dict[int, dict[str, float]] = {}
    prev_r = {r["lcore"]: r for r in ((prev or {}).get("reactors") or {}).get("reactors", [])}
    for r in (cur.get("reactors") or {}).get("reactors", []):
        p = prev_r.get(r["lcore"])
        cpu = float(r.get("cpu_user_s", 0.0)) + float(r.get("cpu_sys_s", 0.0))
        if p is None or dt <= 0:
            tot = r["busy"] + r["idle"]
            out_r[r["lcore"]] = {
                "busy_pct": 100.0 * r["busy"] / tot if tot else 0.0,
                "cpu_pct": 0.0,
                "polls_s": 0.0,
            }
            continue
        db, di = r["busy"] - p["busy"], r["idle"] - p["idle"]
        pcpu = float(p.get("cpu_user_s", 0.0)) + float(p.get("cpu_sys_s", 0.0))
        out_r[r["lcore"]] = {
            "busy_pct": 100.0 * db / (db + di) if db + di > 0 else 0.0,
            "cpu_pct": 100.0 * (cpu - pcpu) / dt,
            "polls_s": (db + di) / dt,
        }
    return {"interval_s": dt, "bdevs": out_b, "reactors": out_r}


def reactor_connections(snap: dict[str, Any]) -> dict[int, int]:
    """reactor id -> NVMe-oF qpairs + iSCSI connections it serves."""
    out: dict[int, int] = {}
    for i, g in enumerate((snap.get("nvmf_stats") or {}).get("poll_groups", [])):
        out[i] = (
            out.get(i, 0)
            + int(g.get("current_admin_qpairs", 0))
            + int(g.get("current_io_qpairs", 0))
        )
    for s in snap.get("iscsi_stats") or []:
        rid = int(s.get("reactor", 0))
        out[rid] = out.get(rid, 0) + int(s.get("connections", 0))
    return out


def namespaces(snap: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(subsystem NQN, nsid, bdev) of every NVMe-oF namespace."""
    return [
        (s["nqn"], int(ns["nsid"]), ns["bdev_name"])
        for s in snap.get("subsystems") or []
        for ns in s.get("namespaces", [])
    ]


def luns(snap: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(target node name, LUN id, bdev) of every iSCSI LUN."""
    return [
        (t["name"], int(lun["lun_id"]), lun["bdev_name"])
        for t in snap.get("target_nodes") or []
        for lun in t.get("luns", [])
    ]


def hosts(snap: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per connected host: NVMe-oF (per subsystem, host NQN and
    address: its qpairs) and iSCSI (per initiator connection)."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for nqn, qps in (snap.get("qpairs") or {}).items():
        for q in qps:
            addr = q.get("peer_address") or {}
            key = ("nvmf", nqn, q.get("hostnqn", ""), str(addr.get("traddr", "")))
            r = rows.setdefault(
                key,
                {
                    "proto": "nvmf",
                    "target": nqn,
                    "host": key[2],
                    "address": key[3],
                    "connections": 0,
                    "reactors": set(),
                },
            )
            r["connections"] += 1
            r["reactors"].add(str(q.get("thread", "")).rsplit("_", 1)[-1])
    for c in snap.get("iscsi_connections") or []:
        key = ("iscsi", str(c.get("target_node_name", "")), str(c.get("initiator_name", "")),
               str(c.get("initiator_addr", "")))  # fmt: skip
        r = rows.setdefault(
            key,
            {
                "proto": "iscsi",
                "target": key[1],
                "host": key[2],
                "address": key[3],
                "connections": 0,
                "reactors": set(),
            },
        )
        r["connections"] += 1
        r["reactors"].add(str(c.get("lcore_id", "")))
    out = []
    for r in rows.values():
        r["reactors"] = ",".join(sorted(r["reactors"]))
        out.append(r)
    return out
