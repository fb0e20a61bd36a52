"""Hostile hosts against a real blockfabric daemon (not a test module).

Shared by tests/adversarial (assertions) and bench/attacks.py (ratios):

* `Target`: one daemon (one reactor, so every attacker shares the reactor of
  the well-behaved host), a malloc bdev exported over NVMe/TCP (plus the
  discovery subsystem on the same port) and iSCSI, the SPDK Unix RPC socket.
* `GoodHost`: a well-behaved host in its own process (so the attackers in the
  test process cannot steal its GIL): QD1 4 KiB write + read-back + compare in
  a loop over NVMe/TCP or iSCSI, completions counted per 50 ms bucket against
  CLOCK_MONOTONIC (shared by every process), so IOPS alone and during an
  attack come from the same run.
* `RssSampler`: the reactor (and supervisor) processes' RSS every 20 ms, peak
  kept; a hard cap SIGKILLs the target before an unbounded allocation can hurt
  the (shared) machine.
* the attacks: each an object with ``start()`` / ``stop()`` and a ``report``
  dict, driven for a bounded time by `run_scenario`.
* `pool_in_use`: buffers held, from the ``iobuf_get_stats`` RPC.

Run as a script, ``python attackkit.py goodhost nvme|iscsi PORT NAME`` is the
well-behaved host's process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from blockfabric.transports.iscsi import pdu as IP  # noqa: E402
from blockfabric.transports.iscsi import text as itext  # noqa: E402
from blockfabric.transports.nvmf import pdu as P  # noqa: E402
from blockfabric.transports.nvmf import spec  # noqa: E402


def _load(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        s = importlib.util.spec_from_file_location(name, path)
        assert s and s.loader
        mod = importlib.util.module_from_spec(s)
        sys.modules[name] = mod
        s.loader.exec_module(mod)
    return sys.modules[name]


raw = _load("bf_iscsi_raw", TESTS / "transports" / "bf_iscsi_raw.py")
nv = _load("bf_nvmf_raw_kit", TESTS / "transports" / "nvmf" / "conftest.py")

NQN = "nqn.2016-06.io.blockfabric:attack"
DISC_NQN = "nqn.2014-08.org.nvmexpress.discovery"
IQN = "iqn.2016-06.io.blockfabric:attack"
BDEV_MB = 64
BLOCK = 512
POOL_MB = 64  # -s: the shared buffer pool every transfer buffer comes from
MiB = 1 << 20


def hostnqn(tag: str) -> str:
    h = (tag.encode().hex() + "0" * 12)[:12]
    return f"nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-0000-0000-0000-{h}"


def raise_nofile(want: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``want`` (children inherit
    it, so a daemon started afterwards may hold as many connections). Returns
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ target
@dataclass
class Target:
    daemon: Any
    nvme_port: int
    iscsi_port: int
    spdk_sock: str

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.nvme_port)

    def status(self) -> dict[str, Any]:
        return dict(self.daemon.rpc("blockfabric_get_status"))

    def reactor_pids(self) -> list[int]:
        return [int(r["pid"]) for r in self.status()["reactors"]]

    def supervisor_pid(self) -> int:
        return int(self.status()["pid"])


def start_target(
    daemon: Any,
    transport_opts: dict[str, Any] | None = None,
    iscsi_opts: dict[str, Any] | None = None,
) -> Target:
    """``daemon``: a bftest.Daemon not yet started (its ``extra`` is completed here)."""
    # 1 000 attack connections + the daemon's own fds: children inherit this
    raise_nofile(4096)
    spdk_sock = str(Path(daemon.run_dir) / f"{daemon.name}.spdk.sock")
    daemon.extra = [*daemon.extra, "--spdk-rpc", spdk_sock, "-s", str(POOL_MB)]
    daemon.start()
    nport, iport = free_port(), free_port()
    if iscsi_opts:
        daemon.rpc("iscsi_set_options", iscsi_opts)
    daemon.rpc(
        "bdev_malloc_create",
        {"name": "Malloc0", "num_blocks": BDEV_MB * MiB // BLOCK, "block_size": BLOCK},
    )
    daemon.rpc("nvmf_create_transport", {"trtype": "TCP", **(transport_opts or {})})
    daemon.rpc(
        "nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True, "serial_number": "BFATK1"}
    )
    daemon.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(nport)}
    for n in (NQN, DISC_NQN):
        daemon.rpc("nvmf_subsystem_add_listener", {"nqn": n, "listen_address": la})
    daemon.rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(iport)}]},
    )
    daemon.rpc(
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )
    daemon.rpc(
        "iscsi_create_target_node",
        {
            "name": "attack",
            "alias_name": "attack",
            "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            "queue_depth": 64,
            "disable_chap": True,
        },
    )
    return Target(daemon, nport, iport, spdk_sock)


def pool_stats(target: Target) -> Any:
    return target.daemon.rpc("iobuf_get_stats")


def _sum_key(obj: Any, key: str) -> int:
    if isinstance(obj, dict):
        return sum(
            int(v) if k == key and isinstance(v, int) else _sum_key(v, key) for k, v in obj.items()
        )
    if isinstance(obj, list):
        return sum(_sum_key(v, key) for v in obj)
    return 0


def pool_in_use(target: Target) -> int | None:
    """Pool buffers held now, summed over every reactor (``in_use`` fields);
    None when the daemon has no ``iobuf_get_stats`` (the test then fails on it)."""
    from blockfabric.control.client import RpcClientError

    try:
        return _sum_key(pool_stats(target), "in_use")
    except RpcClientError as e:
        if e.code == -32601:
            return None
        raise


def wait_pool(target: Target, baseline: int | None, timeout: float = 10.0) -> int | None:
    """Wait until the pool is back to ``baseline`` buffers in use; returns the last count."""
    end = time.monotonic() + timeout
    n = pool_in_use(target)
    while n is not None and baseline is not None and n > baseline and time.monotonic() < end:
        time.sleep(0.1)
        n = pool_in_use(target)
    return n


# ------------------------------------------------------------------ RSS
class RssSampler:
    """Peak RSS of some processes, sampled every ``interval`` seconds in a thread.

    ``private`` is RSS minus shared pages (RssAnon): what a process allocated
    itself; the buffer pool and the malloc bdev are shared memory and show in
    ``rss`` only. A process above ``hard_cap_mib`` (total RSS) is SIGKILLed at
    once: the target is broken anyway, and the test machine is shared."""

    def __init__(self, pids: list[int], interval: float = 0.02, hard_cap_mib: int = 1024) -> None:
        import psutil

        self.procs = {p: psutil.Process(p) for p in pids}
        self.interval = interval
        self.hard_cap = hard_cap_mib * MiB
        self.peak_rss: dict[int, int] = {}
        self.peak_private: dict[int, int] = {}
        self.base_rss: dict[int, int] = {}
        self.base_private: dict[int, int] = {}
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        for p in pids:
            r, s = self._sample(p)
            self.base_rss[p], self.base_private[p] = r, r - s

    def _sample(self, pid: int) -> tuple[int, int]:
        try:
            m = self.procs[pid].memory_info()
        except Exception:
            return 0, 0
        return int(m.rss), int(m.shared)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.procs:
                rss, shared = self._sample(pid)
                if rss > self.peak_rss.get(pid, 0):
                    self.peak_rss[pid] = rss
                if rss - shared > self.peak_private.get(pid, 0):
                    self.peak_private[pid] = rss - shared
                if rss > self.hard_cap and pid not in self.killed:
                    self.killed.append(pid)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)

    def growth_mib(self) -> float:
        """Largest growth of private RSS over its baseline, any sampled process."""
        return max((self.peak_private.get(p, 0) - self.base_private[p]) / MiB for p in self.procs)

    def peak_mib(self) -> float:
        return max(self.peak_rss.values(), default=0) / MiB

    def summary(self) -> str:
        return ", ".join(
            f"pid {p}: rss {self.base_rss[p] / MiB:.0f}->{self.peak_rss.get(p, 0) / MiB:.0f} MiB, "
            f"private {self.base_private[p] / MiB:.0f}->{self.peak_private.get(p, 0) / MiB:.0f} MiB"
            for p in self.procs
        )


# ------------------------------------------------------------------ good host
BUCKET = 0.05  # seconds per completion-count bucket


@dataclass
class GoodResult:
    buckets: dict[int, int]
    errors: list[str]
    ops: int

    def iops(self, t0: float, t1: float) -> float:
        b0, b1 = int(t0 / BUCKET), int(t1 / BUCKET)
        n = sum(c for b, c in self.buckets.items() if b0 <= b < b1)
        return n / max((b1 - b0) * BUCKET, 1e-9)

    def max_gap(self, t0: float, t1: float) -> float:
        """Longest run of empty buckets in [t0, t1): the longest stall, seconds."""
        gap = best = 0
        for b in range(int(t0 / BUCKET), int(t1 / BUCKET)):
            gap = gap + 1 if not self.buckets.get(b) else 0
            best = max(best, gap)
        return best * BUCKET


class GoodHost:
    """A well-behaved host in a child process: QD1 4 KiB write, read back, compare."""

    def __init__(self, target: Target, proto: str, tag: str = "good") -> None:
        port = target.nvme_port if proto == "nvme" else target.iscsi_port
        name = NQN if proto == "nvme" else IQN
        self.p = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "goodhost", proto, str(port), name, tag],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if line.strip() != "ready":
            self.p.kill()
            err = self.p.stderr.read() if self.p.stderr else ""
            raise AssertionError(f"good {proto} host did not start: {line!r} {err[-2000:]}")

    def stop(self) -> GoodResult:
        assert self.p.stdin is not None
        try:
            out, err = self.p.communicate("stop\n", timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            out, err = self.p.communicate()
        try:
            d = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return GoodResult({}, [f"no result (rc {self.p.returncode}): {err[-2000:]}"], 0)
        return GoodResult({int(k): v for k, v in d["buckets"].items()}, d["errors"], d["ops"])


def _goodhost_main(proto: str, port: int, name: str, tag: str) -> int:
    import random

    buckets: dict[int, int] = {}
    errors: list[str] = []
    ops = 0
    rnd = random.Random(port)
    region = 2048  # 4 KiB slots: the first 8 MiB of the bdev belong to the good host
    io: Callable[[int, bytes], None]
    if proto == "nvme":
        adm = nv.Client(("127.0.0.1", port), timeout=10)
        cntlid = adm.admin_setup(subnqn=name, hostnqn=hostnqn(tag))
        q = nv.Client(("127.0.0.1", port), timeout=10)
        q.icreq()
        cqe = q.connect(subnqn=name, hostnqn=hostnqn(tag), qid=1, cntlid=cntlid, sqsize=31)
        assert cqe.status == 0, spec.split_status(cqe.status)

        def io(slot: int, data: bytes) -> None:
            assert q.write(1, slot * 8, data).status == 0, "write failed"
            cqe, back = q.read(1, slot * 8, 4096)
            assert cqe.status == 0 and back == data, "read back differs"

        keep: Any = adm
    else:
        ini = raw.RawIscsi(port, name, timeout=10)
        ini.login()
        ini.clear_unit_attention()

        def io(slot: int, data: bytes) -> None:
            r = ini.command(raw.write10(slot * 8, 8), data=data)
            assert r.status == raw.GOOD, f"write {r}"
            r = ini.command(raw.read10(slot * 8, 8), 4096, read=True)
            assert r.status == raw.GOOD and bytes(r.data) == data, "read back differs"

        keep = ini
    print("ready", flush=True)
    last_ka = time.monotonic()
    while True:
        if ops % 8 == 0 and select.select([sys.stdin], [], [], 0)[0]:
            break
        data = rnd.randbytes(4096)
        try:
            io(rnd.randrange(region), data)
        except Exception as e:  # the target failed the well-behaved host
            errors.append(f"{type(e).__name__}: {e}")
            break
        ops += 2
        b = int(time.monotonic() / BUCKET)
        buckets[b] = buckets.get(b, 0) + 2
        if proto == "nvme" and time.monotonic() - last_ka > 1:
            keep.cmd(spec.ADMIN_KEEP_ALIVE)
            last_ka = time.monotonic()
    if errors:
        sys.stdin.readline()  # wait for the parent's stop
    print(json.dumps({"buckets": buckets, "errors": errors, "ops": ops}), flush=True)
    return 0


# ------------------------------------------------------------------ helpers
def _nb_connect(addr: tuple[str, int]) -> socket.socket | None:
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(addr)
    except BlockingIOError:
        pass
    except OSError:
        s.close()
        return None
    return s


def _is_closed(s: socket.socket) -> bool:
    """True when the target closed ``s`` (EOF or reset); data waiting is drained."""
    try:
        s.setblocking(False)
        for _ in range(256):
            if s.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError as e:
        import errno

        return e.errno != errno.ENOTCONN
    return False


def count_closed(socks: list[socket.socket], wait: float = 0.0) -> int:
    """How many of ``socks`` the target closed, waiting up to ``wait`` seconds
    for all of them to be."""
    end = time.monotonic() + wait
    while True:
        n = sum(1 for s in socks if _is_closed(s))
        if n == len(socks) or time.monotonic() >= end:
            return n
        time.sleep(0.1)


def _send_nb(s: socket.socket, data: bytes | memoryview) -> int:
    try:
        return s.send(data)
    except (BlockingIOError, InterruptedError):
        return 0


class Attack:
    """Base: ``start()`` opens what it needs, a thread may run ``loop()`` until
    ``stop()``; ``report`` says what happened (printed by the tests)."""

    name = "attack"
    proto = "nvme"
    allowance_mib = 64.0  # private RSS growth a reactor may show during this attack

    def __init__(self, target: Target) -> None:
        self.t = target
        self.report: dict[str, Any] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []

    def start(self) -> None:
        self.open()
        for fn in self.loops():
            th = threading.Thread(target=self._guard(fn), daemon=True)
            th.start()
            self._threads.append(th)

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as e:  # reported, never silently lost
                self.report.setdefault("attacker_errors", []).append(f"{type(e).__name__}: {e}")

        return run

    def open(self) -> None:
        pass

    def loops(self) -> list[Callable[[], None]]:
        return []

    def running(self) -> bool:
        return not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(10)
        self.finish()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.socks.clear()

    def finish(self) -> None:
        pass


# ------------------------------------------------------------------ NVMe attacks
def _admin(addr: tuple[str, int], subnqn: str, tag: str, timeout: float = 10.0) -> Any:
    c = nv.Client(addr, timeout=timeout)
    c.cntlid = c.admin_setup(subnqn=subnqn, hostnqn=hostnqn(tag))
    return c


def _io_queue(addr: tuple[str, int], tag: str, sqsize: int = 127, rcvbuf: int = 0) -> Any:
    adm = _admin(addr, NQN, tag)
    q = nv.Client(addr, timeout=10)
    if rcvbuf:
        q.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    q.icreq()
    cqe = q.connect(subnqn=NQN, hostnqn=hostnqn(tag), qid=1, cntlid=adm.cntlid, sqsize=sqsize)
    assert cqe.status == 0, spec.split_status(cqe.status)
    return adm, q


def _recv_answer(c: Any, cid: int, cap: int) -> tuple[int, int]:
    """(status, data bytes) of command ``cid``; raises if more than ``cap`` data arrives."""
    got = 0
    while True:
        pdu = c.recv_pdu()
        if pdu.type == P.C2H_DATA:
            got += len(pdu.data)
            if got > cap:
                raise AssertionError(f"target sent {got} bytes of data for a {cap}-byte buffer")
            if pdu.flags & P.FLAG_DATA_SUCCESS:
                return 0, got
        elif pdu.type == P.CAPSULE_RESP:
            cqe = spec.unpack_cqe(pdu.hdr, 8)
            if cqe.cid == cid:
                return cqe.status, got


class LogPageBomb(Attack):
    """Get Log Page with NUMD = 0xFFFFFFFF (16 GiB asked) into a 4 KiB buffer, to
    the discovery controller (any host may connect) and to the NVM subsystem's
    admin queue; Identify with SGL lengths of 1 MiB .. 4 GiB - 1. Every answer
    must fit the host's buffer; a status is fine, an allocation is not."""

    name = "nvme_getlog_identify_bomb"
    allowance_mib = 32.0

    def open(self) -> None:
        self.ctrls = [_admin(self.t.addr, DISC_NQN, f"bomb{i}") for i in range(2)]
        self.ctrls.append(_admin(self.t.addr, NQN, "bombnvm"))
        self.report.update(commands=0, statuses={})

    def _one(self, c: Any, kind: str, sqe_cdws: tuple[int, ...], opcode: int, sgl_len: int,
             nsid: int, cap: int) -> None:  # fmt: skip
        cid = c.submit(opcode, nsid=nsid, cdws=sqe_cdws, read_len=sgl_len)
        st, got = _recv_answer(c, cid, cap)
        sct, sc, _dnr = spec.split_status(st)
        key = f"{kind}:{sct}/{sc:#04x}"
        self.report["statuses"][key] = self.report["statuses"].get(key, 0) + 1
        self.report["commands"] += 1

    def loops(self) -> list[Callable[[], None]]:
        def run() -> None:
            i = 0
            while self.running():
                c = self.ctrls[i % len(self.ctrls)]
                lid = spec.LID_DISCOVERY if i % len(self.ctrls) < 2 else 0x02
                # NUMDL = NUMDU = 0xFFFF: (2^32) dwords = 16 GiB; the SGL says 4 KiB
                self._one(c, "getlog", (lid | (0xFFFF << 16), 0xFFFF), spec.ADMIN_GET_LOG_PAGE,
                          4096, 0xFFFFFFFF, 4096)  # fmt: skip
                # Identify Controller into an SGL of 1 MiB << (i % 12), up to 4 GiB - 1:
                # the data is 4 KiB, the transfer length is whatever the host said
                sgl = min((1 << 20) << (i % 13), 0xFFFFFFFF)
                self._one(c, f"identify{sgl >> 20}M", (1, 0), spec.ADMIN_IDENTIFY, sgl, 0, 4096)
                i += 1

        return [run]

    def finish(self) -> None:
        for c in self.ctrls:
            c.close()


