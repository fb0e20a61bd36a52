"""Framework RPC methods, named and shaped like SPDK's: version, method list,
save/load of the whole configuration, log level, subsystems, reactors."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from .. import __version__
from .config import ConfigError, apply_config, build_config, default_sections, validate_config
from .context import RpcContext
from .errors import INVALID_PARAMS, RpcError, invalid_params
from .registry import OUT_CONFIG, OUT_DICT, OUT_JSON, REGISTRY, Param, Registry, rpc_method

# SPDK's log levels -> Python logging; NOTICE sits between INFO and WARNING
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
LOG_LEVELS = {
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "NOTICE": NOTICE,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
}
LOG_ROOT = "blockfabric"

# subsystem -> subsystems it depends on (framework_get_subsystems)
SUBSYSTEMS: dict[str, list[str]] = {
    "keyring": [],
    "bdev": [],
    "nvmf": ["bdev", "keyring"],
    "iscsi": ["bdev"],
}

# reactors report busy/idle in nanoseconds unless they say otherwise
DEFAULT_TICK_RATE = 1_000_000_000


def _registry(ctx: RpcContext) -> Registry:
    reg = getattr(ctx, "registry", None)
    return reg if isinstance(reg, Registry) else REGISTRY


def version_fields(version: str = __version__) -> dict[str, Any]:
    core, _, suffix = version.partition("-")
    parts = (core.split(".") + ["0", "0", "0"])[:3]
    nums = []
    for p in parts:
        digits = "".join(ch for ch in p if ch.isdigit())
        nums.append(int(digits) if digits else 0)
    return {
        "major": nums[0],
        "minor": nums[1],
        "patch": nums[2],
        "suffix": f"-{suffix}" if suffix else "",
    }


@rpc_method("spdk_get_version", aliases=("get_spdk_version",), cli_out=OUT_JSON)
def spdk_get_version(ctx: RpcContext) -> dict[str, Any]:
    """Version of the target (SPDK's shape: version string + fields)."""
    return {"version": f"blockfabric v{__version__}", "fields": version_fields()}


@rpc_method(
    "rpc_get_methods",
    Param(
        "current",
        bool,
        default=False,
        short="-c",
        help="only methods callable in the current state",
    ),
    Param("include_aliases", bool, default=False, short="-i", help="include RPC aliases"),
    Param("include_deprecated", bool, default=False, spdk=False, help="include deprecated names"),
    Param(
        "include_schema",
        bool,
        default=False,
        spdk=False,
        help="answer every method's declaration (params, types, defaults, help, CLI form) "
        "instead of the names",
    ),
    aliases=("get_rpc_methods",),
    cli_out=OUT_DICT,
)
def rpc_get_methods(
    ctx: RpcContext,
    current: bool = False,
    include_aliases: bool = False,
    include_deprecated: bool = False,
    include_schema: bool = False,
) -> list[str] | list[dict[str, Any]]:
    """Names of all methods; aliases (SPDK's deprecated names) on request.
    ``current`` is accepted for SPDK compatibility: every method is callable at
    run time. ``include_schema`` (blockfabric extension): every method's
    declaration instead, in name order (control/registry.py Method.schema)."""
    reg = _registry(ctx)
    if include_schema:
        return reg.schema()
    return reg.names(include_aliases=include_aliases or include_deprecated)


def _no_indent(args: dict[str, Any]) -> dict[str, Any]:
    args.pop("indent", None)  # an output option of the command line, not a param
    return args


@rpc_method(
    "save_config",
    cli_out=OUT_CONFIG,
    cli_extra=(
        Param(
            "indent",
            int,
            required=False,
            short="-i",
            cli_default=2,
            help="Indent level. Value less than 0 mean compact mode. Default indent level is 2.",
        ),
    ),
    cli_build=_no_indent,
)
def save_config(ctx: RpcContext) -> dict[str, Any]:
    """The live configuration as an SPDK JSON config."""
    return build_config(ctx, default_sections())


def _read_config(args: dict[str, Any]) -> Any:
    """rpc.py's ``load_config [-j FILE]``: the params are the file's object (default: stdin)."""
    src = args.get("json_conf")
    if src is None:
        text = sys.stdin.read()
    else:
        with open(src, encoding="utf-8") as f:
            text = f.read()
    doc = json.loads(text)
    if args.get("include_aliases") and isinstance(doc, dict):
        doc = {**doc, "include_aliases": True}
    return doc


@rpc_method(
    "load_config",
    Param("subsystems", list, cli=False),
    Param("include_aliases", bool, default=False, short="-i", help="include RPC aliases"),
    cli_extra=(
        Param("json_conf", str, required=False, short="-j", help="Valid JSON configuration"),
    ),
    cli_build=_read_config,
)
def load_config(ctx: RpcContext, subsystems: list[Any], include_aliases: bool = False) -> bool:
    """Apply an SPDK JSON config (the file's object is the params); the whole
    config is validated before its first entry runs."""
    reg = _registry(ctx)
    try:
        entries = validate_config({"subsystems": subsystems}, reg)
    except ConfigError as e:
        raise invalid_params(str(e)) from None
    apply_config(ctx, entries, reg)
    return True


@rpc_method(
    "log_set_level",
    Param("level", str, pos=0, help='log level we want to set. (for example "DEBUG").'),
)
def log_set_level(ctx: RpcContext, level: str) -> bool:
    """Set the log level of the supervisor and every reactor."""
    name = level.upper()
    if name not in LOG_LEVELS:
        raise invalid_params(
            f"parameter 'level' must be one of {', '.join(LOG_LEVELS)}, got {level!r}"
        )
    logging.getLogger(LOG_ROOT).setLevel(LOG_LEVELS[name])
    send = getattr(ctx, "send_event", None)
    if send is not None:
        send(None, "framework.log_level", {"level": name})
    return True


@rpc_method("log_get_level", cli_out=OUT_DICT)
def log_get_level(ctx: RpcContext) -> str:
    lvl = logging.getLogger(LOG_ROOT).getEffectiveLevel()
    for name, value in LOG_LEVELS.items():
        if value == lvl:
            return name
    return logging.getLevelName(lvl)


@rpc_method("framework_get_subsystems", cli_out=OUT_DICT)
def framework_get_subsystems(ctx: RpcContext) -> list[dict[str, Any]]:
    return [{"subsystem": n, "depends_on": list(d)} for n, d in SUBSYSTEMS.items()]


@rpc_method(
    "framework_get_config",
    Param("name", str, pos=0, help="Name of subsystem to query"),
    cli_out=OUT_DICT,
)
def framework_get_config(ctx: RpcContext, name: str) -> list[dict[str, Any]]:
    sections = default_sections()
    if name not in sections:
        raise RpcError(INVALID_PARAMS, f"subsystem '{name}' not found")
    return build_config(ctx, {name: sections[name]})["subsystems"][0]["config"]


def _cpu_times(lcore: int) -> tuple[int, int]:
    """(irq, sys) of one CPU in ticks of DEFAULT_TICK_RATE, 0 when unknown."""
    try:
        import psutil

        t = psutil.cpu_times(percpu=True)[lcore]
        return int(getattr(t, "irq", 0.0) * DEFAULT_TICK_RATE), int(t.system * DEFAULT_TICK_RATE)
    except Exception:
        return 0, 0


@rpc_method("framework_get_reactors", cli_out=OUT_DICT)
def framework_get_reactors(ctx: RpcContext) -> dict[str, Any]:
    """One entry per reactor process, shaped like SPDK's reactors."""
    answers = ctx.gather("framework.reactor_info", {})
    tick_rate = DEFAULT_TICK_RATE
    reactors = []
    for i, a in enumerate(answers):
        if not isinstance(a, dict):
            continue
        tick_rate = int(a.get("tick_rate", tick_rate))
        lcore = int(a.get("lcore", i))
        busy = int(a.get("busy", 0))
        idle = int(a.get("idle", 0))
        irq, sys_t = _cpu_times(lcore)
        sup = getattr(ctx, "reactor_supervision", None)
        extra = sup(int(a.get("reactor_id", i))) if sup is not None else {}
        reactors.append(
            {
                **extra,
                "lcore": lcore,
                "busy": busy,
                "idle": idle,
                "irq": irq,
                "sys": sys_t,
                "in_interrupt": a.get("poll_mode") == "blocking",
                "pid": a.get("pid"),
                "poll_mode": a.get("poll_mode"),
                "callback_errors": a.get("callback_errors", 0),
                # blockfabric extension: "busy"/"idle" count polls that found
                # work / found none; the process's CPU time is its busy time
                "cpu_user_s": a.get("user_s", 0.0),
                "cpu_sys_s": a.get("sys_s", 0.0),
                "blocks": a.get("blocks", 0),
                "lw_threads": [
                    {
                        "name": f"reactor_{lcore}",
                        "id": i + 1,
                        "cpumask": format(1 << lcore, "x"),
                        "elapsed": busy + idle,
                    }
                ],
            }
        )
    return {"tick_rate": tick_rate, "reactors": reactors}


@rpc_method("iobuf_get_stats", cli_out=OUT_DICT)
def iobuf_get_stats(ctx: RpcContext) -> list[dict[str, Any]]:
    """Transfer-buffer statistics, one entry per reactor, in SPDK's shape
    (``module``, ``small_pool``/``large_pool`` with ``cache`` = served from
    the reactor's own share, ``main`` = from the shared reserve, ``retry`` =
    found none and had to wait) plus blockfabric's counters: ``in_use``,
    ``in_use_bytes``, ``high_water``, ``acquires``, ``waits``, ``queued``,
    ``max_queue``, ``nomem`` and per pool ``gets``/``puts``/``local_free``."""
    answers = ctx.gather("framework.iobuf_stats", {})
    return [a for a in answers if isinstance(a, dict)]
