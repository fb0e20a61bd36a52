"""RPC method registry: the one declaration of every method and its parameters.

Handlers are declared with `@rpc_method`, each parameter with a `Param`. The
registry validates params before the handler runs, so every handler can rely on
types and ranges, and every bad request gets -32602 naming the parameter:
unknown parameter, missing required parameter, wrong type, out of range.

The same declaration is the command line (``blockfabric rpc METHOD ...``, built
by control/rpc_cli.py with SPDK rpc.py's forms), the schema
(``rpc_get_methods {"include_schema": true}``) and README's RPC table
(tools/rpc_table.py). Nothing else lists a method's parameters.

    @rpc_method(
        "bdev_malloc_create",
        Param("num_blocks", int, min=1, cli=False),
        Param("block_size", int, pos=1, help="Block size for this bdev"),
        Param("name", str, required=False, short="-b", help="Name of the bdev"),
        aliases=("construct_malloc_bdev",),
        cli_extra=(Param("total_size", float, pos=0, help="Size of malloc bdev in MB"),),
        cli_build=malloc_cli_params,   # {"total_size", "block_size", ...} -> params
        cli_out=OUT_JSON,
    )
    def bdev_malloc_create(ctx, num_blocks, block_size, name=None): ...

A parameter is a ``--long-option`` (``--`` + its name with dashes, or
``long=``) with SPDK's ``short=`` option, or a positional (``pos=N``: its
place among the positionals; ``required=False`` makes it optional). A bool is
a switch (``negate=True``: a switch that sends False, rpc.py's store_false);
``parse=`` turns the command-line text into the value sent (whitespace lists,
"1:2" maps); an object parameter lists its members in ``fields=`` and the CLI
builds the object from their options. ``cli_extra`` holds arguments of the
rpc.py form that are not params, consumed by ``cli_build``. ``spdk=False``
marks a blockfabric extension (SPDK's rpc.py does not have it; the rpc.py-form
test knows). A `Param` in ``ignored`` is accepted with no effect, with its CLI
form. Aliases (SPDK's deprecated names such as construct_malloc_bdev) point to
the same method and have the same command-line form.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import METHOD_NOT_FOUND, RpcError, invalid_params

_MISSING = object()


# how ``blockfabric rpc`` prints a method's result (rpc.py's print_* per method)
OUT_NONE = "none"  # rpc.py ignores the result
OUT_DICT = "dict"  # print_dict: json indent=2
OUT_JSON = "json"  # print_json: json indent=2, a plain string without quotes
OUT_ARRAY = "array"  # print_array: shell-quoted words on one line
OUT_CONFIG = "config"  # save_config: json with the -i/--indent of the command line
OUT_MODES = (OUT_NONE, OUT_DICT, OUT_JSON, OUT_ARRAY, OUT_CONFIG)

# what a method's cli_build gets (the parsed arguments, unset ones left out)
# and returns (the params to send; a list for by-position params)
CliBuild = Callable[[dict[str, Any]], Any]


@dataclass
class Param:
    name: str
    type: type | tuple[type, ...] = str
    required: bool = True
    default: Any = None
    min: int | None = None
    max: int | None = None
    choices: tuple[Any, ...] | None = None
    # element type for list params
    item: builtins.type | None = None
    help: str = ""
    # --- the command-line form (blockfabric rpc; SPDK rpc.py's) -------------
    short: str = ""  # rpc.py's short option, e.g. "-b"
    long: str | None = ""  # "": "--" + name with dashes; a string: that one; None: none
    pos: int | None = None  # place among the positional arguments; None: an option
    metavar: str = ""  # rpc.py's name of the argument when not the param's (dest)
    parse: Callable[[str], Any] | None = None  # command-line text -> the value sent
    negate: bool = False  # bool switch that sends False when given (store_false)
    toggle: bool = False  # bool as --NAME / --no-NAME (argparse BooleanOptionalAction)
    fields: tuple[Param, ...] = ()  # an object param's members, each on the CLI
    cli: bool = True  # False: not on the command line (--params, or cli_build)
    spdk: bool = True  # False: a blockfabric extension, not in SPDK's rpc.py
    cli_default: Any = None  # the argparse default of a CLI-only argument

    def __post_init__(self) -> None:
        if self.default is not None:
            self.required = False
        if self.short and not (len(self.short) >= 2 and self.short[0] == "-" != self.short[1]):
            raise ValueError(f"{self.name}: short option must look like -x, got {self.short!r}")
        if self.pos is not None and (self.short or self.long not in ("", None)):
            raise ValueError(f"{self.name}: a positional has no option strings")

    @property
    def dest(self) -> str:
        """The argparse dest: rpc.py's argument name."""
        return self.metavar or self.name

    def option_strings(self) -> list[str]:
        """``["-b", "--name"]``; [] for a positional."""
        if self.pos is not None:
            return []
        out = [self.short] if self.short else []
        if self.long == "":
            out.append("--" + self.dest.replace("_", "-"))
        elif self.long is not None:
            out.append(self.long)
        return out

    def schema(self) -> dict[str, Any]:
        """This parameter as plain data (rpc_get_methods include_schema)."""
        t = self.type
        d: dict[str, Any] = {
            "name": self.name,
            "type": type_name(t),
            "required": self.required,
        }
        if self.default is not None:
            d["default"] = self.default
        if self.item is not None:
            d["items"] = type_name(self.item)
        for k in ("min", "max"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.help:
            d["help"] = self.help
        if self.fields:
            d["fields"] = [f.schema() for f in self.fields]
        if self.cli:
            cli: dict[str, Any] = {}
            if self.pos is not None:
                cli["position"] = self.pos
                cli["name"] = self.dest
            else:
                cli["options"] = self.option_strings()
            if self.negate:
                cli["negate"] = True
            if self.toggle:
                cli["toggle"] = True
            if not self.spdk:
                cli["extension"] = True
            d["cli"] = cli
        return d

    def check(self, value: Any) -> Any:
        t = self.type
        if value is None and not self.required:
            return self.default
        # bool is an int in Python: refuse True for an int param and 1 for a bool
        if t is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise invalid_params(f"parameter '{self.name}' must be an integer, got {_tname(value)}")
        if t is bool and not isinstance(value, bool):
            raise invalid_params(f"parameter '{self.name}' must be a boolean, got {_tname(value)}")
        if t is float and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise invalid_params(f"parameter '{self.name}' must be a number, got {_tname(value)}")
        if t not in (int, bool, float) and not isinstance(value, t):
            want = t.__name__ if isinstance(t, type) else "/".join(x.__name__ for x in t)
            raise invalid_params(f"parameter '{self.name}' must be {want}, got {_tname(value)}")
        if isinstance(value, list) and self.item is not None:
            for i, v in enumerate(value):
                if not isinstance(v, self.item) or (self.item is int and isinstance(v, bool)):
                    raise invalid_params(
                        f"parameter '{self.name}[{i}]' must be {self.item.__name__}, got {_tname(v)}"
                    )
        if self.min is not None and isinstance(value, int | float) and value < self.min:
            raise invalid_params(f"parameter '{self.name}' must be >= {self.min}, got {value}")
        if self.max is not None and isinstance(value, int | float) and value > self.max:
            raise invalid_params(f"parameter '{self.name}' must be <= {self.max}, got {value}")
        if isinstance(value, str) and self.max is not None and len(value) > self.max:
            raise invalid_params(f"parameter '{self.name}' is longer than {self.max} characters")
        if self.choices is not None and value not in self.choices:
            raise invalid_params(
                f"parameter '{self.name}' must be one of {', '.join(map(str, self.choices))}, got {value!r}"
            )
        return value


def _tname(v: Any) -> str:
    return "null" if v is None else type(v).__name__


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_JSON_TYPES.update({list: "array", dict: "object"})


def type_name(t: type | tuple[type, ...]) -> str:
    """The JSON name of a param type ("integer", "string|array", ...)."""
    ts = t if isinstance(t, tuple) else (t,)
    return "|".join(_JSON_TYPES.get(x, x.__name__) for x in ts)


@dataclass
class Method:
    name: str
    handler: Callable[..., Any]
    params: tuple[Param, ...]
    aliases: tuple[str, ...] = ()
    # extra keys tolerated for compatibility (ignored with no error); a Param
    # here is ignored too, and has its command-line form
    ignored: tuple[str | Param, ...] = ()
    help: str = ""
    # --- the command-line form ---------------------------------------------
    cli_out: str = OUT_NONE
    cli_extra: tuple[Param, ...] = ()
    cli_build: CliBuild | None = None
    cli_help: str = ""  # one line; default: the first line of the handler's docstring
    by_name: dict[str, Param] = field(init=False)
    ignored_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {p.name: p for p in self.params}
        self.ignored_names = frozenset(i if isinstance(i, str) else i.name for i in self.ignored)
        if self.cli_out not in OUT_MODES:
            raise ValueError(f"{self.name}: cli_out must be one of {OUT_MODES}")
        seen: dict[str, str] = {}
        positions: set[int] = set()
        for p in self.cli_params():
            for o in p.option_strings():
                if o in seen:
                    raise ValueError(f"{self.name}: option {o} of {p.name} and {seen[o]}")
                seen[o] = p.name
            if p.pos is not None:
                if p.pos in positions:
                    raise ValueError(f"{self.name}: two positionals at {p.pos}")
                positions.add(p.pos)
        if positions != set(range(len(positions))):
            raise ValueError(f"{self.name}: positions must be 0..{len(positions) - 1}")

    def cli_params(self) -> list[Param]:
        """Every argument of the command line: params (object members
        flattened), accepted-and-ignored ones, then cli_extra."""
        out: list[Param] = []
        for p in (*self.params, *(i for i in self.ignored if isinstance(i, Param))):
            if not p.cli:
                continue
            out.extend(f for f in p.fields if f.cli) if p.fields else out.append(p)
        return out + list(self.cli_extra)

    @property
    def summary(self) -> str:
        return self.cli_help or (self.help.splitlines()[0] if self.help else "")

    def schema(self) -> dict[str, Any]:
        """The method as plain data: name, aliases, help, params (SPDK-like)."""
        d: dict[str, Any] = {
            "name": self.name,
            "aliases": list(self.aliases),
            "help": self.summary,
            "params": [p.schema() for p in self.params],
        }
        if self.ignored:
            d["ignored"] = sorted(self.ignored_names)
        if self.cli_extra:
            d["cli_extra"] = [p.schema() for p in self.cli_extra]
        d["cli_output"] = self.cli_out
        return d

    def bind(self, params: Any) -> dict[str, Any]:
        if params is None:
            params = {}
        if isinstance(params, list):
            # JSON-RPC by-position params: in declaration order
            if len(params) > len(self.params):
                raise invalid_params(
                    f"{self.name} takes at most {len(self.params)} positional params"
                )
            params = {p.name: v for p, v in zip(self.params, params, strict=False)}
        if not isinstance(params, dict):
            raise invalid_params("params must be an object or an array")
        out: dict[str, Any] = {}
        for k in params:
            if not isinstance(k, str):
                raise invalid_params("parameter names must be strings")
            if k not in self.by_name and k not in self.ignored_names:
                raise invalid_params(f"unknown parameter '{k}' for {self.name}")
        for p in self.params:
            v = params.get(p.name, _MISSING)
            if v is _MISSING:
                if p.required:
                    raise invalid_params(f"missing required parameter '{p.name}'")
                out[p.name] = p.default
            else:
                out[p.name] = p.check(v)
        return out


class Registry:
    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}
        self.alias_of: dict[str, str] = {}

    def add(self, m: Method) -> None:
        for n in (m.name, *m.aliases):
            if n in self.methods or n in self.alias_of:
                raise ValueError(f"duplicate RPC method {n}")
        self.methods[m.name] = m
        for a in m.aliases:
            self.alias_of[a] = m.name

    def lookup(self, name: str) -> Method:
        m = self.methods.get(name) or self.methods.get(self.alias_of.get(name, ""))
        if m is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {name}")
        return m

    def names(self, include_aliases: bool = True) -> list[str]:
        out = list(self.methods)
        if include_aliases:
            out += list(self.alias_of)
        return sorted(out)

    def schema(self) -> list[dict[str, Any]]:
        """Every method's declaration as plain data, in name order."""
        return [self.methods[n].schema() for n in sorted(self.methods)]

    def call(self, ctx: Any, name: str, params: Any) -> Any:
        m = self.lookup(name)
        kwargs = m.bind(params)
        return m.handler(ctx, **kwargs)


# The one registry the daemon serves. Modules register into it at import time;
# control.methods imports every module that declares methods.
REGISTRY = Registry()


def rpc_method(
    name: str,
    *params: Param,
    aliases: tuple[str, ...] = (),
    ignored: tuple[str | Param, ...] = (),
    registry: Registry = REGISTRY,
    cli_out: str = OUT_NONE,
    cli_extra: tuple[Param, ...] = (),
    cli_build: CliBuild | None = None,
    cli_help: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an RPC method (see the module docstring for the fields)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        registry.add(
            Method(
                name,
                fn,
                params,
                aliases,
                ignored,
                (fn.__doc__ or "").strip(),
                cli_out=cli_out,
                cli_extra=cli_extra,
                cli_build=cli_build,
                cli_help=cli_help,
            )
        )
        return fn

    return deco
