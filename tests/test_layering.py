"""Layers point one way (issue 16 item 4), checked over the ast of every module.

    runtime <- control <- shm <- NVMe-oF library <- bdevs <- transports <- actors <- tools/bench

A module may import its own layer and the layers to its left, never one to its
right:

* ``runtime`` (the event-loop interface) imports no other layer;
* ``control`` (registry, errors, server, CLI) is imported by all and imports
  only ``runtime``; the modules that declare RPCs reach the registry by
  registering into it (control/methods.py loads them by name with importlib,
  which is not an import statement and not checked here);
* the NVMe-oF protocol library -- the wire definitions (transports/nvmf/spec.py,
  the NVMe/TCP PDU codec transports/nvmf/pdu.py) and the host/initiator
  (transports/nvmf_host) -- sits below bdevs because the nvme bdev is built on
  it, as SPDK's lib/nvme is below lib/bdev;
* everything else under transports/ is the transport layer.

Imports under ``if TYPE_CHECKING:`` count too (mypy follows them, and they are
how a cycle starts), except the pairs listed in `TYPING_ONLY_ALLOWED`.

Second rule: the NVMe-oF core (every module of transports/nvmf/ that is not a
transport module, nor the supervisor-side rpc.py/state.py) imports no
transport module: not tcp.py, driver.py, pdu.py, rdma*/fc* modules, nor any
other package under transports/ than the transport interfaces (base, context).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "blockfabric"
SKIP_DIRS = {"tests", ".venv", "build", "docs", "scripts", ".git", "__pycache__"}

# (module prefix, rank), longest prefix wins; rank(target) <= rank(importer)
LAYERS: tuple[tuple[str, int], ...] = (
    ("blockfabric.runtime", 0),
    ("blockfabric.control", 1),
    ("blockfabric.shm", 2),
    ("blockfabric.transports.nvmf.spec", 3),
    ("blockfabric.transports.nvmf.pdu", 3),
    ("blockfabric.transports.nvmf_host", 3),
    # NVMe/TCP TLS (PSK derivation, the OpenSSL record layer): the host and
    # the target's TCP driver both use it
    ("blockfabric.transports.tls", 3),
    # FC-NVMe wire definitions (IUs, link services, FC addresses, the loopback
    # LLD's framing): the FC host in nvmf_host is built on them, like pdu.py
    # NVMe/RDMA wire codec and the pyverbs C-level helpers: the RDMA host in
    # nvmf_host is built on them, like pdu.py
    ("blockfabric.transports.nvmf.rdma_proto", 3),
    # DH-HMAC-CHAP: the message codec, the key transformations and the host's
    # state machine are pure (hashlib, cryptography's DH); the host library
    # and bdev_nvme authenticate with them
    ("blockfabric.transports.nvmf.auth_msg", 3),
    ("blockfabric.transports.nvmf.auth_crypto", 3),
    ("blockfabric.transports.nvmf.auth_host", 3),
    ("blockfabric.transports.nvmf.rdma_pyverbs", 3),
    ("blockfabric.transports.nvmf.fc_iu", 3),
    ("blockfabric.transports.nvmf.fc_ls", 3),
    ("blockfabric.transports.fc.addr", 3),
    ("blockfabric.transports.fc.frame", 3),
    ("blockfabric.bdevs", 4),
    ("blockfabric.transports", 5),
    ("blockfabric.actors", 6),
    ("blockfabric.tools", 7),
    ("blockfabric.bench", 7),
)
# the package root (__init__.py: __version__ only) is imported by every import
ROOT_RANK = 0
LAYER_NAMES = {
    0: "runtime",
    1: "control",
    2: "shm",
    3: "NVMe-oF library",
    4: "bdevs",
    5: "transports",
    6: "actors",
    7: "tools",
}

# typing-only imports that may point up, each with its reason
TYPING_ONLY_ALLOWED = {
    # RpcContext.bdevs is a dict of Bdev: the Protocol handlers are typed
    # against; control never touches a bdev module at run time
    ("blockfabric.control.context", "blockfabric.bdevs.base"),
}

NVMF = "blockfabric.transports.nvmf"
# modules of transports/nvmf/ that are a transport or its wire codec
TRANSPORT_MODULE_NAMES = {"tcp", "driver", "pdu"}
TRANSPORT_MODULE_PREFIXES = ("tcp_", "rdma", "fc", "verbs", "ibv")
# supervisor-side configuration and RPC of NVMe-oF: not part of the core
NOT_CORE = {"rpc", "state", "__init__"}
# what the core may import under blockfabric.transports
CORE_MAY_IMPORT_IN_TRANSPORTS = (
    "blockfabric.transports.context",
    "blockfabric.transports.base",
    # the reservation rules shared by NVMe and SCSI (issue 12 item 2)
    "blockfabric.transports.resv_common",
)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PKG, *parts])


def source_files() -> list[Path]:
    out = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in SKIP_DIRS or any(x in SKIP_DIRS for x in rel.parts):
            continue
        if rel.parts[0].endswith(".egg-info"):
            continue
        out.append(p)
    return out


def _exists(mod: str) -> bool:
    parts = mod.split(".")[1:]
    base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If):
            t = node.test
            name = t.id if isinstance(t, ast.Name) else getattr(t, "attr", None)
            if name == "TYPE_CHECKING":
                return True
    return False


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported blockfabric module, line, typing_only) for every import in path."""
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    out: list[tuple[str, int, bool]] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            # "from pkg import submodule" imports the submodule
            targets = [f"{src}.{a.name}" if _exists(f"{src}.{a.name}") else src for a in node.names]
        else:
            continue
        tc = _in_type_checking(node, parents)
        for t in dict.fromkeys(targets):
            if t == PKG or t.startswith(PKG + "."):
                out.append((t, node.lineno, tc))
    return out


