"""Delay bdev: completions held on the loop for the configured latency."""

from __future__ import annotations

import itertools
import os
import time

from blockfabric.actors.loop import EventLoop
from blockfabric.bdevs.base import IoStatus
from blockfabric.bdevs.delay import DelayBdev
from blockfabric.bdevs.malloc import MallocBdev

_seq = itertools.count()
BS = 512


def _wait(loop, out, n, limit=5.0):
    t0 = time.monotonic()
    while len(out) < n and time.monotonic() - t0 < limit:
        loop.run_once(0.001)
    return time.monotonic() - t0


def test_latency_observed_and_updated():
    base = MallocBdev.create(f"dl{os.getpid()}x{next(_seq)}", "B", 64, BS, hugepages="never")
    loop = EventLoop("busy")
    try:
        lat = {
            "avg_read_latency": 20_000,
            "p99_read_latency": 20_000,
            "avg_write_latency": 50_000,
            "p99_write_latency": 50_000,
        }
        d = DelayBdev.create("D", base, lat)
        ch = d.open_channel(loop)
        out: list = []
        t0 = time.monotonic()
        ch.write(0, memoryview(b"w" * BS), out.append, fua=True)
        assert out == []  # held, not completed inline
        took = _wait(loop, out, 1)
        assert out == [IoStatus.SUCCESS] and 0.045 <= time.monotonic() - t0 < 1.0, took
        out = []
        t0 = time.monotonic()
        ch.read(0, 1, lambda s, v: out.append((s, bytes(v))))
        _wait(loop, out, 1)
        assert out == [(IoStatus.SUCCESS, b"w" * BS)]
        assert 0.018 <= time.monotonic() - t0 < 0.5
        # many in flight overlap: 10 reads take ~one latency, not ten
        out = []
        t0 = time.monotonic()
        for i in range(10):
            ch.read(i, 1, lambda s, v: out.append(s))
        _wait(loop, out, 10)
        assert len(out) == 10 and time.monotonic() - t0 < 0.15
        # bdev_delay_update_latency: a reactor gets the new description
        d.set_latency("avg_read", 0)
        d.set_latency("p99_read", 0)
        assert d.create_params["avg_read_latency"] == 0
        copy = DelayBdev.from_description(d.describe())
        copy.update_description({**d.describe()})
        out = []
        ch2 = copy.open_channel(loop)
        ch2.read(0, 1, lambda s, v: out.append(s))
        assert out == [IoStatus.SUCCESS]  # no latency left: inline
        ch.close()
        ch2.close()
    finally:
        loop.close()
        base.destroy()


def test_p99_latency_hits_about_one_in_a_hundred():
    base = MallocBdev.create(f"dl{os.getpid()}x{next(_seq)}", "B", 64, BS, hugepages="never")
    try:
        d = DelayBdev.create(
            "D",
            base,
            {"avg_read_latency": 10, "p99_read_latency": 900, "avg_write_latency": 0,
             "p99_write_latency": 0},
        )  # fmt: skip
        ch = d.open_channel(None)
        lats = [ch._latency(False) for _ in range(20000)]  # type: ignore[attr-defined]
        slow = sum(1 for x in lats if x > 0.0005)
        assert 100 < slow < 320, slow
    finally:
        base.destroy()
