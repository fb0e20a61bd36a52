"""Replay saved fuzz inputs through a harness, uninstrumented, under a memory
limit (like libFuzzer's -rss_limit_mb): an input that makes the code under
test allocate without bound fails with MemoryError instead of taking the
machine down.

    python tests/fuzz/replay.py NAME [FILE ...]   (default: corpus + crashes)

Prints one line per failing input; exit status 1 if any failed."""

from __future__ import annotations

import os
import resource
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fuzzlib  # noqa: E402

# address space allowed on top of what the interpreter has mapped at start
HEADROOM = 2 << 30


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def inputs(name: str) -> list[str]:
    out = []
    for root in (fuzzlib.CORPUS, fuzzlib.CRASHES):
        d = os.path.join(root, name)
        if os.path.isdir(d):
            out += sorted(os.path.join(d, f) for f in os.listdir(d) if not f.startswith("."))
    return out


def main() -> int:
    name = sys.argv[1]
    files = sys.argv[2:] or inputs(name)
    mod = fuzzlib.harness(name)
    if hasattr(mod, "setup"):
        mod.setup()
    fuzzlib.quiet()
    limit = _vm_size() + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    fns = [mod.one_input] + [getattr(mod, x) for x in getattr(mod, "REPLAY_ALSO", ())]
    failed = 0
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:  # a running fuzzer replaced it with a smaller one
            continue
        for fn in fns:
            try:
                fn(data)
            except Exception as e:
                failed += 1
                tb = traceback.extract_tb(e.__traceback__)[-1]
                print(
                    f"FAIL {os.path.relpath(path, HERE)} ({fn.__name__}): {type(e).__name__}: "
                    f"{str(e)[:300]} at {tb.filename}:{tb.lineno}"
                )
    print(f"{name}: {len(files)} inputs, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