class IdleConnections(Attack):
    """N TCP connections that never send a byte (no ICReq / no Login)."""

    allowance_mib = 64.0

    def __init__(self, target: Target, proto: str, n: int = 1000, close_wait: float = 0.0) -> None:
        super().__init__(target)
        self.proto = proto
        self.name = f"{proto}_idle_{n}"
        self.n = n
        # connections the kernel completed late (a SYN retried after a full
        # accept backlog) get their own full timeout: wait for them
        self.close_wait = close_wait

    def open(self) -> None:
        port = self.t.nvme_port if self.proto == "nvme" else self.t.iscsi_port
        refused = 0
        # in batches below the listener's backlog (128), each established before
        # the next: a burst past the backlog makes the kernel retry handshakes
        # for seconds, and those connections would start their timeout late
        for start in range(0, self.n, 100):
            batch = []
            for _ in range(min(100, self.n - start)):
                s = _nb_connect(("127.0.0.1", port))
                if s is None:
                    refused += 1
                else:
                    batch.append(s)
            end = time.monotonic() + 5
            waiting = list(batch)
            while waiting and time.monotonic() < end:
                _r, w, _x = select.select([], waiting, [], 0.5)
                waiting = [s for s in waiting if s not in w]
            for s in batch:
                if s in waiting or s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    refused += 1
                    s.close()
                else:
                    self.socks.append(s)
            time.sleep(0.02)
        self.report.update(opened=len(self.socks), refused_at_connect=refused)

    def finish(self) -> None:
        self.report["closed_by_target"] = count_closed(self.socks, self.close_wait)


