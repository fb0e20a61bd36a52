"""Instructions per command of the NVMe/TCP target's sans-I/O path (issue 15).

``python -m bench.percmd [-n N] [--write]`` drives one in-process I/O queue
pair (tests/transports/nvmf's fake target: a RAM bdev whose reads are views,
like malloc) the way a real host does with per-command submission: every
command capsule is fed on its own, its response taken before the next one.
It prints the CPU time per command. Under callgrind the difference of two
runs is the instruction count per command, which does not depend on the
noise of a shared machine::

    for n in 2000 12000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
        python -m bench.percmd -n $n; done   # (Ir(12000) - Ir(2000)) / 10000

``--compare DIR`` runs the same against another checkout (DIR/blockfabric).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "transports" / "nvmf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.percmd")
    ap.add_argument("-n", type=int, default=20000, help="commands")
    ap.add_argument("--write", action="store_true", help="4 KiB in-capsule writes, not reads")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(TESTS))
    import types

    import conftest as c  # the fake target of the NVMe-oF tests
    from test_nvmf_tcp_fastpath import Io, _capsule

    from blockfabric.transports.nvmf import spec

    h = types.SimpleNamespace(
        FakeRpc=c.FakeRpc,
        setup_target=c.setup_target,
        HOSTID=c.HOSTID,
        SUBNQN=c.SUBNQN,
        HOSTNQN=c.HOSTNQN,
    )
    io = Io(h)
    qp = io.qp
    if a.write:
        caps = [_capsule(spec.IO_WRITE, cid, 1, (cid % 56, 0, 7), bytes(4096)) for cid in range(32)]
    else:
        caps = [_capsule(spec.IO_READ, cid, 1, (cid % 56, 0, 7), None) for cid in range(32)]
    feed_input, take = qp.feed_input, qp.take_output
    t0 = time.process_time()
    for i in range(a.n):
        feed_input(caps[i & 31])
        out = take()
        assert out, "no response"
    dt = time.process_time() - t0
    print(f"{a.n} commands: {dt / a.n * 1e6:.2f} us CPU per command (pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
