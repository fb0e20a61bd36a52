"""Cost of each stackable bdev on the malloc path: ``python -m bench.stack``.

One blockfabric target (busy-polling reactor on --cpus-target) exports, each
in a subsystem of its own on one listener: a plain malloc bdev (the peer),
and a passthru, a split part, a delay bdev with 0 us latencies, an error bdev
with nothing armed, a raid0 and a concat of two mallocs (64 KiB strips) and
a raid1 of two mallocs, each on fresh malloc bdevs of the same size.
`blockfabric perf` (NVMe/TCP, 1 worker, --busy-poll, on --cpus-load) runs
4 KiB random reads at QD32 (and 4 KiB random writes at QD32) on each in
turn, round-robin over the rows for --reps rounds (each round starting at
the next row) so that every row sees the same drift; the ratio is the row's median IOPS over plain malloc's
median IOPS from the same run. Writes bench/results/stack.md and stack.json
(BENCHMARKS.md includes stack.md, see bench/report.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
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
BASE_NQN = "nqn.2016-06.io.blockfabric:stack-"
MIB = 1 << 20
BLOCK = 512

# (key, label, RPCs that build it from fresh malloc bdevs named {key}_mN)
ROWS: list[tuple[str, str, int, list[tuple[str, dict[str, Any]]], str]] = [
    ("malloc", "malloc (peer)", 1, [], "malloc_m0"),
    (
        "passthru",
        "passthru",
        1,
        [("bdev_passthru_create", {"base_bdev_name": "passthru_m0", "name": "PT0"})],
        "PT0",
    ),
    (
        "split",
        "split (part 0 of 2)",
        1,
        [("bdev_split_create", {"base_bdev": "split_m0", "split_count": 2})],
        "split_m0p0",
    ),
    (
        "delay",
        "delay (0 us)",
        1,
        [
            (
                "bdev_delay_create",
                {
                    "base_bdev_name": "delay_m0",
                    "name": "D0",
                    "avg_read_latency": 0,
                    "p99_read_latency": 0,
                    "avg_write_latency": 0,
                    "p99_write_latency": 0,
                },
            )
        ],
        "D0",
    ),
    (
        "error",
        "error (nothing armed)",
        1,
        [("bdev_error_create", {"base_name": "error_m0"})],
        "EE_error_m0",
    ),
    (
        "raid0",
        "raid0 (2 x malloc, 64 KiB strip)",
        2,
        [
            (
                "bdev_raid_create",
                {
                    "name": "R0",
                    "raid_level": "0",
                    "strip_size_kb": 64,
                    "base_bdevs": "raid0_m0 raid0_m1",
                },
            )
        ],
        "R0",
    ),
    (
        "concat",
        "concat (2 x malloc)",
        2,
        [
            (
                "bdev_raid_create",
                {
                    "name": "C0",
                    "raid_level": "concat",
                    "strip_size_kb": 64,
                    "base_bdevs": "concat_m0 concat_m1",
                },
            )
        ],
        "C0",
    ),
    (
        "raid1",
        "raid1 (2 x malloc)",
        2,
        [
            (
                "bdev_raid_create",
                {"name": "M1", "raid_level": "1", "base_bdevs": "raid1_m0 raid1_m1"},
            )
        ],
        "M1",
    ),
]
WLS = [
    Workload("rr4k_qd32", "4 KiB rand read QD32", "randread", 4096, 32),
    Workload("rw4k_qd32", "4 KiB rand write QD32", "randwrite", 4096, 32),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.stack", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="rounds over all rows (default 3)")
    ap.add_argument("--size-mb", type=int, default=64, help="size of each bdev (default 64)")
    ap.add_argument("--cpus-target", default="0")
    ap.add_argument("--cpus-load", default="1")
    ap.add_argument("--only", default="", help="comma list of row keys (malloc is always run)")
    ap.add_argument("--reads-only", action="store_true", help="skip the random-write rows")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    a.target_cpus = parse_cpus(a.cpus_target)
    a.load_cpus = parse_cpus(a.cpus_load)
    return a


def build(bf: BlockfabricTarget, rows: list[Any], size_mb: int) -> dict[str, str]:
    """Create every row's bdevs and subsystem on one listener; key -> trid."""
    port = free_port()
    bf.rpc("nvmf_create_transport", {"trtype": "TCP"})
    trids = {}
    for key, _label, nbase, rpcs, top in rows:
        for i in range(nbase):
            bf.rpc(
                "bdev_malloc_create",
                {"name": f"{key}_m{i}", "num_blocks": size_mb * MIB // BLOCK, "block_size": BLOCK},
            )
        for method, params in rpcs:
            bf.rpc(method, params)
        nqn = BASE_NQN + key
        bf.rpc("nvmf_create_subsystem", {"nqn": nqn, "allow_any_host": True})
        bf.rpc("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": top}})
        bf.rpc(
            "nvmf_subsystem_add_listener",
            {
                "nqn": nqn,
                "listen_address": {
                    "trtype": "tcp",
                    "adrfam": "ipv4",
                    "traddr": "127.0.0.1",
                    "trsvcid": str(port),
                },
            },
        )
        trids[key] = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{nqn}"
    return trids