class SlowLoris(Attack):
    """Connections that send one byte a second: half of them an ICReq, half a
    Keep Alive capsule after a completed ICReq + Connect (discovery controller)."""

    allowance_mib = 32.0

    def __init__(self, target: Target, n: int = 40) -> None:
        super().__init__(target)
        self.name = "nvme_slowloris"
        self.n = n

    def open(self) -> None:
        self.streams: list[tuple[socket.socket, bytes]] = []
        for _ in range(self.n // 2):
            s = socket.create_connection(self.t.addr, timeout=5)
            self.streams.append((s, P.encode_icreq()))
        for i in range(self.n - self.n // 2):
            c = nv.Client(self.t.addr, timeout=10)
            c.icreq()
            cqe = c.connect(subnqn=DISC_NQN, hostnqn=hostnqn(f"loris{i}"), kato=0)
            assert cqe.status == 0, spec.split_status(cqe.status)
            sqe = spec.pack_sqe(spec.ADMIN_KEEP_ALIVE, 77)
            self.streams.append((c.sock, b"".join(bytes(b) for b in P.encode_capsule_cmd(sqe))))
        self.socks = [s for s, _ in self.streams]
        self.report.update(connections=len(self.streams), bytes_sent=0)

    def loops(self) -> list[Callable[[], None]]:
        def run() -> None:
            pos = 0
            while self.running():
                for s, msg in self.streams:
                    if pos < len(msg):
                        try:
                            s.send(msg[pos : pos + 1])
                            self.report["bytes_sent"] += 1
                        except OSError:
                            pass
                pos += 1
                self._stop.wait(1.0)

        return [run]

    def finish(self) -> None:
        half = self.n // 2
        self.report["icreq_phase_closed_by_target"] = count_closed(self.socks[:half])
        self.report["capsule_phase_closed_by_target"] = count_closed(self.socks[half:])


class R2tNoData(Attack):
    """I/O queues that submit 128 KiB writes (no in-capsule data), collect the
    R2Ts and never send H2CData: each write makes the target hold a pool
    buffer. 6 x 64 writes = 48 MiB, more than the reactor's share of the
    64 MiB pool: the rest wait (FIFO) for buffers that never come back until
    the H2CData timeout closes the connections."""

    name = "nvme_r2t_never_data"
    allowance_mib = 64.0

    def __init__(self, target: Target, queues: int = 6, depth: int = 64) -> None:
        super().__init__(target)
        self.nq, self.depth = queues, depth

    def open(self) -> None:
        self.qs = [_io_queue(self.t.addr, f"r2t{i}") for i in range(self.nq)]
        self.report.update(writes=0, r2ts=0, closed_by_target=0)

    def loops(self) -> list[Callable[[], None]]:
        def run() -> None:
            nlb = 128 * 1024 // BLOCK
            for qi, (_adm, q) in enumerate(self.qs):
                for k in range(self.depth):
                    slba = 16384 + (qi * self.depth + k) * nlb
                    sqe_sgl = spec.pack_sgl(0, nlb * BLOCK, spec.SGL_TYPE_TRANSPORT)
                    cid = q.next_cid()
                    sqe = spec.pack_sqe(spec.IO_WRITE, cid, 1, (slba, 0, nlb - 1, 0, 0, 0), sqe_sgl)
                    q.send(P.encode_capsule_cmd(sqe))
                    self.report["writes"] += 1
            for _adm, q in self.qs:
                q.sock.settimeout(0.2)
            while self.running():
                for _adm, q in self.qs:
                    try:
                        pdu = q.recv_pdu()
                        if pdu.type == P.R2T:
                            self.report["r2ts"] += 1
                    except TimeoutError:
                        pass
                    except (ConnectionError, OSError, nv.TermReq):
                        pass

        return [run]

    def finish(self) -> None:
        self.report["closed_by_target"] = count_closed([q.sock for _a, q in self.qs])
        for adm, q in self.qs:
            q.close()
            adm.close()


class NeverReadNvme(Attack):
    """I/O queues whose host sends 128 KiB reads as fast as the socket takes them
    (far past SQSIZE) and never reads a response (tiny receive buffer)."""

    name = "nvme_never_reads"
    allowance_mib = 64.0

    def __init__(self, target: Target, queues: int = 4) -> None:
        super().__init__(target)
        self.nq = queues

    def open(self) -> None:
        self.qs = [_io_queue(self.t.addr, f"nr{i}", rcvbuf=4096) for i in range(self.nq)]
        self.report.update(commands_sent=0)

    def loops(self) -> list[Callable[[], None]]:
        def run() -> None:
            nlb = 128 * 1024 // BLOCK
            bufs: list[memoryview] = []
            for q in self.qs:
                q[1].sock.setblocking(False)
                bufs.append(memoryview(b""))
            cid = 0
            while self.running():
                progressed = False
                for i, (_adm, q) in enumerate(self.qs):
                    if not bufs[i]:
                        cid = (cid + 1) & 0xFFFF
                        sgl = spec.pack_sgl(0, nlb * BLOCK, spec.SGL_TYPE_TRANSPORT)
                        sqe = spec.pack_sqe(spec.IO_READ, cid, 1, ((cid % 64) * nlb, 0, nlb - 1, 0, 0, 0), sgl)  # fmt: skip
                        bufs[i] = memoryview(b"".join(bytes(b) for b in P.encode_capsule_cmd(sqe)))
                        self.report["commands_sent"] += 1
                    try:
                        n = _send_nb(q.sock, bufs[i])
                    except OSError:
                        n = 0
                    if n:
                        bufs[i] = bufs[i][n:]
                        progressed = True
                if not progressed:
                    self._stop.wait(0.01)

        return [run]

    def finish(self) -> None:
        self.report["closed_by_target"] = count_closed([q.sock for _a, q in self.qs])
        for adm, q in self.qs:
            q.close()
            adm.close()


# ------------------------------------------------------------------ iSCSI attacks
def _iscsi_session(t: Target, timeout: float = 10.0, rcvbuf: int = 0) -> Any:
    ini = raw.RawIscsi(t.iscsi_port, IQN, timeout=timeout)
    if rcvbuf:
        ini.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    ini.login()
    ini.clear_unit_attention()
    return ini


def _scsi_cmd(ini: Any, cdb: bytes, edtl: int, read: bool, immediate: bool) -> bytes:
    itt = ini.next_itt()
    f1 = 0x80 | (0x40 if read else 0x20) | 1
    w = (edtl, ini.cmdsn, ini.expstatsn, *struct.unpack(">4I", cdb.ljust(16, b"\0")))
    if not immediate:
        ini.cmdsn += 1
    return IP.encode_request(IP.OP_SCSI_CMD, f1, 0, itt, w, immediate=immediate)


class R2tNoDataIscsi(Attack):
    """Sessions (InitialR2T=Yes, ImmediateData=No) that keep WRITE(10)s of
    1 MiB inside the CmdSN window, collect the R2Ts and never send Data-Out."""

    name = "iscsi_r2t_never_data"
    proto = "iscsi"
    allowance_mib = 64.0

    def __init__(self, target: Target, sessions: int = 4, depth: int = 16) -> None:
        super().__init__(target)
        self.n, self.depth = sessions, depth

    def open(self) -> None:
        self.inis = []
        for _ in range(self.n):
            ini = raw.RawIscsi(self.t.iscsi_port, IQN, timeout=10)
            ini.login([("InitialR2T", "Yes"), ("ImmediateData", "No")])
            ini.clear_unit_attention()
            self.inis.append(ini)
        self.socks = [i.s for i in self.inis]
        self.report.update(writes=0, r2ts=0)

    def loops(self) -> list[Callable[[], None]]:
        def run() -> None:
            for si, ini in enumerate(self.inis):
                for k in range(self.depth):
                    if ini.cmdsn > ini.maxcmdsn:
                        break
                    lba = 16384 + (si * self.depth + k) * 2048
                    ini.send(_scsi_cmd(ini, raw.write10(lba, 2048), MiB, False, False))
                    self.report["writes"] += 1
            for ini in self.inis:
                ini.s.settimeout(0.2)
            while self.running():
                for ini in self.inis:
                    try:
                        if ini.recv().opcode == IP.OP_R2T:
                            self.report["r2ts"] += 1
                    except (TimeoutError, raw.Dropped, OSError):
                        pass

        return [run]

    def finish(self) -> None:
        self.report["closed_by_target"] = count_closed(self.socks)


class ImmediateFlood(Attack):
    """Sessions that send immediate SCSI commands (I bit: outside the CmdSN
    window) as fast as the socket takes them, never reading a response: 64 KiB
    READs and WRITEs announcing 16 MiB with no data."""

    name = "iscsi_immediate_flood"
    proto = "iscsi"
    allowance_mib = 64.0

    def __init__(self, target: Target, sessions: int = 4) -> None:
        super().__init__(target)
        self.n = sessions

    def open(self) -> None:
        self.inis = [_iscsi_session(self.t, rcvbuf=4096) for _ in range(self.n)]
        self.socks = [i.s for i in self.inis]
        self.report.update(commands_sent=0)

    def loops(self) -> list[Callable[[], None]]:
        def run() -> None:
            pend: list[memoryview] = [memoryview(b"") for _ in self.inis]
            for ini in self.inis:
                ini.s.setblocking(False)
            k = 0
            while self.running():
                progressed = False
                for i, ini in enumerate(self.inis):
                    if not pend[i]:
                        k += 1
                        if k % 2:
                            pdu = _scsi_cmd(
                                ini, raw.read10((k % 512) * 128, 128), 65536, True, True
                            )
                        else:
                            lba = 32768 + (k % 64) * 32768
                            pdu = _scsi_cmd(ini, raw.write10(lba, 32768), 16 * MiB, False, True)
                        pend[i] = memoryview(pdu)
                        self.report["commands_sent"] += 1
                    try:
                        n = _send_nb(ini.s, pend[i])
                    except OSError:
                        n = 0
                    if n:
                        pend[i] = pend[i][n:]
                        progressed = True
                if not progressed:
                    self._stop.wait(0.01)

        return [run]

    def finish(self) -> None:
        self.report["closed_by_target"] = count_closed(self.socks)


class OversizedLogin(Attack):
    """Logins that never end their text: keys with 64 KiB values, thousands of
    keys, and a Login Request continued (C bit) for megabytes."""

    name = "iscsi_oversized_login"
    proto = "iscsi"
    allowance_mib = 32.0

    def open(self) -> None:
        self.report.update(logins=0, outcomes={}, max_kib_sent={})

    def _attempt(self, k: int) -> str:
        s = socket.create_connection(("127.0.0.1", self.t.iscsi_port), timeout=5)
        self.socks.append(s)
        isid = (0x800000000000 | (k & 0xFFFFFF)) << 16
        sec = [("InitiatorName", raw.INIT_IQN), ("TargetName", IQN), ("AuthMethod", "None")]
        if k % 3 == 0:  # one key with a 64 KiB value
            sec.append(("X-com.example.big", "v" * 65536))
        elif k % 3 == 1:  # 4 000 distinct unknown keys
            sec += [(f"X-com.example.k{j}", "x" * 8) for j in range(4000)]
        data = itext.encode(sec)
        if k % 3 == 2:  # valid keys, then a value that never ends: 4 MiB in continued PDUs
            data += b"X-com.example.endless=" + b"y" * (4 * MiB)
        seg = 8192
        sent = 0
        try:
            chunks = [data[i : i + seg] for i in range(0, len(data), seg)]
            for j, c in enumerate(chunks):
                last = j == len(chunks) - 1 and k % 3 != 2
                f1 = (IP.F_TRANSIT | 1) if last else IP.F_CONT
                s.sendall(
                    IP.encode_request(
                        IP.OP_LOGIN_REQ, f1, isid, 7, (0, 1, 0, 0, 0, 0, 0), c, immediate=True
                    )  # fmt: skip
                )
                sent += len(c)
                if not self.running():
                    return "interrupted"
                # the target answers a continued PDU with an empty Login Response
                s.settimeout(0.5)
                try:
                    bhs = s.recv(IP.BHS_LEN)
                    if bhs == b"":
                        return f"closed after {sent >> 10} KiB"
                    p = IP.Pdu(bhs.ljust(IP.BHS_LEN, b"\0"))
                    st = p.w36 >> 16
                    if p.opcode == IP.OP_LOGIN_RESP and st:
                        return f"login failed {st:#06x} after {sent >> 10} KiB"
                    if p.dlen:
                        s.recv(p.dlen + IP.pad_len(p.dlen))
                except TimeoutError:
                    pass
            return f"no verdict after {sent >> 10} KiB"
        except (ConnectionResetError, BrokenPipeError):
            return f"closed after {sent >> 10} KiB"

    def loops(self) -> list[Callable[[], None]]:
        def run() -> None:
            k = 0
            while self.running():
                o = self._attempt(k)
                if o == "interrupted":
                    break
                verdict, _, kib = o.partition(" after ")
                what = ["bigvalue", "manykeys", "endless"][k % 3]
                key = f"{what}:{verdict}"
                self.report["outcomes"][key] = self.report["outcomes"].get(key, 0) + 1
                mx = self.report.setdefault("max_kib_sent", {})
                mx[what] = max(mx.get(what, 0), int(kib.split()[0]) if kib else 0)
                self.report["logins"] += 1
                k += 1
                while len(self.socks) > 16:
                    self.socks.pop(0).close()

        return [run]


class NeverReadIscsi(Attack):
    """Sessions that keep 256 KiB READs inside the CmdSN window the target opens
    (trusting MaxCmdSN) and never read a response."""

    name = "iscsi_never_reads"
    proto = "iscsi"
    allowance_mib = 64.0

    def __init__(self, target: Target, sessions: int = 4, ignore_window: bool = True) -> None:
        super().__init__(target)
        self.n = sessions
        self.ignore_window = ignore_window

    def open(self) -> None:
        self.inis = [_iscsi_session(self.t, rcvbuf=4096) for _ in range(self.n)]
        self.socks = [i.s for i in self.inis]
        self.report.update(commands_sent=0)

    def loops(self) -> list[Callable[[], None]]:
        def run() -> None:
            pend: list[memoryview] = [memoryview(b"") for _ in self.inis]
            for ini in self.inis:
                ini.s.setblocking(False)
            k = 0
            while self.running():
                progressed = False
                for i, ini in enumerate(self.inis):
                    if not pend[i]:
                        if not self.ignore_window and ini.cmdsn > ini.maxcmdsn:
                            continue
                        k += 1
                        pend[i] = memoryview(
                            _scsi_cmd(
                                ini, raw.read10((k % 128) * 512, 512), 256 * 1024, True, False
                            )
                        )
                        self.report["commands_sent"] += 1
                    try:
                        n = _send_nb(ini.s, pend[i])
                    except OSError:
                        n = 0
                    if n:
                        pend[i] = pend[i][n:]
                        progressed = True
                if not progressed:
                    self._stop.wait(0.01)

        return [run]

    def finish(self) -> None:
        self.report["closed_by_target"] = count_closed(self.socks)


# ------------------------------------------------------------------ RPC floods
class ZmqRpcFlood(Attack):
    """Many ZeroMQ DEALER clients on the RPC socket, each sending requests
    without reading replies, plus oversized (4 MiB + 1) requests."""

    name = "rpc_zmq_flood"
    proto = "rpc"
    allowance_mib = 256.0

    def __init__(self, target: Target, clients: int = 200) -> None:
        super().__init__(target)
        self.n = clients

    def open(self) -> None:
        import msgpack
        import zmq

        self.ctx = zmq.Context()
        self.zs = []
        for _ in range(self.n):
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 100)
            s.connect(self.t.daemon.rpc_addr)
            self.zs.append(s)
        self.req = msgpack.packb({"jsonrpc": "2.0", "id": 1, "method": "bdev_get_bdevs"})
        self.big = msgpack.packb(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "spdk_get_version",
                "params": {"x": "z" * (4 * MiB)},
            }
        )
        self.report.update(requests_sent=0)

    def loops(self) -> list[Callable[[], None]]:
        import zmq

        def run() -> None:
            k = 0
            while self.running():
                for s in self.zs:
                    k += 1
                    try:
                        s.send_multipart([b"", self.big if k % 500 == 0 else self.req], zmq.NOBLOCK)
                        self.report["requests_sent"] += 1
                    except zmq.Again:
                        pass
                self._stop.wait(0.01)

        return [run]

    def finish(self) -> None:
        for s in self.zs:
            s.close(0)
        self.ctx.term()


