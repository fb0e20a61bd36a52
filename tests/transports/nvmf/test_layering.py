"""The NVMe-oF core imports no transport (issue 10 item 1, issue 16 item 4).

Reads the import statements (ast) of every core file, including imports
under TYPE_CHECKING and inside functions, and fails when one names a
transport module of transports/nvmf (tcp, tcp_ops, driver, pdu, rdma, fc,
...) or any other transport package (iscsi, nvmf_host) or the actors layer's
socket plumbing. The list of core files is explicit: a new core file must be
added here, a new transport module is caught because it is not in CORE.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NVMF = Path(__file__).resolve().parents[3] / "transports" / "nvmf"

# the transport-neutral NVMe-oF core
CORE = (
    "core",
    "admin",
    "fabrics",
    "io",
    "discovery",
    "router",
    "request",
    "qpair",
    "transport",
    "spec",
    "nqn",
    "state",
    "rpc",
    "ana",
    # NVMe reservations (issue 12 item 2)
    "reservation",
    "reservation_io",
    "reservation_sup",
    "reservation_ptpl",
    "auth",
    "auth_msg",
    "auth_crypto",
    "auth_config",
    "auth_host",
)
# shared helpers a core file may import besides other core files
ALLOWED_OUTSIDE = (
    "blockfabric.bdevs",
    "blockfabric.shm",
    "blockfabric.control",
    "blockfabric.runtime",
    "blockfabric.transports.context",
    "blockfabric.transports.base",
    # what NVMe reservations share with SCSI persistent reservations
    "blockfabric.transports.resv_common",
    # TLS PSK identity/derivation: pure functions over keys (hashlib), no I/O;
    # nvmf_subsystem_add_host --psk derives in the supervisor (rpc/state)
    "blockfabric.transports.tls.psk",
)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[int, str]] = []
    pkg = "blockfabric.transports.nvmf"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if node.module is None or node.level == 1 and mod == pkg:
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return out


def _violations(path: Path) -> list[str]:
    bad = []
    for line, mod in _imports(path):
        if not mod.startswith("blockfabric."):
            continue  # the standard library, numpy, ...
        if mod.startswith("blockfabric.transports.nvmf."):
            name = mod.split(".")[3]
            if name not in CORE:
                bad.append(f"{path.name}:{line} imports transport module {mod}")
        elif mod.startswith(ALLOWED_OUTSIDE):
            continue
        elif mod.startswith("blockfabric.transports"):
            bad.append(f"{path.name}:{line} imports another transport package {mod}")
        else:
            bad.append(f"{path.name}:{line} imports {mod}")
    return bad


@pytest.mark.parametrize("name", CORE)
def test_core_file_imports_no_transport(name: str) -> None:
    path = NVMF / f"{name}.py"
    assert path.exists(), f"core file {path} is gone: update CORE"
    assert _violations(path) == []


def test_the_check_catches_a_transport_import(tmp_path: Path) -> None:
    # the test must be able to fail: each form of import of a transport
    for src in (
        "from .tcp import TcpQpair\n",
        "from . import tcp\n",
        "from . import driver, spec\n",
        "import blockfabric.transports.nvmf.rdma\n",
        "from blockfabric.transports.nvmf.fc import FcTransport\n",
        "from ..iscsi import driver\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .pdu import Pdu\n",
        "def f():\n    from .tcp_ops import TCP\n",
    ):
        p = tmp_path / "x.py"
        p.write_text(src)
        assert _violations(p), src
    p = tmp_path / "ok.py"
    p.write_text(
        "from . import spec\nfrom .qpair import QueuePair\nfrom ...shm.iobuf import IoVec\n"
    )
    assert _violations(p) == []


def test_every_transport_module_is_outside_the_core() -> None:
    # the TCP transport's files exist and are not core files
    for name in ("tcp", "tcp_ops", "driver", "pdu"):
        assert (NVMF / f"{name}.py").exists()
        assert name not in CORE
