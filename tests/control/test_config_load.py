"""SPDK JSON config: validate-first loading, error messages, save_config shape,
and the framework RPC methods."""

from __future__ import annotations

import json
import logging

import pytest

from blockfabric import __version__
from blockfabric.control import framework_methods as fm
from blockfabric.control.config import (
    ConfigError,
    apply_config,
    build_config,
    load_config_file,
    validate_config,
)
from blockfabric.control.errors import RpcError
from blockfabric.control.registry import REGISTRY, Param, Registry, rpc_method

REG = Registry()
CALLS: list[tuple[str, dict]] = []


@rpc_method(
    "bdev_malloc_create",
    Param("num_blocks", int, min=1),
    Param("block_size", int),
    Param("name", str, required=False),
    aliases=("construct_malloc_bdev",),
    registry=REG,
)
def _malloc(ctx, num_blocks, block_size, name=None):
    CALLS.append(("bdev_malloc_create", {"name": name}))
    return name


@rpc_method("nvmf_create_transport", Param("trtype", str), registry=REG)
def _transport(ctx, trtype):
    CALLS.append(("nvmf_create_transport", {"trtype": trtype}))
    if trtype == "BAD":
        raise RpcError(-22, "bad transport")
    return True


def write(tmp_path, obj_or_text):
    p = tmp_path / "conf.json"
    p.write_text(obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text, indent=2))
    return str(p)


