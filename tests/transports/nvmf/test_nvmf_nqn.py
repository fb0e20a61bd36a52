"""NQN grammar table (SPDK's formalisation of the NVMe Base spec rules)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockfabric.transports.nvmf.nqn import (
    DISCOVERY_NQN,
    is_valid_nqn,
    nqn_equal,
    validate_nqn,
)

VALID = [
    DISCOVERY_NQN,
    "nqn.2014-08.org.nvmexpress:uuid:11111111-aaaa-bbdd-ffee-123456789abc",
    "nqn.2014-08.org.nvmexpress:uuid:11111111-AAAA-BBDD-FFEE-123456789ABC",
    "nqn.2016-06.io.spdk:cnode1",
    "nqn.2016-06.io.spdk:a",
    "nqn.1999-12.com.example-corp.storage:disk:with:colons",
    "nqn.2016-06.io.spdk:ünïcödé-名前",
    "nqn.2016-06.io." + "a" * 63 + ":x",
    "nqn.2016-06.io.spdk:" + "x" * (223 - len("nqn.2016-06.io.spdk:")),
]

INVALID = [
    ("", "minimum"),
    ("nqn.2016-06", "date code"),
    ("iqn.2016-06.io.spdk:cnode1", 'begin with "nqn."'),
    ("nqn.16-06.io.spdk:cnode1", "date code"),
    ("nqn.2016-13.io.spdk:cnode1", "month"),
    ("nqn.2016-00.io.spdk:cnode1", "month"),
    ("nqn.2016_06.io.spdk:cnode1", "date code"),
    ("nqn.2016-06-io.spdk:cnode1", "month"),
    ("nqn.2016-06.io.spdk", "':'"),
    ("nqn.2016-06.io.spdk:", "empty"),
    ("nqn.2016-06.:cnode1", "empty"),
    ("nqn.2016-06.io..spdk:cnode1", "empty label"),
    ("nqn.2016-06.1io.spdk:cnode1", "start with a letter"),
    ("nqn.2016-06.io-.spdk:cnode1", "end with a letter or digit"),
    ("nqn.2016-06.i_o.spdk:cnode1", "letters, digits"),
    ("nqn.2016-06.io." + "a" * 64 + ":x", "63"),
    ("nqn.2016-06.io.spdk:" + "x" * (224 - len("nqn.2016-06.io.spdk:")), "maximum is 223"),
    ("nqn.2016-06.io.spdk:" + "é" * 102, "maximum is 223"),  # 224 bytes of UTF-8
    ("nqn.2014-08.org.nvmexpress:uuid:11111111-aaaa-bbdd-ffee-123456789ab", "36"),
    ("nqn.2014-08.org.nvmexpress:uuid:11111111-aaaa-bbdd-ffee-123456789abcd", "36"),
    ("nqn.2014-08.org.nvmexpress:uuid:11111111aaaa-bbdd-ffee-123456789abcd", "8-4-4-4-12"),
    ("nqn.2014-08.org.nvmexpress:uuid:g1111111-aaaa-bbdd-ffee-123456789abc", "8-4-4-4-12"),
    ("nqn.2016-06.io.spdk:cn\0ode", "NUL"),
    ("nqn.2014-08.org.nvmexpress.discoveryX", "':'"),
]


@pytest.mark.parametrize("nqn", VALID)
def test_valid(nqn: str) -> None:
    assert validate_nqn(nqn) is None
    assert is_valid_nqn(nqn.encode())


@pytest.mark.parametrize(("nqn", "why"), INVALID)
def test_invalid(nqn: str, why: str) -> None:
    reason = validate_nqn(nqn)
    assert reason is not None and why in reason, reason


def test_byte_for_byte_comparison() -> None:
    a = "nqn.2014-08.org.nvmexpress:uuid:11111111-aaaa-bbdd-ffee-123456789abc"
    assert nqn_equal(a, a.encode())
    assert not nqn_equal(
        a, a.upper().replace("NQN.", "nqn.").replace("ORG.NVMEXPRESS:UUID", "org.nvmexpress:uuid")
    )


def test_invalid_utf8_bytes() -> None:
    assert "UTF-8" in (validate_nqn(b"nqn.2016-06.io.spdk:\xff\xfe") or "")


@given(st.text(max_size=300))
def test_never_raises(s: str) -> None:
    r = validate_nqn(s)
    assert r is None or isinstance(r, str)
    if r is None:
        assert len(s.encode("utf-8")) <= 223
