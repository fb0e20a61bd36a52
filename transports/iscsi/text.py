"""iSCSI text key=value encoding (RFC 7143 section 6): ``key=value\\0`` pairs
carried in Login and Text PDU data segments."""

from __future__ import annotations

from collections.abc import Iterable

MAX_KEY_LEN = 63
MAX_VALUE_LEN = 255
# binary CHAP values may be long; SPDK allows 8192 bytes of text per value
MAX_LONG_VALUE_LEN = 8192
MAX_PAIRS = 256  # keys in one Login/Text exchange (RFC 7143 has ~30; a flood is refused)
LONG_VALUE_KEYS = frozenset({"CHAP_C", "CHAP_R", "CHAP_N", "TargetAddress", "SendTargets"})
_KEY_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-+@_")


class TextError(ValueError):
    """Malformed text data: the login fails with initiator error / the Text
    request is rejected."""


def parse(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """Parse ``key=value\\0...`` into ordered pairs; duplicates are an error."""
    raw = bytes(data)
    if not raw:
        return []
    # the last pair must be NUL-terminated, but tolerate a missing final NUL
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in raw.split(b"\0"):
        if not item:
            # padding NULs may trail the text; an empty pair in the middle is bad
            continue
        k, sep, v = item.partition(b"=")
        if not sep:
            raise TextError(f"text item without '=': {item[:64]!r}")
        if not k or len(k) > MAX_KEY_LEN or not set(k) <= _KEY_CHARS:
            raise TextError(f"invalid key name {k[:64]!r}")
        key = k.decode("ascii")
        limit = MAX_LONG_VALUE_LEN if key in LONG_VALUE_KEYS else MAX_VALUE_LEN
        if len(v) > limit:
            raise TextError(f"value of {key} longer than {limit} bytes")
        try:
            val = v.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TextError(f"value of {key} is not UTF-8") from e
        if len(out) >= MAX_PAIRS:
            raise TextError(f"more than {MAX_PAIRS} keys")
        if key in seen and key not in ("TargetAddress", "TargetName"):
            raise TextError(f"key {key} sent twice")
        seen.add(key)
        out.append((key, val))
    return out


def encode(pairs: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)
