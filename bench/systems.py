"""Targets and load generators driven by the suite, with CPU accounting.

Every process started here is pinned with taskset, tracked, and stopped by
its pid (never by name), also on Ctrl-C: targets register a stop callable in
CLEANUPS, load generators are killed in a finally block.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

CLEANUPS: list[Callable[[], None]] = []
BF_CLI = [sys.executable, "-m", "blockfabric.tools.cli"]
NQN = "nqn.2016-06.io.blockfabric:bench"
BLOCK = 512
LUN_BYTES = 256 * 2**20


class BenchError(Exception):
    """A system could not be started, configured or measured."""


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    rw: str  # spdk_nvme_perf -w names: randread, randwrite, read, write
    size: int  # bytes per I/O
    qd: int


WORKLOADS: list[Workload] = [
    Workload("rr4k_qd1", "4 KiB rand read QD1", "randread", 4096, 1),
    Workload("rr4k_qd32", "4 KiB rand read QD32", "randread", 4096, 32),
    Workload("rr4k_qd128", "4 KiB rand read QD128", "randread", 4096, 128),
    Workload("rw4k_qd32", "4 KiB rand write QD32", "randwrite", 4096, 32),
    Workload("sr128k_qd16", "128 KiB seq read QD16", "read", 131072, 16),
]
WL = {w.key: w for w in WORKLOADS}


class Recorder:
    """The exact commands run, in order (for BENCHMARKS.md)."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def add(self, cmd: list[str] | str, env: dict[str, str] | None = None) -> str:
        s = cmd if isinstance(cmd, str) else shlex.join(cmd)
        if env:
            s = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + s
        if s not in self.commands:
            self.commands.append(s)
        return s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    """user+system seconds of these processes (all threads); gone ones count 0."""
    tot = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            tot += t.user + t.system
        except psutil.Error:
            pass
    return tot


class Meter:
    """CPU seconds of the target processes, and of everything on the benchmark
    CPUs (to see other processes stealing them), over one run."""

    def __init__(self, target_pids: list[int], cpus: list[int]) -> None:
        self.pids = target_pids
        self.cpus = cpus
        self.t0 = cpu_seconds(target_pids)
        self.b0 = self._busy()
        self.target_s = 0.0
        self.busy_s = 0.0

    def _busy(self) -> float:
        per = psutil.cpu_times(percpu=True)
        tot = 0.0
        for c in self.cpus:
            if c < len(per):
                t = per[c]
                tot += (
                    sum(t)
                    - t.idle
                    - getattr(t, "iowait", 0.0)
                    - getattr(t, "guest", 0.0)
                    - getattr(t, "guest_nice", 0.0)
                )
        return tot

    def stop(self) -> Meter:
        self.target_s = cpu_seconds(self.pids) - self.t0
        self.busy_s = self._busy() - self.b0
        return self


def cpus_of(pids: list[int]) -> list[int]:
    """The CPUs these processes may run on (their affinity)."""
    out: set[int] = set()
    for pid in pids:
        try:
            out.update(psutil.Process(pid).cpu_affinity() or [])
        except psutil.Error:
            pass
    return sorted(out)


def cpulist(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus)


