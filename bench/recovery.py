"""Recovery time after a reactor is killed (issue 9 item 5).

``python -m bench.recovery [-k KILLS] [--delay S]`` starts a private
blockfabric instance with ONE reactor (so every reconnect necessarily lands
on the restarted reactor), a 64 MiB malloc bdev exported over NVMe/TCP and
iSCSI, and for each protocol a host of ours doing 4 KiB reads at queue depth
1 in a loop: NVMe/TCP through the host library (``Controller``: admin queue +
one I/O queue; after a drop it connects a new controller every ``--delay``
s), iSCSI through the raw initiator of tests/transports/bf_iscsi_raw.py (a
new login after a drop). The reactor is SIGKILLed KILLS times per protocol;
each kill is timed from the SIGKILL to the first read that completes on a
connection made after it, i.e. on the restarted reactor. Also reported: the
time until the supervisor shows the new reactor running.

Prints a table and writes bench/results/recovery.md and recovery.json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NQN = "nqn.2016-06.io.blockfabric:recovery"
IQN = "iqn.2016-06.io.blockfabric:recovery"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raw_iscsi() -> Any:
    name = "bf_iscsi_raw"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "tests" / "transports" / f"{name}.py"
        )
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


class Prober:
    """A QD1 read loop that reconnects after a drop. ``firsts[gen]``: the
    wall time the first read completed on connection number ``gen``."""

    def __init__(self, proto: str, port: int, delay: float) -> None:
        self.proto, self.port, self.delay = proto, port, delay
        self.gen = 0
        self.firsts: dict[int, float] = {}
        self.reads = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name=f"probe-{proto}")
        self._conn: Any = None

    def _connect(self) -> None:
        if self.proto == "nvme":
            from blockfabric.transports.nvmf_host.controller import Controller

            self._conn = Controller(
                "127.0.0.1", self.port, NQN, nr_io_queues=1, kato_ms=0, timeout=2.0
            ).connect()
        else:
            raw = _raw_iscsi()
            s = raw.RawIscsi(self.port, IQN, timeout=2.0)
            try:
                s.login()
                s.clear_unit_attention()
            except BaseException:
                s.close()
                raise
            self._conn = s
        self.gen += 1

    def _read(self) -> None:
        if self.proto == "nvme":
            self._conn.read(1, 0, 8, 512)
        else:
            raw = _raw_iscsi()
            r = self._conn.command(raw.read10(0, 8), edtl=4096, read=True)
            if r.status != 0:
                raise OSError(f"READ(10) status {r.status:#x}")

    def _drop(self) -> None:
        c, self._conn = self._conn, None
        if c is not None:
            with contextlib.suppress(Exception):
                c.close(shutdown=False) if self.proto == "nvme" else c.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._conn is None:
                    self._connect()
                self._read()
                self.reads += 1
                if self.gen not in self.firsts:
                    self.firsts[self.gen] = time.time()
            except Exception as e:  # noqa: BLE001 - any failure: reconnect
                if len(self.errors) < 50:
                    self.errors.append(f"{type(e).__name__}: {e}")
                self._drop()
                time.sleep(self.delay)
        self._drop()

    def start(self) -> Prober:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(10)


class Instance:
    def __init__(self) -> None:
        self.run_dir = tempfile.mkdtemp(prefix="bf-rec-")
        self.name = f"rec{os.getpid()}"
        self.addr = f"ipc://{self.run_dir}/rpc.sock"
        self.env = {**os.environ, "BLOCKFABRIC_RUN_DIR": self.run_dir}
        self.cli = [sys.executable, "-m", "blockfabric.tools.cli"]

    def start(self, kills: int) -> None:
        subprocess.run(
            [
                *self.cli, "start", "--name", self.name, "-m", "0x1", "-r", self.addr,
                "--empty", "--daemon", "--max-restarts", str(4 * kills + 10),
                "--restart-window", "600",
            ],
            env=self.env,
            check=True,
        )  # fmt: skip

    def rpc(self, method: str, params: Any = None) -> Any:
        from blockfabric.control.client import RpcClient

        with RpcClient(self.addr, timeout=30) as c:
            return c.call(method, params)

    def reactor(self) -> dict[str, Any]:
        return dict(self.rpc("blockfabric_get_status")["reactors"][0])

    def stop(self) -> None:
        subprocess.run([*self.cli, "stop", "--name", self.name], env=self.env)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _setup(inst: Instance, nport: int, iport: int) -> None:
    inst.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 131072, "block_size": 512})
    inst.rpc("nvmf_create_transport", {"trtype": "TCP"})
    inst.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    inst.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
    addr = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(nport)}
    inst.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": addr})
    inst.rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(iport)}]},
    )
    inst.rpc(
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )
    inst.rpc(
        "iscsi_create_target_node",
        {
            "name": "recovery",
            "alias_name": "recovery",
            "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            "queue_depth": 64,
            "disable_chap": True,
        },
    )


def measure(inst: Instance, proto: str, port: int, kills: int, delay: float) -> dict[str, Any]:
    p = Prober(proto, port, delay).start()
    samples: list[dict[str, float]] = []
    try:
        end = time.monotonic() + 20
        while p.reads < 50:
            if time.monotonic() > end:
                raise RuntimeError(f"{proto}: no I/O before the first kill: {p.errors[-3:]}")
            time.sleep(0.05)
        for _ in range(kills):
            old = inst.reactor()
            gen0 = p.gen
            t_kill = time.time()
            os.kill(int(old["pid"]), signal.SIGKILL)
            t_up = None
            end = time.monotonic() + 60
            while True:
                now = time.time()
                if t_up is None:
                    with contextlib.suppress(Exception):
                        r = inst.reactor()
                        if r["pid"] != old["pid"] and r.get("state", "running") == "running":
                            t_up = now
                done = [g for g in p.firsts if g > gen0]
                if done and t_up is not None:
                    break
                if time.monotonic() > end:
                    raise RuntimeError(f"{proto}: no recovery within 60 s: {p.errors[-3:]}")
                time.sleep(0.005)
            first = p.firsts[min(done)]
            samples.append(
                {
                    "io_ms": (first - t_kill) * 1e3,
                    "restart_ms": (t_up - t_kill) * 1e3,
                    "connects": float(min(done) - gen0),
                }
            )
            time.sleep(1.0)  # steady I/O again before the next kill
    finally:
        p.stop()
    io = [s["io_ms"] for s in samples]
    rs = [s["restart_ms"] for s in samples]
    return {
        "kills": len(samples),
        "median_ms": statistics.median(io),
        "min_ms": min(io),
        "max_ms": max(io),
        "restart_median_ms": statistics.median(rs),
        "samples": samples,
    }


def render(res: dict[str, Any]) -> str:
    lines = [
        "# Recovery time after a reactor SIGKILL",
        "",
        f"`python -m bench.recovery -k {res['kills']} --delay {res['delay_s']}` on "
        f"{res['machine']} ({res['cpus']} CPUs): one reactor (every reconnect lands on the "
        "restarted one), 64 MiB malloc bdev, a host of ours reading 4 KiB at QD1 in a loop "
        "and reconnecting after a drop (every "
        f"{res['delay_s'] * 1000:.0f} ms). Time from the SIGKILL to the first read completed "
        "on the restarted reactor; 'reactor up' is when the supervisor reports the new "
        "reactor running.",
        "",
        "| protocol (host) | kills | median ms | min ms | max ms | reactor up, median ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"nvme": "NVMe/TCP (host library)", "iscsi": "iSCSI (raw initiator)"}
    for proto, r in res["protocols"].items():
        lines.append(
            f"| {names[proto]} | {r['kills']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | "
            f"{r['max_ms']:.0f} | {r['restart_median_ms']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.recovery")
    ap.add_argument("-k", "--kills", type=int, default=5, help="kills per protocol")
    ap.add_argument("--delay", type=float, default=0.02, help="host reconnect delay (s)")
    ap.add_argument("--only", choices=("nvme", "iscsi"), default=None)
    a = ap.parse_args(argv)
    inst = Instance()
    nport, iport = _free_port(), _free_port()
    inst.start(a.kills)
    res: dict[str, Any] = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "kills": a.kills,
        "delay_s": a.delay,
        "protocols": {},
    }
    try:
        _setup(inst, nport, iport)
        for proto, port in (("nvme", nport), ("iscsi", iport)):
            if a.only and proto != a.only:
                continue
            res["protocols"][proto] = measure(inst, proto, port, a.kills, a.delay)
    finally:
        inst.stop()
    md = render(res)
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "recovery.json").write_text(json.dumps(res, indent=2))
    (RESULTS / "recovery.md").write_text(md)
    print(f"wrote {RESULTS / 'recovery.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
