"""RPC method registry: one declaration per method with its typed parameters.

Handlers are declared with `@rpc_method`, each parameter with a `Param`. The
registry validates params before the handler runs, so every handler can rely on
types and ranges, and every bad request gets -32602 naming the parameter:
unknown parameter, missing required parameter, wrong type, out of range.

    @rpc_method("bdev_malloc_create",
                Param("num_blocks", int, min=1),
                Param("block_size", int, default=512),
                Param("name", str, required=False))
    def bdev_malloc_create(ctx, num_blocks, block_size, name=None): ...

Aliases (SPDK's deprecated names such as construct_malloc_bdev) point to the
same method. A method may also be marked `startup_only` / `runtime` as SPDK
does; we accept all methods at run time.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import METHOD_NOT_FOUND, RpcError, invalid_params

_MISSING = object()


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

    def __post_init__(self) -> None:
        if self.default is not None:
            self.required = False

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


@dataclass
class Method:
    name: str
    handler: Callable[..., Any]
    params: tuple[Param, ...]
    aliases: tuple[str, ...] = ()
    # extra keys tolerated for compatibility (ignored with no error)
    ignored: tuple[str, ...] = ()
    help: str = ""
    by_name: dict[str, Param] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {p.name: p for p in self.params}

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
            if k not in self.by_name and k not in self.ignored:
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
    ignored: tuple[str, ...] = (),
    registry: Registry = REGISTRY,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        registry.add(Method(name, fn, params, aliases, ignored, (fn.__doc__ or "").strip()))
        return fn

    return deco
