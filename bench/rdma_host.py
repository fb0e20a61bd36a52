"""The NVMe/RDMA *host* bench row: ``python -m bench --only rdma-host`` (or ``python -m bench.rdma_host``).

blockfabric's own RDMA host (``blockfabric perf -r 'trtype:RDMA ...'``, one
worker) against the kernel's nvmet-rdma target (brd ramdisk) in the
kernel-host QEMU guest (Soft-RoCE, TCG), and as the peer the guest kernel's
nvme-rdma host against the same target in the same guest run with
tests/interop/guest/rdma-randread.py (32 threads of O_DIRECT 4 KiB preadv =
QD32; 128 KiB sequential reads at QD1), measured before and after ours
(drift check). Only the ratio means something. Writes
bench/results/rdma_host.md and rdma_host.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from .rdma import FACT, GUEST, ROOT, harness


def run(secs: int, timeout: int, log: Path) -> tuple[int, dict[str, str], str]:
    hd = harness()
    if hd is None:
        raise SystemExit("bench rdma-host: no kernel-host harness (BLOCKFABRIC_KERNEL_HOST)")
    env = dict(os.environ)
    env.update(
        GUEST_RDMA="1",
        GUEST_LOGLEVEL="4",
        GUEST_TIMEOUT=str(timeout),
        GUEST_VARS="BF_REPO SECS MODE",
        BF_REPO=str(ROOT),
        SECS=str(secs),
        MODE="bench",
        PORT="4420",
    )
    argv = [
        str(hd / "run-guest.sh"),
        str(GUEST / "nvme-rdma-host.sh"),
        str(GUEST / "interop-lib.sh"),
    ]
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout + 60)
    out = p.stdout + p.stderr
    log.write_text(out)
    return p.returncode, dict(FACT.findall(out)), out


def render(facts: dict[str, str], meta: dict[str, object]) -> str:
    def f(k: str) -> float:
        try:
            return float(facts.get(k, "nan"))
        except ValueError:
            return float("nan")

    rows = []
    for test, unit, label in (
        ("randread_4k_iops", "IOPS", "4 KiB random read, QD32"),
        ("seqread_128k_mibs", "MiB/s", "128 KiB sequential read, QD1"),
    ):
        k1, k2, bf = f(f"kernel_{test}"), f(f"kernel2_{test}"), f(f"blockfabric_{test}")
        peer = (k1 + k2) / 2
        ratio = bf / peer if peer else float("nan")
        rows.append(f"| {label} | {bf:.1f} {unit} | {k1:.1f} / {k2:.1f} {unit} | {ratio:.2f} |")
    return "\n".join(
        [
            "# NVMe/RDMA host bench row (QEMU TCG guest, Soft-RoCE)",
            "",
            f"Measured {meta['when']} by `python -m bench --only rdma-host` (bench/rdma_host.py), one",
            "guest run: blockfabric perf over RDMA (1 worker, -q 32 / -q 1) and the guest kernel's",
            "nvme-rdma host (rdma-randread.py, 32 threads / 1) against the same kernel nvmet-rdma",
            "target (brd), the kernel host before and after ours.",
            "",
            "| workload | blockfabric host | kernel nvme-rdma host (before / after) | ratio |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Parameters: {meta['params']}. Everything is emulated (TCG, rxe in software), both",
            "hosts and the target share the guest's 2 vCPUs.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench --only rdma-host")
    ap.add_argument("--secs", type=int, default=15, help="seconds per measurement")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    rc, facts, out = run(a.secs, a.timeout, a.out / "rdma_host-guest.log")
    meta = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "params": f"{a.secs} s per measurement",
        "rc": rc,
    }
    (a.out / "rdma_host.json").write_text(json.dumps({"meta": meta, "facts": facts}, indent=1))
    if rc != 0 or not facts.get("blockfabric_randread_4k_iops"):
        print(out[-3000:], file=sys.stderr)
        print(f"bench rdma-host: guest run failed (rc {rc})", file=sys.stderr)
        return 1
    md = render(facts, meta)
    (a.out / "rdma_host.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
