"""The text forms of SPDK rpc.py's arguments, turned into the params sent.

RPC declarations name these as ``Param(parse=...)`` or use them in a
``cli_build``: each takes the command-line text and returns the JSON value,
raising ValueError (argparse reports it as an invalid value) on bad text.
"""

from __future__ import annotations

from typing import Any


def words(s: str) -> list[str]:
    """'a b  c' -> ["a", "b", "c"] (rpc.py's whitespace-separated lists)."""
    return s.strip().split()


def pg_ig_maps(s: str) -> list[dict[str, int]]:
    """'1:2 3:4' -> [{"pg_tag": 1, "ig_tag": 2}, {"pg_tag": 3, "ig_tag": 4}]."""
    out = []
    for u in s.strip().split():
        pg, sep, ig = u.partition(":")
        if not sep:
            raise ValueError(f"{u!r} is not PG_TAG:IG_TAG")
        out.append({"pg_tag": int(pg), "ig_tag": int(ig)})
    return out


def luns(s: str) -> list[dict[str, Any]]:
    """'Malloc0:0 Malloc1:1' -> [{"bdev_name": "Malloc0", "lun_id": 0}, ...]."""
    out = []
    for u in s.strip().split():
        bdev, sep, lun = u.rpartition(":")
        if not sep:
            raise ValueError(f"{u!r} is not BDEV:LUN_ID")
        out.append({"bdev_name": bdev, "lun_id": int(lun)})
    return out


def portals(s: str) -> list[dict[str, str]]:
    """'127.0.0.1:3260 [::1]:3261' -> [{"host": ..., "port": ...}, ...]; the old
    "IP:PORT@CPUMASK" form is accepted and the mask ignored, as rpc.py does."""
    out = []
    for p in s.strip().split():
        host, _, port = p.rpartition(":")
        port = port.split("@", 1)[0]
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        out.append({"host": host, "port": port})
    return out


def chap_secrets(s: str) -> list[dict[str, str]]:
    """'user:u1 secret:s1 muser:mu1 msecret:ms1,user:u2 secret:s2' -> a list
    of {"user", "secret", "muser", "msecret"} objects (rpc.py's -c form)."""
    out = []
    for entry in s.split(","):
        d: dict[str, str] = {}
        for u in entry.split():
            k, sep, v = u.partition(":")
            if not sep:
                raise ValueError(f"{u!r} is not KEY:VALUE")
            d[k] = v
        out.append(d)
    return out


def commas(s: str) -> list[str]:
    """'a,b' -> ["a", "b"]."""
    return [x for x in s.split(",") if x]


def flag_set(s: str) -> dict[str, bool]:
    """'identify_ctrlr,get_log_page' -> {"identify_ctrlr": True, "get_log_page": True};
    'all' -> every admin command rpc.py knows (nvmf_set_config -p)."""
    names = commas(s)
    if "all" in names:
        names = [
            "identify_ctrlr",
            "get_log_page",
            "get_set_features",
            "sanitize",
            "vendor_specific",
        ]
    return {n: True for n in names}


def mib_to_blocks(total_size_mb: float, block_size: int) -> int:
    """rpc.py's total_size in MiB -> num_blocks of block_size."""
    if block_size <= 0:
        raise ValueError("block_size must be > 0")
    return int((total_size_mb * 1024 * 1024) // block_size)


def key_value(s: str) -> tuple[str, str]:
    """'key=value' -> ("key", "value"); a repeatable option (rpc.py's
    action='append', e.g. bdev_rbd_create --config k=v --config k2=v2): the
    CLI collects the pairs in a list, the method's cli_build makes the map."""
    k, sep, v = s.partition("=")
    if not sep or not k.strip():
        raise ValueError(f"{s!r} is not in key=value form")
    return k.strip(), v


key_value.repeat = True  # type: ignore[attr-defined]
key_value.__name__ = "key=value"
