"""Shared pieces of the coverage-guided fuzz harnesses (tests/fuzz/fz_*.py).

Each harness module defines ``one_input(data: bytes) -> None``: it feeds the
bytes to one parser and catches only the exceptions that parser documents as
"bad input". Any other exception (or a failed invariant ``assert``) is a crash.
The same function runs under atheris (``run_fuzz.py``, ``make fuzz``) and,
uninstrumented, in pytest over the saved corpus (test_fuzz_corpus.py).

Helpers of other test packages (the sans-I/O NVMe/TCP and iSCSI harnesses of
tests/transports/*/conftest.py) are loaded by path, so the fuzzers drive the
code exactly as the unit tests do.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from types import ModuleType

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")
CRASHES = os.path.join(HERE, "crashes")

# harness name -> module (tests/fuzz/fz_<name>.py)
HARNESSES = (
    "nvmf_pdu",
    "nvmf_qpair",
    "iscsi_pdu",
    "iscsi_login",
    "scsi_cdb",
    "jsonrpc_json",
    "jsonrpc_msgpack",
    "json_config",
    "ini_config",
    "nvmf_fc",
)

_loaded: dict[str, ModuleType] = {}


def quiet() -> None:
    """Host-caused errors are logged by design; a fuzzer makes millions."""
    logging.disable(logging.CRITICAL)


def load_path(name: str, relpath: str) -> ModuleType:
    """Import a test helper file (e.g. a conftest) under a private name."""
    if name in _loaded:
        return _loaded[name]
    path = os.path.join(TESTS, relpath)
    d = os.path.dirname(path)
    if d not in sys.path:
        sys.path.insert(0, d)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    _loaded[name] = mod
    return mod


def adapt_channel(cls: type) -> type:
    """Let a test helper's in-memory IoChannel (``_do_read(off, n, cb)``,
    ``_do_write(off, data, cb)``) run under both bdev channel interfaces: the
    new base class passes ``into`` / ``fua`` as a 4th argument. Only the
    fuzzers' private copies of the helpers are adapted."""
    import inspect

    for name in ("_do_read", "_do_write"):
        fn = cls.__dict__.get(name)
        if fn is None or len(inspect.signature(fn).parameters) > 4:
            continue

        def wrap(self: object, a: object, b: object, cb: object, *_new: object, _fn=fn) -> None:  # type: ignore[no-untyped-def]
            _fn(self, a, b, cb)

        setattr(cls, name, wrap)
    return cls


def harness(name: str) -> ModuleType:
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    return importlib.import_module(f"fz_{name}")


class Bytes:
    """Consume a fuzz input field by field (short inputs give zeros)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u16(self) -> int:
        return self.u8() | (self.u8() << 8)

    def take(self, n: int) -> bytes:
        b = self.data[self.pos : self.pos + n]
        self.pos += len(b)
        return b

    def rest(self) -> bytes:
        b = self.data[self.pos :]
        self.pos = len(self.data)
        return b

    @property
    def left(self) -> int:
        return len(self.data) - self.pos