def parse_cpus(text: str) -> list[int]:
    """'0', '0-3', '0,2,4-5' -> sorted CPU numbers."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            if int(hi) < int(lo):
                raise ValueError(f"bad CPU range {part!r}")
            out.update(range(int(lo), int(hi) + 1))
        else:
            out.add(int(part))
    if not out or min(out) < 0:
        raise ValueError(f"bad CPU list {text!r}")
    return sorted(out)


def core_mask(cores: list[int]) -> str:
    return hex(sum(1 << c for c in cores))


@dataclass
class Proc:
    rc: int
    output: str
    wall_s: float
    cpu_s: float  # the process and its reaped children (wait4 rusage)
    timed_out: bool


def run_pinned(
    cmd: list[str],
    cpus: list[int],
    timeout: float,
    rec: Recorder | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    """Run cmd pinned to cpus; wait4 gives its own CPU time (taskset execs it)."""
    full = ["taskset", "-c", cpulist(cpus), *cmd]
    if rec is not None:
        rec.add(full)
    with tempfile.TemporaryFile() as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            full, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        reaped = False
        timed_out = False
        status = 0
        ru: Any = None
        try:
            deadline = time.monotonic() + timeout
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    reaped = True
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    p.kill()
                    _, status, ru = os.wait4(p.pid, 0)
                    reaped = True
                    break
                time.sleep(0.01)
        finally:
            if not reaped:  # Ctrl-C: never leave a loader behind
                p.kill()
                _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        f.seek(0)
        out = f.read().decode(errors="replace")
    return Proc(p.returncode, out, wall, ru.ru_utime + ru.ru_stime, timed_out)


def tail(text: str, n: int = 6) -> str:
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    return " | ".join(lines[-n:])


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------- tgt


class TgtTarget:
    """Debian tgtd with one RAM-backed LUN (a preallocated file in /dev/shm)
    on a private iSCSI port and a private management socket number."""

    IQN = "iqn.2024-01.io.blockfabric.bench:tgt"

    def __init__(self, cpus: list[int], rec: Recorder, lun_bytes: int = LUN_BYTES) -> None:
        self.cpus = cpus
        self.rec = rec
        self.lun_bytes = lun_bytes
        self.port = 0
        self.cp = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.img = Path(f"/dev/shm/bf-bench-tgt-{os.getpid()}.img")
        self.log = Path(tempfile.gettempdir()) / f"bf-bench-tgtd-{os.getpid()}.log"

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{self.IQN}/1"

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def _adm(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["tgtadm", "-C", str(self.cp), *args]
        self.rec.add(cmd)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    def _pick_control_port(self) -> int:
        for n in range(4000 + os.getpid() % 1000, 6000):
            if not os.path.exists(f"/var/run/tgtd/socket.{n}"):
                return n
        raise BenchError("no free tgtd control socket number")

    def start(self) -> None:
        if not shutil.which("tgtd") or not shutil.which("tgtadm"):
            raise BenchError("tgtd/tgtadm not installed (apt-get install tgt)")
        self.port = free_port()
        self.cp = self._pick_control_port()
        # RAM-backed, fully allocated up front so no run pays for page allocation
        fd = os.open(self.img, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.lun_bytes)
        finally:
            os.close(fd)
        cmd = [
            "taskset",
            "-c",
            cpulist(self.cpus),
            "tgtd",
            "-f",
            "-C",
            str(self.cp),
            "--iscsi",
            f"portal=127.0.0.1:{self.port}",
        ]
        self.rec.add(cmd)
        with open(self.log, "wb") as lf:
            self.proc = subprocess.Popen(
                cmd, stdout=lf, stderr=lf, stdin=subprocess.DEVNULL, start_new_session=True
            )
        CLEANUPS.append(self.stop)
        for _ in range(100):
            if self.proc.poll() is not None:
                raise BenchError(
                    f"tgtd exited ({self.proc.returncode}): {tail(self.log.read_text())}"
                )
            if (
                subprocess.run(
                    ["tgtadm", "-C", str(self.cp), "--mode", "sys", "--op", "show"],
                    capture_output=True,
                ).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        else:
            raise BenchError("tgtd management socket did not answer")
        for args in (
            ["--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", "1", "-T", self.IQN],
            [
                "--lld",
                "iscsi",
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                "1",
                "--lun",
                "1",
                "-b",
                str(self.img),
            ],
            ["--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "1", "-I", "ALL"],
        ):
            r = self._adm(*args)
            if r.returncode != 0:
                raise BenchError(f"tgtadm {' '.join(args)}: {r.stderr.strip()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                # tgtd ignores SIGTERM while it has targets: ask it to shut down first
                for args in (
                    ["--mode", "target", "--op", "delete", "--force", "--tid", "1"],
                    ["--mode", "system", "--op", "delete"],
                ):
                    subprocess.run(
                        ["tgtadm", "-C", str(self.cp), "--lld", "iscsi", *args],
                        capture_output=True,
                        timeout=10,
                    )
                try:
                    self.proc.wait(3)
                except subprocess.TimeoutExpired:
                    self.proc.terminate()
                    try:
                        self.proc.wait(2)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
            self.proc = None
            # tgtd leaves its management socket files behind; they are ours to remove
            for suffix in ("", ".lock"):
                Path(f"/var/run/tgtd/socket.{self.cp}{suffix}").unlink(missing_ok=True)
        self.img.unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)
        if self.stop in CLEANUPS:
            CLEANUPS.remove(self.stop)


# ------------------------------------------------------------- blockfabric


class BlockfabricTarget:
    """A private blockfabric instance: busy-polling reactors on `cores`, the
    supervisor pinned to `launch_cpus`, one 256 MiB Malloc bdev."""

    def __init__(
        self,
        cores: list[int],
        launch_cpus: list[int],
        rec: Recorder,
        tag: str,
        extra: list[str] | None = None,
    ) -> None:
        self.extra = list(extra or [])  # more `blockfabric start` options
        self.cores = cores
        self.launch_cpus = launch_cpus
        self.rec = rec
        self.name = f"bench{os.getpid()}{tag}"
        self.run_dir = Path(tempfile.mkdtemp(prefix="bf-bench-"))
        self.addr = f"ipc://{self.run_dir}/rpc.sock"
        self.env = {**os.environ, "BLOCKFABRIC_RUN_DIR": str(self.run_dir)}
        self.sup_pid = 0
        self.reactor_pids: list[int] = []
        self.started = False

    @property
    def pids(self) -> list[int]:
        return [self.sup_pid, *self.reactor_pids] if self.sup_pid else []

    def _log_tail(self) -> str:
        p = self.run_dir / f"{self.name}.log"
        return tail(p.read_text(errors="replace"), 8) if p.exists() else ""

    def start(self) -> None:
        cmd = [
            "taskset",
            "-c",
            cpulist(self.launch_cpus),
            *BF_CLI,
            "start",
            "--name",
            self.name,
            "-m",
            core_mask(self.cores),
            "-r",
            self.addr,
            "--empty",
            "--daemon",
            "--poll-mode",
            "busy",
            *self.extra,
        ]
        self.rec.add(cmd, {"BLOCKFABRIC_RUN_DIR": "DIR"})
        CLEANUPS.append(self.stop)
        self.started = True
        try:
            r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=90)
        except subprocess.TimeoutExpired as e:
            raise BenchError("blockfabric start timed out") from e
        if r.returncode != 0:
            raise BenchError(f"blockfabric start failed: {tail(r.stderr)} {self._log_tail()}")
        st = self.rpc("blockfabric_get_status", record=False)
        self.sup_pid = int(st["pid"])
        self.reactor_pids = [int(x["pid"]) for x in st["reactors"]]

    def rpc(self, method: str, params: Any = None, record: bool = True, timeout: float = 30) -> Any:
        from blockfabric.control.client import RpcClient

        if record:
            js = json.dumps(params, separators=(",", ":")) if params is not None else ""
            self.rec.add(f"rpc {method} {js}".rstrip())
        try:
            with RpcClient(self.addr, timeout=timeout) as c:
                return c.call(method, params)
        except Exception as e:
            raise BenchError(f"RPC {method}: {e}") from e

    def setup_malloc(self) -> None:
        self.rpc(
            "bdev_malloc_create",
            {"name": "Malloc0", "num_blocks": LUN_BYTES // BLOCK, "block_size": BLOCK},
        )

    def setup_iscsi(self) -> str:
        port = free_port()
        # the CmdSN window (MaxQueueDepth, SPDK's default 64) caps the node's
        # queue_depth; QD128 rows need a window of 128, as with SPDK's -q
        self.rpc("iscsi_set_options", {"max_queue_depth": 128})
        self.rpc(
            "iscsi_create_portal_group",
            {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(port)}]},
        )
        self.rpc(
            "iscsi_create_initiator_group",
            {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
        )
        self.rpc(
            "iscsi_create_target_node",
            {
                "name": "bench",
                "alias_name": "bench",
                "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
                "queue_depth": 128,
                "disable_chap": True,
            },
        )
        iqn = "iqn.2016-06.io.blockfabric:bench"
        try:  # take the node's real name if the target tells it
            nodes = self.rpc("iscsi_get_target_nodes", record=False)
            if nodes and isinstance(nodes, list) and nodes[0].get("name"):
                iqn = nodes[0]["name"]
        except BenchError:
            pass
        return f"iscsi://127.0.0.1:{port}/{iqn}/0"

    def setup_nvmf(self, bdev: str = "Malloc0") -> str:
        port = free_port()
        self.rpc("nvmf_create_transport", {"trtype": "TCP"})
        self.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
        self.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": bdev}})
        self.rpc(
            "nvmf_subsystem_add_listener",
            {
                "nqn": NQN,
                "listen_address": {
                    "trtype": "tcp",
                    "adrfam": "ipv4",
                    "traddr": "127.0.0.1",
                    "trsvcid": str(port),
                },
            },
        )
        return f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"

    def alive(self) -> bool:
        return bool(self.pids) and all(psutil.pid_exists(p) for p in self.pids)

    def stop(self) -> None:
        if self.started:
            self.started = False
            try:
                subprocess.run(
                    [*BF_CLI, "stop", "--name", self.name, "--timeout", "20"],
                    env=self.env,
                    capture_output=True,
                    timeout=40,
                )
            except subprocess.TimeoutExpired:
                pass
            for pid in reversed(self.pids):  # whatever did not exit: by pid only
                if psutil.pid_exists(pid):
                    _stop_pid(pid, 2.0)
            subprocess.run(
                [*BF_CLI, "shm", "cleanup", "--name", self.name],
                env=self.env,
                capture_output=True,
                timeout=30,
            )
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.stop in CLEANUPS:
            CLEANUPS.remove(self.stop)


# ----------------------------------------------------------- load generators


def _rep(
    iops: float | None,
    mib_s: float | None,
    lat_us: float | None,
    lat_src: str,
    proc: Proc,
    meter: Meter,
    cmd: str,
    error: str | None = None,
) -> dict[str, Any]:
    wall = max(proc.wall_s, 1e-9)
    target_cpu_s = meter.target_s
    # CPU time on the pinned CPUs not used by the target or the load: other processes
    other = max(0.0, meter.busy_s - target_cpu_s - proc.cpu_s)
    return {
        "ok": error is None,
        "error": error,
        "iops": iops,
        "mib_s": mib_s,
        "lat_us": lat_us,
        "lat_source": lat_src,
        "target_cpu_pct": round(100.0 * target_cpu_s / wall, 1),
        "load_cpu_pct": round(100.0 * proc.cpu_s / wall, 1),
        "other_cpu_pct": round(100.0 * other / wall, 1),
        "wall_s": round(proc.wall_s, 2),
        "command": cmd,
    }


_IOPS_RE = re.compile(r"^\s*iops average (\d+) \((\d+) MB/s\)\s*$")
_SIZE_RE = re.compile(r"FIXED transfer size of (\d+) blocks \((\d+) byte\)")


def parse_iscsi_perf(out: str) -> tuple[float, int | None]:
    """-> (IOPS, bytes per request as iscsi-perf understood it)."""
    iops = None
    for line in re.split(r"[\r\n]+", out):
        m = _IOPS_RE.match(line)
        if m:
            iops = float(m.group(1))
    if iops is None:
        raise BenchError(f"no 'iops average' line: {tail(out)}")
    sm = _SIZE_RE.search(out)
    return iops, int(sm.group(2)) if sm else None


def iscsi_perf_cmd(url: str, wl: Workload, duration: float) -> list[str]:
    cmd = [
        "iscsi-perf",
        "-m",
        str(wl.qd),
        "-b",
        str(wl.size // BLOCK),
        "-t",
        str(max(1, round(duration))),
    ]
    if wl.rw.startswith("rand"):
        cmd.append("-r")
    return [*cmd, url]


ISCSI_PERF_WRITE_NOTE = (
    "iscsi-perf (libiscsi 1.19) only issues READ16 (options -m -b -t -r/-R, "
    "no write mode): no write workload is measured over iSCSI"
)


def run_iscsi_perf(
    url: str,
    wl: Workload,
    duration: float,
    load_cpus: list[int],
    target_pids: list[int],
    rec: Recorder,
) -> dict[str, Any]:
    if wl.rw not in ("randread", "read"):
        raise BenchError(ISCSI_PERF_WRITE_NOTE)
    cmd = iscsi_perf_cmd(url, wl, duration)
    meter = Meter(target_pids, sorted(set(cpus_of(target_pids) + load_cpus)))
    p = run_pinned(cmd, load_cpus, duration + 30, rec)
    t_cpu = meter.stop()
    cs = shlex.join(["taskset", "-c", cpulist(load_cpus), *cmd])
    try:
        if p.timed_out:
            raise BenchError(f"iscsi-perf did not finish in {duration + 30:.0f}s: {tail(p.output)}")
        iops, nbytes = parse_iscsi_perf(p.output)
        if nbytes is not None and nbytes != wl.size:
            raise BenchError(f"iscsi-perf used {nbytes} B per request, wanted {wl.size}")
        if p.rc != 0:
            raise BenchError(f"iscsi-perf exit {p.rc}: {tail(p.output)}")
        if iops <= 0:
            raise BenchError(f"iscsi-perf: 0 IOPS: {tail(p.output)}")
    except BenchError as e:
        return _rep(None, None, None, "", p, t_cpu, cs, str(e))
    # iscsi-perf reports no latency: mean latency from Little's law (QD / IOPS)
    return _rep(iops, iops * wl.size / 2**20, wl.qd / iops * 1e6, "derived", p, t_cpu, cs)


def _find(d: Any, names: tuple[str, ...]) -> float | None:
    """First numeric value under any of `names`, searching 'total' first."""
    if isinstance(d, dict):
        for scope in ("total", "totals", "summary", "Total"):
            if scope in d:
                v = _find(d[scope], names)
                if v is not None:
                    return v
        for n in names:
            if n in d and isinstance(d[n], (int, float)) and not isinstance(d[n], bool):
                return float(d[n])
        for v in d.values():
            if isinstance(v, dict):
                r = _find(v, names)
                if r is not None:
                    return r
    return None


def parse_bf_perf(res: Any, wl: Workload) -> tuple[float, float, float | None]:
    """blockfabric perf --json -> (IOPS, MiB/s, mean latency us or None)."""
    tot = res.get("total") if isinstance(res, dict) else None
    if isinstance(tot, dict) and isinstance(tot.get("iops"), (int, float)):
        # tools/perf.py: {"total": {"iops", "mib_s", "lat": {"avg_us", "p99_us", ...}}}
        lat_d = tot.get("lat") if isinstance(tot.get("lat"), dict) else {}
        avg = lat_d.get("avg_us")
        mib_v = tot.get("mib_s")
        return (
            float(tot["iops"]),
            float(mib_v) if mib_v is not None else float(tot["iops"]) * wl.size / 2**20,
            float(avg) if avg else None,
        )
    iops = _find(res, ("iops", "IOPS", "io_per_second"))
    if iops is None:
        raise BenchError(f"no IOPS in perf JSON: {json.dumps(res)[:200]}")
    mib = _find(res, ("mib_s", "MiB/s", "mibps", "mib_per_s", "MiBps"))
    if mib is None:
        mib = iops * wl.size / 2**20
    lat = _find(
        res,
        (
            "avg_lat_us",
            "mean_lat_us",
            "avg_latency_us",
            "lat_avg_us",
            "avg_us",
            "mean_us",
            "latency_us",
        ),
    )
    return iops, mib, lat


def bf_perf_cmd(
    trid: str,
    wl: Workload,
    duration: float,
    workers: int,
    json_path: str,
    busy_poll: bool = False,
    extra: list[str] | None = None,
    submission: str = "per-command",
) -> list[str]:
    return [
        *BF_CLI,
        "perf",
        "-r",
        trid,
        "-q",
        str(wl.qd),
        "-o",
        str(wl.size),
        "-w",
        wl.rw,
        "-t",
        str(max(1, round(duration))),
        "-P",
        str(workers),
        "--submission",
        submission,
        "--json",
        json_path,
        *(["--busy-poll"] if busy_poll else []),
        *(extra or []),
    ]


def run_bf_perf(
    trid: str,
    wl: Workload,
    duration: float,
    workers: int,
    load_cpus: list[int],
    target_pids: list[int],
    rec: Recorder,
    during: Callable[[], Callable[[], None]] | None = None,
    busy_poll: bool = False,
    extra: list[str] | None = None,
    submission: str = "per-command",
) -> dict[str, Any]:
    """One `blockfabric perf` run. `during` (optional) is started just before
    the load and returns a function to finish it after (used for py-spy).
    ``submission``: perf's --submission (per-command: one send per command PDU,
    as the Linux and SPDK hosts send; batch: gathered per recv). The rep carries
    ``cpu_us_per_io``: target CPU-seconds (all its processes, over the whole
    perf run) per completed I/O, in microseconds."""
    fd, json_path = tempfile.mkstemp(prefix="bf-perf-", suffix=".json")
    os.close(fd)
    cmd = bf_perf_cmd(trid, wl, duration, workers, json_path, busy_poll, extra, submission)
    shown = ["FILE" if x == json_path else x for x in cmd]
    rec.add(["taskset", "-c", cpulist(load_cpus), *shown])
    cs = shlex.join(["taskset", "-c", cpulist(load_cpus), *shown])
    finish = during() if during else None
    try:
        meter = Meter(target_pids, sorted(set(cpus_of(target_pids) + load_cpus)))
        p = run_pinned(cmd, load_cpus, duration + 60)
        t_cpu = meter.stop()
    finally:
        if finish:
            finish()
    try:
        if p.timed_out:
            raise BenchError(f"perf did not finish in {duration + 60:.0f}s: {tail(p.output)}")
        if p.rc != 0:
            raise BenchError(f"perf exit {p.rc}: {tail(p.output)}")
        try:
            res = json.loads(Path(json_path).read_text())
        except (OSError, ValueError) as e:
            raise BenchError(f"perf wrote no JSON ({e}): {tail(p.output)}") from e
        iops, mib, lat = parse_bf_perf(res, wl)
        if iops <= 0:
            raise BenchError(f"perf: 0 IOPS: {tail(p.output)}")
    except BenchError as e:
        return _rep(None, None, None, "", p, t_cpu, cs, str(e))
    finally:
        Path(json_path).unlink(missing_ok=True)
    if lat is None:
        rep = _rep(iops, mib, wl.qd * workers / iops * 1e6, "derived", p, t_cpu, cs)
    else:
        rep = _rep(iops, mib, lat, "reported", p, t_cpu, cs)
    ios = perf_ios(res)
    rep["ios"] = ios
    rep["cpu_us_per_io"] = round(t_cpu.target_s / ios * 1e6, 3) if ios else None
    return rep


def perf_ios(res: Any) -> int:
    """Completed I/Os of a `blockfabric perf --json` result (0 if it has none)."""
    tot = res.get("total") if isinstance(res, dict) else None
    n = tot.get("ios") if isinstance(tot, dict) else None
    return int(n) if isinstance(n, (int, float)) and n > 0 else 0


def iperf3_path() -> str | None:
    return shutil.which("iperf3")


def parse_iperf3(doc: Any) -> tuple[float, float, float]:
    """iperf3 -J (client side) -> (receiver MiB/s, receiver CPU %, sender CPU %)."""
    try:
        end = doc["end"]
        bps = float(end["sum_received"]["bits_per_second"])
        cpu = end.get("cpu_utilization_percent", {})
        return (
            bps / 8 / 2**20,
            float(cpu.get("remote_total", 0.0)),
            float(cpu.get("host_total", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        err = doc.get("error") if isinstance(doc, dict) else None
        raise BenchError(f"iperf3 result without a throughput: {err or e}") from e


def run_ceiling(
    duration: float, recv_cpus: list[int], send_cpus: list[int], rec: Recorder
) -> dict[str, Any]:
    """The loopback ceiling measured by iperf3 (C): one TCP stream of 128 KiB
    writes over 127.0.0.1, the server (receiver) pinned like the targets, on
    recv_cpus[0], the client (sender) like the load generators, on send_cpus[0]."""
    exe = iperf3_path()
    if exe is None:
        raise BenchError("iperf3 not installed (apt-get install iperf3; scripts/install-deps.sh)")
    port = free_port()
    scmd = ["taskset", "-c", str(recv_cpus[0]), exe, "-s", "-1", "-p", str(port), "-B", "127.0.0.1"]
    rec.add([*scmd[:-3], "-p", "PORT", "-B", "127.0.0.1"])
    srv = subprocess.Popen(
        scmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    try:
        ccmd = [exe, "-c", "127.0.0.1", "-p", str(port), "-t", str(max(1, round(duration)))]
        ccmd += ["-l", "128K", "-J"]
        p: Proc | None = None
        for _ in range(50):  # the server listens within a few ms; retry its start-up race
            meter = Meter([srv.pid], recv_cpus[:1] + send_cpus[:1])
            p = run_pinned(ccmd, send_cpus[:1], duration + 30)
            # (iperf3 -J exits 0 also when it could not connect: look at the output)
            if "Connection refused" not in p.output or srv.poll() is not None:
                break
            time.sleep(0.1)
        assert p is not None
        t_srv = meter.stop()
        rec.add(["taskset", "-c", str(send_cpus[0]), *ccmd[:4], "PORT", *ccmd[5:]])
    finally:
        if srv.poll() is None:
            srv.terminate()
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
    if p.timed_out or p.rc != 0:
        raise BenchError(f"iperf3 client exit {p.rc}: {tail(p.output)}")
    try:
        doc = json.loads(p.output[p.output.index("{") :])
    except ValueError as e:
        raise BenchError(f"iperf3 -J output is not JSON: {tail(p.output)}") from e
    mib, _rcpu, _scpu = parse_iperf3(doc)
    rep = _rep(mib * 2**20 / 131072, mib, None, "", p, t_srv, "")
    rep["command"] = "iperf3 server + client (see commands)"
    return rep


# ---------------------------------------------------------------- profiling


def pyspy_path() -> str | None:
    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.exists() else shutil.which("py-spy")


def start_pyspy(
    pid: int, duration: float, out_path: str, cpus: list[int], rec: Recorder
) -> Callable[[], Callable[[], None]]:
    """Returns a `during` hook for run_bf_perf: py-spy record of `pid`."""

    def begin() -> Callable[[], None]:
        exe = pyspy_path()
        if exe is None:
            raise BenchError("py-spy not installed (pip install py-spy)")
        cmd = [
            "taskset",
            "-c",
            cpulist(cpus),
            exe,
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, round(duration))),
            "-r",
            "250",
            "-F",
            "-f",
            "raw",
            "--nonblocking",
            "-o",
            out_path,
        ]
        rec.add([*cmd[:-1], "profile.txt"])
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )

        def end() -> None:
            try:
                proc.wait(duration + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        return end

    return begin


def top_self(raw: str, n: int = 10) -> tuple[int, list[dict[str, Any]]]:
    """py-spy raw (collapsed) stacks -> total samples, top-n functions by self samples."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, num = line.rstrip().rpartition(" ")
        if not stack or not num.isdigit():
            continue
        leaf = stack.split(";")[-1].strip()
        counts[leaf] = counts.get(leaf, 0) + int(num)
        total += int(num)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return total, [
        {"function": f, "samples": c, "self_pct": round(100.0 * c / max(total, 1), 1)}
        for f, c in top
    ]


def run_standalone(
    name: str,
    a: Any,
    run: Callable[[Any], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> int:
    """The main of a standalone bench module (`python -m bench --only NAME`):
    run it, stop whatever it started even when it fails, write
    ``a.out``/NAME.json and NAME.md (BENCHMARKS.md includes the .md) and print
    the table."""
    try:
        res = run(a)
    finally:
        for stop in reversed(list(CLEANUPS)):
            stop()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (a.out / f"{name}.md").write_text(md)
    print(md)
    return 0
