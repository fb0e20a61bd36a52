"""The multipath failover row: ``python -m bench --only multipath`` (or ``python -m bench.multipath``).

Runs tests/interop/test_kernel_multipath.py (one QEMU guest boot: the Linux
6.1 native NVMe multipath host against two blockfabric nodes exporting one
subsystem over a shared bdev_nvme backend from a third node), which writes
bench/results/multipath.json and multipath.md: the longest gap between two
completed 64 KiB O_DIRECT writes of the guest's pattern writer in each
phase. The steady phase before any change is the peer of the same run (what
a stall-free gap looks like on this machine under TCG); (a) is the operator
moving the optimized path (ANA inaccessible), (b) the SIGKILL of the
optimized node, (c) the node back and optimized again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "tests" / "interop" / "test_kernel_multipath.py"
RESULTS = ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.multipath", description=__doc__)
    ap.add_argument("--timeout", type=int, default=1500, help="seconds for the whole run")
    a = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(TEST)]
    p = subprocess.run(cmd, cwd=ROOT, timeout=a.timeout, env=dict(os.environ))
    md = RESULTS / "multipath.md"
    if md.exists():
        print(md.read_text())
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
