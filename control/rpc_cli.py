"""``blockfabric rpc``: an SPDK rpc.py-compatible command line client.

    blockfabric rpc [--name NAME | -s ADDR] [-t TIMEOUT] [--dry-run] METHOD [ARGS] [--params JSON]

Sub-commands, positional arguments, flags and the params they send mirror
SPDK's scripts/rpc.py for the same method, so scripts and guides written for
SPDK work unchanged; the old method names of SPDK's guides (add_portal_group,
construct_target_node, construct_malloc_bdev, ...) are accepted with their old
argument forms and send the old method name (the server registers those as
aliases) with the new method's params.

Every sub-command is built from the method's one declaration in the server's
registry (control/registry.py: `rpc_method` and its `Param`s with their
command-line form); ``blockfabric rpc METHOD --help`` shows it.

Differences from rpc.py, on purpose:
* optional values are sent only when given (rpc.py sometimes sends its client
  defaults); the server applies the same SPDK defaults.
* ``--params JSON`` on every method: merged over (object) or replacing (array)
  the params built from the arguments; any other METHOD name is sent as is
  with ``--params``.
* errors go to stderr (rpc.py prints them on stdout); exit code 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from .addresses import DEFAULT_INSTANCE, default_rpc_addr
from .client import RpcClient, RpcClientError, RpcConnectionError
from .registry import (
    OUT_ARRAY,
    OUT_CONFIG,
    OUT_DICT,
    OUT_JSON,
    OUT_NONE,
    REGISTRY,
    Method,
    Param,
    Registry,
)

__all__ = [
    "OUT_ARRAY",
    "OUT_DICT",
    "OUT_JSON",
    "OUT_NONE",
    "CliError",
    "build_method_parser",
    "cli_values_to_params",
    "format_result",
    "main",
    "parse_method_args",
    "register",
    "run",
]


def _registry() -> Registry:
    """The daemon's registry, complete: control.methods imports every module
    that declares methods (by name: control imports no other layer)."""
    from . import methods  # noqa: F401

    return REGISTRY


def _json_arg(text: str) -> Any:
    return json.loads(text)


_json_arg.__name__ = "JSON"  # argparse names the type in its error message


def _arg_help(p: Param) -> str:
    h = p.help or ""
    if p.type in (list, dict) and p.parse is None:
        h = (h + " " if h else "") + "(JSON)"
    if p.default is not None and p.type is not bool:
        h = (h + " " if h else "") + f"(server default: {p.default})"
    if not p.spdk:
        h = (h + " " if h else "") + "[blockfabric extension]"
    return h or " "


def _add_argument(ap: argparse.ArgumentParser, p: Param) -> None:
    kw: dict[str, Any] = {"help": _arg_help(p)}
    if p.type is bool and p.parse is None:
        if p.pos is not None:
            raise ValueError(f"{p.name}: a bool cannot be positional")
        if p.toggle:
            kw.update(action=argparse.BooleanOptionalAction, default=None, dest=p.dest)
        else:
            kw.update(action="store_const", const=not p.negate, default=None, dest=p.dest)
        ap.add_argument(*p.option_strings(), **kw)
        return
    if p.parse is not None:
        kw["type"] = p.parse
        if getattr(p.parse, "repeat", False):  # rpc.py's action="append"
            kw["action"] = "append"
    elif p.type in (int, float, str):
        kw["type"] = p.type
    elif p.type in (list, dict):
        kw["type"] = _json_arg
    if p.choices is not None:
        kw["choices"] = list(p.choices)
    kw["default"] = p.cli_default
    if p.pos is not None:
        if not p.required:
            kw["nargs"] = "?"
        ap.add_argument(p.dest, **kw)
    else:
        kw["dest"] = p.dest
        kw["required"] = p.required and p.cli_default is None
        ap.add_argument(*p.option_strings(), **kw)


def _description(m: Method, name: str) -> str:
    lines = [m.help or m.summary or name]
    if name != m.name:
        lines.append(f"(old name of {m.name}; the server knows both)")
    elif m.aliases:
        lines.append("old names: " + ", ".join(m.aliases))
    hidden = [p.name for p in m.params if not p.cli]
    if hidden:
        lines.append(
            "params not on the command line (send them with --params): " + ", ".join(hidden)
        )
    return "\n".join(lines)


def add_method_parser(sub: argparse._SubParsersAction, name: str, m: Method) -> None:
    """The sub-command ``name`` (the method or one of its aliases) from ``m``'s declaration."""
    ap = sub.add_parser(
        name,
        help=m.summary,
        description=_description(m, name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args = m.cli_params()
    for p in sorted((a for a in args if a.pos is not None), key=lambda a: a.pos or 0):
        _add_argument(ap, p)
    for p in args:
        if p.pos is None:
            _add_argument(ap, p)
    ap.add_argument(
        "--params",
        dest="params_json",
        metavar="JSON",
        help="JSON params merged over (object) or replacing (array) the ones from the arguments",
    )
    ap.set_defaults(rpc_method=name, rpc_decl=m)


def cli_values_to_params(m: Method, values: dict[str, Any]) -> Any:
    """The params a command line sends: ``values`` maps each argument's dest
    to its parsed value (arguments not given are absent)."""
    out: dict[str, Any] = {}
    for p in (*m.params, *(i for i in m.ignored if isinstance(i, Param))):
        if not p.cli:
            continue
        if p.fields:
            obj = {f.name: values[f.dest] for f in p.fields if f.cli and f.dest in values}
            if obj:
                out[p.name] = obj
        elif p.dest in values:
            out[p.name] = values[p.dest]
    if m.cli_build is None:
        return out
    extra = {x.name: values[x.dest] for x in m.cli_extra if x.dest in values}
    return m.cli_build({**out, **extra})


def build_method_parser(
    prog: str = "blockfabric rpc", registry: Registry | None = None
) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of ``METHOD [ARGS]`` and the list of method names it knows."""
    reg = registry or _registry()
    parser = argparse.ArgumentParser(prog=prog, add_help=True)
    sub = parser.add_subparsers(dest="called_rpc_name", metavar="METHOD")
    names: list[str] = []
    for m in sorted(reg.methods.values(), key=lambda m: m.name):
        for name in (m.name, *m.aliases):
            add_method_parser(sub, name, m)
            names.append(name)
    return parser, names


class CliError(Exception):
    pass


def _fix_underscores(argv: list[str]) -> list[str]:
    # rpc.py accepts --tgt_name for --tgt-name (older SPDK spelled options both ways)
    return [a.replace("_", "-") if a.startswith("--") and "=" not in a else a for a in argv]


def parse_method_args(argv: list[str]) -> tuple[str, Any, str]:
    """``METHOD [ARGS]`` -> (method, params, output mode); params None = none sent."""
    if not argv:
        raise CliError("no METHOD given (blockfabric rpc -h lists them)")
    reg = _registry()
    method = argv[0]
    rest = _fix_underscores(argv[1:])
    if method not in reg.methods and method not in reg.alias_of:
        gp = argparse.ArgumentParser(prog=f"blockfabric rpc {method}")
        gp.add_argument("--params", dest="params_json", metavar="JSON")
        ga = gp.parse_args(rest)
        params = _json_params(ga.params_json) if ga.params_json is not None else None
        return method, params, OUT_DICT
    # only this method's sub-command is built (the full parser is for -h)
    parser = argparse.ArgumentParser(prog="blockfabric rpc")
    sub = parser.add_subparsers(dest="called_rpc_name", metavar="METHOD")
    add_method_parser(sub, method, reg.lookup(method))
    a = parser.parse_args([method, *rest])
    m: Method = a.rpc_decl
    dests = {p.dest for p in m.cli_params()}
    values = {k: v for k, v in vars(a).items() if k in dests and v is not None}
    params = cli_values_to_params(m, values)
    if a.params_json is not None:
        extra = _json_params(a.params_json)
        params = (
            {**params, **extra} if isinstance(extra, dict) and isinstance(params, dict) else extra
        )
    if isinstance(params, dict) and not params:
        params = None  # rpc.py leaves "params" out when empty
    out = m.cli_out
    if out == OUT_CONFIG:
        out = f"{OUT_CONFIG}:{values.get('indent', 2)}"
    return a.rpc_method, params, out


def _json_params(text: str) -> Any:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(
            f"--params: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from e
    if not isinstance(v, dict | list):
        raise CliError("--params must be a JSON object or array")
    return v


def format_result(result: Any, out: str) -> str | None:
    if out == OUT_NONE:
        return None
    if out.startswith(OUT_CONFIG + ":"):
        indent = int(out.split(":", 1)[1])
        return json.dumps(result, indent=indent if indent >= 0 else None)
    if out == OUT_ARRAY and isinstance(result, list):
        return " ".join(shlex.quote(str(v)) for v in result)
    text = json.dumps(result, indent=2)
    if out == OUT_JSON:
        text = text.strip('"')
    return text


def format_error(method: str, params: Any, req_id: int, err: RpcClientError) -> str:
    # rpc.py's layout: the request (params plus method and req_id), then the error object
    req = (
        dict(params)
        if isinstance(params, dict)
        else ({"params": params} if params is not None else {})
    )
    req["method"] = method
    req["req_id"] = req_id
    return "\n".join(
        [
            "request:",
            json.dumps(req, indent=2),
            "Got JSON-RPC error response",
            "response:",
            json.dumps(err.to_dict(), indent=2),
        ]
    )


def _add_global_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--name",
        dest="instance",
        default=None,
        help=f"instance name (default: {DEFAULT_INSTANCE}); RPC address {default_rpc_addr()}",
    )
    g.add_argument(
        "-s",
        dest="server_addr",
        default=None,
        help="RPC address: ipc://PATH, tcp://HOST:PORT, or a unix socket path speaking SPDK's protocol",
    )
    p.add_argument(
        "-t",
        dest="timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the answer (default 60, like rpc.py)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the request and exit")
    p.add_argument("rpc_args", nargs=argparse.REMAINDER, metavar="METHOD [ARGS]")


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``blockfabric rpc`` command line; returns the exit code."""
    argv = list(args.rpc_args)
    if not argv or argv[0] in ("-h", "--help"):
        parser, _ = build_method_parser()
        parser.print_help()
        return 0 if argv else 1
    try:
        method, params, out = parse_method_args(argv)
        addr = args.server_addr or default_rpc_addr(args.instance or DEFAULT_INSTANCE)
    except (CliError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        print("Request:\n" + json.dumps({"method": method, "params": params}, indent=2))
        return 0
    try:
        with RpcClient(addr, timeout=args.timeout) as c:
            try:
                result = c.call(method, params)
            except RpcClientError as e:
                print(format_error(method, params, 1, e), file=sys.stderr)
                return 1
    except (TimeoutError, RpcConnectionError, RpcClientError, OSError, ValueError) as e:
        print(str(e), file=sys.stderr)
        return 1
    text = format_result(result, out)
    if text is not None:
        print(text)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``rpc`` to the top-level CLI; it sets ``func=run`` (run(args) -> exit code)."""
    p = subparsers.add_parser(
        "rpc",
        help="send a JSON-RPC method to a running target (SPDK rpc.py syntax)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(p)
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="blockfabric rpc",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
