"""blockfabric NVMe/TCP under a C load generator: ``python -m bench.cload``.

`blockfabric perf` is Python: with per-command submission (one send per
command, as the Linux and SPDK hosts do) it is at ~98 % of its core before the
target is (the profile of the main suite shows the reactor mostly spinning).
bench/nvmf_loadgen.c is a small NVMe/TCP host in C that submits the same way
(one admin and one I/O queue, each command PDU sent on its own as soon as its
slot frees, reads by C2HData, writes with in-capsule data; it busy-polls its
socket, like `perf --busy-poll` in the main suite), built here with `cc -O2`. It drives one blockfabric target (one reactor on --cpus-target, the
loader on --cpus-load) through the issue-15 workloads:

- busy: the reactor busy-polls (the default of the main suite), IOPS and mean
  latency, --reps runs, median;
- blocking: a second target whose reactor sleeps in epoll when idle, so its
  CPU-seconds per completed I/O are what the I/O cost (no spinning counted).

Writes bench/results/cload.md and cload.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .systems import (
    NQN,
    BenchError,
    BlockfabricTarget,
    Meter,
    Recorder,
    parse_cpus,
    run_pinned,
    run_standalone,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SRC = ROOT / "bench" / "nvmf_loadgen.c"
# (key, label, -w, -o, -q, issue-15 target: IOPS or MiB/s)
WORKLOADS = [
    ("rr4k_qd1", "4 KiB rand read QD1", "randread", 4096, 1, ("iops", 50_000)),
    ("rr4k_qd32", "4 KiB rand read QD32", "randread", 4096, 32, ("iops", 200_000)),
    ("rr4k_qd128", "4 KiB rand read QD128", "randread", 4096, 128, None),
    ("rw4k_qd32", "4 KiB rand write QD32", "randwrite", 4096, 32, ("iops", 160_000)),
    ("sr128k_qd16", "128 KiB seq read QD16", "read", 131072, 16, ("mibs", 3000)),
]
SPDK = {"rr4k_qd1": 70_652, "rr4k_qd32": 396_125, "rr4k_qd128": 400_037, "rw4k_qd32": 326_583}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.cload", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="busy runs per workload (default 3)")
    ap.add_argument("--cpus-target", default="0")
    ap.add_argument("--cpus-load", default="1")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    a.target_cpus = parse_cpus(a.cpus_target)
    a.load_cpus = parse_cpus(a.cpus_load)
    return a


def build(tmp: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BenchError("no C compiler (cc/gcc: Debian's build-essential)")
    exe = tmp / "nvmf_loadgen"
    r = subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(exe), str(SRC)], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise BenchError(f"cc failed: {r.stderr.strip()}")
    return exe


def parse_line(out: str) -> dict[str, Any]:
    """The loader's result line: ios=... iops=... mibs=... lat_us=... sends=..."""
    for line in reversed(out.splitlines()):
        if line.startswith("ios="):
            kv = dict(x.split("=", 1) for x in line.split())
            return {
                "ios": int(kv["ios"]),
                "iops": float(kv["iops"]),
                "mibs": float(kv["mibs"]),
                "lat_us": float(kv["lat_us"]),
                "sends": int(kv["sends"]),
            }
    raise BenchError(f"no result line: {out.strip()[-300:]}")


def one(
    exe: Path, port: int, wl: tuple[Any, ...], dur: float, a: argparse.Namespace, pids: list[int]
) -> dict[str, Any]:
    _key, _label, rw, size, qd, _tgt = wl
    cmd = [str(exe), "-a", "127.0.0.1", "-s", str(port), "-n", NQN, "-q", str(qd), "-p"]
    cmd += ["-o", str(size), "-w", rw, "-t", f"{dur:g}", "-l", "512", "-N", str(256 * 2048)]
    meter = Meter(pids, a.target_cpus + a.load_cpus)
    p = run_pinned(cmd, a.load_cpus, dur + 60)
    meter.stop()
    if p.rc != 0:
        raise BenchError(f"loader exit {p.rc}: {p.output.strip()[-300:]}")
    r = parse_line(p.output)
    r["target_cpu_us_per_io"] = meter.target_s / r["ios"] * 1e6 if r["ios"] else None
    r["load_cpu_pct"] = round(100 * p.cpu_s / max(dur, 1e-9)) if p.cpu_s is not None else None
    r["target_cpu_pct"] = round(100 * meter.target_s / max(dur, 1e-9))
    return r


def target(a: argparse.Namespace, rec: Recorder, tag: str, poll: str) -> tuple[Any, int]:
    bf = BlockfabricTarget(a.target_cpus[:1], a.target_cpus[:1], rec, tag, ["--poll-mode", poll])
    bf.start()
    bf.setup_malloc()
    trid = bf.setup_nvmf()
    port = int(trid.split("trsvcid:")[1].split()[0])
    return bf, port


