"""aio bdev: FUA/write-through/flush reach the file durably, errors and short
I/O never report success, O_DIRECT, reads into the caller's buffer."""

from __future__ import annotations

import errno
import mmap
import os
import time

import pytest

from blockfabric.actors.loop import EventLoop
from blockfabric.bdevs import aio as aio_mod
from blockfabric.bdevs.aio import AioBdev
from blockfabric.bdevs.base import IoStatus

BS = 4096


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(64 * BS))
    return path


def _sync(call, *args, **kw):
    out = []
    call(*args, out.append, **kw)
    return out[0]


def _read(ch, off, n, into=None):
    out = []
    ch.read(off, n, lambda st, v: out.append((st, v)), into)
    return out[0]


class Spy:
    def __init__(self, monkeypatch):
        self.calls: list[tuple] = []
        real_pwritev, real_fdatasync = os.pwritev, os.fdatasync

        def pwritev(fd, bufs, off, flags=0):
            self.calls.append(("pwritev", off, flags))
            return real_pwritev(fd, bufs, off, flags)

        def fdatasync(fd):
            self.calls.append(("fdatasync",))
            return real_fdatasync(fd)

        monkeypatch.setattr(os, "pwritev", pwritev)
        monkeypatch.setattr(os, "fdatasync", fdatasync)


def test_fua_write_is_dsync_plain_write_is_not(disk, monkeypatch):
    spy = Spy(monkeypatch)
    ch = AioBdev.create("A", str(disk), BS).open_channel()
    assert _sync(ch.write, 1, memoryview(b"p" * BS)) == IoStatus.SUCCESS
    assert spy.calls == [("pwritev", BS, 0)]
    spy.calls.clear()
    assert _sync(ch.write, 2, memoryview(b"f" * BS), fua=True) == IoStatus.SUCCESS
    assert spy.calls == [("pwritev", 2 * BS, os.RWF_DSYNC)]
    spy.calls.clear()
    ch.write_through = True
    assert _sync(ch.write, 3, memoryview(b"w" * BS)) == IoStatus.SUCCESS
    assert spy.calls == [("pwritev", 3 * BS, os.RWF_DSYNC)]
    spy.calls.clear()
    assert _sync(ch.flush) == IoStatus.SUCCESS
    assert spy.calls == [("fdatasync",)]
    ch.close()
    assert disk.read_bytes()[BS : 4 * BS] == b"p" * BS + b"f" * BS + b"w" * BS


def test_fua_compare_and_write_is_dsync(disk, monkeypatch):
    spy = Spy(monkeypatch)
    ch = AioBdev.create("A", str(disk), BS).open_channel()
    out = []
    ch.compare_and_write(
        0, memoryview(bytes(BS)), memoryview(b"c" * BS), lambda s, d: out.append((s, d)), fua=True
    )
    assert out == [(IoStatus.SUCCESS, -1)]
    assert spy.calls == [("pwritev", 0, os.RWF_DSYNC)]
    ch.close()


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "EIO"), RuntimeError("bug"), MemoryError()])
def test_worker_errors_of_any_kind_fail_the_io(disk, monkeypatch, exc):
    ch = AioBdev.create("A", str(disk), BS).open_channel()

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(os, "preadv", boom)
    monkeypatch.setattr(os, "pwritev", boom)
    monkeypatch.setattr(os, "fdatasync", boom)
    assert _read(ch, 0, 1) == (IoStatus.FAILED, None)
    assert _sync(ch.write, 0, memoryview(bytes(BS))) == IoStatus.FAILED
    assert _sync(ch.flush) == IoStatus.FAILED
    assert _sync(ch.write_zeroes, 0, 2) == IoStatus.FAILED
    out = []
    ch.compare_and_write(
        0, memoryview(bytes(BS)), memoryview(bytes(BS)), lambda s, d: out.append(s)
    )
    ch.compare(0, memoryview(bytes(BS)), lambda s, d: out.append(s))
    assert out == [IoStatus.FAILED, IoStatus.FAILED]
    ch.close()


def test_worker_error_on_a_loop_completes_on_the_loop(disk, monkeypatch):
    loop = EventLoop("blocking")
    ch = AioBdev.create("A", str(disk), BS).open_channel(loop)

    def boom(*a, **k):
        raise ValueError("unexpected")

    monkeypatch.setattr(os, "pwritev", boom)
    got = []
    ch.write(0, memoryview(bytes(BS)), got.append)
    end = time.monotonic() + 5
    while not got and time.monotonic() < end:
        loop.run_once(0.05)
    assert got == [IoStatus.FAILED] and ch.in_flight == 0
    ch.close()
    loop.close()


