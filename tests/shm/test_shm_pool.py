import os
import signal
import subprocess
import sys

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from blockfabric.shm.bufref import BufRef
from blockfabric.shm.manifest import Manifest
from blockfabric.shm.pool import LARGE_SIZE, SMALL_SIZE, BufferPool, PoolError


@pytest.fixture
def pool(instance):
    # 2 reactors; small: 10 buffers -> 3 each + 4 reserve; large: 4 -> 1 each + 2 reserve
    p = BufferPool.create(
        instance, 2, small_count=10, large_count=4, hugepages="never", reactor_id=0
    )
    yield p
    p.destroy()


def test_layout_and_stats(pool, instance):
    s = pool.stats()
    assert s["name"] == f"blockfabric.{instance}.bufpool"
    assert s["small"]["count"] == 10 and s["small"]["per_reactor"] == 3
    assert s["small"]["reserve_count"] == 4 and s["small"]["reserve_free"] == 4
    assert s["large"]["per_reactor"] == 1 and s["large"]["reserve_free"] == 2
    assert s["small"]["local_free"] == 3 and s["small"]["in_use"] == 0
    kinds = sorted(o.kind for o in Manifest.load(instance).objects)
    assert kinds == ["sem", "shm"]
    assert os.path.exists(f"/dev/shm/sem.blockfabric.{instance}.bufpool")


def test_get_sizes_alignment_and_refs(pool):
    b = pool.get(1)
    assert len(b.view) == 1 and b.capacity == SMALL_SIZE and b.offset % 4096 == 0
    b2 = pool.get(SMALL_SIZE + 1)
    assert len(b2.view) == SMALL_SIZE + 1 and b2.capacity == LARGE_SIZE
    assert b2.offset % 4096 == 0
    b2.view[:5] = b"hello"
    ref = b2.ref
    assert isinstance(ref, BufRef) and ref.segment == pool.name and ref.length == SMALL_SIZE + 1
    assert bytes(pool.view_of(BufRef(ref.segment, ref.offset, 5))) == b"hello"
    with pytest.raises(ValueError, match="exceeds"):
        pool.get(LARGE_SIZE + 1)
    with pytest.raises(ValueError, match="not blockfabric"):
        pool.view_of(BufRef("blockfabric.other.bufpool", 0, 1))
    with pytest.raises(ValueError, match="outside"):
        pool.view_of(BufRef(pool.name, pool.segment.size - 1, 2))
    pool.put(b)
    pool.put(b2)
    with pytest.raises(ValueError, match="double put"):
        pool.put(b)
    with pytest.raises(ValueError, match="not the start of a buffer"):
        pool.put(BufRef(pool.name, b.offset + 1, 1))


def test_exhaustion_then_reuse(pool):
    got = [pool.get(100) for _ in range(7)]  # 3 own + 4 reserve
    assert all(got)
    assert len({g.offset for g in got}) == 7
    assert pool.get(100) is None
    s = pool.stats()["small"]
    assert s["nomem"] == 1 and s["reserve_gets"] == 4 and s["in_use"] == 7
    # Large buffers are a separate class: still available.
    assert pool.get(SMALL_SIZE * 2) is not None
    pool.put(got[0])
    again = pool.get(10)
    assert again is not None and again.offset == got[0].offset


def test_mem_mb_split(instance):
    p = BufferPool.create(instance, 1, mem_mb=8, hugepages="never")
    try:
        s = p.stats()
        mib = 1024 * 1024
        assert s["small"]["count"] == 2 * mib // 8192
        assert s["large"]["count"] == 6 * mib // 135168
        assert p.reactor_id is None and s["small"]["local_free"] == 0
        assert p.get(10) is not None  # reserve-only user
    finally:
        p.destroy()
    with pytest.raises(ValueError, match="not both"):
        BufferPool.create(instance, 1, mem_mb=8, small_count=1, large_count=1)
    with pytest.raises(ValueError, match="nreactors"):
        BufferPool.create(instance, 0)


def test_reactor_claim(pool, instance):
    with pytest.raises(PoolError, match="already attached in this process"):
        BufferPool.attach(instance, 0)
    with pytest.raises(ValueError, match="reactor_id"):
        BufferPool.attach(instance, 2)
    q = BufferPool.attach(instance, 1)
    q.close()
    q = BufferPool.attach(pool.name, 1)  # by object name, after release
    q.close()


CHILD = """
import sys
from blockfabric.shm.bufref import BufRef
from blockfabric.shm.pool import BufferPool
inst, off, ln = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
p = BufferPool.attach(inst, 1)
ref = BufRef(p.name, off, ln)
data = bytes(p.view_of(ref))
p.put(ref)                      # not ours: goes to the reserve
mine = p.get(4000)              # from reactor 1's own share
mine.view[:4] = b"kid!"
print(data.decode(), mine.offset, mine.length, p.stats()["small"]["reserve_puts"], flush=True)
if len(sys.argv) > 4:
    p.get(10)                   # hold two buffers and die without putting them
    sys.stdout.write("holding\\n"); sys.stdout.flush()
    import time; time.sleep(60)
p.close()
"""


