"""The keyring: named keys loaded from owner-only files (issue 11 item 1).

Keys are referred to by name everywhere (``nvmf_subsystem_add_host --psk
NAME``, ``--dhchap-key NAME``, ``bdev_nvme_attach_controller --psk NAME``); the
material lives only in `Key` objects here, whose ``repr`` never shows it, and
never goes to logs, RPC answers or save_config (which records name and path:
a restart reads the file again).

A key file holds one key in one of the NVMe interchange formats:

* TLS PSK (NVMe/TCP transport specification, 3.6.1.5)::

      NVMeTLSkey-1:HH:<base64(configured PSK || CRC-32)>:

  HH is the hash of the retained-PSK derivation: 00 none (the configured PSK
  is the retained PSK), 01 SHA-256, 02 SHA-384; the configured PSK is 32
  bytes with 01, 48 with 02, either with 00.
* DH-HMAC-CHAP secret (NVMe base specification, 8.3.5.5.1)::

      DHHC-1:HH:<base64(secret || CRC-32)>:

  HH is the hash that transforms the secret: 00 none, 01 SHA-256, 02
  SHA-384, 03 SHA-512; the secret is 32, 48 or 64 bytes.

The CRC-32 is the IEEE one (zlib.crc32), little-endian, over the key bytes,
as nvme-cli's ``gen-tls-key`` / ``gen-dhchap-key`` and Linux write it.

API (for the TLS and DH-HMAC-CHAP code)::

    kr = keyring_of(ctx)            # the RpcContext's keyring
    key = kr.get("key0")            # Key; KeyError (-ENOKEY RpcError via lookup())
    key.material                    # TlsPsk | DhchapSecret
    parse_tls_psk(text) / parse_dhchap_secret(text)  # -> TlsPsk / DhchapSecret
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import zlib
from dataclasses import dataclass, field
from typing import Any

from .errors import EEXIST, EINVAL, RpcError

ENOENT = -2
EBUSY = -16
ENOKEY = -126

TLS_PREFIX = "NVMeTLSkey-1"
DHCHAP_PREFIX = "DHHC-1"
# hash indicator -> hashlib name (None: no transformation)
TLS_HASHES: dict[int, str | None] = {0: None, 1: "sha256", 2: "sha384"}
DHCHAP_HASHES: dict[int, str | None] = {0: None, 1: "sha256", 2: "sha384", 3: "sha512"}
_TLS_LEN = {1: (32,), 2: (48,), 0: (32, 48)}
_DHCHAP_LEN = {1: (32,), 2: (48,), 3: (64,), 0: (32, 48, 64)}
MAX_KEY_FILE = 1024  # a key file is one line of at most ~100 characters


class KeyFormatError(ValueError):
    """A key that is not in a valid interchange format (the message says why)."""


@dataclass(frozen=True)
class TlsPsk:
    """A configured TLS PSK. ``hash_id``: 0 none, 1 SHA-256, 2 SHA-384."""

    hash_id: int
    key: bytes = field(repr=False)

    @property
    def hash_name(self) -> str | None:
        return TLS_HASHES[self.hash_id]

    def interchange(self) -> str:
        return format_interchange(TLS_PREFIX, self.hash_id, self.key)


@dataclass(frozen=True)
class DhchapSecret:
    """A DH-HMAC-CHAP secret. ``hash_id``: 0 none, 1 SHA-256, 2 SHA-384, 3 SHA-512."""

    hash_id: int
    secret: bytes = field(repr=False)

    @property
    def hash_name(self) -> str | None:
        return DHCHAP_HASHES[self.hash_id]

    def interchange(self) -> str:
        return format_interchange(DHCHAP_PREFIX, self.hash_id, self.secret)


KeyMaterial = TlsPsk | DhchapSecret


def format_interchange(prefix: str, hash_id: int, key: bytes) -> str:
    crc = zlib.crc32(key).to_bytes(4, "little")
    return f"{prefix}:{hash_id:02x}:{base64.b64encode(key + crc).decode()}:"


def _parse(
    text: str, prefix: str, lengths: dict[int, tuple[int, ...]], what: str
) -> tuple[int, bytes]:
    s = text.strip()
    parts = s.split(":")
    # PREFIX : HH : BASE64 : (the trailing colon gives an empty last part)
    if len(parts) != 4 or parts[0] != prefix or parts[3] != "":
        raise KeyFormatError(f"not a {what} (expected {prefix}:HH:<base64>:)")
    hh = parts[1]
    if len(hh) != 2 or not all(c in "0123456789abcdefABCDEF" for c in hh):
        raise KeyFormatError(f"{what}: hash indicator {hh!r} is not two hex digits")
    hash_id = int(hh, 16)
    if hash_id not in lengths:
        allowed = ", ".join(f"{h:02}" for h in sorted(lengths))
        raise KeyFormatError(f"{what}: unknown hash indicator {hh} (one of {allowed})")
    try:
        raw = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what}: the key is not valid base64") from None
    n = len(raw) - 4
    if n not in lengths[hash_id]:
        want = " or ".join(str(x) for x in lengths[hash_id])
        raise KeyFormatError(f"{what}: key is {max(n, 0)} bytes, hash indicator {hh} needs {want}")
    key, crc = raw[:n], raw[n:]
    if zlib.crc32(key) != int.from_bytes(crc, "little"):
        raise KeyFormatError(f"{what}: CRC-32 mismatch (the key is corrupt)")
    return hash_id, key


def parse_tls_psk(text: str) -> TlsPsk:
    """``NVMeTLSkey-1:HH:...:`` -> TlsPsk (KeyFormatError says what is wrong)."""
    return TlsPsk(*_parse(text, TLS_PREFIX, _TLS_LEN, "TLS PSK"))


def parse_dhchap_secret(text: str) -> DhchapSecret:
    """``DHHC-1:HH:...:`` -> DhchapSecret (KeyFormatError says what is wrong)."""
    return DhchapSecret(*_parse(text, DHCHAP_PREFIX, _DHCHAP_LEN, "DH-HMAC-CHAP secret"))


def parse_key(text: str) -> KeyMaterial:
    """Either interchange format, chosen by its prefix."""
    s = text.strip()
    if s.startswith(TLS_PREFIX + ":"):
        return parse_tls_psk(s)
    if s.startswith(DHCHAP_PREFIX + ":"):
        return parse_dhchap_secret(s)
    raise KeyFormatError(
        f"not a key in an interchange format ({TLS_PREFIX}:HH:...: or {DHCHAP_PREFIX}:HH:...:)"
    )


def read_key_file(path: str) -> KeyMaterial:
    """Open, check and parse a key file. The checks are on the opened file
    (fstat), so a file swapped after the check is not read. Raises
    PermissionError/FileNotFoundError/KeyFormatError with the reason."""
    if not os.path.isabs(path):
        raise KeyFormatError(f"key file path must be absolute: {path}")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(f"{path}: not a regular file")
        if st.st_uid != os.geteuid():
            raise PermissionError(
                f"{path}: owned by uid {st.st_uid}, not by the target's user (uid {os.geteuid()})"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"{path}: mode {mode:04o} lets others read it (needs 0600 or stricter)"
            )
        if st.st_size > MAX_KEY_FILE:
            raise KeyFormatError(f"{path}: {st.st_size} bytes, too large for a key file")
        data = os.read(fd, MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFormatError(f"{path}: not ASCII text") from None
    try:
        return parse_key(text)
    except KeyFormatError as e:
        raise KeyFormatError(f"{path}: {e}") from None


@dataclass
class Key:
    name: str
    path: str
    material: KeyMaterial = field(repr=False)

    @property
    def kind(self) -> str:
        return "tls_psk" if isinstance(self.material, TlsPsk) else "dhchap"

    def info(self, refcnt: int) -> dict[str, Any]:
        """keyring_get_keys' entry (SPDK's fields); never the material."""
        return {
            "name": self.name,
            "module": "keyring_file",
            "removed": False,
            "probed": False,
            "refcnt": refcnt,
            "path": self.path,
        }


class Keyring:
    """Named keys of one target. Users take a reference (``acquire``) while
    they name a key, so a key in use cannot be removed under them."""

    def __init__(self) -> None:
        self.keys: dict[str, Key] = {}
        self.refs: dict[str, set[str]] = {}

    def add_file(self, name: str, path: str) -> Key:
        if not name:
            raise RpcError(EINVAL, "key name must not be empty")
        if name in self.keys:
            raise RpcError(EEXIST, f"key '{name}' already exists")
        try:
            material = read_key_file(path)
        except FileNotFoundError:
            raise RpcError(ENOENT, f"key file {path}: no such file") from None
        except (PermissionError, KeyFormatError) as e:
            raise RpcError(EINVAL, f"key '{name}': {e}") from None
        except OSError as e:
            raise RpcError(EINVAL, f"key '{name}': {path}: {e.strerror}") from None
        key = Key(name, path, material)
        self.keys[name] = key
        return key

    def remove(self, name: str) -> None:
        if name not in self.keys:
            raise RpcError(ENOENT, f"key '{name}' does not exist")
        users = self.refs.get(name)
        if users:
            raise RpcError(EBUSY, f"key '{name}' is in use by {', '.join(sorted(users))}")
        del self.keys[name]

    def get(self, name: str) -> Key:
        """The key; RpcError -ENOKEY when there is none by that name."""
        key = self.keys.get(name)
        if key is None:
            raise RpcError(ENOKEY, f"key '{name}' does not exist (keyring_file_add_key first)")
        return key

    def tls_psk(self, name: str) -> TlsPsk:
        m = self.get(name).material
        if not isinstance(m, TlsPsk):
            raise RpcError(EINVAL, f"key '{name}' is not a TLS PSK (NVMeTLSkey-1)")
        return m

    def dhchap_secret(self, name: str) -> DhchapSecret:
        m = self.get(name).material
        if not isinstance(m, DhchapSecret):
            raise RpcError(EINVAL, f"key '{name}' is not a DH-HMAC-CHAP secret (DHHC-1)")
        return m

    def acquire(self, name: str, holder: str) -> Key:
        key = self.get(name)
        self.refs.setdefault(name, set()).add(holder)
        return key

    def release(self, name: str, holder: str) -> None:
        users = self.refs.get(name)
        if users is not None:
            users.discard(holder)
            if not users:
                del self.refs[name]

    def infos(self, name: str | None = None) -> list[dict[str, Any]]:
        keys = [self.get(name)] if name is not None else list(self.keys.values())
        return [k.info(len(self.refs.get(k.name, ()))) for k in keys]

    def save_config(self) -> list[dict[str, Any]]:
        return [
            {"method": "keyring_file_add_key", "params": {"name": k.name, "path": k.path}}
            for k in self.keys.values()
        ]


def keyring_of(ctx: Any) -> Keyring:
    """The keyring of an RpcContext (made on first use)."""
    kr = getattr(ctx, "keyring", None)
    if not isinstance(kr, Keyring):
        kr = Keyring()
        ctx.keyring = kr
    return kr
