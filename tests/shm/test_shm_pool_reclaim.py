"""Per-owner pool accounting: what a dead reactor held comes back (reclaim)."""

import os
import signal
import subprocess
import sys

import posix_ipc
import pytest

from blockfabric.shm.iobuf import CHUNK, IoBufs
from blockfabric.shm.pool import H_LOCK_PID, BufferPool

# reactor 1 in a child: takes buffers of its own share and of the reserve,
# and (optionally) dies holding the reserve lock
HOLDER = """
import sys, time
from blockfabric.shm.pool import H_LOCK_PID, BufferPool
inst, n, wedge = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "wedge"
p = BufferPool.attach(inst, 1)
held = [p.get(100) for _ in range(n)]
big = p.get(70000)
assert all(held) and big is not None
if wedge:
    p._sem.acquire()
    p._hdr[H_LOCK_PID] = __import__("os").getpid()
print("holding", sum(1 for b in held if b.index < 3), flush=True)
time.sleep(60)
"""


@pytest.fixture
def pool(instance):
    # 2 reactors; small: 10 -> 3 each + 4 reserve; large: 4 -> 1 each + 2 reserve
    p = BufferPool.create(instance, 2, small_count=10, large_count=4, hugepages="never")
    yield p
    p.destroy()


def _run_holder(instance, n, wedge=False):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, instance, str(n), "wedge" if wedge else "-"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = child.stdout.readline().split()
    assert line and line[0] == "holding", line
    return child


def test_dead_reactor_buffers_come_back(pool, instance):
    s0 = pool.stats()
    child = _run_holder(instance, 5)  # 3 of its share + 2 from the reserve, + 1 large
    try:
        assert pool.held_by() == {1: 6}
        assert pool.stats()["small"]["in_use"] == 5
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    assert pool.reclaim(1, child.pid) == 6
    s = pool.stats()
    assert s["small"]["in_use"] == 0 and s["large"]["in_use"] == 0
    assert s["small"]["reserve_free"] == s0["small"]["reserve_free"]
    assert s["large"]["reserve_free"] == s0["large"]["reserve_free"]
    assert pool.held_by() == {}
    # the restarted reactor rebuilds its whole share and can take all of it
    q = BufferPool.attach(instance, 1)
    try:
        assert q.stats()["small"]["local_free"] == 3
        got = [q.get(10) for _ in range(7)]  # its 3 + the 4 in the reserve
        assert all(got) and q.get(10) is None
        assert pool.held_by() == {1: 7}
    finally:
        q.close()


def test_reclaim_without_reclaim_leaks(pool, instance):
    """The control case: without reclaim a dead reactor's buffers stay out."""
    child = _run_holder(instance, 4)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    q = BufferPool.attach(instance, 1)
    try:
        assert q.stats()["small"]["local_free"] == 0
        assert q.stats()["small"]["in_use"] == 4
    finally:
        q.close()


def test_reserve_lock_of_dead_holder_is_taken_over(pool, instance):
    child = _run_holder(instance, 1, wedge=True)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    assert int(pool._hdr[H_LOCK_PID]) == child.pid
    # the lock is wedged at 0 by the dead process ...
    with pytest.raises(posix_ipc.BusyError):
        pool._sem.acquire(0)
    # ... reclaim takes it over and releases it; then the pool works again
    assert pool.reclaim(1, child.pid) == 2
    assert int(pool._hdr[H_LOCK_PID]) == 0
    b = pool.get(10)  # a non-reactor process: from the reserve, under the lock
    assert b is not None
    pool.put(b)


def test_reclaim_refuses_bad_ids(pool):
    with pytest.raises(ValueError):
        pool.reclaim(2)
    with pytest.raises(ValueError):
        pool.reclaim(-1)


def test_iobufs_owner_is_recorded(instance):
    pool = BufferPool.create(instance, 2, mem_mb=4, hugepages="never", reactor_id=1)
    try:
        io = IoBufs(pool)
        iov = io.try_acquire(3 * CHUNK + 5)
        assert iov is not None and len(iov.views) == 4
        assert pool.held_by() == {1: 4}
        st = io.stats()
        assert st["in_use"] == 4 and st["high_water"] == 4 and st["acquires"] == 1
        io.release(iov)
        assert pool.held_by() == {} and io.stats()["in_use"] == 0
    finally:
        pool.destroy()


def test_default_pool_size():
    from blockfabric.actors.supervisor import default_pool_mb

    assert default_pool_mb(1) == 64 and default_pool_mb(4) == 64 and default_pool_mb(8) == 128


def test_mem_mb_default_is_64(instance):
    p = BufferPool.create(instance, 1, hugepages="never")
    try:
        s = p.stats()
        total = s["small"]["count"] * s["small"]["buf_size"]
        total += s["large"]["count"] * 135168
        assert 60 * 2**20 < total <= 64 * 2**20
    finally:
        p.destroy()
    assert os.path.exists("/dev/shm") and not os.path.exists(
        f"/dev/shm/blockfabric.{instance}.bufpool"
    )


TAKER = """
import sys
from blockfabric.shm.pool import BufferPool
p = BufferPool.attach(sys.argv[1], 1)
held = []
while True:
    b = p.get(100)
    if b is None:
        break
    held.append(b)
print("took", len(held), flush=True)
sys.stdin.readline()
for b in held:
    p.put(b)  # the reserve buffers go back to the shared reserve
print("gave", flush=True)
sys.stdin.readline()
"""


def test_waiter_served_by_poll_when_another_process_returns_buffers(pool, instance):
    child = subprocess.Popen(
        [sys.executable, "-c", TAKER, instance],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().split() == ["took", "7"]  # its 3 + the 4 of the reserve
        q = BufferPool.attach(instance, 0)
        try:
            io = IoBufs(q)
            mine = [io.try_acquire(100) for _ in range(3)]
            assert all(mine) and io.try_acquire(100) is None
            got = []
            w = io.acquire(100, got.append)
            assert w is not None and io.queued == 1
            io.poll()
            assert got == []  # nothing came back yet
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "gave"
            io.poll()  # what the reactor's timer does
            assert len(got) == 1 and io.queued == 0
            assert io.stats()["waits"] == 1 and io.stats()["in_use"] == 4
            for iov in mine + got:
                io.release(iov)
        finally:
            q.close()
    finally:
        child.stdin.close()
        child.wait(10)
        child.stdout.close()
