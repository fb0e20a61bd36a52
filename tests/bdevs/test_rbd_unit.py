"""bdev_rbd without a cluster: a fake librados/librbd stands in, so the
channel's state machine (open queueing, error mapping, loss, reconnect,
close with I/O in flight) is checked deterministically and fast."""

from __future__ import annotations

import errno
import threading
import time
from typing import Any

import pytest

from blockfabric.bdevs import rbd as R
from blockfabric.bdevs.base import IoStatus


class FakeCompletion:
    def __init__(self, rv: int) -> None:
        self.rv = rv

    def get_return_value(self) -> int:
        return self.rv

    def wait_for_complete_and_cb(self) -> None:
        pass


class FakeImage:
    """Completes every aio on a thread of its own (as librbd's finisher)."""

    def __init__(self, cluster: FakeCluster, name: str) -> None:
        self.cluster = cluster
        self.data = cluster.images.setdefault(name, bytearray(1 << 20))
        self.closed = False

    def _later(self, cb: Any, rv: int, data: Any = None) -> FakeCompletion:
        comp = FakeCompletion(rv)

        def run() -> None:
            time.sleep(self.cluster.delay)
            if data is None:
                cb(comp)
            else:
                cb(comp, data)

        if self.cluster.sync:
            run()
        else:
            threading.Thread(target=run, daemon=True).start()
        return comp

    def _rv(self, ok: int) -> int:
        return -self.cluster.fail_errno if self.cluster.fail_errno else ok

    def aio_read(self, off: int, n: int, cb: Any) -> FakeCompletion:
        rv = self._rv(n)
        return self._later(cb, rv, bytes(self.data[off : off + n]) if rv >= 0 else None)

    def aio_write(self, data: bytes, off: int, cb: Any) -> FakeCompletion:
        assert isinstance(data, bytes)
        rv = self._rv(0)
        if rv == 0:
            self.data[off : off + len(data)] = data
        self.cluster.ops.append(("write", off, len(data)))
        return self._later(cb, rv)

    def aio_flush(self, cb: Any) -> FakeCompletion:
        self.cluster.ops.append(("flush",))
        return self._later(cb, self._rv(0))

    def aio_discard(self, off: int, n: int, cb: Any) -> FakeCompletion:
        self.data[off : off + n] = bytes(n)
        self.cluster.ops.append(("discard", off, n))
        return self._later(cb, self._rv(0))

    def aio_write_zeroes(self, off: int, n: int, cb: Any) -> FakeCompletion:
        self.data[off : off + n] = bytes(n)
        self.cluster.ops.append(("write_zeroes", off, n))
        return self._later(cb, self._rv(0))

    def close(self) -> None:
        self.closed = True
        self.cluster.closed_images += 1


class FakeCluster:
    def __init__(self) -> None:
        self.images: dict[str, bytearray] = {}
        self.fail_errno = 0
        self.refuse_connect = False
        self.connects = 0
        self.shutdowns = 0
        self.closed_images = 0
        self.ops: list[tuple[Any, ...]] = []
        self.delay = 0.0
        self.sync = False


class FakeRados:
    def __init__(self, fc: FakeCluster) -> None:
        self.fc = fc

    def open_ioctx(self, pool: str) -> Any:
        return type("Io", (), {"close": lambda self: None, "pool": pool})()

    def get_fsid(self) -> str:
        if self.fc.refuse_connect:
            raise OSError(errno.ENOTCONN, "gone")
        return "fsid"

    def shutdown(self) -> None:
        self.fc.shutdowns += 1


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    fc = FakeCluster()

    def connect(cluster: dict[str, Any]) -> Any:
        if fc.refuse_connect:
            raise OSError(errno.ETIMEDOUT, "connect timed out")
        fc.connects += 1
        return FakeRados(fc)

    class FakeRbdModule:
        @staticmethod
        def Image(ioctx: Any, name: str, read_only: bool = False) -> FakeImage:  # noqa: N802
            if fc.refuse_connect:
                raise OSError(errno.ETIMEDOUT, "timed out")
            if name == "missing":
                raise OSError(errno.ENOENT, "RBD image not found")
            return FakeImage(fc, name)

    monkeypatch.setattr(R, "connect", connect)
    monkeypatch.setattr(R, "bindings", lambda: (None, FakeRbdModule))
    monkeypatch.setattr(R, "_PROC", None)
    return fc


def _bdev(image: str = "img", **cluster: Any) -> R.RbdBdev:
    b = R.RbdBdev(name="r0", block_size=512, num_blocks=2048, product_name=R.RbdBdev.PRODUCT)
    b.pool_name, b.rbd_name = "rbd", image
    b.cluster = {"user_id": "admin", **cluster}
    b.reconnect_delay = 0.05
    return b


