"""Ceph RBD rows (issue 14 item 5): blockfabric NVMe/TCP on an RBD image vs
Ceph's own ``rbd bench`` on the same image, in the same run.

``python -m bench.rbd [--duration S] [--reps N] [--quick] [--cpus-target C] [--cpus-load C]``

starts a private single-node Ceph (scripts/ceph-single-node.sh: one mon, one
bluestore OSD on a sparse file, 127.0.0.1), creates a 256 MiB image and fills
it (so reads hit written objects), then for each workload (4 KiB random read
and write at QD32, 128 KiB sequential read and write at QD16):

* the peer: ``rbd bench`` (librbd alone, --io-threads = the queue depth),
  pinned to the load CPUs; it has no time limit, so a short calibration run
  sizes ``--io-total`` to about the duration;
* blockfabric: one reactor (adaptive polling by default: a busy-polling
  reactor takes a whole CPU the Ceph daemons need and holds the GIL that
  librbd's completion threads wait for; ``--poll-mode busy`` to compare) with
  ``bdev_rbd_create`` on the same image exported over NVMe/TCP, loaded by
  ``blockfabric perf`` on the load CPUs.

The ratio is blockfabric / rbd bench (1.0: the target adds nothing to what
librbd achieves). The Ceph daemons run unpinned and serve both. Writes
bench/results/rbd.md and rbd.json; BENCHMARKS.md carries rbd.md as a section
(bench/report.py STANDALONE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .suite import measure
from .systems import (
    CLEANUPS,
    BlockfabricTarget,
    Recorder,
    Workload,
    cpulist,
    parse_cpus,
    run_bf_perf,
    run_pinned,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCRIPT = ROOT / "scripts" / "ceph-single-node.sh"
POOL, IMAGE, IMAGE_MB = "rbd", "bench", 256

WORKLOADS = [
    Workload("rr4k_qd32", "4 KiB rand read QD32", "randread", 4096, 32),
    Workload("rw4k_qd32", "4 KiB rand write QD32", "randwrite", 4096, 32),
    Workload("sr128k_qd16", "128 KiB seq read QD16", "read", 131072, 16),
    Workload("sw128k_qd16", "128 KiB seq write QD16", "write", 131072, 16),
]
_RBD_KIND = {
    "randread": ("read", "rand"),
    "randwrite": ("write", "rand"),
    "read": ("read", "seq"),
    "write": ("write", "seq"),
}
_OPS_RE = re.compile(r"elapsed:\s*([\d.]+)\s+ops:\s*(\d+)\s+ops/sec:\s*([\d.]+)")


class Ceph:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bfceph-bench-"))
        self.conf = self.dir / "ceph.conf"
        self.keyring = self.dir / "keyring"

    def _sh(self, *args: str, timeout: float = 300) -> None:
        p = subprocess.run(
            ["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
        )
        if p.returncode:
            raise RuntimeError(f"ceph-single-node.sh {args[0]}: {p.stderr.strip()}")

    def up(self) -> None:
        CLEANUPS.append(self.destroy)
        self._sh("up", str(self.dir), POOL, IMAGE, str(IMAGE_MB))

    def destroy(self) -> None:
        if self.destroy in CLEANUPS:
            CLEANUPS.remove(self.destroy)
        self._sh("destroy", str(self.dir))
        shutil.rmtree(self.dir, ignore_errors=True)

    def bench_cmd(self, wl: Workload, total: int) -> list[str]:
        io_type, pattern = _RBD_KIND[wl.rw]
        return [
            "rbd",
            "-c",
            str(self.conf),
            "bench",
            "--io-type",
            io_type,
            "--io-size",
            str(wl.size),
            "--io-threads",
            str(wl.qd),
            "--io-total",
            str(total),
            "--io-pattern",
            pattern,
            f"{POOL}/{IMAGE}",
        ]


def rbd_bench_once(
    ceph: Ceph, wl: Workload, duration: float, load_cpus: list[int], rec: Recorder
) -> dict[str, Any]:
    """One ``rbd bench`` run of about ``duration`` seconds (calibrated)."""
    probe = max(wl.size * wl.qd * 64, 8 << 20)
    p = run_pinned(ceph.bench_cmd(wl, probe), load_cpus, 120)
    m = _OPS_RE.findall(p.output)
    if p.rc or not m:
        return {"ok": False, "error": f"rbd bench exit {p.rc}: {p.output[-300:]}"}
    rate = float(m[-1][2])
    total = int(min(max(rate * duration * wl.size, probe), 8 << 30))
    total -= total % wl.size
    cmd = ceph.bench_cmd(wl, total)
    p = run_pinned(cmd, load_cpus, duration * 6 + 120, rec)
    m = _OPS_RE.findall(p.output)
    if p.rc or not m:
        return {"ok": False, "error": f"rbd bench exit {p.rc}: {p.output[-300:]}"}
    ops = int(m[-1][1])
    iops = ops / max(p.wall_s, 1e-9)
    return {
        "ok": True,
        "error": None,
        "iops": iops,
        "mib_s": iops * wl.size / (1 << 20),
        "lat_us": wl.qd / iops * 1e6,
        "lat_source": "derived",
        "target_cpu_pct": 0.0,
        "load_cpu_pct": round(100.0 * p.cpu_s / max(p.wall_s, 1e-9), 1),
        "other_cpu_pct": 0.0,
        "wall_s": round(p.wall_s, 2),
        "command": " ".join(cmd),
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    rec = Recorder()
    res: dict[str, Any] = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "duration_s": a.duration,
        "reps": a.reps,
        "cpus_target": cpulist(a.target_cpus),
        "cpus_load": cpulist(a.load_cpus),
        "poll_mode": a.poll_mode,
        "ceph": _ceph_version(),
        "rows": [],
    }
    ceph = Ceph()
    bf = BlockfabricTarget(a.target_cpus[:1], a.target_cpus[:1], rec, "rbd")
    try:
        ceph.up()
        rec.add(f"scripts/ceph-single-node.sh up DIR {POOL} {IMAGE} {IMAGE_MB}")
        fill = Workload("fill", "fill", "write", 131072, 16)
        p = run_pinned(ceph.bench_cmd(fill, IMAGE_MB << 20), a.load_cpus, 600, rec)
        if p.rc:
            raise RuntimeError(f"filling the image failed: {p.output[-300:]}")
        bf.start()
        if a.poll_mode != "busy":
            bf.rpc("framework_set_poll_mode", {"mode": a.poll_mode})
        bf.rpc(
            "bdev_rbd_register_cluster",
            {
                "name": "bench",
                "user_id": "admin",
                "config_file": str(ceph.conf),
                "key_file": str(ceph.keyring),
            },
        )
        bf.rpc(
            "bdev_rbd_create",
            {
                "name": "Rbd0",
                "pool_name": POOL,
                "rbd_name": IMAGE,
                "block_size": 4096,
                "cluster_name": "bench",
            },
        )
        trid = bf.setup_nvmf(bdev="Rbd0")
        for wl in WORKLOADS:
            peer = measure(
                "rbd bench",
                "librbd",
                wl,
                a.reps,
                lambda wl=wl: rbd_bench_once(ceph, wl, a.duration, a.load_cpus, rec),
                lambda: True,
            )
            mine = measure(
                "blockfabric",
                "nvmf",
                wl,
                a.reps,
                lambda wl=wl: run_bf_perf(
                    trid, wl, a.duration, 1, a.load_cpus, bf.pids, rec, busy_poll=True
                ),
                bf.alive,
            )
            res["rows"] += [peer, mine]
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        bf.stop()
        try:
            ceph.destroy()
        except Exception as e:
            res.setdefault("error", f"ceph cleanup: {e}")
    res["commands"] = rec.commands
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return res


def _ceph_version() -> str:
    try:
        out = subprocess.run(["ceph", "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def _fmt(v: float | None, f: str = ",.0f") -> str:
    return "-" if v is None else format(v, f)


def render(res: dict[str, Any]) -> str:
    lines = [
        "# Ceph RBD: blockfabric NVMe/TCP on an RBD image vs `rbd bench` (same run)",
        "",
        f"`python -m bench.rbd` on {res['machine']} ({res['cpus']} CPUs), {res['started']}, "
        f"{res['ceph']}; {res['reps']} repetition(s) of {res['duration_s']:g} s, medians. "
        f"blockfabric: 1 reactor ({res.get('poll_mode', 'busy')} polling) on CPU "
        f"{res['cpus_target']}; load "
        f"(`rbd bench` / `blockfabric perf`) on CPU {res['cpus_load']}; the single-node Ceph "
        "(1 mon, 1 bluestore OSD on a sparse file) unpinned, serving both. One 256 MiB image, "
        "filled first; librbd defaults (rbd_cache on) on both sides.",
        "",
    ]
    if res.get("error"):
        lines += [f"**The run failed: {res['error']}**", ""]
    by = {(r["system"], r["workload"]): r for r in res["rows"]}
    lines += [
        "| workload | rbd bench IOPS | rbd bench MiB/s | blockfabric IOPS | blockfabric MiB/s "
        "| blockfabric lat us | ratio (bf / rbd bench) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for wl in WORKLOADS:
        p = by.get(("rbd bench", wl.key))
        b = by.get(("blockfabric", wl.key))
        pm = (p or {}).get("median", {})
        bm = (b or {}).get("median", {})
        pi, bi = pm.get("iops"), bm.get("iops")
        ratio = f"{bi / pi:.2f}" if pi and bi else "-"
        err = ""
        for r in (p, b):
            if r and r.get("status") != "ok":
                err += f" ({r['system']} failed: {r.get('error')})"
        lines.append(
            f"| {wl.label} | {_fmt(pi)} | {_fmt(pm.get('mib_s'), ',.1f')} | {_fmt(bi)} "
            f"| {_fmt(bm.get('mib_s'), ',.1f')} | {_fmt(bm.get('lat_us'))} | {ratio}{err} |"
        )
    lines += [
        "",
        "The machine's CPUs are shared with other work during such runs; absolute numbers "
        "are noisy, the ratio of the same run is the figure to read.",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in res.get("commands", [])],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rbd", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition of 3 s")
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--cpus-target", default="0")
    ap.add_argument("--cpus-load", default="1")
    ap.add_argument(
        "--poll-mode",
        choices=("adaptive", "busy"),
        default="adaptive",
        help="the reactor's polling (default adaptive: a busy-polling reactor takes a CPU "
        "the Ceph daemons need, and holds the GIL librbd's completion threads wait for)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    a.duration = a.duration or (3.0 if a.quick else 10.0)
    a.reps = a.reps or (1 if a.quick else 3)
    a.target_cpus = parse_cpus(a.cpus_target)
    a.load_cpus = parse_cpus(a.cpus_load)
    if shutil.which("rbd") is None or shutil.which("ceph-osd") is None:
        print("bench.rbd: Ceph is not installed (scripts/install-deps.sh rbd)", file=sys.stderr)
        return 2
    try:
        res = run(a)
    finally:
        for stop in reversed(list(CLEANUPS)):
            try:
                stop()
            except Exception as e:
                print(f"bench.rbd: cleanup: {e}", file=sys.stderr)
    md = render(res)
    print(md)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "rbd.json").write_text(json.dumps(res, indent=2))
    (a.out / "rbd.md").write_text(md)
    print(f"wrote {a.out / 'rbd.md'}")
    return 0 if not res.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
