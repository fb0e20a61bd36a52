"""Summarise libFuzzer logs of run_fuzz.py into the table of bench/results/fuzz.md.

    python tests/fuzz/report.py LOG_DIR   (one NAME.log per harness; prints markdown rows)

Per harness: executions (libFuzzer's number_of_executed_units; runs over
several logs add up), the final ``cov:`` (coverage edges of the instrumented
code under test) and ``ft:`` (features), the corpus size, and how the run
ended (exit 0 = the requested executions without a crash)."""

from __future__ import annotations

import os
import re
import sys

_COV = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)/")
_EXECS = re.compile(r"stat::number_of_executed_units: (\d+)")
_RATE = re.compile(r"stat::average_exec_per_sec:\s+(\d+)")
_EXIT = re.compile(r"fuzz \S+: exit (\d+)")


def summarise(path: str) -> dict[str, object]:
    with open(path, errors="replace") as f:
        text = f.read()
    cov = _COV.findall(text)
    ex = _EXECS.findall(text)
    rate = _RATE.findall(text)
    rc = _EXIT.findall(text)
    return {
        "execs": sum(int(x) for x in ex),
        "cov": int(cov[-1][0]) if cov else 0,
        "ft": int(cov[-1][1]) if cov else 0,
        "corpus": int(cov[-1][2]) if cov else 0,
        "rate": int(rate[-1]) if rate else 0,
        "exit": int(rc[-1]) if rc else None,
    }


def main() -> None:
    d = sys.argv[1]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fuzzlib

    print("| harness | executions | cov (edges) | ft (features) | corpus | exec/s | end |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in fuzzlib.HARNESSES:
        p = os.path.join(d, f"{name}.log")
        if not os.path.exists(p):
            print(f"| {name} | - | - | - | - | - | not run |")
            continue
        s = summarise(p)
        end = {0: "done, no crash", None: "running?"}.get(s["exit"], f"exit {s['exit']}")  # type: ignore[arg-type]
        print(
            f"| {name} | {s['execs']:,} | {s['cov']} | {s['ft']} | {s['corpus']} | {s['rate']} | {end} |"
        )


if __name__ == "__main__":
    main()