class SpdkRpcFlood(Attack):
    """Many connections on the SPDK JSON Unix socket, each writing requests as
    fast as it can and never reading a reply."""

    name = "rpc_spdk_unix_flood"
    proto = "rpc"
    allowance_mib = 256.0

    def __init__(self, target: Target, clients: int = 200) -> None:
        super().__init__(target)
        self.n = clients

    def open(self) -> None:
        refused = 0
        for _ in range(self.n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.t.spdk_sock)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.setblocking(False)
                self.socks.append(s)
            except OSError:
                refused += 1
                s.close()
        req = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "rpc_get_methods"}).encode()
        self.burst = req * 64
        self.report.update(connected=len(self.socks), refused=refused, bytes_sent=0)

    def loops(self) -> list[Callable[[], None]]:
        def run() -> None:
            while self.running():
                progressed = False
                for s in self.socks:
                    try:
                        n = _send_nb(s, self.burst)
                    except OSError:
                        n = 0
                    if n:
                        self.report["bytes_sent"] += n
                        progressed = True
                if not progressed:
                    self._stop.wait(0.01)

        return [run]

    def finish(self) -> None:
        self.report["closed_by_target"] = count_closed(self.socks)


def target_alive(target: Target) -> bool:
    try:
        target.daemon.rpc("spdk_get_version", timeout=10)
        return True
    except Exception:
        return False