def run(a: argparse.Namespace) -> dict[str, Any]:
    keep = {k.strip() for k in a.only.split(",") if k.strip()}
    rows = [r for r in ROWS if not keep or r[0] in keep or r[0] == "malloc"]
    wls = WLS[:1] if a.reads_only else WLS
    rec = Recorder()
    bf = BlockfabricTarget(a.target_cpus[:1], a.target_cpus[:1], rec, "s")
    res: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "duration_s": a.duration,
            "reps": a.reps,
            "size_mb": a.size_mb,
            "cpus_target": a.cpus_target,
            "cpus_load": a.cpus_load,
            "python": platform.python_version(),
            "argv": " ".join(["python", "-m", "bench.stack", *sys.argv[1:]]),
        },
        "rows": {},
    }
    try:
        bf.start()
        trids = build(bf, rows, a.size_mb)
        warm = Workload("warmup", "warm-up", "write", 131072, 16)
        for key, *_ in rows:  # fault in every page once, as a host would have written it
            run_bf_perf(trids[key], warm, 2.0, 1, a.load_cpus, bf.pids, rec)
        for wl in wls:
            reps: dict[str, list[dict[str, Any]]] = {r[0]: [] for r in rows}
            for i in range(a.reps):
                # each round starts at another row: no row is always first after a pause
                k = i % len(rows)
                for key, label, *_ in rows[k:] + rows[:k]:
                    rep = run_bf_perf(
                        trids[key], wl, a.duration, 1, a.load_cpus, bf.pids, rec, busy_poll=True
                    )
                    reps[key].append(rep)
                    print(
                        f"[stack] {wl.label} {label} rep {i + 1}/{a.reps}: "
                        + (
                            f"{rep['iops']:,.0f} IOPS"
                            if rep.get("ok")
                            else f"FAILED {rep.get('error')}"
                        ),
                        flush=True,
                    )
            for key, label, *_ in rows:
                ok = [r for r in reps[key] if r.get("ok")]
                med = statistics.median(r["iops"] for r in ok) if ok else None
                lat = statistics.median(r["lat_us"] for r in ok if r.get("lat_us")) if ok else None
                res["rows"].setdefault(key, {"label": label})[wl.key] = {
                    "iops_median": med,
                    "lat_us_median": lat,
                    "reps": [r.get("iops") for r in reps[key]],
                    "errors": [r.get("error") for r in reps[key] if not r.get("ok")],
                }
        res["meta"]["raid"] = bf.rpc("bdev_raid_get_bdevs", {"category": "all"}, record=False)
    finally:
        bf.stop()
    res["commands"] = rec.commands
    return res


def markdown(res: dict[str, Any]) -> str:
    m = res["meta"]
    wls = [w for w in WLS if any(w.key in r for r in res["rows"].values())]
    base = res["rows"].get("malloc", {})
    lines = [
        "# Stackable bdevs: cost on the malloc path",
        "",
        f"One run ({m['started']}): NVMe/TCP, `blockfabric perf` 1 worker `--busy-poll` on CPU "
        f"{m['cpus_load']}, target 1 busy-polling reactor on CPU {m['cpus_target']}; "
        f"{m['size_mb']} MiB bdevs, {m['duration_s']:g} s per run, {m['reps']} rounds over all "
        "rows (interleaved, each round starting at the next row), median. Ratio = the row's median IOPS / plain malloc's median IOPS "
        "in the same run (1.00 = free). Command: `" + m["argv"] + "`.",
        "",
        "| bdev | " + " | ".join(f"{w.label} IOPS | ratio" for w in wls) + " |",
        "|---|" + "---:|---:|" * len(wls),
    ]
    for row in res["rows"].values():
        cells = []
        for w in wls:
            r = row.get(w.key, {})
            v = r.get("iops_median")
            b = base.get(w.key, {}).get("iops_median")
            cells.append(f"{v:,.0f}" if v else "failed")
            cells.append(f"{v / b:.2f}" if v and b else "-")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each stacked bdev adds one Python channel call per I/O on the reactor (split, passthru, "
        "delay, error forward to the base channel; the error bdev reads one shared word to see "
        "that nothing is armed). raid0/concat map the I/O to a member (one strip: no copy); "
        "raid1 reads from one member, round-robin. Writes to a raid take its shared range-lock "
        "table (two semaphore operations and a scan of the locked ranges) and, for raid1, go to "
        "both members.",
    ]
    errs = [
        f"{row['label']} {w}: {e}"
        for row in res["rows"].values()
        for w, r in row.items()
        if isinstance(r, dict)
        for e in r.get("errors", [])
    ]
    if errs:
        lines += ["", "Failed repetitions:", *[f"- {e}" for e in errs]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_standalone("stack", parse_args(argv), run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
