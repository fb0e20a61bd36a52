"""Buffer pool micro-benchmark: ``python -m bench.buffers [-n N] [--mem-mb M]``.

Measures get/put on the per-reactor fast path (process-local free list) and
on the reserve path (shared stack behind a POSIX semaphore), for small and
large buffers. Throughput comes from an untimed tight loop; latencies from
timing each call with perf_counter_ns (the ~50-100 ns timer cost is included
and reported separately as ``timer_overhead_ns``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from blockfabric.shm.pool import SMALL_SIZE, BufferPool

RESULTS = Path(__file__).resolve().parent / "results" / "buffers.json"


def _pct(sorted_ns: list[int], p: float) -> float:
    return float(sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * p))])


def _timer_overhead(n: int = 20000) -> float:
    pc = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = pc()
        samples.append(pc() - t0)
    return statistics.median(samples)


def _measure(pool: BufferPool, nbytes: int, n: int, batch: int) -> dict[str, Any]:
    get, put = pool.get, pool.put
    # Warm-up: create the pool's Buffer objects once.
    held = [get(nbytes) for _ in range(batch)]
    for b in held:
        put(b)
    # Throughput: batches of gets then puts (no timers in the loop).
    rounds = max(1, n // batch)
    t0 = time.perf_counter()
    for _ in range(rounds):
        held = [get(nbytes) for _ in range(batch)]
        for b in held:
            put(b)
    dt = time.perf_counter() - t0
    ops = 2 * rounds * batch
    # Per-call latency.
    pc = time.perf_counter_ns
    g_ns: list[int] = []
    p_ns: list[int] = []
    for _ in range(rounds):
        held = []
        for _ in range(batch):
            t = pc()
            b = get(nbytes)
            g_ns.append(pc() - t)
            held.append(b)
        for b in held:
            t = pc()
            put(b)
            p_ns.append(pc() - t)
    if any(b is None for b in held):
        raise RuntimeError("pool too small for the batch size")
    g_ns.sort()
    p_ns.sort()
    return {
        "ops_per_s": round(ops / dt),
        "get_median_ns": statistics.median(g_ns),
        "get_p99_ns": _pct(g_ns, 0.99),
        "put_median_ns": statistics.median(p_ns),
        "put_p99_ns": _pct(p_ns, 0.99),
        "ops": ops,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.buffers")
    ap.add_argument("-n", type=int, default=200_000, help="get/put pairs per case")
    ap.add_argument("--batch", type=int, default=16, help="buffers held at once")
    ap.add_argument("--mem-mb", type=int, default=64)
    ap.add_argument("--hugepages", default="auto", choices=["auto", "never", "require"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    inst = f"bench{os.getpid()}"
    owner = BufferPool.create(inst, 1, args.mem_mb, hugepages=args.hugepages, reactor_id=0)
    # A reactor_id=None user owns no share: every call takes the reserve path.
    reserve = BufferPool.attach(inst, None)
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "pool": {k: v for k, v in owner.stats().items() if k in ("size", "hugepage")},
        "batch": args.batch,
        "timer_overhead_ns": _timer_overhead(),
        "cases": {},
    }
    try:
        for path_name, pool in (("fast", owner), ("reserve", reserve)):
            for cls, nbytes in (("small", 4096), ("large", SMALL_SIZE * 8)):
                r = _measure(pool, nbytes, args.n, args.batch)
                results["cases"][f"{path_name}/{cls}"] = r
    finally:
        reserve.close()
        owner.destroy()

    print(
        f"buffer pool: {results['pool']}, batch {args.batch}, "
        f"timer overhead {results['timer_overhead_ns']:.0f} ns (included below)"
    )
    print(f"{'case':<14}{'ops/s':>12}{'get med':>10}{'get p99':>10}{'put med':>10}{'put p99':>10}")
    for name, r in results["cases"].items():
        print(
            f"{name:<14}{r['ops_per_s']:>12,}{r['get_median_ns']:>8.0f}ns"
            f"{r['get_p99_ns']:>8.0f}ns{r['put_median_ns']:>8.0f}ns{r['put_p99_ns']:>8.0f}ns"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