def test_short_io_retries_the_remainder(disk, monkeypatch):
    ch = AioBdev.create("A", str(disk), BS).open_channel()
    real_pwritev, real_preadv = os.pwritev, os.preadv
    calls = {"w": 0, "r": 0}

    def half_pwritev(fd, bufs, off, flags=0):
        calls["w"] += 1
        b = memoryview(bufs[0])
        return real_pwritev(fd, [b[: max(512, len(b) // 2)]], off, flags)

    def half_preadv(fd, bufs, off):
        calls["r"] += 1
        b = memoryview(bufs[0])
        return real_preadv(fd, [b[: max(512, len(b) // 2)]], off)

    monkeypatch.setattr(os, "pwritev", half_pwritev)
    monkeypatch.setattr(os, "preadv", half_preadv)
    data = os.urandom(2 * BS)
    assert _sync(ch.write, 4, memoryview(data), fua=True) == IoStatus.SUCCESS
    assert calls["w"] > 1
    st, v = _read(ch, 4, 2)
    assert st == IoStatus.SUCCESS and bytes(v) == data and calls["r"] > 1
    ch.close()


def test_no_progress_fails_never_succeeds(disk, monkeypatch):
    ch = AioBdev.create("A", str(disk), BS).open_channel()
    monkeypatch.setattr(os, "pwritev", lambda *a, **k: 0)
    monkeypatch.setattr(os, "preadv", lambda *a, **k: 0)
    assert _sync(ch.write, 0, memoryview(bytes(BS))) == IoStatus.FAILED
    assert _read(ch, 0, 1) == (IoStatus.FAILED, None)
    ch.close()


def test_file_truncated_under_us_fails_reads(disk):
    ch = AioBdev.create("A", str(disk), BS).open_channel()
    os.truncate(disk, 10 * BS)
    assert _read(ch, 20, 1)[0] == IoStatus.FAILED  # beyond the new end: EOF
    assert _read(ch, 9, 2)[0] == IoStatus.FAILED  # straddles it: short, then EOF
    assert _read(ch, 5, 1)[0] == IoStatus.SUCCESS
    ch.close()


def test_read_into_lands_in_the_callers_buffer(disk):
    ch = AioBdev.create("A", str(disk), BS).open_channel()
    _sync(ch.write, 0, memoryview(b"i" * BS))
    into = memoryview(bytearray(2 * BS))
    st, v = _read(ch, 0, 1, into)
    assert st == IoStatus.SUCCESS and v.obj is into.obj and bytes(into[:BS]) == b"i" * BS
    assert _read(ch, 0, 2, memoryview(bytearray(BS)))[0] == IoStatus.FAILED  # too small
    ch.close()


def test_compare_reports_first_differing_byte(disk):
    ch = AioBdev.create("A", str(disk), BS).open_channel()
    _sync(ch.write, 0, memoryview(b"a" * BS * 2))
    probe = bytearray(b"a" * BS * 2)
    probe[BS + 17] = 0
    out = []
    ch.compare(0, memoryview(bytes(probe)), lambda s, d: out.append((s, d)))
    ch.compare_and_write(
        0, memoryview(bytes(probe)), memoryview(bytes(2 * BS)), lambda s, d: out.append((s, d))
    )
    assert out == [(IoStatus.MISCOMPARE, BS + 17)] * 2
    assert bytes(_read(ch, 0, 2)[1]) == b"a" * BS * 2  # miscompare wrote nothing
    ch.close()


def test_direct_io_aligned_and_unaligned_buffers(disk):
    b = AioBdev.create("D", str(disk), BS, direct=True)
    assert b.describe()["direct"] is True and b.create_params["direct"] is True
    ch = b.open_channel()
    assert ch.fd >= 0 and os.get_blocking(ch.fd)
    flags = int(open(f"/proc/self/fdinfo/{ch.fd}").read().split("flags:")[1].split()[0], 8)
    assert flags & os.O_DIRECT
    data = os.urandom(3 * BS)  # bytes: read-only, not known aligned -> bounce
    assert _sync(ch.write, 2, memoryview(data), fua=True) == IoStatus.SUCCESS
    aligned = memoryview(mmap.mmap(-1, 4 * BS))
    st, v = _read(ch, 2, 3, aligned)
    assert st == IoStatus.SUCCESS and bytes(v) == data
    st, v = _read(ch, 2, 3, memoryview(bytearray(3 * BS + 1))[1:])  # unaligned into
    assert st == IoStatus.SUCCESS and bytes(v) == data
    assert _sync(ch.write_zeroes, 3, 1) == IoStatus.SUCCESS
    assert bytes(_read(ch, 2, 3)[1]) == data[:BS] + bytes(BS) + data[2 * BS :]
    ch.close()
    assert aio_mod.DIRECT_ALIGN == 4096


def test_direct_refused_where_unsupported(tmp_path):
    p = f"/dev/shm/bf-direct-probe-{os.getpid()}"
    with open(p, "wb") as f:
        f.write(bytes(8192))
    try:
        try:
            fd = os.open(p, os.O_RDWR | os.O_DIRECT)
            os.close(fd)
            supported = True
        except OSError:
            supported = False
        if supported:
            assert AioBdev.create("D", p, 4096, direct=True).direct
        else:
            with pytest.raises(ValueError, match="O_DIRECT"):
                AioBdev.create("D", p, 4096, direct=True)
    finally:
        os.unlink(p)
