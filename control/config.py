"""SPDK JSON configuration files: validate everything, then apply.

Format (what SPDK's save_config writes and ``--json`` reads)::

    {"subsystems": [
      {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {...}}]},
      {"subsystem": "nvmf", "config": null}
    ]}

The whole file is checked before the first entry runs — syntax, structure,
every method known, every params object accepted by the method's declaration —
so a typo on line 200 does not leave a half-built target. Errors name the entry:
``subsystems[0] (bdev) config[2] (bdev_malloc_create): unknown parameter 'foo'``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .context import RpcContext
from .errors import RpcError
from .registry import Registry

# save_config order: what a namespace / LUN refers to must exist before it
SUBSYSTEM_ORDER = ("keyring", "bdev", "nvmf", "iscsi")

Entry = tuple[str, str, dict[str, Any]]  # (label, method, params)


class ConfigError(ValueError):
    pass


def parse_config_text(text: str, source: str = "config") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{source}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from e
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{source}: invalid JSON: {e}") from e


def validate_config(doc: Any, registry: Registry) -> list[Entry]:
    """Check a parsed config; returns the entries to run, in file order."""
    if not isinstance(doc, dict):
        raise ConfigError("top level must be an object with a 'subsystems' array")
    subsystems = doc.get("subsystems")
    if not isinstance(subsystems, list):
        raise ConfigError("'subsystems' must be an array")
    entries: list[Entry] = []
    for si, sub in enumerate(subsystems):
        where = f"subsystems[{si}]"
        if not isinstance(sub, dict):
            raise ConfigError(f"{where}: must be an object")
        name = sub.get("subsystem")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: 'subsystem' must be a string")
        where = f"{where} ({name})"
        config = sub.get("config")
        if config is None:
            continue
        if not isinstance(config, list):
            raise ConfigError(f"{where}: 'config' must be an array or null")
        for ci, ent in enumerate(config):
            label = f"{where} config[{ci}]"
            if not isinstance(ent, dict):
                raise ConfigError(f"{label}: must be an object with 'method' and 'params'")
            method = ent.get("method")
            if not isinstance(method, str):
                raise ConfigError(f"{label}: 'method' must be a string")
            label = f"{label} ({method})"
            params = ent.get("params", {})
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise ConfigError(f"{label}: 'params' must be an object")
            try:
                m = registry.lookup(method)
            except RpcError:
                raise ConfigError(f"{label}: unknown method") from None
            try:
                m.bind(params)
            except RpcError as e:
                msg = e.message
                suffix = f" for {m.name}"
                if msg.endswith(suffix):
                    msg = msg[: -len(suffix)]
                raise ConfigError(f"{label}: {msg}") from None
            entries.append((label, method, params))
    return entries


def load_config_file(path: str, registry: Registry) -> list[Entry]:
    """Read and validate a config file (raises ConfigError, OSError)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    doc = parse_config_text(text, path)
    try:
        return validate_config(doc, registry)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def apply_config(ctx: RpcContext, entries: list[Entry], registry: Registry) -> None:
    """Run validated entries in order; the first failure stops with its label."""
    for label, method, params in entries:
        try:
            registry.call(ctx, method, params)
        except RpcError as e:
            raise RpcError(e.code, f"{label}: {e.message}", e.data) from None
        except Exception as e:
            raise RpcError(-32603, f"{label}: {e}") from None


Section = Callable[[Any], list[dict[str, Any]] | None]


def default_sections() -> dict[str, Section]:
    """Per-subsystem save_config producers from an RpcContext (absent parts give [])."""

    def bdev(ctx: RpcContext) -> list[dict[str, Any]] | None:
        fn = getattr(ctx, "bdev_save_config", None)
        return fn() if fn is not None else []

    def proto(attr: str) -> Section:
        def fn(ctx: RpcContext) -> list[dict[str, Any]] | None:
            state = getattr(ctx, attr, None)
            save = getattr(state, "save_config", None) if state is not None else None
            return save() if save is not None else []

        return fn

    def keyring(ctx: RpcContext) -> list[dict[str, Any]] | None:
        # names and paths only: a restart reads the key files again
        kr = getattr(ctx, "keyring", None)
        save = getattr(kr, "save_config", None)
        return save() if save is not None else []

    return {
        "keyring": keyring,
        "bdev": bdev,
        "nvmf": proto("nvmf"),
        "iscsi": proto("iscsi"),
    }


def build_config(ctx: RpcContext, sections: Mapping[str, Section] | None = None) -> dict[str, Any]:
    """save_config's answer: every subsystem (bdev, nvmf, iscsi first), even if empty."""
    if sections is None:
        sections = default_sections()
    names = [n for n in SUBSYSTEM_ORDER if n in sections]
    names += [n for n in sections if n not in SUBSYSTEM_ORDER]
    out = []
    for name in names:
        entries = sections[name](ctx) or []
        out.append(
            {
                "subsystem": name,
                "config": [{"method": e["method"], "params": e.get("params", {})} for e in entries],
            }
        )
    return {"subsystems": out}
