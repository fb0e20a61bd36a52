"""iSCSI in the observability views: an iscsi-perf session against a target
node shows up per target node / LUN in /metrics, in `top --once` and in the
dashboard's snapshot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from typing import Any

from bftest import BIN, missing_tool
from obs_helpers import free_port, get, samples, value

BASE = "iqn.2016-06.io.blockfabric"
INITIATOR = "iqn.2024-01.io.observe:perf"


def test_iscsi_session_in_metrics_top_and_dashboard(daemon_factory: Any) -> None:
    if shutil.which("iscsi-perf") is None:
        missing_tool("iscsi-perf is not installed (Debian package libiscsi-bin)")
    mport, hport, port = free_port(), free_port(), free_port()
    d = daemon_factory(
        "0x3", ["--metrics", f"127.0.0.1:{mport}", "--http", f"127.0.0.1:{hport}"]
    ).start()
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 16384, "block_size": 512})
    d.rpc("iscsi_create_portal_group", {"tag": 1, "portals": [{"host": "127.0.0.1",
                                                               "port": str(port)}]})  # fmt: skip
    d.rpc("iscsi_create_initiator_group",
          {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]})  # fmt: skip
    d.rpc("iscsi_create_target_node", {
        "name": "disk1", "alias_name": "Disk1", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 64, "disable_chap": True})  # fmt: skip
    url = f"iscsi://127.0.0.1:{port}/{BASE}:disk1/0"
    p = subprocess.Popen(
        ["iscsi-perf", "-i", INITIATOR, "-m", "8", "-b", "8", url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        reads = 0.0
        sm: dict[Any, float] = {}
        while time.monotonic() < deadline:
            sm = samples(get(f"http://127.0.0.1:{mport}/metrics")[2].decode())
            key = {"target": f"{BASE}:disk1", "lun": "0", "bdev": "Malloc0"}
            reads = value(sm, "blockfabric_iscsi_lun_read_ops_total", **key)
            if reads > 0:
                break
            time.sleep(0.5)
        assert reads > 0, "no iSCSI reads counted"
        assert value(sm, "blockfabric_iscsi_target_connections", target=f"{BASE}:disk1",
                     initiator=INITIATOR) == 1  # fmt: skip
        assert sum(v for (n, _l), v in sm.items() if n == "blockfabric_iscsi_connections") == 1
        # a well-behaved initiator: no Reject PDUs, no digest errors (but counted per reactor)
        for name in ("blockfabric_iscsi_rejects_total", "blockfabric_iscsi_digest_errors_total"):
            got = [v for (n, _l), v in sm.items() if n == name]
            assert len(got) == 2 and sum(got) == 0, (name, got)
        out = subprocess.run([*BIN, "top", "-r", d.rpc_addr, "--once"], capture_output=True,
                             text=True, timeout=60, env=d.env)  # fmt: skip
        assert out.returncode == 0, out.stderr
        row = next(ln.split() for ln in out.stdout.splitlines() if ln.startswith("iscsi "))
        # PROTO NAME NS/LUNS BDEVS CONNS IOPS
        assert row[1] == f"{BASE}:disk1" and row[2] == "1" and row[3] == "Malloc0"
        assert row[4] == "1" and int(row[5]) > 0, out.stdout
        assert any(ln.split()[:1] == ["iscsi"] and INITIATOR in ln
                   for ln in out.stdout.split("Connections per host")[1].splitlines())  # fmt: skip
        view = json.loads(get(f"http://127.0.0.1:{hport}/api/snapshot")[2])
        assert [t["name"] for t in view["target_nodes"]] == [f"{BASE}:disk1"]
        assert [c["initiator_name"] for c in view["iscsi_connections"]] == [INITIATOR]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