GOOD = {
    "subsystems": [
        {
            "subsystem": "bdev",
            "config": [
                {
                    "method": "bdev_malloc_create",
                    "params": {"name": "M0", "num_blocks": 8, "block_size": 512},
                },
                {
                    "method": "construct_malloc_bdev",
                    "params": {"name": "M1", "num_blocks": 8, "block_size": 512},
                },
            ],
        },
        {
            "subsystem": "nvmf",
            "config": [{"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}],
        },
        {"subsystem": "iscsi", "config": None},
    ]
}


def test_good_file(tmp_path):
    entries = load_config_file(write(tmp_path, GOOD), REG)
    assert [(e[0], e[1]) for e in entries] == [
        ("subsystems[0] (bdev) config[0] (bdev_malloc_create)", "bdev_malloc_create"),
        ("subsystems[0] (bdev) config[1] (construct_malloc_bdev)", "construct_malloc_bdev"),
        ("subsystems[1] (nvmf) config[0] (nvmf_create_transport)", "nvmf_create_transport"),
    ]
    CALLS.clear()
    apply_config(None, entries, REG)
    assert [c[0] for c in CALLS] == [
        "bdev_malloc_create",
        "bdev_malloc_create",
        "nvmf_create_transport",
    ]


def test_syntax_error_has_line_and_column(tmp_path):
    path = write(tmp_path, '{\n  "subsystems": [\n    {"subsystem": "bdev",, }\n  ]\n}\n')
    with pytest.raises(ConfigError, match=r"invalid JSON at line 3 column 26"):
        load_config_file(path, REG)


@pytest.mark.parametrize(
    "doc,msg",
    [
        ([], "top level must be an object"),
        ({}, "'subsystems' must be an array"),
        ({"subsystems": [3]}, r"subsystems\[0\]: must be an object"),
        ({"subsystems": [{"config": []}]}, r"subsystems\[0\]: 'subsystem' must be a string"),
        (
            {"subsystems": [{"subsystem": "bdev", "config": {}}]},
            r"subsystems\[0\] \(bdev\): 'config' must be an array",
        ),
        ({"subsystems": [{"subsystem": "bdev", "config": [1]}]}, r"config\[0\]: must be an object"),
        (
            {"subsystems": [{"subsystem": "bdev", "config": [{"params": {}}]}]},
            r"config\[0\]: 'method' must be a string",
        ),
        (
            {"subsystems": [{"subsystem": "bdev", "config": [{"method": "nope"}]}]},
            r"subsystems\[0\] \(bdev\) config\[0\] \(nope\): unknown method",
        ),
        (
            {
                "subsystems": [
                    {
                        "subsystem": "nvmf",
                        "config": [{"method": "nvmf_create_transport", "params": [1]}],
                    }
                ]
            },
            r"\(nvmf_create_transport\): 'params' must be an object",
        ),
    ],
)
def test_structure_errors(doc, msg):
    with pytest.raises(ConfigError, match=msg):
        validate_config(doc, REG)


def test_param_errors_name_the_entry(tmp_path):
    doc = json.loads(json.dumps(GOOD))
    doc["subsystems"][0]["config"].append(
        {"method": "bdev_malloc_create", "params": {"num_blocks": 8, "block_size": 512, "foo": 1}}
    )
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as ei:
        load_config_file(path, REG)
    assert str(ei.value) == (
        f"{path}: subsystems[0] (bdev) config[2] (bdev_malloc_create): unknown parameter 'foo'"
    )
    doc["subsystems"][0]["config"][2]["params"] = {"num_blocks": 0, "block_size": 512}
    with pytest.raises(
        ConfigError,
        match=r"config\[2\] \(bdev_malloc_create\): parameter 'num_blocks' must be >= 1",
    ):
        validate_config(doc, REG)
    doc["subsystems"][0]["config"][2]["params"] = {"block_size": 512}
    with pytest.raises(ConfigError, match="missing required parameter 'num_blocks'"):
        validate_config(doc, REG)


def test_nothing_runs_when_a_later_entry_is_bad():
    doc = json.loads(json.dumps(GOOD))
    doc["subsystems"][1]["config"].append(
        {"method": "nvmf_create_transport", "params": {"trtype": 5}}
    )
    CALLS.clear()
    with pytest.raises(ConfigError, match="parameter 'trtype' must be str"):
        validate_config(doc, REG)
    assert CALLS == []


def test_apply_failure_is_labelled():
    doc = {
        "subsystems": [
            {
                "subsystem": "nvmf",
                "config": [{"method": "nvmf_create_transport", "params": {"trtype": "BAD"}}],
            }
        ]
    }
    with pytest.raises(RpcError) as ei:
        apply_config(None, validate_config(doc, REG), REG)
    assert ei.value.code == -22
    assert (
        ei.value.message == "subsystems[0] (nvmf) config[0] (nvmf_create_transport): bad transport"
    )


# --- save_config / framework methods ---------------------------------------------------


class FakeState:
    def __init__(self, entries):
        self.entries = entries

    def save_config(self):
        return self.entries


class FakeCtx:
    def __init__(self):
        self.registry = REG
        self.nvmf = FakeState([{"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}])
        self.iscsi = None
        self.events = []

    def bdev_save_config(self):
        return [
            {
                "method": "bdev_malloc_create",
                "params": {"name": "M0", "num_blocks": 8, "block_size": 512},
            }
        ]

    def send_event(self, reactor_id, op, args):
        self.events.append((reactor_id, op, args))

    def gather(self, op, args, timeout=5.0):
        assert op == "framework.reactor_info"
        return [
            {"lcore": 0, "pid": 100, "busy": 30, "idle": 70, "poll_mode": "adaptive"},
            {"lcore": 1, "pid": 101, "busy": 5, "idle": 95, "poll_mode": "blocking"},
        ]


def test_build_config_order_and_empty_sections():
    ctx = FakeCtx()
    cfg = build_config(ctx)
    assert [s["subsystem"] for s in cfg["subsystems"]] == ["keyring", "bdev", "nvmf", "iscsi"]
    assert cfg["subsystems"][3]["config"] == []
    assert cfg["subsystems"][2]["config"] == [
        {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}
    ]
    # a saved config validates and loads back
    assert len(validate_config(cfg, REG)) == 2


def test_framework_methods_registered():
    for name in (
        "spdk_get_version",
        "rpc_get_methods",
        "save_config",
        "load_config",
        "log_set_level",
        "log_get_level",
        "framework_get_subsystems",
        "framework_get_config",
        "framework_get_reactors",
    ):
        assert REGISTRY.lookup(name).name == name


def test_spdk_get_version():
    v = REGISTRY.call(None, "spdk_get_version", None)
    assert v["version"] == f"blockfabric v{__version__}"
    major, minor, patch = (int(x) for x in __version__.split("-")[0].split("."))
    assert v["fields"] == {"major": major, "minor": minor, "patch": patch, "suffix": ""}
    assert fm.version_fields("1.2.3-pre") == {"major": 1, "minor": 2, "patch": 3, "suffix": "-pre"}


def test_rpc_get_methods_aliases():
    ctx = FakeCtx()
    names = REGISTRY.call(ctx, "rpc_get_methods", {})
    assert "bdev_malloc_create" in names and "construct_malloc_bdev" not in names
    assert "construct_malloc_bdev" in REGISTRY.call(
        ctx, "rpc_get_methods", {"include_aliases": True}
    )


def test_save_and_load_config_methods():
    ctx = FakeCtx()
    saved = REGISTRY.call(ctx, "save_config", None)
    assert [s["subsystem"] for s in saved["subsystems"]] == ["keyring", "bdev", "nvmf", "iscsi"]
    CALLS.clear()
    assert REGISTRY.call(ctx, "load_config", saved) is True
    assert [c[0] for c in CALLS] == ["bdev_malloc_create", "nvmf_create_transport"]
    bad = {
        "subsystems": [
            {
                "subsystem": "bdev",
                "config": [{"method": "bdev_malloc_create", "params": {"foo": 1}}],
            }
        ]
    }
    CALLS.clear()
    with pytest.raises(RpcError) as ei:
        REGISTRY.call(ctx, "load_config", bad)
    assert (
        ei.value.code == -32602
        and "config[0] (bdev_malloc_create): unknown parameter 'foo'" in ei.value.message
    )
    assert CALLS == []
    assert REGISTRY.call(ctx, "framework_get_config", {"name": "nvmf"}) == ctx.nvmf.entries
    with pytest.raises(RpcError, match="not found"):
        REGISTRY.call(ctx, "framework_get_config", {"name": "vhost"})


def test_log_level():
    ctx = FakeCtx()
    old = logging.getLogger("blockfabric").level
    try:
        assert REGISTRY.call(ctx, "log_set_level", {"level": "debug"}) is True
        assert logging.getLogger("blockfabric").level == logging.DEBUG
        assert REGISTRY.call(ctx, "log_get_level", None) == "DEBUG"
        assert ctx.events == [(None, "framework.log_level", {"level": "DEBUG"})]
        REGISTRY.call(ctx, "log_set_level", {"level": "NOTICE"})
        assert REGISTRY.call(ctx, "log_get_level", None) == "NOTICE"
        with pytest.raises(RpcError) as ei:
            REGISTRY.call(ctx, "log_set_level", {"level": "LOUD"})
        assert ei.value.code == -32602 and "'level'" in ei.value.message
    finally:
        logging.getLogger("blockfabric").setLevel(old)


def test_framework_get_reactors_shape():
    r = REGISTRY.call(FakeCtx(), "framework_get_reactors", None)
    assert r["tick_rate"] == fm.DEFAULT_TICK_RATE
    assert [x["lcore"] for x in r["reactors"]] == [0, 1]
    x = r["reactors"][1]
    for key in ("lcore", "busy", "idle", "irq", "sys", "in_interrupt", "lw_threads"):
        assert key in x
    assert (x["busy"], x["idle"], x["in_interrupt"]) == (5, 95, True)
    assert x["lw_threads"][0]["cpumask"] == "2"


def test_framework_get_subsystems():
    subs = REGISTRY.call(None, "framework_get_subsystems", None)
    assert [s["subsystem"] for s in subs] == ["keyring", "bdev", "nvmf", "iscsi"]
    assert all(isinstance(s["depends_on"], list) for s in subs)