def test_cross_process_put_goes_to_reserve(pool, instance):
    b = pool.get(6)
    b.view[:] = b"parent"
    before = pool.stats()["small"]["reserve_free"]
    r = subprocess.run(
        [sys.executable, "-c", CHILD, instance, str(b.offset), "6"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    data, off, ln, rputs = r.stdout.split()
    assert (data, rputs) == ("parent", "1")
    assert pool.stats()["small"]["reserve_free"] == before + 1
    with pytest.raises(ValueError, match="double put"):
        pool.put(b)  # the child already gave it back
    # The child's buffer (reactor 1's share, still held) is readable here and
    # our put sends it to the reserve, not to our own list.
    ref = BufRef(pool.name, int(off), int(ln))
    assert bytes(pool.view_of(ref)[:4]) == b"kid!"
    local = pool.stats()["small"]["local_free"]
    pool.put(ref)
    s = pool.stats()["small"]
    assert s["reserve_free"] == before + 2 and s["local_free"] == local


def test_restarted_reactor_does_not_reissue_inflight(pool, instance):
    b = pool.get(3)
    b.view[:] = b"abc"
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, instance, str(b.offset), "3", "hold"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().split()[0] == "abc"
        assert p.stdout.readline().strip() == "holding"
        with pytest.raises(PoolError, match=f"attached by live pid {p.pid}"):
            BufferPool.attach(instance, 1)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        p.stdout.close()
    q = BufferPool.attach(instance, 1)  # the dead pid's slot is reclaimed
    try:
        assert q.stats()["small"]["local_free"] == 1  # 3 owned - 2 lost in flight
    finally:
        q.close()


class PoolMachine(RuleBasedStateMachine):
    """Two reactors in one process against a model of free lists + reserve."""

    @initialize()
    def setup(self):
        self.inst = f"sm{os.getpid()}-{id(self) % 100000}"
        self.p0 = BufferPool.create(
            self.inst, 2, small_count=7, large_count=5, hugepages="never", reactor_id=0
        )
        self.p1 = BufferPool.attach(self.inst, 1)
        self.pools = [self.p0, self.p1]
        # model: own[r][cls] = set of indexes, reserve[cls] = set
        self.own = [
            {"small": set(range(0, 2)), "large": set(range(0, 1))},
            {"small": set(range(2, 4)), "large": set(range(1, 2))},
        ]
        self.rng = [
            {"small": range(0, 2), "large": range(0, 1)},
            {"small": range(2, 4), "large": range(1, 2)},
        ]
        self.reserve = {"small": set(range(4, 7)), "large": set(range(2, 5))}
        self.held = []  # (Buffer, cls, idx)

    def teardown(self):
        if hasattr(self, "p1"):
            self.p1.close()
            self.p0.destroy()

    @rule(r=st.integers(0, 1), large=st.booleans(), n=st.integers(0, 4096))
    def get(self, r, large, n):
        cls = "large" if large else "small"
        nbytes = SMALL_SIZE + 1 + n if large else n
        b = self.pools[r].get(nbytes)
        if self.own[r][cls]:
            assert b is not None and b.index in self.own[r][cls]
            self.own[r][cls].discard(b.index)
        elif self.reserve[cls]:
            assert b is not None and b.index in self.reserve[cls]
            self.reserve[cls].discard(b.index)
        else:
            assert b is None
            return
        assert len(b.view) == nbytes
        assert all(h[2] != b.index or h[1] != cls for h in self.held), "double allocation"
        b.view[:1] = b"\x01" if nbytes else b""
        self.held.append((b, cls, b.index))

    @precondition(lambda self: self.held)
    @rule(r=st.integers(0, 1), i=st.integers(0, 100), by_ref=st.booleans())
    def put(self, r, i, by_ref):
        b, cls, idx = self.held.pop(i % len(self.held))
        self.pools[r].put(b.ref if by_ref else b)
        if idx in self.rng[r][cls]:
            self.own[r][cls].add(idx)
        else:
            self.reserve[cls].add(idx)

    @invariant()
    def accounting(self):
        if not hasattr(self, "p0"):
            return
        for cls, total in (("small", 7), ("large", 5)):
            s0, s1 = self.p0.stats()[cls], self.p1.stats()[cls]
            assert s0["reserve_free"] == len(self.reserve[cls])
            assert s0["local_free"] == len(self.own[0][cls])
            assert s1["local_free"] == len(self.own[1][cls])
            held = sum(1 for h in self.held if h[1] == cls)
            assert s0["in_use"] == held
            assert held + s0["reserve_free"] + s0["local_free"] + s1["local_free"] == total


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
