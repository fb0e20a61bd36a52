"""The keyring (issue 11 item 1): interchange formats, key-file checks, the
RPCs, save_config, and keys made by nvme-cli loading unchanged."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import zlib

import bftest
import pytest

from blockfabric.control import methods  # noqa: F401  (registers every RPC)
from blockfabric.control.errors import RpcError
from blockfabric.control.keyring import (
    DhchapSecret,
    KeyFormatError,
    TlsPsk,
    format_interchange,
    keyring_of,
    parse_dhchap_secret,
    parse_key,
    parse_tls_psk,
)
from blockfabric.control.registry import REGISTRY


class Ctx:
    pass


def _write(tmp_path, name, text, mode=0o600):
    p = tmp_path / name
    p.write_text(text)
    os.chmod(p, mode)
    return str(p)


KEY32 = bytes(range(32))
KEY48 = bytes(range(48))


def test_tls_psk_round_trip_both_hashes():
    for hh, key in ((1, KEY32), (2, KEY48), (0, KEY32), (0, KEY48)):
        text = format_interchange("NVMeTLSkey-1", hh, key)
        psk = parse_tls_psk(text)
        assert psk == TlsPsk(hh, key) and psk.interchange() == text
        assert KEY32.hex() not in repr(psk)


def test_known_vector_from_the_spec_format():
    # NVMe/TCP 1.0c's example form: 32 bytes of key, CRC-32 little-endian
    key = b"\x55" * 32
    text = (
        "NVMeTLSkey-1:01:"
        + base64.b64encode(key + zlib.crc32(key).to_bytes(4, "little")).decode()
        + ":"
    )
    assert parse_tls_psk(text).key == key


@pytest.mark.parametrize(
    "text, why",
    [
        ("NVMeTLSkey-1:01:abc", "expected"),
        ("NVMeTLSkey-1:1:" + base64.b64encode(KEY32 + b"\0" * 4).decode() + ":", "two hex"),
        ("NVMeTLSkey-1:03:" + base64.b64encode(KEY32 + b"\0" * 4).decode() + ":", "unknown hash"),
        ("NVMeTLSkey-1:01:!!!!:", "base64"),
        (
            "NVMeTLSkey-1:02:"
            + base64.b64encode(KEY32 + zlib.crc32(KEY32).to_bytes(4, "little")).decode()
            + ":",
            "needs 48",
        ),
        ("NVMeTLSkey-1:01:" + base64.b64encode(KEY32 + b"\1\2\3\4").decode() + ":", "CRC-32"),
        ("DHHC-1:01:xx:", "not a TLS PSK"),
    ],
)
def test_tls_psk_errors(text, why):
    with pytest.raises(KeyFormatError, match=why):
        parse_tls_psk(text)


def test_dhchap_secret_formats():
    for hh, n in ((0, 32), (0, 48), (0, 64), (1, 32), (2, 48), (3, 64)):
        key = os.urandom(n)
        assert parse_dhchap_secret(format_interchange("DHHC-1", hh, key)) == DhchapSecret(hh, key)
    with pytest.raises(KeyFormatError, match="needs 64"):
        parse_dhchap_secret(format_interchange("DHHC-1", 3, KEY32))
    with pytest.raises(KeyFormatError, match="unknown hash"):
        parse_dhchap_secret(format_interchange("DHHC-1", 4, KEY32))
    with pytest.raises(KeyFormatError, match="interchange format"):
        parse_key("hello")


def test_nvme_cli_keys_load_unchanged(tmp_path):
    nvme = shutil.which("nvme")
    if nvme is None:
        bftest.missing_tool("nvme-cli (nvme) is not installed: it makes the keys this test loads")
    ctx = Ctx()
    kr = keyring_of(ctx)
    made = [
        ([nvme, "gen-tls-key", "--hmac=1"], TlsPsk, 32),
        ([nvme, "gen-tls-key", "--hmac=2"], TlsPsk, 48),
        ([nvme, "gen-dhchap-key", "--hmac=1", "--key-length=32"], DhchapSecret, 32),
        (
            [nvme, "gen-dhchap-key", "--hmac=3", "--key-length=64", "--nqn=nqn.2014-08.org.x:h"],
            DhchapSecret,
            64,
        ),
        ([nvme, "gen-dhchap-key", "--hmac=0", "--key-length=48"], DhchapSecret, 48),
    ]
    for i, (cmd, kind, n) in enumerate(made):
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        path = _write(tmp_path, f"k{i}", text)
        assert REGISTRY.call(ctx, "keyring_file_add_key", {"name": f"k{i}", "path": path})
        m = kr.get(f"k{i}").material
        assert isinstance(m, kind)
        assert len(m.key if isinstance(m, TlsPsk) else m.secret) == n
        assert m.interchange() == text.strip()


def test_key_file_checks(tmp_path):
    ctx = Ctx()
    good = format_interchange("NVMeTLSkey-1", 1, KEY32)
    with pytest.raises(RpcError, match=r"mode 0644 lets others read it"):
        REGISTRY.call(
            ctx, "keyring_file_add_key", {"name": "a", "path": _write(tmp_path, "a", good, 0o644)}
        )
    with pytest.raises(RpcError, match=r"mode 0640"):
        REGISTRY.call(
            ctx, "keyring_file_add_key", {"name": "a", "path": _write(tmp_path, "b", good, 0o640)}
        )
    with pytest.raises(RpcError, match="no such file"):
        REGISTRY.call(ctx, "keyring_file_add_key", {"name": "a", "path": str(tmp_path / "nope")})
    with pytest.raises(RpcError, match="absolute"):
        REGISTRY.call(ctx, "keyring_file_add_key", {"name": "a", "path": "rel/key"})
    os.mkdir(tmp_path / "dir", 0o700)
    with pytest.raises(RpcError, match="not a regular file"):
        REGISTRY.call(ctx, "keyring_file_add_key", {"name": "a", "path": str(tmp_path / "dir")})
    link = tmp_path / "link"
    link.symlink_to(_write(tmp_path, "target", good))
    with pytest.raises(RpcError):
        REGISTRY.call(ctx, "keyring_file_add_key", {"name": "a", "path": str(link)})
    with pytest.raises(RpcError, match="CRC-32"):
        REGISTRY.call(
            ctx,
            "keyring_file_add_key",
            {"name": "a", "path": _write(tmp_path, "c", good[:-6] + "AAAAA:")},
        )
    # 0400 is stricter than 0600: accepted
    assert REGISTRY.call(
        ctx, "keyring_file_add_key", {"name": "a", "path": _write(tmp_path, "d", good, 0o400)}
    )
    with pytest.raises(RpcError, match="already exists"):
        REGISTRY.call(
            ctx, "keyring_file_add_key", {"name": "a", "path": _write(tmp_path, "e", good)}
        )


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_key_file_owned_by_another_user_refused(tmp_path):
    p = _write(tmp_path, "o", format_interchange("NVMeTLSkey-1", 1, KEY32))
    os.chown(p, 65534, 65534)
    with pytest.raises(RpcError, match="owned by uid 65534"):
        REGISTRY.call(Ctx(), "keyring_file_add_key", {"name": "o", "path": p})


def test_rpcs_and_save_config_never_show_material(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    ctx = Ctx()
    text = format_interchange("NVMeTLSkey-1", 2, KEY48)
    p = _write(tmp_path, "k", text)
    REGISTRY.call(ctx, "keyring_file_add_key", {"name": "key0", "path": p})
    keys = REGISTRY.call(ctx, "keyring_get_keys", {})
    assert keys == [
        {
            "name": "key0",
            "module": "keyring_file",
            "removed": False,
            "probed": False,
            "refcnt": 0,
            "path": p,
        }
    ]
    assert REGISTRY.call(ctx, "keyring_get_keys", {"name": "key0"}) == keys
    with pytest.raises(RpcError, match="does not exist"):
        REGISTRY.call(ctx, "keyring_get_keys", {"name": "nope"})
    saved = REGISTRY.call(ctx, "save_config", None)
    assert saved["subsystems"][0] == {
        "subsystem": "keyring",
        "config": [{"method": "keyring_file_add_key", "params": {"name": "key0", "path": p}}],
    }
    blob = json.dumps([keys, saved]) + caplog.text + repr(keyring_of(ctx).keys)
    b64 = text.split(":")[2]
    assert b64 not in blob and KEY48.hex() not in blob
    # a key in use cannot be removed; released, it can
    kr = keyring_of(ctx)
    kr.acquire("key0", "host nqn.h on nqn.s")
    assert REGISTRY.call(ctx, "keyring_get_keys", {})[0]["refcnt"] == 1
    with pytest.raises(RpcError, match="in use by host nqn.h"):
        REGISTRY.call(ctx, "keyring_file_remove_key", {"name": "key0"})
    kr.release("key0", "host nqn.h on nqn.s")
    assert REGISTRY.call(ctx, "keyring_file_remove_key", {"name": "key0"})
    assert REGISTRY.call(ctx, "keyring_get_keys", {}) == []
    with pytest.raises(RpcError, match="does not exist"):
        REGISTRY.call(ctx, "keyring_file_remove_key", {"name": "key0"})
    # save_config's output loads back (restart reloads the key from its file)
    ctx2 = Ctx()
    assert REGISTRY.call(ctx2, "load_config", saved) is True
    assert keyring_of(ctx2).tls_psk("key0").key == KEY48
