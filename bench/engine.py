"""Engine micro-benchmark: supervisor <-> reactor message round trips.

``python -m bench.engine [-n N]`` starts a private blockfabric instance with one
reactor pinned to CPU 0 and measures, for each reactor polling mode
(adaptive, busy, blocking), the round-trip time of a typed msgpack message
supervisor -> reactor -> supervisor over ZeroMQ (framework_ping). Prints a
table and writes bench/results/engine.json. The buffer-pool rates are
measured by bench/buffers.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "engine.json"


def raw_zmq_rtt(n: int) -> dict[str, float]:
    """The same round trip with bare pyzmq (DEALER<->ROUTER over ipc, both sides
    spinning, pinned to different CPUs): the floor our messages sit on."""
    import zmq

    d = tempfile.mkdtemp(prefix="bf-zrtt-")
    addr = f"ipc://{d}/rtt.sock"
    cpus = sorted(os.sched_getaffinity(0))
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {cpus[0]})
            c = zmq.Context()
            s = c.socket(zmq.DEALER)
            s.connect(addr)
            s.send(b"hello")
            while True:
                try:
                    m = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                if m == b"x":
                    break
                s.send(m)
        finally:
            os._exit(0)
    os.sched_setaffinity(0, {cpus[-1]})
    c = zmq.Context()
    r = c.socket(zmq.ROUTER)
    r.bind(addr)
    ident, _ = r.recv_multipart()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        r.send_multipart([ident, b"p"])
        while True:
            try:
                r.recv_multipart(zmq.NOBLOCK)
                break
            except zmq.Again:
                pass
        lat.append(time.perf_counter_ns() - t0)
    r.send_multipart([ident, b"x"])
    os.waitpid(pid, 0)
    r.close(0)
    c.term()
    os.sched_setaffinity(0, set(cpus))
    shutil.rmtree(d, ignore_errors=True)
    lat.sort()
    return {"median_us": lat[len(lat) // 2] / 1000, "p99_us": lat[int(len(lat) * 0.99)] / 1000}


def run(n: int) -> dict[str, Any]:
    from blockfabric.control.client import RpcClient

    run_dir = tempfile.mkdtemp(prefix="bf-bench-")
    name = f"bench{os.getpid()}"
    addr = f"ipc://{run_dir}/rpc.sock"
    env = {**os.environ, "BLOCKFABRIC_RUN_DIR": run_dir}
    cli = [sys.executable, "-m", "blockfabric.tools.cli"]
    subprocess.run(
        [*cli, "start", "--name", name, "-m", "0x1", "-r", addr, "--empty", "--daemon"],
        env=env,
        check=True,
    )
    out: dict[str, Any] = {"machine": platform.node(), "cpus": os.cpu_count(), "n": n, "modes": {}}
    try:
        with RpcClient(addr, timeout=120) as c:
            for mode in ("busy", "adaptive", "blocking"):
                c.call("framework_set_poll_mode", {"mode": mode})
                time.sleep(0.2)
                c.call("framework_ping", {"count": 200})  # warm-up
                r = c.call("framework_ping", {"count": n})
                info = c.call("framework_get_reactors") if mode == "busy" else None
                out["modes"][mode] = {
                    "median_us": r["median_ns"] / 1000,
                    "p99_us": r["p99_ns"] / 1000,
                }
                if info:
                    out["reactors"] = info
    finally:
        subprocess.run([*cli, "stop", "--name", name], env=env)
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.engine")
    ap.add_argument("-n", type=int, default=5000, help="round trips per mode")
    a = ap.parse_args(argv)
    res = run(a.n)
    res["raw_pyzmq"] = raw_zmq_rtt(a.n)
    base = res["raw_pyzmq"]["median_us"]
    print(
        f"{'reactor poll mode':<18} {'RTT median us':>14} {'RTT p99 us':>11} {'vs raw pyzmq':>13}"
    )
    for mode, r in res["modes"].items():
        print(
            f"{mode:<18} {r['median_us']:>14.1f} {r['p99_us']:>11.1f} {r['median_us'] / base:>12.2f}x"
        )
    r = res["raw_pyzmq"]
    print(f"{'raw pyzmq (peer)':<18} {r['median_us']:>14.1f} {r['p99_us']:>11.1f} {1.0:>12.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
