"""Cost of tracing on the NVMe/TCP data path: ``python -m bench.trace``.

One blockfabric target (busy-polling reactor on --cpus-target) exports a
malloc bdev over NVMe/TCP; `blockfabric perf` (1 worker, --busy-poll, on
--cpus-load) runs 4 KiB random reads at QD32 with the tracepoint groups set by
RPC before each run: off (the peer), nvmf_tcp on, all groups on. The rows
are interleaved over --reps rounds (each round starting at the next row) so
that every row sees the same drift; the ratio is the row's median IOPS over
the median IOPS with tracing off, in the same run and on the same target.

A micro-benchmark in this process gives the cost of one hook statement
(``if TRACE.mask & G: TRACE.rec(...)``): disabled (the one int test the data
path pays when the group is off) against an empty statement, and enabled
(one record into a ring). Writes bench/results/trace.md and trace.json
(BENCHMARKS.md includes trace.md, see bench/report.py).

``--callgrind`` adds instructions per 4 KiB read command of the sans-I/O
NVMe/TCP path (the in-process fake target of tests/transports/nvmf, one
command fed at a time, its response taken), counted by callgrind as the
difference of a 2000- and a 12000-command run: tracing off and nvmf_tcp on in
this tree, and off in ``--base DIR`` (a checkout without the tracepoints, e.g.
``git archive <commit> | tar -x -C DIR/blockfabric``; DIR is put on
PYTHONPATH so that ``import blockfabric`` finds it). Independent of the
machine's load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import timeit
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
NQN = "nqn.2016-06.io.blockfabric:trace"
MIB = 1 << 20
BLOCK = 512
# (key, label, groups enabled by trace_enable_tpoint_group; none: all off)
ROWS: list[tuple[str, str, list[str]]] = [
    ("off", "tracing off (peer)", []),
    ("nvmf_tcp", "nvmf_tcp group on", ["nvmf_tcp"]),
    ("all", "all groups on", ["all"]),
]
WL = Workload("rr4k_qd32", "4 KiB rand read QD32", "randread", 4096, 32)
# disabled hooks a 4 KiB read passes on the NVMe/TCP fast path: the command
# (tcp.py), bdev read (bdevs/base.py), completion (qpair.py), C2H data (tcp.py),
# and the socket flush (driver.py), at most one per read
HOOKS_PER_READ = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.trace", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="rounds over all rows (default 3)")
    ap.add_argument("--size-mb", type=int, default=64, help="size of the bdev (default 64)")
    ap.add_argument("--cpus-target", default="0")
    ap.add_argument("--cpus-load", default="1")
    ap.add_argument("--micro-only", action="store_true", help="only the hook micro-benchmark")
    ap.add_argument("--callgrind", action="store_true", help="instructions per command too")
    ap.add_argument("--base", type=Path, default=None, help="--callgrind: a tree without tracing")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    a.target_cpus = parse_cpus(a.cpus_target)
    a.load_cpus = parse_cpus(a.cpus_load)
    return a


def micro(number: int = 2_000_000) -> dict[str, float]:
    """ns per statement: empty, disabled hook, enabled hook (a private ring)."""
    import os

    from blockfabric.shm import trace as tr
    from blockfabric.shm.segment import SharedSegment

    inst = f"benchtrace{os.getpid()}"
    seg = tr.create_segment(inst, 1, 1 << 16)
    t = tr.Tracer()
    try:
        t.attach(seg, 0)
        env = {"TRACE": t, "G": tr.G_NVMF_TCP, "TP": tr.TP_NVMF_TCP | tr.REQ_NEW}
        stmt = "if TRACE.mask & G: TRACE.rec(TP, 7, 12, 4096, 4096, 2)"

        def best(s: str) -> float:
            return min(timeit.repeat(s, globals=env, number=number, repeat=5)) / number * 1e9

        out = {"empty_ns": best("pass")}
        t.mask = 0
        out["disabled_ns"] = best(stmt)
        t.mask = tr.ALL_GROUPS_MASK
        out["enabled_ns"] = best(stmt)
        out["disabled_cost_ns"] = out["disabled_ns"] - out["empty_ns"]
        return out
    finally:
        t.detach()
        if isinstance(seg, SharedSegment):
            seg.unlink()


def percmd_child(tree: str, n: int, mode: str) -> None:
    """Feed ``n`` 4 KiB read capsules to one in-process I/O queue pair."""
    import types

    sys.path.insert(0, os.path.join(tree, "tests"))
    sys.path.insert(0, os.path.join(tree, "tests", "transports", "nvmf"))
    import conftest as c  # the fake target of the NVMe-oF tests
    from test_nvmf_tcp_fastpath import Io, _capsule

    from blockfabric.transports.nvmf import spec

    seg = None
    if mode == "on":
        from blockfabric.shm import trace as tr

        seg = tr.create_segment(f"percmd{os.getpid()}", 1, 1 << 16, tr.G_NVMF_TCP | tr.G_NVMF)
        tr.TRACE.attach(seg, 0)
    h = types.SimpleNamespace(
        FakeRpc=c.FakeRpc, setup_target=c.setup_target, HOSTID=c.HOSTID, SUBNQN=c.SUBNQN,
        HOSTNQN=c.HOSTNQN,
    )  # fmt: skip
    qp = Io(h).qp
    caps = [_capsule(spec.IO_READ, cid, 1, (cid % 56, 0, 7), None) for cid in range(32)]
    feed, take = qp.feed_input, qp.take_output
    for i in range(n):
        feed(caps[i & 31])
        assert take(), "no response"
    if seg is not None:
        tr.TRACE.detach()
        seg.unlink()
    os._exit(0)  # the fake target's threads need no orderly end here


def callgrind(base: Path | None) -> dict[str, float]:
    """Instructions per command: {"base_off"?, "off", "nvmf_tcp"}."""
    out: dict[str, float] = {}
    runs = [("off", ROOT, "off"), ("nvmf_tcp", ROOT, "on")]
    if base is not None:
        runs.insert(0, ("base_off", base / "blockfabric", "off"))
    for key, tree, mode in runs:
        ir = []
        for n in (2000, 12000):
            with tempfile.NamedTemporaryFile(prefix="cg.", delete=False) as f:
                path = f.name
            env = {**os.environ, "PYTHONPATH": str(Path(tree).parent)}
            cmd = [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={path}",
                sys.executable, "-m", "bench.trace", "--percmd-child", str(tree), str(n), mode,
            ]  # fmt: skip
            subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, timeout=3600)
            m = re.search(r"^summary:\s*(\d+)", Path(path).read_text(), re.M)
            os.unlink(path)
            assert m, f"no callgrind summary for {key}"
            ir.append(int(m.group(1)))
        out[key] = (ir[1] - ir[0]) / 10000
        print(f"[trace] callgrind {key}: {out[key]:,.0f} instructions per command", flush=True)
    return out


def build(bf: BlockfabricTarget, size_mb: int) -> str:
    port = free_port()
    bf.rpc("nvmf_create_transport", {"trtype": "TCP"})
    bf.rpc(
        "bdev_malloc_create",
        {"name": "Malloc0", "num_blocks": size_mb * MIB // BLOCK, "block_size": BLOCK},
    )
    bf.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    bf.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
    addr = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    bf.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": addr})
    return f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"


def set_groups(bf: BlockfabricTarget, groups: list[str]) -> str:
    bf.rpc("trace_disable_tpoint_group", {"name": "all"})
    for g in groups:
        bf.rpc("trace_enable_tpoint_group", {"name": g})
    return str(bf.rpc("trace_get_tpoint_group_mask", record=False)["tpoint_group_mask"])


def run(a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "duration_s": a.duration,
            "reps": a.reps,
            "size_mb": a.size_mb,
            "cpus_target": a.cpus_target,
            "cpus_load": a.cpus_load,
            "python": platform.python_version(),
            "argv": " ".join(["python", "-m", "bench", "--only", "trace", *a.argv]),
        },
        "micro": micro(),
        "rows": {},
    }
    print(f"[trace] micro: {res['micro']}", flush=True)
    if a.callgrind:
        res["callgrind"] = callgrind(a.base)
    if a.micro_only:
        return res
    rec = Recorder()
    bf = BlockfabricTarget(a.target_cpus[:1], a.target_cpus[:1], rec, "t")
    try:
        bf.start()
        trid = build(bf, a.size_mb)
        warm = Workload("warmup", "warm-up", "write", 131072, 16)
        run_bf_perf(trid, warm, 2.0, 1, a.load_cpus, bf.pids, rec)
        reps: dict[str, list[dict[str, Any]]] = {r[0]: [] for r in ROWS}
        masks: dict[str, str] = {}
        for i in range(a.reps):
            k = i % len(ROWS)
            for key, label, groups in ROWS[k:] + ROWS[:k]:
                masks[key] = set_groups(bf, groups)
                rep = run_bf_perf(
                    trid, WL, a.duration, 1, a.load_cpus, bf.pids, rec, busy_poll=True
                )
                reps[key].append(rep)
                print(
                    f"[trace] {label} rep {i + 1}/{a.reps}: "
                    + (
                        f"{rep['iops']:,.0f} IOPS"
                        if rep.get("ok")
                        else f"FAILED {rep.get('error')}"
                    ),
                    flush=True,
                )
        set_groups(bf, [])
        for key, label, _g in ROWS:
            ok = [r for r in reps[key] if r.get("ok")]
            res["rows"][key] = {
                "label": label,
                "mask": masks.get(key),
                "iops_median": statistics.median(r["iops"] for r in ok) if ok else None,
                "lat_us_median": statistics.median(r["lat_us"] for r in ok if r.get("lat_us"))
                if ok
                else None,
                "reps": [r.get("iops") for r in reps[key]],
                "errors": [r.get("error") for r in reps[key] if not r.get("ok")],
            }
    finally:
        bf.stop()
    res["commands"] = rec.commands
    return res


def markdown(res: dict[str, Any]) -> str:
    m = res["meta"]
    mi = res["micro"]
    lines = [
        "# Tracing: cost on the NVMe/TCP data path",
        "",
        f"Hook micro-benchmark (this process, best of 5): an empty statement {mi['empty_ns']:.1f} ns; "
        f"a hook whose group is off {mi['disabled_ns']:.1f} ns (+{mi['disabled_cost_ns']:.1f} ns: "
        f"one attribute load and an int test, no call); a hook whose group is on "
        f"{mi['enabled_ns']:.0f} ns (one 64-byte record and the ring's write index).",
        "",
    ]
    cg = res.get("callgrind")
    if cg:
        off = cg["off"]
        parts = []
        if "base_off" in cg:
            parts.append(
                f"without the tracepoints {cg['base_off']:,.0f}, with them and every group off "
                f"{off:,.0f} ({off / cg['base_off']:.3f}x)"
            )
        else:
            parts.append(f"every group off {off:,.0f}")
        parts.append(f"nvmf_tcp on {cg['nvmf_tcp']:,.0f} ({cg['nvmf_tcp'] / off:.2f}x of off)")
        lines += [
            "Callgrind, instructions per 4 KiB read command of the sans-I/O NVMe/TCP path "
            "(in-process queue pair, one command at a time): " + "; ".join(parts) + ".",
            "",
        ]
    if res["rows"]:
        base = res["rows"].get("off", {}).get("iops_median")
        lines += [
            f"One run ({m['started']}): `blockfabric perf` 1 worker `--busy-poll` on CPU "
            f"{m['cpus_load']}, target 1 busy-polling reactor on CPU {m['cpus_target']}, "
            f"{m['size_mb']} MiB malloc bdev, {m['duration_s']:g} s per run, {m['reps']} "
            "interleaved rounds, median; the groups are switched by RPC on the same target "
            "between runs. Ratio = the row's median IOPS / the median IOPS with tracing off in "
            "the same run. Command: `" + m["argv"] + "`.",
            "",
            f"| tracing | mask | {WL.label} IOPS | ratio | latency (us) |",
            "|---|---|---:|---:|---:|",
        ]
        for row in res["rows"].values():
            v = row.get("iops_median")
            lat = row.get("lat_us_median")
            lines.append(
                f"| {row['label']} | {row.get('mask')} | {f'{v:,.0f}' if v else 'failed'} | "
                f"{f'{v / base:.2f}' if v and base else '-'} | {f'{lat:.1f}' if lat else '-'} |"
            )
        if base:
            per_io_ns = 1e9 / base
            hooks = HOOKS_PER_READ * max(0.0, mi["disabled_cost_ns"])
            lines += [
                "",
                f"Disabled hooks per read: {HOOKS_PER_READ} x {mi['disabled_cost_ns']:.1f} ns = "
                f"{hooks:.0f} ns of the {per_io_ns / 1000:.1f} us of reactor time each read takes "
                f"at the off row's IOPS ({100 * hooks / per_io_ns:.2f} %).",
            ]
        lines += [
            "",
            "With nvmf_tcp on, a 4 KiB read records 6 events (PDU, command, bdev submit, "
            "bdev done, data; its C2H data carries the completion, so no response capsule) plus "
            "one per socket flush; all groups add the bdev layer's start/done and the "
            "controller/connection events.",
        ]
        errs = [f"{r['label']}: {e}" for r in res["rows"].values() for e in r.get("errors", [])]
        if errs:
            lines += ["", "Failed repetitions:", *[f"- {e}" for e in errs]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--percmd-child"]:
        percmd_child(argv[1], int(argv[2]), argv[3])
        return 0
    return run_standalone("trace", parse_args(argv), run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
