"""The benchmark suite: ``python -m bench [--quick] [--only ...]``.

One invocation starts each system on this machine, one at a time, under the
same conditions (target pinned to --cpus-target, load pinned to --cpus-load,
256 MiB RAM-backed LUN, same duration, each measurement repeated --reps times,
median reported) and writes bench/results/*.json, bench/results/iops_vs_qd.png
and BENCHMARKS.md. A system that does not start or answer is recorded as
failed for its rows; the suite goes on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import report
from .systems import (
    CLEANUPS,
    ISCSI_PERF_WRITE_NOTE,
    WL,
    WORKLOADS,
    BenchError,
    BlockfabricTarget,
    Recorder,
    TgtTarget,
    Workload,
    core_mask,
    cpulist,
    parse_cpus,
    run_bf_perf,
    run_ceiling,
    run_iscsi_perf,
    start_pyspy,
    top_self,
)

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("ceiling", "iscsi", "nvmf", "scaling", "profile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="blockfabric vs tgt (iSCSI), blockfabric NVMe/TCP vs the loopback ceiling and "
        "SPDK reference figures, reactor scaling and a py-spy profile.",
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 repetition of 3 s runs")
    ap.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="SECTION",
        help=f"run only these sections (repeatable or comma list): {', '.join(SECTIONS)}",
    )
    ap.add_argument(
        "--duration", type=float, default=None, help="seconds per run (default 10; --quick 3)"
    )
    ap.add_argument(
        "--reps", type=int, default=None, help="repetitions per measurement (default 3; --quick 1)"
    )
    ap.add_argument("--cpus-target", default="0", help="CPUs for the target (default %(default)s)")
    ap.add_argument(
        "--cpus-load", default="1", help="CPUs for the load generator (default %(default)s)"
    )
    ap.add_argument(
        "--scaling-reactors",
        default="1,2",
        help="reactor counts for the scaling section (default %(default)s)",
    )
    ap.add_argument(
        "--scaling-workers",
        type=int,
        default=2,
        help="load workers (-P) for the scaling section (default %(default)s)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    ap.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md", help="report to write")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: re-render the tables, BENCHMARKS.md and the plot from OUT/suite.json",
    )
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="do not keep sections of an earlier run that this run does not repeat",
    )
    a = ap.parse_args(argv)
    only: list[str] = []
    for item in a.only or []:
        for s in item.split(","):
            s = s.strip()
            if s not in SECTIONS:
                ap.error(f"--only: unknown section {s!r} (choose from {', '.join(SECTIONS)})")
            only.append(s)
    a.sections = [s for s in SECTIONS if s in only] if only else list(SECTIONS)
    a.duration = a.duration if a.duration is not None else (3.0 if a.quick else 10.0)
    a.reps = a.reps if a.reps is not None else (1 if a.quick else 3)
    if a.duration < 1:
        ap.error("--duration must be >= 1 s")
    if a.reps < 1:
        ap.error("--reps must be >= 1")
    try:
        a.target_cpus = parse_cpus(a.cpus_target)
        a.load_cpus = parse_cpus(a.cpus_load)
        a.scaling_counts = sorted({int(x) for x in a.scaling_reactors.split(",") if x.strip()})
    except ValueError as e:
        ap.error(str(e))
    if set(a.target_cpus) & set(a.load_cpus):
        ap.error("--cpus-target and --cpus-load overlap")
    if not a.scaling_counts or min(a.scaling_counts) < 1:
        ap.error("--scaling-reactors: positive counts")
    return a


# ------------------------------------------------------------------ machine


def _cmd_out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    import psutil

    lscpu: dict[str, str] = {}
    for line in _cmd_out(["lscpu"]).splitlines():
        k, _, v = line.partition(":")
        lscpu[k.strip()] = v.strip()
    return {
        "cpu_model": lscpu.get("Model name", platform.processor() or "?"),
        "cpus": os.cpu_count(),
        "virtualization": (
            f"{lscpu['Hypervisor vendor']} guest" if "Hypervisor vendor" in lscpu else "bare metal"
        ),
        "kernel": platform.release(),
        "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "hostname": platform.node(),
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    def pkg(name: str) -> str:
        return _cmd_out(["dpkg-query", "-W", "-f", "${Version}", name]) or "not installed"

    try:
        bf = metadata.version("blockfabric")
    except metadata.PackageNotFoundError:
        bf = "?"
    rev = _cmd_out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _cmd_out(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    out = {
        "python": platform.python_version(),
        "blockfabric": f"{bf} (git {rev}{' + uncommitted changes' if dirty else ''})",
        "tgt (tgtd)": pkg("tgt"),
        "libiscsi (iscsi-perf)": pkg("libiscsi-bin"),
    }
    try:
        import matplotlib

        out["matplotlib"] = matplotlib.__version__
    except ImportError:
        pass
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out["py-spy"] = _cmd_out([spy, "--version"]) or "not installed"
    return out


# ------------------------------------------------------------------ rows


def _err(e: Exception) -> BenchError:
    return e if isinstance(e, BenchError) else BenchError(f"{type(e).__name__}: {e}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def failed_row(
    system: str, proto: str, wl: Workload, error: str, status: str = "failed", **extra: Any
) -> dict[str, Any]:
    return {
        "system": system,
        "proto": proto,
        "workload": wl.key,
        "label": wl.label,
        "status": status,
        "error": error,
        "reps": [],
        "median": {},
        **extra,
    }


def measure(
    system: str,
    proto: str,
    wl: Workload,
    reps: int,
    once: Callable[[], dict[str, Any]],
    alive: Callable[[], bool],
    **extra: Any,
) -> dict[str, Any]:
    row = failed_row(system, proto, wl, "", **extra)
    for i in range(reps):
        if not alive():
            row["reps"].append({"ok": False, "error": f"{system} target process died"})
            break
        try:
            rep = once()
        except Exception as e:  # BenchError or a surprise: record it, go on
            e = _err(e)
            rep = {"ok": False, "error": str(e)}
        row["reps"].append(rep)
        if rep.get("ok"):
            _log(
                f"  [{proto} {system}] {wl.label} rep {i + 1}/{reps}: {rep['iops']:,.0f} IOPS "
                f"{rep['mib_s']:,.1f} MiB/s, CPU target {rep['target_cpu_pct']:.0f}% "
                f"load {rep['load_cpu_pct']:.0f}% other {rep.get('other_cpu_pct', 0):.0f}%"
            )
        else:
            _log(f"  [{proto} {system}] {wl.label} rep {i + 1}/{reps}: FAILED: {rep.get('error')}")
    ok = [r for r in row["reps"] if r.get("ok")]
    row["median"] = report.median_of(row["reps"])
    if ok:
        row["status"], row["error"], row["lat_source"] = "ok", None, ok[0].get("lat_source", "")
    else:
        row["error"] = (
            row["reps"][0].get("error", "no repetition ran") if row["reps"] else "not run"
        )
    return row


# ------------------------------------------------------------------ sections


def section_ceiling(a: argparse.Namespace, rec: Recorder) -> dict[str, Any]:
    wl = Workload("stream128k", "iperf3, 128 KiB writes, 1 TCP stream", "write", 131072, 1)
    row = measure(
        "loopback",
        "tcp",
        wl,
        a.reps,
        lambda: run_ceiling(a.duration, a.target_cpus, a.load_cpus, rec),
        lambda: True,
    )
    return {
        "rows": [row],
        "notes": [
            f"iperf3 (C) over 127.0.0.1, one TCP stream of 128 KiB writes: server (receiver) "
            f"pinned to CPU {a.target_cpus[0]} like the targets, client (sender) pinned to CPU "
            f"{a.load_cpus[0]} like the load generators: the most one core pushes through "
            "loopback, the physical limit for 128 KiB transfers. CPU columns: receiver/sender."
        ],
    }


def section_iscsi(a: argparse.Namespace, rec: Recorder) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    notes = [
        ISCSI_PERF_WRITE_NOTE + " (the 4 KiB rand write row is n/a for both targets).",
        "Both targets are warmed up with a 128 KiB sequential read pass before measuring.",
    ]
    warm = Workload("warmup", "warm-up", "read", 131072, 16)
    bf1 = a.target_cpus[:1]

    def run_system(
        name: str, start: Callable[[], tuple[str, list[int], Callable[[], bool]]]
    ) -> None:
        _log(f"[iscsi] starting {name}")
        try:
            url, pids, alive = start()
        except Exception as e:  # BenchError or a surprise: record it, go on
            e = _err(e)
            _log(f"[iscsi] {name} failed to start: {e}")
            rows.extend(failed_row(name, "iscsi", wl, f"start/config: {e}") for wl in WORKLOADS)
            return
        run_iscsi_perf(url, warm, min(2.0, a.duration), a.load_cpus, pids, rec)
        for wl in WORKLOADS:
            if wl.rw not in ("randread", "read"):
                rows.append(
                    failed_row(name, "iscsi", wl, "iscsi-perf has no write mode", status="n/a")
                )
                continue
            rows.append(
                measure(
                    name,
                    "iscsi",
                    wl,
                    a.reps,
                    lambda wl=wl: run_iscsi_perf(url, wl, a.duration, a.load_cpus, pids, rec),
                    alive,
                )
            )

    tgt = TgtTarget(bf1, rec)

    def start_tgt() -> tuple[str, list[int], Callable[[], bool]]:
        tgt.start()
        return tgt.url, tgt.pids, tgt.alive

    try:
        run_system("tgt", start_tgt)
    finally:
        tgt.stop()

    bf = BlockfabricTarget(bf1, bf1, rec, "i")

    def start_bf() -> tuple[str, list[int], Callable[[], bool]]:
        bf.start()
        bf.setup_malloc()
        return bf.setup_iscsi(), bf.pids, bf.alive

    try:
        run_system("blockfabric", start_bf)
    finally:
        bf.stop()
    return {"rows": rows, "notes": notes}


def section_nvmf(
    a: argparse.Namespace, rec: Recorder, profile: bool, out_dir: Path
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    rows: list[dict[str, Any]] = []
    prof: dict[str, Any] | None = None
    run_rows = "nvmf" in a.sections
    bf1 = a.target_cpus[:1]
    # the adaptive (CPU per I/O) and batch runs: one each, half as long
    short = a.duration if a.quick else max(3.0, a.duration / 2)
    bf = BlockfabricTarget(bf1, bf1, rec, "n")
    _log("[nvmf] starting blockfabric")
    try:
        try:
            bf.start()
            bf.setup_malloc()
            trid = bf.setup_nvmf()
        except Exception as e:  # BenchError or a surprise: record it, go on
            e = _err(e)
            _log(f"[nvmf] blockfabric failed to start/configure: {e}")
            rows = [failed_row("blockfabric", "nvmf", wl, f"start/config: {e}") for wl in WORKLOADS]
            if profile:
                prof = {"status": "failed", "error": f"start/config: {e}"}
            return ({"rows": rows, "notes": []} if run_rows else None), prof
        # fault in every page of the bdev once (writes), as tgt's LUN is preallocated
        run_bf_perf(
            trid,
            Workload("warmup", "warm-up", "write", 131072, 16),
            min(2.0, a.duration),
            1,
            a.load_cpus,
            bf.pids,
            rec,
        )
        if run_rows:
            # the rows: per-command submission (as real hosts send), busy-polling
            # reactor; then the same per-command load against the adaptive reactor
            # (it sleeps when idle, so its CPU time is the cost of the I/O: CPU-s
            # per I/O), then the batch submission (gathered sends) for comparison
            for wl in WORKLOADS:
                rows.append(
                    measure(
                        "blockfabric",
                        "nvmf",
                        wl,
                        a.reps,
                        lambda wl=wl: run_bf_perf(
                            trid, wl, a.duration, 1, a.load_cpus, bf.pids, rec, busy_poll=True
                        ),
                        bf.alive,
                        submission="per-command",
                        poll="busy",
                    )
                )
            for wl in WORKLOADS:
                rows.append(
                    measure(
                        "blockfabric",
                        "nvmf",
                        wl,
                        1,
                        lambda wl=wl: run_bf_perf(
                            trid,
                            wl,
                            short,
                            1,
                            a.load_cpus,
                            bf.pids,
                            rec,
                            busy_poll=True,
                            submission="batch",
                        ),
                        bf.alive,
                        submission="batch",
                        poll="busy",
                    )
                )
            try:
                bf.rpc("framework_set_poll_mode", {"mode": "adaptive"})
            except BenchError as e:
                rows.extend(
                    failed_row(
                        "blockfabric",
                        "nvmf",
                        wl,
                        f"adaptive mode: {e}",
                        submission="per-command",
                        poll="adaptive",
                    )
                    for wl in WORKLOADS
                )
            else:
                for wl in WORKLOADS:
                    rows.append(
                        measure(
                            "blockfabric",
                            "nvmf",
                            wl,
                            1,
                            lambda wl=wl: run_bf_perf(
                                trid, wl, short, 1, a.load_cpus, bf.pids, rec, busy_poll=True
                            ),
                            bf.alive,
                            submission="per-command",
                            poll="adaptive",
                        )
                    )
                try:
                    bf.rpc("framework_set_poll_mode", {"mode": "busy"})
                except BenchError as e:
                    _log(f"[nvmf] back to busy polling failed: {e}")
        if profile:
            prof = run_profile(a, rec, bf, trid, out_dir)
    finally:
        bf.stop()
    notes = [
        "Load: `blockfabric perf --busy-poll --submission per-command` (spdk_nvme_perf-like "
        "NVMe/TCP host in Python, 1 worker) pinned to the load CPU: every command PDU is sent "
        "on its own as it is queued (one send per command, as the Linux and SPDK hosts do). "
        "IOPS, MiB/s, latency and CPU: the reactor busy-polls (`--poll-mode busy`), "
        f"{a.reps} repetition(s), median.",
        "CPU us/IO (adaptive): the same per-command load against the reactor in adaptive "
        "polling (it spins 200 us after the last event, then sleeps; its CPU time is what "
        "the I/O cost, spinning between close events included): target "
        "CPU-seconds (supervisor + reactor, over the whole perf run) / completed I/Os, "
        f"one {short:g} s run; its IOPS beside it.",
        "batch IOPS: `--submission batch` (the commands queued while one recv's completions "
        "are handled go out in one sendmsg: fewer target wakes than a real host causes), "
        f"busy reactor, one {short:g} s run.",
        "% of loopback ceiling (iperf3, same run) is given for the bandwidth case.",
    ]
    return ({"rows": rows, "notes": notes} if run_rows else None), prof


def run_profile(
    a: argparse.Namespace, rec: Recorder, bf: BlockfabricTarget, trid: str, out_dir: Path
) -> dict[str, Any]:
    wl = WL["rr4k_qd32"]
    raw_path = out_dir / "profile_raw.txt"
    raw_path.unlink(missing_ok=True)
    if not bf.reactor_pids:
        return {"status": "failed", "error": "no reactor pid"}
    _log(f"[profile] py-spy record of reactor pid {bf.reactor_pids[0]} during {wl.label}")
    try:
        rep = run_bf_perf(
            trid,
            wl,
            a.duration,
            1,
            a.load_cpus,
            bf.pids,
            rec,
            during=start_pyspy(bf.reactor_pids[0], a.duration, str(raw_path), a.load_cpus, rec),
            busy_poll=True,
        )
    except Exception as e:  # BenchError or a surprise: record it, go on
        e = _err(e)
        return {"status": "failed", "error": str(e)}
    if not raw_path.exists() or not raw_path.read_text().strip():
        return {"status": "failed", "error": "py-spy wrote no samples", "run": rep}
    total, top = top_self(raw_path.read_text())
    return {
        "status": "ok",
        "samples": total,
        "top": top,
        "run": rep,
        "raw": str(raw_path.name),
        "notes": [
            "py-spy record --nonblocking -F -f raw at 250 Hz on the reactor process "
            "during a separate (profiled, not measured) 4 KiB rand read QD32 run; "
            "self samples of the innermost frame, aggregated per function; load: "
            "`blockfabric perf --busy-poll --submission per-command` "
            f"(profiled run: {rep.get('iops') or 0:,.0f} IOPS). Raw stacks: "
            f"bench/results/{raw_path.name}."
        ],
    }


def section_scaling(a: argparse.Namespace, rec: Recorder) -> dict[str, Any]:
    wl = WL["rr4k_qd32"]
    rows: list[dict[str, Any]] = []
    # the load busy-polls only where each worker has a CPU of its own, for every row alike
    busy = len(a.load_cpus) >= a.scaling_workers and len(a.target_cpus) >= max(a.scaling_counts)
    notes = [
        f"Load: `blockfabric perf -P {a.scaling_workers}` on CPUs {cpulist(a.load_cpus)}, "
        + (
            "busy-polling (--busy-poll)."
            if busy
            else "blocking in poll (no --busy-poll: workers or reactors share CPUs)."
        )
    ]
    for n in a.scaling_counts:
        cores = list(a.target_cpus[:n])
        for c in a.load_cpus:  # not enough target CPUs: borrow load CPUs, and say so
            if len(cores) >= n:
                break
            cores.append(c)
        if len(cores) < n:
            rows.append(
                failed_row("blockfabric", "nvmf", wl, f"{n} reactors need {n} CPUs", reactors=n)
            )
            continue
        shared = bool(set(cores) & set(a.load_cpus))
        extra = {
            "reactors": n,
            "mask": core_mask(cores),
            "target_cpus": cpulist(cores),
            "load_cpus": cpulist(a.load_cpus),
            "workers": a.scaling_workers,
            "shared_cpus": shared,
        }
        if shared:
            notes.append(
                f"{n} reactors: reactor CPUs {cpulist(cores)} include load CPUs "
                f"{cpulist(a.load_cpus)}; busy-polling reactors and the load generator "
                "share those cores."
            )
        bf = BlockfabricTarget(cores, cores, rec, f"s{n}")
        _log(f"[scaling] blockfabric -m {core_mask(cores)}")
        try:
            try:
                bf.start()
                bf.setup_malloc()
                trid = bf.setup_nvmf()
            except Exception as e:  # BenchError or a surprise: record it, go on
                e = _err(e)
                rows.append(failed_row("blockfabric", "nvmf", wl, f"start/config: {e}", **extra))
                continue
            rows.append(
                measure(
                    "blockfabric",
                    "nvmf",
                    wl,
                    a.reps,
                    lambda trid=trid, bf=bf: run_bf_perf(
                        trid,
                        wl,
                        a.duration,
                        a.scaling_workers,
                        a.load_cpus,
                        bf.pids,
                        rec,
                        busy_poll=busy,
                    ),
                    bf.alive,
                    **extra,
                )
            )
        finally:
            bf.stop()
    return {"rows": rows, "notes": notes}


# ------------------------------------------------------------------ main


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(a: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": a.quick,
        "reps": a.reps,
        "duration_s": a.duration,
        "cpus_target": cpulist(a.target_cpus),
        "cpus_load": cpulist(a.load_cpus),
        "argv": shlex.join(["python", "-m", "bench", *argv]),
        "machine": machine_info(),
        "versions": versions(),
    }
    sections: dict[str, Any] = {}

    def done(name: str, sec: dict[str, Any] | None, rec: Recorder) -> None:
        if sec is None:
            return
        sec["meta"] = meta
        sec["commands"] = rec.commands
        sections[name] = sec
        (a.out / f"{name}.json").write_text(json.dumps(sec, indent=2))

    n_runs = (
        (a.reps + 1) * (len(WORKLOADS) if "nvmf" in a.sections else 0)
        + a.reps * (8 if "iscsi" in a.sections else 0)
        + a.reps * (len(a.scaling_counts) if "scaling" in a.sections else 0)
        + a.reps * (1 if "ceiling" in a.sections else 0)
    )
    _log(
        f"bench: sections {', '.join(a.sections)}; ~{n_runs} runs of {a.duration:g} s "
        f"(~{n_runs * (a.duration + 2) / 60:.0f} min); target CPUs {cpulist(a.target_cpus)}, "
        f"load CPUs {cpulist(a.load_cpus)}"
    )
    if "ceiling" in a.sections:
        rec = Recorder()
        _log("[ceiling] loopback stream")
        done("ceiling", section_ceiling(a, rec), rec)
    if "iscsi" in a.sections:
        rec = Recorder()
        done("iscsi", section_iscsi(a, rec), rec)
    if "nvmf" in a.sections or "profile" in a.sections:
        rec = Recorder()
        nv, prof = section_nvmf(a, rec, "profile" in a.sections, a.out)
        done("nvmf", nv, rec)
        if prof is not None:
            done("profile", prof, Recorder())
    if "scaling" in a.sections:
        rec = Recorder()
        done("scaling", section_scaling(a, rec), rec)
    meta["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    return {"meta": meta, "sections": sections}


def merge_previous(results: dict[str, Any], out: Path) -> dict[str, Any]:
    """Keep earlier sections this run did not repeat (each carries its own meta)."""
    prev_path = out / "suite.json"
    try:
        prev = json.loads(prev_path.read_text())
    except (OSError, ValueError):
        return results
    merged = dict(prev.get("sections", {}))
    merged.update(results["sections"])
    return {**results, "sections": {k: merged[k] for k in SECTIONS if k in merged}}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["--only", "cload"]:  # NVMe/TCP under a C load generator: bench/cload.py
        from . import cload

        return cload.main(argv[2:])
    if argv[:2] == ["--only", "rdma"]:  # the RDMA row runs in a QEMU guest: bench/rdma.py
        from . import rdma

        return rdma.main(argv[2:])
    if argv[:2] == ["--only", "multipath"]:  # a QEMU guest run too: bench/multipath.py
        from . import multipath

        return multipath.main(argv[2:])
    if argv[:2] == ["--only", "resv"]:  # NVMe reservations' cost: bench/resv.py
        from . import resv

        return resv.main(argv[2:])
    if argv[:2] == ["--only", "tls"]:  # TLS vs plain NVMe/TCP rows: bench/tls.py
        from . import tls

        return tls.main(argv[2:])
    if argv[:2] == ["--only", "auth"]:  # DH-HMAC-CHAP connect cost: bench/auth.py
        from . import auth

        return auth.main(argv[2:])
    if argv[:2] == ["--only", "trace"]:  # tracing off / one group / all: bench/trace.py
        from . import trace

        return trace.main(argv[2:])
    if argv[:2] == ["--only", "metrics"]:  # a standalone A/B: bench/metrics.py
        from . import metrics

        return metrics.main(argv[2:])
    if argv[:2] == ["--only", "rdma-host"]:  # our RDMA host, in a QEMU guest: bench/rdma_host.py
        from . import rdma_host

        return rdma_host.main(argv[2:])
    a = parse_args(argv)
    missing = [t for t in ("taskset",) if shutil.which(t) is None]
    if missing:
        print(f"bench: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    avail = os.sched_getaffinity(0)
    bad = [c for c in (*a.target_cpus, *a.load_cpus) if c not in avail]
    if bad:
        print(f"bench: CPUs {bad} are not available here (have {sorted(avail)})", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    if a.render_only:
        try:
            results = json.loads((a.out / "suite.json").read_text())
        except (OSError, ValueError) as e:
            print(f"bench: --render-only: {e}", file=sys.stderr)
            return 2
        return _write_outputs(a, results, list(results.get("sections", {})), t0)
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C must reach the cleanup even when started with SIGINT ignored (a background job)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        results = run(a, argv)
    except KeyboardInterrupt:
        print("bench: interrupted; stopped every process it started", file=sys.stderr)
        return 130
    finally:
        for stop in reversed(list(CLEANUPS)):
            try:
                stop()
            except Exception as e:  # keep stopping the others
                print(f"bench: cleanup: {e}", file=sys.stderr)
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)
    if not a.fresh:
        results = merge_previous(results, a.out)
    return _write_outputs(a, results, a.sections, t0)


def _write_outputs(
    a: argparse.Namespace, results: dict[str, Any], shown: list[str], t0: float
) -> int:
    a.out.mkdir(parents=True, exist_ok=True)
    results.pop("plot", None)
    png = a.out / "iops_vs_qd.png"
    try:
        if report.plot(results, png):
            results["plot"] = os.path.relpath(png, a.markdown.resolve().parent)
    except ImportError:
        print("bench: matplotlib missing: no plot (pip install -e '.[bench]')", file=sys.stderr)
    (a.out / "suite.json").write_text(json.dumps(results, indent=2))
    a.markdown.write_text(report.markdown_report(results))
    print(report.text_report(results, shown))
    print(
        f"\nwrote {a.out}/*.json, {png if 'plot' in results else 'no plot'}, {a.markdown} "
        f"({time.monotonic() - t0:.0f} s)"
    )
    return 0
