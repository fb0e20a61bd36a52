"""Cost of watching a target: ``python -m bench.metrics`` (or ``python -m
bench --only metrics``).

One blockfabric target (one adaptive-polling reactor on --cpus-target, started
with ``--metrics`` and ``--http`` on loopback) exports one 64 MiB malloc
namespace over NVMe/TCP. `blockfabric perf` (1 worker, --busy-poll, on
--cpus-load) runs 4 KiB random reads at QD32 under three conditions,
interleaved round-robin for --reps rounds (each round starting at the next
condition, so drift hits all alike):

* ``none``: nobody scrapes (the peer);
* ``metrics``: a Prometheus-style scraper GETs ``/metrics`` every second;
* ``dashboard``: a browser-style poller GETs ``/api/snapshot`` every second;
* ``nolat``: nobody scrapes a second, identical target (same CPU, started
  before the runs, idle and blocked in epoll while the others run) whose reactors do no bdev
  latency accounting (BLOCKFABRIC_BDEV_LATENCY=0): what the per-I/O latency
  sum and histogram cost.

The ratio is a condition's median IOPS over ``none``'s median IOPS from the
same run. The scraper runs on --cpus-scrape (default: the load CPUs).
Writes bench/results/metrics.md and metrics.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
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

# both targets share the CPU: an idle one must block in epoll, not spin
# (adaptive: spins 200 us after work, so a loaded reactor never blocks)
ADAPTIVE = ["--poll-mode", "adaptive"]
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NQN = "nqn.2016-06.io.blockfabric:metrics"
MIB = 1 << 20
WL = Workload("rr4k_qd32", "4 KiB rand read QD32", "randread", 4096, 32)
CONDITIONS = (
    ("none", "no scraping (peer)", None),
    ("metrics", "GET /metrics every 1 s", "/metrics"),
    ("dashboard", "GET /api/snapshot every 1 s (dashboard open)", "/api/snapshot"),
    # a second target, the same but started with BLOCKFABRIC_BDEV_LATENCY=0
    ("nolat", "no scraping, bdev latency accounting off (2nd target)", None),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    ap.add_argument("--reps", type=int, default=3, help="rounds over the conditions (default 3)")
    ap.add_argument("--interval", type=float, default=1.0, help="scrape interval (default 1 s)")
    ap.add_argument("--cpus-target", default="0")
    ap.add_argument("--cpus-load", default="1")
    ap.add_argument("--cpus-scrape", default="", help="CPUs of the scraper (default: load CPUs)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    a.target_cpus = parse_cpus(a.cpus_target)
    a.load_cpus = parse_cpus(a.cpus_load)
    a.scrape_cpus = parse_cpus(a.cpus_scrape) if a.cpus_scrape else a.load_cpus
    return a


class Scraper:
    """GET ``url`` every ``interval`` seconds in a thread; times each GET."""

    def __init__(self, url: str, interval: float, cpus: list[int]) -> None:
        self.cpus = cpus
        self.url = url
        self.interval = interval
        self.times: list[float] = []
        self.sizes: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        os.sched_setaffinity(0, self.cpus)  # this thread only (Linux: 0 = the caller)
        nxt = time.monotonic()
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as r:
                    self.sizes.append(len(r.read()))
                self.times.append(time.monotonic() - t0)
            except Exception as e:
                self.errors.append(str(e))
            nxt += self.interval
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def start(self) -> Callable[[], None]:
        self._t.start()

        def finish() -> None:
            self._stop.set()
            self._t.join(60)

        return finish


def export(bf: BlockfabricTarget) -> str:
    """One 64 MiB malloc namespace over NVMe/TCP on a fresh port; its trid."""
    port = free_port()
    bf.rpc("nvmf_create_transport", {"trtype": "TCP"})
    bf.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 64 * MIB // 512,
                                  "block_size": 512})  # fmt: skip
    bf.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    bf.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "M0"}})
    bf.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
        "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}})  # fmt: skip
    return f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"


def run(a: argparse.Namespace) -> dict[str, Any]:
    rec = Recorder()
    mport, hport = free_port(), free_port()
    bf = BlockfabricTarget(
        a.target_cpus[:1],
        a.target_cpus[:1],
        rec,
        "m",
        extra=["--metrics", f"127.0.0.1:{mport}", "--http", f"127.0.0.1:{hport}", *ADAPTIVE],
    )
    urls = {"/metrics": f"http://127.0.0.1:{mport}/metrics",
            "/api/snapshot": f"http://127.0.0.1:{hport}/api/snapshot"}  # fmt: skip
    res: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "duration_s": a.duration,
            "reps": a.reps,
            "interval_s": a.interval,
            "cpus_target": a.cpus_target,
            "cpus_load": a.cpus_load,
            "cpus_scrape": a.cpus_scrape or a.cpus_load,
            "python": platform.python_version(),
            "argv": " ".join(["python", "-m", "bench.metrics", *a.argv]),
        },
        "rows": {},
    }
    bf0 = BlockfabricTarget(a.target_cpus[:1], a.target_cpus[:1], rec, "n", extra=ADAPTIVE)
    bf0.env["BLOCKFABRIC_BDEV_LATENCY"] = "0"
    try:
        bf.start()
        bf0.start()
        trids = {"bf": export(bf), "bf0": export(bf0)}
        trid = trids["bf"]
        warm = Workload("warmup", "warm-up", "write", 131072, 16)
        for t in trids.values():
            run_bf_perf(t, warm, 2.0, 1, a.load_cpus, bf.pids, rec)
        reps: dict[str, list[dict[str, Any]]] = {c[0]: [] for c in CONDITIONS}
        scrapes: dict[str, list[float]] = {c[0]: [] for c in CONDITIONS}
        sizes: dict[str, list[int]] = {c[0]: [] for c in CONDITIONS}
        errors: dict[str, list[str]] = {c[0]: [] for c in CONDITIONS}
        conds = list(CONDITIONS)
        for i in range(a.reps):
            k = i % len(conds)
            for key, label, path in conds[k:] + conds[:k]:
                scraper = Scraper(urls[path], a.interval, a.scrape_cpus) if path else None
                during = scraper.start if scraper is not None else None

                on = bf0 if key == "nolat" else bf
                rep = run_bf_perf(
                    trids["bf0"] if key == "nolat" else trid, WL, a.duration, 1, a.load_cpus,
                    on.pids, rec, during=during, busy_poll=True,
                )  # fmt: skip
                reps[key].append(rep)
                if scraper is not None:
                    scrapes[key] += scraper.times
                    sizes[key] += scraper.sizes
                    errors[key] += scraper.errors
                print(
                    f"[metrics] {label} rep {i + 1}/{a.reps}: "
                    + (
                        f"{rep['iops']:,.0f} IOPS"
                        if rep.get("ok")
                        else f"FAILED {rep.get('error')}"
                    )
                    + (f", {len(scraper.times)} scrapes" if scraper else ""),
                    flush=True,
                )
        for key, label, path in CONDITIONS:
            ok = [r for r in reps[key] if r.get("ok")]
            res["rows"][key] = {
                "label": label,
                "path": path,
                "iops_median": statistics.median(r["iops"] for r in ok) if ok else None,
                "lat_us_median": statistics.median(r["lat_us"] for r in ok if r.get("lat_us"))
                if ok
                else None,
                "reps": [r.get("iops") for r in reps[key]],
                "scrapes": len(scrapes[key]),
                "scrape_ms_median": statistics.median(scrapes[key]) * 1000
                if scrapes[key]
                else None,
                "scrape_bytes_median": statistics.median(sizes[key]) if sizes[key] else None,
                "errors": [r.get("error") for r in reps[key] if not r.get("ok")] + errors[key],
            }
    finally:
        bf0.stop()
        bf.stop()
    res["commands"] = rec.commands
    return res


def markdown(res: dict[str, Any]) -> str:
    m = res["meta"]
    base = res["rows"].get("none", {}).get("iops_median")
    lines = [
        "# Cost of a metrics scrape every second",
        "",
        f"One run ({m['started']}): NVMe/TCP {WL.label}, `blockfabric perf` 1 worker "
        f"`--busy-poll` on CPU {m['cpus_load']}, target 1 reactor (`--poll-mode adaptive`) on CPU "
        f"{m['cpus_target']} started with `--metrics` and `--http`; scraper on CPU "
        f"{m['cpus_scrape']}, one GET every {m['interval_s']:g} s; {m['duration_s']:g} s per "
        f"run, {m['reps']} rounds over the conditions (interleaved), median. Ratio = the "
        "condition's median IOPS / the no-scraping median IOPS of the same run. Command: `"
        + m["argv"]
        + "`.",
        "",
        "| condition | IOPS | ratio | scrapes | median scrape ms | page bytes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in res["rows"].values():
        v = row.get("iops_median")
        ms = row.get("scrape_ms_median")
        size = row.get("scrape_bytes_median")
        lines.append(
            f"| {row['label']} | {f'{v:,.0f}' if v else 'failed'} | "
            f"{f'{v / base:.3f}' if v and base else '-'} | {row['scrapes']} | "
            f"{f'{ms:.1f}' if ms else '-'} | {f'{size:,.0f}' if size else '-'} |"
        )
    lines += [
        "",
        "A scrape is one snapshot (control/observe.py): the supervisor's HTTP thread asks the "
        "supervisor, over its own RPC socket, for about ten RPCs (bdev_get_iostat, "
        "nvmf_get_stats, framework_get_reactors, ...); those that gather from reactors cost "
        "each reactor one mailbox message per RPC and scrape, handled between polls. The "
        "reactors only keep plain counters (and, per completed bdev I/O, a latency sum and "
        "one histogram bucket increment, paid with or without scraping: the last row, a "
        "target started with BLOCKFABRIC_BDEV_LATENCY=0, shows what that costs).",
    ]
    errs = [f"{row['label']}: {e}" for row in res["rows"].values() for e in row.get("errors", [])]
    if errs:
        lines += ["", "Errors:", *[f"- {e}" for e in errs[:20]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_standalone("metrics", parse_args(argv), run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
