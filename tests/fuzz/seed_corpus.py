"""Write valid seed inputs, built with the project's own codecs, into
tests/fuzz/corpus/<harness>/seed-*, so coverage starts deep.

    python tests/fuzz/seed_corpus.py [NAME ...]      (default: every harness)

Seeds are deterministic (same files every run); the fuzzer's own finds sit
next to them under their SHA-1 names."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fuzzlib  # noqa: E402

SEEDS: dict[str, Callable[[], Iterable[bytes]]] = {}


def seeds(name: str) -> Callable[[Callable[[], Iterable[bytes]]], Callable[[], Iterable[bytes]]]:
    def deco(fn: Callable[[], Iterable[bytes]]) -> Callable[[], Iterable[bytes]]:
        SEEDS[name] = fn
        return fn

    return deco


def _rpc_requests() -> list[object]:
    from blockfabric.actors.default_config import default_config
    from blockfabric.control import methods as _m  # noqa: F401
    from blockfabric.control.registry import REGISTRY

    reqs: list[object] = []
    for i, (m, p) in enumerate(default_config()):
        reqs.append({"jsonrpc": "2.0", "id": i, "method": m, "params": p})
    for i, name in enumerate(REGISTRY.names(include_aliases=False)):
        m = REGISTRY.methods[name]
        params = {}
        for prm in m.params:
            if prm.required:
                t = prm.type if isinstance(prm.type, type) else prm.type[0]
                params[prm.name] = {
                    int: 1,
                    bool: True,
                    float: 1.0,
                    str: "x",
                    list: [],
                    dict: {},
                }.get(t, None)
        reqs.append({"jsonrpc": "2.0", "id": f"r{i}", "method": name, "params": params})
    reqs += [
        {"jsonrpc": "2.0", "method": "spdk_get_version"},  # notification
        {"jsonrpc": "2.0", "id": None, "method": "rpc_get_methods", "params": []},
        {"jsonrpc": "2.0", "id": 7, "method": "fuzz_raise"},
        [{"jsonrpc": "2.0", "id": 1, "method": "spdk_get_version"}, {"jsonrpc": "2.0", "id": 2}],
    ]
    return reqs


@seeds("jsonrpc_json")
def _json() -> Iterable[bytes]:
    reqs = _rpc_requests()
    for r in reqs:
        yield b"\x80" + json.dumps(r).encode()
    # several requests in one stream, with whitespace and a string holding brackets
    yield b"\x40" + b"\n".join(json.dumps(r, indent=1).encode() for r in reqs[:6])
    yield b"\x10" + b'{"jsonrpc":"2.0","id":"a\\"}[{","method":"x"}  [ ]'


@seeds("jsonrpc_msgpack")
def _msgpack() -> Iterable[bytes]:
    import msgpack

    for r in _rpc_requests():
        yield msgpack.packb(r, use_bin_type=True)


@seeds("json_config")
def _json_config() -> Iterable[bytes]:
    from blockfabric.actors.default_config import default_config

    subs: dict[str, list[object]] = {"bdev": [], "nvmf": [], "iscsi": []}
    for m, p in default_config():
        sub = "bdev" if m.startswith("bdev") else "nvmf" if m.startswith("nvmf") else "iscsi"
        subs[sub].append({"method": m, "params": p})
    doc = {"subsystems": [{"subsystem": k, "config": v} for k, v in subs.items()]}
    yield json.dumps(doc, indent=2).encode()
    yield json.dumps({"subsystems": [{"subsystem": "bdev", "config": None}]}).encode()


INI_GOOD = """# SPDK iscsi.conf
[Global]
  ReactorMask 0x1
[iSCSI]
  NodeBase "iqn.2016-06.io.spdk"
  AuthFile /usr/local/etc/spdk/auth.conf
  Timeout 30
  NopInInterval 10
  DiscoveryAuthMethod Auto
  MaxSessions 16
  MaxConnectionsPerSession 2
  DefaultTime2Wait 2
  FirstBurstLength 8192
  ImmediateData Yes
  ErrorRecoveryLevel 0
[AuthGroup1]
  Auth "user1" "secret1" "muser1" "msecret1"
[PortalGroup1]
  Portal DA1 127.0.0.1:3260
  Portal DA2 [::1]
[InitiatorGroup1]
  InitiatorName ANY
  Netmask 127.0.0.1/32
[Malloc]
  NumberOfLuns 2
  LunSizeInMB 64
[TargetNode1]
  TargetName disk1
  TargetAlias "Data Disk1"
  Mapping PortalGroup1 InitiatorGroup1
  AuthMethod CHAP Mutual
  AuthGroup AuthGroup1
  UseDigest Header
  LUN0 Malloc0
  LUN1 Malloc1
  QueueDepth 128
"""


@seeds("ini_config")
def _ini() -> Iterable[bytes]:
    yield INI_GOOD.encode()
    yield b"[Global]\n[TargetNode2]\n TargetName x\n Mapping PortalGroup1 InitiatorGroup1\n LUN0 Malloc0\n"


def write(name: str) -> int:
    from blockfabric.transports.iscsi import ini_config as _ini_mod  # noqa: F401

    d = os.path.join(fuzzlib.CORPUS, name)
    os.makedirs(d, exist_ok=True)
    n = 0
    for i, data in enumerate(SEEDS[name]()):
        with open(os.path.join(d, f"seed-{i:03d}"), "wb") as f:
            f.write(data)
        n += 1
    return n


def main() -> None:
    # harness-specific seed builders live in the harness modules (seeds())
    for name in fuzzlib.HARNESSES:
        if name in SEEDS or not os.path.exists(os.path.join(HERE, f"fz_{name}.py")):
            continue
        mod = fuzzlib.harness(name)
        if hasattr(mod, "seeds"):
            SEEDS[name] = mod.seeds
    names = sys.argv[1:] or [n for n in fuzzlib.HARNESSES if n in SEEDS]
    for name in names:
        print(f"{name}: {write(name)} seeds")


if __name__ == "__main__":
    main()
