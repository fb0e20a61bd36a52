"""Run one harness under atheris (libFuzzer), with its corpus in git.

    python tests/fuzz/run_fuzz.py NAME [--runs N] [--seconds S] [-- libFuzzer args]
    python tests/fuzz/run_fuzz.py all --runs N       (one after another)

The corpus is tests/fuzz/corpus/NAME/ (new interesting inputs are added to
it); a crashing input is written to tests/fuzz/crashes/NAME/ and replayed by
tests/fuzz/test_fuzz_corpus.py from then on. ``--merge`` minimises the corpus
in place (keeps the inputs that add coverage). Exit status: libFuzzer's (0 =
no crash)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fuzzlib  # noqa: E402

# per-harness input size cap (bytes): large enough for the longest valid seed
MAX_LEN = {
    "nvmf_qpair": 16384,
    "iscsi_pdu": 16384,
    "iscsi_login": 8192,
    "scsi_cdb": 8192,
}


# what each harness instruments for coverage: the code under test only (the
# harness, the test helpers and the rest of blockfabric run uninstrumented, at
# full speed)
_T = "blockfabric.transports."
INSTRUMENT = {
    "nvmf_pdu": [_T + "nvmf.pdu"],
    "nvmf_qpair": [_T + "nvmf"],
    "iscsi_pdu": [_T + "iscsi.pdu"],
    "iscsi_login": [_T + "iscsi", _T + "scsi"],
    "scsi_cdb": [_T + "scsi"],
    "jsonrpc_json": ["blockfabric.control"],
    "jsonrpc_msgpack": ["blockfabric.control"],
    "json_config": ["blockfabric.control"],
    "ini_config": [_T + "iscsi.ini_config", "blockfabric.control"],
}


def _child(name: str, libfuzzer_args: list[str]) -> None:
    import atheris  # the fuzz extra: pip install -e '.[fuzz]'

    with atheris.instrument_imports(include=INSTRUMENT.get(name, ["blockfabric"])):
        mod = fuzzlib.harness(name)
        if hasattr(mod, "setup"):
            mod.setup()
    fuzzlib.quiet()
    atheris.Setup([sys.argv[0], *libfuzzer_args], mod.one_input)
    atheris.Fuzz()


def _run(name: str, runs: int, seconds: int, extra: list[str], merge: bool, dry: bool) -> int:
    corpus = os.path.join(fuzzlib.CORPUS, name)
    crashes = os.path.join(fuzzlib.CRASHES, name)
    if dry:  # a smoke run: new inputs and crashes go to a scratch folder
        scratch = tempfile.mkdtemp(prefix=f"fuzz-{name}-")
        try:
            args = [f"-max_len={MAX_LEN.get(name, 4096)}", f"-artifact_prefix={scratch}/"]
            args += [f"-runs={runs or 1000}", scratch, corpus]
            return subprocess.call([sys.executable, __file__, "--child", name, "--", *args])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(crashes, exist_ok=True)
    args = [
        f"-max_len={MAX_LEN.get(name, 4096)}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
    ]
    if merge:
        tmp = tempfile.mkdtemp(prefix=f"fuzz-{name}-")
        try:
            rc = subprocess.call(
                [sys.executable, __file__, "--child", name, "--", *args, "-merge=1", tmp, corpus]
            )
            if rc == 0:
                shutil.rmtree(corpus)
                shutil.copytree(tmp, corpus)
            return rc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if runs:
        args.append(f"-runs={runs}")
    if seconds:
        args.append(f"-max_total_time={seconds}")
    cmd = [sys.executable, __file__, "--child", name, "--", *args, *extra, corpus]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        rest = sys.argv[3:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        _child(sys.argv[2], rest)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help=f"harness: all, {', '.join(fuzzlib.HARNESSES)}")
    ap.add_argument("--runs", type=int, default=0, help="executions (libFuzzer -runs)")
    ap.add_argument("--seconds", type=int, default=0, help="time limit (-max_total_time)")
    ap.add_argument("--merge", action="store_true", help="minimise the corpus in place")
    ap.add_argument("--dry", action="store_true", help="leave the corpus untouched (smoke test)")
    ap.add_argument("extra", nargs="*", help="more libFuzzer arguments (after --)")
    a = ap.parse_args()
    names = list(fuzzlib.HARNESSES) if a.name == "all" else [a.name]
    for n in names:
        if n not in fuzzlib.HARNESSES:
            ap.error(f"unknown harness {n}")
    worst = 0
    for n in names:
        rc = _run(n, a.runs, a.seconds, a.extra, a.merge, a.dry)
        print(f"fuzz {n}: exit {rc}", flush=True)
        worst = worst or rc
    return worst


if __name__ == "__main__":
    sys.exit(main())