def _run(loop: Any, cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        loop.run_once(0.01)


def test_parse_core_mask_and_conf() -> None:
    assert R.parse_core_mask("0x5") == {0, 2}
    assert R.parse_core_mask("[0,2-3]") == {0, 2, 3}
    assert R.parse_core_mask(None) == set(range(__import__("os").cpu_count() or 1))
    with pytest.raises(ValueError):
        R.parse_core_mask("zz")
    conf = R.conn_conf({"key_file": "/k", "config_param": {"rbd_skip_partial_discard": "true"}})
    assert conf["keyring"] == "/k"
    assert conf["rbd_skip_partial_discard"] == "false"  # forced: DLFEAT / LBPRZ promise zeroes
    assert conf["rados_osd_op_timeout"] == str(R.RBD_OP_TIMEOUT)
    assert (
        R.conn_conf({"config_param": {"rados_osd_op_timeout": "3"}})["rados_osd_op_timeout"] == "3"
    )


def test_description_round_trip() -> None:
    from blockfabric.bdevs.registry import bdev_from_description

    b = _bdev(core_mask="0x1")
    b.cluster_name = "c1"
    d = b.describe()
    b2 = bdev_from_description(d)
    assert isinstance(b2, R.RbdBdev)
    assert (b2.pool_name, b2.rbd_name, b2.cluster_name, b2.cluster) == (
        "rbd",
        "img",
        "c1",
        {"user_id": "admin", "core_mask": "0x1"},
    )
    b2.update_description({**d, "num_blocks": 4096})
    assert b2.num_blocks == 4096
    assert b.driver_specific() == {
        "rbd": {"pool_name": "rbd", "rbd_name": "img", "cluster_name": "c1"}
    }


def test_io_on_a_loop_fua_flush_zeroes(fake: FakeCluster) -> None:
    from blockfabric.actors.loop import EventLoop

    loop = EventLoop()
    try:
        ch = _bdev().open_channel(loop)
        assert isinstance(ch, R.RbdChannel) and ch.state == "opening"
        res: list[Any] = []
        ch.write(0, memoryview(b"a" * 1024), res.append, fua=True)  # queued until open
        _run(loop, lambda: res)
        assert res == [IoStatus.SUCCESS] and ch.state == "ready"
        assert fake.ops == [("write", 0, 1024), ("flush",)]  # FUA = write, then flush
        fake.ops.clear()
        ch.write_through = True  # VWC off / WCE=0: every write is followed by a flush
        ch.write(4, memoryview(b"b" * 512), res.append)
        ch.write_zeroes(0, 1, res.append)
        ch.unmap(8, 2, res.append)
        _run(loop, lambda: len(res) == 4)
        assert sorted(fake.ops, key=str) == sorted(
            [("write", 2048, 512), ("flush",), ("write_zeroes", 0, 512), ("discard", 4096, 1024)],
            key=str,
        )
        into = memoryview(bytearray(1024))
        got: list[Any] = []
        ch.read(0, 2, lambda st, mv: got.append((st, mv)), into=into)
        _run(loop, lambda: got)
        st, mv = got[0]
        assert st == IoStatus.SUCCESS and bytes(mv) == bytes(512) + b"a" * 512
        assert mv.obj is into.obj
        # compare-and-write is refused (it could not be atomic), and writes nothing
        fake.ops.clear()
        caw: list[Any] = []
        ch.compare_and_write(
            0, memoryview(b"a" * 512), memoryview(b"c" * 512), lambda *a: caw.append(a)
        )
        assert caw == [(IoStatus.UNSUPPORTED, -1)] and fake.ops == []
        assert fake.connects == 1  # one connection per process
        ch2 = _bdev("img2").open_channel(loop)  # a second bdev shares it
        _run(loop, lambda: ch2.state == "ready")
        assert fake.connects == 1
        ch.close()
        ch2.close()
        _run(loop, lambda: fake.shutdowns == 1)  # the last user tore it down
        assert ch.state == "closed" and fake.closed_images == 2
    finally:
        loop.close()


def test_media_error_fails_io_but_keeps_the_connection(fake: FakeCluster) -> None:
    fake.sync = True
    ch = _bdev().open_channel(None)
    assert ch.state == "ready"
    fake.fail_errno = errno.EIO
    res: list[Any] = []
    ch.write(0, memoryview(bytes(512)), res.append)
    ch.read(0, 1, lambda st, mv: res.append((st, mv)))
    ch.flush(res.append)
    assert res == [IoStatus.FAILED, (IoStatus.FAILED, None), IoStatus.FAILED]
    assert ch.state == "ready" and ch.stats.io_errors == 3
    fake.fail_errno = 0
    ch.write(0, memoryview(bytes(512)), res.append)
    assert res[-1] == IoStatus.SUCCESS
    ch.close()


def test_lost_cluster_fails_fast_then_reconnects(fake: FakeCluster) -> None:
    from blockfabric.actors.loop import EventLoop

    loop = EventLoop()
    try:
        ch = _bdev().open_channel(loop)
        assert isinstance(ch, R.RbdChannel)
        _run(loop, lambda: ch.state == "ready")
        fake.fail_errno = errno.ETIMEDOUT  # rados_osd_op_timeout fired
        fake.refuse_connect = True
        res: list[Any] = []
        ch.write(0, memoryview(bytes(512)), res.append)
        _run(loop, lambda: res)
        assert res == [IoStatus.FAILED] and ch.state == "lost"
        assert "connection lost" in ch.last_error
        # while lost (and while reconnect attempts fail) I/O fails at once
        for _ in range(3):
            loop.run_once(0.06)
            res.clear()
            ch.read(0, 1, lambda st, mv: res.append(st))
            assert res == [IoStatus.FAILED]
        assert ch.reconnects >= 1
        # the old image is closed and the old connection shut down once idle
        _run(loop, lambda: fake.closed_images == 1 and fake.shutdowns == 1)
        # the cluster comes back: the next attempt reopens, I/O works again
        fake.fail_errno = 0
        fake.refuse_connect = False
        _run(loop, lambda: ch.state == "ready")
        assert fake.connects == 2 and ch.gen == 2
        res.clear()
        ch.write(1, memoryview(b"x" * 512), res.append)
        _run(loop, lambda: res)
        assert res == [IoStatus.SUCCESS]
        ch.close()
    finally:
        loop.close()


def test_open_failure_and_bounded_queue(fake: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from blockfabric.actors.loop import EventLoop

    monkeypatch.setattr(R, "MAX_PENDING", 4)
    loop = EventLoop()
    try:
        ch = _bdev("missing").open_channel(loop)
        res: list[Any] = []
        for i in range(6):  # 4 queue, 2 are refused at once
            ch.write(i, memoryview(bytes(512)), res.append)
        assert res == [IoStatus.FAILED, IoStatus.FAILED]
        _run(loop, lambda: len(res) == 6)
        assert res == [IoStatus.FAILED] * 6 and ch.state == "lost"
        assert "RBD image not found" in ch.last_error
        ch.close()
        assert ch.state == "closed"
    finally:
        loop.close()


def test_close_waits_for_in_flight(fake: FakeCluster) -> None:
    from blockfabric.actors.loop import EventLoop

    loop = EventLoop()
    try:
        ch = _bdev().open_channel(loop)
        _run(loop, lambda: ch.state == "ready")
        fake.delay = 0.2
        res: list[Any] = []
        ch.write(0, memoryview(bytes(512)), res.append)
        ch.close()
        assert ch.state == "ready" and fake.closed_images == 0  # still in flight
        _run(loop, lambda: res and ch.state == "closed")
        assert res == [IoStatus.SUCCESS]
        _run(loop, lambda: fake.closed_images == 1)
        ch.write(0, memoryview(bytes(512)), res.append)  # after close: REMOVED
        assert res[-1] == IoStatus.REMOVED
    finally:
        loop.close()


def test_cli_forms_are_spdk_rpc_py_forms() -> None:
    """`blockfabric rpc` takes rpc.py's forms: positionals, --user, repeated --config k=v."""
    import json
    import subprocess
    import sys

    def req(*args: str) -> Any:
        p = subprocess.run(
            [sys.executable, "-m", "blockfabric.tools.cli", "rpc", "--dry-run", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout.split("Request:", 1)[1])

    r = req("bdev_rbd_create", "rbd", "img", "4096", "-b", "R0", "--user", "admin",
            "--config", "mon_host=127.0.0.1:6789", "--config", "key=a=b")  # fmt: skip
    assert r["params"] == {
        "pool_name": "rbd",
        "rbd_name": "img",
        "block_size": 4096,
        "name": "R0",
        "user_id": "admin",
        "config": {"mon_host": "127.0.0.1:6789", "key": "a=b"},
    }
    r = req("bdev_rbd_register_cluster", "c1", "--config-file", "/c", "--key-file", "/k",
            "--config-param", "rados_osd_op_timeout=3", "--core-mask", "0x2")  # fmt: skip
    assert r["params"] == {
        "name": "c1",
        "config_file": "/c",
        "key_file": "/k",
        "config_param": {"rados_osd_op_timeout": "3"},
        "core_mask": "0x2",
    }
    assert req("bdev_rbd_resize", "R0", "100")["params"] == {"name": "R0", "new_size": 100}
    assert req("bdev_rbd_get_clusters_info", "-b", "c1")["params"] == {"name": "c1"}
    p = subprocess.run(
        [sys.executable, "-m", "blockfabric.tools.cli", "rpc", "--dry-run",
         "bdev_rbd_create", "rbd", "img", "512", "--config", "novalue"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode != 0 and "key=value" in p.stderr
