import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from blockfabric.shm.lock import InstanceLock
from blockfabric.shm.manifest import Manifest
from blockfabric.shm.segment import SharedSegment
from blockfabric.tools import shm_cmd

# A daemon stand-in: lock, pool (shm + sem), a plain segment, an IPC socket.
CHILD = """
import socket, sys, time
from blockfabric.shm import names
from blockfabric.shm.lock import InstanceLock
from blockfabric.shm.pool import BufferPool
from blockfabric.shm.segment import SharedSegment
inst = sys.argv[1]
InstanceLock(inst).acquire()
BufferPool.create(inst, 1, small_count=4, large_count=2, hugepages="never", reactor_id=0)
SharedSegment.create(inst, "bdev0", 65536, hugepages="never")
s = socket.socket(socket.AF_UNIX)
s.bind(str(names.run_dir() / f"{inst}.ctl.sock"))
print("ready", flush=True)
time.sleep(120)
"""


def _files_of(inst, run_dir):
    shm = sorted(p.name for p in Path("/dev/shm").glob(f"*blockfabric.{inst}.*"))
    run = sorted(p.name for p in Path(run_dir).glob(f"{inst}.*")) if run_dir.exists() else []
    return shm + run


@pytest.fixture
def killed_instance(instance, run_dir):
    p = subprocess.Popen([sys.executable, "-c", CHILD, instance], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        yield instance, p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(10)
        p.stdout.close()


def test_cleanup_dead_keeps_live(killed_instance, run_dir):
    a, child = killed_instance
    b = f"{a}-live"
    expected_a = sorted(
        [
            f"blockfabric.{a}.bdev0",
            f"blockfabric.{a}.bufpool",
            f"blockfabric.{a}.manifest",
            f"sem.blockfabric.{a}.bufpool",
            f"{a}.ctl.sock",
            f"{a}.lock",
        ]
    )
    assert _files_of(a, run_dir) == expected_a
    with InstanceLock(b):
        seg_b = SharedSegment.create(b, "data", 4096, hugepages="never")
        try:
            objs = {o["name"]: o for o in shm_cmd.list_objects() if o["instance"] == a}
            assert {o["kind"] for o in objs.values()} == {"shm", "sem", "manifest", "lock", "ipc"}
            assert all(o["alive"] for o in objs.values())
            assert objs[f"blockfabric.{a}.bdev0"]["owners"] == [child.pid]
            assert objs[f"blockfabric.{a}.bdev0"]["size"] == 65536
            assert objs[f"{a}.lock"]["owners"] == [child.pid]
            assert shm_cmd.cleanup(a) == []  # alive: untouched

            child.send_signal(signal.SIGKILL)
            child.wait(10)
            assert not any(o["alive"] for o in shm_cmd.list_objects() if o["instance"] == a)

            dry = shm_cmd.cleanup(a, dry_run=True)
            assert sorted(Path(o["path"]).name for o in dry) == expected_a
            assert _files_of(a, run_dir) == expected_a  # dry run removed nothing

            removed = shm_cmd.cleanup(a)
            assert sorted(Path(o["path"]).name for o in removed) == expected_a
            assert removed[-1]["kind"] == "manifest"  # removed last
            assert _files_of(a, run_dir) == []

            # B is alive (our lock + our pid in its manifest): untouched.
            assert shm_cmd.cleanup(b) == []
            assert os.path.exists(seg_b.path)
            assert all(o["alive"] for o in shm_cmd.list_objects() if o["instance"] == b)
        finally:
            seg_b.close()
            seg_b.unlink()


def test_reused_pid_does_not_keep_instance_alive(instance, run_dir):
    seg = SharedSegment.create(instance, "x", 4096, hugepages="never")
    seg.close()
    m = Manifest(instance)
    # Same pid as ours but a different start time: a recycled pid.
    m.add(seg.name, "shm", seg.path, 4096, owner_pid=os.getpid(), owner_ctime=1.0)
    assert not shm_cmd.instance_alive(instance)
    removed = shm_cmd.cleanup(instance)
    assert {o["kind"] for o in removed} == {"shm", "manifest"}
    assert not os.path.exists(seg.path)


def test_no_manifest_judged_by_lock(instance, run_dir):
    orphan = Path(f"/dev/shm/blockfabric.{instance}.orphan")
    orphan.write_bytes(b"x")
    try:
        with InstanceLock(instance):
            assert shm_cmd.cleanup(instance) == []
            assert orphan.exists()
        removed = shm_cmd.cleanup(f"blockfabric.{instance}.orphan")
        assert [o["path"] for o in removed] == [str(orphan)]
        assert not orphan.exists()
    finally:
        orphan.unlink(missing_ok=True)


def test_cli_list_and_cleanup(killed_instance, run_dir, capsys):
    a, child = killed_instance
    assert shm_cmd.main(["shm", "list", "--json"]) == 0
    objs = [o for o in json.loads(capsys.readouterr().out) if o["instance"] == a]
    assert len(objs) == 6 and all(o["alive"] for o in objs)
    assert shm_cmd.main(["shm", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["INSTANCE", "NAME", "KIND", "SIZE", "OWNERS", "STATE"]
    line = next(ln for ln in out.splitlines() if f"blockfabric.{a}.bdev0" in ln)
    assert line.split()[2:] == ["shm", "64.0K", str(child.pid), "alive"]

    assert shm_cmd.main(["shm", "cleanup", "--name", a]) == 1  # alive
    assert "instance is alive" in capsys.readouterr().err
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert shm_cmd.main(["shm", "cleanup", "--name", a, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("would remove") == 6
    assert len(_files_of(a, run_dir)) == 6
    assert shm_cmd.main(["shm", "cleanup", "--name", a]) == 0
    assert capsys.readouterr().out.count("removed") == 6
    assert _files_of(a, run_dir) == []


def test_foreign_run_dir_files_left_alone(instance, run_dir):
    from blockfabric.shm import names

    d = names.run_dir()
    foreign = [d / "notes.txt", d / "other.lock", d / f"{instance}x.cfg"]
    foreign[0].write_text("x")
    foreign[1].write_text("not a pid file\n")
    foreign[2].write_text("cfg")
    stale = d / f"{instance}.lock"
    stale.write_text("12345\n")  # our format, nobody holds it
    sock_cfg = d / f"{instance}.cfg"
    sock_cfg.write_text("belongs to a known (locked-before) instance")
    # Scoped by name: a bare cleanup() would also judge other tests' objects.
    removed = shm_cmd.cleanup(instance)
    assert {o["path"] for o in removed} == {str(stale), str(sock_cfg)}
    for other in ("notes", "other", f"{instance}x"):
        assert shm_cmd.cleanup(other) == []
    assert all(p.exists() for p in foreign)


def test_zombie_owner_counts_as_dead(killed_instance, run_dir):
    """A killed instance whose process nobody reaped yet (a zombie, as in a
    container whose init does not reap) is dead: cleanup removes its objects."""
    import time

    import psutil

    inst, child = killed_instance
    assert shm_cmd.instance_alive(inst)
    os.kill(child.pid, signal.SIGKILL)  # and do not wait(): it stays a zombie
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert psutil.pid_exists(child.pid)  # what the old check looked at
    assert not shm_cmd.instance_alive(inst)
    removed = shm_cmd.cleanup(inst)
    assert removed and _files_of(inst, run_dir) == []
    assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE  # still unreaped
