"""Loopback ceiling: one TCP stream over 127.0.0.1, one sender, one receiver.

``python -m bench.ceiling recv --duration S`` prints ``PORT N`` once it
listens, accepts one connection, ``recv_into`` a fixed buffer until the peer
closes, then prints one JSON line {"bytes", "seconds"}.
``python -m bench.ceiling send --port N --duration S`` sends the same
128 KiB buffer for S seconds and closes. The suite pins each side to its own
CPU (taskset): the result is what one core can push through loopback, the
physical limit for the 128 KiB NVMe/TCP and iSCSI cases.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

CHUNK = 128 * 1024


def receive(duration: float, bufsize: int = CHUNK) -> dict[str, float]:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(duration + 30)
    print(f"PORT {ls.getsockname()[1]}", flush=True)
    conn, _ = ls.accept()
    ls.close()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    total = 0
    n = conn.recv_into(view)
    t0 = time.perf_counter()  # clock starts at the first byte: connect time is not throughput
    t_last = t0
    while n:
        total += n
        t_last = time.perf_counter()
        n = conn.recv_into(view)
    conn.close()
    return {"bytes": float(total), "seconds": max(t_last - t0, 1e-9)}


def send(port: int, duration: float, size: int = CHUNK) -> dict[str, float]:
    s = socket.create_connection(("127.0.0.1", port))
    data = memoryview(bytes(size))
    sendall = s.sendall
    sent = 0
    t0 = time.perf_counter()
    deadline = t0 + duration
    while True:
        # check the clock every 64 sends (8 MiB): the syscall dominates, not the check
        for _ in range(64):
            sendall(data)
        sent += 64 * size
        if time.perf_counter() >= deadline:
            break
    s.close()
    return {"bytes": float(sent), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ceiling")
    ap.add_argument("role", choices=("recv", "send"))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--duration", type=float, default=5.0)
    a = ap.parse_args(argv)
    if a.role == "recv":
        res = receive(a.duration)
    else:
        res = send(a.port, a.duration)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
