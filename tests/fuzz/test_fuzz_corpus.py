"""Replay every saved fuzz input (corpus and past crashes) through its
harness, uninstrumented: a quick regression run of all the parsers that
`make fuzz` explores, part of `make test`. Needs no atheris; under CI
(CI=true) atheris must be installed so that `make fuzz` works there too."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzlib  # noqa: E402


def _inputs(kind: str, name: str) -> list[str]:
    d = os.path.join(fuzzlib.CORPUS if kind == "corpus" else fuzzlib.CRASHES, name)
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d) if not f.startswith("."))


@pytest.mark.parametrize("name", fuzzlib.HARNESSES)
def test_corpus_replays(name: str) -> None:
    files = _inputs("corpus", name)
    assert len(files) >= 2, f"tests/fuzz/corpus/{name} is missing: run tests/fuzz/seed_corpus.py"
    mod = fuzzlib.harness(name)
    fuzzlib.quiet()
    try:
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            try:
                mod.one_input(data)
            except Exception as e:
                raise AssertionError(f"{path}: {type(e).__name__}: {e}") from e
    finally:
        import logging

        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", fuzzlib.HARNESSES)
def test_past_crashes_stay_fixed(name: str) -> None:
    mod = fuzzlib.harness(name)
    fuzzlib.quiet()
    try:
        for path in _inputs("crashes", name):
            with open(path, "rb") as f:
                data = f.read()
            try:
                mod.one_input(data)
            except Exception as e:
                raise AssertionError(f"regression {path}: {type(e).__name__}: {e}") from e
    finally:
        import logging

        logging.disable(logging.NOTSET)


def test_seeds_are_current() -> None:
    """The seed files match what seed_corpus.py builds from today's codecs."""
    import seed_corpus

    for name in fuzzlib.HARNESSES:
        mod = fuzzlib.harness(name)
        if hasattr(mod, "seeds"):
            seed_corpus.SEEDS[name] = mod.seeds
    for name, fn in seed_corpus.SEEDS.items():
        for i, data in enumerate(fn()):
            path = os.path.join(fuzzlib.CORPUS, name, f"seed-{i:03d}")
            assert os.path.exists(path), f"{path} missing: run tests/fuzz/seed_corpus.py"
            with open(path, "rb") as f:
                assert f.read() == data, f"{path} is stale: run tests/fuzz/seed_corpus.py"


def test_make_fuzz_runs() -> None:
    """`run_fuzz.py` (what `make fuzz` calls) really fuzzes: a short atheris
    run of one harness ends without a crash. Without atheris this fails under
    CI (CI=true) and is skipped elsewhere (atheris is the `fuzz` extra)."""
    import subprocess

    try:
        import atheris  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise AssertionError(
                f"CI=true but atheris is missing ({e}): pip install -e '.[fuzz]'"
            ) from e
        pytest.skip(f"atheris not installed ({e}); pip install -e '.[fuzz]'")
    runner = os.path.join(fuzzlib.HERE, "run_fuzz.py")
    out = subprocess.run(
        [sys.executable, runner, "--dry", "jsonrpc_msgpack", "--runs", "300"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DONE" in out.stderr and "cov:" in out.stderr, out.stderr