def rank(mod: str) -> int:
    if mod == PKG:
        return ROOT_RANK
    hits = [p for p, _ in LAYERS if mod == p or mod.startswith(p + ".")]
    assert hits, f"{mod}: a new top-level package; give it a layer in tests/test_layering.py"
    return dict(LAYERS)[max(hits, key=len)]


def layering_violations() -> list[str]:
    bad = []
    for path in source_files():
        me = module_name(path)
        for target, line, typing_only in imports_of(path):
            if rank(target) <= rank(me):
                continue
            if typing_only and (me, target) in TYPING_ONLY_ALLOWED:
                continue
            bad.append(
                f"{path.relative_to(ROOT)}:{line}: {me} ({LAYER_NAMES[rank(me)]}) imports "
                f"{target} ({LAYER_NAMES[rank(target)]})"
                + (" [typing only]" if typing_only else "")
            )
    return bad


def is_transport_module(mod: str) -> bool:
    if not mod.startswith(NVMF + "."):
        return False
    leaf = mod.rsplit(".", 1)[1]
    return leaf in TRANSPORT_MODULE_NAMES or leaf.startswith(TRANSPORT_MODULE_PREFIXES)


def core_modules() -> list[Path]:
    out = []
    for p in sorted((ROOT / "transports" / "nvmf").glob("*.py")):
        mod = module_name(p)
        if p.stem in NOT_CORE or is_transport_module(mod):
            continue
        out.append(p)
    return out


def core_violations() -> list[tuple[str, str, str]]:
    """(core module, transport module it imports, message)."""
    bad = []
    for path in core_modules():
        me = module_name(path)
        for target, line, typing_only in imports_of(path):
            if not target.startswith("blockfabric.transports"):
                continue
            if target.startswith(NVMF + ".") and not is_transport_module(target):
                continue  # the core itself
            if target.startswith(CORE_MAY_IMPORT_IN_TRANSPORTS):
                continue
            msg = f"{path.relative_to(ROOT)}:{line}: NVMe-oF core {me} imports {target}"
            bad.append((me, target, msg + (" [typing only]" if typing_only else "")))
    return bad


# --- the checks ---------------------------------------------------------------


def test_layers_point_one_way() -> None:
    bad = layering_violations()
    assert not bad, "lower layer imports a higher one:\n" + "\n".join(bad)


def test_nvmf_core_imports_no_transport() -> None:
    assert {p.stem for p in core_modules()} >= {"core", "admin", "fabrics", "io", "discovery"}
    bad = core_violations()
    text = "\n".join(m for _, _, m in bad)
    assert not bad, "the NVMe-oF core imports a transport:\n" + text


# --- the checker checks itself on made-up modules -------------------------------


def _write(tmp: Path, rel: str, text: str) -> Path:
    p = tmp / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_checker_sees_relative_absolute_and_typing_imports(tmp_path: Path) -> None:
    global ROOT
    saved = ROOT
    ROOT = tmp_path
    try:
        _write(tmp_path, "shm/__init__.py", "")
        _write(tmp_path, "actors/__init__.py", "")
        _write(tmp_path, "actors/messages.py", "")
        _write(tmp_path, "control/__init__.py", "")
        _write(tmp_path, "control/registry.py", "")
        _write(
            tmp_path,
            "shm/pool.py",
            "from typing import TYPE_CHECKING\n"
            "from ..actors.messages import BufRef\n"
            "import blockfabric.actors.messages\n"
            "from ..control import registry\n"
            "if TYPE_CHECKING:\n    from ..actors import messages\n",
        )
        got = imports_of(tmp_path / "shm" / "pool.py")
        assert ("blockfabric.actors.messages", 2, False) in got
        assert ("blockfabric.actors.messages", 3, False) in got
        assert ("blockfabric.control.registry", 4, False) in got
        assert ("blockfabric.actors.messages", 6, True) in got
        bad = layering_violations()
        assert len(bad) == 3 and all("shm/pool.py" in b and "(actors)" in b for b in bad)
        # the core rule
        _write(tmp_path, "transports/__init__.py", "")
        _write(tmp_path, "transports/nvmf/__init__.py", "")
        _write(tmp_path, "transports/nvmf/tcp.py", "")
        _write(tmp_path, "transports/nvmf/rdma.py", "")
        _write(tmp_path, "transports/nvmf/spec.py", "")
        _write(tmp_path, "transports/nvmf/io.py", "from . import spec\nfrom .rdma import X\n")
        cv = core_violations()
        assert [(a, b) for a, b, _ in cv] == [
            ("blockfabric.transports.nvmf.io", "blockfabric.transports.nvmf.rdma")
        ]
    finally:
        ROOT = saved
