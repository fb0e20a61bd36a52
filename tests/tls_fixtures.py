"""TLS test constants and helpers (tests/transports/tls, bench/tls.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from blockfabric.control.keyring import TlsPsk

SUB = "nqn.2016-06.io.spdk:tls1"
HOST256 = "nqn.2014-08.org.nvmexpress:uuid:7e1a0000-0000-0000-0000-000000000256"
HOST384 = "nqn.2014-08.org.nvmexpress:uuid:7e1a0000-0000-0000-0000-000000000384"
HOST0 = "nqn.2014-08.org.nvmexpress:uuid:7e1a0000-0000-0000-0000-000000000000"
NOKEY = "nqn.2014-08.org.nvmexpress:uuid:7e1a0000-0000-0000-0000-00000000dead"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def key_file(folder: Path, name: str, psk: TlsPsk) -> str:
    p = folder / name
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(psk.interchange() + "\n")
    return str(p)
