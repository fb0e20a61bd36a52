import contextlib
import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from blockfabric.shm import segment as segmod
from blockfabric.shm.manifest import Manifest
from blockfabric.shm.segment import HugePagesUnavailable, SharedSegment

CHILD = """
import sys
from blockfabric.shm.segment import SharedSegment
seg = SharedSegment.attach(sys.argv[1])
print(seg.size, seg.hugepage, bytes(seg.buf[:16]).hex(), flush=True)
seg.buf[100:105] = b"child"
seg.close()
"""


def _child(name):
    r = subprocess.run(
        [sys.executable, "-c", CHILD, name], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_create_attach_other_process(instance):
    seg = SharedSegment.create(instance, "data", 1 << 20, hugepages="never")
    try:
        assert seg.name == f"blockfabric.{instance}.data"
        assert seg.path == f"/dev/shm/blockfabric.{instance}.data"
        assert not seg.hugepage and seg.size == 1 << 20 and len(seg.buf) == 1 << 20
        assert bytes(seg.buf[:4096]) == bytes(4096)  # kernel zero-fill
        seg.buf[:16] = bytes(range(16))
        for form in (seg.name, "/" + seg.name, seg.path):
            size, huge, head = _child(form)
            assert (int(size), huge, head) == (1 << 20, "False", bytes(range(16)).hex())
        assert bytes(seg.buf[100:105]) == b"child"
        e = Manifest.load(instance).entry(seg.name)
        assert (e.kind, e.path, e.size, e.owner_pid) == ("shm", seg.path, 1 << 20, os.getpid())
    finally:
        seg.close()
        seg.unlink()
    assert not os.path.exists(seg.path)
    assert Manifest.load(instance).objects == []


def test_duplicate_and_bad_args(instance):
    seg = SharedSegment.create(instance, "dup", 4096, hugepages="never")
    try:
        with pytest.raises(FileExistsError, match="already exists"):
            SharedSegment.create(instance, "dup", 4096, hugepages="never")
    finally:
        seg.close()
        seg.unlink()
    with pytest.raises(ValueError, match="size"):
        SharedSegment.create(instance, "z", 0)
    with pytest.raises(ValueError, match="hugepages"):
        SharedSegment.create(instance, "z", 4096, hugepages="maybe")
    with pytest.raises(ValueError, match="invalid object tag"):
        SharedSegment.create(instance, "a/b", 4096)
    with pytest.raises(FileNotFoundError):
        SharedSegment.attach(f"blockfabric.{instance}.missing")
    with pytest.raises(ValueError, match="not a blockfabric segment"):
        SharedSegment.attach("something")


def test_close_with_exported_view_is_deferred(instance):
    seg = SharedSegment.create(instance, "views", 8192, hugepages="never")
    seg.unlink()
    view = seg.buf[10:20]
    assert seg.close() is False  # a view is alive: unmap waits
    assert seg.closed
    assert seg.close() is True  # idempotent
    view[0] = 1  # still mapped, no crash
    del view
    gc.collect()
    assert segmod.pending_unmaps() == 0


def test_require_hugepages_without_mount(instance):
    if segmod.hugetlbfs_mounts():
        pytest.skip("a hugetlbfs mount exists on this host")
    with pytest.raises(HugePagesUnavailable, match="no writable hugetlbfs mount"):
        SharedSegment.create(instance, "h", 4096, hugepages="require")
    assert not Path(f"/dev/shm/blockfabric.{instance}.h").exists()


@contextlib.contextmanager
def _hugepages(npages):
    """Reserve npages 2 MiB pages and mount hugetlbfs; skip with the system's reason."""
    if os.geteuid() != 0:
        pytest.skip("needs root to reserve huge pages and mount hugetlbfs")
    knob = Path("/proc/sys/vm/nr_hugepages")
    try:
        old = int(knob.read_text())
    except OSError as e:
        pytest.skip(f"cannot read {knob}: {e}")
    try:
        knob.write_text(str(old + npages))
    except OSError as e:
        pytest.skip(f"kernel refused to reserve huge pages ({knob}): {e}")
    mnt = tempfile.mkdtemp(prefix="bf-huge-")
    mounted = False
    try:
        free = segmod._pool_free_pages(segmod.HUGE_2M)
        if free < npages:
            meminfo = [
                ln
                for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("HugePages_")
            ]
            pytest.skip(f"kernel gave only {free} free 2 MiB pages: {'; '.join(meminfo)}")
        r = subprocess.run(
            ["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0700", "nodev", mnt],
            capture_output=True,
            text=True,
        )
        if r.returncode:
            pytest.skip(f"mount -t hugetlbfs failed: {r.stderr.strip()}")
        mounted = True
        yield mnt
    finally:
        if mounted:
            # Lazy unmount if some other process still maps a file there.
            if subprocess.run(["umount", mnt], capture_output=True).returncode:
                subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)
        knob.write_text(str(old))


def test_hugetlbfs_backed_segment(instance):
    from blockfabric.shm.pool import BufferPool
    from blockfabric.tools.shm_cmd import list_objects

    with _hugepages(3) as mnt:
        seg = SharedSegment.create(instance, "huge", 3 * 1024 * 1024 - 5, hugepages="require")
        try:
            assert seg.hugepage
            assert seg.path == os.path.join(mnt, seg.name)
            assert seg.size == 4 * 1024 * 1024  # rounded up to 2 MiB pages
            assert Manifest.load(instance).entry(seg.name).kind == "hugetlbfs"
            seg.buf[:16] = bytes(range(16))
            size, huge, head = _child(seg.name)  # found through the manifest
            assert (int(size), huge, head) == (seg.size, "True", bytes(range(16)).hex())
            assert bytes(seg.buf[100:105]) == b"child"
            listed = [o for o in list_objects() if o["name"] == seg.name]
            assert [(o["kind"], o["path"], o["alive"]) for o in listed] == [
                ("hugetlbfs", seg.path, True)
            ]
            pool = BufferPool.create(
                instance, 1, small_count=8, large_count=4, hugepages="require", reactor_id=0
            )
            try:
                assert pool.stats()["hugepage"] and pool.segment.size == 2 * 1024 * 1024
                b = pool.get(5000)
                b.view[:3] = b"hug"
                assert bytes(pool.view_of(b.ref)[:3]) == b"hug"
                pool.put(b)
            finally:
                pool.destroy()
            pool_hog = SharedSegment.create(instance, "hog", 4096, hugepages="require")
            # No pages left: auto falls back to /dev/shm, require refuses.
            other = SharedSegment.create(instance, "small", 4096, hugepages="auto")
            assert not other.hugepage and other.path.startswith("/dev/shm/")
            other.close()
            other.unlink()
            with pytest.raises(HugePagesUnavailable, match="not enough free huge pages"):
                SharedSegment.create(instance, "more", 4096, hugepages="require")
            pool_hog.close()
            pool_hog.unlink()
        finally:
            seg.close()
            seg.unlink()
        assert not os.path.exists(seg.path)
