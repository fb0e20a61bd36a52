#!/usr/bin/env python3
"""One sample of the iSCSI read A/B (issue 8): start a daemon from whatever
`blockfabric` is importable (PYTHONPATH picks the tree: a folder holding a
`blockfabric` symlink to the checkout), reactor on CPU 0, iscsi-perf
(4 KiB random READ16) on CPU 1; prints IOPS and reactor CPU us per I/O.

    PYTHONPATH=/tmp/old python scripts/iscsi_read_ab.py 32,128 5 [SPYPREFIX]

Interleave old/new/new/old runs and compare medians. POLL=blocking makes the
CPU-per-I/O figure meaningful (busy polling burns the core either way);
SPYPREFIX records py-spy raw stacks of the reactor per queue depth."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

from blockfabric.control.client import RpcClient

qds = [int(x) for x in sys.argv[1].split(",")]
dur = int(sys.argv[2])
spy = sys.argv[3] if len(sys.argv) > 3 else None

run_dir = tempfile.mkdtemp(prefix="ab8-")
name = f"ab8{os.getpid()}"
addr = f"ipc://{run_dir}/rpc.sock"
env = {**os.environ, "BLOCKFABRIC_RUN_DIR": run_dir}
cli = [sys.executable, "-m", "blockfabric.tools.cli"]


def rpc(m, p=None):
    with RpcClient(addr, timeout=30) as c:
        return c.call(m, p)


r = subprocess.run(
    [
        *cli,
        "start",
        "--name",
        name,
        "-m",
        "0x1",
        "-r",
        addr,
        "--empty",
        "--daemon",
        "--poll-mode",
        os.environ.get("POLL", "busy"),
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=90,
)
assert r.returncode == 0, r.stderr
try:
    st = rpc("blockfabric_get_status")
    rpid = int(st["reactors"][0]["pid"])
    rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 256 * 2048, "block_size": 512})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rpc("iscsi_set_options", {"max_queue_depth": 128})
    rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(port)}]},
    )
    rpc(
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )
    rpc(
        "iscsi_create_target_node",
        {
            "name": "bench",
            "alias_name": "bench",
            "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            "queue_depth": 128,
            "disable_chap": True,
        },
    )
    iqn = rpc("iscsi_get_target_nodes")[0]["name"]
    url = f"iscsi://127.0.0.1:{port}/{iqn}/0"
    out = []
    for qd in qds:
        sp = None
        if spy:
            sp = subprocess.Popen(
                [
                    os.path.join(os.path.dirname(sys.executable), "py-spy"),
                    "record",
                    "--nonblocking",
                    "-r",
                    "200",
                    "--format",
                    "raw",
                    "-d",
                    str(dur),
                    "-o",
                    f"{spy}.qd{qd}",
                    "-p",
                    str(rpid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        import psutil

        rp = psutil.Process(rpid)
        c0 = sum(rp.cpu_times()[:2])
        p = subprocess.run(
            [
                "taskset",
                "-c",
                "1",
                "iscsi-perf",
                "-m",
                str(qd),
                "-b",
                "8",
                "-t",
                str(dur),
                "-r",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=dur + 30,
        )
        if sp:
            sp.wait()
        m = re.findall(r"iops average (\d+)", p.stdout + p.stderr)
        c1 = sum(rp.cpu_times()[:2])
        us = (c1 - c0) * 1e6 / (int(m[-1]) * dur) if m else 0
        out.append(f"qd{qd}={m[-1] if m else 'ERR'} cpu_us/io={us:.2f}")
    print(" ".join(out))
finally:
    subprocess.run(
        [*cli, "stop", "--name", name, "--timeout", "20"], env=env, capture_output=True, timeout=40
    )
    subprocess.run(
        [*cli, "shm", "cleanup", "--name", name], env=env, capture_output=True, timeout=30
    )
    shutil.rmtree(run_dir, ignore_errors=True)
