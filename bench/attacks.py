"""Attack benchmark: a well-behaved host's IOPS during each attack / alone.

``python -m bench.attacks [--only NAME,...] [--alone S] [--attack S] [--quick]``

For every attack of tests/adversarial (the same attack clients, the same
well-behaved host: one process doing QD1 4 KiB write + read-back + compare
over NVMe/TCP or iSCSI), a fresh daemon (one reactor, 64 MiB malloc bdev,
64 MiB buffer pool) runs the host alone for ``--alone`` seconds and then next
to the attack for ``--attack`` seconds. Reported per attack: IOPS alone,
IOPS during the attack, their ratio, the longest stall of the host, the
largest private-RSS growth of a reactor (and of the supervisor for the RPC
floods), whether the target survived, and the pool's buffers in use before
and after. Writes bench/results/attacks.md and attacks.json.

This is a benchmark, not a test: nothing is asserted; a target that dies
under an attack is reported as such (ratio 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests" / "adversarial"))
sys.path.insert(0, str(ROOT / "tests"))

import attackkit as K  # noqa: E402
from bftest import BIN, Daemon  # noqa: E402

# name -> (attack factory, scenario keyword arguments)
ATTACKS: dict[str, tuple[Callable[[K.Target], K.Attack], dict[str, Any]]] = {
    "nvme_getlog_identify_bomb": (K.LogPageBomb, {}),
    "nvme_idle_1000": (lambda t: K.IdleConnections(t, "nvme", 1000), {}),
    "nvme_slowloris": (lambda t: K.SlowLoris(t, 40), {}),
    "nvme_r2t_never_data": (K.R2tNoData, {}),
    "nvme_never_reads": (K.NeverReadNvme, {}),
    "iscsi_immediate_flood": (K.ImmediateFlood, {}),
    "iscsi_oversized_login": (K.OversizedLogin, {}),
    "iscsi_r2t_never_data": (K.R2tNoDataIscsi, {}),
    "iscsi_never_reads": (K.NeverReadIscsi, {}),
    "iscsi_idle_1000": (lambda t: K.IdleConnections(t, "iscsi", 1000), {}),
    "rpc_zmq_flood": (lambda t: K.ZmqRpcFlood(t, 200), {"watch_supervisor": True}),
    "rpc_spdk_unix_flood": (lambda t: K.SpdkRpcFlood(t, 200), {"watch_supervisor": True}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", default=[], help="comma-separated attack names")
    ap.add_argument("--alone", type=float, default=None, help="seconds of the host alone (3)")
    ap.add_argument("--attack", type=float, default=None, help="seconds under attack (5)")
    ap.add_argument("--quick", action="store_true", help="1.5 s alone, 2 s attack (a smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--list", action="store_true", help="print the attack names and exit")
    a = ap.parse_args(argv)
    names = [n for o in a.only for n in o.split(",") if n]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        ap.error(f"unknown attack(s) {', '.join(unknown)} (known: {', '.join(ATTACKS)})")
    a.names = [n for n in ATTACKS if n in names] if names else list(ATTACKS)
    a.alone = a.alone if a.alone is not None else (1.5 if a.quick else 3.0)
    a.attack = a.attack if a.attack is not None else (2.0 if a.quick else 5.0)
    if a.alone < 1 or a.attack < 1:
        ap.error("--alone and --attack need at least 1 second")
    return a


def _cleanup(d: Daemon) -> None:
    """Stop ``d``; if it does not go, kill its supervisor and clean its shared memory."""
    try:
        d.stop()
    except Exception:
        pass
    from blockfabric.shm.lock import InstanceLock

    old = os.environ.get("BLOCKFABRIC_RUN_DIR")
    os.environ["BLOCKFABRIC_RUN_DIR"] = str(d.run_dir)
    try:
        pid = InstanceLock.holder_pid(d.name) if InstanceLock.is_held(d.name) else None
    finally:
        if old is None:
            os.environ.pop("BLOCKFABRIC_RUN_DIR", None)
        else:
            os.environ["BLOCKFABRIC_RUN_DIR"] = old
    if pid:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    subprocess.run([*BIN, "shm", "cleanup", "--name", d.name], env=d.env, capture_output=True)


def run_one(name: str, alone: float, attack_s: float, seq: int) -> dict[str, Any]:
    make, kw = ATTACKS[name]
    run_dir = Path(f"/tmp/bf-atk-{os.getpid()}-{seq}")
    run_dir.mkdir(mode=0o700)
    d = Daemon(run_dir, f"atk{os.getpid()}x{seq}", "0x1")
    try:
        t = K.start_target(d)
        o = K.run_scenario(t, make(t), alone_s=alone, attack_s=attack_s, **kw)
        print(o.line(), flush=True)
        return {
            "attack": name,
            "host": o.proto,
            "iops_alone": round(o.iops_alone),
            "iops_attack": round(o.iops_attack),
            "ratio": round(o.ratio, 3) if o.alive else 0.0,
            "longest_stall_s": round(o.max_gap_s, 2),
            "host_errors": o.good_errors,
            "rss_growth_mib": round(o.growth_mib, 1),
            "rss_allowance_mib": o.allowance_mib,
            "target_alive": o.alive and not o.killed,
            "pool_in_use_before": o.pool_base,
            "pool_in_use_after": o.pool_after,
            "attack_report": o.report,
            "extra": o.extra,
        }
    except Exception as e:
        print(f"[{name}] failed: {type(e).__name__}: {e}", flush=True)
        return {"attack": name, "error": f"{type(e).__name__}: {e}", "ratio": 0.0}
    finally:
        _cleanup(d)
        shutil.rmtree(run_dir, ignore_errors=True)


def render(rows: list[dict[str, Any]], a: argparse.Namespace, meta: dict[str, Any]) -> str:
    out = [
        "# Attack benchmark: a well-behaved host next to each attack",
        "",
        f"`python -m bench.attacks` on {meta['host']}, {meta['date']}: one reactor, "
        f"64 MiB malloc bdev, `-s {K.POOL_MB}` buffer pool; the host (its own process) does QD1 "
        f"4 KiB write + read-back + compare, {a.alone:g} s alone, then {a.attack:g} s next to the "
        "attack. Ratio = IOPS during the attack / IOPS alone (same run, same daemon). RSS: the "
        "largest private-RSS growth of a reactor (supervisor too for RPC floods) over its "
        "baseline. Pool: buffers in use (`iobuf_get_stats`) before the attack and once the "
        "attackers left (`-`: the daemon has no such RPC).",
        "",
        "| attack | host | IOPS alone | IOPS during | ratio | longest stall | RSS growth (bound) "
        "| target | pool before / after |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]

    def na(v: Any) -> str:
        return "-" if v is None else str(v)

    for r in rows:
        if "error" in r:
            out.append(f"| {r['attack']} | | | | 0 | | | run failed: {r['error']} | |")
            continue
        alive = "alive" if r["target_alive"] else "**died**"
        if r["host_errors"]:
            alive += f"; host error: {r['host_errors'][0][:60]}"
        out.append(
            f"| {r['attack']} | {r['host']} | {r['iops_alone']:,} | {r['iops_attack']:,} "
            f"| {r['ratio']:.2f} | {r['longest_stall_s']:.2f} s "
            f"| {r['rss_growth_mib']:.0f} MiB ({r['rss_allowance_mib']:.0f}) | {alive} "
            f"| {na(r['pool_in_use_before'])} / {na(r['pool_in_use_after'])} |"
        )
    out += [
        "",
        "On a shared 2-vCPU machine the host, the attackers and the reactor compete for two "
        "cores, so a ratio well below 1 is expected for CPU-bound attacks (floods); a ratio "
        "near 0 with a long stall means the host was starved.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.list:
        print("\n".join(ATTACKS))
        return 0
    rows = [run_one(n, a.alone, a.attack, i) for i, n in enumerate(a.names)]
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "alone_s": a.alone,
        "attack_s": a.attack,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "attacks.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    md = render(rows, a, meta)
    (a.out / "attacks.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