def rpc_latency(target: Target, n: int = 5) -> float:
    """Median seconds for a fresh client's spdk_get_version."""
    ts = []
    for _ in range(n):
        t0 = time.monotonic()
        try:
            target.daemon.rpc("spdk_get_version", timeout=10)
        except TimeoutError:
            return float("inf")
        ts.append(time.monotonic() - t0)
    return sorted(ts)[len(ts) // 2]


# ------------------------------------------------------------------ scenario
@dataclass
class Outcome:
    name: str
    proto: str
    allowance_mib: float
    growth_mib: float
    rss_summary: str
    iops_alone: float
    iops_attack: float
    max_gap_s: float
    good_errors: list[str]
    pool_base: int | None
    pool_during_peak: int | None
    pool_after: int | None
    killed: list[int]
    checks_pool: bool
    alive: bool
    report: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.iops_attack / self.iops_alone if self.iops_alone else 0.0

    def line(self) -> str:
        return (
            f"[{self.name}] RSS bound: private growth <= {self.allowance_mib:.0f} MiB per process; "
            f"peak growth {self.growth_mib:.1f} MiB ({self.rss_summary}) | good {self.proto} host "
            f"IOPS alone {self.iops_alone:.0f}, during attack {self.iops_attack:.0f} "
            f"(ratio {self.ratio:.2f}, longest stall {self.max_gap_s:.2f}s, errors {self.good_errors}) "
            f"| target {'alive' if self.alive else 'DEAD'} | pool in_use base {self.pool_base} "
            f"peak {self.pool_during_peak} after {self.pool_after} | attack {self.report}"
            + (f" | {self.extra}" if self.extra else "")
        )


def run_scenario(
    target: Target,
    attack: Attack,
    good_proto: str | None = None,
    alone_s: float = 1.5,
    attack_s: float = 3.0,
    watch_supervisor: bool = False,
    pool: bool = True,
    during: Callable[[], dict[str, Any]] | None = None,
) -> Outcome:
    """Good host alone for ``alone_s``, then with ``attack`` for ``attack_s``;
    attackers leave; the pool must come back. Measurements only: callers assert."""
    good_proto = good_proto or ("iscsi" if attack.proto == "iscsi" else "nvme")
    pool_base = pool_in_use(target) if pool else None
    good = GoodHost(target, good_proto)
    res: GoodResult | None = None
    sampler: RssSampler | None = None
    extra: dict[str, Any] = {}
    try:
        t_alone = time.monotonic()
        time.sleep(alone_s)
        pids = target.reactor_pids() + ([target.supervisor_pid()] if watch_supervisor else [])
        sampler = RssSampler(pids).start()
        t_attack = time.monotonic()
        attack.start()
        t_started = time.monotonic()
        pool_peak = None
        end = t_started + attack_s
        while time.monotonic() < end:
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))
            if pool:
                try:
                    n = pool_in_use(target)
                except Exception:
                    n = None
                if n is not None:
                    pool_peak = n if pool_peak is None else max(pool_peak, n)
        if during is not None:
            extra.update(during())
        t_end = time.monotonic()
        attack.stop()
        res = good.stop()
        sampler.stop()
    finally:
        if res is None:
            attack.stop()
            good.stop()
            if sampler is not None:
                sampler.stop()
    assert sampler is not None
    alive = target_alive(target)
    if alive:
        now = target.reactor_pids()
        if now != pids[: len(now)]:
            # a reactor died (and the supervisor restarted it): the attack killed it
            extra["reactors_restarted"] = f"{pids} -> {now}"
    pool_after = wait_pool(target, pool_base) if pool and alive else None
    if pool_after is not None:
        extra["pool_waiters_after"] = _sum_key(pool_stats(target), "queued")
    return Outcome(
        attack.name,
        good_proto,
        attack.allowance_mib,
        sampler.growth_mib(),
        sampler.summary(),
        res.iops(t_alone + 0.3, t_attack),
        res.iops(t_started, t_end),
        res.max_gap(t_started, t_end),
        res.errors,
        pool_base,
        pool_peak,
        pool_after,
        sampler.killed,
        pool,
        alive,
        attack.report,
        extra,
    )


