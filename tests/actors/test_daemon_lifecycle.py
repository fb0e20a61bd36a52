"""End-to-end: the supervisor daemon, its reactors and what they leave behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
from bftest import BIN, shm_objects

pytestmark = pytest.mark.e2e


def test_two_reactors_pinned_and_titled(daemon_factory):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    d = daemon_factory(mask="0x3").start()
    st = d.rpc("blockfabric_get_status")
    assert [r["core"] for r in st["reactors"]] == [0, 1]
    for r in st["reactors"]:
        p = psutil.Process(r["pid"])
        assert p.cpu_affinity() == [r["core"]]
        assert " ".join(p.cmdline()).startswith(f"blockfabric[{d.name}] reactor {r['id']}")
    assert psutil.Process(st["pid"]).cmdline()[0].startswith(f"blockfabric[{d.name}] supervisor")
    status = d.status()
    assert [p["role"] for p in status["processes"]] == ["supervisor", "reactor 0", "reactor 1"]
    assert all(p["state"] in ("running", "sleeping") for p in status["processes"])
    d.stop()
    assert shm_objects(d.name) == []
    # the lock is released just before the supervisor's interpreter exits
    deadline = time.monotonic() + 10
    for pid in [st["pid"], *[r["pid"] for r in st["reactors"]]]:
        while psutil.pid_exists(pid):
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            assert time.monotonic() < deadline, f"pid {pid} still runs after stop"
            time.sleep(0.05)


def test_bad_core_mask_is_refused(daemon_factory):
    d = daemon_factory(mask="0x100000000")
    p = d.cli("start", "--name", d.name, "-m", d.mask, "--empty", check=False)
    assert p.returncode != 0
    assert "may not use" in p.stderr
    assert shm_objects(d.name) == []


def test_second_daemon_same_name_refused(daemon):
    p = daemon.cli(
        "start", "--name", daemon.name, "--empty", "-r", daemon.rpc_addr + "2", check=False
    )
    assert p.returncode != 0
    assert "already running" in p.stderr


def test_malloc_bdev_is_shared_memory_and_released(daemon):
    assert (
        daemon.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 2048, "block_size": 512})
        == "Malloc0"
    )
    assert f"blockfabric.{daemon.name}.malloc.Malloc0" in shm_objects(daemon.name)
    bd = daemon.rpc("bdev_get_bdevs", {"name": "Malloc0"})
    assert bd[0]["num_blocks"] == 2048 and bd[0]["block_size"] == 512
    assert daemon.rpc("bdev_malloc_delete", {"name": "Malloc0"}) is True
    assert f"blockfabric.{daemon.name}.malloc.Malloc0" not in shm_objects(daemon.name)
    assert daemon.rpc("bdev_get_bdevs") == []


def test_reactor_death_stops_target_cleanly(daemon_factory):
    # no restarts allowed: the restart policy is exhausted by the first death
    d = daemon_factory(mask="0x1", extra=["--max-restarts", "0"]).start()
    d.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 256, "block_size": 512})
    st = d.rpc("blockfabric_get_status")
    os.kill(st["reactors"][0]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (
        psutil.pid_exists(st["pid"]) and psutil.Process(st["pid"]).status() != psutil.STATUS_ZOMBIE
    ):
        assert time.monotonic() < deadline, "supervisor did not stop after its reactor died"
        time.sleep(0.05)
    d.started = False
    assert shm_objects(d.name) == []
    assert "reactor 0" in d.log() and "SIGKILL" in d.log()


def test_kill9_then_cleanup_spares_live_instance(daemon_factory):
    victim = daemon_factory(mask="0x1").start()
    live = daemon_factory(mask="0x1").start()
    for d in (victim, live):
        d.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 256, "block_size": 512})
    pids = victim.pids()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        try:
            psutil.Process(pid).wait(10)
        except psutil.NoSuchProcess:
            pass
    victim.started = False
    assert shm_objects(victim.name), "the SIGKILLed instance should have left its segments"
    before_live = shm_objects(live.name)
    p = subprocess.run(
        [*BIN, "shm", "cleanup", "--dry-run"], env=victim.env, capture_output=True, text=True
    )
    assert p.returncode == 0
    assert shm_objects(victim.name), "--dry-run must not remove anything"
    p = subprocess.run([*BIN, "shm", "cleanup"], env=victim.env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert shm_objects(victim.name) == []
    assert shm_objects(live.name) == before_live
    assert live.rpc("bdev_get_bdevs")[0]["name"] == "M"


@pytest.mark.timeout(900)
def test_start_stop_cycles_leak_nothing(daemon_factory):
    cycles = int(os.environ.get("BLOCKFABRIC_CYCLES", "100"))
    d = daemon_factory(mask="0x1")
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(cycles):
        d.start()
        d.stop()
        assert shm_objects(d.name) == []
    assert not any(
        p.info["cmdline"] and f"blockfabric[{d.name}]" in p.info["cmdline"][0]
        for p in psutil.process_iter(["cmdline"])
    )
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert sorted(os.listdir(d.run_dir)) == sorted([f"{d.name}.log", f"{d.name}.out", "state"])
