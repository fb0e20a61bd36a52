"""SPDK's legacy INI configuration file for the iSCSI target (the one the old
iscsi_tgt guide passes with ``-c``), turned into the RPC calls that build the
same target: ``parse_ini_config(text, path)`` -> [(method, params), ...].

Sections: [Global], [iSCSI], [PortalGroupN], [InitiatorGroupN], [AuthGroupN],
[TargetNodeN], [Malloc]. Anything not understood raises ConfigFileError
naming FILE:LINE."""

from __future__ import annotations

import re
import shlex
from typing import Any

from ...control.config import ConfigError

Call = tuple[str, dict[str, Any]]


class ConfigFileError(ConfigError):
    pass


_YES = {"yes": True, "no": False, "true": True, "false": False, "1": True, "0": False}

# [iSCSI] key -> (option name, kind)
_ISCSI_KEYS: dict[str, tuple[str, str]] = {
    "nodebase": ("node_base", "str"),
    "authfile": ("auth_file", "str"),
    "timeout": ("nop_timeout", "int"),
    "nopininterval": ("nop_in_interval", "int"),
    "maxsessions": ("max_sessions", "int"),
    "maxconnectionspersession": ("max_connections_per_session", "int"),
    "maxqueuedepth": ("max_queue_depth", "int"),
    "defaulttime2wait": ("default_time2wait", "int"),
    "defaulttime2retain": ("default_time2retain", "int"),
    "firstburstlength": ("first_burst_length", "int"),
    "immediatedata": ("immediate_data", "bool"),
    "errorrecoverylevel": ("error_recovery_level", "int"),
    "allowduplicateisid": ("allow_duplicated_isid", "bool"),
    "maxr2tperconnection": ("max_r2t_per_connection", "int"),
    "maxlargedatainperconnection": ("max_large_datain_per_connection", "int"),
}
_IGNORED_GLOBAL = {
    "reactormask",
    "logfacility",
    "comment",
    "instanceid",
    "tpointgroupmask",
    "nummemorychannels",
}


class _Sec:
    def __init__(self, name: str, line: int) -> None:
        self.name = name
        self.line = line
        self.items: list[tuple[str, list[str], int]] = []


def _split(path: str, text: str) -> list[_Sec]:
    secs: list[_Sec] = []
    cur: _Sec | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            m = re.fullmatch(r"\[([A-Za-z0-9_]+)\]", line)
            if not m:
                raise ConfigFileError(f"{path}:{n}: bad section header {line!r}")
            cur = _Sec(m.group(1), n)
            if any(s.name.lower() == cur.name.lower() for s in secs):
                raise ConfigFileError(f"{path}:{n}: section [{cur.name}] defined twice")
            secs.append(cur)
            continue
        if cur is None:
            raise ConfigFileError(f"{path}:{n}: key outside any section")
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise ConfigFileError(f"{path}:{n}: {e}") from None
        if not words:
            continue
        cur.items.append((words[0], words[1:], n))
    return secs


def _one(path: str, key: str, vals: list[str], n: int) -> str:
    if len(vals) != 1:
        raise ConfigFileError(f"{path}:{n}: {key} takes exactly one value")
    return vals[0]


def _int(path: str, key: str, vals: list[str], n: int) -> int:
    v = _one(path, key, vals, n)
    try:
        return int(v, 0)
    except ValueError:
        raise ConfigFileError(f"{path}:{n}: {key} must be an integer, got {v!r}") from None


def _bool(path: str, key: str, vals: list[str], n: int) -> bool:
    v = _one(path, key, vals, n).lower()
    if v not in _YES:
        raise ConfigFileError(f"{path}:{n}: {key} must be Yes or No, got {vals[0]!r}")
    return _YES[v]


def _auth(path: str, vals: list[str], n: int) -> dict[str, bool]:
    words = {v.lower() for v in vals}
    if not words or not words <= {"none", "auto", "chap", "mutual"}:
        raise ConfigFileError(f"{path}:{n}: AuthMethod must be None, Auto, CHAP or 'CHAP Mutual'")
    if words == {"none"}:
        return {"disable_chap": True, "require_chap": False, "mutual_chap": False}
    if words == {"auto"}:
        return {"disable_chap": False, "require_chap": False, "mutual_chap": False}
    if "chap" in words:
        return {"disable_chap": False, "require_chap": True, "mutual_chap": "mutual" in words}
    raise ConfigFileError(f"{path}:{n}: invalid AuthMethod {' '.join(vals)!r}")