def check(o: Outcome, min_ratio: float = 0.05, max_stall_s: float = 2.0) -> None:
    """The acceptance of every adversarial test (printed first, then asserted)."""
    print(o.line())
    assert o.alive, f"{o.name}: the target died during the attack ({o.rss_summary})"
    assert not o.killed, f"{o.name}: RSS passed the hard cap, target killed: {o.rss_summary}"
    assert "reactors_restarted" not in o.extra, f"{o.name}: a reactor died: {o.extra}"
    assert o.growth_mib <= o.allowance_mib, (
        f"{o.name}: a process grew {o.growth_mib:.0f} MiB > {o.allowance_mib:.0f} MiB: {o.rss_summary}"
    )
    assert not o.good_errors, f"{o.name}: the well-behaved host failed: {o.good_errors}"
    assert o.iops_alone > 0, f"{o.name}: the well-behaved host did no I/O alone"
    assert o.ratio >= min_ratio, f"{o.name}: good host starved ({o.ratio:.2f} of its IOPS alone)"
    assert o.max_gap_s <= max_stall_s, f"{o.name}: good host stalled {o.max_gap_s:.2f}s"
    if o.checks_pool:
        assert o.pool_base is not None, f"{o.name}: no iobuf_get_stats RPC: pool not checked"
        assert o.extra.get("pool_waiters_after", 0) == 0, (
            f"{o.name}: requests still wait: {o.extra}"
        )
        assert o.pool_after == o.pool_base, (
            f"{o.name}: pool buffers in use {o.pool_after} after the attack, {o.pool_base} before"
        )


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "goodhost":
    sys.exit(_goodhost_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
