"""`make run`: the built-in default config in the foreground, Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest
from bftest import BIN, shm_objects

from blockfabric.control.client import RpcClient

pytestmark = pytest.mark.e2e


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_foreground_default_config_and_ctrl_c(run_dir):
    if not (_port_free(4420) and _port_free(3260)):
        pytest.skip("ports 4420/3260 are in use on this machine (the default config binds them)")
    name = f"dflt{os.getpid()}"
    addr = f"ipc://{run_dir}/rpc.sock"
    env = {**os.environ, "BLOCKFABRIC_RUN_DIR": str(run_dir)}
    p = subprocess.Popen(
        [*BIN, "start", "--name", name, "-m", "0x1", "-r", addr],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                bdevs = RpcClient(addr, timeout=1).call("bdev_get_bdevs")
                break
            except Exception:
                assert p.poll() is None, p.stdout.read() if p.stdout else ""
                assert time.monotonic() < deadline, "default config did not come up"
                time.sleep(0.2)
        with RpcClient(addr, timeout=10) as c:
            assert (
                bdevs[0]["name"] == "Malloc0"
                and bdevs[0]["num_blocks"] * bdevs[0]["block_size"] == 256 << 20
            )
            subs = {s["nqn"]: s for s in c.call("nvmf_get_subsystems")}
            cnode1 = subs["nqn.2016-06.io.blockfabric:cnode1"]
            assert cnode1["allow_any_host"] and cnode1["listen_addresses"][0]["trsvcid"] == "4420"
            assert "nqn.2014-08.org.nvmexpress.discovery" in subs
            nodes = c.call("iscsi_get_target_nodes")
            assert nodes[0]["name"] == "iqn.2016-06.io.blockfabric:disk1"
            assert nodes[0]["luns"] == [{"bdev_name": "Malloc0", "lun_id": 0}]
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0
        assert "nvme connect" in out and "iscsiadm -m discovery" in out  # what a host types
        assert shm_objects(name) == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