def _group_ref(path: str, prefix: str, v: str, n: int) -> int:
    m = re.fullmatch(prefix + r"(\d+)", v, re.IGNORECASE)
    if not m:
        raise ConfigFileError(f"{path}:{n}: expected {prefix}<N>, got {v!r}")
    return int(m.group(1))


def _portal(path: str, v: str, n: int) -> dict[str, str]:
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(\d+))?", v)
    if not m:
        raise ConfigFileError(f"{path}:{n}: bad portal {v!r} (want HOST[:PORT])")
    port = m.group(2) or "3260"
    if not 0 < int(port) < 65536:
        raise ConfigFileError(f"{path}:{n}: port out of range in {v!r}")
    return {"host": m.group(1), "port": port}


def _section_tag(path: str, s: _Sec, prefix_len: int) -> int:
    tag = int(s.name[prefix_len:])
    if tag < 1:
        raise ConfigFileError(f"{path}:{s.line}: [{s.name}]: group numbers start at 1")
    return tag


# [Malloc] NumberOfLuns: each LUN is one bdev_malloc_create call
MAX_MALLOC_LUNS = 1024


def parse_ini_config(text: str, path: str = "config") -> list[Call]:
    secs = _split(path, text)
    bdevs: list[Call] = []
    opts: dict[str, Any] = {}
    auths: list[Call] = []
    pgs: list[Call] = []
    igs: list[Call] = []
    tns: list[Call] = []
    for s in secs:
        lname = s.name.lower()
        if lname == "global":
            for k, _v, n in s.items:
                if k.lower() not in _IGNORED_GLOBAL:
                    raise ConfigFileError(f"{path}:{n}: unknown key {k} in [Global]")
        elif lname == "iscsi":
            for k, v, n in s.items:
                lk = k.lower()
                if lk in _ISCSI_KEYS:
                    name, kind = _ISCSI_KEYS[lk]
                    if kind == "int":
                        opts[name] = _int(path, k, v, n)
                    elif kind == "bool":
                        opts[name] = _bool(path, k, v, n)
                    else:
                        opts[name] = _one(path, k, v, n)
                elif lk == "discoveryauthmethod":
                    opts.update(_auth(path, v, n))
                elif lk == "discoveryauthgroup":
                    opts["chap_group"] = _group_ref(path, "AuthGroup", _one(path, k, v, n), n)
                else:
                    raise ConfigFileError(f"{path}:{n}: unknown key {k} in [iSCSI]")
        elif lname == "malloc":
            count, size_mb, bs = 0, 0, 512
            for k, v, n in s.items:
                lk = k.lower()
                if lk == "numberofluns":
                    count = _int(path, k, v, n)
                elif lk == "lunsizeinmb":
                    size_mb = _int(path, k, v, n)
                elif lk == "blocksize":
                    bs = _int(path, k, v, n)
                else:
                    raise ConfigFileError(f"{path}:{n}: unknown key {k} in [Malloc]")
            if count > MAX_MALLOC_LUNS:
                raise ConfigFileError(
                    f"{path}:{s.line}: [Malloc] NumberOfLuns {count} > {MAX_MALLOC_LUNS}"
                )
            if count < 0 or (count and size_mb <= 0) or bs not in (512, 1024, 2048, 4096):
                raise ConfigFileError(
                    f"{path}:{s.line}: [Malloc] needs NumberOfLuns, LunSizeInMB > 0, BlockSize 512..4096"
                )
            for i in range(count):
                bdevs.append(
                    (
                        "bdev_malloc_create",
                        {
                            "name": f"Malloc{i}",
                            "num_blocks": size_mb * 1024 * 1024 // bs,
                            "block_size": bs,
                        },
                    )
                )
        elif re.fullmatch(r"portalgroup\d+", lname):
            tag = _section_tag(path, s, 11)
            portals = []
            for k, v, n in s.items:
                if k.lower() != "portal":
                    raise ConfigFileError(f"{path}:{n}: unknown key {k} in [{s.name}]")
                if len(v) != 2:
                    raise ConfigFileError(f"{path}:{n}: Portal wants NAME HOST:PORT")
                portals.append(_portal(path, v[1], n))
            if not portals:
                raise ConfigFileError(f"{path}:{s.line}: [{s.name}] has no Portal")
            pgs.append(("iscsi_create_portal_group", {"tag": tag, "portals": portals}))
        elif re.fullmatch(r"initiatorgroup\d+", lname):
            tag = _section_tag(path, s, 14)
            inames: list[str] = []
            masks: list[str] = []
            for k, v, n in s.items:
                lk = k.lower()
                if lk == "initiatorname":
                    inames += ["ANY" if x.upper() == "ALL" else x for x in v]
                elif lk == "netmask":
                    masks += ["ANY" if x.upper() == "ALL" else x for x in v]
                else:
                    raise ConfigFileError(f"{path}:{n}: unknown key {k} in [{s.name}]")
            if not inames or not masks:
                raise ConfigFileError(
                    f"{path}:{s.line}: [{s.name}] needs InitiatorName and Netmask"
                )
            igs.append(
                (
                    "iscsi_create_initiator_group",
                    {"tag": tag, "initiators": inames, "netmasks": masks},
                )
            )
        elif re.fullmatch(r"authgroup\d+", lname):
            tag = _section_tag(path, s, 9)
            secrets = []
            for k, v, n in s.items:
                if k.lower() != "auth" or len(v) not in (2, 4):
                    raise ConfigFileError(f"{path}:{n}: want Auth USER SECRET [MUSER MSECRET]")
                sec = {"user": v[0], "secret": v[1]}
                if len(v) == 4:
                    sec.update(muser=v[2], msecret=v[3])
                secrets.append(sec)
            auths.append(("iscsi_create_auth_group", {"tag": tag, "secrets": secrets}))
        elif re.fullmatch(r"targetnode\d+", lname):
            tns.append(_target_node(path, s))
        else:
            raise ConfigFileError(f"{path}:{s.line}: unknown section [{s.name}]")
    out: list[Call] = list(bdevs)
    if opts:
        out.append(("iscsi_set_options", opts))
    return out + auths + pgs + igs + tns


