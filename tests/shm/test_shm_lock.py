import os
import signal
import subprocess
import sys

import pytest

from blockfabric.shm.lock import InstanceLock, InstanceRunningError, lock_path

CHILD_HOLD = """
import sys, time
from blockfabric.shm.lock import InstanceLock
InstanceLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""

CHILD_TRY = """
import sys
from blockfabric.shm.lock import InstanceLock
try:
    InstanceLock(sys.argv[1]).acquire()
except RuntimeError as e:
    print(e)
    sys.exit(3)
"""


def test_acquire_release(instance, run_dir):
    lk = InstanceLock(instance)
    assert not InstanceLock.is_held(instance)
    with lk:
        assert lk.held
        assert InstanceLock.is_held(instance)
        assert lock_path(instance).read_text().strip() == str(os.getpid())
        assert InstanceLock.holder_pid(instance) == os.getpid()
        # Another open file description conflicts even in this process.
        with pytest.raises(
            InstanceRunningError,
            match=rf"instance '{instance}' is already running \(pid {os.getpid()}\)",
        ):
            InstanceLock(instance).acquire()
    assert not lock_path(instance).exists()
    assert not InstanceLock.is_held(instance)


def test_second_process_refused(instance):
    with InstanceLock(instance):
        r = subprocess.run(
            [sys.executable, "-c", CHILD_TRY, instance], capture_output=True, text=True, timeout=30
        )
    assert r.returncode == 3, r.stderr
    assert r.stdout.strip() == f"instance '{instance}' is already running (pid {os.getpid()})"


def test_killed_holder_frees_lock(instance):
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD_HOLD, instance], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "held"
        assert InstanceLock.is_held(instance)
        assert InstanceLock.holder_pid(instance) == p.pid
        with pytest.raises(InstanceRunningError, match=f"pid {p.pid}"):
            InstanceLock(instance).acquire()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        p.stdout.close()
    # The stale file is still there, but nobody holds it.
    assert lock_path(instance).exists()
    assert not InstanceLock.is_held(instance)
    with InstanceLock(instance):
        assert InstanceLock.holder_pid(instance) == os.getpid()
    assert not lock_path(instance).exists()


def test_bad_instance_name(run_dir):
    with pytest.raises(ValueError, match="invalid instance name"):
        InstanceLock("bad/name")
