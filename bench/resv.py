"""Cost of NVMe reservations: ``python -m bench.resv``.

One blockfabric target (busy-polling reactor on --cpus-target) exports two
malloc namespaces in two subsystems on one listener: one with no
reservation (the peer) and one on which another host (our host library)
holds a Write Exclusive reservation. `blockfabric perf` (NVMe/TCP, 1 worker,
--busy-poll, on --cpus-load) runs 4 KiB random reads at QD32 on each, in
alternating order for --reps rounds: reads of a non-registrant are allowed
under Write Exclusive, so every command is checked against the namespace's
reservation view (and leaves the TCP fast path). The ratio is the held row's
median IOPS over the peer's median from the same run. Also: the median
latency of a Reservation Register + Unregister pair (a supervisor round trip
and a broadcast to every reactor each). Writes bench/results/resv.md and
resv.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .systems import (
    BlockfabricTarget,
    Recorder,
    Workload,
    free_port,
    parse_cpus,
    run_bf_perf,
    run_standalone,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BASE_NQN = "nqn.2016-06.io.blockfabric:resv-"
MIB = 1 << 20
BLOCK = 512
ROWS = [("none", "no reservation (peer)"), ("we_held", "Write Exclusive held by another host")]
WL = Workload("rr4k_qd32", "4 KiB rand read QD32", "randread", 4096, 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.resv", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="rounds over both rows (default 3)")
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=200, help="register+unregister pairs timed")
    ap.add_argument("--cpus-target", default="0")
    ap.add_argument("--cpus-load", default="1")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    a.target_cpus = parse_cpus(a.cpus_target)
    a.load_cpus = parse_cpus(a.cpus_load)
    return a


def build(bf: BlockfabricTarget, size_mb: int) -> tuple[int, dict[str, str]]:
    port = free_port()
    bf.rpc("nvmf_create_transport", {"trtype": "TCP"})
    trids = {}
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    for key, _label in ROWS:
        bf.rpc(
            "bdev_malloc_create",
            {"name": f"{key}_m0", "num_blocks": size_mb * MIB // BLOCK, "block_size": BLOCK},
        )
        nqn = BASE_NQN + key
        bf.rpc("nvmf_create_subsystem", {"nqn": nqn, "allow_any_host": True})
        bf.rpc("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": f"{key}_m0"}})
        bf.rpc("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": la})
        trids[key] = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{nqn}"
    return port, trids


def run(a: argparse.Namespace) -> dict[str, Any]:
    from blockfabric.transports.nvmf_host.controller import Controller

    rec = Recorder()
    bf = BlockfabricTarget(a.target_cpus[:1], a.target_cpus[:1], rec, "r")
    res: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "duration_s": a.duration,
            "reps": a.reps,
            "cpus_target": a.cpus_target,
            "cpus_load": a.cpus_load,
            "python": platform.python_version(),
            "argv": " ".join(["python", "-m", "bench.resv", *sys.argv[1:]]),
        },
        "rows": {},
    }
    holder = None
    try:
        bf.start()
        port, trids = build(bf, a.size_mb)
        warm = Workload("warmup", "warm-up", "write", 131072, 16)
        for key, _ in ROWS:
            run_bf_perf(trids[key], warm, 2.0, 1, a.load_cpus, bf.pids, rec)
        holder = Controller("127.0.0.1", port, BASE_NQN + "we_held", nr_io_queues=1).connect()
        holder.resv_register(1, 0, nrkey=0x1)
        holder.resv_acquire(1, 0, 1, 0x1)  # Write Exclusive: others may still read
        # the latency of reservation commands (on the peer namespace)
        peer = Controller("127.0.0.1", port, BASE_NQN + "none", nr_io_queues=1).connect()
        lat = []
        for _ in range(a.pairs):
            t0 = time.perf_counter()
            peer.resv_register(1, 0, nrkey=0x2)
            peer.resv_register(1, 1, crkey=0x2)
            lat.append((time.perf_counter() - t0) * 1e6 / 2)
        peer.close()
        res["resv_cmd_us_median"] = statistics.median(lat)
        reps: dict[str, list[dict[str, Any]]] = {k: [] for k, _ in ROWS}
        for i in range(a.reps):
            order = ROWS if i % 2 == 0 else ROWS[::-1]
            for key, label in order:
                rep = run_bf_perf(
                    trids[key], WL, a.duration, 1, a.load_cpus, bf.pids, rec, busy_poll=True
                )
                reps[key].append(rep)
                print(
                    f"[resv] {label} rep {i + 1}/{a.reps}: "
                    + (
                        f"{rep['iops']:,.0f} IOPS"
                        if rep.get("ok")
                        else f"FAILED {rep.get('error')}"
                    ),
                    flush=True,
                )
        for key, label in ROWS:
            ok = [r for r in reps[key] if r.get("ok")]
            res["rows"][key] = {
                "label": label,
                "iops_median": statistics.median(r["iops"] for r in ok) if ok else None,
                "reps": [r.get("iops") for r in reps[key]],
                "errors": [r.get("error") for r in reps[key] if not r.get("ok")],
            }
    finally:
        if holder is not None:
            holder.close()
        bf.stop()
    res["commands"] = rec.commands
    return res


def markdown(res: dict[str, Any]) -> str:
    m = res["meta"]
    base = res["rows"].get("none", {}).get("iops_median")
    lines = [
        "# NVMe reservations: cost",
        "",
        f"One run ({m['started']}): NVMe/TCP, `blockfabric perf` 1 worker `--busy-poll` on CPU "
        f"{m['cpus_load']}, target 1 busy-polling reactor on CPU {m['cpus_target']}; "
        f"{WL.label}, {m['duration_s']:g} s per run, {m['reps']} rounds (alternating order), "
        "median. Ratio = the row's median IOPS / the peer's (no reservation) in the same run. "
        "Command: `" + m["argv"] + "`.",
        "",
        "| namespace | IOPS | ratio |",
        "|---|---:|---:|",
    ]
    for row in res["rows"].values():
        v = row.get("iops_median")
        lines.append(
            f"| {row['label']} | {f'{v:,.0f}' if v else 'failed'} | "
            f"{f'{v / base:.2f}' if v and base else '-'} |"
        )
    us = res.get("resv_cmd_us_median")
    lines += [
        "",
        f"Reservation Register / Unregister: {us:,.0f} us median per command "
        "(reactor -> supervisor -> broadcast of the new view to every reactor -> reply)."
        if us
        else "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_standalone("resv", parse_args(argv), run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
