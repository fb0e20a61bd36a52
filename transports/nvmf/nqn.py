"""NVMe Qualified Name validation (NVMe Base spec "NVMe Qualified Names").

Owns the NQN grammar as SPDK formalises it:

* the discovery NQN ``nqn.2014-08.org.nvmexpress.discovery``;
* the UUID form ``nqn.2014-08.org.nvmexpress:uuid:`` + 8-4-4-4-12 hex digits;
* the domain form ``nqn.yyyy-mm.reverse.domain:string`` (month 01..12, an
  RFC 1034 domain, a non-empty UTF-8 user string after the first ':').

The length limit is 223 bytes of UTF-8, not counting the NUL terminator
(strlen semantics). NQNs are compared byte for byte: no case folding, no
Unicode normalisation (`nqn_equal`).
"""

from __future__ import annotations

import re

DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
UUID_PREFIX = "nqn.2014-08.org.nvmexpress:uuid:"
NQN_MAX_LEN = 223
NQN_MIN_LEN = 11  # "nqn.yyyy-mm" is the shortest meaningful prefix

_UUID_RE = re.compile(r"[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}\Z")
_LABEL_RE = re.compile(r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def validate_nqn(nqn: str | bytes) -> str | None:
    """None when ``nqn`` is a valid NQN, otherwise the reason it is not."""
    if isinstance(nqn, bytes):
        raw = nqn
        try:
            text = nqn.decode("utf-8")
        except UnicodeDecodeError:
            return "NQN is not valid UTF-8"
    else:
        text = nqn
        try:
            raw = nqn.encode("utf-8")
        except UnicodeEncodeError:
            return "NQN is not valid UTF-8"
    if b"\0" in raw:
        return "NQN contains a NUL byte"
    if len(raw) > NQN_MAX_LEN:
        return f"NQN is {len(raw)} bytes long, the maximum is {NQN_MAX_LEN}"
    if len(raw) < NQN_MIN_LEN:
        return f"NQN is {len(raw)} bytes long, the minimum is {NQN_MIN_LEN}"
    if text == DISCOVERY_NQN:
        return None
    if text.startswith(UUID_PREFIX):
        rest = text[len(UUID_PREFIX) :]
        if len(rest) != 36:
            return "UUID NQN: the uuid is not 36 characters long"
        if not _UUID_RE.match(rest):
            return "UUID NQN: the uuid is not formatted as 8-4-4-4-12 hex digits"
        return None
    if not text.startswith("nqn."):
        return 'NQN must begin with "nqn."'
    date = text[4:12]
    if not (len(date) == 8 and date[:4].isascii() and date[:4].isdigit() and date[4] == "-"):
        return "NQN has an invalid date code: expected nqn.yyyy-mm."
    month = date[5:7]
    if not (month.isascii() and month.isdigit() and 1 <= int(month) <= 12) or date[7] != ".":
        return "NQN has an invalid date code: month must be 01..12 followed by '.'"
    colon = text.find(":", 12)
    if colon < 0:
        return "NQN must contain a user-specified name after a ':'"
    if colon == len(text) - 1:
        return "NQN user-specified name after ':' is empty"
    domain = text[12:colon]
    if not domain:
        return "NQN reverse domain is empty"
    for label in domain.split("."):
        if not label:
            return "NQN reverse domain has an empty label"
        if len(label) > 63:
            return f"NQN reverse domain label '{label[:16]}...' is longer than 63 characters"
        if not label.isascii() or not _LABEL_RE.match(label):
            return (
                f"NQN reverse domain label '{label}' must start with a letter, end with a "
                "letter or digit and contain only letters, digits and '-'"
            )
    return None


def is_valid_nqn(nqn: str | bytes) -> bool:
    return validate_nqn(nqn) is None


def nqn_equal(a: str | bytes, b: str | bytes) -> bool:
    """Byte-for-byte comparison (SPDK semantics: UUID case matters)."""
    ab = a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a
    bb = b.encode("utf-8", "surrogateescape") if isinstance(b, str) else b
    return ab == bb
