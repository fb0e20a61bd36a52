"""`blockfabric top` the way a person uses it (issue 13 item 3): tmux runs it
in a real terminal during a perf run, keys are sent, the screen is read back
with capture-pane; and ``--once`` for scripts."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from bftest import BIN, missing_tool
from obs_helpers import Target, finish


class Tmux:
    def __init__(self, env: dict[str, str]) -> None:
        self.sock = f"bf-top-{uuid.uuid4().hex[:8]}"
        self.session = "top"
        self.env = env

    def run(self, *args: str) -> str:
        p = subprocess.run(
            ["tmux", "-L", self.sock, *args], capture_output=True, text=True, timeout=30,
            env=self.env,
        )  # fmt: skip
        assert p.returncode == 0, f"tmux {args}: {p.stderr}"
        return p.stdout

    def start(self, cmd: str) -> None:
        self.run("new-session", "-d", "-s", self.session, "-x", "200", "-y", "40", cmd)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session)

    def alive(self) -> bool:
        p = subprocess.run(
            ["tmux", "-L", self.sock, "has-session", "-t", self.session],
            capture_output=True, env=self.env,
        )  # fmt: skip
        return p.returncode == 0

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, env=self.env)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        scr = ""
        while time.monotonic() < deadline:
            scr = self.screen()
            if re.search(pattern, scr, re.M):
                return scr
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} never appeared; the screen:\n{scr}")


@pytest.fixture
def tmux(target: Target) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        missing_tool("tmux is not installed")
    t = Tmux({**target.daemon.env, "TERM": "xterm-256color"})
    yield t
    t.kill()


def _row(scr: str, first: str) -> list[str]:
    for line in scr.splitlines():
        cells = line.split()
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} on the screen:\n{scr}")


def _header(scr: str, first: str) -> list[str]:
    for line in scr.splitlines():
        cells = line.split()
        if cells and cells[0].rstrip("*") == first:
            return [c.rstrip("*") for c in cells]
    raise AssertionError(f"no header {first!r} on the screen:\n{scr}")


def test_top_in_tmux_during_perf(target: Target, tmux: Tmux) -> None:
    d = target.daemon
    cmd = shlex.join([*BIN, "top", "-r", d.rpc_addr, "--view", "bdevs"])
    p = target.perf(30, qd=8)
    try:
        target.wait_io()
        tmux.start(cmd)
        scr = tmux.wait_for(r"^Malloc0\s+[1-9]")  # a non-zero IOPS figure
        head = _header(scr, "BDEV")
        iops_col, reads_col = head.index("IOPS"), head.index("READS")
        first = _row(scr, "Malloc0")
        assert float(first[iops_col]) > 0
        time.sleep(2.5)  # two refreshes later the counters moved
        scr = tmux.screen()
        second = _row(scr, "Malloc0")
        assert int(second[reads_col]) > int(first[reads_col]), (first, second)
        assert float(second[iops_col]) > 0
        # the same count the RPC gives, give or take what completed meanwhile
        rpc_reads = d.rpc("bdev_get_iostat", {"name": "Malloc0"})["bdevs"][0]["num_read_ops"]
        assert int(second[reads_col]) <= rpc_reads
        # reactors view: key 1; the reactor serving the I/O queue is busy
        tmux.keys("1")
        scr = tmux.wait_for(r"\[1:reactors\]")
        scr = tmux.wait_for(r"^\s*LCORE")
        head = _header(scr, "LCORE")
        io_col, conns_col = head.index("NVME_IO/s"), head.index("CONNS")
        time.sleep(1.5)
        scr = tmux.screen()
        rows = [_row(scr, lc) for lc in ("0", "1")]
        assert sum(int(r[conns_col]) for r in rows) == 2  # admin + I/O qpair
        assert max(float(r[io_col]) for r in rows) > 0, scr

        # sort: s moves the sort marker to the next column (PID, largest
        # first), r reverses the order
        def order(scr: str) -> list[str]:
            return [ln.split()[0] for ln in scr.splitlines() if ln.split()[:1] in (["0"], ["1"])]

        pids = {r[0]: int(r[1]) for r in rows}
        tmux.keys("s")
        scr = tmux.wait_for(r"PID\*")
        by_pid = sorted(pids, key=lambda lc: pids[lc], reverse=True)
        assert order(scr) == by_pid, scr
        tmux.keys("r")
        time.sleep(1.0)
        assert order(tmux.screen()) == by_pid[::-1]
        # connections view (Tab from reactors goes to targets, then connections)
        tmux.keys("Tab")
        scr = tmux.wait_for(r"\[2:targets\]")
        scr = tmux.wait_for(r"nqn\.2016-06\.io\.blockfabric:obs1\s+1\s+Malloc0\s+2\s+[1-9]")
        tmux.keys("3")
        scr = tmux.wait_for(r"\[3:connections\]")
        scr = tmux.wait_for(r"^nvmf\s+nqn\.2016-06\.io\.blockfabric:obs1\s+nqn\.\S+\s+127\.0\.0\.1")
        tmux.keys("q")
        deadline = time.monotonic() + 15
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not tmux.alive(), "q did not quit top"
    finally:
        p.kill()
        p.communicate()


def test_top_once(target: Target) -> None:
    p = target.perf(10, qd=4)
    try:
        target.wait_io()
        out = subprocess.run(
            [*BIN, "top", "-r", target.daemon.rpc_addr, "--once"],
            capture_output=True, text=True, timeout=60, env=target.daemon.env,
        )  # fmt: skip
    finally:
        finish(p)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for title in ("Reactors", "Subsystems and target nodes", "Connections per host",
                  "Block devices"):  # fmt: skip
        assert title in text
    row = _row(text, "Malloc0")
    head = _header(text, "BDEV")
    assert float(row[head.index("IOPS")]) > 0 and float(row[head.index("MiB/s")]) > 0
    assert float(row[head.index("RD_LAT_us")]) > 0


def test_top_once_without_target(tmp_path: object) -> None:
    addr = f"ipc:///tmp/bf-none-{os.getpid()}.sock"
    out = subprocess.run(
        [*BIN, "top", "-r", addr, "--once", "--timeout", "1", "--interval", "0.1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "not answering" in out.stderr
