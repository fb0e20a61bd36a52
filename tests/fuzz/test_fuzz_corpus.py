"""Replay every saved fuzz input (corpus and past crashes) through its
harness, uninstrumented: a quick regression run of all the parsers that
`make fuzz` explores, part of `make test`. Needs no atheris; under CI
(CI=true) atheris must be installed so that `make fuzz` works there too."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzlib  # noqa: E402
from bftest import missing_tool  # noqa: E402


@pytest.mark.parametrize("name", fuzzlib.HARNESSES)
def test_saved_inputs_replay(name: str) -> None:
    """The corpus and every past crash of the harness, in a child process with
    a memory limit (replay.py)."""
    corpus = os.path.join(fuzzlib.CORPUS, name)
    n = len(os.listdir(corpus)) if os.path.isdir(corpus) else 0
    assert n >= 2, f"tests/fuzz/corpus/{name} is missing: run tests/fuzz/seed_corpus.py"
    p = subprocess.run(
        [sys.executable, os.path.join(fuzzlib.HERE, "replay.py"), name],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert f"{name}: " in p.stdout and " 0 failed" in p.stdout, p.stdout


def test_seeds_build_and_are_saved() -> None:
    """Every harness's seed builder still works with today's encoders, and its
    seeds are in the corpus (their exact bytes may move with the code, e.g. the
    RPC seeds follow the registry; seed_corpus.py rewrites them)."""
    import seed_corpus

    for name in fuzzlib.HARNESSES:
        mod = fuzzlib.harness(name)
        if hasattr(mod, "seeds"):
            seed_corpus.SEEDS[name] = mod.seeds
    assert set(seed_corpus.SEEDS) == set(fuzzlib.HARNESSES)
    for name, fn in seed_corpus.SEEDS.items():
        built = list(fn())
        assert len(built) >= 2, name
        d = os.path.join(fuzzlib.CORPUS, name)
        saved = [f for f in os.listdir(d) if f.startswith("seed-")]
        assert len(saved) >= 2, f"{d} has no seeds: run tests/fuzz/seed_corpus.py"


def test_make_fuzz_runs() -> None:
    """`run_fuzz.py` (what `make fuzz` calls) really fuzzes: a short atheris
    run of one harness ends without a crash. Without atheris this fails under
    CI (CI=true) and is skipped elsewhere (atheris is the `fuzz` extra)."""
    try:
        import atheris  # noqa: F401
    except ImportError as e:
        missing_tool(f"atheris is not installed ({e}); pip install -e '.[fuzz]'")
    runner = os.path.join(fuzzlib.HERE, "run_fuzz.py")
    out = subprocess.run(
        [sys.executable, runner, "--dry", "jsonrpc_msgpack", "--runs", "300"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DONE" in out.stderr and "cov:" in out.stderr, out.stderr