def run(a: argparse.Namespace) -> dict[str, Any]:
    rec = Recorder()
    tmp = Path(tempfile.mkdtemp(prefix="bf-cload-"))
    res: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "duration_s": a.duration,
            "reps": a.reps,
            "cpus_target": a.cpus_target,
            "cpus_load": a.cpus_load,
            "argv": " ".join(["python", "-m", "bench.cload", *sys.argv[1:]]),
        },
        "rows": {},
    }
    try:
        exe = build(tmp)
        for poll in ("busy", "blocking"):
            bf, port = target(a, rec, "c" + poll[0], poll)
            try:
                # warm-up: a sequential read pass over the LUN's start
                one(exe, port, ("w", "w", "read", 131072, 16, None), 1.0, a, bf.pids)
                for wl in WORKLOADS:
                    n = a.reps if poll == "busy" else 1
                    reps = []
                    for i in range(n):
                        try:
                            r = one(exe, port, wl, a.duration, a, bf.pids)
                        except BenchError as e:
                            r = {"error": str(e)}
                        reps.append(r)
                        print(f"[cload {poll}] {wl[1]} rep {i + 1}/{n}: {r}", flush=True)
                    row = res["rows"].setdefault(wl[0], {"label": wl[1], "target": wl[5]})
                    row[poll] = reps
            finally:
                bf.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["commands"] = rec.commands
    return res


def _med(reps: list[dict[str, Any]], k: str) -> float | None:
    v = [r[k] for r in reps if r.get(k) is not None]
    return statistics.median(v) if v else None


def markdown(res: dict[str, Any]) -> str:
    m = res["meta"]
    lines = [
        "# blockfabric NVMe/TCP under a C load generator (per-command submission)",
        "",
        f"One run ({m['started']}), `{m['argv']}`: bench/nvmf_loadgen.c (C, one I/O queue, each "
        f"command PDU sent on its own as its slot frees, like the Linux and SPDK hosts; busy-polling "
        f"its socket) pinned to "
        f"CPU {m['cpus_load']}; blockfabric with one reactor on CPU {m['cpus_target']}, 256 MiB "
        f"malloc bdev, 512-byte blocks. busy: busy-polling reactor, {m['reps']} runs of "
        f"{m['duration_s']:g} s, median. blocking: a reactor that sleeps in epoll when idle, one "
        "run: its CPU-seconds (supervisor + reactor) per completed I/O are the cost of an I/O "
        "with no spinning counted, and 1e6 / that is what one core could serve at 100 %.",
        "",
        "| workload | IOPS (busy) | MiB/s | lat us | CPU t/l % | CPU us/IO (blocking) | "
        "IOPS (blocking) | one core at 100 % | SPDK ref | issue-15 target |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for key, row in res["rows"].items():
        b, s = row.get("busy", []), row.get("blocking", [])
        iops, mibs, lat = _med(b, "iops"), _med(b, "mibs"), _med(b, "lat_us")
        tc, lc = _med(b, "target_cpu_pct"), _med(b, "load_cpu_pct")
        us = _med(s, "target_cpu_us_per_io")
        biops = _med(s, "iops")
        cap = 1e6 / us if us else None
        tgt = row.get("target")
        tgt_s = "-"
        if tgt and iops:
            kind, goal = tgt
            have = iops if kind == "iops" else (mibs or 0)
            unit = "IOPS" if kind == "iops" else "MiB/s"
            tgt_s = f">= {goal:,} {unit}: " + ("met" if have >= goal else f"{have / goal:.2f}x")
        spdk = SPDK.get(key)
        lines.append(
            f"| {row['label']} | {f'{iops:,.0f}' if iops else 'failed'} | "
            f"{f'{mibs:,.0f}' if mibs else '-'} | {f'{lat:.1f}' if lat else '-'} | "
            f"{f'{tc:.0f}/{lc:.0f}' if tc is not None and lc is not None else '-'} | "
            f"{f'{us:.2f}' if us else '-'} | {f'{biops:,.0f}' if biops else '-'} | "
            f"{f'{cap:,.0f}' if cap else '-'} | {f'{spdk:,}' if spdk else '-'} | {tgt_s} |"
        )
    errs = [
        f"{row['label']} ({mode}): {r['error']}"
        for row in res["rows"].values()
        for mode in ("busy", "blocking")
        for r in row.get(mode, [])
        if r.get("error")
    ]
    if errs:
        lines += ["", "Failed runs:", *[f"- {e}" for e in errs]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_standalone("cload", parse_args(argv), run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