def _target_node(path: str, s: _Sec) -> Call:
    p: dict[str, Any] = {"luns": [], "pg_ig_maps": [], "queue_depth": 64, "alias_name": ""}
    for k, v, n in s.items:
        lk = k.lower()
        if lk == "targetname":
            p["name"] = _one(path, k, v, n)
        elif lk == "targetalias":
            p["alias_name"] = " ".join(v)
        elif lk == "mapping":
            if len(v) != 2:
                raise ConfigFileError(f"{path}:{n}: Mapping wants PortalGroupN InitiatorGroupM")
            p["pg_ig_maps"].append(
                {
                    "pg_tag": _group_ref(path, "PortalGroup", v[0], n),
                    "ig_tag": _group_ref(path, "InitiatorGroup", v[1], n),
                }
            )
        elif lk == "authmethod":
            p.update(_auth(path, v, n))
        elif lk == "authgroup":
            p["chap_group"] = _group_ref(path, "AuthGroup", _one(path, k, v, n), n)
        elif lk == "usedigest":
            words = {x.lower() for x in v}
            if not words or not words <= {"auto", "header", "data"}:
                raise ConfigFileError(
                    f"{path}:{n}: UseDigest must be Auto, Header, Data or 'Header Data'"
                )
            p["header_digest"] = "header" in words
            p["data_digest"] = "data" in words
        elif re.fullmatch(r"lun\d+", lk):
            lid = int(lk[3:])
            if lid > 63:
                raise ConfigFileError(f"{path}:{n}: LUN id {lid} out of range 0..63")
            bdev = _one(path, k, v, n)
            if any(x["lun_id"] == lid for x in p["luns"]):
                raise ConfigFileError(f"{path}:{n}: {k} given twice")
            p["luns"].append({"bdev_name": bdev, "lun_id": lid})
        elif lk == "queuedepth":
            p["queue_depth"] = _int(path, k, v, n)
            if p["queue_depth"] < 1:
                raise ConfigFileError(f"{path}:{n}: QueueDepth must be >= 1")
        else:
            raise ConfigFileError(f"{path}:{n}: unknown key {k} in [{s.name}]")
    if "name" not in p:
        raise ConfigFileError(f"{path}:{s.line}: [{s.name}] has no TargetName")
    if not p["luns"]:
        raise ConfigFileError(f"{path}:{s.line}: [{s.name}] has no LUN")
    if not p["pg_ig_maps"]:
        raise ConfigFileError(f"{path}:{s.line}: [{s.name}] has no Mapping")
    return ("iscsi_create_target_node", p)


def load_ini_config(path: str) -> list[Call]:
    with open(path, encoding="utf-8") as f:
        return parse_ini_config(f.read(), path)
