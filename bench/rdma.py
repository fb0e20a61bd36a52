"""The NVMe/RDMA bench row: ``python -m bench --only rdma`` (or ``python -m bench.rdma``).

RDMA exists here only inside the kernel-host QEMU guest (Soft-RoCE on the
guest's eth0, everything emulated by TCG), so absolute numbers say little;
the row is a ratio against the kernel's own nvmet-rdma target measured in
the same guest run with the same host tool: the guest kernel's nvme-rdma
host with tests/interop/guest/rdma-randread.py (32 threads of O_DIRECT
4 KiB preadv at random offsets = QD32, the guest userland has no fio; then
128 KiB sequential O_DIRECT reads at QD1).
The kernel target is measured before and after blockfabric (drift check).
Writes bench/results/rdma.md and rdma.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / "tests" / "interop" / "guest"
FACT = re.compile(r"KH-FACT ([A-Za-z0-9_]+)=(\S*)")


def harness() -> Path | None:
    env = os.environ.get("BLOCKFABRIC_KERNEL_HOST")
    d = Path(env) if env else ROOT.parent / "shared" / "interop" / "kernel-host"
    return d if (d / "run-guest.sh").is_file() else None


def run(n4k: int, seq_mb: int, timeout: int, log: Path) -> tuple[int, dict[str, str], str]:
    hd = harness()
    if hd is None:
        raise SystemExit("bench rdma: no kernel-host harness (BLOCKFABRIC_KERNEL_HOST)")
    env = dict(os.environ)
    env.update(
        GUEST_RDMA="1",
        GUEST_LOGLEVEL="4",
        GUEST_TIMEOUT=str(timeout),
        GUEST_VARS="BF_REPO SECS SEQ_MB",
        BF_REPO=str(ROOT),
        SECS=str(n4k),
        SEQ_MB=str(seq_mb),
    )
    argv = [
        str(hd / "run-guest.sh"),
        str(GUEST / "nvme-rdma-bench.sh"),
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
        ("randread_4k_iops", "IOPS", "4 KiB random read, QD32 (32 O_DIRECT threads)"),
        ("seqread_128k_mibs", "MiB/s", "128 KiB sequential read, QD1"),
    ):
        k1, k2, bf = f(f"kernel_{test}"), f(f"kernel2_{test}"), f(f"blockfabric_{test}")
        peer = (k1 + k2) / 2
        ratio = bf / peer if peer else float("nan")
        rows.append(f"| {label} | {bf:.1f} {unit} | {k1:.1f} / {k2:.1f} {unit} | {ratio:.2f} |")
    return "\n".join(
        [
            "# NVMe/RDMA bench row (QEMU TCG guest, Soft-RoCE)",
            "",
            f"Measured {meta['when']} by `python -m bench --only rdma` (bench/rdma.py), one guest run:",
            "the guest kernel's nvme-rdma host against blockfabric (2 reactors, malloc bdev, RDMA",
            "listener on rxe0) and against the kernel nvmet-rdma target (brd ramdisk), same host",
            "tool, same boot; the kernel target before and after blockfabric.",
            "",
            "| workload | blockfabric | kernel nvmet-rdma (before / after) | ratio bf / kernel |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Parameters: {meta['params']}. Everything is emulated (TCG, no KVM, rxe in",
            "software), so only the ratio means something; both sides share the guest's 2 vCPUs.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench --only rdma")
    ap.add_argument("--secs", dest="n4k", type=int, default=15, help="seconds per measurement")
    ap.add_argument("--seq-mb", type=int, default=32, help="MiB of the sequential read")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    rc, facts, out = run(a.n4k, a.seq_mb, a.timeout, a.out / "rdma-guest.log")
    meta = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "params": f"{a.n4k} s per measurement, {a.seq_mb} MiB written first",
        "rc": rc,
    }
    (a.out / "rdma.json").write_text(json.dumps({"meta": meta, "facts": facts}, indent=1))
    if rc != 0 or not facts.get("blockfabric_randread_4k_iops"):
        print(out[-3000:], file=sys.stderr)
        print(f"bench rdma: guest run failed (rc {rc})", file=sys.stderr)
        return 1
    md = render(facts, meta)
    (a.out / "rdma.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
