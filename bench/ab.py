"""Interleaved A/B of two trees' NVMe/TCP targets under the same load.

``python -m bench.ab --tree A=DIR --tree B=DIR [-w rr4k_qd32,...] [-n 3]``

Each DIR holds a blockfabric checkout as ``DIR/blockfabric`` (``git archive REV |
tar -x -C DIR/blockfabric``; the current tree: a directory with a
``blockfabric`` symlink to it). Every round starts each tree's target in turn
(one reactor on --cpus-target, busy polling, the suite's 256 MiB malloc bdev),
runs the same `blockfabric perf` (this tree's, per-command submission, on
--cpus-load) against it in busy mode and then in adaptive mode (CPU-seconds
per I/O), and stops it; rounds alternate the order A, B / B, A so that a drift
of the shared machine hits both alike. Prints per-round numbers and medians;
``--json FILE`` keeps them. On a shared machine wall-clock IOPS are noise:
read the medians of several rounds and the CPU cost per I/O side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from .systems import WL, BlockfabricTarget, Recorder, parse_cpus, run_bf_perf


def one_tree(
    name: str, root: Path, wls: list[str], a: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    rec = Recorder()
    bf = BlockfabricTarget(a.target_cpus[:1], a.target_cpus[:1], rec, f"ab{name}")
    bf.env["PYTHONPATH"] = str(root)
    out: dict[str, dict[str, Any]] = {}
    try:
        bf.start()
        bf.setup_malloc()
        trid = bf.setup_nvmf()
        warm = WL["sr128k_qd16"]
        run_bf_perf(trid, warm, 1.0, 1, a.load_cpus, bf.pids, rec, busy_poll=True)
        for key in wls:
            wl = WL[key]
            r = run_bf_perf(
                trid,
                wl,
                a.duration,
                1,
                a.load_cpus,
                bf.pids,
                rec,
                busy_poll=True,
                submission=a.submission,
            )
            out[key] = {"busy_iops": r.get("iops")}
        bf.rpc("framework_set_poll_mode", {"mode": "adaptive"})
        for key in wls:
            r = run_bf_perf(
                trid,
                WL[key],
                a.duration,
                1,
                a.load_cpus,
                bf.pids,
                rec,
                busy_poll=True,
                submission=a.submission,
            )
            out[key]["adaptive_iops"] = r.get("iops")
            out[key]["cpu_us_per_io"] = r.get("cpu_us_per_io")
    finally:
        bf.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab")
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("-w", "--workloads", default="rr4k_qd32")
    ap.add_argument("-n", "--rounds", type=int, default=3)
    ap.add_argument("-t", "--duration", type=float, default=4.0)
    ap.add_argument("--submission", default="per-command", choices=("per-command", "batch"))
    ap.add_argument("--cpus-target", default="0")
    ap.add_argument("--cpus-load", default="1")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    a.target_cpus = parse_cpus(a.cpus_target)
    a.load_cpus = parse_cpus(a.cpus_load)
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1])) for t in a.tree]
    wls = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for w in wls:
        if w not in WL:
            ap.error(f"unknown workload {w!r} (known: {', '.join(WL)})")
    rounds: list[dict[str, Any]] = []
    for i in range(a.rounds):
        order = trees if i % 2 == 0 else trees[::-1]
        rnd: dict[str, Any] = {}
        for name, root in order:
            rnd[name] = one_tree(name, root, wls, a)
            for key, v in rnd[name].items():
                print(f"round {i + 1} {name:>6} {key}: {v}", file=sys.stderr, flush=True)
        rounds.append(rnd)
    print(f"{'tree':>6} {'workload':<12} {'busy IOPS':>10} {'adapt IOPS':>10} {'CPU us/IO':>9}")
    summary: dict[str, Any] = {}
    for name, _ in trees:
        for key in wls:
            vals = [r[name][key] for r in rounds if key in r.get(name, {})]

            def med(k: str, vals: list[dict[str, Any]] = vals) -> float:
                xs = [float(v[k]) for v in vals if v.get(k) is not None]
                return statistics.median(xs) if xs else float("nan")

            m = {k: med(k) for k in ("busy_iops", "adaptive_iops", "cpu_us_per_io")}
            summary.setdefault(name, {})[key] = m
            print(
                f"{name:>6} {key:<12} {m['busy_iops']:>10,.0f} {m['adaptive_iops']:>10,.0f} "
                f"{m['cpu_us_per_io']:>9.2f}"
            )
    if a.json:
        a.json.write_text(json.dumps({"rounds": rounds, "median": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
