"""DH-HMAC-CHAP configuration on the supervisor: which keyring keys a host
uses on a subsystem, the digests and DH groups the target offers, and what
reactors get of it.

A subsystem dict (state.py) holds ``dhchap``: host NQN -> {"dhchap_key":
NAME, "dhchap_ctrlr_key": NAME or None} (key *names*: what save_config and
nvmf_get_subsystems show) and ``dhchap_secrets``: host NQN -> [interchange
string, interchange string or None], the material resolved from the keyring
when the keys were set; that one only travels in the configuration snapshot
to the reactors (which have no keyring) and is never written out. Keys in use
are held in the keyring (``acquire``), so keyring_file_remove_key refuses to
remove them.
"""

from __future__ import annotations

from typing import Any

from ...control.errors import invalid_params
from ...control.keyring import keyring_of
from .auth_crypto import DHGROUP_IDS, HASH_IDS

ALL_DIGESTS = list(HASH_IDS)  # sha256, sha384, sha512
ALL_DHGROUPS = list(DHGROUP_IDS)  # null, ffdhe2048 .. ffdhe8192


def _holder(nqn: str, host: str) -> str:
    return f"nvmf:{nqn}:{host}"


def check_names(values: list[str], allowed: list[str], what: str) -> list[str]:
    out: list[str] = []
    for v in values:
        if v not in allowed:
            raise invalid_params(f"parameter '{what}': unknown {v!r} (one of {', '.join(allowed)})")
        if v not in out:
            out.append(v)
    if not out:
        raise invalid_params(f"parameter '{what}' must not be empty")
    return out


def set_host_keys(
    ctx: Any, ss: dict[str, Any], host: str, key: str | None, ctrlr_key: str | None
) -> None:
    """Set (or with ``key`` None clear) the DH-HMAC-CHAP keys of ``host`` on
    subsystem ``ss``; raises an RpcError (nothing changed) for a missing key,
    a key of the wrong kind, or a controller key without a host key."""
    if ctrlr_key is not None and key is None:
        raise invalid_params("a DH-HMAC-CHAP controller key needs a host key (dhchap_key)")
    kr = keyring_of(ctx)
    material: list[str | None] = []
    for name in (key, ctrlr_key):
        material.append(None if name is None else kr.dhchap_secret(name).interchange())
    holder = _holder(ss["nqn"], host)
    clear_host(ctx, ss, host)
    if key is None:
        return
    for name in (key, ctrlr_key):
        if name is not None:
            kr.acquire(name, holder)
    ss.setdefault("dhchap", {})[host] = {"dhchap_key": key, "dhchap_ctrlr_key": ctrlr_key}
    ss.setdefault("dhchap_secrets", {})[host] = material


def clear_host(ctx: Any, ss: dict[str, Any], host: str) -> None:
    old = ss.get("dhchap", {}).pop(host, None)
    ss.get("dhchap_secrets", {}).pop(host, None)
    if old:
        kr = keyring_of(ctx)
        for name in (old.get("dhchap_key"), old.get("dhchap_ctrlr_key")):
            if name is not None:
                kr.release(name, _holder(ss["nqn"], host))


def clear_subsystem(ctx: Any, ss: dict[str, Any]) -> None:
    for host in list(ss.get("dhchap", {})):
        clear_host(ctx, ss, host)


def host_params(ss: dict[str, Any], host: str) -> dict[str, Any]:
    """The key names of ``host`` (for save_config and nvmf_get_subsystems)."""
    d = ss.get("dhchap", {}).get(host)
    if not d:
        return {}
    out = {"dhchap_key": d["dhchap_key"]}
    if d.get("dhchap_ctrlr_key"):
        out["dhchap_ctrlr_key"] = d["dhchap_ctrlr_key"]
    return out


def snapshot_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The target-wide lists every subsystem snapshot carries."""
    return {
        "dhchap_digests": list(config.get("dhchap_digests") or ALL_DIGESTS),
        "dhchap_dhgroups": list(config.get("dhchap_dhgroups") or ALL_DHGROUPS),
    }
