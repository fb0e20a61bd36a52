"""A real daemon with a TLS (--secure-channel) listener and a plain one on one
subsystem, shared by the TLS tests of a module (daemon start-up is slow on
the loaded CI machine); keys live in owner-only files of the run folder."""

from __future__ import annotations

import os
import shutil
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bftest import Daemon, _seq, shm_objects
from tls_fixtures import HOST0, HOST256, HOST384, NOKEY, SUB, free_port, key_file

from blockfabric.control.keyring import TlsPsk


@pytest.fixture(scope="module")
def tls_target() -> Iterator[Any]:
    run = Path(f"/tmp/bf-{os.getpid()}-tls{next(_seq)}")
    run.mkdir(mode=0o700)
    d = Daemon(run, f"tls{os.getpid()}x{next(_seq)}", "0x1")
    keys = {
        HOST256: TlsPsk(1, os.urandom(32)),
        HOST384: TlsPsk(2, os.urandom(48)),
        HOST0: TlsPsk(0, os.urandom(48)),
    }
    try:
        d.start()
        d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 4096, "block_size": 512})
        d.rpc("nvmf_create_transport", {"trtype": "TCP"})
        d.rpc("nvmf_create_subsystem", {"nqn": SUB, "serial_number": "BFTLS1"})
        d.rpc("nvmf_subsystem_add_ns", {"nqn": SUB, "namespace": {"bdev_name": "Malloc0"}})
        secure, plain = free_port(), free_port()
        for port, sec in ((secure, True), (plain, False)):
            la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
            d.rpc(
                "nvmf_subsystem_add_listener",
                {"nqn": SUB, "listen_address": la, "secure_channel": sec},
            )
        for i, (host, psk) in enumerate(keys.items()):
            d.rpc("keyring_file_add_key", {"name": f"key{i}", "path": key_file(run, f"k{i}", psk)})
            d.rpc("nvmf_subsystem_add_host", {"nqn": SUB, "host": host, "psk": f"key{i}"})
        d.rpc("nvmf_subsystem_add_host", {"nqn": SUB, "host": NOKEY})
        yield types.SimpleNamespace(
            d=d,
            run=run,
            secure=secure,
            plain=plain,
            keys=keys,
            names={h: f"key{i}" for i, h in enumerate(keys)},
        )
    finally:
        d.stop()
        try:
            assert shm_objects(d.name) == [], f"{d.name} left shared memory behind"
        finally:
            shutil.rmtree(run, ignore_errors=True)
